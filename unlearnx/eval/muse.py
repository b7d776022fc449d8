"""MUSE metrics (Shi et al. 2024) as open-unlearning computes them (OU commit d3d7cf9,
``configs/eval/muse*.yaml``, ``src/evals/metrics``), through the fused forward-only kernels
(no ``[tokens, V]`` logits for the likelihood metrics).

Metric names and meanings are OU's:

- ``forget_knowmem_ROUGE`` / ``retain_knowmem_ROUGE``: ROUGE-L F1 (``rouge_score``, Porter
  stemmer) of the greedy answer to each ``knowmem`` question, asked after all the split's
  in-context examples (``*_qa_icl``) in the model's template; at most 32 new tokens, cut at
  ``"\\n\\n"``, ``"\\nQuestion"``, ``"Question:"`` and EOS.
- ``forget_verbmem_ROUGE``: ROUGE-L F1 of the greedy continuation (128 new tokens) of each
  ``verbmem`` prompt against its ``gt``.
- ``mia_min_k``: ROC AUC of the Min-K% Prob attack (``k = 0.4``) separating ``privleak``
  forget texts (members) from holdout texts; 1 when forget texts are much more likely.
  A text's score is ``-mean`` of its ``max(1, floor(k n))`` lowest token log-probs, over its
  labelled tokens except the last (OU's ``tokenwise_logprobs``).
- ``privleak``: ``((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref) * 100``, ``AUC_ref`` the retain
  model's ``mia_min_k`` (from its ``MUSE_EVAL.json``) or 0.5 without one. Negative: the
  forget set still looks like training data; near 0: like a model never trained on it.
- ``extraction_strength``: per ``verbmem`` example ``1 - k/n``, ``n`` labelled ``gt`` tokens
  (the last excluded), ``k`` the first position from which the teacher-forced greedy
  predictions equal the rest; OU's loop leaves ``k = n - 1`` when none does, so a wrong last
  token scores ``1/n``. The argmax comes from the fused max kernel.
- ``exact_memorization`` (on request): fraction of those ``n`` tokens predicted right.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from unlearnx.data import muse as muse_data
from unlearnx.data.template import Template, encode_chat, encode_completion
from unlearnx.eval.metrics import (
    auc,
    extraction_strength,
    generation_scores,
    labelled_predictions,
    min_k_score,
    privleak,
)

KNOWMEM_STOPWORDS = ("\n\n", "\nQuestion", "Question:")
DEFAULT_METRICS = (
    "forget_knowmem_ROUGE",
    "retain_knowmem_ROUGE",
    "forget_verbmem_ROUGE",
    "privleak",
    "extraction_strength",
)
"""OU's ``configs/eval/muse.yaml`` defaults."""
OPTIONAL_METRICS = ("exact_memorization", "mia_min_k")
METRICS = DEFAULT_METRICS + OPTIONAL_METRICS


def retain_reference_auc(path: str | Path) -> float:
    """The retain model's ``mia_min_k`` AUC from a ``MUSE_EVAL.json`` (OU's or unlearnx's)."""
    try:
        return float(json.loads(Path(path).read_text())["mia_min_k"]["agg_value"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"retain_logs: cannot read mia_min_k.agg_value from {path} ({err!r})") from err


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def evaluate_muse(
    model,
    tokenizer,
    source: str | Path,
    *,
    template: Template,
    metrics: Sequence[str] = DEFAULT_METRICS,
    retain_auc: float | None = None,
    k: float = 0.4,
    limit: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, float], dict[str, dict]]:
    """``(summary, logs)`` of the MUSE ``metrics`` (OU names; see the module docstring) on the
    MUSE data at ``source`` (hub id or local folder). ``summary`` maps each metric to its value
    (OU's ``MUSE_SUMMARY.json``); ``logs`` adds per-example values (``value_by_index``, OU's
    ``MUSE_EVAL.json``). ``limit`` keeps the first N rows of each split; ``batch_size``
    overrides OU's (16 knowmem, 8 otherwise)."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"metrics: unknown {unknown}, expected some of {list(METRICS)}")
    say = progress or (lambda _m: None)

    def rows(config: str, split: str) -> list[dict]:
        return muse_data.load_rows(source, config, split)[:limit]

    logs: dict[str, dict] = {}

    def knowmem(split: str) -> dict:
        icl = muse_data.load_rows(source, "knowmem", f"{split}_qa_icl")
        qs, ans = [r["question"] for r in icl], [r["answer"] for r in icl]
        items = [
            encode_chat(tokenizer, template, [*qs, r["question"]], [*ans, r["answer"]], for_generation=True)
            for r in rows("knowmem", f"{split}_qa")
        ]
        scores = generation_scores(
            model,
            tokenizer,
            items,
            max_new_tokens=32,
            stopwords=KNOWMEM_STOPWORDS,
            batch_size=batch_size or 16,
            desc=f"{split}_knowmem",
        )
        return {
            "agg_value": _mean([s["rougeL_f1"] for s in scores]),
            "value_by_index": dict(enumerate(scores)),
        }

    verbmem = None

    def verbmem_items(for_generation: bool) -> list[dict]:
        return [
            encode_completion(
                tokenizer, r["prompt"], r["gt"], insert_space=True, for_generation=for_generation
            )
            for r in rows("verbmem", "forget")
        ]

    for name in metrics:
        say(name)
        if name.endswith("_knowmem_ROUGE"):
            logs[name] = knowmem(name.split("_")[0])
        elif name == "forget_verbmem_ROUGE":
            scores = generation_scores(
                model,
                tokenizer,
                verbmem_items(True),
                max_new_tokens=128,
                batch_size=batch_size or 8,
                desc="verbmem",
            )
            logs[name] = {
                "agg_value": _mean([s["rougeL_f1"] for s in scores]),
                "value_by_index": dict(enumerate(scores)),
            }
        elif name in ("extraction_strength", "exact_memorization"):
            if verbmem is None:
                verbmem = labelled_predictions(
                    model, tokenizer, verbmem_items(False), "argmax", batch_size=batch_size or 8
                )
            if name == "extraction_strength":
                vals = [extraction_strength(a, y) for a, y in verbmem]
            else:
                vals = [float((a == y).double().mean()) if y.numel() else float("nan") for a, y in verbmem]
            logs[name] = {
                "agg_value": _mean(vals),
                "value_by_index": {i: {"score": v} for i, v in enumerate(vals)},
            }
        elif name in ("mia_min_k", "privleak"):
            if "mia_min_k" not in logs:
                logs["mia_min_k"] = _mia_min_k(model, tokenizer, rows, k, batch_size or 8)
            if name == "privleak":
                ref = 0.5 if retain_auc is None else retain_auc
                logs[name] = {
                    "agg_value": privleak(logs["mia_min_k"]["agg_value"], ref),
                    "reference_auc": ref,
                }
    summary = {m: logs[m]["agg_value"] for m in metrics}
    return summary, logs


def _mia_min_k(model, tokenizer, rows, k: float, batch_size: int) -> dict:
    out, scores = {}, {}
    for access in ("forget", "holdout"):
        items = [encode_completion(tokenizer, "", r["text"]) for r in rows("privleak", access)]
        preds = labelled_predictions(model, tokenizer, items, "logp", batch_size=batch_size)
        scores[access] = [min_k_score(lp, k) for lp, _ in preds]
        out[access] = {
            "agg_value": _mean(scores[access]),
            "value_by_index": {i: {"score": s} for i, s in enumerate(scores[access])},
        }
    # OU: roc_auc_score with forget labelled 0 and holdout 1 on the scores, i.e. the chance
    # that a holdout text scores above (is less likely than) a forget text
    value = auc(torch.tensor(scores["holdout"]), torch.tensor(scores["forget"]))
    return {**out, "auc": value, "agg_value": value}
