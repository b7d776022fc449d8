"""MUSE-style metrics against direct computations, on synthetic text with a tiny model."""

from __future__ import annotations

import math
import random

import pytest
import torch

from tests.test_eval import _lcs
from unlearnx.data.tokenizer import build_word_tokenizer
from unlearnx.eval import metrics, muse
from unlearnx.models import tiny_llama

WORDS = [
    "the",
    "a",
    "river",
    "town",
    "author",
    "wrote",
    "many",
    "novels",
    "about",
    "old",
    "maps",
    "and",
    "quiet",
    "harbours",
    "in",
    "winter",
]


@pytest.fixture(scope="module")
def lm():

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30))) for _ in range(6)]
    tok = build_word_tokenizer(WORDS)
    return (
        tiny_llama(len(tok), heads=2, seed=1).eval(),
        tok,
        texts,
    )


def _direct_logps(model, tok, text: str) -> torch.Tensor:
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
    return logp.gather(1, ids[0, 1:, None]).squeeze(1)


def test_rouge_l_f1() -> None:
    assert metrics.rouge_l_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 3 / (3 + 6))
    assert metrics.rouge_l_f1("", "x") == 0.0
    for pred, ref in (("a b c d", "b d a"), ("a a b", "a b b a")):
        lcs = _lcs(pred.split(), ref.split())
        assert metrics.rouge_l_f1(pred, ref) == pytest.approx(
            2 * lcs / (len(pred.split()) + len(ref.split()))
        )


def test_token_logprobs_and_min_k(lm) -> None:
    model, tok, texts = lm
    got = muse.token_logprobs(model, tok, texts, batch_size=4)
    for g, text in zip(got, texts, strict=True):
        torch.testing.assert_close(g.double(), _direct_logps(model, tok, text), rtol=1e-5, atol=1e-5)
    scores = muse.min_k_scores(model, tok, texts, k=0.25)
    for s, text in zip(scores, texts, strict=True):
        lp = sorted(_direct_logps(model, tok, text).tolist())
        n = math.ceil(0.25 * len(lp))
        assert float(s) == pytest.approx(sum(lp[:n]) / n, rel=1e-5)
    with pytest.raises(ValueError, match="k"):
        muse.min_k_scores(model, tok, texts, k=0.0)


def test_auc_and_privleak() -> None:
    members, others = [0.9, 0.5, 0.5, 0.1], [0.5, 0.2, 0.0]
    wins = sum((m > o) + 0.5 * (m == o) for m in members for o in others)
    assert muse.auc(torch.tensor(members), torch.tensor(others)) == pytest.approx(wins / 12)
    assert muse.auc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert muse.privleak(0.6, 0.5) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="auc_retrain"):
        muse.privleak(0.5, 0.0)


def test_verbmem_and_knowmem_score_greedy_generations(lm) -> None:
    model, tok, texts = lm
    scores = muse.verbmem(model, tok, texts, prefix_tokens=5, max_new_tokens=6, batch_size=4)
    for s, text in zip(scores, texts, strict=True):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        gen = model.generate(
            input_ids=torch.tensor([ids[:5]]),
            do_sample=False,
            max_new_tokens=6,
            pad_token_id=tok.pad_token_id,
        )
        pred = tok.decode(gen[0, 5:], skip_special_tokens=True)
        assert s == pytest.approx(metrics.rouge_l_f1(pred, tok.decode(ids[5:11], skip_special_tokens=True)))
    with pytest.raises(ValueError, match="prefix_tokens"):
        muse.verbmem(model, tok, ["the river"], prefix_tokens=5)
    km = muse.knowmem(model, tok, ["who wrote many novels"], ["the author"], max_new_tokens=4)
    assert len(km) == 1 and 0.0 <= km[0] <= 1.0


def test_extraction_strength_matches_materialised_argmax(lm) -> None:
    model, tok, texts = lm
    got = muse.extraction_strength(model, tok, texts)
    for es, text in zip(got, texts, strict=True):
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            right = (model(input_ids=ids).logits[0, :-1].argmax(-1) == ids[0, 1:]).tolist()
        n = len(right)
        k = min((k for k in range(n + 1) if all(right[k:])), default=n)
        assert es == pytest.approx(1 - k / n)


def test_evaluate_muse_summary(lm) -> None:
    model, tok, texts = lm
    summary = muse.evaluate_muse(
        model,
        tok,
        forget_texts=texts[:3],
        holdout_texts=texts[3:],
        forget_qa=[("who wrote", "the author")],
        retain_qa=[],
        retain_auc=0.5,
        prefix_tokens=4,
        max_new_tokens=4,
    )
    members = muse.min_k_scores(model, tok, texts[:3])
    nonmembers = muse.min_k_scores(model, tok, texts[3:])
    assert summary["mink_auc"] == pytest.approx(muse.auc(members, nonmembers))
    assert summary["privleak"] == pytest.approx(muse.privleak(summary["mink_auc"], 0.5))
    assert summary["knowmem_retain"] is None and 0 <= summary["verbmem"] <= 1
    assert summary["extraction_strength"] == pytest.approx(
        sum(muse.extraction_strength(model, tok, texts[:3])) / 3
    )
    with pytest.raises(ValueError, match="holdout_texts"):
        muse.evaluate_muse(model, tok, forget_texts=texts, holdout_texts=[], forget_qa=[], retain_qa=[])
