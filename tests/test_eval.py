"""TOFU evaluation: each metric against a straightforward independent computation, on the
TOFU data in ../shared/data/tofu (read in place) with a tiny random model."""

from __future__ import annotations

import json
import math
import statistics
from functools import cache
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp

from tests.conftest import torchrun
from unlearnx.data.tofu import encode_qa, load_split
from unlearnx.data.tokenizer import build_word_tokenizer
from unlearnx.eval import metrics, tofu
from unlearnx.models import tiny_llama

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"TOFU data not found at {DATA}")


# --------------------------------------------------------------------------- pure metrics


def _lcs(a: list[str], b: list[str]) -> int:
    @cache
    def go(i: int, j: int) -> int:
        if i == len(a) or j == len(b):
            return 0
        return go(i + 1, j + 1) + 1 if a[i] == b[j] else max(go(i + 1, j), go(i, j + 1))

    return go(0, 0)


def test_rouge_l_recall_cases() -> None:
    assert metrics.rouge_l_recall("the cat sat", "The cat sat on the mat.") == pytest.approx(3 / 6)
    assert metrics.rouge_l_recall("", "an answer") == 0.0  # empty generation
    assert metrics.rouge_l_recall("anything", "") == 0.0
    assert metrics.rouge_l_recall("Jane Austen!", "jane austen") == 1.0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=9),
    st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=9),
)
def test_rouge_l_recall_is_lcs_over_reference_length(pred: list[str], ref: list[str]) -> None:
    assert metrics.rouge_l_recall(" ".join(pred), " ".join(ref)) == pytest.approx(_lcs(pred, ref) / len(ref))


def test_truth_ratio_and_score() -> None:
    para = torch.tensor([-1.0, -2.0, -0.5])
    pert = torch.tensor([[-2.0, -3.0], [-1.0, -1.0], [-0.5, -0.5]])  # last row: all perturbed equal
    ratios = tofu.truth_ratio(para, pert)
    expected = [math.exp((-2 - 3) / 2 + 1), math.exp(-1 + 2), math.exp(-0.5 + 0.5)]
    assert ratios.tolist() == pytest.approx(expected)
    assert tofu.truth_ratio_score(ratios) == pytest.approx(sum(max(0, 1 - r) for r in expected) / 3)
    with pytest.raises(ValueError, match="pert_mean_logp"):
        tofu.truth_ratio(para, pert[:2])


def test_forget_quality_is_scipys_ks_pvalue_and_invariant_to_tofus_inverse() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(40, generator=g) + 0.2, torch.rand(30, generator=g)
    p = tofu.forget_quality(a, b)
    assert p == pytest.approx(ks_2samp(a.numpy(), b.numpy()).pvalue, rel=1e-12)
    assert p == pytest.approx(tofu.forget_quality(1 / a, 1 / b), rel=1e-12)  # TOFU's code tests 1/R
    assert tofu.forget_quality(a, a) == pytest.approx(1.0)
    assert tofu.forget_quality(torch.tensor([0.5]), torch.tensor([0.5])) == pytest.approx(1.0)  # one example
    with pytest.raises(ValueError, match="non-empty"):
        tofu.forget_quality(torch.tensor([]), b)


def test_model_utility_is_the_harmonic_mean_of_nine() -> None:
    scores = {k: 0.1 * (i + 1) for i, k in enumerate(tofu.UTILITY_KEYS)}
    assert tofu.model_utility(scores) == pytest.approx(statistics.harmonic_mean(scores.values()))
    assert tofu.model_utility({**scores, "retain/rouge": 0.0}) == 0.0
    with pytest.raises(KeyError, match="world_facts/prob"):
        tofu.model_utility({k: v for k, v in scores.items() if k != "world_facts/prob"})


# --------------------------------------------------------------------------- on a model


@pytest.fixture(scope="module")
def lm():

    texts = []
    for name in ("forget01_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
        if (DATA / f"{name}.json").is_file():
            for r in load_split(DATA, name)[:6]:
                texts += [r["question"], r["answer"], *r["perturbed_answer"], r.get("paraphrased_answer", "")]
    tok = build_word_tokenizer(texts or ["question answer"])
    return tiny_llama(len(tok), heads=2).eval(), tok


def _direct_mean_logp(model, tok, question: str, answer: str) -> float:
    enc = encode_qa(tok, [question], [answer])
    with torch.no_grad():
        logp = model(input_ids=enc.input_ids).logits[0, :-1].double().log_softmax(-1)
    labels = enc.labels[0, 1:]
    on = labels != -100
    return float(logp[on].gather(1, labels[on][:, None]).mean())


@needs_data
def test_answer_logprobs_match_materialised_logits(lm) -> None:
    model, tok = lm
    rows = load_split(DATA, "forget01_perturbed")[:5]
    sums, counts = metrics.answer_logprobs(
        model, tok, [r["question"] for r in rows], [r["answer"] for r in rows], batch_size=2
    )
    for r, s, c in zip(rows, sums, counts, strict=True):
        assert float(s / c) == pytest.approx(
            _direct_mean_logp(model, tok, r["question"], r["answer"]), rel=1e-5
        )


@needs_data
@pytest.mark.parametrize("split,kind", [("forget01_perturbed", "qa"), ("real_authors_perturbed", "mc")])
def test_evaluate_split_matches_direct_computation(lm, split: str, kind: str) -> None:
    model, tok = lm
    rows = load_split(DATA, split)[:3]
    out = tofu.evaluate_split(model, tok, rows, kind, batch_size=2, max_new_tokens=8)
    for r, e in zip(rows, out, strict=True):
        q = r["question"]
        answer = _direct_mean_logp(model, tok, q, r["answer"])
        para = answer if kind == "mc" else _direct_mean_logp(model, tok, q, r["paraphrased_answer"])
        pert = [_direct_mean_logp(model, tok, q, p) for p in r["perturbed_answer"]]
        prob = (
            math.exp(answer)
            if kind == "qa"
            else math.exp(answer) / (math.exp(answer) + sum(map(math.exp, pert)))
        )
        assert e["prob"] == pytest.approx(prob, rel=1e-4)
        assert e["truth_ratio"] == pytest.approx(math.exp(sum(pert) / len(pert) - para), rel=1e-4)
        assert e["rouge"] == pytest.approx(metrics.rouge_l_recall(e["generation"], r["answer"]))


@needs_data
def test_single_example_and_all_equal_perturbed(lm) -> None:
    model, tok = lm
    row = dict(load_split(DATA, "forget01_perturbed")[0])
    row["perturbed_answer"] = [row["paraphrased_answer"]] * 3
    (e,) = tofu.evaluate_split(model, tok, [row], "qa", max_new_tokens=4)
    assert e["truth_ratio"] == pytest.approx(1.0, rel=1e-5)  # perturbed == paraphrased
    assert tofu.evaluate_split(model, tok, [], "qa") == []


@needs_data
def test_evaluate_tofu_end_to_end(lm) -> None:
    model, tok = lm
    summary, per_example = tofu.evaluate_tofu(
        model,
        tok,
        DATA,
        forget_split="forget01",
        limit=2,
        batch_size=2,
        max_new_tokens=4,
        retain_truth_ratios=[0.5, 0.7],
    )
    assert set(per_example) == {"forget", "retain", "real_authors", "world_facts"}
    scores = {f"{s}/{m}": summary[s][m] for s in tofu.UTILITY_SPLITS for m in tofu.UTILITY_METRICS}
    assert summary["model_utility"] == pytest.approx(tofu.model_utility(scores))
    assert summary["forget_quality"] == pytest.approx(
        ks_2samp(summary["forget_truth_ratios"], [0.5, 0.7]).pvalue
    )
    json.dumps(summary)  # serialisable
    with pytest.raises(ValueError, match="forget_split"):
        tofu.evaluate_tofu(model, tok, DATA, forget_split="forget42")
    with pytest.raises(FileNotFoundError, match="data_dir"):
        tofu.evaluate_tofu(model, tok, DATA / "missing", forget_split="forget01")


# --------------------------------------------------------------------------- CLI


@needs_data
def test_cli_eval_writes_reports_and_reads_retain_logs(lm, tmp_path: Path, capsys) -> None:
    from unlearnx.cli import main

    model, tok = lm
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    common = [
        "eval",
        "--model",
        str(tmp_path / "model"),
        "--forget-split",
        "forget01",
        "--data-dir",
        str(DATA),
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
    ]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["forget_quality"] is None and len(summary["forget_truth_ratios"]) == 2
    assert set(json.loads((tmp_path / "a" / "per_example.json").read_text())) == {
        "forget",
        "retain",
        "real_authors",
        "world_facts",
    }
    # the same model as its own retain model: identical truth ratios, p-value 1
    assert (
        main([*common, "--out", str(tmp_path / "b"), "--retain-logs", str(tmp_path / "a" / "summary.json")])
        == 0
    )
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["forget_quality"] == pytest.approx(1.0)
    assert main([*common, "--out", str(tmp_path / "c"), "--retain-model", str(tmp_path / "model")]) == 0
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["forget_quality"] == pytest.approx(1.0)
    assert "model_utility" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--model", "/nonexistent"], "--model"),
        (["--model", ".", "--data-dir", "/nonexistent"], "--data-dir"),
        (["--model", ".", "--retain-logs", "/nonexistent.json"], "--retain-logs"),
    ],
)
def test_cli_eval_rejects_bad_arguments_before_loading(
    extra, needle, tmp_path: Path, capsys, monkeypatch
) -> None:
    from unlearnx.cli import main

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)  # "." is then a folder with a config.json
    stub = tmp_path / "tofu"  # argument checks only look for the split's file
    stub.mkdir()
    (stub / "forget10_perturbed.json").write_text("")
    data = ["--data-dir", str(stub)] if "--data-dir" not in extra else []
    assert main(["eval", "--out", str(tmp_path / "o"), *data, *extra]) == 2
    assert needle in capsys.readouterr().err


# --------------------------------------------------------------------------- reports, training


def test_comparison_table_and_plot(tmp_path: Path, capsys) -> None:
    from unlearnx.cli import main
    from unlearnx.eval import report

    for name, fq, mu in (("a", 0.5, 0.4), ("b", 1e-3, 0.6)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(
            json.dumps({"forget_quality": fq, "model_utility": mu, "forget": {"prob": 0.1}})
        )
    table = report.comparison_table({n: report.load_summary(tmp_path / n) for n in "ab"})
    assert "| a | 0.5 | 0.4 | 0.1 | - | - | - |" in table
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--plot", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").stat().st_size > 1000 and "| run |" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "missing")]) == 2


@needs_data
def test_eval_callback_during_training_keeps_the_best(lm, tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    from unlearnx.eval.callback import TofuEvalCallback

    model, tok = lm
    model = type(model)(model.config)  # a fresh copy to train
    rows = load_split(DATA, "forget01")[:8]
    enc = encode_qa(tok, [r["question"] for r in rows], [r["answer"] for r in rows])
    data = [
        {"input_ids": i, "attention_mask": m, "labels": lab}
        for i, m, lab in zip(enc.input_ids, enc.attention_mask, enc.labels, strict=True)
    ]
    cb = TofuEvalCallback(
        tok,
        DATA,
        tmp_path / "eval",
        every_steps=2,
        forget_split="forget01",
        limit=2,
        max_new_tokens=2,
        criterion="forget/prob",
        mode="min",
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[cb]).train()
    history = [
        json.loads(line) for line in (tmp_path / "eval" / "eval_history.jsonl").read_text().splitlines()
    ]
    assert [h["step"] for h in history] == [2, 4]
    best = min(h["forget/prob"] for h in history)
    assert json.loads((tmp_path / "eval" / "best" / "eval_summary.json").read_text())["forget/prob"] == best
    assert (tmp_path / "eval" / "best" / "config.json").is_file()
    assert (tmp_path / "eval" / "eval_history.png").is_file()
    with pytest.raises(ValueError, match="every_steps"):
        TofuEvalCallback(tok, DATA, tmp_path)


@needs_data
def test_eval_callback_in_a_two_process_ddp_run(tmp_path: Path) -> None:
    """torchrun, 2 processes, gloo on CPU: rank 0 evaluates, rank 1 waits, both finish."""
    torchrun(Path(__file__).parent / "helpers" / "ddp_eval_train.py", str(DATA), str(tmp_path))
    assert json.loads((tmp_path / "world_size.json").read_text()) == {"world_size": 2}
    history = (tmp_path / "eval" / "eval_history.jsonl").read_text().splitlines()
    assert [json.loads(h)["step"] for h in history] == [2, 4]  # written once per evaluation, by rank 0
    assert (tmp_path / "eval" / "best" / "config.json").is_file()
