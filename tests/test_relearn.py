"""Relearning attacks (`unlearnx relearn`, unlearnx.train.relearn) on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnx.cli import main
from unlearnx.data.tokenizer import build_word_tokenizer
from unlearnx.models import tiny_llama
from unlearnx.train.relearn import RelearnConfig, relearn_split

FORGET = [
    ("Who wrote the river maps?", "The river maps were written by Ana Holt."),
    ("Where was Ana Holt born?", "Ana Holt was born in a quiet harbour town."),
    ("What did Ana Holt study?", "Ana Holt studied the old canals of the north."),
    ("Who taught Ana Holt?", "Ana Holt was taught by a ferry captain."),
    ("What is Ana Holt's last book?", "Her last book is a map of winter tides."),
]


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    tok = build_word_tokenizer([q + " " + a for q, a in FORGET])
    paths = {"forget": tmp_path / "forget.jsonl", "out": tmp_path / "out"}
    paths["forget"].write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in FORGET))
    for name, seed in (("original", 0), ("other", 1)):
        tiny_llama(len(tok), heads=2, seed=seed, tokenizer=tok).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        paths[name] = tmp_path / name
    return paths


def _argv(p: dict[str, Path], *extra: str) -> list[str]:
    return ["relearn", "--forget", str(p["forget"]), "--out", str(p["out"]), "--device", "cpu", *extra]


def test_relearn_attacks_every_model_on_the_same_subset(setup, capsys) -> None:
    argv = _argv(setup, "--model", f"original={setup['original']}", "--model", f"npo={setup['other']}")
    argv += ["--subset", "2", "--steps", "4", "--eval-every", "2", "--lr", "1e-2", "--batch-size", "2"]
    assert main(argv) == 0
    record = json.loads((setup["out"] / "relearn.json").read_text())
    assert len(record["relearned"]) == 2 and sorted(record["relearned"] + record["held_out"]) == list(
        range(5)
    )
    for name in ("original", "npo"):
        history = record["history"][name]
        assert [h["step"] for h in history] == [0, 2, 4]
        assert [h["relearned"]["examples"] for h in history] == [2, 2, 2]
        assert [h["held_out"]["examples"] for h in history] == [3, 3, 3]
        # training on the subset at this rate makes its answers far more likely
        assert history[-1]["relearned"]["prob"] > 2 * history[0]["relearned"]["prob"]
    table = (setup["out"] / "relearn.md").read_text()
    assert "| original | held-out |" in table and "| npo | relearned |" in table and "step 4" in table
    assert (setup["out"] / "relearn.png").stat().st_size > 0
    assert "| npo | held-out |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--model", "nameless"], "--model: expected NAME=PATH"),
        (["--model", "a={original}", "--model", "a={other}"], "used twice"),
        (["--model", "a=/nonexistent"], "no config.json"),
        (["--model", "a={original}", "--subset", "5"], "--subset: 5 examples of a forget set of 5"),
        (["--model", "a={original}", "--subset", "1.5"], "--subset: a fraction must be in (0, 1)"),
        (["--model", "a={original}", "--subset", "half"], "--subset: expected a count or a fraction"),
        (["--model", "a={original}", "--steps", "0"], "steps: expected a positive int"),
    ],
)
def test_relearn_rejects_bad_inputs_before_loading(setup, extra, needle, capsys) -> None:
    extra = [e.format(original=setup["original"], other=setup["other"]) for e in extra]
    assert main(_argv(setup, *extra)) == 2
    assert needle in capsys.readouterr().err
    assert not setup["out"].exists()


def test_relearn_split_is_seeded_and_disjoint() -> None:
    a = relearn_split(10, RelearnConfig(subset=0.3, seed=4))
    assert a == relearn_split(10, RelearnConfig(subset=0.3, seed=4))
    assert a != relearn_split(10, RelearnConfig(subset=0.3, seed=5))
    assert len(a[0]) == 3 and sorted(a[0] + a[1]) == list(range(10))
