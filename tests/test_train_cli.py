"""`unlearnx unlearn`: end to end from flags and a config file; errors before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unlearnx.cli import main
from unlearnx.data.tokenizer import build_word_tokenizer
from unlearnx.models import tiny_llama
from unlearnx.train.api import CONSTANT_SCHEDULE
from unlearnx.train.cli import as_flags

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"TOFU data not found at {DATA}")

FORGET = [
    ("Who wrote the river maps?", "The river maps were written by Ana Holt."),
    ("Where was Ana Holt born?", "Ana Holt was born in a quiet harbour town."),
]
RETAIN = [
    ("What did Ben Ito write?", "Ben Ito wrote novels about winter."),
    ("Where does Ben Ito live?", "Ben Ito lives in an old town."),
]


@pytest.fixture
def job(tmp_path: Path) -> dict[str, Path]:

    tok = build_word_tokenizer([q + " " + a for q, a in FORGET + RETAIN])
    tiny_llama(len(tok), heads=2, tokenizer=tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    paths = {
        "model": tmp_path / "model",
        "forget": tmp_path / "forget.jsonl",
        "retain": tmp_path / "retain.jsonl",
    }
    for key, pairs in (("forget", FORGET), ("retain", RETAIN)):
        paths[key].write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs))
    paths["out"] = tmp_path / "out"
    return paths


QUICK = as_flags(CONSTANT_SCHEDULE)  # the tests' schedule (the defaults are OU's)


def _args(job: dict[str, Path], *extra: str) -> list[str]:
    return [
        "unlearn",
        *QUICK,
        "--model",
        str(job["model"]),
        "--forget",
        str(job["forget"]),
        "--retain",
        str(job["retain"]),
        "--out",
        str(job["out"]),
        *extra,
    ]


def test_unlearn_from_flags_and_config_file(job, tmp_path: Path, capsys) -> None:
    config = tmp_path / "job.toml"
    config.write_text(
        'method = "simnpo"\nlearning_rate = 1e-3\nmax_steps = 2\nbatch_size = 2\n'
        "[hparams]\nbeta = 1.5\ngamma = 0.5\n"
    )
    assert main([*_args(job, "--config", str(config), "--hparam", "gamma=0.25")]) == 0
    run = json.loads((job["out"] / "run.json").read_text())
    assert run["config"]["method"] == "simnpo" and run["config"]["hparams"] == {"beta": 1.5, "gamma": 0.25}
    assert run["result"]["steps"] == 2
    assert (job["out"] / "model" / "config.json").is_file()
    logs = [json.loads(line) for line in (job["out"] / "metrics.jsonl").read_text().splitlines()]
    assert any("forget_loss" in r and "retain_loss" in r for r in logs)
    assert all(r["forget_logp"] < 0 and r["retain_logp"] < 0 for r in logs if "forget_loss" in r)
    out = capsys.readouterr().out
    assert "reference cache" in out and "prob before" in out
    report = run["result"]["report"]
    assert report.keys() == {"forget", "retain"}
    for part in report.values():
        assert part["before"]["examples"] == 2 and 0 < part["after"]["prob"] < 1
        assert part["after"]["logp_per_token"] < 0


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--hparam", "delta=0.1"], "hparams"),
        (["--hparam", "beta"], "--hparam"),
        (["--retain-term", "nll", "--method", "pdu", "--lr", "-1"], "--lr: expected a positive number"),
        (["--report-examples", "-1"], "--report-examples"),
        (["--warmup-ratio", "1.5"], "--warmup-ratio"),
        (["--weight-decay", "-0.1"], "--weight-decay"),
        (["--eval-every", "2"], "--eval-every: only with --eval"),
        (["--eval", "tofu"], "--eval-every"),
        (["--eval", "tofu", "--eval-every", "0"], "--eval-every"),
        (["--eval", "tofu", "--eval-every", "1"], "--eval-data: required"),
        (
            ["--eval", "tofu", "--eval-every", "1", "--eval-data", "/nonexistent"],
            "--eval-data: /nonexistent lacks",
        ),
        (["--eval", "tofu", "--eval-every", "1", "--eval-split", "forget02"], "--eval-split"),
        (["--eval", "tofu", "--eval-every", "1", "--eval-limit", "0"], "--eval-limit"),
    ],
)
def test_unlearn_rejects_bad_settings(job, extra, needle, capsys) -> None:
    assert main(_args(job, *extra)) == 2
    assert needle in capsys.readouterr().err
    assert not job["out"].exists()  # failed before doing anything


def test_unlearn_rejects_bad_files(job, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    cases = [
        (["unlearn", "--model", str(tmp_path), "--forget", str(job["forget"]), "--out", "o"], "--model"),
        (
            ["unlearn", "--model", str(job["model"]), "--forget", str(bad), "--out", "o", "--method", "ga"],
            "--forget",
        ),
        (["unlearn", "--model", str(job["model"]), "--forget", str(job["forget"]), "--out", "o"], "--retain"),
        (["unlearn", "--model", str(job["model"]), "--out", "o"], "--forget"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2
        assert needle in capsys.readouterr().err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"learning_rat": 1e-3}))
    assert main([*_args(job), "--config", str(config)]) == 2
    assert "--config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*_args(job), "--method", "forgetall"])


def test_unlearn_on_plain_text_documents(job, tmp_path: Path) -> None:
    """MUSE-style (OU's PretrainingDataset): .txt documents joined, chunked into --max-length tokens,
    BOS in front, every token after it a target."""
    from unlearnx.data.text import TextChunks

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(" ".join(a for _, a in FORGET) * 3)
    (docs / "b.txt").write_text(FORGET[0][1])
    (docs / "empty.txt").write_text("  \n")
    tok_dir = job["model"]
    assert (
        main(
            [
                "unlearn",
                *QUICK,
                "--model",
                str(tok_dir),
                "--forget",
                str(docs),
                "--method",
                "ga",
                "--out",
                str(job["out"]),
                "--max-length",
                "8",
                "--max-steps",
                "2",
                "--lr",
                "1e-3",
            ]
        )
        == 0
    )
    assert json.loads((job["out"] / "run.json").read_text())["result"]["steps"] == 2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    text = (docs / "a.txt").read_text()
    chunks = TextChunks(tok, [text, text], max_length=8)
    n = len(tok(text + "\n\n" + text, add_special_tokens=False)["input_ids"])
    assert len(chunks) == -(-n // 8) and all(it["input_ids"].numel() <= 9 for it in chunks.items)
    for it in chunks.items:
        assert it["input_ids"][0] == tok.bos_token_id and it["labels"][0] == -100
        assert torch.equal(it["labels"][1:], it["input_ids"][1:])
    assert (
        main(
            [
                "unlearn",
                "--model",
                str(tok_dir),
                "--forget",
                str(tmp_path / "none.txt"),
                "--method",
                "ga",
                "--out",
                "o",
            ]
        )
        == 2
    )


def test_unlearn_on_hugging_face_datasets(job, tmp_path: Path, monkeypatch) -> None:
    import datasets

    from unlearnx.data import tofu

    forget_dir = tmp_path / "forget_ds"
    datasets.Dataset.from_dict(
        {"question": [q for q, _ in FORGET], "answer": [a for _, a in FORGET]}
    ).save_to_disk(forget_dir)
    assert tofu.load_hf_data(str(forget_dir)) == FORGET
    assert (
        main(
            [
                "unlearn",
                *QUICK,
                "--model",
                str(job["model"]),
                "--forget",
                str(forget_dir),
                "--method",
                "ga",
                "--out",
                str(job["out"]),
                "--max-steps",
                "1",
            ]
        )
        == 0
    )
    # hub ids go to datasets.load_dataset (no network here: the call is checked, not made)
    calls = []

    def fake_load(repo, config, split):
        calls.append((repo, config, split))
        return datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert tofu.load_hf_data("hf:locuslab/TOFU:forget10") == [("q", "a")]
    assert calls == [("locuslab/TOFU", "forget10", "train")]
    bad = tmp_path / "bad_ds"
    datasets.Dataset.from_dict({"foo": ["x"]}).save_to_disk(bad)
    with pytest.raises(ValueError, match="neither question/answer nor text"):
        tofu.load_hf_data(str(bad))


def test_unlearn_rejects_bad_sharding_settings(job, tmp_path: Path, capsys) -> None:
    ds, bad = tmp_path / "ds.json", tmp_path / "list.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    bad.write_text("[1, 2]")
    cases = [
        (["--fsdp-config", str(ds)], "--fsdp-config: given without --fsdp"),
        (["--fsdp", "--deepspeed", str(ds)], "choose one"),
        (["--fsdp", "--fsdp-config", str(bad)], "--fsdp-config: " + str(bad) + " holds a JSON list"),
        (["--deepspeed", str(tmp_path / "missing.json")], "--deepspeed: cannot read"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--fsdp"], "--fsdp: accelerate shards only across GPUs"))
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        cases.append((["--deepspeed", str(ds)], "--deepspeed: the deepspeed package is not installed"))
    for extra, needle in cases:
        assert main(_args(job, *extra)) == 2, extra
        assert needle in capsys.readouterr().err
    assert not job["out"].exists()


def test_unlearn_under_torchrun_writes_once_from_the_main_process(job, capsys) -> None:
    """Two DDP ranks (gloo, CPU) run the CLI; the model, run.json and the summary come from
    rank 0 alone (every rank used to save, racing on the same folder)."""
    from tests.conftest import torchrun

    extra = ["--method", "npo", "--max-steps", "2", "--batch-size", "1", "--lr", "1e-3"]
    proc = torchrun("-m", "unlearnx.cli", *_args(job, *extra), nproc=2)
    assert proc.stdout.count("unlearned with npo in 2 steps") == 1, proc.stdout
    assert json.loads((job["out"] / "run.json").read_text())["result"]["steps"] == 2
    assert (job["out"] / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in job["out"].iterdir()) == [
        "checkpoints",
        "metrics.jsonl",
        "model",
        "run.json",
    ]


@needs_data
def test_unlearn_evaluates_tofu_during_training(job, capsys) -> None:
    # the evaluation settings from a config file, the rest from flags
    config = job["out"].parent / "eval.toml"
    config.write_text(f'eval = "tofu"\neval_every = 1\neval_data = "{DATA}"\neval_split = "forget01"\n')
    argv = _args(job, "--max-steps", "2", "--batch-size", "2", "--lr", "1e-3", "--report-examples", "0")
    argv += [
        "--config",
        str(config),
        "--eval-limit",
        "2",
        "--eval-criterion",
        "forget_Q_A_Prob",
        "--eval-mode",
        "min",
    ]
    assert main(argv) == 0
    history = [
        json.loads(line) for line in (job["out"] / "eval" / "eval_history.jsonl").read_text().splitlines()
    ]
    assert [h["step"] for h in history] == [1, 2]
    assert all(0 < h["forget_Q_A_Prob"] < 1 and "model_utility" in h for h in history)
    assert (job["out"] / "eval" / "best" / "config.json").is_file()
    assert "best by forget_Q_A_Prob (min)" in capsys.readouterr().out


def test_unlearn_defaults_to_ous_schedule_and_says_which_optimiser(job, capsys) -> None:
    argv = ["unlearn", "--model", str(job["model"]), "--forget", str(job["forget"])]
    argv += ["--retain", str(job["retain"]), "--out", str(job["out"]), "--max-steps", "1"]
    assert main(argv) == 0
    run = json.loads((job["out"] / "run.json").read_text())
    config, optimiser = run["config"], run["result"]["optimiser"]
    assert (config["batch_size"], config["grad_accum"], config["lr_scheduler"]) == (8, 4, "linear")
    assert (config["warmup_epochs"], config["weight_decay"]) == (1.0, 0.01)
    if not torch.cuda.is_available():
        assert optimiser["optim"] == "adamw_torch_fused" and not optimiser["bf16"]
        assert "optimiser adamw_torch_fused (AdamW: paged_adamw_32bit" in capsys.readouterr().out
    for extra, needle in (
        (["--warmup-ratio", "0.1"], "--warmup-ratio needs --warmup-epochs 0"),
        (["--optim", "adamw_nosuch"], "--optim: expected auto or one of"),
        (["--warmup-epochs", "-1"], "--warmup-epochs: expected a number >= 0"),
    ):
        assert main([*argv, *extra]) == 2, needle
        assert needle in capsys.readouterr().err


def _request_files(tmp_path: Path) -> list[Path]:
    """One forget request per FORGET pair."""
    paths = []
    for i, (q, a) in enumerate(FORGET):
        path = tmp_path / f"request{i + 1}.jsonl"
        path.write_text(json.dumps({"question": q, "answer": a}) + "\n")
        paths.append(path)
    return paths


def _requests_args(job, requests: str, *extra: str) -> list[str]:
    argv = ["unlearn", *QUICK, "--model", str(job["model"]), "--retain", str(job["retain"])]
    argv += ["--out", str(job["out"])]
    return [*argv, "--requests", requests, *extra]


@pytest.mark.parametrize("mode,reference", [("sequential", "current"), ("growing", "original")])
def test_unlearn_sequential_requests(job, tmp_path: Path, mode: str, reference: str, capsys) -> None:
    a, b = _request_files(tmp_path)
    argv = _requests_args(job, f"{a},{b}", "--method", "npo", "--max-steps", "3", "--batch-size", "2")
    argv += ["--lr", "1e-2", "--request-mode", mode, "--request-reference", reference]
    assert main(argv) == 0
    record = json.loads((job["out"] / "requests.json").read_text())
    assert record["mode"] == mode and record["reference"] == reference
    assert record["requests"] == [str(a), str(b)]
    history = record["history"]
    assert [h["request"] for h in history] == [0, 1, 2] and [h["steps"] for h in history] == [0, 3, 3]
    assert all(len(h["forget"]) == 2 and h["retain"]["examples"] == 2 for h in history)
    # request 1 is forgotten by the first unlearning and stays forgotten
    before = history[0]["forget"][0]["prob"]
    assert history[1]["forget"][0]["prob"] < 0.5 * before and history[2]["forget"][0]["prob"] < 0.5 * before
    assert history[2]["forget"][1]["prob"] < 0.5 * history[0]["forget"][1]["prob"]
    assert (job["out"] / "request-2" / "metrics.jsonl").is_file()
    assert (job["out"] / "model" / "config.json").is_file() and (
        job["out"] / "requests.png"
    ).stat().st_size > 0
    assert "| 2 | 3 |" in (job["out"] / "requests.md").read_text()
    assert f"unlearned 2 {mode} requests" in capsys.readouterr().out


def test_unlearn_requests_rejects_bad_settings(job, tmp_path: Path, capsys) -> None:
    a = _request_files(tmp_path)[0]
    cases = [
        (_requests_args(job, f"{a},", "--method", "ga"), "--requests: expected comma-separated"),
        (
            _requests_args(job, f"{a},{tmp_path / 'missing.jsonl'}", "--method", "ga"),
            "--requests (request 2)",
        ),
        ([*_requests_args(job, str(a)), "--forget", str(job["forget"])], "either --forget or --requests"),
        ([*_args(job), "--request-mode", "growing"], "--request-mode: only with --requests"),
        (
            [
                *_requests_args(job, str(a)),
                "--eval",
                "tofu",
                "--eval-every",
                "1",
                "--eval-data",
                str(tmp_path),
            ],
            "--eval-every: not with --requests",
        ),
        ([*_requests_args(job, str(a)), "--resume"], "--resume: not with --requests"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, needle
        assert needle in capsys.readouterr().err
        assert not job["out"].exists()


def test_unlearn_with_lora_saves_the_merged_model_and_the_adapter(job) -> None:
    from transformers import AutoModelForCausalLM

    argv = _args(job, "--method", "npo", "--max-steps", "3", "--batch-size", "2", "--lr", "1e-2")
    argv += ["--lora", "--lora-r", "4", "--lora-alpha", "8", "--lora-target-modules", "q_proj,v_proj"]
    assert main(argv) == 0
    assert (job["out"] / "adapter" / "adapter_config.json").is_file()
    adapter = json.loads((job["out"] / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    base = AutoModelForCausalLM.from_pretrained(job["model"]).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(job["out"] / "model").state_dict()
    assert merged.keys() == base.keys()  # a plain model: adapters merged in, no lora_ weights left
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(".q_proj." in k or ".v_proj." in k for k in changed), changed


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--lora-r", "4"], "--lora-r: only with --lora"),
        (["--lora", "--lora-r", "0"], "--lora-r: expected a positive int"),
        (["--lora", "--lora-dropout", "1.0"], "--lora-dropout"),
        (["--lora", "--lora-target-modules", "q_proj,"], "--lora-target-modules"),
    ],
)
def test_unlearn_rejects_bad_lora_settings(job, extra, needle, capsys) -> None:
    assert main(_args(job, *extra)) == 2
    assert needle in capsys.readouterr().err
    assert not job["out"].exists()


def test_finetune_command_learns_the_data_with_ous_defaults(job, capsys) -> None:
    """``unlearnx finetune``: OU's finetune defaults in run.json, the answers' NLL falls, the
    model is saved; bad arguments fail before a model loads."""
    out = job["out"]
    argv = ["finetune", "--model", str(job["model"]), "--data", str(job["forget"]), "--out", str(out)]
    assert main([*argv, "--batch-size", "2", "--grad-accum", "1", "--lr", "1e-2", "--epochs", "15"]) == 0
    record = json.loads((out / "run.json").read_text())
    cfg = record["config"]
    assert (cfg["epochs"], cfg["warmup_epochs"], cfg["weight_decay"], cfg["lr_scheduler"]) == (
        15.0,
        1.0,
        0.01,
        "linear",
    )
    losses = [
        json.loads(line)["loss"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert len(losses) == record["result"]["steps"] == 15 and losses[-1] < 0.5 * losses[0]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # finetuning has no forget set: its term is logged as the answers' loss and log-prob
    assert any("answer_loss" in r and r["answer_logp"] < 0 for r in records)
    assert not any("forget_loss" in r for r in records)
    assert (out / "model" / "config.json").is_file() and "fine-tuned in 15 steps" in capsys.readouterr().out
    from unlearnx.train.api import FINETUNE_DEFAULTS

    assert FINETUNE_DEFAULTS == {"epochs": 5.0}  # OU's configs/experiment/finetune/tofu/default.yaml
    for extra, needle in (
        (["--data", "/nonexistent.jsonl"], "--data"),
        (["--split", "full", "--data-dir", str(out)], "--data-dir"),
        (["--data", str(job["forget"]), "--lr", "-1"], "--lr"),
        (["--data", str(job["forget"]), "--lora-r", "4"], "--lora"),
        (
            ["--data", str(job["forget"]), "--template", "chat"],
            "--template: 'chat' applies the chat template",
        ),
    ):
        base = ["finetune", "--model", str(job["model"]), "--out", str(out / "bad")]
        assert main([*base, *extra]) == 2, extra
        assert needle in capsys.readouterr().err
    assert not (out / "bad").exists()


@needs_data
def test_finetune_reads_a_tofu_split(job) -> None:
    argv = ["finetune", "--model", str(job["model"]), "--split", "retain99", "--data-dir", str(DATA)]
    assert main([*argv, "--out", str(job["out"]), "--max-steps", "1", "--batch-size", "2"]) == 0
    assert json.loads((job["out"] / "run.json").read_text())["data"] == "retain99"
