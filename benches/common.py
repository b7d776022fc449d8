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
from unlearnx.profiling import interleaved_median_ms, median_ms, peak_extra_mb

__all__ = [
    "BASELINES",
    "FLOP_FACTOR",
    "FUSED_FLOP_FACTOR",
    "IMPLS",
    "LOSSES",
    "Inputs",
    "forward",
    "gemm_floor",
    "interleaved_median_ms",
    "measured",
    "median_ms",
    "model_inputs",
    "peak_extra_mb",
    "step",
    "unavailable",
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
    weight = model.lm_head.weight.detach().clone()
    del model
    return _with_references(hidden, weight, ids[:, 1:].clone(), ignore_frac)


def random_inputs(
    B: int,
    T: int,
    D: int,
    V: int,
    dtype: torch.dtype,
    device: str = "cpu",
    seed: int = 0,
    ignore_frac: float = 0.0,
) -> Inputs:
    """Unit-RMS random hidden states and a random head (std 1/sqrt(D), so logits have unit
    scale), drawn on ``device`` itself: no model, no transformers, and no host copy of a large
    head (a 152k x 3584 head or 128k tokens of hidden states are GBs). For GPU hosts."""
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, device=device, dtype=dtype)
    weight = (torch.randn(V, D, generator=g, device=device) * D**-0.5).to(dtype)
    target = torch.randint(0, V, (B, T), generator=g, device=device)
    return _with_references(hidden, weight, target, ignore_frac)


def _with_references(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, ignore_frac: float
) -> Inputs:
    """The reference-side inputs of the losses, all drawn on the inputs' device."""
    T = target.shape[1]
    if ignore_frac > 0:
        target[:, : int(T * ignore_frac)] = -100  # a prompt, as in QA unlearning data
    device = hidden.device
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


def measured(record: dict) -> bool:
    """Whether a results record holds timings: not one of an implementation that ran out of
    memory (``oom``) or could not be built (``failed``: why)."""
    return not (record.get("oom") or record.get("failed"))


LOSSES: dict[str, Callable] = {
    "nll": _nll,
    "npo": _npo,
    "simnpo": _simnpo,
    "flatten": _flatten,
    "kl": _kl,
    "dipo": _dipo,
    "dto": _dto,
}
# GEMM FLOPs of forward+backward in units of N*D*V for a logits-based implementation (the
# reference): policy logits, dX and dW (6), plus the reference logits (2) where the loss has
# a reference model. Flattening's backward needs no vocabulary GEMM (2). The floor is scaled
# by these. A two-pass fused schedule recomputes the logits (+2).
FLOP_FACTOR = {"nll": 6, "npo": 6, "simnpo": 6, "flatten": 2, "kl": 8, "dipo": 8, "dto": 8}
# What the single-pass fused schedule does where it differs: DiPO's value is linear in the
# policy logits, so it never forms them: reference logits, U = G W, and dW (6; dX = c U).
FUSED_FLOP_FACTOR = {**FLOP_FACTOR, "dipo": 6}


class _Compiled:
    """``reference`` with each loss wrapped in ``torch.compile`` (compiled once per loss)."""

    def __init__(self) -> None:
        self._cache: dict[str, Callable] = {}

    def __getattr__(self, name: str) -> Callable:
        if name not in self._cache:
            self._cache[name] = torch.compile(getattr(R, name))
        return self._cache[name]


COMPILED = _Compiled()


def _liger_nll(inp: Inputs) -> torch.Tensor:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    d = inp.x.shape[-1]
    return LigerFusedLinearCrossEntropyLoss()(inp.w, inp.x.reshape(-1, d), inp.t.reshape(-1))


def _cce_nll(inp: Inputs) -> torch.Tensor:
    from cut_cross_entropy import linear_cross_entropy

    # "cce" is the Triton kernel (GPU); "torch_compile" is the package's own CPU-capable path
    impl = "cce" if inp.x.is_cuda else "torch_compile"
    return linear_cross_entropy(inp.x, inp.w, inp.t, impl=impl)


# Other projects' fused linear cross-entropy (token-mean NLL only), as baselines when importable.
BASELINES: dict[str, tuple[str, Callable[[Inputs], torch.Tensor]]] = {
    "liger": ("liger_kernel", _liger_nll),
    "cce": ("cut_cross_entropy", _cce_nll),
}
IMPLS = ("fused", "reference", "compiled", *BASELINES)


def unavailable(loss: str, impl: str, device: torch.device) -> str | None:
    """Why ``impl`` cannot run ``loss`` here, or None if it can."""
    import importlib.util

    if impl not in BASELINES:
        return None
    module, _ = BASELINES[impl]
    if loss != "nll":
        return f"{impl} implements only nll (fused linear cross-entropy)"
    if importlib.util.find_spec(module) is None:
        return f"{module} is not importable"
    if impl == "liger" and device.type != "cuda":
        return "liger's Triton kernels need a CUDA GPU"
    return None


def forward(loss: str, impl: str, inp: Inputs, chunk_size: int | None = None) -> Callable[[], torch.Tensor]:
    """A closure computing ``loss`` with ``impl``: "fused", "reference", "compiled" (the
    reference under ``torch.compile``) or a baseline of ``BASELINES`` (nll only)."""
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    if impl in BASELINES:
        reason = unavailable(loss, impl, inp.x.device)
        if reason is not None:
            raise ValueError(f"impl: {reason}")
        fn = BASELINES[impl][1]

        def run_baseline() -> torch.Tensor:
            inp.x.grad = inp.w.grad = None
            return fn(inp)

        return run_baseline
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
    # drawn on the device: N x V of dZ is 80 GB in fp32 at 128k tokens and a 152k vocabulary
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(N, D, generator=g, device=device, dtype=dtype)
    w = torch.randn(V, D, generator=g, device=device, dtype=dtype)
    dz = torch.randn(N, V, generator=g, device=device, dtype=dtype)

    def run() -> None:
        x @ w.t()
        dz @ w
        dz.t() @ x

    return run
