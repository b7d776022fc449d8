"""benches/gpu_suite.sh: its bench stage's Python path, on the CPU at tiny sizes (the stage a
GPU host runs with DEVICE=cuda and the real heads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "benches" / "gpu_suite.sh"


def _suite(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(SUITE), str(out), *args], env=full_env, capture_output=True, text=True, timeout=600
    )


def test_bench_stage_writes_few_files_with_every_record(tmp_path: Path) -> None:
    proc = _suite(
        tmp_path,
        "bench",
        DEVICE="cpu",
        SUITE_HEADS="tiny 16 64,other 8 33",
        TOKENS="8",
        IMPLS="fused reference",
        SUITE_SECONDS="300",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["gpu-other.json", "gpu-tiny.json", "suite.log", "summary.md"]  # at most 8 come back
    for name, D, V in (("tiny", 16, 64), ("other", 8, 33)):
        records = json.loads((tmp_path / f"gpu-{name}.json").read_text())
        assert {(r["loss"], r["impl"]) for r in records} == {
            (loss, impl) for loss in ("nll", "npo", "flatten") for impl in ("fused", "reference")
        }
        assert all(r["D"] == D and r["V"] == V and r["dtype"] == "bf16" and r["ms"] > 0 for r in records)
    summary = (tmp_path / "summary.md").read_text()
    assert (
        "## gpu-tiny" in summary
        and "## gpu-other" in summary
        and "| nll | 8 | 16 | 64 | bf16 | fused |" in summary
    )


def test_bench_stage_runs_only_the_heads_named(tmp_path: Path) -> None:
    proc = _suite(
        tmp_path,
        "bench",
        "other",
        DEVICE="cpu",
        SUITE_HEADS="tiny 16 64,other 8 33",
        TOKENS="8",
        IMPLS="fused",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "gpu-tiny.json").exists() and (tmp_path / "gpu-other.json").exists()


def test_unknown_stage_is_an_error(tmp_path: Path) -> None:
    proc = _suite(tmp_path, "benchmark")
    assert proc.returncode == 2 and "unknown stage benchmark" in proc.stderr
