"""Benchmark inputs and the losses under test.

Inputs are the final hidden states of a randomly initialised Llama-architecture model
(one decoder layer, the given hidden size and vocabulary) and its LM-head weight, so
activations have the scale and structure of a real model's, never all-zero tensors.
Measurement: :mod:`unlearnx.profiling`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from unlearnx import functional as F
from unlearnx import reference as R
from unlearnx.models import tiny_llama
from unlearnx.profiling import median_ms, peak_extra_mb

__all__ = [
    "FLOP_FACTOR",
    "IMPLS",
    "LOSSES",
    "Inputs",
    "forward",
    "gemm_floor",
    "median_ms",
    "model_inputs",
    "peak_extra_mb",
    "step",
]


@dataclass
class Inputs:
    x: torch.Tensor  # (B, T, D) final hidden states, requires grad
    w: torch.Tensor  # (V, D) LM head, requires grad
    t: torch.Tensor  # (B, T) next-token targets
    ref_logps: torch.Tensor  # (B,)
    xr: torch.Tensor  # (B, T, D) reference model's hidden states
    wr: torch.Tensor  # (V, D) reference head
    mask: torch.Tensor  # (B, T) DTO target tokens


def model_inputs(
    B: int,
    T: int,
    D: int,
    V: int,
    dtype: torch.dtype,
    device: str = "cpu",
    seed: int = 0,
    ignore_frac: float = 0.0,
) -> Inputs:
    """Hidden states and head of a random one-layer Llama of hidden size D and vocabulary V."""

    model = tiny_llama(V, hidden=D, layers=1, heads=max(1, D // 64), max_positions=max(T, 128), seed=seed)
    model = model.to(device=device, dtype=dtype).eval()
    ids = torch.randint(0, V, (B, T + 1), device=device)
    with torch.no_grad():
        hidden = torch.cat([model.model(input_ids=ids[i : i + 1, :T]).last_hidden_state for i in range(B)])
    target = ids[:, 1:].clone()
    if ignore_frac > 0:
        target[:, : int(T * ignore_frac)] = -100  # a prompt, as in QA unlearning data
    weight = model.lm_head.weight.detach().clone()
    del model
    with torch.no_grad():
        sums, _ = F.sequence_logprobs(hidden, weight, target)
    ref = sums + torch.randn_like(sums)  # a reference model a little different from the policy
    # the reference model: the policy a few updates earlier
    xr = hidden + 0.05 * hidden.std() * torch.randn_like(hidden)
    wr = weight + 0.05 * weight.std() * torch.randn_like(weight)
    mask = torch.rand(target.shape, device=device) < 0.3
    return Inputs(hidden.requires_grad_(), weight.requires_grad_(), target, ref, xr, wr, mask)


def _npo(mod, inp: Inputs, **kw):
    return mod.npo_loss(inp.x, inp.w, inp.t, inp.ref_logps, **kw)


def _nll(mod, inp: Inputs, **kw):
    return mod.nll_loss(inp.x, inp.w, inp.t, **kw)


def _simnpo(mod, inp: Inputs, **kw):
    return mod.simnpo_loss(inp.x, inp.w, inp.t, **kw)


def _flatten(mod, inp: Inputs, **kw):
    return mod.margin_flatten_loss(inp.x, inp.w, inp.t, **kw)


def _kl(mod, inp: Inputs, **kw):
    return mod.kl_loss(inp.x, inp.w, inp.t, inp.xr, inp.wr, **kw)


def _dipo(mod, inp: Inputs, **kw):
    return mod.dipo_loss(inp.x, inp.w, inp.t, inp.xr, inp.wr, **kw)


def _dto(mod, inp: Inputs, **kw):
    return mod.dto_loss(inp.x, inp.w, inp.t, inp.xr, inp.wr, inp.mask, **kw)


LOSSES: dict[str, Callable] = {
    "nll": _nll,
    "npo": _npo,
    "simnpo": _simnpo,
    "flatten": _flatten,
    "kl": _kl,
    "dipo": _dipo,
    "dto": _dto,
}
# GEMM FLOPs of forward+backward in units of N*D*V, as both implementations do them:
# policy logits, dX and dW (6; a two-pass fused schedule recomputes the logits: 8), plus
# the reference logits (2) where the loss has a reference model. Flattening's backward
# needs no vocabulary GEMM, so only its forward GEMM counts (2).
FLOP_FACTOR = {"nll": 6, "npo": 6, "simnpo": 6, "flatten": 2, "kl": 8, "dipo": 8, "dto": 8}


class _Compiled:
    """``reference`` with each loss wrapped in ``torch.compile`` (compiled once per loss)."""

    def __init__(self) -> None:
        self._cache: dict[str, Callable] = {}

    def __getattr__(self, name: str) -> Callable:
        if name not in self._cache:
            self._cache[name] = torch.compile(getattr(R, name))
        return self._cache[name]


COMPILED = _Compiled()
IMPLS = ("fused", "reference", "compiled")


def forward(loss: str, impl: str, inp: Inputs, chunk_size: int | None = None) -> Callable[[], torch.Tensor]:
    """A closure computing ``loss`` with ``impl`` ("fused", "reference" or "compiled": the
    reference under ``torch.compile``)."""
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    mod, kw = {"fused": (F, {"chunk_size": chunk_size}), "reference": (R, {}), "compiled": (COMPILED, {})}[
        impl
    ]

    def run() -> torch.Tensor:
        inp.x.grad = inp.w.grad = None
        return LOSSES[loss](mod, inp, **kw)

    return run


def step(loss: str, impl: str, inp: Inputs, chunk_size: int | None = None) -> Callable[[], None]:
    """A closure running forward+backward of ``loss`` with ``impl``."""
    fwd = forward(loss, impl, inp, chunk_size)

    def run() -> None:
        fwd().backward()

    return run


def gemm_floor(N: int, D: int, V: int, dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    """The three plain GEMMs of a head's forward+backward (6·N·D·V FLOPs): ``Z = X W^T``,
    ``dX = dZ W``, ``dW = dZ^T X``, on random data of the same shapes and dtype."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(N, D, generator=g).to(device, dtype)
    w = torch.randn(V, D, generator=g).to(device, dtype)
    dz = torch.randn(N, V, generator=g).to(device, dtype)

    def run() -> None:
        x @ w.t()
        dz @ w
        dz.t() @ x

    return run
