"""Model-level measurements shared by the benchmarks: answer log-probabilities through the
fused forward-only kernels (no ``[tokens, V]`` logits), batched greedy generation, ROUGE-L."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from unlearnx import functional
from unlearnx.data.tofu import encode_qa, prompt_text
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
    prompts = [tokenizer(prompt_text(tokenizer, q))["input_ids"] for q in questions]
    return greedy_continue(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)


@torch.no_grad()
def greedy_continue(
    model, tokenizer, prompts: list[list[int]], *, batch_size: int = 8, max_new_tokens: int = 64
) -> list[str]:
    """Greedy continuations of token-id prompts (left-padded batches), decoded without
    special tokens."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
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
