"""Per-sequence objectives on summed per-token values, and their reductions.

Most losses of unlearnx are ``sum_b f(S_b)`` up to a normaliser, where ``S_b`` sums a
per-token value over the valid tokens of sequence ``b``: the target log-probability
(NLL, NPO, SimNPO), the token KL to the reference (KL), or DiPO's Delta_t. The row
family (``_rows``) that produces the value is part of the objective.
Only ``f`` differs between losses, so a loss is one entry in :data:`OBJECTIVES`: ``f`` and
its closed-form derivative ``df/dS``. The fused driver (``_chunked``) and the materialising
reference share ``f``; the fused driver scales each token's gradient by ``df/dS_b``, while
the reference differentiates ``f`` by autograd, so tests check the derivative too.

Sequences without valid tokens contribute 0 and are not counted by ``"mean"``, so an
all-ignored batch has loss 0 and zero gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# f(S (B,), counts (B,) float, params (B,) or None, hparams) -> per-sequence loss (B,);
# the derivative has the same signature and returns df/dS (B,).
PerSequence = Callable[[Tensor, Tensor, "Tensor | None", Sequence[float]], Tensor]


@dataclass(frozen=True)
class Objective:
    per_sequence: PerSequence
    derivative: PerSequence
    # "mean" divides by the number of valid tokens (HF convention) instead of non-empty sequences.
    token_mean: bool = False
    # f is linear with f(0) = 0: partial sums of a sequence may be processed in different
    # chunks, so chunks need not be cut at sequence boundaries.
    linear: bool = False
    # the row family giving the per-token value, and which hparams parameterise it
    family: str = "logp"
    family_params: Callable[[Sequence[float]], list[float]] = lambda hp: []


def _nll(s: Tensor, counts: Tensor, params: Tensor | None, hp: Sequence[float]) -> Tensor:
    return -s


def _nll_grad(s: Tensor, counts: Tensor, params: Tensor | None, hp: Sequence[float]) -> Tensor:
    return -torch.ones_like(s)


def _npo(s: Tensor, counts: Tensor, ref: Tensor | None, hp: Sequence[float]) -> Tensor:
    (beta,) = hp
    return -(2.0 / beta) * F.logsigmoid(-beta * (s - ref))


def _npo_grad(s: Tensor, counts: Tensor, ref: Tensor | None, hp: Sequence[float]) -> Tensor:
    (beta,) = hp
    return 2.0 * torch.sigmoid(beta * (s - ref))


def _simnpo(s: Tensor, counts: Tensor, params: Tensor | None, hp: Sequence[float]) -> Tensor:
    beta, gamma = hp
    # clamp: empty sequences are masked out afterwards, but 0/0 would poison gradients.
    return -(2.0 / beta) * F.logsigmoid(-(beta / counts.clamp(min=1)) * s - gamma)


def _simnpo_grad(s: Tensor, counts: Tensor, params: Tensor | None, hp: Sequence[float]) -> Tensor:
    beta, gamma = hp
    n = counts.clamp(min=1)
    return (2.0 / n) * torch.sigmoid((beta / n) * s + gamma)


def _kl(s: Tensor, counts: Tensor, params: Tensor | None, hp: Sequence[float]) -> Tensor:
    return s


def _kl_grad(s: Tensor, counts: Tensor, params: Tensor | None, hp: Sequence[float]) -> Tensor:
    return torch.ones_like(s)


def _dipo(s: Tensor, counts: Tensor, params: Tensor | None, hp: Sequence[float]) -> Tensor:
    beta = hp[0]
    return -F.logsigmoid(beta * s)


def _dipo_grad(s: Tensor, counts: Tensor, params: Tensor | None, hp: Sequence[float]) -> Tensor:
    beta = hp[0]
    return -beta * torch.sigmoid(-beta * s)


OBJECTIVES: dict[str, Objective] = {
    "nll": Objective(_nll, _nll_grad, token_mean=True, linear=True),
    "npo": Objective(_npo, _npo_grad),
    "simnpo": Objective(_simnpo, _simnpo_grad),
    "kl": Objective(_kl, _kl_grad, token_mean=True, linear=True, family="kl"),
    # hparams: beta, top_k, shift
    "dipo": Objective(_dipo, _dipo_grad, family="dipo", family_params=lambda hp: [hp[1], hp[2]]),
}

REDUCTIONS = ("mean", "sum", "none")


def _masked(
    fn: PerSequence, s: Tensor, counts: Tensor, params: Tensor | None, hparams: Sequence[float]
) -> Tensor:
    p = None if params is None else params.to(s.dtype)
    values = fn(s, counts.to(s.dtype), p, hparams)
    return torch.where(counts > 0, values, torch.zeros_like(values))


def per_sequence_loss(
    name: str, s: Tensor, counts: Tensor, params: Tensor | None, hparams: Sequence[float]
) -> Tensor:
    """Per-sequence loss ``(B,)`` in the dtype of ``s``; 0 for sequences with no valid token."""
    return _masked(OBJECTIVES[name].per_sequence, s, counts, params, hparams)


def per_sequence_grad(
    name: str, s: Tensor, counts: Tensor, params: Tensor | None, hparams: Sequence[float]
) -> Tensor:
    """``d per_sequence_loss / dS`` ``(B,)``; 0 for sequences with no valid token."""
    return _masked(OBJECTIVES[name].derivative, s, counts, params, hparams)


def reduction_scale(name: str, counts: Tensor, reduction: str, dtype: torch.dtype) -> Tensor:
    """Factor turning the sum of per-sequence losses into the requested reduction."""
    if reduction == "sum":
        return torch.ones((), dtype=dtype, device=counts.device)
    denom = counts.sum() if OBJECTIVES[name].token_mean else (counts > 0).sum()
    return 1.0 / denom.clamp(min=1).to(dtype)


def reduce_sequences(
    name: str, s: Tensor, counts: Tensor, params: Tensor | None, hparams: Sequence[float], reduction: str
) -> Tensor:
    """The loss from summed log-probs ``s (B,)`` and valid-token ``counts (B,)``."""
    per = per_sequence_loss(name, s, counts, params, hparams)
    if reduction == "none":
        return per
    return per.sum() * reduction_scale(name, counts, reduction, s.dtype)
