"""TOFU efficacy table: the TOFU protocol end to end with unlearnx alone, on the real TOFU data.

    python -m benches.efficacy [--data ../shared/data/tofu] [--out benches/results/tofu-efficacy]

Scale (chosen to fit 60 minutes on a 2-core CPU; full TOFU, 4,000 QA pairs on SmolLM2, would
take about 5 hours for the target's finetune alone):

- **Authors.** 26 of TOFU's 200: the first 22 (``full`` rows 0-439, which hold all of
  ``retain_perturbed``, the retain split of TOFU's model utility), the 2 authors of ``forget01``
  (rows 3960-3999, the forget set the table reports) and the 2 authors before them (rows
  3920-3959, the *tuning* forget set: learning rates are chosen there, never on forget01).
- **Models.** A 4-layer Llama (D 256) trained from scratch, with a byte-level BPE tokenizer
  (4,096 tokens) trained on TOFU's text: the *target* on all 26 authors, the *retain model* on
  all but forget01's 2 (TOFU's ``retain99`` at this scale), both with ``unlearnx finetune``'s
  path (``unlearnx.train.api.finetune``).
- **Unlearning.** Every method from the target on forget01, the retain term on the 22 retain
  authors, OU's batch (8 x 4) and epochs (10), at the learning rate of a small grid that did
  best on the tuning authors (forget probability at least halved with the most retain
  probability kept; else the most forgetting).
- **Evaluation.** OU's TOFU evaluation (``unlearnx.eval.tofu.evaluate_tofu``): forget quality
  against the retain model's logs, model utility (retain, real authors, world facts), privleak
  against ``holdout01``, forget ROUGE, truth ratio, extraction strength; and, the bench's own,
  ``retain_utility`` (:data:`RETAIN_UTILITY`), which the trade-off plot uses.

Resumable: the tokenizer, models and each evaluation are kept under ``--work`` (default
``$UNLEARNX_CACHE/tofu-efficacy``) and reused; ``--fresh`` starts over. The results (JSON, a
Markdown table, a trade-off plot, the tuning runs) land in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from unlearnx.data.template import encode_chat, template_for
from unlearnx.data.tokenizer import build_bpe_tokenizer
from unlearnx.eval import report, tofu
from unlearnx.models import cache_dir, tiny_llama
from unlearnx.train.api import UnlearnConfig, finetune, save_model, unlearn
from unlearnx.train.methods import METHODS

RESULTS = Path(__file__).resolve().parent / "results" / "tofu-efficacy"
RETAIN_ROWS = range(0, 440)
TUNE_ROWS = range(3920, 3960)
FORGET_ROWS = range(3960, 4000)
RETAIN_PROBE = range(0, 440, 11)  # 2 questions of each retain author, for tuning
FORGET_SPLIT, HOLDOUT_SPLIT = "forget01", "holdout01"
TEXT_FILES = (
    "full",
    "retain_perturbed",
    "forget10_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
)
MODEL = {"hidden": 256, "layers": 4, "heads": 8, "intermediate": 688, "max_positions": 512}
TRAIN = {
    "learning_rate": 1e-3,
    "epochs": 25.0,
    "batch_size": 16,
    "grad_accum": 1,
    "lr_scheduler": "linear",
    "warmup_epochs": 1.0,
    "weight_decay": 0.01,
    "logging_steps": 20,
}
LR_GRID = (1e-4, 3e-4, 1e-3)
RETAIN_UTILITY = tofu.UTILITY_METRICS[:3]
"""Model utility's retain-split scores: at this scale the only part of it the models can earn
(they know no real author or world fact, so OU's harmonic mean of nine is about 0 for all)."""
COLUMNS = (
    "forget_quality",
    "model_utility",
    "retain_utility",
    "forget_Q_A_ROUGE",
    "forget_Q_A_Prob",
    "forget_truth_ratio",
    "privleak",
    "extraction_strength",
)


def _rows(data: Path, name: str) -> list[dict]:
    path = data / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"--data: {path} is missing (TOFU's {name} split)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pairs(rows: list[dict], idx: range) -> list[tuple[str, str]]:
    return [(rows[i]["question"], rows[i]["answer"]) for i in idx]


def _texts(data: Path) -> list[str]:
    out = []
    for name in TEXT_FILES:
        for r in _rows(data, name):
            for key in ("question", "answer", "paraphrased_answer", "paraphrased_question"):
                if isinstance(r.get(key), str):
                    out.append(r[key])
            out += [a for a in r.get("perturbed_answer", []) if isinstance(a, str)]
    return out


class Stages:
    """Each stage's result is a file under ``work``; a stage whose file exists is not rerun."""

    def __init__(
        self,
        data: Path,
        work: Path,
        log,
        train: dict,
        lr_grid: list[float],
        limit: int | None,
        unlearn_epochs: float,
    ) -> None:
        self.data, self.work, self.log = data, work, log
        self.train, self.lr_grid, self.limit = train, lr_grid, limit
        self.unlearn_epochs = unlearn_epochs
        self.full = _rows(data, "full")
        self._tok = None

    def tokenizer(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            path = self.work / "tokenizer"
            if not (path / "tokenizer.json").is_file():
                build_bpe_tokenizer(_texts(self.data), vocab_size=4096).save_pretrained(path)
            self._tok = AutoTokenizer.from_pretrained(path)
        return self._tok

    def model(self, name: str, rows: list[range]):
        from transformers import AutoModelForCausalLM

        path = self.work / name
        if not (path / "config.json").is_file():
            tok = self.tokenizer()
            pairs = [p for r in rows for p in _pairs(self.full, r)]
            model = tiny_llama(len(tok), **MODEL, seed=0, tokenizer=tok)
            t0 = time.perf_counter()
            finetune(model, tok, pairs, UnlearnConfig(**self.train), self.work / "runs" / name)
            save_model(model, tok, path)
            self.log(
                f"trained {name} from scratch on {len(pairs)} QA pairs in {time.perf_counter() - t0:.0f} s"
            )
        return AutoModelForCausalLM.from_pretrained(path)

    def evaluate(self, name: str, model, retain_logs: dict | None) -> tuple[dict, dict]:
        folder = self.work / "eval" / name
        summary_path = folder / "TOFU_SUMMARY.json"
        if not summary_path.is_file():
            t0 = time.perf_counter()
            summary, logs = tofu.evaluate_tofu(
                model,
                self.tokenizer(),
                self.data,
                forget_split=FORGET_SPLIT,
                holdout_split=HOLDOUT_SPLIT,
                retain_logs=retain_logs,
                limit=self.limit,
            )
            tofu.write_logs(folder, summary, logs)
            self.log(f"evaluated {name} in {time.perf_counter() - t0:.0f} s")
        logs = json.loads((folder / "TOFU_EVAL.json").read_text())
        retain = {k: logs[k]["agg_value"] for k in RETAIN_UTILITY}
        summary = {
            **json.loads(summary_path.read_text()),
            **retain,
            "retain_utility": tofu.model_utility(retain, RETAIN_UTILITY),
        }
        return summary, tofu.reference_values(logs)

    def unlearned(self, target, method: str, forget: range, lr: float, tag: str):
        """``(model, result)``: ``method`` at ``lr`` from a copy of ``target`` on ``forget``."""
        model = copy.deepcopy(target).train()
        cfg = UnlearnConfig(
            method=method, learning_rate=lr, epochs=self.unlearn_epochs, report_examples=0, logging_steps=5
        )
        retain = _pairs(self.full, RETAIN_ROWS)
        t0 = time.perf_counter()
        result = unlearn(
            model, self.tokenizer(), _pairs(self.full, forget), retain, cfg, self.work / "runs" / tag
        )
        result["seconds"] = time.perf_counter() - t0
        return model, result

    def prob(self, model, rows: range) -> float:
        """TOFU's answer probability (mean of ``exp(-avg loss)``) on ``rows`` of ``full``."""
        tok = self.tokenizer()
        tm = template_for(tok)
        items = [encode_chat(tok, tm, [q], [a]) for q, a in _pairs(self.full, rows)]
        return float(torch.exp(-tofu.avg_losses(model, tok, items)).mean())

    def tune(self, target, method: str) -> dict:
        """The learning rate of the grid (default :data:`LR_GRID`) chosen on the tuning authors:
        forget probability on their rows, retain probability on :data:`RETAIN_PROBE`."""
        path = self.work / "tune" / f"{method}.json"
        if not path.is_file():
            before = [self.prob(target, TUNE_ROWS), self.prob(target, RETAIN_PROBE)]
            runs = []
            for lr in self.lr_grid:
                model, _ = self.unlearned(target, method, TUNE_ROWS, lr, f"tune-{method}-{lr:g}")
                after = [self.prob(model, TUNE_ROWS), self.prob(model, RETAIN_PROBE)]
                runs.append(
                    {
                        "learning_rate": lr,
                        "forget_prob": [before[0], after[0]],
                        "retain_prob": [before[1], after[1]],
                    }
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"runs": runs, "chosen": choose(runs)}, indent=1) + "\n")
            self.log(f"tuned {method}: lr {choose(runs)}")
        return json.loads(path.read_text())


def choose(runs: list[dict]) -> float:
    """The learning rate whose run at least halved the forget probability with the most retain
    probability kept; if none halved it, the one that forgot most."""
    halved = [r for r in runs if r["forget_prob"][1] <= 0.5 * r["forget_prob"][0]]
    if halved:
        return max(halved, key=lambda r: r["retain_prob"][1])["learning_rate"]
    return min(runs, key=lambda r: r["forget_prob"][1])["learning_rate"]


def markdown(results: dict) -> str:
    rows = {"target": results["target"], "retain model": results["retain_model"]}
    rows.update({m: e["summary"] for m, e in results["methods"].items()})
    head = report.comparison_table(rows, COLUMNS)
    retain = report.comparison_table(rows, (*RETAIN_UTILITY, "retain_utility"))
    lrs = ", ".join(f"{m} {e['learning_rate']:g}" for m, e in results["methods"].items())
    return (
        head
        + f"\nLearning rates (chosen on rows {TUNE_ROWS.start}-{TUNE_ROWS.stop - 1}): {lrs}\n"
        + "\n`retain_utility` (this bench's, not OU's): the harmonic mean of model utility's three"
        + " retain-split scores:\n\n"
        + retain
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benches.efficacy", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("..") / "shared" / "data" / "tofu", help="TOFU folder")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="models and evaluations (default $UNLEARNX_CACHE/tofu-efficacy)",
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=sorted(METHODS))
    ap.add_argument("--fresh", action="store_true", help="discard the work folder first")
    ap.add_argument(
        "--train-epochs", type=float, default=TRAIN["epochs"], help="finetune epochs of both models"
    )
    ap.add_argument(
        "--limit", type=int, default=None, help="rows per evaluation split (a smoke test; not comparable)"
    )
    ap.add_argument("--unlearn-epochs", type=float, default=10.0, help="epochs over the forget set (OU's 10)")
    ap.add_argument("--lr-grid", type=float, nargs="+", default=list(LR_GRID), help="tuning grid")
    args = ap.parse_args(argv)
    if not (args.data / "full.json").is_file():
        print(f"--data: {args.data} has no full.json (TOFU's data)", file=sys.stderr)
        return 2
    work = args.work or cache_dir() / "tofu-efficacy"
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)

    torch.manual_seed(0)
    train = {**TRAIN, "epochs": args.train_epochs}
    st = Stages(args.data, work, log, train, args.lr_grid, args.limit, args.unlearn_epochs)
    retain_model = st.model("retain_model", [RETAIN_ROWS, TUNE_ROWS])
    target = st.model("target", [RETAIN_ROWS, TUNE_ROWS, FORGET_ROWS])
    retain_summary, retain_logs = st.evaluate("retain_model", retain_model, None)
    del retain_model
    target_summary, _ = st.evaluate("target", target, retain_logs)
    results = {
        "scale": {
            "retain_rows": [RETAIN_ROWS.start, RETAIN_ROWS.stop],
            "tune_rows": [TUNE_ROWS.start, TUNE_ROWS.stop],
            "forget_rows": [FORGET_ROWS.start, FORGET_ROWS.stop],
            "forget_split": FORGET_SPLIT,
            "holdout_split": HOLDOUT_SPLIT,
            "model": MODEL,
            "train": st.train,
            "lr_grid": st.lr_grid,
            "unlearn_epochs": st.unlearn_epochs,
            "limit": args.limit,
        },
        "target": target_summary,
        "retain_model": retain_summary,
        "methods": {},
        "tuning": {},
    }
    for method in args.methods:
        tuning = st.tune(target, method)
        lr = tuning["chosen"]
        folder = work / "eval" / method
        if not ((folder / "TOFU_SUMMARY.json").is_file() and (folder / "run.json").is_file()):
            model, result = st.unlearned(target, method, FORGET_ROWS, lr, method)
            (folder / "TOFU_SUMMARY.json").unlink(missing_ok=True)
            st.evaluate(method, model, retain_logs)
            meta = {"seconds": result["seconds"], "steps": result["steps"]}
            (folder / "run.json").write_text(json.dumps(meta) + "\n")
        summary, _ = st.evaluate(method, None, retain_logs)
        meta = json.loads((folder / "run.json").read_text())
        results["methods"][method] = {"learning_rate": lr, "summary": summary, **meta}
        results["tuning"][method] = tuning
        log(
            f"{method}: forget_quality {summary['forget_quality']:.3g}, "
            f"model_utility {summary['model_utility']:.3f}"
        )
    (args.out / "efficacy.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "efficacy.md").write_text(markdown(results))
    runs = {"target": target_summary, "retain model": retain_summary}
    runs.update({m: e["summary"] for m, e in results["methods"].items()})
    report.plot_tradeoff(runs, args.out / "tradeoff.png", utility="retain_utility")
    log(f"wrote {args.out / 'efficacy.md'}")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
