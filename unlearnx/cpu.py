"""Which vector ISA the CPU row kernels run: AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3) or the
baseline x86-64 build. Every level is compiled into the extension; at import the best one
this CPU runs is selected, unless the environment variable ``UNLEARNX_CPU_ISA``
(``auto|avx512|avx2|baseline``) names one. Results agree across levels to rounding (the
wider levels use FMA and other summation orders); the tests run every level the machine has.

To reproduce an AVX2-only machine on an AVX-512 one, hold the GEMM libraries there too:
``UNLEARNX_CPU_ISA=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from unlearnx import _C

ENV_VAR = "UNLEARNX_CPU_ISA"


def cpu_isa() -> str:
    """The level the row kernels run at now: ``"avx512"``, ``"avx2"`` or ``"baseline"``."""
    return _C.build_info()["cpu_isa"]


def supported_cpu_isas() -> list[str]:
    """The levels this build has and this CPU runs, best first (``"baseline"`` always)."""
    return list(_C.build_info()["cpu_isas_supported"])


def set_cpu_isa(name: str) -> str:
    """Selects the level (``"auto"`` = the best supported); returns the previous one. Raises
    ``ValueError`` for an unknown name or a level this CPU (or build) lacks. Process-wide."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    return _C.set_cpu_isa(name)


@contextmanager
def use_cpu_isa(name: str) -> Iterator[str]:
    """``with use_cpu_isa("baseline"): ...`` runs the block at that level, then restores."""
    previous = set_cpu_isa(name)
    try:
        yield cpu_isa()
    finally:
        set_cpu_isa(previous)


def _apply_environment() -> None:
    name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    try:
        set_cpu_isa(name)
    except ValueError as err:
        raise ValueError(f"{ENV_VAR}={name!r}: {err}") from None
