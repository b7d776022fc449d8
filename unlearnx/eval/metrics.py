"""Model-level measurements shared by the TOFU and MUSE evaluations, as open-unlearning computes
them (OU commit d3d7cf9, ``src/evals/metrics``): answer log-probabilities and teacher-forced
predictions through the fused forward-only kernels (no ``[tokens, V]`` logits), batched greedy
generation, ROUGE from the ``rouge_score`` package, Min-K%, ROC AUC, PrivLeak, extraction
strength."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import Tensor

from unlearnx import functional
from unlearnx._ops import flatten_margins
from unlearnx.data.template import IGNORE_INDEX, pad_id
from unlearnx.integrations.transformers import hidden_states

logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score logs every call


def lm_head(model) -> tuple[Tensor, Tensor | None]:
    """The output projection's ``(weight (V, D), bias (V,) or None)`` of a HF causal LM."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("model: has no output embeddings (get_output_embeddings() is None)")
    return head.weight, getattr(head, "bias", None)


def pad_rows(rows: Sequence[Sequence[int]], value: int, *, left: bool = False) -> Tensor:
    """``(len(rows), longest)`` int64 of the rows, padded with ``value`` on the right (or left)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            (out[i, width - len(r) :] if left else out[i, : len(r)]).copy_(torch.tensor(r))
    return out


class _StopWords:
    """Stops a sequence once its decoded generation holds a stopword (callers cut the text
    there, so stopping earlier or later gives the same result; this only saves time).
    transformers' ``stop_strings`` needs a BPE-like vocabulary; this works with any tokenizer."""

    def __init__(self, tokenizer, stopwords: Sequence[str], start: int) -> None:
        self.tokenizer, self.stopwords, self.start = tokenizer, list(stopwords), start

    def __call__(self, input_ids: Tensor, scores, **kwargs) -> Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :])
        return torch.tensor([any(w in t for w in self.stopwords) for t in texts], device=input_ids.device)


@torch.no_grad()
def greedy_continue(
    model,
    tokenizer,
    prompts: list[list[int]],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    stopwords: Sequence[str] = (),
    mask_pad_tokens: bool = False,
    desc: str | None = None,
) -> list[str]:
    """Greedy continuations of token-id prompts (left-padded batches), decoded without
    special tokens. ``stopwords`` end a sequence early (the caller cuts the text);
    ``mask_pad_tokens`` also masks pad ids inside prompts from attention, as open-unlearning's
    collator does (``attention_mask = input_ids != pad``); ``desc`` shows a progress bar."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    _warn_if_eos_differs(model, tokenizer)
    out: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, leave=False) if desc else starts:
        batch = prompts[start : start + batch_size]
        ids = pad_rows(batch, pad, left=True)
        if mask_pad_tokens:
            mask = (ids != pad).long()
        else:
            mask = pad_rows([[1] * len(p) for p in batch], 0, left=True)
        width = ids.shape[1]
        stop = {"stopping_criteria": [_StopWords(tokenizer, stopwords, width)]} if stopwords else {}
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            **stop,
        )
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out


def _warn_if_eos_differs(model, tokenizer) -> None:
    """``generate`` stops at the model's generation-config EOS, as open-unlearning's does; when
    that is not the tokenizer's EOS (the one training appends), generations run on past the
    answer to ``max_new_tokens``, which changes ROUGE and costs time, so say so."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    eos = {eos} if isinstance(eos, int) else set(eos or ())
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        warnings.warn(
            f"model: generation stops at EOS {sorted(eos)}, not at the tokenizer's EOS "
            f"{tokenizer.eos_token_id} ({tokenizer.eos_token!r}); generations will run past the answer "
            "(set model.generation_config.eos_token_id)",
            stacklevel=3,
        )


def rouge_scores(generation: str, ground_truth: str) -> dict[str, float]:
    """OU's scores: ``rouge1_recall``, ``rougeL_f1``, ``rougeL_recall`` (``rouge_score`` with
    the Porter stemmer)."""
    from rouge_score import rouge_scorer

    s = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True).score(ground_truth, generation)
    return {
        "rouge1_recall": s["rouge1"].recall,
        "rougeL_f1": s["rougeL"].fmeasure,
        "rougeL_recall": s["rougeL"].recall,
    }


def generation_scores(
    model,
    tokenizer,
    items: Sequence[dict[str, list[int]]],
    *,
    max_new_tokens: int,
    stopwords: Sequence[str] = (),
    batch_size: int = 8,
    desc: str = "generating",
) -> list[dict]:
    """OU's ``eval_text_similarity`` on encoded items (``for_generation=True``): left-padded
    batches, attention masked wherever ``input_ids == pad`` (OU's collator), greedy
    generation, text cut at EOS and ``stopwords``, ROUGE against the labels' text minus the
    prompt's. One dict per item: :func:`rouge_scores` plus input, ground truth, generation."""
    texts = greedy_continue(
        model,
        tokenizer,
        [it["input_ids"] for it in items],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        stopwords=stopwords,
        mask_pad_tokens=True,
        desc=desc,
    )
    cut = [tokenizer.decode([tokenizer.eos_token_id]), *stopwords]
    out = []
    for it, text in zip(items, texts, strict=True):
        for word in cut:
            if word and word in text:
                text = text.split(word)[0]
        prompt, truth = ground_truth(tokenizer, it)
        text = text.strip()
        out.append({**rouge_scores(text, truth), "input": prompt, "ground_truth": truth, "generation": text})
    return out


def ground_truth(tokenizer, item: dict[str, list[int]]) -> tuple[str, str]:
    """``(prompt text, reference text)`` of an item encoded ``for_generation``: OU decodes the
    prompt and the labelled conversation and takes the difference."""
    prompt = tokenizer.decode(item["input_ids"], skip_special_tokens=True)
    full = tokenizer.decode([t for t in item["labels"] if t != IGNORE_INDEX], skip_special_tokens=True)
    return prompt, full.replace(prompt, "").strip()


def padded_batches(
    model, tokenizer, items: Sequence[dict[str, list[int]]], batch_size: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(input_ids, labels, hidden)`` per batch of encoded items, right-padded as OU's
    collator pads them (attention masked wherever ``input_ids == pad``); ``hidden`` the final
    hidden states ``(B, T, D)``, without the head. The caller chooses the grad mode."""
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        ids = pad_rows([it["input_ids"] for it in batch], pad).to(device)
        labels = pad_rows([it["labels"] for it in batch], IGNORE_INDEX).to(device)
        yield ids, labels, hidden_states(model, ids, (ids != pad).long())


def labelled_targets(ids: Tensor, labels: Tensor) -> Tensor:
    """OU's ``tokenwise_logprobs`` positions as shifted targets ``(B, T-1)``: each labelled
    token but the last one of its row (and never position 0, which has nothing before it);
    -100 elsewhere."""
    labelled = labels != IGNORE_INDEX
    pos = torch.arange(ids.shape[1], device=ids.device)
    last = torch.where(labelled, pos, -1).amax(1, keepdim=True)
    return torch.where(labelled & (pos < last) & (pos > 0), ids, IGNORE_INDEX)[:, 1:]


@torch.no_grad()
def labelled_predictions(
    model,
    tokenizer,
    items: Sequence[dict[str, list[int]]],
    kind: Literal["logp", "argmax", "zscore"],
    *,
    batch_size: int = 8,
) -> list[tuple[Tensor, Tensor]]:
    """Per item ``(values, tokens)`` over its labelled tokens except the last (OU's
    ``tokenwise_logprobs``): ``kind="logp"`` gives each token's log-probability (fp32),
    ``"argmax"`` the model's greedy prediction there, ``"zscore"`` Min-K%++'s normalised
    log-probability ``(log p - mu) / sigma`` (mean and standard deviation of ``log p`` under
    the model's own next-token distribution; variance clamped at 1e-6 as OU does). ``logp``
    and ``argmax`` take one fused pass over the head per batch (right-padded); ``zscore``
    needs the whole distribution and forms logits for the labelled positions only, in row
    chunks. Results on CPU."""
    weight, bias = lm_head(model)
    out = []
    for ids, labels, hidden in padded_batches(model, tokenizer, items, batch_size):
        target = labelled_targets(ids, labels)
        hidden = hidden[:, :-1]
        if kind == "logp":
            values = functional.token_logprobs(hidden, weight, target, bias=bias).float()
        elif kind == "zscore":
            values = _zscores(hidden, weight, bias, target)
        else:
            flat = hidden.reshape(-1, hidden.shape[-1])
            values = flatten_margins(flat, weight, bias, target.reshape(-1), IGNORE_INDEX, None)[1]
            values = values.reshape(target.shape)
        for v, t in zip(values.cpu(), target.cpu(), strict=True):
            m = t != IGNORE_INDEX
            out.append((v[m], t[m]))
    return out


def _zscores(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, rows: int = 512) -> Tensor:
    values = torch.zeros(target.shape, dtype=torch.float32, device=hidden.device)
    where = target != IGNORE_INDEX
    h, t = hidden[where], target[where]
    parts = []
    for s in range(0, h.shape[0], rows):
        logits = h[s : s + rows] @ weight.T
        lp = (logits if bias is None else logits + bias).float().log_softmax(-1)
        mu = (lp.exp() * lp).sum(-1)
        var = ((lp.exp() * lp.square()).sum(-1) - mu.square()).clamp(min=1e-6)
        parts.append((lp.gather(-1, t[s : s + rows, None]).squeeze(-1) - mu) / var.sqrt())
    if parts:
        values[where] = torch.cat(parts)
    return values


def min_k_score(logp: Tensor, k: float = 0.4) -> float:
    """OU's Min-K% Prob score of one text: ``-mean`` of the ``max(1, floor(k n))`` lowest
    token log-probs (0 for no tokens); higher means less likely a member."""
    if not 0 < k <= 1:
        raise ValueError(f"k: expected a fraction in (0, 1], got {k!r}")
    if logp.numel() == 0:
        return 0.0
    n = max(1, int(logp.numel() * k))
    return -float(logp.double().sort().values[:n].mean())


def auc(member_scores: Tensor, nonmember_scores: Tensor) -> float:
    """ROC AUC = P(member score > non-member score) + P(equal) / 2."""
    a, b = (torch.as_tensor(x, dtype=torch.float64).flatten() for x in (member_scores, nonmember_scores))
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("auc: both score sets must be non-empty")
    diff = a[:, None] - b[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def privleak(auc_model: float, auc_reference: float = 0.5) -> float:
    """OU's PrivLeak in percent from Min-K AUCs (forget members vs holdout):
    ``((1 - auc) - (1 - ref)) / ((1 - ref) + 1e-10) * 100``."""
    for name, v in (("auc_model", auc_model), ("auc_reference", auc_reference)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name}: expected an AUC in [0, 1], got {v!r}")
    return ((1 - auc_model) - (1 - auc_reference)) / ((1 - auc_reference) + 1e-10) * 100


def extraction_strength(argmax: Tensor, labels: Tensor) -> float:
    """OU's ES of one example (see the module docstring); 0 for no tokens."""
    n = labels.numel()
    if n == 0:
        return 0.0
    right = (argmax == labels).tolist()
    k = next((k for k in range(n) if all(right[k:])), n - 1)
    return 1 - k / n


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], *, batch_size: int = 8) -> float:
    """``exp`` of the mean next-token NLL over every token of ``texts`` (each tokenised on its
    own, special tokens as the tokenizer adds them; at least two tokens each), through the
    fused forward-only path."""
    items = []
    for i, text in enumerate(texts):
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if len(ids) < 2:
            raise ValueError(f"texts: text {i} has {len(ids)} token(s); nothing to predict")
        items.append({"input_ids": ids, "labels": ids})
    if not items:
        raise ValueError("texts: empty")
    weight, bias = lm_head(model)
    total, count = 0.0, 0
    for _, labels, hidden in padded_batches(model, tokenizer, items, batch_size):
        target = labels[:, 1:]
        total += float(functional.nll_loss(hidden[:, :-1], weight, target, bias=bias, reduction="sum"))
        count += int((target != IGNORE_INDEX).sum())
    return float(torch.exp(torch.tensor(total / count)))
