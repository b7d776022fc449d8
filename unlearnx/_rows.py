"""Row-kernel families: what the statistics and gradient kernels of a loss compute.

A family turns a chunk of policy logits ``z [C, V]`` (and, for reference-based losses,
reference logits ``r [C, V]``) into per-row statistics, names the per-token *value* a loss
is built on, and rewrites ``z`` in place into ``dL/dz`` given per-row coefficients
``dL/dvalue``. The chunk driver (``_chunked``) is the same for every family. A ``linear``
family (DiPO) has a value linear in ``z`` with a direction from the reference alone; the
driver then never forms ``z`` at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

Stats = tuple[Tensor, ...]

_namespace = "unlearnx"


def kernels():
    """The row-kernel operators the families call: ``torch.ops.unlearnx``, or
    ``torch.ops.unlearnx_simt`` inside ``unlearnx.simt.simt_kernels()``."""
    return getattr(torch.ops, _namespace)


@contextlib.contextmanager
def kernel_namespace(name: str) -> Iterator[None]:
    """Routes :func:`kernels` to ``torch.ops.<name>`` inside the block."""
    global _namespace
    previous, _namespace = _namespace, name
    try:
        yield
    finally:
        _namespace = previous


class LogProb:
    """value = log p(target). stats = (lse, logp)."""

    needs_ref = False
    linear = False

    def stats(self, z: Tensor, r: Tensor | None, t: Tensor) -> Stats:
        return tuple(kernels().lse_stats(z, t))

    def value(self, stats: Stats) -> Tensor:
        return stats[1]

    def grad_(self, z: Tensor, r: Tensor | None, t: Tensor, stats: Stats, coef: Tensor) -> None:
        kernels().logprob_grad_(z, t, stats[0], stats[1], coef)


class Reference:
    """Policy and frozen reference rows. value = KL(pi_ref || pi) per token.
    stats = (lse, ref_lse, logp, ref_logp, kl). ``grad_`` takes one coefficient (on KL)
    or a pair ``(a, c)``: the gradient of ``a * log p(target) + c * KL``."""

    needs_ref = True
    linear = False

    def stats(self, z: Tensor, r: Tensor | None, t: Tensor) -> Stats:
        return tuple(kernels().ref_stats(z, r, t))

    def value(self, stats: Stats) -> Tensor:
        return stats[4]

    def grad_(
        self, z: Tensor, r: Tensor | None, t: Tensor, stats: Stats, coef: Tensor | Sequence[Tensor]
    ) -> None:
        a, c = (torch.zeros_like(coef), coef) if isinstance(coef, Tensor) else coef
        lse, ref_lse, logp, ref_logp, _ = stats
        kernels().ref_grad_(z, r, t, lse, ref_lse, logp, ref_logp, a, c)


class Dipo:
    """DiPO rows (reconstruction, see ``functional.dipo_loss``): value = Delta_t =
    <g, z - r>, g = q+ - q-, q+- = softmax(r -+ shift 1_H), H the entries of r at least as
    large as its ``top_k``-th largest (ties included). stats = (delta,).

    Delta is linear in the policy logits and g depends on the reference alone, so this family
    never sees ``z``: :meth:`direction_` turns a reference chunk into g, and the driver
    (``_chunked``) forms ``<g, z> = <g W, x> + <g, b>`` and the gradients ``dX = coef g W``,
    ``dW = (coef g)^T X`` from it."""

    needs_ref = True
    linear = True

    def __init__(self, top_k: int, shift: float) -> None:
        self.top_k, self.shift = top_k, shift

    def direction_(self, r: Tensor) -> Tensor:
        """Rewrites ``r [C, V]`` into g in place; returns ``<g, r> (C,)`` (fp32, fp64 for fp64)."""
        if self.top_k == 1:  # H = the row's maxima: the kernel finds them in its own max pass
            return kernels().dipo_direction_(r, None, self.shift)
        acc = torch.float64 if r.dtype == torch.float64 else torch.float32
        threshold = r.topk(min(self.top_k, r.shape[1]), dim=1).values[:, -1].to(acc)
        return kernels().dipo_direction_(r, threshold, self.shift)

    def value(self, stats: Stats) -> Tensor:
        return stats[0]


class Max:
    """Row maximum and its first index (logit-margin flattening). Statistics only: the
    flattening gradient is sparse plus rank one and never touches the logits."""

    needs_ref = False
    linear = False

    def stats(self, z: Tensor, r: Tensor | None, t: Tensor) -> Stats:
        return tuple(kernels().max_stats(z))

    def value(self, stats: Stats) -> Tensor:
        return stats[0]

    def grad_(self, z: Tensor, r: Tensor | None, t: Tensor, stats: Stats, coef: Tensor) -> None:
        raise NotImplementedError("flattening gradients do not go through the logits")


class TargetScore:
    """Forward-only per-token scores of a (reference) model for DTO's target selection.
    stats = (lse, logp, margin): margin = z_target - max_{v != target} z_v, from the
    statistics kernel and a top-2 of the chunk."""

    needs_ref = False
    linear = False

    def stats(self, z: Tensor, r: Tensor | None, t: Tensor) -> Stats:
        lse, logp = kernels().lse_stats(z, t)
        acc = lse.dtype
        if z.shape[1] == 1:
            return lse, logp, torch.zeros_like(lse)
        top = z.topk(2, dim=1)
        best_other = torch.where(top.indices[:, 0] == t, top.values[:, 1], top.values[:, 0]).to(acc)
        return lse, logp, z.gather(1, t[:, None]).squeeze(1).to(acc) - best_other

    def value(self, stats: Stats) -> Tensor:
        return stats[2]

    def grad_(self, z: Tensor, r: Tensor | None, t: Tensor, stats: Stats, coef: Tensor) -> None:
        raise NotImplementedError("target scores are forward-only")


def make(name: str, params: Sequence[float]):
    """The family ``name`` with its parameters (``dipo``: top_k, shift)."""
    if name == "logp":
        return LogProb()
    if name == "kl":
        return Reference()
    if name == "dipo":
        top_k, shift = params
        return Dipo(int(top_k), float(shift))
    if name == "max":
        return Max()
    if name == "target_score":
        return TargetScore()
    raise ValueError(f"unknown row family {name!r}")
