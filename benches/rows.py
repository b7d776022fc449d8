"""Row kernels against the ATen op that makes the same pass over a chunk of logits, on every
CPU ISA level this machine runs, each in a process of its own with ATen held to the same
level (``ATEN_CPU_CAPABILITY``): ``lse_stats`` vs ``log_softmax``, ``logprob_grad_`` vs
``softmax``, ``max_stats`` vs ``max(-1)``, ``ref_stats`` vs ``log_softmax`` of both rows,
``ref_grad_`` vs ``softmax`` of both rows, ``dipo_direction_`` vs ``softmax``.

    python -m benches.rows [--rows 524] [--V 32000] [--repeats 11] [--name cpu-rows]

Writes ``benches/results/<name>.json`` and ``<name>.md`` (medians in ms, fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ATEN_LEVEL = {"avx512": "avx512", "avx2": "avx2", "baseline": "default"}


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def measure(rows: int, V: int, repeats: int) -> list[dict]:
    """Pairs (kernel, ATen op) timed alternately in this process, at its current levels."""
    import unlearnx

    g = torch.Generator().manual_seed(0)
    z = torch.randn(rows, V, generator=g) * 4
    r = z + torch.randn(rows, V, generator=g)
    t = torch.randint(0, V, (rows,), generator=g)
    ops = torch.ops.unlearnx
    lse, logp = ops.lse_stats(z, t)
    lse_z, lse_r, lp, lpr, _ = ops.ref_stats(z, r, t)
    ones = torch.ones(rows)
    tau = r.max(-1).values
    work = z.clone()
    pairs = {
        "lse_stats": (lambda: ops.lse_stats(z, t), lambda: torch.log_softmax(z, -1)),
        "logprob_grad_": (
            lambda: ops.logprob_grad_(work.copy_(z), t, lse, logp, ones),
            lambda: (work.copy_(z), torch.softmax(z, -1)),
        ),
        "max_stats": (lambda: ops.max_stats(z), lambda: z.max(-1)),
        "ref_stats": (
            lambda: ops.ref_stats(z, r, t),
            lambda: (torch.log_softmax(z, -1), torch.log_softmax(r, -1)),
        ),
        "ref_grad_": (
            lambda: ops.ref_grad_(work.copy_(z), r, t, lse_z, lse_r, lp, lpr, ones, ones),
            lambda: (work.copy_(z), torch.softmax(z, -1), torch.softmax(r, -1)),
        ),
        "dipo_direction_": (
            lambda: ops.dipo_direction_(work.copy_(r), tau, 1.0),
            lambda: (work.copy_(r), torch.softmax(r, -1)),
        ),
    }
    out = []
    for name, (kernel, aten) in pairs.items():
        k_ms, a_ms = [], []
        for _ in range(3):  # alternate, so drift on a shared machine hits both
            k_ms.append(_median_ms(kernel, repeats))
            a_ms.append(_median_ms(aten, repeats))
        out.append(
            dict(
                kernel=name,
                cpu_isa=unlearnx.cpu_isa(),
                aten_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                rows=rows,
                V=V,
                kernel_ms=round(min(k_ms), 2),
                aten_ms=round(min(a_ms), 2),
                ratio=round(min(k_ms) / min(a_ms), 3),
                threads=torch.get_num_threads(),
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=524)
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--name", default="cpu-rows")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.rows, args.V, args.repeats)))
        return 0
    import unlearnx

    records: list[dict] = []
    for level in unlearnx.supported_cpu_isas():
        env = {**os.environ, "UNLEARNX_CPU_ISA": level, "ATEN_CPU_CAPABILITY": ATEN_LEVEL[level]}
        cmd = [
            sys.executable,
            "-m",
            "benches.rows",
            "--child",
            *map(str, ("--rows", args.rows, "--V", args.V)),
        ]
        cmd += ["--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        records += json.loads(proc.stdout.strip().splitlines()[-1])
    from benches.run import cpu_model

    lines = [
        f"{cpu_model()}, {records[0]['threads']} threads; fp32 [{args.rows} x {args.V}] chunk; "
        "min over 3 alternations of the median of "
        f"{args.repeats}; command: `python -m benches.rows --name {args.name}`",
        "",
        "| level (unlearnx / ATen) | kernel | kernel ms | ATen ms | kernel / ATen |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['cpu_isa']} / {r['aten_cpu_capability']} | `{r['kernel']}` | {r['kernel_ms']:.1f} | "
        f"{r['aten_ms']:.1f} | {r['ratio']:.2f} |"
        for r in records
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(records, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
