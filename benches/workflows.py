"""The four workflows of the driver on the real SmolLM2-135M-Instruct checkpoint, on facts it knows:
MUSE evaluation, evaluation during training, a relearning attack and sequential requests.

    python -m benches.workflows [--tofu ../shared/data/tofu] [--out benches/results/smollm2-workflows]

The data is TOFU's ``world_facts`` (general knowledge, e.g. "What is the capital of Australia?"
-> "Canberra") and ``real_authors`` files, read in place and laid out in a temporary folder as a
MUSE dataset (MUSE's own data is on the hub, unreachable here):

- ``knowmem``: ``forget_qa`` = the forget facts, ``retain_qa`` = real-author questions, each
  with 3 in-context examples from outside both;
- ``raw`` / ``privleak``: the facts as sentences ("question answer."), 8 per document: forget,
  holdout (other world facts, never unlearned) and retain (real authors);
- ``verbmem``: each forget document's first 4 sentences as the prompt, the other 4 as the
  continuation (a prompt of a question alone makes an instruction model stop at once);
- ``sust``: the forget documents in three requests.

The sequential requests are evaluated with the MUSE metrics before the first request and after
each. Each step is one ``unlearnx`` command, run in a process of its own; the commands, their wall
times and the outputs that matter (no model weights) land in ``--out``, with ``commands.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unlearnx.train.api import CONSTANT_SCHEDULE
from unlearnx.train.cli import as_flags

RESULTS = Path(__file__).resolve().parent / "results"
N_FORGET = 48
N_REQUESTS = 3
DOC_FACTS = 8


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _sentence(row: dict) -> str:
    return f"{row['question']} {row['answer']}."


def _docs(rows: list[dict]) -> list[dict]:
    return [
        {"text": " ".join(_sentence(r) for r in rows[i : i + DOC_FACTS])}
        for i in range(0, len(rows), DOC_FACTS)
    ]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def facts_as_muse(tofu: Path, folder: Path) -> dict[str, Path]:
    """Writes the MUSE layout (module docstring) and the QA files of unlearning into ``folder``;
    returns the paths: ``muse``, ``forget``, ``retain``, ``requests`` (comma-separated)."""
    facts = [{"question": r["question"], "answer": r["answer"]} for r in _rows(tofu / "world_facts.json")]
    authors = [{"question": r["question"], "answer": r["answer"]} for r in _rows(tofu / "real_authors.json")]
    if len(facts) < 2 * N_FORGET + 3 or len(authors) < N_FORGET + 3:
        raise ValueError(f"{tofu}: world_facts.json and real_authors.json are smaller than TOFU's")
    forget, holdout, icl = facts[:N_FORGET], facts[N_FORGET : 2 * N_FORGET], facts[-3:]
    retain, retain_icl = authors[:N_FORGET], authors[-3:]
    muse = folder / "muse"
    for name, rows in {
        "knowmem/forget_qa": forget,
        "knowmem/forget_qa_icl": icl,
        "knowmem/retain_qa": retain,
        "knowmem/retain_qa_icl": retain_icl,
        "verbmem/forget": [
            {
                "prompt": " ".join(_sentence(r) for r in forget[i : i + DOC_FACTS // 2]),
                "gt": " ".join(_sentence(r) for r in forget[i + DOC_FACTS // 2 : i + DOC_FACTS]),
            }
            for i in range(0, N_FORGET, DOC_FACTS)
        ],
        "raw/forget": _docs(forget),
        "raw/retain1": _docs(retain),
        "raw/holdout": _docs(holdout),
        "privleak/forget": _docs(forget),
        "privleak/retain": _docs(retain),
        "privleak/holdout": _docs(holdout),
    }.items():
        _write(muse / f"{name}.jsonl", rows)
    per = N_FORGET // N_REQUESTS
    requests = []
    for k in range(N_REQUESTS):
        path = folder / f"request{k + 1}.jsonl"
        _write(path, forget[k * per : (k + 1) * per])
        requests.append(str(path))
    _write(folder / "forget.jsonl", forget)
    _write(folder / "retain.jsonl", retain)
    return {
        "muse": muse,
        "forget": folder / "forget.jsonl",
        "retain": folder / "retain.jsonl",
        "requests": ",".join(requests),
    }


class Log:
    """Runs ``unlearnx`` commands, recording each (with the data folder written as ``$DATA``
    and the work folder as ``$WORK``) and its wall time in ``commands.md``."""

    def __init__(self, out: Path, data: Path, work: Path) -> None:
        self.out, self.data, self.work = out, data, work
        self.lines = [
            "# Commands of `python -m benches.workflows`",
            "",
            "`$DATA` is the temporary data folder (`facts_as_muse`), `$WORK` the temporary work folder.",
            "",
        ]

    def run(self, title: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "unlearnx.cli", *args]
        shown = " ".join(shlex.quote(a) for a in ["unlearnx", *args])
        shown = shown.replace(str(self.data), "$DATA").replace(str(self.work), "$WORK")
        print(f"\n== {title}: {shown}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0
        self.lines += [f"## {title} ({seconds:.0f} s)", "", "```bash", shown, "```", ""]
        (self.out / "commands.md").write_text("\n".join(self.lines))


def _keep(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    """Copies the listed result files of a run (never its model) from ``src`` to ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / Path(name).name)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tofu", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "smollm2-workflows")
    ap.add_argument("--method", default="npo")
    ap.add_argument("--lr", default="5e-5")
    ap.add_argument("--steps", type=int, default=12, help="unlearning optimiser steps")
    ap.add_argument("--limit", type=int, default=16, help="MUSE examples per split")
    args = ap.parse_args(argv)
    if not (args.tofu / "world_facts.json").is_file():
        ap.error(f"--tofu: {args.tofu} has no world_facts.json (TOFU's data folder)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data, work = Path(tmp) / "data", Path(tmp) / "work"
        paths = facts_as_muse(args.tofu, data)
        log = Log(args.out, data, work)
        # the schedule spelled out, so that the run does not change with the defaults
        train = ["--method", args.method, "--lr", args.lr, "--batch-size", "8", "--max-length", "128"]
        train += as_flags(CONSTANT_SCHEDULE)
        muse = ["--benchmark", "muse", "--data", str(paths["muse"]), "--limit", str(args.limit)]

        log.run(
            "MUSE evaluation, original",
            "eval",
            "--model",
            "smollm2",
            *muse,
            "--out",
            str(work / "muse-original"),
        )
        _keep(work / "muse-original", args.out / "muse-original", ("MUSE_SUMMARY.json", "MUSE_EVAL.json"))

        log.run(
            "Unlearning with MUSE evaluation during training",
            "unlearn", "--model", "smollm2", *train, "--max-steps", str(args.steps),
            "--forget", str(paths["forget"]), "--retain", str(paths["retain"]),
            "--eval", "muse", "--eval-data", str(paths["muse"]), "--eval-limit", str(args.limit),
            "--eval-every", str(args.steps // 3), "--out", str(work / "unlearn"),
        )  # fmt: skip
        _keep(
            work / "unlearn",
            args.out / "unlearn",
            ("run.json", "metrics.jsonl", "eval/eval_history.jsonl", "eval/eval_history.png"),
        )

        log.run(
            "MUSE evaluation, unlearned",
            "eval", "--model", str(work / "unlearn" / "model"), *muse,
            "--retain-logs", str(work / "muse-original" / "MUSE_EVAL.json"),
            "--out", str(work / "muse-unlearned"),
        )  # fmt: skip
        _keep(work / "muse-unlearned", args.out / "muse-unlearned", ("MUSE_SUMMARY.json", "MUSE_EVAL.json"))

        log.run(
            "Relearning attack",
            "relearn", "--model", f"{args.method}={work / 'unlearn' / 'model'}",
            "--model", "original=smollm2",
            "--forget", str(paths["forget"]), "--subset", "0.5", "--steps", "8", "--eval-every", "2",
            "--lr", args.lr, "--batch-size", "8", "--max-length", "128", "--out", str(work / "relearn"),
        )  # fmt: skip
        _keep(work / "relearn", args.out / "relearn", ("relearn.json", "relearn.md", "relearn.png"))

        log.run(
            "Sequential requests",
            "unlearn", "--model", "smollm2", *train, "--epochs", "2",
            "--requests", paths["requests"], "--retain", str(paths["retain"]),
            "--eval", "muse", "--eval-data", str(paths["muse"]), "--eval-limit", str(args.limit),
            "--out", str(work / "requests"),
        )  # fmt: skip
        _keep(work / "requests", args.out / "requests", ("requests.json", "requests.md", "requests.png"))


if __name__ == "__main__":
    main()
