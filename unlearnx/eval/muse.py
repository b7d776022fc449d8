"""MUSE-style metrics (Shi et al. 2024) on raw text, through the fused kernels.

- ``verbmem``: greedy continuation of each text's first ``prefix_tokens`` tokens, scored by
  ROUGE-L F1 against the true continuation (same length in tokens).
- ``knowmem``: greedy answers to questions, ROUGE-L F1 against the gold answers (zero-shot;
  MUSE's own prompts add few-shot examples).
- ``min_k_scores``: Min-K% Prob membership score of each text, the mean of its ``k`` fraction
  of lowest token log-probs (higher: more likely seen in training).
- ``auc``: ROC AUC of member vs non-member scores (ties count one half); ``privleak`` =
  ``(AUC_unlearned - AUC_retrain) / AUC_retrain * 100`` with AUCs of forget vs holdout texts.
- ``extraction_strength``: ``1 - k/n`` for the shortest prefix length ``k`` after which the
  model's teacher-forced greedy predictions reproduce the rest of the ``n`` target tokens;
  the argmax comes from the fused max kernel, not from materialised logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unlearnx import functional
from unlearnx._ops import flatten_margins
from unlearnx.eval.metrics import greedy_continue, greedy_generate, lm_head, rouge_l_f1
from unlearnx.integrations.transformers import hidden_states


def _encode_texts(tokenizer, texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    rows = [tokenizer(t)["input_ids"][:max_length] for t in texts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


@torch.no_grad()
def token_logprobs(
    model, tokenizer, texts: list[str], *, max_length: int = 2048, batch_size: int = 8
) -> list[Tensor]:
    """Per text, the log-probability of each of its tokens after the first (fp32, CPU)."""
    device = next(model.parameters()).device
    weight, bias = lm_head(model)
    out: list[Tensor] = []
    for start in range(0, len(texts), batch_size):
        ids, mask = _encode_texts(tokenizer, texts[start : start + batch_size], max_length)
        ids, mask = ids.to(device), mask.to(device)
        hidden = hidden_states(model, ids, mask)
        target = torch.where(mask[:, 1:] == 1, ids[:, 1:], -100)
        logp = functional.token_logprobs(hidden[:, :-1], weight, target, bias=bias).float().cpu()
        out += [lp[m == 1] for lp, m in zip(logp, mask[:, 1:].cpu(), strict=True)]
    return out


def min_k_scores(model, tokenizer, texts: list[str], *, k: float = 0.4, **kw) -> Tensor:
    """``(B,)`` Min-K% Prob: mean of the ``ceil(k * n)`` lowest token log-probs of each text."""
    if not 0 < k <= 1:
        raise ValueError(f"k: expected a fraction in (0, 1], got {k!r}")
    scores = []
    for lp in token_logprobs(model, tokenizer, texts, **kw):
        if lp.numel() == 0:
            raise ValueError("texts: every text needs at least two tokens")
        n = max(1, int(torch.ceil(torch.tensor(k * lp.numel()))))
        scores.append(lp.sort().values[:n].mean())
    return torch.stack(scores)


def auc(member_scores: Tensor, nonmember_scores: Tensor) -> float:
    """ROC AUC = P(member score > non-member score) + P(equal) / 2."""
    a, b = (torch.as_tensor(x, dtype=torch.float64).flatten() for x in (member_scores, nonmember_scores))
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("auc: both score sets must be non-empty")
    diff = a[:, None] - b[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def privleak(auc_unlearned: float, auc_retrain: float) -> float:
    """MUSE's PrivLeak in percent: 0 when the unlearned model leaks membership like a model
    retrained without the forget set; large |values| mean over- or under-unlearning."""
    if auc_retrain <= 0:
        raise ValueError(f"auc_retrain: expected a positive AUC, got {auc_retrain!r}")
    return (auc_unlearned - auc_retrain) / auc_retrain * 100.0


def verbmem(
    model,
    tokenizer,
    texts: list[str],
    *,
    prefix_tokens: int = 32,
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> list[float]:
    """ROUGE-L F1 of each greedy continuation of a text's first ``prefix_tokens`` tokens
    against the text's next ``max_new_tokens`` tokens."""
    prompts, truths = [], []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) <= prefix_tokens:
            raise ValueError(
                f"texts: a text has {len(ids)} tokens, not more than prefix_tokens={prefix_tokens}"
            )
        prompts.append(ids[:prefix_tokens])
        truths.append(
            tokenizer.decode(ids[prefix_tokens : prefix_tokens + max_new_tokens], skip_special_tokens=True)
        )
    gens = greedy_continue(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return [rouge_l_f1(g, t) for g, t in zip(gens, truths, strict=True)]


def knowmem(
    model,
    tokenizer,
    questions: list[str],
    answers: list[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> list[float]:
    """ROUGE-L F1 of each greedy answer against the gold answer."""
    gens = greedy_generate(model, tokenizer, questions, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return [rouge_l_f1(g, a) for g, a in zip(gens, answers, strict=True)]


@torch.no_grad()
def extraction_strength(model, tokenizer, texts: list[str], *, max_length: int = 2048) -> list[float]:
    """Per text ``1 - k/n``: ``n`` predicted tokens, ``k`` the shortest prefix after which every
    teacher-forced greedy prediction is right (1: fully extractable, 0: last token wrong)."""
    device = next(model.parameters()).device
    weight, bias = lm_head(model)
    out = []
    for text in texts:
        ids, mask = (t.to(device) for t in _encode_texts(tokenizer, [text], max_length))
        if ids.shape[1] < 2:
            raise ValueError("texts: every text needs at least two tokens")
        hidden = hidden_states(model, ids, mask)[0, :-1]
        target = ids[0, 1:]
        _, argmax = flatten_margins(hidden, weight, bias, target, -100, None)
        right = (argmax == target).cpu().tolist()
        n = len(right)
        k = n
        while k > 0 and right[k - 1]:
            k -= 1
        out.append(1.0 - k / n)
    return out


def evaluate_muse(
    model,
    tokenizer,
    *,
    forget_texts: list[str],
    holdout_texts: list[str],
    forget_qa: list[tuple[str, str]],
    retain_qa: list[tuple[str, str]],
    retain_auc: float | None = None,
    prefix_tokens: int = 32,
    max_new_tokens: int = 128,
    k: float = 0.4,
    batch_size: int = 8,
) -> dict:
    """All MUSE-style metrics in one summary: ``verbmem`` (on ``forget_texts``),
    ``knowmem_forget`` / ``knowmem_retain`` (QA pairs), ``extraction_strength`` (forget texts),
    ``mink_auc`` (forget vs holdout) and, given the retrained model's AUC, ``privleak``."""
    if not forget_texts or not holdout_texts:
        raise ValueError("forget_texts, holdout_texts: both must be non-empty")
    members = min_k_scores(model, tokenizer, forget_texts, k=k, batch_size=batch_size)
    nonmembers = min_k_scores(model, tokenizer, holdout_texts, k=k, batch_size=batch_size)
    mink_auc = auc(members, nonmembers)

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    def qa(pairs: list[tuple[str, str]]) -> float | None:
        if not pairs:
            return None
        q, a = zip(*pairs, strict=True)
        return mean(knowmem(model, tokenizer, list(q), list(a), batch_size=batch_size))

    return {
        "verbmem": mean(
            verbmem(
                model,
                tokenizer,
                forget_texts,
                prefix_tokens=prefix_tokens,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
        ),
        "knowmem_forget": qa(forget_qa),
        "knowmem_retain": qa(retain_qa),
        "extraction_strength": mean(extraction_strength(model, tokenizer, forget_texts)),
        "mink_auc": mink_auc,
        "privleak": None if retain_auc is None else privleak(mink_auc, retain_auc),
    }
