"""Row kernels (torch.ops.unlearnx.lse_stats / logprob_grad_) against plain torch."""

from __future__ import annotations

import pytest
import torch

import unlearnx  # noqa: F401  (registers the operators)
from tests.conftest import CUDA, requires_cuda

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


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 97, 32000, 128256])
def test_cuda_kernels(dtype: torch.dtype, V: int) -> None:
    assert CUDA
    _check_stats(*_rows(33, V, dtype, "cuda"))
    _check_grad(*_rows(33, V, dtype, "cuda"))
