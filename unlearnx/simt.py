"""The CUDA row kernels executed on the CPU, for testing without a GPU.

The ``.cu`` kernels of ``csrc/cuda/`` are also compiled by the host compiler under a small
SIMT shim (``csrc/simt``: one fiber per CUDA thread, real block barriers and warp shuffles,
blocks one after another) and registered as ``torch.ops.unlearnx_simt.<name>``, with the
schemas of ``torch.ops.unlearnx.<name>``, on CPU tensors. Inside :func:`simt_kernels` the
fused losses call those instead of the CPU kernels, so every loss runs the CUDA code path.
It is slow (about 0.3 ms per row of a statistics kernel): tests only. Built on x86-64 Linux;
``build_info()["simt"]`` says whether this build has it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from unlearnx import _rows
from unlearnx._C import build_info as _build_info


def available() -> bool:
    """Whether this build has the SIMT emulation (``torch.ops.unlearnx_simt``)."""
    return bool(_build_info()["simt"])


@contextlib.contextmanager
def simt_kernels() -> Iterator[None]:
    """Within the block, the fused losses' row kernels run as the CUDA kernel code emulated
    on the CPU (inputs must be CPU tensors). Raises ``RuntimeError`` if this build lacks it."""
    if not available():
        raise RuntimeError("this unlearnx build has no SIMT emulation (x86-64 Linux only; UNLEARNX_SIMT=0?)")
    with _rows.kernel_namespace("unlearnx_simt"):
        yield
