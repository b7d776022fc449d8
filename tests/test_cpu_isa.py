"""CPU ISA selection of the row kernels (unlearnx.cpu): reporting, forcing, clear errors, and
the same results on every level the machine runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import unlearnx
from tests.conftest import CPU_ISAS


def test_build_info_reports_the_levels() -> None:
    info = unlearnx.build_info()
    assert info["cpu_isa"] == unlearnx.cpu_isa()
    assert info["cpu_isas_supported"] == unlearnx.supported_cpu_isas()
    assert set(info["cpu_isas_supported"]) <= set(info["cpu_isas_compiled"])
    assert info["cpu_isas_supported"][-1] == "baseline"
    if os.environ.get("UNLEARNX_CPU_ISA", "auto") == "auto":
        assert info["cpu_isa"] == info["cpu_isas_supported"][0]  # the best the CPU runs


def test_forcing_and_restoring() -> None:
    before = unlearnx.cpu_isa()
    with unlearnx.use_cpu_isa("baseline") as name:
        assert name == "baseline" == unlearnx.cpu_isa() == unlearnx.build_info()["cpu_isa"]
    assert unlearnx.cpu_isa() == before


def test_bad_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown CPU ISA 'sse9'.*auto, avx512, avx2, baseline"):
        unlearnx.set_cpu_isa("sse9")
    with pytest.raises(TypeError, match="name"):
        unlearnx.set_cpu_isa(2)  # type: ignore[arg-type]
    missing = [n for n in CPU_ISAS if n not in unlearnx.supported_cpu_isas()]
    if missing:
        with pytest.raises(ValueError, match=f"CPU ISA '{missing[0]}' is not supported by this CPU"):
            unlearnx.set_cpu_isa(missing[0])


def _import_with(value: str) -> subprocess.CompletedProcess:
    code = "import unlearnx; print(unlearnx.cpu_isa())"
    env = {**os.environ, "UNLEARNX_CPU_ISA": value}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_forces_the_level() -> None:
    out = _import_with("baseline")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "baseline"
    bad = _import_with("avx1024")
    assert bad.returncode != 0 and "UNLEARNX_CPU_ISA='avx1024'" in bad.stderr


def test_every_level_gives_the_same_statistics_to_rounding() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 3001, generator=g) * 5
    t = torch.randint(0, 3001, (64,), generator=g)
    results = {}
    for name in unlearnx.supported_cpu_isas():
        with unlearnx.use_cpu_isa(name):
            results[name] = torch.ops.unlearnx.lse_stats(z, t)
    best = results[unlearnx.supported_cpu_isas()[0]]
    for name, (lse, logp) in results.items():
        torch.testing.assert_close(lse, best[0], rtol=2e-7, atol=0, msg=name)
        torch.testing.assert_close(logp, best[1], rtol=2e-6, atol=2e-6, msg=name)
