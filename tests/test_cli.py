"""The `unlearnx` command: the demo and the quick benchmark end to end, info, argument errors."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

import unlearnx
from unlearnx import demo
from unlearnx.cli import main
from unlearnx.data import synthetic
from unlearnx.data.tokenizer import build_word_tokenizer
from unlearnx.eval import tofu
from unlearnx.models import tiny_llama
from unlearnx.train.api import CONSTANT_SCHEDULE, UnlearnConfig, unlearn


def test_bench_runs_and_fused_tracks_reference(capsys) -> None:
    argv = [
        "bench",
        "--steps",
        "3",
        "--batch",
        "2",
        "--seq-len",
        "32",
        "--hidden",
        "64",
        "--vocab",
        "1000",
        "--json",
    ]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    fused, ref = results["fused"], results["reference"]
    assert len(fused["losses"]) == len(ref["losses"]) == 3
    # NPO starts at (2/beta) log 2 (policy == reference) and unlearning lowers it
    assert fused["losses"][0] == pytest.approx(20 * 0.6931471805599453, rel=1e-6)
    assert fused["losses"][-1] < fused["losses"][0]
    assert fused["losses"] == pytest.approx(ref["losses"], rel=1e-4)
    assert fused["ms_per_step"] > 0 and ref["peak_extra_mb"] > 0


def test_interleaved_timing_calls_each_function_once_per_round_in_turn() -> None:
    from unlearnx.profiling import interleaved_median_ms

    calls = []
    ms = interleaved_median_ms(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"), 3
    )
    assert calls == ["a", "b"] * 3
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())


def test_peak_extra_mb_counts_memory_freed_before_it_and_leaves_glibc_as_it_was() -> None:
    """A block freed before the measurement is not silently reused (the heap is trimmed and
    allocations mmap'd while measuring), measurement after measurement; and afterwards glibc's
    mmap threshold is no longer 64 KiB (a 1 MiB buffer freed and taken again is not faulted in again)."""
    import resource

    import torch

    from unlearnx.profiling import peak_extra_mb

    cpu = torch.device("cpu")
    assert 60 < peak_extra_mb(lambda: torch.ones(16 * 2**20).sum(), cpu) < 80
    for _ in range(2):
        freed = torch.ones(2**19)  # 2 MiB
        del freed
        assert 1.5 < peak_extra_mb(lambda: torch.ones(2**19).sum(), cpu) < 4
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        torch.ones(2**18)  # 1 MiB, freed at once: mmap'd, that would be 256 page faults each
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 100 * 256 // 4


def test_bench_table_output(capsys) -> None:
    assert (
        main(["bench", "--steps", "2", "--batch", "1", "--seq-len", "16", "--hidden", "64", "--vocab", "500"])
        == 0
    )
    out = capsys.readouterr().out
    assert "loss fused" in out and "peak extra MiB" in out and "fused / reference" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["bench", "--steps", "0"], "--steps"),
        (["bench", "--beta", "-1"], "--beta"),
        (["demo", "--methods", "forgetall"], "--methods"),
        (["demo", "--quick", "--stop-every", "batch"], "--stop-every"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_are_rejected(argv, needle, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["demo", "--quick", "--model", "/some/model"], "--model: the --quick demo trains its own"),
        (["demo", "--model", "/nonexistent"], "--model: /nonexistent is not a Hugging Face model"),
        (["demo", "--quick", "--stop-ratio", "1.5"], "--stop-ratio: expected a share in [0, 1), got 1.5"),
        (["demo", "--stop-ratio", "0.3"], "--stop-ratio: only the --quick demo stops early"),
        (["demo", "--stop-every", "epoch"], "--stop-every: only the --quick demo stops early"),
    ],
)
def test_demo_model_errors_come_before_any_work(argv, needle, tmp_path, capsys) -> None:
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("every", ["step", "epoch"])
@pytest.mark.parametrize("threshold", [1.0, 0.0])
def test_quick_demo_stops_at_the_first_check_whose_forget_prob_is_low_enough(
    every: str, threshold: float, tmp_path
) -> None:
    # threshold 1 is met by any probability: one step or one epoch; 0 by none: the whole cap of 3
    data = synthetic.split(4, 1, 2, 0)
    texts = [r[k] for rows in data.values() for r in rows for k in ("question", "answer")]
    tok = build_word_tokenizer(texts)
    model = tiny_llama(len(tok), hidden=32, layers=1, heads=2, max_positions=64, seed=0, tokenizer=tok)
    pairs = [(r["question"], r["answer"]) for r in data["forget"]]
    config = UnlearnConfig(**CONSTANT_SCHEDULE, method="ga", learning_rate=1e-3, epochs=3, batch_size=2)
    stop = demo.StopWhenForgotten(model, tok, data["forget"], threshold, every=every)
    result = unlearn(model, tok, pairs, None, config, tmp_path, callbacks=[stop])
    steps_per_epoch = math.ceil(len(pairs) / 2)
    assert steps_per_epoch > 1
    if threshold == 0.0:
        assert (result["steps"], result["epochs"]) == (3 * steps_per_epoch, 3)
    elif every == "epoch":
        assert (result["steps"], result["epochs"]) == (steps_per_epoch, 1)
    else:
        assert result["steps"] == 1
        assert result["epochs"] == pytest.approx(1 / steps_per_epoch)
    assert model.training  # the check evaluates in eval mode and puts the model back
    # the check's probability is the one evaluate_split reports
    probs = tofu.answer_probs(model, tok, data["forget"])
    split = tofu.evaluate_split(model, tok, data["forget"], "answer", max_new_tokens=2)
    assert probs.tolist() == pytest.approx([e["prob"] for e in split], rel=1e-12)


def test_quick_demo_stop_rule_rejects_an_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="every: expected 'step' or 'epoch', got 'batch'"):
        demo.StopWhenForgotten(None, None, [], 0.5, every="batch")
    with pytest.raises(ValueError, match="stop_every: expected 'step' or 'epoch', got 'batch'"):
        demo.run(demo.DemoConfig(stop_every="batch"))


def test_quick_demo_trains_each_fact_in_both_phrasings() -> None:
    rows = synthetic.split(4, 1, 2, 0)["retain"]
    pairs = demo._pairs(rows, paraphrases=True)
    assert pairs[: len(rows)] == demo._pairs(rows, paraphrases=False)
    assert pairs[: len(rows)] == [(r["question"], r["answer"]) for r in rows]
    # the paraphrase is asked for with a cue, so the question alone still gets the answer
    assert pairs[len(rows) :] == [
        (f"{r['question']} {demo.PARAPHRASE_CUE}", r["paraphrased_answer"]) for r in rows
    ]


def test_synthetic_truth_ratio_answers_differ_only_in_the_value_and_not_first() -> None:
    # the truth ratio compares the paraphrase with the perturbed answers: the value must sit in
    # a context the model trained on (not first, right after the question), the rest must match
    data = synthetic.split(20, 2, 20, 0)
    for row in (r for rows in data.values() for r in rows):
        para = row["paraphrased_answer"].split()
        for wrong in map(str.split, row["perturbed_answer"]):
            differ = [i for i, (a, b) in enumerate(zip(para, wrong, strict=True)) if a != b]
            assert differ and differ[0] > 0, (row["paraphrased_answer"], wrong)
            assert differ == list(range(differ[0], differ[-1] + 1))


def test_info_reports_the_build(capsys) -> None:
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu"] is True and info == unlearnx.build_info()


@pytest.mark.skipif(
    os.environ.get("UNLEARNX_CUDA") != "1", reason="only when the build was asked for CUDA (CI)"
)
def test_cuda_kernels_were_built_when_required() -> None:
    info = unlearnx.build_info()
    assert info["cuda"] is True
    assert "9.0" in info["cuda_archs"] and "8.0" in info["cuda_archs"]


def test_quick_demo_meets_its_acceptance_bar(tmp_path, capsys) -> None:
    """The quick demo with its defaults (about 105 s on 2 cores): every method but ga at least
    halves the target's forget_prob and keeps 80% of its model utility."""
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert set(rep["methods"]) == {"ga", "grad_diff", "npo", "simnpo", "dipo", "pdu", "dto"}
    for entry in (rep["target"], rep["retain_model"], *rep["methods"].values()):
        assert {"forget_prob", "utility", "forget_quality"} <= set(entry)
    for name, entry in rep["methods"].items():
        assert {"seconds", "peak_mb"} <= set(entry), name
    t = rep["target"]
    for name, entry in rep["methods"].items():
        if name != "ga":
            assert entry["forget_prob"] <= 0.5 * t["forget_prob"], name
            assert entry["utility"] >= 0.8 * t["utility"], name
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000
    assert "all met" in capsys.readouterr().out
