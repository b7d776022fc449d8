"""benches.run: several fused chunk sizes timed side by side, its argument errors, and the
records of implementations that could not run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benches import run


def test_several_chunk_sizes_are_timed_side_by_side(tmp_path: Path) -> None:
    run.main(
        [
            *("--losses", "nll", "--impls", "fused", "reference", "--inputs", "random"),
            *("--B", "2", "--T", "8", "--D", "8", "--V", "40", "--repeats", "1"),
            *("--chunk-size", "4", "auto", "--formats", "json", "md", "--out-dir", str(tmp_path)),
        ]
    )
    records = json.loads((tmp_path / "cpu-nll.json").read_text())
    by_impl = {r["impl"]: r for r in records}
    assert set(by_impl) == {"fused@4", "fused@auto", "reference"}
    assert by_impl["fused@4"]["chunk_size"] == 4 and by_impl["fused@auto"]["chunk_size"] is None
    assert by_impl["reference"]["chunk_size"] is None
    assert by_impl["fused@4"]["flop_accounting"] == "6*N*D*V"
    table = (tmp_path / "cpu-nll.md").read_text()
    assert "nll N=16: fused@4/reference time" in table and "nll N=16: fused@auto/reference time" in table


def test_one_chunk_size_keeps_the_plain_fused_name() -> None:
    assert run.fused_variants([None]) == {"fused": None}
    assert run.fused_variants([1048]) == {"fused": 1048}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--chunk-size", "0"], "expected a positive row count or 'auto', got '0'"),
        (["--chunk-size", "big"], "expected a positive row count or 'auto', got 'big'"),
    ],
)
def test_bad_chunk_sizes_are_named(argv: list[str], needle: str, capsys) -> None:
    with pytest.raises(SystemExit):
        run.main(argv)
    assert needle in capsys.readouterr().err


def test_repeated_chunk_sizes_are_an_error() -> None:
    with pytest.raises(ValueError, match="--chunk-size: repeated value"):
        run.fused_variants([1048, 1048])


def test_an_implementation_that_torch_compile_cannot_build_is_recorded_and_the_rest_timed(
    tmp_path: Path, monkeypatch
) -> None:
    """A torch.compile build failure (as a cache shared across ATen CPU capabilities caused),
    injected: the compiled record says why, fused and the reference are still timed and
    compared."""
    import torch._dynamo.exc

    from benches import common

    real_forward = common.forward

    def failing_compile(loss, impl, inp, *args):
        if impl == "compiled":
            raise torch._dynamo.exc.BackendCompilerFailed(
                lambda: None, RuntimeError("C++ compile error\nat::vec has not been declared"), None
            )
        return real_forward(loss, impl, inp, *args)

    monkeypatch.setattr(run, "forward", failing_compile)
    run.main(
        [
            *("--losses", "nll", "--impls", "fused", "compiled", "reference", "--inputs", "random"),
            *("--B", "2", "--T", "8", "--D", "8", "--V", "40", "--repeats", "1"),
            *("--formats", "json", "md", "--out-dir", str(tmp_path)),
        ]
    )
    by_impl = {r["impl"]: r for r in json.loads((tmp_path / "cpu-nll.json").read_text())}
    assert by_impl["compiled"]["failed"] == "torch.compile failed: RuntimeError: C++ compile error"
    assert "ms" not in by_impl["compiled"] and by_impl["fused"]["ms"] > 0 and by_impl["reference"]["ms"] > 0
    table = (tmp_path / "cpu-nll.md").read_text()
    assert "| compiled | torch.compile failed: RuntimeError: C++ compile error |" in table
    assert "fused/reference time" in table and "fused/compiled" not in table


def test_torch_compile_gets_a_cache_of_its_own_per_aten_level(monkeypatch) -> None:
    """A cache shared across ATen CPU capabilities broke the compiled reference's build at
    ATEN_CPU_CAPABILITY=default; a folder set by the user is kept."""
    import torch

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "placeholder")  # restored after the test
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    folder = run.isolate_inductor_cache()
    assert folder.endswith("_" + torch.backends.cpu.get_cpu_capability().lower())
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == folder
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/mine")
    assert run.isolate_inductor_cache() == "/tmp/mine"
