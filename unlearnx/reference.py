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
    beta: float = 2.5,
    gamma: float | None = None,
    delta: float | None = None,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    margin = beta * delta if delta is not None else (gamma or 0.0)
    sums, counts = sequence_logprobs(input, weight, target, bias=bias, ignore_index=ignore_index)
    return reduce_sequences("simnpo", sums, counts, None, [beta, margin], reduction)
