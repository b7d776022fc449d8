"""Benchmark runner: fused vs reference (and ``torch.compile``d reference, and for NLL the
Liger-Kernel and cut-cross-entropy fused linear cross-entropy where importable: ``--impls
liger cce``) forward+backward time and peak extra memory, with the GEMM floor measured in
the same run. Implementations that cannot run a loss here are skipped with a message.

    python -m benches.run --device cpu --losses npo nll --B 4 --T 256 1024 --D 512 --V 32000

``--chunk-size 524 1048 auto`` times the fused loss at each chunk size (``fused@524``, ...) in
the same interleaved rounds as the others, to choose chunk shapes on a given CPU.

Writes ``benches/results/<name>.json`` (a list of records ``{loss, impl, device, dtype, N, D,
V, ms, fwd_ms, bwd_ms, peak_extra_mb, floor_ms, floor_ratio, tflops, ...}``), a Markdown
table ``<name>.md`` and a plot ``<name>.png`` beside it.

FLOP accounting: ``FLOP_FACTOR[loss] * N * D * V`` for a logits-based implementation (6 for
a head, 2 for flattening's forward-only GEMM, 8 with reference logits); TFLOP/s of the fused
rows count what the single-pass fused schedule does (``FUSED_FLOP_FACTOR``: 6 for DiPO,
which never forms the policy logits). The floor is the plain GEMMs of the same shapes and
dtype (``Z = X W^T``, ``dX = dZ W``, ``dW = dZ^T X``, 6·N·D·V), timed here and scaled by
``FLOP_FACTOR / 6``: the GEMM time of the logits-based computation.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import unlearnx
from benches.common import (
    FLOP_FACTOR,
    FUSED_FLOP_FACTOR,
    IMPLS,
    LOSSES,
    forward,
    gemm_floor,
    interleaved_median_ms,
    measured,
    median_ms,
    model_inputs,
    peak_extra_mb,
    random_inputs,
    unavailable,
)

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class Prepared:
    """An implementation warmed up and measured for memory, ready to be timed."""

    total: Callable[[], None]  # forward + backward
    forward_only: Callable[[], None]
    peak_extra_mb: float


def prepare(loss: str, impl: str, inp, device: torch.device, chunk_size: int | None) -> Prepared:
    fwd = forward(loss, impl, inp, chunk_size)

    def total() -> None:
        fwd().backward()

    def forward_only() -> None:
        out = fwd()
        out.detach()  # keeps the graph alive until here, as in training
        del out

    total()  # warm-up (compilation, allocator priming)
    return Prepared(total, forward_only, peak_extra_mb(total, device))


def measure(prepared: dict[str, Prepared], device: torch.device, repeats: int) -> dict[str, dict]:
    """``{impl: {ms, fwd_ms, bwd_ms, peak_extra_mb}}``, every implementation's total and
    forward timed in the same rounds (``interleaved_median_ms``), so that their ratios hold on
    a machine whose speed drifts during the run."""
    fns = {}
    for impl, p in prepared.items():
        fns[(impl, "ms")] = p.total
        fns[(impl, "fwd_ms")] = p.forward_only
    ms = interleaved_median_ms(fns, device, repeats)
    return {
        impl: {
            "ms": ms[(impl, "ms")],
            "fwd_ms": ms[(impl, "fwd_ms")],
            "bwd_ms": max(ms[(impl, "ms")] - ms[(impl, "fwd_ms")], 0.0),
            "peak_extra_mb": p.peak_extra_mb,
        }
        for impl, p in prepared.items()
    }


INPUTS = {"model": model_inputs, "random": random_inputs}


def chunk_size(text: str) -> int | None:
    """A ``--chunk-size`` value: rows per chunk, or ``auto`` (None: the memory budget's)."""
    if text == "auto":
        return None
    try:
        rows = int(text)
    except ValueError:
        rows = 0
    if rows < 1:
        raise argparse.ArgumentTypeError(f"expected a positive row count or 'auto', got {text!r}")
    return rows


def fused_variants(chunk_sizes: Sequence[int | None]) -> dict[str, int | None]:
    """``{impl name: chunk rows}`` of the fused loss: ``fused`` for one chunk size, and
    ``fused@<rows>`` / ``fused@auto`` for each of several, so they are timed side by side."""
    if len(chunk_sizes) == 1:
        return {"fused": chunk_sizes[0]}
    names = [f"fused@{'auto' if c is None else c}" for c in chunk_sizes]
    if len(set(names)) != len(names):
        raise ValueError(f"--chunk-size: repeated value in {names}")
    return dict(zip(names, chunk_sizes, strict=True))


def _failure(e: Exception) -> dict:
    """The record fields of an implementation that could not be timed: ``oom`` or ``failed``."""
    if isinstance(e, torch.OutOfMemoryError):
        return {"oom": True}
    inner = e.inner_exception
    first_line = str(inner).partition("\n")[0]
    return {"failed": f"torch.compile failed: {type(inner).__name__}: {first_line}"}


def is_fused(impl: str) -> bool:
    return impl == "fused" or impl.startswith("fused@")


def run(
    args: argparse.Namespace, on_record: Callable[[list[dict]], None] = lambda records: None
) -> list[dict]:
    """Measures every (T, loss, impl); calls ``on_record`` with the records so far after each."""
    device = torch.device(args.device)
    variants = fused_variants(args.chunk_size)
    records = []
    for T in args.T:
        inp = INPUTS[args.inputs](
            args.B, T, args.D, args.V, DTYPES[args.dtype], args.device, ignore_frac=args.ignore_frac
        )
        n = int((inp.t != -100).sum())
        floor6 = median_ms(gemm_floor(n, args.D, args.V, DTYPES[args.dtype], device), device, args.repeats)
        for loss in args.losses:
            base = dict(
                loss=loss,
                device=args.device,
                machine=machine(device),
                # the unlearnx row-kernel level and ATen's own (ATEN_CPU_CAPABILITY) that ran
                cpu_isa=unlearnx.cpu_isa(),
                aten_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                dtype=args.dtype,
                B=args.B,
                T=T,
                N=n,
                D=args.D,
                V=args.V,
            )
            prepared = {}
            for impl in args.impls:
                reason = unavailable(loss, impl, device)
                if reason is not None:
                    print(f"skipping {impl} for {loss}: {reason}", file=sys.stderr, flush=True)
                    continue
                for name, rows in variants.items() if impl == "fused" else [(impl, None)]:
                    try:
                        prepared[name] = prepare(loss, impl, inp, device, rows)
                    except (torch.OutOfMemoryError, torch._dynamo.exc.BackendCompilerFailed) as e:
                        # the reference out of memory at long contexts is the point of the
                        # comparison, and a build failure (seen with an Inductor cache shared
                        # across ATen CPU capabilities) leaves the others worth timing: record it
                        records.append({**base, "impl": name, **_failure(e)})
                        print(json.dumps(records[-1]), flush=True)
                        on_record(records)
                        torch.cuda.empty_cache()
            for impl, m in measure(prepared, device, args.repeats).items():
                factor = (FUSED_FLOP_FACTOR if is_fused(impl) else FLOP_FACTOR)[loss]
                flops = factor * n * args.D * args.V
                floor = floor6 * FLOP_FACTOR[loss] / 6
                rec = dict(
                    **base,
                    impl=impl,
                    **{k: round(v, 2) for k, v in m.items()},
                    floor_ms=round(floor, 2),
                    floor_ratio=round(m["ms"] / floor, 3),
                    tflops=round(flops / m["ms"] / 1e9, 4),
                    flop_accounting=f"{factor}*N*D*V",
                    timing=f"median of {args.repeats} interleaved rounds",
                    chunk_size=variants[impl] if is_fused(impl) else None,
                    torch=torch.__version__,
                    unlearnx=unlearnx.__version__,
                )
                records.append(rec)
                print(json.dumps(rec), flush=True)
            on_record(records)
    return records


def markdown(records: list[dict]) -> str:
    head = records[0] if records else {}
    lines = [
        f"{head.get('machine', '?')}; unlearnx CPU ISA {head.get('cpu_isa', '?')}, "
        f"ATen CPU capability {head.get('aten_cpu_capability', '?')}",
        "",
        "| loss | N | D | V | dtype | impl | ms | fwd ms | bwd ms | floor x | peak extra MiB | TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if not measured(r):
            lines.append(
                f"| {r['loss']} | {r['N']} | {r['D']} | {r['V']} | {r['dtype']} | {r['impl']} | "
                f"{'out of memory' if r.get('oom') else r['failed']} | | | | | |"
            )
            continue
        lines.append(
            f"| {r['loss']} | {r['N']} | {r['D']} | {r['V']} | {r['dtype']} | {r['impl']} | {r['ms']:.1f} "
            f"| {r['fwd_ms']:.1f} | {r['bwd_ms']:.1f} | {r['floor_ratio']:.2f} | {r['peak_extra_mb']:.0f} "
            f"| {r['tflops']:.3f} |"
        )
    by_key: dict = {}
    for r in filter(measured, records):
        by_key.setdefault((r["loss"], r["N"]), {})[r["impl"]] = r
    ratios = [
        f"- {loss} N={n}: {f}/reference time {v[f]['ms'] / v['reference']['ms']:.2f}x, "
        f"memory {v[f]['peak_extra_mb'] / max(v['reference']['peak_extra_mb'], 1e-9):.3f}x"
        for (loss, n), v in by_key.items()
        for f in filter(is_fused, v)
        if "reference" in v
    ]
    ratios += [
        f"- {loss} N={n}: {f}/{impl} time {v[f]['ms'] / v[impl]['ms']:.2f}x"
        for (loss, n), v in by_key.items()
        for f in filter(is_fused, v)
        for impl in ("compiled", "cce", "liger")
        if impl in v
    ]
    return "\n".join([*lines, "", *ratios]) + "\n"


def plot(records: list[dict], path: Path) -> Path:
    """Time and peak extra memory against N, one line per (loss, impl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    ok = list(filter(measured, records))
    keys = sorted({(r["loss"], r["impl"]) for r in ok})
    losses = sorted({loss for loss, _ in keys})
    styles = {"fused": "-", "reference": "--", "compiled": ":"}
    for loss, impl in keys:
        rows = sorted((r for r in ok if (r["loss"], r["impl"]) == (loss, impl)), key=lambda r: r["N"])
        look = dict(color=f"C{losses.index(loss) % 10}", linestyle=styles.get(impl, "-."), marker="o")
        ax_t.plot([r["N"] for r in rows], [r["ms"] for r in rows], label=f"{loss} {impl}", **look)
        ax_m.plot([r["N"] for r in rows], [r["peak_extra_mb"] for r in rows], **look)
    for ax, label in ((ax_t, "forward+backward ms"), (ax_m, "peak extra MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{records[0]['machine']}, {records[0]['dtype']}, D={records[0]['D']}, V={records[0]['V']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def isolate_inductor_cache() -> str:
    """Points torch.compile at a cache of its own per ATen CPU capability, unless
    ``TORCHINDUCTOR_CACHE_DIR`` is set; returns the folder. Run at ``ATEN_CPU_CAPABILITY=default``
    after AVX2 runs had filled the shared default cache, the compiled reference failed to build
    (``'at::vec' has not been declared``, torch 2.13), and built in a fresh folder."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        level = torch.backends.cpu.get_cpu_capability().lower()
        folder = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}_{level}"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--losses", nargs="+", default=["npo"], choices=sorted(LOSSES))
    ap.add_argument("--impls", nargs="+", default=["fused", "reference"], choices=IMPLS)
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, nargs="+", default=[1024])
    ap.add_argument("--D", type=int, default=512)
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument(
        "--ignore-frac", type=float, default=0.0, help="fraction of each sequence masked as prompt"
    )
    ap.add_argument(
        "--chunk-size",
        type=chunk_size,
        nargs="+",
        default=[None],
        help="fused chunk rows, or auto (the memory budget's; the default); several values time "
        "fused@<rows> variants side by side",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--inputs",
        default="model",
        choices=sorted(INPUTS),
        help="model: hidden states of a random one-layer Llama (needs transformers); random: drawn on "
        "the device, no model (for GPU hosts and large heads)",
    )
    ap.add_argument(
        "--formats",
        nargs="+",
        default=["json", "md", "png"],
        choices=["json", "md", "png"],
        help="result files to write (the JSON is rewritten after every measurement)",
    )
    ap.add_argument("--name", default=None, help="results file stem (default: <device>-<losses>)")
    ap.add_argument(
        "--out-dir", type=Path, default=RESULTS, help="folder for the results (default benches/results)"
    )
    args = ap.parse_args(argv)
    isolate_inductor_cache()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"{args.device}-{'-'.join(args.losses)}"

    def save_json(records: list[dict]) -> None:
        # after every measurement, so a run cut short by a time limit keeps what it measured
        if "json" in args.formats:
            (args.out_dir / f"{stem}.json").write_text(json.dumps(records, indent=1) + "\n")

    records = run(args, save_json)
    save_json(records)
    if "md" in args.formats:
        (args.out_dir / f"{stem}.md").write_text(markdown(records))
    if "png" in args.formats:
        plot(records, args.out_dir / f"{stem}.png")
    print(markdown(records))


if __name__ == "__main__":
    main()
