"""benches.run: several fused chunk sizes timed side by side, and its argument errors."""

from __future__ import annotations

import json
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
