"""The ``unlearnx`` command.

unlearnx demo [--steps N ...]   NPO steps on a tiny random Llama, fused vs reference
unlearnx info                   which kernels were built (build_info)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from unlearnx.demo import DemoConfig


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
    demo = sub.add_parser("demo", help="NPO steps on a tiny random Llama: fused vs reference time and memory")
    d = DemoConfig()
    demo.add_argument(
        "--steps", type=_positive_int, default=d.steps, help="training steps per implementation"
    )
    demo.add_argument("--batch", type=_positive_int, default=d.batch, help="sequences per batch")
    demo.add_argument("--seq-len", type=_positive_int, default=d.seq_len, help="tokens per sequence")
    demo.add_argument("--hidden", type=_positive_int, default=d.hidden, help="model hidden size D")
    demo.add_argument("--layers", type=_positive_int, default=d.layers, help="decoder layers")
    demo.add_argument("--vocab", type=_positive_int, default=d.vocab, help="vocabulary size V")
    demo.add_argument("--beta", type=_positive_float, default=d.beta, help="NPO beta")
    demo.add_argument("--lr", type=_positive_float, default=d.lr, help="AdamW learning rate")
    demo.add_argument("--device", default=d.device, help="cpu or cuda")
    demo.add_argument("--seed", type=int, default=d.seed)
    demo.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    sub.add_parser("info", help="print unlearnx.build_info() as JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "info":
        import unlearnx

        print(json.dumps(unlearnx.build_info(), indent=1))
        return 0
    import torch

    from unlearnx import demo

    cfg = DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig)})
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"unlearnx demo: --device {cfg.device} requested but no CUDA GPU is available", file=sys.stderr)
        return 2
    results = demo.run(cfg)
    print(json.dumps(results, indent=1) if args.json else demo.report(cfg, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
