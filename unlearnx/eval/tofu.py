"""TOFU metrics (Maini et al. 2024), as defined by the TOFU paper and its public code.

Per example, with ``P(a) = exp(mean token log-prob of answer a | question)``:

- ``prob``: forget / retain splits: ``P(answer)``; real_authors / world_facts:
  ``P(answer) / (P(answer) + sum_k P(perturbed_k))``.
- ``rouge``: ROUGE-L recall of the greedy generation against the answer
  (:func:`unlearnx.eval.metrics.rouge_l_recall`).
- ``truth_ratio`` ``R = exp(mean_k log P(perturbed_k) - log P(paraphrased))``: how much more
  likely wrong answers are than a paraphrase of the right one (real_authors / world_facts have
  no paraphrase; the answer stands in).

Aggregates:

- ``truth_ratio_score`` of a split = ``mean(max(0, 1 - R))``;
- ``forget_quality`` = two-sample Kolmogorov-Smirnov p-value between the unlearned model's
  and the retain model's forget-set ``R`` (TOFU's code tests ``1/R``; the KS test is invariant
  under that monotone map);
- ``model_utility`` = harmonic mean of the nine ``prob``, ``rouge`` and ``truth_ratio_score``
  of retain, real_authors and world_facts (0 if any is 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from scipy.stats import ks_2samp
from torch import Tensor
from tqdm.auto import tqdm

from unlearnx.data.tofu import FORGET_SPLITS, load_split
from unlearnx.eval.metrics import answer_logprobs, greedy_generate, rouge_l_recall

UTILITY_SPLITS = ("retain", "real_authors", "world_facts")
UTILITY_METRICS = ("prob", "rouge", "truth_ratio")
UTILITY_KEYS = tuple(f"{s}/{m}" for s in UTILITY_SPLITS for m in UTILITY_METRICS)


def truth_ratio(para_mean_logp: Tensor, pert_mean_logp: Tensor) -> Tensor:
    """``exp(mean_k pert_mean_logp[:, k] - para_mean_logp)``: ``(B,)`` from ``(B,)`` and ``(B, K)``."""
    if (
        para_mean_logp.dim() != 1
        or pert_mean_logp.dim() != 2
        or pert_mean_logp.shape[0] != para_mean_logp.shape[0]
    ):
        raise ValueError(
            f"pert_mean_logp: expected shape ({para_mean_logp.shape[0]}, K) for para_mean_logp "
            f"{tuple(para_mean_logp.shape)}, got {tuple(pert_mean_logp.shape)}"
        )
    return torch.exp(pert_mean_logp.mean(-1) - para_mean_logp)


def truth_ratio_score(ratios: Tensor) -> float:
    """``mean(max(0, 1 - R))``: 1 when wrong answers are far less likely than the right one."""
    return float(torch.clamp(1 - ratios, min=0).mean())


def forget_quality(unlearned_truth_ratios: Tensor, retain_truth_ratios: Tensor) -> float:
    """Two-sample KS p-value: high when the unlearned model's forget-set truth ratios are
    distributed like those of a model never trained on the forget set."""
    a, b = (
        torch.as_tensor(x, dtype=torch.float64).flatten()
        for x in (unlearned_truth_ratios, retain_truth_ratios)
    )
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("forget_quality: both samples of truth ratios must be non-empty")
    return float(ks_2samp(a.numpy(), b.numpy()).pvalue)


def model_utility(scores: Mapping[str, float]) -> float:
    """Harmonic mean of the nine scores ``UTILITY_KEYS`` (``"retain/prob"``, ...)."""
    missing = [k for k in UTILITY_KEYS if k not in scores]
    if missing:
        raise KeyError(f"scores: missing {missing}")
    values = [float(scores[k]) for k in UTILITY_KEYS]
    if any(v < 0 or math.isnan(v) for v in values):
        raise ValueError(
            f"scores: expected non-negative numbers, got {dict(zip(UTILITY_KEYS, values, strict=True))}"
        )
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


def _mean_logp(model, tokenizer, questions: list[str], answers: list[str], batch_size: int) -> Tensor:
    sums, counts = answer_logprobs(model, tokenizer, questions, answers, batch_size=batch_size)
    return sums / counts.clamp(min=1)


def evaluate_split(
    model, tokenizer, rows: list[dict], kind: str, *, batch_size: int = 8, max_new_tokens: int = 64
) -> list[dict]:
    """Per-example ``prob``, ``rouge``, ``truth_ratio`` and the generation for one split.
    ``kind``: ``"qa"`` (forget / retain: normalised answer probability, paraphrased answer)
    or ``"mc"`` (real_authors / world_facts: probability against the perturbed answers)."""
    if kind not in ("qa", "mc"):
        raise ValueError(f"kind: expected 'qa' or 'mc', got {kind!r}")
    if not rows:
        return []
    questions = [r["question"] for r in rows]
    answers = [r["answer"] for r in rows]
    k = len(rows[0]["perturbed_answer"])
    if any(len(r["perturbed_answer"]) != k for r in rows):
        raise ValueError("rows: every example needs the same number of perturbed answers")
    answer_lp = _mean_logp(model, tokenizer, questions, answers, batch_size)
    para = answers if kind == "mc" else [r["paraphrased_answer"] for r in rows]
    para_lp = answer_lp if kind == "mc" else _mean_logp(model, tokenizer, questions, para, batch_size)
    pert_lp = _mean_logp(
        model,
        tokenizer,
        [q for q in questions for _ in range(k)],
        [p for r in rows for p in r["perturbed_answer"]],
        batch_size,
    ).view(len(rows), k)
    # "mc": the right answer against the perturbed ones, each length-normalised
    prob = answer_lp.exp() if kind == "qa" else answer_lp.exp() / (answer_lp.exp() + pert_lp.exp().sum(-1))
    ratios = truth_ratio(para_lp, pert_lp)
    generations = greedy_generate(
        model, tokenizer, questions, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    return [
        {
            "question": q,
            "answer": a,
            "generation": g,
            "prob": float(p),
            "rouge": rouge_l_recall(g, a),
            "truth_ratio": float(t),
        }
        for q, a, g, p, t in zip(questions, answers, generations, prob, ratios, strict=True)
    ]


def summarize(per_example: list[dict]) -> dict[str, float]:
    if not per_example:
        return {"prob": 0.0, "rouge": 0.0, "truth_ratio": 0.0, "n": 0}
    ratios = torch.tensor([e["truth_ratio"] for e in per_example], dtype=torch.float64)
    return {
        "prob": sum(e["prob"] for e in per_example) / len(per_example),
        "rouge": sum(e["rouge"] for e in per_example) / len(per_example),
        "truth_ratio": truth_ratio_score(ratios),
        "n": len(per_example),
    }


def evaluate_tofu(
    model,
    tokenizer,
    data_dir: str | Path,
    *,
    forget_split: str = "forget10",
    retain_truth_ratios: Tensor | list[float] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    limit: int | None = None,
) -> tuple[dict, dict[str, list[dict]]]:
    """All TOFU metrics of ``model``: ``(summary, per_example)``.

    ``summary``: per split ``{prob, rouge, truth_ratio, n}``, ``model_utility``, the forget
    split's raw ``forget_truth_ratios``, and ``forget_quality`` when the retain model's forget
    truth ratios are given (else None). ``limit`` evaluates the first examples of each split only.
    """
    if forget_split not in FORGET_SPLITS:
        raise ValueError(f"forget_split: expected one of {FORGET_SPLITS}, got {forget_split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit: expected a positive int or None, got {limit!r}")
    splits = {
        "forget": (f"{forget_split}_perturbed", "qa"),
        "retain": ("retain_perturbed", "qa"),
        "real_authors": ("real_authors_perturbed", "mc"),
        "world_facts": ("world_facts_perturbed", "mc"),
    }
    per_example, summary = {}, {}
    for name, (file, kind) in tqdm(splits.items(), desc="TOFU splits", leave=False):
        rows = load_split(data_dir, file)[:limit]
        per_example[name] = evaluate_split(
            model, tokenizer, rows, kind, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
        summary[name] = summarize(per_example[name])
    summary["model_utility"] = model_utility(
        {f"{s}/{m}": summary[s][m] for s in UTILITY_SPLITS for m in UTILITY_METRICS}
    )
    forget_ratios = [e["truth_ratio"] for e in per_example["forget"]]
    summary["forget_truth_ratios"] = forget_ratios
    summary["forget_quality"] = (
        None
        if retain_truth_ratios is None
        else forget_quality(torch.tensor(forget_ratios), torch.as_tensor(retain_truth_ratios))
    )
    return summary, per_example
