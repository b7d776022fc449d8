"""Shared problem builders for the loss tests."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import pytest
import torch

import unlearnx

CUDA = torch.cuda.is_available()
_no_gpu = pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine (CUDA tests run on a GPU host)")


CUDA_ONLY = [pytest.mark.cuda, _no_gpu]  # for pytest.param(..., marks=CUDA_ONLY)


def requires_cuda(test):
    """Marks a test ``cuda`` and skips it (with the reason) where no GPU is present."""
    return pytest.mark.cuda(_no_gpu(test))


IGNORE = -100


CPU_ISAS = unlearnx.build_info()["cpu_isas_compiled"]
SIMT = unlearnx.build_info()["simt"]


@dataclass
class Backend:
    """Where a kernel test runs: ``name`` (``isa-<level>``, ``simt`` or ``cuda``), the device
    its tensors live on, and the operator namespace of the row kernels."""

    name: str
    device: str
    ops: object


def _enter(request: pytest.FixtureRequest, name: str):
    if name == "cuda":
        if not CUDA:
            pytest.skip("no CUDA GPU on this machine (CUDA tests run on a GPU host)")
        return Backend(name, "cuda", torch.ops.unlearnx), contextlib.nullcontext()
    best = unlearnx.supported_cpu_isas()[0]
    if request.node.get_closest_marker("cuda") and name != f"isa-{best}":
        pytest.skip("CUDA test: it does not depend on the CPU backend; it runs at the best ISA level only")
    if name == "simt":
        if not SIMT:
            pytest.skip("this build has no SIMT emulation of the CUDA kernels (x86-64 Linux only)")
        return Backend(name, "cpu", torch.ops.unlearnx_simt), unlearnx.simt_kernels()
    isa = name.removeprefix("isa-")
    if isa not in unlearnx.supported_cpu_isas():
        pytest.skip(f"CPU ISA {isa}: this CPU runs only {unlearnx.supported_cpu_isas()}")
    return Backend(name, "cpu", torch.ops.unlearnx), unlearnx.use_cpu_isa(isa)


CPU_BACKENDS = [f"isa-{name}" for name in CPU_ISAS] + ["simt"]


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request: pytest.FixtureRequest):
    """Runs the test once per CPU ISA level compiled in (AVX-512, AVX2, baseline), at that
    level, and once with the CUDA kernels emulated on the CPU (``simt``, ``unlearnx.simt``);
    a level this CPU cannot execute is skipped with the reason. Tensors stay on the CPU."""
    backend, context = _enter(request, request.param)
    with context:
        yield backend


@pytest.fixture(params=[*CPU_BACKENDS, "cuda"])
def backend(request: pytest.FixtureRequest):
    """:func:`cpu_backend`, and the GPU where there is one."""
    backend, context = _enter(request, request.param)
    with context:
        yield backend


def torchrun(script, *args: str, nproc: int = 2, timeout: int = 300, check: bool = True):
    """Runs ``script`` under ``torch.distributed.run`` with ``nproc`` processes (gloo on CPU) on a
    free port; with ``check``, fails the test with the end of stderr if it exits non-zero.
    Returns the ``CompletedProcess``."""
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        str(script),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def free_port() -> int:
    """A TCP port free right now, for torch.distributed rendezvous in subprocess tests."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


EPS = {torch.float32: 2**-23, torch.bfloat16: 2**-8, torch.float16: 2**-11, torch.float64: 2**-52}


@dataclass
class Problem:
    x: torch.Tensor  # (B, T, D)
    w: torch.Tensor  # (V, D)
    b: torch.Tensor | None  # (V,)
    t: torch.Tensor  # (B, T)
    ref_logps: torch.Tensor  # (B,) fp32
    xr: torch.Tensor  # (B, T, D) reference model's hidden states (a perturbed policy)
    wr: torch.Tensor  # (V, D) reference head
    br: torch.Tensor | None  # (V,)
    mask: torch.Tensor  # (B, T) bool, DTO target tokens

    def ref(self, dtype: torch.dtype) -> list[torch.Tensor | None]:
        """Reference-model tensors rounded to ``dtype`` (no grad)."""
        return [None if p is None else p.to(dtype) for p in (self.xr, self.wr, self.br)]

    def leaves(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """Fresh leaf tensors in ``dtype`` (values rounded to it) that require grad."""
        out = [self.x, self.w] + ([] if self.b is None else [self.b])
        return [p.detach().to(dtype).requires_grad_() for p in out]


def make_problem(
    B: int = 3,
    T: int = 9,
    D: int = 16,
    V: int = 97,
    *,
    bias: bool = True,
    ignore_frac: float = 0.25,
    peaked: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> Problem:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    w = torch.randn(V, D, generator=g, dtype=torch.float64) * (2.0 / math.sqrt(D))
    b = torch.randn(V, generator=g, dtype=torch.float64) * 0.5 if bias else None
    t = torch.randint(0, V, (B, T), generator=g)
    if peaked:
        # hidden state aligned with the target's row: p(target) close to 1 (memorised data)
        x = 12.0 * w[t] / w[t].norm(dim=-1, keepdim=True) ** 2 * 2.0
    t[torch.rand(B, T, generator=g) < ignore_frac] = IGNORE
    valid = (t != IGNORE).sum(-1)
    ref = -valid.double() * math.log(V) + torch.randn(B, generator=g, dtype=torch.float64) * 3.0
    xr = x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    wr = w + 0.2 * torch.randn(w.shape, generator=g, dtype=torch.float64) / math.sqrt(D)
    br = None if b is None else b + 0.1 * torch.randn(V, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) < 0.4
    dev = torch.device(device)
    return Problem(
        *(None if u is None else u.to(dev) for u in (x, w, b, t)),
        ref.to(dev, torch.float32),
        xr.to(dev),
        wr.to(dev),
        None if br is None else br.to(dev),
        mask.to(dev),
    )
