"""Row kernels (torch.ops.unlearnx.lse_stats / logprob_grad_) against plain torch."""

from __future__ import annotations

import pytest
import torch

import unlearnx  # noqa: F401  (registers the operators)
from tests.conftest import CUDA, requires_cuda

# every test here runs once per CPU ISA level (tests/conftest.py::cpu_isa)
pytestmark = pytest.mark.usefixtures("cpu_isa")

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-6, torch.float16: 2e-6}


def _rows(n: int, V: int, dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n * 7919 + V)
    z = (torch.randn(n, V, generator=g) * 4).to(device=device, dtype=dtype)
    t = torch.randint(0, V, (n,), generator=g).to(device)
    return z, t


def _check_stats(z: torch.Tensor, t: torch.Tensor) -> None:
    lse, logp = torch.ops.unlearnx.lse_stats(z, t)
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    zf = z.to(torch.float64)
    assert lse.dtype == acc and logp.dtype == acc
    tol = TOL[z.dtype]
    torch.testing.assert_close(lse.double(), zf.logsumexp(-1), rtol=tol, atol=tol * 10)
    exact = zf.log_softmax(-1).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(logp.double(), exact, rtol=tol * 10, atol=tol * 10)


def _check_grad(z: torch.Tensor, t: torch.Tensor) -> None:
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    zf = z.to(torch.float64)
    lse = zf.logsumexp(-1).to(acc)
    logp = zf.log_softmax(-1).gather(1, t[:, None]).squeeze(1).to(acc)
    coef = torch.linspace(-2, 3, z.shape[0], dtype=acc, device=z.device)
    expected = coef.double()[:, None] * (
        torch.nn.functional.one_hot(t, z.shape[1]).double() - (zf - lse.double()[:, None]).exp()
    )
    out = z.clone()
    torch.ops.unlearnx.logprob_grad_(out, t, lse, logp, coef)
    # one rounding to the logits dtype on top of fp32 math
    eps = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 2**-8, torch.float16: 2**-11}[z.dtype]
    torch.testing.assert_close(out.double(), expected, rtol=eps, atol=eps * coef.abs().max().item())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 7, 97, 1000, 4099])
def test_lse_stats_matches_logsumexp(dtype: torch.dtype, V: int) -> None:
    _check_stats(*_rows(5, V, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 7, 97, 4099])
def test_logprob_grad_matches_softmax_formula(dtype: torch.dtype, V: int) -> None:
    _check_grad(*_rows(6, V, dtype))


def test_target_gradient_keeps_precision_when_p_target_near_one() -> None:
    # p_y = 1 - ~1e-9: 1 - p_y in fp32 would round to 0 or to a multiple of 6e-8.
    z = torch.zeros(1, 50)
    z[0, 3] = 25.0
    t = torch.tensor([3])
    lse, logp = torch.ops.unlearnx.lse_stats(z, t)
    out = z.clone()
    torch.ops.unlearnx.logprob_grad_(out, t, lse, logp, torch.ones(1))
    rest = 49 * torch.tensor(-25.0, dtype=torch.float64).exp()  # sum of the other columns' exp(z - z_y)
    assert logp.item() == pytest.approx(-torch.log1p(rest).item(), rel=1e-5)
    assert out[0, 3].item() == pytest.approx((rest / (1 + rest)).item(), rel=1e-5)


def test_rows_with_extreme_logits() -> None:
    z = torch.tensor([[-1e30, 0.0, 1e4], [float("-inf"), 1.0, 2.0]])
    t = torch.tensor([2, 1])
    lse, logp = torch.ops.unlearnx.lse_stats(z, t)
    torch.testing.assert_close(lse, z.logsumexp(-1))
    torch.testing.assert_close(logp, z.log_softmax(-1).gather(1, t[:, None]).squeeze(1))
    nan_row = torch.tensor([[0.0, float("nan"), 1.0]])
    assert torch.isnan(torch.ops.unlearnx.lse_stats(nan_row, torch.tensor([0]))[0]).all()


def test_kernel_argument_errors() -> None:
    z, t = _rows(4, 10, torch.float32)
    with pytest.raises(IndexError, match="target"):
        torch.ops.unlearnx.lse_stats(z, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="target"):
        torch.ops.unlearnx.lse_stats(z, t[:3])
    with pytest.raises(TypeError, match="target"):
        torch.ops.unlearnx.lse_stats(z, t.int())
    with pytest.raises(ValueError, match="logits"):
        torch.ops.unlearnx.lse_stats(z.t(), t)
    with pytest.raises(TypeError, match="coef"):
        torch.ops.unlearnx.logprob_grad_(
            z, t, torch.zeros(4), torch.zeros(4), torch.zeros(4, dtype=torch.float64)
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_row_kernels(dtype: torch.dtype) -> None:
    z, t = _rows(4, 33, dtype)
    torch.library.opcheck(torch.ops.unlearnx.lse_stats.default, (z, t))
    lse, logp = torch.ops.unlearnx.lse_stats(z, t)
    torch.library.opcheck(torch.ops.unlearnx.logprob_grad_.default, (z.clone(), t, lse, logp, torch.ones(4)))


def _check_max(z: torch.Tensor) -> None:
    mx, arg = torch.ops.unlearnx.max_stats(z)
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


def _check_ref(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> None:
    lse, ref_lse, logp, ref_logp, kl = torch.ops.unlearnx.ref_stats(z, r, t)
    zf, rf = z.double(), r.double()
    log_p, log_q = zf.log_softmax(-1), rf.log_softmax(-1)
    tol = TOL[z.dtype] * 10
    torch.testing.assert_close(lse.double(), zf.logsumexp(-1), rtol=tol, atol=tol)
    torch.testing.assert_close(ref_lse.double(), rf.logsumexp(-1), rtol=tol, atol=tol)
    torch.testing.assert_close(logp.double(), log_p.gather(1, t[:, None]).squeeze(1), rtol=tol, atol=tol)
    torch.testing.assert_close(ref_logp.double(), log_q.gather(1, t[:, None]).squeeze(1), rtol=tol, atol=tol)
    torch.testing.assert_close(kl.double(), (log_q.exp() * (log_q - log_p)).sum(-1), rtol=tol, atol=tol)
    acc = lse.dtype
    a = torch.linspace(-1, 2, z.shape[0], dtype=acc, device=z.device)
    c = torch.linspace(3, -1, z.shape[0], dtype=acc, device=z.device)
    out = z.clone()
    torch.ops.unlearnx.ref_grad_(out, r, t, lse, ref_lse, logp, ref_logp, a, c)
    p, q = log_p.exp(), log_q.exp()
    onehot = torch.nn.functional.one_hot(t, z.shape[1]).double()
    expected = a.double()[:, None] * (onehot - p) + c.double()[:, None] * (p - q)
    eps = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 2**-8, torch.float16: 2**-11}[z.dtype]
    torch.testing.assert_close(out.double(), expected, rtol=eps, atol=eps * 4)


def _check_dipo(r: torch.Tensor, k: int, shift: float) -> None:
    acc = torch.float64 if r.dtype == torch.float64 else torch.float32
    tau = r.topk(k, dim=1).values[:, -1].to(acc)
    rf = r.double()
    g = r.clone()
    offset = torch.ops.unlearnx.dipo_direction_(g, tau, shift)
    in_top = (rf >= tau.double()[:, None]).double()
    expected = (rf - shift * in_top).softmax(-1) - (rf + shift * in_top).softmax(-1)
    eps = {torch.float64: 1e-13, torch.float32: 1e-6, torch.bfloat16: 2**-8, torch.float16: 2**-11}[r.dtype]
    torch.testing.assert_close(g.double(), expected, rtol=eps, atol=eps * 2)
    tol = TOL[r.dtype] * 10
    torch.testing.assert_close(offset.double(), (expected * rf).sum(-1), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 7, 1031])
def test_max_stats_matches_torch_max(dtype: torch.dtype, V: int) -> None:
    _check_max(_rows(6, V, dtype)[0])


def test_max_stats_ties_and_nan() -> None:
    z = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, float("nan"), 5.0, float("nan")], [-1.0, -1.0, -1.0, -1.0]])
    mx, arg = torch.ops.unlearnx.max_stats(z)
    assert arg.tolist() == [1, 1, 0]
    assert mx[0] == 3 and torch.isnan(mx[1]) and mx[2] == -1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 7, 1031])
def test_ref_kernels_match_torch(dtype: torch.dtype, V: int) -> None:
    _check_ref(*_pair(6, V, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V,k", [(1, 1), (7, 1), (7, 3), (1031, 5)])
def test_dipo_kernel_matches_torch(dtype: torch.dtype, V: int, k: int) -> None:
    _check_dipo(_pair(6, V, dtype)[1], k, 0.8)


def test_opcheck_reference_and_dipo_kernels() -> None:
    z, r, t = _pair(4, 33, torch.float32)
    torch.library.opcheck(torch.ops.unlearnx.max_stats.default, (z,))
    torch.library.opcheck(torch.ops.unlearnx.ref_stats.default, (z, r, t))
    stats = torch.ops.unlearnx.ref_stats(z, r, t)
    ones = torch.ones(4)
    torch.library.opcheck(torch.ops.unlearnx.ref_grad_.default, (z.clone(), r, t, *stats[:4], ones, ones))
    tau = r.topk(2, dim=1).values[:, -1].contiguous()
    torch.library.opcheck(torch.ops.unlearnx.dipo_direction_.default, (r.clone(), tau, 0.5))


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 97, 32000, 128256])
def test_cuda_kernels(dtype: torch.dtype, V: int) -> None:
    assert CUDA
    _check_stats(*_rows(33, V, dtype, "cuda"))
    _check_grad(*_rows(33, V, dtype, "cuda"))
    _check_max(_rows(33, V, dtype, "cuda")[0])
    z, r, t = _pair(33, V, dtype, "cuda")
    _check_ref(z, r, t)
    _check_dipo(r, min(3, V), 0.8)
