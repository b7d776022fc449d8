"""The ``unlearnx`` command.

unlearnx demo [--quick]         SmolLM2 forgets capitals with every method (--quick: synthetic, ~2 min)
unlearnx bench [--steps N ...]  NPO steps on a tiny random Llama, fused vs reference
unlearnx eval --model DIR ...   TOFU metrics of a Hugging Face causal LM
unlearnx compare RUN [RUN ...]  table and trade-off plot across eval runs
unlearnx unlearn --model DIR --method npo --forget FILE [--retain FILE] --out DIR
unlearnx finetune --model DIR --split full|retain90 --out DIR   OU's TOFU finetune
unlearnx relearn --model NAME=DIR ... --forget FILE --out DIR    relearning attack
unlearnx info                   which kernels were built (build_info)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from unlearnx.data.template import TEMPLATES
from unlearnx.data.tofu import FORGET_SPLITS
from unlearnx.eval.muse import METRICS as MUSE_METRICS
from unlearnx.eval.tofu import HOLDOUT_SPLITS, QUESTION_KEYS
from unlearnx.eval.tofu import METRICS as TOFU_METRICS
from unlearnx.models import MODEL_HELP, check_model
from unlearnx.quickbench import QuickBenchConfig
from unlearnx.train.methods import METHODS

DEFAULT_TOFU_DIR = Path("..") / "shared" / "data" / "tofu"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="unlearnx", description="LLM unlearning with fused LM-head losses.")
    sub = ap.add_subparsers(dest="command", required=True)
    full = sub.add_parser(
        "demo",
        help="SmolLM2-135M-Instruct forgets capitals with every method (--quick: tiny synthetic demo)",
    )
    full.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="folder for report.json and tradeoff.png"
    )
    full.add_argument(
        "--quick",
        action="store_true",
        help="the tiny demo instead: a Llama trained from scratch on synthetic authors (~2 min)",
    )
    full.add_argument("--model", default="smollm2", help=MODEL_HELP + " (not with --quick)")
    full.add_argument(
        "--methods", nargs="+", default=None, choices=sorted(METHODS), help="methods (default: all)"
    )
    full.add_argument("--seed", type=int, default=0)
    full.add_argument(
        "--stop-ratio",
        type=float,
        default=None,
        help="--quick: each method stops after the first check whose forget_prob is at most "
        "this share of the target's (default 0.35; 0 runs every epoch of the method's cap)",
    )
    full.add_argument(
        "--stop-every",
        choices=("step", "epoch"),
        default=None,
        help="--quick: check the stop rule after every optimiser step (default) or every epoch",
    )
    bench = sub.add_parser(
        "bench", help="NPO steps on a tiny random Llama: fused vs reference time and memory"
    )
    d = QuickBenchConfig()
    bench.add_argument(
        "--steps", type=_positive_int, default=d.steps, help="training steps per implementation"
    )
    bench.add_argument("--batch", type=_positive_int, default=d.batch, help="sequences per batch")
    bench.add_argument("--seq-len", type=_positive_int, default=d.seq_len, help="tokens per sequence")
    bench.add_argument("--hidden", type=_positive_int, default=d.hidden, help="model hidden size D")
    bench.add_argument("--layers", type=_positive_int, default=d.layers, help="decoder layers")
    bench.add_argument("--vocab", type=_positive_int, default=d.vocab, help="vocabulary size V")
    bench.add_argument("--beta", type=_positive_float, default=d.beta, help="NPO beta")
    bench.add_argument("--lr", type=_positive_float, default=d.lr, help="AdamW learning rate")
    bench.add_argument("--device", default=d.device, help="cpu or cuda")
    bench.add_argument("--seed", type=int, default=d.seed)
    bench.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ev = sub.add_parser(
        "eval",
        help="TOFU or MUSE metrics as open-unlearning computes them (TOFU: forget quality, model "
        "utility, truth ratio, probability, ROUGE, privleak, extraction strength, MIAs; MUSE: knowmem, "
        "verbmem, privleak, extraction strength)",
    )
    ev.add_argument("--model", required=True, type=Path, help=MODEL_HELP)
    ev.add_argument("--benchmark", default="tofu", choices=["tofu", "muse"], help="benchmark (default tofu)")
    ev.add_argument(
        "--data",
        default="muse-bench/MUSE-News",
        help="MUSE only: hub id (muse-bench/MUSE-News, muse-bench/MUSE-Books) or a local folder in that "
        "layout (<config>/<split>.jsonl|.json|.parquet)",
    )
    ev.add_argument(
        "--template",
        default="auto",
        choices=["auto", *TEMPLATES],
        help="prompt template (auto: OU's llama3 preset for a date-stamping chat template, else the "
        "chat template if the tokenizer has one, else qa-tags)",
    )
    ev.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        choices=sorted({*MUSE_METRICS, *TOFU_METRICS}),
        help="metrics by open-unlearning's names (default: OU's defaults, seven for TOFU, five for MUSE)",
    )
    ev.add_argument("--forget-split", default="forget10", choices=FORGET_SPLITS)
    ev.add_argument(
        "--holdout-split",
        default=None,
        choices=HOLDOUT_SPLITS,
        help="TOFU: members' counterpart for privleak and the MIAs (default: the forget split's size)",
    )
    ev.add_argument(
        "--question-key",
        default="question",
        choices=QUESTION_KEYS,
        help="TOFU: question field of the forget and retain splits (OU's question_key)",
    )
    ref = ev.add_mutually_exclusive_group()
    ref.add_argument(
        "--retain-model", type=Path, help="model never trained on the forget set (for forget quality)"
    )
    ref.add_argument(
        "--retain-logs",
        type=Path,
        help="the retain model's earlier eval, OU's or ours: TOFU_EVAL.json (TOFU) or MUSE_EVAL.json (MUSE)",
    )
    ev.add_argument(
        "--out", required=True, type=Path, help="folder for TOFU_/MUSE_SUMMARY.json and TOFU_/MUSE_EVAL.json"
    )
    ev.add_argument(
        "--data-dir", type=Path, default=DEFAULT_TOFU_DIR, help="folder of the TOFU JSON Lines files"
    )
    ev.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="default: OU's (TOFU 32; MUSE 16 knowmem, 8 else)",
    )
    ev.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=200,
        help="TOFU: greedy generation length for ROUGE (OU's 200)",
    )
    ev.add_argument(
        "--limit", type=_positive_int, default=None, help="evaluate the first N examples of each split"
    )
    ev.add_argument("--device", default="cpu", help="cpu or cuda")
    cmp = sub.add_parser("compare", help="table (Markdown) and trade-off plot across eval runs")
    cmp.add_argument(
        "runs", nargs="+", type=Path, help="eval output folders or TOFU_/MUSE_SUMMARY.json files"
    )
    cmp.add_argument("--plot", type=Path, default=None, help="write a forget-quality vs utility PNG here")
    from unlearnx.train.cli import add_finetune_parser, add_relearn_parser
    from unlearnx.train.cli import add_parser as add_unlearn

    add_unlearn(sub)
    add_relearn_parser(sub)
    add_finetune_parser(sub)
    sub.add_parser("info", help="print unlearnx.build_info() as JSON")
    return ap


def _fail(message: str) -> int:
    print(f"unlearnx: {message}", file=sys.stderr)
    return 2


def _load(path: Path, device: str):
    from unlearnx.models import load_pretrained

    model, tok = load_pretrained(path, device)
    return model.eval(), tok


def run_eval(args: argparse.Namespace) -> int:
    """Validates everything before loading a model, then writes OU's ``TOFU_SUMMARY.json`` and
    ``TOFU_EVAL.json`` (or the MUSE ones)."""
    import torch

    from unlearnx.eval import tofu
    from unlearnx.models import check_model

    for flag, path in (("--model", args.model), ("--retain-model", args.retain_model)):
        try:
            path is None or check_model(flag, path)
        except ValueError as err:
            return _fail(str(err))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"--device: {args.device} requested but no CUDA GPU is available")
    if args.benchmark == "muse":
        return _run_muse(args)
    bad = sorted(set(args.metrics or ()) - set(tofu.METRICS))
    if bad:
        return _fail(f"--metrics: {bad} are MUSE metrics; TOFU has {list(tofu.METRICS)}")
    for split in (f"{args.forget_split}_perturbed", args.holdout_split or "holdout" + args.forget_split[6:]):
        if not (args.data_dir / f"{split}.json").is_file():
            return _fail(f"--data-dir: {args.data_dir} has no {split}.json (pass the TOFU folder)")
    retain_logs = None
    if args.retain_logs is not None:
        try:
            retain_logs = tofu.read_retain_logs(args.retain_logs)
        except ValueError as err:
            return _fail(f"--retain-logs: {err}")
    options = dict(
        forget_split=args.forget_split,
        holdout_split=args.holdout_split,
        question_key=args.question_key,
        template=args.template,
        batch_size=args.batch_size or 32,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
    )
    metrics = tuple(args.metrics or tofu.DEFAULT_METRICS)
    if args.retain_model is not None:
        # what forget_quality and privleak read from a retain model
        _, logs = tofu.evaluate_tofu(
            *_load(args.retain_model, args.device),
            args.data_dir,
            metrics=("forget_truth_ratio", "mia_min_k"),
            **options,
        )
        retain_logs = tofu.reference_values(logs)
    summary, logs = tofu.evaluate_tofu(
        *_load(args.model, args.device), args.data_dir, metrics=metrics, retain_logs=retain_logs, **options
    )
    paths = tofu.write_logs(args.out, summary, logs)
    width = max(len(m) for m in summary)
    for name, value in summary.items():
        print(f"{name:<{width}}  {'n/a' if value is None else f'{value:.4g}'}")
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def _run_muse(args: argparse.Namespace) -> int:
    """``unlearnx eval --benchmark muse``: data and retain logs checked before any model loads;
    writes OU's ``MUSE_EVAL.json`` (per example) and ``MUSE_SUMMARY.json``."""
    from unlearnx.data import muse as muse_data
    from unlearnx.data.template import template_for
    from unlearnx.eval import muse

    try:
        muse_data.check_source(args.data)
    except ValueError as err:
        return _fail(f"--data: {err}")
    try:
        retain_auc = None if args.retain_logs is None else muse.retain_reference_auc(args.retain_logs)
    except ValueError as err:
        return _fail(f"--retain-logs: {err}")
    bad = sorted(set(args.metrics or ()) - set(muse.METRICS))
    if bad:
        return _fail(f"--metrics: {bad} are TOFU metrics; MUSE has {list(muse.METRICS)}")
    metrics = args.metrics or list(muse.DEFAULT_METRICS)
    options = dict(
        limit=args.limit, batch_size=args.batch_size, progress=lambda m: print(f"  {m}", flush=True)
    )
    if args.retain_model is not None:
        print(f"retain model {args.retain_model}: mia_min_k")
        model, tok = _load(args.retain_model, args.device)
        summary, _ = muse.evaluate_muse(
            model, tok, args.data, template=template_for(tok, args.template), metrics=["mia_min_k"], **options
        )
        retain_auc = summary["mia_min_k"]
    print(f"model {args.model}: {' '.join(metrics)}")
    model, tok = _load(args.model, args.device)
    summary, logs = muse.evaluate_muse(
        model,
        tok,
        args.data,
        template=template_for(tok, args.template),
        metrics=metrics,
        retain_auc=retain_auc,
        **options,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "MUSE_EVAL.json").write_text(json.dumps(logs, indent=1) + "\n")
    (args.out / "MUSE_SUMMARY.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name, value in summary.items():
        print(f"{name:<24}{value:10.4f}")
    if "privleak" in summary:
        ref = "AUC 0.5 (no retain model or logs)" if retain_auc is None else f"retain AUC {retain_auc:.4f}"
        print(f"(privleak against {ref})")
    print(f"wrote {args.out / 'MUSE_SUMMARY.json'} and {args.out / 'MUSE_EVAL.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "info":
        import unlearnx

        print(json.dumps(unlearnx.build_info(), indent=1))
        return 0
    if args.command == "eval":
        return run_eval(args)
    if args.command == "unlearn":
        from unlearnx.train.cli import run

        return run(args)
    if args.command == "finetune":
        from unlearnx.train.cli import run_finetune

        return run_finetune(args)
    if args.command == "relearn":
        from unlearnx.train.cli import run_relearn

        return run_relearn(args)
    if args.command == "compare":
        from unlearnx.eval import report

        try:
            runs = {str(p): report.load_summary(p) for p in args.runs}
        except ValueError as err:
            return _fail(str(err))
        print(report.comparison_table(runs), end="")
        if args.plot is not None:
            print(f"wrote {report.plot_tradeoff(runs, args.plot)}")
        return 0
    if args.command == "demo":
        return run_demo(args)
    return run_bench(args)


def run_demo(args: argparse.Namespace) -> int:
    options = {"methods": tuple(args.methods)} if args.methods else {}
    if args.quick:
        from unlearnx import demo

        if args.model != "smollm2":
            return _fail("--model: the --quick demo trains its own tiny model")
        if args.stop_ratio is not None:
            if not 0 <= args.stop_ratio < 1:
                return _fail(f"--stop-ratio: expected a share in [0, 1), got {args.stop_ratio}")
            options["stop_ratio"] = args.stop_ratio
        if args.stop_every is not None:
            options["stop_every"] = args.stop_every
        rep = demo.run(demo.DemoConfig(out=args.out, seed=args.seed, **options))
        print(demo.table(rep))
        bar = "forget_prob halved, utility >= 80% of target"
    else:
        from unlearnx import real_demo

        for flag, value in (("--stop-ratio", args.stop_ratio), ("--stop-every", args.stop_every)):
            if value is not None:
                return _fail(f"{flag}: only the --quick demo stops early; the real demo runs fixed epochs")
        try:
            check_model("--model", args.model)
        except ValueError as err:
            return _fail(str(err))
        rep = real_demo.run(
            real_demo.RealDemoConfig(out=args.out, model=args.model, seed=args.seed, **options)
        )
        print(real_demo.table(rep))
        print(real_demo.answers(rep, shown=2))
        bar = "forget accuracy halved, retain accuracy >= 80% of the original"
    failed = {m: a for m, a in rep["acceptance"].items() if not all(a.values())}
    print(f"acceptance ({bar}):", failed or "all met")
    print(f"wrote {args.out / 'report.json'} and {args.out / 'tradeoff.png'}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from unlearnx import quickbench

    cfg = QuickBenchConfig(**{f.name: getattr(args, f.name) for f in fields(QuickBenchConfig)})
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"--device: {cfg.device} requested but no CUDA GPU is available")
    results = quickbench.run(cfg)
    print(json.dumps(results, indent=1) if args.json else quickbench.report(cfg, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
