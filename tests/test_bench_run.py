"""benches.run: several fused chunk sizes and CPU vocabulary blocks timed side by side, and its
argument errors."""

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
    assert run.fused_variants([None]) == {"fused": run.Variant(None, None)}
    assert run.fused_variants([1048], [0]) == {"fused": run.Variant(1048, 0)}


def test_chunk_sizes_and_vocab_blocks_are_timed_in_every_pair() -> None:
    assert run.fused_variants([None], [None, 0, 64]) == {
        "fused@vbauto": run.Variant(None, None),
        "fused@vbwhole": run.Variant(None, 0),
        "fused@vb64": run.Variant(None, 64),
    }
    assert list(run.fused_variants([4, None], [0, 64])) == [
        "fused@4,vbwhole",
        "fused@4,vb64",
        "fused@auto,vbwhole",
        "fused@auto,vb64",
    ]


def test_vocab_blocks_are_set_for_the_fused_call_alone(tmp_path: Path, monkeypatch) -> None:
    """Each variant runs the logits GEMM in its own blocks (counted by the GEMMs into the
    logits buffer: V=160 at D=16 fp32 is 10 KiB, so 8 KiB blocks are two), and the library's
    setting is back afterwards."""
    from unlearnx import _chunked

    blocks = []
    logits = _chunked.Head.logits

    def counting(self, x):
        blocks.append(len(self._vocab_blocks()))
        return logits(self, x)

    monkeypatch.setattr(_chunked.Head, "logits", counting)
    library_default = _chunked.CPU_VOCAB_BLOCK_BYTES
    run.main(
        [
            *("--losses", "nll", "--impls", "fused", "--inputs", "random", "--B", "2", "--T", "8"),
            *("--D", "16", "--V", "160", "--repeats", "1", "--cpu-vocab-block", "whole", "8"),
            *("--formats", "json", "--out-dir", str(tmp_path)),
        ]
    )
    records = {r["impl"]: r for r in json.loads((tmp_path / "cpu-nll.json").read_text())}
    assert records["fused@vbwhole"]["cpu_vocab_block_kib"] == 0
    assert records["fused@vb8"]["cpu_vocab_block_kib"] == 8
    assert set(blocks) == {1, 2}
    restored = _chunked.CPU_VOCAB_BLOCK_BYTES
    assert restored == library_default


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--chunk-size", "0"], "expected a positive row count or 'auto', got '0'"),
        (["--chunk-size", "big"], "expected a positive row count or 'auto', got 'big'"),
        (["--cpu-vocab-block", "0"], "expected a positive KiB count, 'whole' or 'auto', got '0'"),
    ],
)
def test_bad_chunk_sizes_are_named(argv: list[str], needle: str, capsys) -> None:
    with pytest.raises(SystemExit):
        run.main(argv)
    assert needle in capsys.readouterr().err


def test_repeated_chunk_sizes_are_an_error() -> None:
    with pytest.raises(ValueError, match="--chunk-size / --cpu-vocab-block: repeated value"):
        run.fused_variants([1048, 1048])
    with pytest.raises(ValueError, match="repeated value in fused@vbwhole"):
        run.fused_variants([None], [0, 0])


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
