"""unlearnx: LLM unlearning losses fused with the LM head, in CPU and CUDA kernels."""

import torch

from unlearnx import _ops, cpu, functional, losses, reference, simt  # noqa: F401  (_ops registers the operators)
from unlearnx._C import build_info as _compiled_build_info
from unlearnx.cpu import cpu_isa, set_cpu_isa, supported_cpu_isas, use_cpu_isa
from unlearnx.simt import simt_kernels

cpu._apply_environment()

__version__ = "0.1.0"


def build_info() -> dict:
    """Which kernels were compiled, for which CUDA architectures, against which torch, which
    CPU ISA level the row kernels run (``unlearnx.cpu``), and whether a GPU is usable now, e.g.
    and whether the SIMT emulation of the CUDA kernels is in (``unlearnx.simt``), e.g.
    ``{"cpu": True, "cuda": True, "simt": True, "cuda_archs": "8.0;9.0+PTX", "torch_version": "2.13.0",
    "cpu_isa": "avx2", "cpu_isas_supported": ["avx2", "baseline"], "cpu_isas_compiled":
    ["avx512", "avx2", "baseline"], "cuda_available": False}``."""
    info = dict(_compiled_build_info())
    info["cuda_available"] = bool(info["cuda"] and torch.cuda.is_available())
    return info


__all__ = [
    "build_info",
    "cpu_isa",
    "functional",
    "losses",
    "reference",
    "set_cpu_isa",
    "simt_kernels",
    "supported_cpu_isas",
    "use_cpu_isa",
]
