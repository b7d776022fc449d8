"""``nn.Module`` forms of the fused losses: hyper-parameters at construction,
``forward(input, weight, target, ...)`` as in :mod:`unlearnx.functional`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from unlearnx import functional


class _FusedLoss(nn.Module):
    _fn: Callable[..., Tensor]

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options

    def forward(
        self, input: Tensor, weight: Tensor, target: Tensor, *args: Tensor, **tensors: Tensor | None
    ) -> Tensor:
        """``args``: the loss's extra positional tensors; ``tensors``: ``bias`` / ``ref_bias``."""
        return type(self)._fn(input, weight, target, *args, **tensors, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class NLLLoss(_FusedLoss):
    """Fused :func:`~unlearnx.functional.nll_loss`; ``forward(input, weight, target, bias=None)``."""

    _fn = staticmethod(functional.nll_loss)

    def __init__(
        self, *, ignore_index: int = -100, reduction: str = "mean", chunk_size: int | None = None
    ) -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction, chunk_size=chunk_size)


class NPOLoss(_FusedLoss):
    """Fused :func:`~unlearnx.functional.npo_loss`;
    ``forward(input, weight, target, ref_logps, bias=None)``."""

    _fn = staticmethod(functional.npo_loss)

    def __init__(
        self,
        *,
        beta: float = 0.1,
        ignore_index: int = -100,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(beta=beta, ignore_index=ignore_index, reduction=reduction, chunk_size=chunk_size)


class SimNPOLoss(_FusedLoss):
    """Fused :func:`~unlearnx.functional.simnpo_loss`; ``forward(input, weight, target, bias=None)``."""

    _fn = staticmethod(functional.simnpo_loss)

    def __init__(
        self,
        *,
        beta: float = 4.5,
        delta: float = 0.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            beta=beta,
            delta=delta,
            ignore_index=ignore_index,
            reduction=reduction,
            chunk_size=chunk_size,
        )


class MarginFlattenLoss(_FusedLoss):
    """Fused :func:`~unlearnx.functional.margin_flatten_loss`;
    ``forward(input, weight, target, bias=None)``."""

    _fn = staticmethod(functional.margin_flatten_loss)

    def __init__(
        self, *, ignore_index: int = -100, reduction: str = "mean", chunk_size: int | None = None
    ) -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction, chunk_size=chunk_size)


class KLLoss(_FusedLoss):
    """Fused :func:`~unlearnx.functional.kl_loss`;
    ``forward(input, weight, target, ref_input, ref_weight, bias=None, ref_bias=None)``."""

    _fn = staticmethod(functional.kl_loss)

    def __init__(
        self, *, ignore_index: int = -100, reduction: str = "mean", chunk_size: int | None = None
    ) -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction, chunk_size=chunk_size)


class DiPOLoss(_FusedLoss):
    """Fused :func:`~unlearnx.functional.dipo_loss` (a reconstruction of the paper);
    ``forward(input, weight, target, ref_input, ref_weight, bias=None, ref_bias=None)``."""

    _fn = staticmethod(functional.dipo_loss)

    def __init__(
        self,
        *,
        top_k: int = 1,
        shift: float = 1.0,
        beta: float = 1.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            top_k=top_k,
            shift=shift,
            beta=beta,
            ignore_index=ignore_index,
            reduction=reduction,
            chunk_size=chunk_size,
        )


class DTOLoss(_FusedLoss):
    """Fused :func:`~unlearnx.functional.dto_loss` (a reconstruction of the paper);
    ``forward(input, weight, target, ref_input, ref_weight, target_mask, bias=None, ref_bias=None)``."""

    _fn = staticmethod(functional.dto_loss)

    def __init__(
        self,
        *,
        beta: float = 0.1,
        kl_weight: float = 1.0,
        ignore_index: int = -100,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(beta=beta, kl_weight=kl_weight, ignore_index=ignore_index, chunk_size=chunk_size)
