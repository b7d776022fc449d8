"""Row kernels against plain torch, on every backend: each CPU ISA level, the CUDA kernels
emulated on the CPU (``simt``, ``torch.ops.unlearnx_simt``) and, where there is one, the GPU."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import unlearnx  # noqa: F401  (registers the operators)
from tests.conftest import SIMT, Backend

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-6, torch.float16: 2e-6}


def _rows(n: int, V: int, dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n * 7919 + V)
    z = (torch.randn(n, V, generator=g) * 4).to(device=device, dtype=dtype)
    t = torch.randint(0, V, (n,), generator=g).to(device)
    return z, t


def _stats_tol(z: torch.Tensor) -> float:
    """Tolerance of row statistics: TOL, or, for fp32 accumulation over a long row, the error of
    its sum-exp of V terms, about sqrt(V) u relative for independent roundings (measured
    3.4 sqrt(V) u at V = 128256 on the SSE2 path); lse is off by as much, absolutely."""
    if z.dtype == torch.float64:
        return TOL[z.dtype]
    return max(TOL[z.dtype], 2 * math.sqrt(z.shape[1]) * 2**-24)


def _check_stats(ops, z: torch.Tensor, t: torch.Tensor) -> None:
    lse, logp = ops.lse_stats(z, t)
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    zf = z.to(torch.float64)
    assert lse.dtype == acc and logp.dtype == acc
    tol = _stats_tol(z)
    torch.testing.assert_close(lse.double(), zf.logsumexp(-1), rtol=tol, atol=tol * 10)
    exact = zf.log_softmax(-1).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(logp.double(), exact, rtol=tol * 10, atol=tol * 10)


def _check_grad(ops, z: torch.Tensor, t: torch.Tensor) -> None:
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    zf = z.to(torch.float64)
    lse = zf.logsumexp(-1).to(acc)
    logp = zf.log_softmax(-1).gather(1, t[:, None]).squeeze(1).to(acc)
    coef = torch.linspace(-2, 3, z.shape[0], dtype=acc, device=z.device)
    expected = coef.double()[:, None] * (
        torch.nn.functional.one_hot(t, z.shape[1]).double() - (zf - lse.double()[:, None]).exp()
    )
    out = z.clone()
    ops.logprob_grad_(out, t, lse, logp, coef)
    # one rounding to the logits dtype on top of fp32 math
    eps = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 2**-8, torch.float16: 2**-11}[z.dtype]
    torch.testing.assert_close(out.double(), expected, rtol=eps, atol=eps * coef.abs().max().item())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 7, 97, 1000, 4099])
def test_lse_stats_matches_logsumexp(backend: Backend, dtype: torch.dtype, V: int) -> None:
    _check_stats(backend.ops, *_rows(5, V, dtype, backend.device))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 7, 97, 4099])
def test_logprob_grad_matches_softmax_formula(backend: Backend, dtype: torch.dtype, V: int) -> None:
    _check_grad(backend.ops, *_rows(6, V, dtype, backend.device))


def test_target_gradient_keeps_precision_when_p_target_near_one(backend: Backend) -> None:
    # p_y = 1 - ~1e-9: 1 - p_y in fp32 would round to 0 or to a multiple of 6e-8.
    z = torch.zeros(1, 50, device=backend.device)
    z[0, 3] = 25.0
    t = torch.tensor([3], device=backend.device)
    lse, logp = backend.ops.lse_stats(z, t)
    out = z.clone()
    backend.ops.logprob_grad_(out, t, lse, logp, torch.ones(1, device=backend.device))
    rest = 49 * torch.tensor(-25.0, dtype=torch.float64).exp()  # sum of the other columns' exp(z - z_y)
    assert logp.item() == pytest.approx(-torch.log1p(rest).item(), rel=1e-5)
    assert out[0, 3].item() == pytest.approx((rest / (1 + rest)).item(), rel=1e-5)


def test_rows_with_extreme_logits(backend: Backend) -> None:
    z = torch.tensor([[-1e30, 0.0, 1e4], [float("-inf"), 1.0, 2.0]], device=backend.device)
    t = torch.tensor([2, 1], device=backend.device)
    lse, logp = backend.ops.lse_stats(z, t)
    torch.testing.assert_close(lse, z.logsumexp(-1))
    torch.testing.assert_close(logp, z.log_softmax(-1).gather(1, t[:, None]).squeeze(1))


def test_kernel_argument_errors(backend: Backend) -> None:
    z, t = _rows(4, 10, torch.float32, backend.device)
    with pytest.raises(IndexError, match="target: value 10 at row 3"):
        backend.ops.lse_stats(z, torch.tensor([0, 1, 2, 10], device=backend.device))
    with pytest.raises(IndexError, match="target: value -1 at row 0"):
        backend.ops.ref_stats(z, z, torch.tensor([-1, 1, 2, 3], device=backend.device))
    with pytest.raises(ValueError, match="target"):
        backend.ops.lse_stats(z, t[:3])
    with pytest.raises(TypeError, match="target"):
        backend.ops.lse_stats(z, t.int())
    with pytest.raises(ValueError, match="logits"):
        backend.ops.lse_stats(z.t(), t)
    with pytest.raises(TypeError, match="coef"):
        backend.ops.logprob_grad_(
            z,
            t,
            *torch.zeros(2, 4, device=backend.device),
            torch.zeros(4, dtype=torch.float64, device=backend.device),
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_row_kernels(backend: Backend, dtype: torch.dtype) -> None:
    z, t = _rows(4, 33, dtype, backend.device)
    torch.library.opcheck(backend.ops.lse_stats.default, (z, t))
    lse, logp = backend.ops.lse_stats(z, t)
    torch.library.opcheck(
        backend.ops.logprob_grad_.default, (z.clone(), t, lse, logp, torch.ones(4, device=backend.device))
    )


def _check_max(ops, z: torch.Tensor) -> None:
    mx, arg = ops.max_stats(z)
    want = z.to(torch.float64).max(-1)
    torch.testing.assert_close(mx.double(), want.values, rtol=0, atol=0)
    assert torch.equal(arg, want.indices)


def _pair(n: int, V: int, dtype: torch.dtype, device: str = "cpu"):
    z, t = _rows(n, V, dtype, device)
    r = (
        z.double()
        + torch.randn(z.shape, generator=torch.Generator().manual_seed(V), dtype=torch.float64).to(device)
    ).to(dtype)
    return z, r, t


def _check_ref(ops, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> None:
    lse, ref_lse, logp, ref_logp, kl = ops.ref_stats(z, r, t)
    zf, rf = z.double(), r.double()
    log_p, log_q = zf.log_softmax(-1), rf.log_softmax(-1)
    tol = _stats_tol(z) * 10
    torch.testing.assert_close(lse.double(), zf.logsumexp(-1), rtol=tol, atol=tol)
    torch.testing.assert_close(ref_lse.double(), rf.logsumexp(-1), rtol=tol, atol=tol)
    torch.testing.assert_close(logp.double(), log_p.gather(1, t[:, None]).squeeze(1), rtol=tol, atol=tol)
    torch.testing.assert_close(ref_logp.double(), log_q.gather(1, t[:, None]).squeeze(1), rtol=tol, atol=tol)
    torch.testing.assert_close(kl.double(), (log_q.exp() * (log_q - log_p)).sum(-1), rtol=tol, atol=tol)
    acc = lse.dtype
    a = torch.linspace(-1, 2, z.shape[0], dtype=acc, device=z.device)
    c = torch.linspace(3, -1, z.shape[0], dtype=acc, device=z.device)
    out = z.clone()
    ops.ref_grad_(out, r, t, lse, ref_lse, logp, ref_logp, a, c)
    # The gradient kernel is checked given the statistics it is handed (as _check_grad is): p and
    # q from the kernel's lse, exact in fp64. The statistics' own error is bounded above; over a
    # 32000-column row the fp32 sum-exp is off by a few 1e-6 relative (the summation, not the
    # kernel), which moves every p by as much and would be blamed on the gradient otherwise.
    p, q = (zf - lse.double()[:, None]).exp(), (rf - ref_lse.double()[:, None]).exp()
    p = p.scatter(1, t[:, None], logp.double().exp()[:, None])
    q = q.scatter(1, t[:, None], ref_logp.double().exp()[:, None])
    onehot = torch.nn.functional.one_hot(t, z.shape[1]).double()
    expected = a.double()[:, None] * (onehot - p) + c.double()[:, None] * (p - q)
    eps = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 2**-8, torch.float16: 2**-11}[z.dtype]
    torch.testing.assert_close(out.double(), expected, rtol=eps, atol=eps * 4)


def _check_dipo(ops, r: torch.Tensor, k: int, shift: float) -> None:
    acc = torch.float64 if r.dtype == torch.float64 else torch.float32
    tau = r.topk(k, dim=1).values[:, -1].to(acc)
    rf = r.double()
    g = r.clone()
    # top-1: no threshold, the kernel takes the row's maximum (ties included) as H
    offset = ops.dipo_direction_(g, None if k == 1 else tau, shift)
    if k == 1:
        g_tau = r.clone()
        assert torch.equal(ops.dipo_direction_(g_tau, tau, shift), offset) and torch.equal(g_tau, g)
    in_top = (rf >= tau.double()[:, None]).double()
    expected = (rf - shift * in_top).softmax(-1) - (rf + shift * in_top).softmax(-1)
    eps = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 2**-8, torch.float16: 2**-11}[r.dtype]
    if r.dtype == torch.float32:
        # every g_v carries the relative error of the row's fp32 sums s_in, s_out (V terms): about
        # sqrt(V) u for independent roundings, 2.1e-5 at V = 128256 (measured 2.1e-5 on the CPU)
        eps = max(eps, 2 * math.sqrt(r.shape[1]) * 2**-24)
    torch.testing.assert_close(g.double(), expected, rtol=eps, atol=eps * 2)
    tol = TOL[r.dtype] * 10
    torch.testing.assert_close(offset.double(), (expected * rf).sum(-1), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 7, 1031])
def test_max_stats_matches_torch_max(backend: Backend, dtype: torch.dtype, V: int) -> None:
    _check_max(backend.ops, _rows(6, V, dtype, backend.device)[0])


def test_max_stats_ties_and_nan(backend: Backend) -> None:
    z = torch.tensor(
        [[1.0, 3.0, 3.0, 0.0], [2.0, float("nan"), 5.0, float("nan")], [-1.0, -1.0, -1.0, -1.0]],
        device=backend.device,
    )
    mx, arg = backend.ops.max_stats(z)
    assert arg.tolist() == [1, 1, 0]
    assert mx[0] == 3 and torch.isnan(mx[1]) and mx[2] == -1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 7, 1031])
def test_ref_kernels_match_torch(backend: Backend, dtype: torch.dtype, V: int) -> None:
    _check_ref(backend.ops, *_pair(6, V, dtype, backend.device))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V,k", [(1, 1), (7, 1), (7, 3), (1031, 5)])
def test_dipo_kernel_matches_torch(backend: Backend, dtype: torch.dtype, V: int, k: int) -> None:
    _check_dipo(backend.ops, _pair(6, V, dtype, backend.device)[1], k, 0.8)


def test_opcheck_reference_and_dipo_kernels(backend: Backend) -> None:
    z, r, t = _pair(4, 33, torch.float32, backend.device)
    torch.library.opcheck(backend.ops.max_stats.default, (z,))
    torch.library.opcheck(backend.ops.ref_stats.default, (z, r, t))
    stats = backend.ops.ref_stats(z, r, t)
    ones = torch.ones(4, device=backend.device)
    torch.library.opcheck(backend.ops.ref_grad_.default, (z.clone(), r, t, *stats[:4], ones, ones))
    tau = r.topk(2, dim=1).values[:, -1].contiguous()
    torch.library.opcheck(backend.ops.dipo_direction_.default, (r.clone(), tau, 0.5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [32000, 128256])
def test_large_vocabularies(backend: Backend, dtype: torch.dtype, V: int) -> None:
    ops, dev = backend.ops, backend.device
    _check_stats(ops, *_rows(33, V, dtype, dev))
    _check_grad(ops, *_rows(33, V, dtype, dev))
    _check_max(ops, _rows(33, V, dtype, dev)[0])
    z, r, t = _pair(33, V, dtype, dev)
    _check_ref(ops, z, r, t)
    _check_dipo(ops, r, 3, 0.8)


@pytest.mark.parametrize("kernel", ["lse", "logprob_grad", "max", "ref", "dipo"])
def test_more_rows_than_one_grid_holds(backend: Backend, kernel: str) -> None:
    # 65537 rows: past the 65535 blocks a launch puts along a grid dimension (csrc/cuda/common.cuh),
    # so every CUDA kernel's grid-stride loop runs a second time. Small V keeps the emulation fast.
    ops, dev = backend.ops, backend.device
    z, r, t = _pair(65537, 3, torch.float32, dev)
    {
        "lse": lambda: _check_stats(ops, z, t),
        "logprob_grad": lambda: _check_grad(ops, z, t),
        "max": lambda: _check_max(ops, z),
        "ref": lambda: _check_ref(ops, z, r, t),
        "dipo": lambda: _check_dipo(ops, r, 2, 0.8),
    }[kernel]()


NAN, INF = float("nan"), float("inf")


def _nasty_rows(V: int) -> torch.Tensor:
    """Rows with NaN (first, in the middle, in one thread's slice only), +-inf and ties."""
    z = torch.randn(9, V, generator=torch.Generator().manual_seed(V)) * 3
    z[0, min(1, V - 1)] = NAN
    z[1, min(5, V - 1)] = NAN
    z[2, V - 1] = NAN
    z[3, V // 2] = INF
    z[4, :] = -INF
    z[5, : V // 2 + 1] = -INF
    z[6, :] = 2.0  # all tied
    z[7, min(3, V - 1)] = -INF
    z[8, V // 3] = z[8].max() + 1.0
    z[8, (2 * V) // 3] = z[8, V // 3]  # a tie at the top
    return z


@pytest.mark.parametrize("V", [3, 1000])
def test_nan_and_inf_rows_match_torch(backend: Backend, V: int) -> None:
    # The statistics must propagate NaN exactly where torch does (a NaN dropped by a block
    # reduction would train on a wrong loss without a trace) and agree on the infinities.
    z = _nasty_rows(V).to(backend.device)
    t = torch.zeros(z.shape[0], dtype=torch.long, device=backend.device)
    lse, logp = backend.ops.lse_stats(z, t)
    # a row without a finite maximum (NaN, +inf, all -inf) is NaN, as log_softmax is in torch;
    # torch.logsumexp would say +-inf there, csrc/include/unlearnx/row_math.h says why not
    undefined = ~torch.isfinite(z.max(-1).values)
    assert undefined.tolist() == [True] * 5 + [False] * 4
    torch.testing.assert_close(lse, z.logsumexp(-1).masked_fill(undefined, NAN), equal_nan=True)
    torch.testing.assert_close(logp, z.log_softmax(-1)[:, 0], equal_nan=True)
    nan_rows = torch.isnan(z).any(-1)
    mx, arg = backend.ops.max_stats(z)
    want = z.max(-1)
    torch.testing.assert_close(mx, want.values, equal_nan=True)
    assert torch.equal(arg, want.indices)
    r = z.flip(0).contiguous()  # NaN rows of the reference meet clean policy rows and back
    stats = backend.ops.ref_stats(z, r, t)
    either = nan_rows | torch.isnan(r).any(-1)
    assert torch.isnan(stats[4][either]).all(), "KL must be NaN where either row has a NaN"
    torch.testing.assert_close(stats[1], r.logsumexp(-1).masked_fill(undefined.flip(0), NAN), equal_nan=True)
    torch.testing.assert_close(stats[0], lse, equal_nan=True)


def test_simt_build_covers_every_cuda_kernel_and_operator() -> None:
    # the emulation is only a check of the CUDA code if it compiles all of it: every .cu file is
    # included by csrc/simt/kernels.cpp, and every row-kernel operator exists in unlearnx_simt
    root = Path(__file__).resolve().parents[1] / "csrc"
    included = set(re.findall(r'#include "cuda/(\w+\.cu)"', (root / "simt" / "kernels.cpp").read_text()))
    assert included == {p.name for p in (root / "cuda").glob("*.cu")}
    schemas = re.findall(r'm\.def\([\s\\]*"(\w+)\(', (root / "ops.cpp").read_text())
    assert len(schemas) == 6
    if not SIMT:
        pytest.skip("this build has no SIMT emulation (x86-64 Linux only)")
    for name in schemas:
        assert (
            str(getattr(torch.ops.unlearnx_simt, name).default._schema).split("::", 1)[1]
            == str(getattr(torch.ops.unlearnx, name).default._schema).split("::", 1)[1]
        )
