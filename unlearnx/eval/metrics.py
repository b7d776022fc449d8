"""Model-level measurements shared by the benchmarks: answer log-probabilities through the
fused forward-only kernels (no ``[tokens, V]`` logits), batched greedy generation, ROUGE-L."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from unlearnx import functional
from unlearnx.data.tofu import encode_qa, prompt_ids
from unlearnx.integrations.transformers import hidden_states


def lm_head(model) -> tuple[Tensor, Tensor | None]:
    """The output projection's ``(weight (V, D), bias (V,) or None)`` of a HF causal LM."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("model: has no output embeddings (get_output_embeddings() is None)")
    return head.weight, getattr(head, "bias", None)


@torch.no_grad()
def answer_logprobs(
    model, tokenizer, questions: list[str], answers: list[str], *, batch_size: int = 8, max_length: int = 512
) -> tuple[Tensor, Tensor]:
    """``(sums (B,), counts (B,))``: summed log-probability of each answer given its question,
    and the answer's token count (EOS included). fp32, on CPU."""
    sums, counts = [], []
    device = next(model.parameters()).device
    weight, bias = lm_head(model)
    for start in range(0, len(questions), batch_size):
        enc = encode_qa(
            tokenizer, questions[start : start + batch_size], answers[start : start + batch_size], max_length
        )
        ids, mask, labels = (t.to(device) for t in (enc.input_ids, enc.attention_mask, enc.labels))
        hidden = hidden_states(model, ids, mask)
        s, c = functional.sequence_logprobs(hidden[:, :-1], weight, labels[:, 1:], bias=bias)
        sums.append(s.float().cpu())
        counts.append(c.cpu())
    return torch.cat(sums), torch.cat(counts)


def greedy_generate(
    model, tokenizer, questions: list[str], *, batch_size: int = 8, max_new_tokens: int = 64
) -> list[str]:
    """Greedy continuations of each question's prompt, decoded without special tokens."""
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    return greedy_continue(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (what open-unlearning pads with)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


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


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _lcs_words(prediction: str, reference: str) -> tuple[int, int, int]:
    """(LCS length, prediction words, reference words) over lowercased alphanumeric words
    (rouge_score's tokenisation, without stemming)."""
    pred, ref = _words(prediction), _words(reference)
    prev = [0] * (len(pred) + 1)
    for r in ref:
        cur = [0]
        for j, p in enumerate(pred):
            cur.append(prev[j] + 1 if r == p else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1], len(pred), len(ref)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall: LCS / reference words. 0 for an empty reference."""
    lcs, _, n_ref = _lcs_words(prediction, reference)
    return lcs / n_ref if n_ref else 0.0
