"""MUSE: the published data layout, open-unlearning's metric formulas (against numbers OU's own
code produced on the same data and model), the pieces against direct computations, and bad
layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.muse_data import muse_rows, tokenizer_and_model, write_muse
from unlearnx.data import muse as muse_data
from unlearnx.data.template import TEMPLATES, encode_completion
from unlearnx.eval import muse

GOLDEN = json.loads((Path(__file__).parent / "data" / "ou_muse_golden.json").read_text())
TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_muse(tmp_path_factory.mktemp("muse"))
    tok, model = tokenizer_and_model()
    return root, tok, model


@pytest.fixture(scope="module")
def evaluated(setup):
    root, tok, model = setup
    return muse.evaluate_muse(model, tok, root, template=TEMPLATES["qa-tags"], metrics=muse.METRICS)


@pytest.mark.parametrize("metric", muse.METRICS)
def test_every_metric_equals_open_unlearnings(evaluated, metric) -> None:
    """OU commit and procedure in tests/data/ou_muse_golden.json; per example where OU logs one."""
    summary, logs = evaluated
    want = GOLDEN["metrics"][metric]
    assert summary[metric] == pytest.approx(want["agg_value"], rel=1e-6, abs=1e-9)
    per = want.get("value_by_index")
    if metric == "mia_min_k":
        for access in ("forget", "holdout"):
            got = [v["score"] for v in logs[metric][access]["value_by_index"].values()]
            ref = [v["score"] for v in want[access]["value_by_index"].values()]
            assert got == pytest.approx(ref, rel=1e-5)
    elif per is not None:
        got = list(logs[metric]["value_by_index"].values())
        assert len(got) == len(per)
        for g, w in zip(got, per.values(), strict=True):
            if "generation" in w:
                assert (g["generation"], g["ground_truth"]) == (w["generation"], w["ground_truth"])
                assert g["rougeL_f1"] == pytest.approx(w["rougeL_f1"])
            else:
                assert g["score"] == pytest.approx(w["score"], rel=1e-6)


def test_the_golden_numbers_are_not_degenerate() -> None:
    """The fixture model memorised the forget side only partly, so each metric is informative."""
    agg = {k: v["agg_value"] for k, v in GOLDEN["metrics"].items()}
    assert GOLDEN["commit"] == "d3d7cf9" or GOLDEN["commit"].startswith("d3d7cf9")
    assert agg["forget_knowmem_ROUGE"] > agg["retain_knowmem_ROUGE"] > 0
    assert 0 < agg["extraction_strength"] < 1 and 0 < agg["exact_memorization"] < 1
    assert 0.5 < agg["mia_min_k"] < 1 and agg["privleak"] < 0


def test_min_k_extraction_privleak_directly(setup) -> None:
    _, tok, model = setup
    texts = [r["text"] for r in muse_rows()["privleak"]["forget"]]
    items = [encode_completion(tok, "", t) for t in texts]
    logps = muse.labelled_predictions(model, tok, items, "logp")
    argmaxes = muse.labelled_predictions(model, tok, items, "argmax")
    for (logp, labels), (argmax, labels2), t in zip(logps, argmaxes, texts, strict=True):
        ids = torch.tensor([tok(t)["input_ids"]])
        with torch.no_grad():
            full = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
        want = full.gather(1, ids[0, 1:, None]).squeeze(1)[:-1]  # the last labelled token is left out
        torch.testing.assert_close(logp.double(), want, rtol=1e-5, atol=1e-5)
        assert torch.equal(argmax, full.argmax(-1)[:-1]) and torch.equal(labels, ids[0, 1:-1])
        assert torch.equal(labels2, labels)
        lp = sorted(want.tolist())
        n = max(1, int(0.4 * len(lp)))
        assert muse.min_k_score(logp, 0.4) == pytest.approx(-sum(lp[:n]) / n, rel=1e-5)
    assert muse.extraction_strength(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3])) == 1.0
    assert muse.extraction_strength(torch.tensor([9, 2, 3]), torch.tensor([1, 2, 3])) == pytest.approx(2 / 3)
    assert muse.extraction_strength(torch.tensor([1, 2, 9]), torch.tensor([1, 2, 3])) == pytest.approx(1 / 3)
    assert muse.privleak(0.5) == 0 and muse.privleak(0.75, 0.5) == pytest.approx(-50)
    with pytest.raises(ValueError, match="k"):
        muse.min_k_score(torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="auc_reference"):
        muse.privleak(0.5, 1.5)


def test_auc_counts_ties_as_half() -> None:
    members, others = [0.9, 0.5, 0.5, 0.1], [0.5, 0.2, 0.0]
    wins = sum((m > o) + 0.5 * (m == o) for m in members for o in others)
    assert muse.auc(torch.tensor(members), torch.tensor(others)) == pytest.approx(wins / 12)


def test_retain_logs_give_privleak_its_reference(setup, tmp_path) -> None:
    root, tok, model = setup
    logs = tmp_path / "MUSE_EVAL.json"
    logs.write_text(json.dumps({"mia_min_k": {"agg_value": 0.7}}))
    assert muse.retain_reference_auc(logs) == 0.7
    summary, _ = muse.evaluate_muse(
        model, tok, root, template=TEMPLATES["qa-tags"], metrics=["privleak"], retain_auc=0.7
    )
    assert summary["privleak"] == pytest.approx(GOLDEN["metrics"]["privleak_ref_0.7"]["agg_value"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="mia_min_k"):
        muse.retain_reference_auc(tmp_path / "bad.json")


def test_layout_errors_name_what_is_missing(tmp_path) -> None:
    root = write_muse(tmp_path / "m")
    muse_data.check_source(root)
    (root / "knowmem" / "retain_qa_icl.jsonl").unlink()
    (root / "verbmem" / "forget.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(ValueError) as err:
        muse_data.check_source(root)
    assert "knowmem/retain_qa_icl" in str(err.value) and "lacks columns ['gt']" in str(err.value)
    with pytest.raises(ValueError, match="unknown configuration 'bogus'"):
        muse_data.load_rows(root, "bogus", "forget")
    with pytest.raises(ValueError, match="metrics: unknown"):
        muse.evaluate_muse(None, None, root, template=TEMPLATES["qa-tags"], metrics=["nope"])


def test_hub_parquet_names_are_read(tmp_path) -> None:
    import datasets

    rows = muse_rows()["raw"]["forget"]
    (tmp_path / "raw").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "raw" / "forget-00000-of-00001.parquet"))
    assert muse_data.load_rows(f"hf:{tmp_path}", "raw", "forget") == rows


def test_eval_command_writes_ous_files(setup, tmp_path, capsys) -> None:
    from unlearnx.cli import main

    root, tok, model = setup
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "out"
    argv = ["eval", "--benchmark", "muse", "--model", str(folder), "--data", str(root), "--out", str(out)]
    assert main([*argv, "--retain-model", str(folder)]) == 0
    summary = json.loads((out / "MUSE_SUMMARY.json").read_text())
    assert list(summary) == list(muse.DEFAULT_METRICS)
    for name in muse.DEFAULT_METRICS[:-2]:
        assert summary[name] == pytest.approx(GOLDEN["metrics"][name]["agg_value"])
    assert summary["privleak"] == pytest.approx(0, abs=1e-6)  # the retain model is the model itself
    logs = json.loads((out / "MUSE_EVAL.json").read_text())
    assert logs["mia_min_k"]["agg_value"] == pytest.approx(GOLDEN["metrics"]["mia_min_k"]["agg_value"])
    # OU-style logs of a retain model feed --retain-logs
    assert main([*argv, "--retain-logs", str(out / "MUSE_EVAL.json"), "--metrics", "privleak"]) == 0
    assert json.loads((out / "MUSE_SUMMARY.json").read_text()) == {"privleak": pytest.approx(0, abs=1e-6)}
    assert "privleak against retain AUC" in capsys.readouterr().out


def test_eval_command_refuses_bad_input_before_loading(setup, tmp_path, capsys) -> None:
    from unlearnx.cli import main

    root, _, _ = setup
    base = ["eval", "--benchmark", "muse", "--out", str(tmp_path / "o")]
    assert main([*base, "--model", str(tmp_path), "--data", str(root)]) == 2
    assert "--model:" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")  # a model folder that would fail to load
    assert main([*base, "--model", str(tmp_path), "--data", str(tmp_path / "nothing")]) == 2
    assert "--data: MUSE data:" in capsys.readouterr().err
    assert (
        main([*base, "--model", str(tmp_path), "--data", str(root), "--retain-logs", str(tmp_path / "x")])
        == 2
    )
    assert "--retain-logs:" in capsys.readouterr().err
    assert (
        main(["eval", "--model", str(tmp_path), "--out", str(tmp_path), "--metrics", "forget_knowmem_ROUGE"])
        == 2
    )
    assert "--metrics: ['forget_knowmem_ROUGE'] are MUSE metrics" in capsys.readouterr().err
    assert main([*base, "--model", str(tmp_path), "--data", str(root), "--metrics", "model_utility"]) == 2
    assert "--metrics: ['model_utility'] are TOFU metrics" in capsys.readouterr().err


def _unlearn_argv(setup, tmp_path) -> tuple[list[str], Path]:
    """``unlearn`` flags for two quick NPO steps on the chain model (saved to ``tmp_path``), and
    the output folder; the data flags are the caller's."""
    from tests.test_train_cli import QUICK

    _, tok, model = setup
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    out = tmp_path / "run"
    argv = ["unlearn", *QUICK, "--model", str(tmp_path / "model"), "--method", "npo", "--out", str(out)]
    return [*argv, "--max-length", "16", "--max-steps", "2", "--lr", "1e-3"], out


def test_unlearn_on_muse_text_with_muse_eval_during_training(setup, tmp_path) -> None:
    """`unlearnx unlearn` takes MUSE's raw forget/retain text (chunked as OU does) and evaluates
    MUSE every N steps, keeping the best model by an OU metric name."""
    from unlearnx.cli import main

    root, _, _ = setup
    argv, out = _unlearn_argv(setup, tmp_path)
    argv += [
        "--forget",
        f"hf:{root}:raw:forget",
        "--retain",
        f"hf:{root}:raw:retain1",
        "--report-examples",
        "0",
    ]
    eval_args = ["--eval", "muse", "--eval-every", "1", "--eval-data", str(root), "--eval-limit", "2"]
    assert main([*argv, *eval_args]) == 0
    assert json.loads((out / "run.json").read_text())["result"]["steps"] == 2
    history = [json.loads(line) for line in (out / "eval" / "eval_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2]
    assert set(muse.DEFAULT_METRICS) <= set(history[0])
    assert (out / "eval" / "best" / "eval_summary.json").is_file()


def test_sequential_requests_on_muse_sust_with_the_benchmark_after_each(setup, tmp_path) -> None:
    """MUSE's sustainability: the sust requests one after another, the MUSE metrics before the
    first request (equal to a direct evaluation of the original model) and after each."""
    from unlearnx.cli import main

    root, tok, model = setup
    argv, out = _unlearn_argv(setup, tmp_path)
    argv += ["--requests", f"hf:{root}:sust:forget_1,hf:{root}:sust:forget_2"]
    argv += ["--retain", f"hf:{root}:raw:retain1"]
    assert main([*argv, "--eval", "muse", "--eval-data", str(root), "--eval-limit", "2"]) == 0
    history = json.loads((out / "requests.json").read_text())["history"]
    assert [h["request"] for h in history] == [0, 1, 2]
    before, _ = muse.evaluate_muse(model, tok, root, template=TEMPLATES["qa-tags"], limit=2)
    assert history[0]["benchmark"] == pytest.approx(before)
    assert all(set(muse.DEFAULT_METRICS) <= set(h["benchmark"]) for h in history)
    table = (out / "requests.md").read_text()
    assert "| metric | after none | after 1 | after 2 |" in table and "| forget_verbmem_ROUGE |" in table
    assert (out / "requests.png").stat().st_size > 0
    assert main([*argv, "--eval", "muse", "--eval-data", str(root), "--eval-criterion", "privleak"]) == 2


def test_unlearn_refuses_bad_muse_settings_before_loading(setup, tmp_path, capsys) -> None:
    from unlearnx.cli import main

    root, _, _ = setup
    base = [
        "unlearn",
        "--model",
        str(tmp_path),
        "--forget",
        f"hf:{root}:raw:forget",
        "--out",
        str(tmp_path / "o"),
        "--method",
        "ga",
    ]
    (tmp_path / "config.json").write_text("{}")  # would fail to load: errors must come first
    assert main([*base, "--eval", "muse", "--eval-every", "1", "--eval-data", str(tmp_path / "none")]) == 2
    assert "--eval-data: MUSE data:" in capsys.readouterr().err
    args = ["--eval", "muse", "--eval-every", "1", "--eval-data", str(root), "--eval-split", "forget01"]
    assert main([*base, *args]) == 2
    assert "--eval-split: only with --eval tofu" in capsys.readouterr().err
    base[4] = f"hf:{root}:raw:nosuch"
    assert main(base) == 2
    assert "raw/nosuch" in capsys.readouterr().err


@pytest.mark.skipif(not (TOFU / "world_facts.json").is_file(), reason=f"TOFU data not at {TOFU}")
def test_the_workflows_bench_lays_out_tofu_facts_as_muse(tmp_path) -> None:
    """benches.workflows' data (its run on SmolLM2 is committed): a layout the loader accepts."""
    from benches.workflows import N_FORGET, N_REQUESTS, facts_as_muse

    paths = facts_as_muse(TOFU, tmp_path)
    muse_data.check_source(str(paths["muse"]))
    assert len(muse_data.load_rows(str(paths["muse"]), "knowmem", "forget_qa")) == N_FORGET
    verbmem = muse_data.load_rows(str(paths["muse"]), "verbmem", "forget")
    assert len(verbmem) == 6 and all(r["prompt"] and r["gt"] for r in verbmem)
    requests = paths["requests"].split(",")
    assert len(requests) == N_REQUESTS
    assert sum(len(Path(r).read_text().splitlines()) for r in requests) == N_FORGET
