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
