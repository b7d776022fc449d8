"""The losses of :mod:`unlearnx.functional`, materialising ``[tokens, V]`` logits.

What a user writes in plain PyTorch: logits in the input dtype, upcast to fp32 (fp64
stays fp64), ``log_softmax``, ``gather``. Same signatures as the fused functions except
``chunk_size`` (nothing is chunked here). They are the test oracle and the benchmark
baseline; the per-sequence math is shared with the fused path (``_objectives``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from unlearnx._objectives import reduce_sequences


def token_logprobs(
    input: Tensor, weight: Tensor, target: Tensor, *, bias: Tensor | None = None, ignore_index: int = -100
) -> Tensor:
    """``(..., T)`` log-probability of each target, 0 where ignored."""
    logits = F.linear(input, weight, bias)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp = logits.to(acc).log_softmax(-1)
    valid = target != ignore_index
    picked = logp.gather(-1, torch.where(valid, target, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, picked, torch.zeros_like(picked))


def sequence_logprobs(
    input: Tensor, weight: Tensor, target: Tensor, *, bias: Tensor | None = None, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    logp = token_logprobs(input, weight, target, bias=bias, ignore_index=ignore_index)
    return logp.sum(-1), (target != ignore_index).sum(-1)


def nll_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    logp = token_logprobs(input, weight, target, bias=bias, ignore_index=ignore_index)
    if reduction == "none":
        return -logp
    sums, counts = logp.sum(-1).reshape(-1), (target != ignore_index).sum(-1).reshape(-1)
    return reduce_sequences("nll", sums, counts, None, [], reduction)


def npo_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    ref_logps: Tensor,
    *,
    beta: float = 0.1,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    sums, counts = sequence_logprobs(input, weight, target, bias=bias, ignore_index=ignore_index)
    return reduce_sequences("npo", sums, counts, ref_logps, [beta], reduction)


def simnpo_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    beta: float = 4.5,
    delta: float = 0.0,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    sums, counts = sequence_logprobs(input, weight, target, bias=bias, ignore_index=ignore_index)
    return reduce_sequences("simnpo", sums, counts, None, [beta, beta * delta], reduction)


def _logits(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    logits = F.linear(input, weight, bias)
    return logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)


def _token_mean(per_token: Tensor, valid: Tensor, reduction: str) -> Tensor:
    per_token = torch.where(valid, per_token, torch.zeros_like(per_token))
    if reduction == "none":
        return per_token
    total = per_token.sum()
    return total if reduction == "sum" else total / valid.sum().clamp(min=1)


def margin_flatten_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    z = _logits(input, weight, bias)
    margin = z.max(-1).values - z.mean(-1)
    return _token_mean(margin.square(), target != ignore_index, reduction)


def _kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(q || p) over the last dim, from log-probabilities."""
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def kl_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    ref_input: Tensor,
    ref_weight: Tensor,
    *,
    ref_bias: Tensor | None = None,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    log_p = _logits(input, weight, bias).log_softmax(-1)
    with torch.no_grad():
        log_q = _logits(ref_input, ref_weight, ref_bias).log_softmax(-1)
    return _token_mean(_kl(log_q, log_p), target != ignore_index, reduction)


def dipo_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    ref_input: Tensor,
    ref_weight: Tensor,
    *,
    top_k: int = 1,
    shift: float = 1.0,
    beta: float = 1.0,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """DiPO as reconstructed (see ``functional.dipo_loss``), written as the explicit
    sequence-KL Bradley-Terry form: ``Delta_t = KL(q-||pi) - KL(q+||pi) - KL(q-||pi_ref)
    + KL(q+||pi_ref)``."""
    log_p = _logits(input, weight, bias).log_softmax(-1)
    with torch.no_grad():
        r = _logits(ref_input, ref_weight, ref_bias)
        in_top = (r >= r.topk(top_k, dim=-1).values[..., -1:]).to(r.dtype)  # ties at the k-th value included
        log_ref = r.log_softmax(-1)
        log_plus = (r - shift * in_top).log_softmax(-1)
        log_minus = (r + shift * in_top).log_softmax(-1)
    delta = _kl(log_minus, log_p) - _kl(log_plus, log_p) - _kl(log_minus, log_ref) + _kl(log_plus, log_ref)
    valid = target != ignore_index
    sums = torch.where(valid, delta, torch.zeros_like(delta)).sum(-1)
    return reduce_sequences("dipo", sums, valid.sum(-1), None, [beta, top_k, shift], reduction)


def dto_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    ref_input: Tensor,
    ref_weight: Tensor,
    target_mask: Tensor,
    *,
    beta: float = 0.1,
    kl_weight: float = 1.0,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """DTO as reconstructed (see ``functional.dto_loss``)."""
    log_p = _logits(input, weight, bias).log_softmax(-1)
    with torch.no_grad():
        log_q = _logits(ref_input, ref_weight, ref_bias).log_softmax(-1)
    valid = target != ignore_index
    safe = torch.where(valid, target, 0).unsqueeze(-1)
    logp, ref_logp = log_p.gather(-1, safe).squeeze(-1), log_q.gather(-1, safe).squeeze(-1)
    npo = -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp))
    on_target, other = valid & target_mask, valid & ~target_mask
    zero = torch.zeros_like(npo)
    forget = torch.where(on_target, npo, zero).sum() / on_target.sum().clamp(min=1)
    keep = torch.where(other, _kl(log_q, log_p), zero).sum() / other.sum().clamp(min=1)
    return forget + kl_weight * keep
