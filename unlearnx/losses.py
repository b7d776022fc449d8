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
        self, input: Tensor, weight: Tensor, target: Tensor, *args: Tensor, bias: Tensor | None = None
    ) -> Tensor:
        return type(self)._fn(input, weight, target, *args, bias=bias, **self.options)

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
        beta: float = 2.5,
        gamma: float | None = None,
        delta: float | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(
            beta=beta,
            gamma=gamma,
            delta=delta,
            ignore_index=ignore_index,
            reduction=reduction,
            chunk_size=chunk_size,
        )
