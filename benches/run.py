"""Benchmark runner: fused vs reference forward+backward time and peak extra memory.

    python -m benches.run --device cpu --losses npo --B 8 --T 1024 --D 512 --V 32000

Writes ``benches/results/<name>.json`` (a list of records ``{loss, impl, device, dtype,
N, D, V, ms, peak_extra_mb, ...}``) and a Markdown table ``<name>.md`` beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import unlearnx
from benches.common import FLOP_FACTOR, LOSSES, median_ms, model_inputs, peak_extra_mb, step

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    records = []
    for T in args.T:
        inp = model_inputs(
            args.B, T, args.D, args.V, DTYPES[args.dtype], args.device, ignore_frac=args.ignore_frac
        )
        n = int((inp.t != -100).sum())
        for loss in args.losses:
            for impl in args.impls:
                fn = step(loss, impl, inp, args.chunk_size)
                fn()  # warm-up (and allocator priming)
                mem = peak_extra_mb(fn, device)
                ms = median_ms(fn, device, args.repeats, warmup=0)
                flops = FLOP_FACTOR[loss] * n * args.D * args.V
                rec = dict(
                    loss=loss,
                    impl=impl,
                    device=args.device,
                    machine=machine(device),
                    dtype=args.dtype,
                    B=args.B,
                    T=T,
                    N=n,
                    D=args.D,
                    V=args.V,
                    ms=round(ms, 2),
                    peak_extra_mb=round(mem, 1),
                    tflops=round(flops / ms / 1e9, 4),
                    flop_accounting=f"{FLOP_FACTOR[loss]}*N*D*V",
                    chunk_size=args.chunk_size if impl == "fused" else None,
                    torch=torch.__version__,
                    unlearnx=unlearnx.__version__,
                )
                records.append(rec)
                print(json.dumps(rec), flush=True)
    return records


def markdown(records: list[dict]) -> str:
    lines = [
        "| loss | N | D | V | dtype | impl | ms | peak extra MiB | TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['loss']} | {r['N']} | {r['D']} | {r['V']} | {r['dtype']} | {r['impl']} | {r['ms']:.1f} "
            f"| {r['peak_extra_mb']:.0f} | {r['tflops']:.3f} |"
        )
    by_key = {}
    for r in records:
        by_key.setdefault((r["loss"], r["N"]), {})[r["impl"]] = r
    ratios = [
        f"- {loss} N={n}: fused/reference time {v['fused']['ms'] / v['reference']['ms']:.2f}x, "
        f"memory {v['fused']['peak_extra_mb'] / v['reference']['peak_extra_mb']:.3f}x"
        for (loss, n), v in by_key.items()
        if {"fused", "reference"} <= v.keys()
    ]
    return "\n".join([*lines, "", *ratios]) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--losses", nargs="+", default=["npo"], choices=sorted(LOSSES))
    ap.add_argument("--impls", nargs="+", default=["fused", "reference"], choices=["fused", "reference"])
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, nargs="+", default=[1024])
    ap.add_argument("--D", type=int, default=512)
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument(
        "--ignore-frac", type=float, default=0.0, help="fraction of each sequence masked as prompt"
    )
    ap.add_argument("--chunk-size", type=int, default=None, help="fused chunk rows (default: memory budget)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default=None, help="results file stem (default: <device>-<losses>)")
    args = ap.parse_args(argv)
    records = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"{args.device}-{'-'.join(args.losses)}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(records, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(records))
    print(markdown(records))


if __name__ == "__main__":
    main()
