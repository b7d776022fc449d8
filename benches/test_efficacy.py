"""``python -m benches.efficacy``: its tuning rule, and the whole pipeline at smoke size on the
real TOFU data (the committed table is the full run; see docs/evaluation.md)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from benches import efficacy

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
needs_data = pytest.mark.skipif(not (DATA / "full.json").is_file(), reason=f"TOFU data not found at {DATA}")


def _run(lr: float, forget: tuple[float, float], retain: tuple[float, float]) -> dict:
    return {"learning_rate": lr, "forget_prob": list(forget), "retain_prob": list(retain)}


def test_choose_keeps_most_retain_among_runs_that_halved_forgetting() -> None:
    runs = [
        _run(1e-4, (0.8, 0.6), (0.7, 0.7)),
        _run(3e-4, (0.8, 0.3), (0.7, 0.6)),
        _run(1e-3, (0.8, 0.01), (0.7, 0.2)),
    ]
    assert efficacy.choose(runs) == 3e-4
    # none halved it: the one that forgot most
    assert efficacy.choose([_run(1e-4, (0.8, 0.7), (0.7, 0.7)), _run(3e-4, (0.8, 0.5), (0.7, 0.1))]) == 3e-4


def test_the_splits_do_not_overlap() -> None:
    rows = [set(r) for r in (efficacy.RETAIN_ROWS, efficacy.TUNE_ROWS, efficacy.FORGET_ROWS)]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert set(efficacy.RETAIN_PROBE) <= rows[0]


@needs_data
def test_the_rows_are_tofus_splits() -> None:
    """The forget rows are forget01, the tuning rows lie in forget05 outside it, and the retain
    rows hold every question of retain_perturbed (model utility's retain split)."""
    full = [r["question"] for r in efficacy._rows(DATA, "full")]
    split = {
        n: {r["question"] for r in efficacy._rows(DATA, n)}
        for n in ("forget01", "forget05", "retain_perturbed")
    }
    assert {full[i] for i in efficacy.FORGET_ROWS} == split["forget01"]
    assert {full[i] for i in efficacy.TUNE_ROWS} <= split["forget05"] - split["forget01"]
    assert split["retain_perturbed"] <= {full[i] for i in efficacy.RETAIN_ROWS}


@needs_data
def test_pipeline_end_to_end_at_smoke_size(tmp_path) -> None:
    argv = ["--data", str(DATA), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    argv += ["--train-epochs", "0.05", "--unlearn-epochs", "1", "--limit", "2", "--methods", "ga", "npo"]
    argv += ["--lr-grid", "1e-4", "1e-3"]
    assert efficacy.main(argv) == 0
    res = json.loads((tmp_path / "out" / "efficacy.json").read_text())
    assert set(res["methods"]) == {"ga", "npo"}
    for m, e in res["methods"].items():
        assert e["learning_rate"] == res["tuning"][m]["chosen"] in (1e-4, 1e-3)
        assert set(efficacy.COLUMNS) <= set(e["summary"])
        assert len(res["tuning"][m]["runs"]) == 2
    assert res["retain_model"]["forget_quality"] is None and res["target"]["forget_quality"] is not None
    three = [res["target"][k] for k in efficacy.RETAIN_UTILITY]
    assert res["target"]["retain_utility"] == pytest.approx(statistics.harmonic_mean(three))
    # generation stops at the EOS that training appends (LlamaConfig's default EOS is <s> here)
    saved = json.loads((tmp_path / "work" / "target" / "generation_config.json").read_text())
    tokenizer = json.loads((tmp_path / "work" / "tokenizer" / "tokenizer.json").read_text())
    assert saved["eos_token_id"] == next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == "</s>")
    assert "| npo |" in (tmp_path / "out" / "efficacy.md").read_text()
    assert (tmp_path / "out" / "tradeoff.png").stat().st_size > 1000
    # resumable: a second run reuses every stage (no training: the models' files are unchanged)
    stamp = (tmp_path / "work" / "target" / "config.json").stat().st_mtime_ns
    assert efficacy.main(argv) == 0
    assert (tmp_path / "work" / "target" / "config.json").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "out" / "efficacy.json").read_text()) == res


def test_bpe_tokenizer_round_trips_any_text() -> None:
    from unlearnx.data.tokenizer import build_bpe_tokenizer

    texts = ["The author Jaime Vasquez was born in Santiago, Chile.", "He writes true crime."] * 20
    tok = build_bpe_tokenizer(texts, vocab_size=300)
    for text in (texts[0], "Unseen wörds & ünïcode 😀, 12345"):
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok(texts[0])["input_ids"]) < len(texts[0]) // 2  # merges were learnt
    assert build_bpe_tokenizer(texts, vocab_size=300).get_vocab() == tok.get_vocab()  # deterministic
