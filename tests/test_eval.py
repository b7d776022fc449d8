"""TOFU evaluation: each metric against a straightforward independent computation, on the
TOFU data in ../shared/data/tofu (read in place) with a tiny random model."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from scipy.stats import ks_2samp

from tests.conftest import torchrun
from unlearnx.data.template import encode_chat, template_for
from unlearnx.data.tofu import encode_qa, load_split
from unlearnx.data.tokenizer import build_word_tokenizer
from unlearnx.eval import metrics, tofu
from unlearnx.models import tiny_llama

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"TOFU data not found at {DATA}")


# --------------------------------------------------------------------------- pure metrics


def test_rouge_scores_are_rouge_scores_with_stemming() -> None:
    s = metrics.rouge_scores("the cat sat", "The cat sat on the mat.")
    assert s["rougeL_recall"] == pytest.approx(3 / 6) and s["rouge1_recall"] == pytest.approx(3 / 6)
    assert s["rougeL_f1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert metrics.rouge_scores("", "an answer")["rougeL_recall"] == 0.0  # empty generation
    assert metrics.rouge_scores("Jane Austen!", "jane austen")["rougeL_recall"] == 1.0
    # OU's use_stemmer=True: Porter stems match inflections
    assert metrics.rouge_scores("the cats were running", "the cat was run")["rougeL_recall"] == pytest.approx(
        3 / 4
    )


def test_truth_ratio_and_its_two_aggregates() -> None:
    correct = torch.tensor([1.0, 2.0, 0.5])  # mean token losses
    wrong = torch.tensor([[2.0, 3.0], [1.0, 1.0], [0.5, 0.5]])  # last row: all wrong equal the correct
    ratios = tofu.truth_ratio(correct, wrong)
    expected = [math.exp(-2.5) / (math.exp(-1) + 1e-10), math.exp(-1) / (math.exp(-2) + 1e-10), 1.0]
    assert ratios.tolist() == pytest.approx(expected, rel=1e-9)
    assert tofu.true_better(ratios) == pytest.approx(sum(max(0, 1 - r) for r in expected) / 3)
    assert tofu.closer_to_1_better(ratios) == pytest.approx(sum(min(r, 1 / r) for r in expected) / 3)
    assert tofu.closer_to_1_better(torch.tensor([1.0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="wrong_avg_loss"):
        tofu.truth_ratio(correct, wrong[:2])


def test_forget_quality_is_scipys_ks_pvalue_and_invariant_to_tofus_inverse() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(40, generator=g) + 0.2, torch.rand(30, generator=g)
    p = tofu.forget_quality(a, b)
    assert p == pytest.approx(ks_2samp(a.numpy(), b.numpy()).pvalue, rel=1e-12)
    assert p == pytest.approx(tofu.forget_quality(1 / a, 1 / b), rel=1e-12)  # TOFU's code tests 1/R
    assert tofu.forget_quality(a, a) == pytest.approx(1.0)
    assert tofu.forget_quality([0.5], [0.5]) == pytest.approx(1.0)  # one example
    with pytest.raises(ValueError, match="non-empty"):
        tofu.forget_quality([], b)


def test_model_utility_is_the_harmonic_mean_of_nine() -> None:
    scores = {k: 0.1 * (i + 1) for i, k in enumerate(tofu.UTILITY_METRICS)}
    assert len(scores) == 9
    assert tofu.model_utility(scores) == pytest.approx(statistics.harmonic_mean(scores.values()))
    assert tofu.model_utility({**scores, "retain_Q_A_ROUGE": 0.0}) == 0.0
    with pytest.raises(KeyError, match="wf_Truth_Ratio"):
        tofu.model_utility({k: v for k, v in scores.items() if k != "wf_Truth_Ratio"})
    three = tofu.UTILITY_METRICS[:3]
    assert tofu.model_utility(scores, three) == pytest.approx(statistics.harmonic_mean([0.1, 0.2, 0.3]))


def test_retain_logs_are_read_from_ou_format(tmp_path: Path) -> None:
    logs = {
        "forget_truth_ratio": {
            "agg_value": 0.5,
            "value_by_index": {"0": {"score": 0.3}, "1": {"score": 0.9}},
        },
        "mia_min_k": {"agg_value": 0.61, "forget": {}, "holdout": {}},
    }
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(logs))
    assert tofu.read_retain_logs(tmp_path / "TOFU_EVAL.json") == {
        "forget_truth_ratio": [0.3, 0.9],
        "mia_min_k": 0.61,
    }
    (tmp_path / "other.json").write_text(json.dumps({"model_utility": {"agg_value": 0.5}}))
    with pytest.raises(ValueError, match="neither"):
        tofu.read_retain_logs(tmp_path / "other.json")
    with pytest.raises(ValueError, match="cannot read"):
        tofu.read_retain_logs(tmp_path / "missing.json")


# --------------------------------------------------------------------------- on a model


@pytest.fixture(scope="module")
def lm():

    texts = []
    for name in ("forget01_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
        if (DATA / f"{name}.json").is_file():
            for r in load_split(DATA, name)[:6]:
                texts += [r["question"], r["answer"], *r["perturbed_answer"], r.get("paraphrased_answer", "")]
    tok = build_word_tokenizer(texts or ["question answer"])
    return tiny_llama(len(tok), heads=2, tokenizer=tok).eval(), tok


def _direct_avg_loss(model, tok, question: str, answer: str) -> float:
    """OU's evaluate_probability on one example, logits materialised in float64."""
    it = encode_chat(tok, template_for(tok), [question], [answer])
    ids, labels = torch.tensor([it["input_ids"]]), torch.tensor(it["labels"])
    with torch.no_grad():
        logp = model(input_ids=ids, attention_mask=(ids != metrics.pad_id(tok)).long()).logits[0, :-1]
    logp = logp.double().log_softmax(-1)
    on = labels[1:] != -100
    return -float(logp[on].gather(1, labels[1:][on][:, None]).sum()) / int((labels != -100).sum())


def _eos_only_head(model, eos: int):
    """A head whose greedy choice is always ``eos``."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(eos), model.config.vocab_size).float())
    model.lm_head = head
    return model


def test_generation_stops_at_the_tokenizers_eos(lm) -> None:
    """tiny_llama(tokenizer=) puts the tokenizer's special ids in the config, so generate stops
    at the EOS training appends; LlamaConfig's defaults (EOS 2 = "<s>" here) never stop, and
    greedy_continue says so."""
    model, tok = lm
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert tok.eos_token_id != 2
    prompt = torch.tensor(
        [encode_chat(tok, template_for(tok), ["q"], ["a"], for_generation=True)["input_ids"]]
    )
    fixed = _eos_only_head(tiny_llama(len(tok), heads=2, tokenizer=tok).eval(), tok.eos_token_id)
    assert fixed.generate(prompt, max_new_tokens=6, do_sample=False).shape[1] == prompt.shape[1] + 1
    default = _eos_only_head(tiny_llama(len(tok), heads=2).eval(), tok.eos_token_id)
    assert default.generate(prompt, max_new_tokens=6, do_sample=False).shape[1] == prompt.shape[1] + 6
    with pytest.warns(UserWarning, match="not at the tokenizer's EOS"):
        metrics.greedy_continue(default, tok, [prompt[0].tolist()], max_new_tokens=2)
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_llama(len(tok) - 1, tokenizer=tok)


@needs_data
def test_avg_losses_match_materialised_logits(lm) -> None:
    model, tok = lm
    rows = load_split(DATA, "forget01_perturbed")[:5]
    items = [encode_chat(tok, template_for(tok), [r["question"]], [r["answer"]]) for r in rows]
    got = tofu.avg_losses(model, tok, items, batch_size=2)
    want = [_direct_avg_loss(model, tok, r["question"], r["answer"]) for r in rows]
    assert got.tolist() == pytest.approx(want, rel=1e-5)


@needs_data
@pytest.mark.parametrize(
    "split,kind",
    [("forget01_perturbed", "qa"), ("real_authors_perturbed", "mc"), ("forget01_perturbed", "answer")],
)
def test_evaluate_split_matches_direct_computation(lm, split: str, kind: str) -> None:
    model, tok = lm
    rows = load_split(DATA, split)[:3]
    out = tofu.evaluate_split(model, tok, rows, kind, batch_size=2, max_new_tokens=8)
    for r, e in zip(rows, out, strict=True):
        q = r["question"]
        answer = _direct_avg_loss(model, tok, q, r["answer"])
        para = answer if kind == "mc" else _direct_avg_loss(model, tok, q, r["paraphrased_answer"])
        pert = [_direct_avg_loss(model, tok, q, p) for p in r["perturbed_answer"]]
        prob = math.exp(-answer)
        if kind == "mc":
            prob /= prob + sum(math.exp(-p) for p in pert) + 1e-10
        assert e["prob"] == pytest.approx(prob, rel=1e-4)
        ratio = math.exp(-sum(pert) / len(pert)) / (math.exp(-para) + 1e-10)
        if kind == "answer":  # question and answer alone: no truth ratio
            assert "truth_ratio" not in e
        else:
            assert e["truth_ratio"] == pytest.approx(ratio, rel=1e-4)
        assert e["rouge"] == pytest.approx(
            metrics.rouge_scores(e["generation"], r["answer"])["rougeL_recall"]
        )


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
    """Every metric on a tiny model: summary and logs in OU's shape, aggregates consistent with
    the per-example values, forget_quality and privleak from the retain logs."""
    model, tok = lm
    retain = {"forget_truth_ratio": [0.5, 0.7], "mia_min_k": 0.6}
    summary, logs = tofu.evaluate_tofu(
        model, tok, DATA, forget_split="forget01", metrics=tofu.METRICS, retain_logs=retain,
        limit=2, batch_size=2, max_new_tokens=4,
    )  # fmt: skip
    assert list(summary) == list(tofu.METRICS) and set(tofu.METRICS) <= set(logs)
    assert list(summary)[:7] == list(tofu.DEFAULT_METRICS)
    assert summary["model_utility"] == pytest.approx(
        tofu.model_utility({m: summary[m] for m in tofu.UTILITY_METRICS})
    )
    ratios = [v["score"] for v in logs["forget_truth_ratio"]["value_by_index"].values()]
    assert len(ratios) == 2 and summary["forget_truth_ratio"] == pytest.approx(
        tofu.closer_to_1_better(torch.tensor(ratios))
    )
    assert summary["forget_quality"] == pytest.approx(ks_2samp(ratios, [0.5, 0.7]).pvalue)
    assert summary["privleak"] == pytest.approx(metrics.privleak(summary["mia_min_k"], 0.6))
    probs = [v["prob"] for v in logs["forget_Q_A_Prob"]["value_by_index"].values()]
    assert summary["forget_Q_A_Prob"] == pytest.approx(sum(probs) / 2)
    for m in tofu.MIA_METRICS:
        assert 0 <= summary[m] <= 1 and len(logs[m]["forget"]["value_by_index"]) == 2
    json.dumps(logs)  # serialisable
    no_ref, _ = tofu.evaluate_tofu(model, tok, DATA, forget_split="forget01", limit=1, max_new_tokens=2)
    assert no_ref["forget_quality"] is None
    for kwargs, needle in (
        ({"forget_split": "forget42"}, "forget_split"),
        ({"metrics": ["forget_knowmem_ROUGE"]}, "metrics"),
        ({"question_key": "query"}, "question_key"),
        ({"holdout_split": "holdout42"}, "holdout_split"),
    ):
        with pytest.raises(ValueError, match=needle):
            tofu.evaluate_tofu(model, tok, DATA, **kwargs)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        tofu.evaluate_tofu(model, tok, DATA / "missing", forget_split="forget01")


@needs_data
def test_paraphrased_question_key(lm) -> None:
    model, tok = lm
    kw = dict(forget_split="forget01", metrics=["forget_Q_A_Prob"], limit=2)
    plain, _ = tofu.evaluate_tofu(model, tok, DATA, **kw)
    para, _ = tofu.evaluate_tofu(model, tok, DATA, question_key="paraphrased_question", **kw)
    rows = load_split(DATA, "forget01_perturbed")[:2]
    want = [math.exp(-_direct_avg_loss(model, tok, r["paraphrased_question"], r["answer"])) for r in rows]
    assert para["forget_Q_A_Prob"] == pytest.approx(sum(want) / 2, rel=1e-4)
    assert para["forget_Q_A_Prob"] != pytest.approx(plain["forget_Q_A_Prob"], rel=1e-6)


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
    summary = json.loads((tmp_path / "a" / "TOFU_SUMMARY.json").read_text())
    assert list(summary) == list(tofu.DEFAULT_METRICS) and summary["forget_quality"] is None
    logs = json.loads((tmp_path / "a" / "TOFU_EVAL.json").read_text())
    assert len(logs["forget_truth_ratio"]["value_by_index"]) == 2 and "mia_min_k" in logs
    # the same model as its own retain model: identical truth ratios (p-value 1) and AUC (privleak 0)
    retain_logs = str(tmp_path / "a" / "TOFU_EVAL.json")
    assert main([*common, "--out", str(tmp_path / "b"), "--retain-logs", retain_logs]) == 0
    b = json.loads((tmp_path / "b" / "TOFU_SUMMARY.json").read_text())
    assert b["forget_quality"] == pytest.approx(1.0) and b["privleak"] == pytest.approx(0.0, abs=1e-6)
    extra = ["--retain-model", str(tmp_path / "model"), "--metrics", "forget_quality", "mia_loss"]
    assert main([*common, "--out", str(tmp_path / "c"), *extra]) == 0
    c = json.loads((tmp_path / "c" / "TOFU_SUMMARY.json").read_text())
    assert list(c) == ["forget_quality", "mia_loss"] and c["forget_quality"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "model_utility" in out and "TOFU_SUMMARY.json" in out


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--model", "/nonexistent"], "--model"),
        (["--model", ".", "--data-dir", "/nonexistent"], "--data-dir"),
        (["--model", ".", "--retain-logs", "/nonexistent.json"], "--retain-logs"),
        (["--model", ".", "--metrics", "forget_knowmem_ROUGE"], "--metrics"),
    ],
)
def test_cli_eval_rejects_bad_arguments_before_loading(
    extra, needle, tmp_path: Path, capsys, monkeypatch
) -> None:
    from unlearnx.cli import main

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)  # "." is then a folder with a config.json
    stub = tmp_path / "tofu"  # argument checks only look for the splits' files
    stub.mkdir()
    for name in ("forget10_perturbed", "holdout10"):
        (stub / f"{name}.json").write_text("")
    data = ["--data-dir", str(stub)] if "--data-dir" not in extra else []
    assert main(["eval", "--out", str(tmp_path / "o"), *data, *extra]) == 2
    assert needle in capsys.readouterr().err


# --------------------------------------------------------------------------- reports, training


def test_comparison_table_and_plot(tmp_path: Path, capsys) -> None:
    from unlearnx.cli import main
    from unlearnx.eval import report

    for name, fq, mu in (("a", 0.5, 0.4), ("b", 1e-3, 0.6)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "TOFU_SUMMARY.json").write_text(
            json.dumps({"forget_quality": fq, "model_utility": mu, "forget_Q_A_Prob": 0.1})
        )
    table = report.comparison_table({n: report.load_summary(tmp_path / n) for n in "ab"})
    assert "| a | 0.5 | 0.4 | 0.1 | - | - | - | - |" in table
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
        criterion="forget_Q_A_Prob",
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
    best = min(h["forget_Q_A_Prob"] for h in history)
    assert (
        json.loads((tmp_path / "eval" / "best" / "eval_summary.json").read_text())["forget_Q_A_Prob"] == best
    )
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
