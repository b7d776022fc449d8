"""pytest-benchmark suites at CPU sizes: ``pytest benches/test_bench_cpu.py`` times every loss,
fused and reference; ``make test`` runs them once each with ``--benchmark-disable`` as a quick
check that fused and reference agree at benchmark shapes (B=2, T=128, D=128, V=4099)."""

from __future__ import annotations

import pytest
import torch

from benches.common import LOSSES, forward, model_inputs, step


@pytest.fixture(scope="module")
def inputs():
    return model_inputs(2, 128, 128, 4099, torch.float32, ignore_frac=0.25)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_forward_backward(benchmark, inputs, loss: str, impl: str) -> None:
    benchmark(step(loss, impl, inputs))
    value = forward(loss, impl, inputs)()
    other = forward(loss, "reference" if impl == "fused" else "fused", inputs)()
    torch.testing.assert_close(value, other, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["liger", "cce"])
def test_baselines_are_nll_only_and_report_why_they_cannot_run(inputs, impl: str) -> None:
    from benches.common import unavailable

    with pytest.raises(ValueError, match="only nll"):
        forward("npo", impl, inputs)
    reason = unavailable("nll", impl, inputs.x.device)
    if reason is None:  # importable and usable here: it must agree with the reference
        torch.testing.assert_close(
            forward("nll", impl, inputs)(), forward("nll", "reference", inputs)(), rtol=1e-4, atol=1e-5
        )
    else:
        assert "not importable" in reason or "CUDA" in reason
        with pytest.raises(ValueError, match="impl: "):
            forward("nll", impl, inputs)
