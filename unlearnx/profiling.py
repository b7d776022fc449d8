"""Timing and peak-memory measurement used by the demo and the benchmarks.

Peak extra memory is measured from a baseline taken before the measured call:
- CUDA: ``torch.cuda.max_memory_allocated`` after a reset;
- CPU: the process's resident high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs``, Linux only). While the measured call runs, glibc is told to
  serve every allocation of 64 KiB or more by mmap, and its heap is trimmed before the
  baseline, so memory freed earlier cannot be silently reused (that would hide allocations
  from the count). Afterwards glibc gets back thresholds like the ones it adapts to by itself
  (mmap from 32 MiB, trim above 64 MiB): left at 64 KiB, every later allocation would be
  page-faulted afresh: in the real-model demo, runs with a retain term took 52-59 s instead of
  43-51 s, and measuring each model 23-36 s instead of 16-22 s.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Hashable, Mapping

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MEASURING_MMAP = 64 * 1024
# glibc's own ceiling for its dynamic mmap threshold on 64-bit, and its trim rule (twice that)
_USUAL_MMAP, _USUAL_TRIM = 32 * 2**20, 64 * 2**20


def _libc():
    return ctypes.CDLL("libc.so.6")


def _release_heap() -> None:
    libc = _libc()
    libc.mallopt(_M_MMAP_THRESHOLD, _MEASURING_MMAP)
    libc.malloc_trim(0)


def _restore_heap() -> None:
    libc = _libc()
    libc.mallopt(_M_MMAP_THRESHOLD, _USUAL_MMAP)
    libc.mallopt(_M_TRIM_THRESHOLD, _USUAL_TRIM)


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory above the current level while running ``fn``, in MiB."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    _release_heap()
    try:
        base = _proc_status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        fn()
        return (_proc_status_kb("VmHWM") - base) / 1024
    finally:
        _restore_heap()


def _once_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in milliseconds (device-synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    return statistics.median(_once_ms(fn, device) for _ in range(repeats))


def interleaved_median_ms(
    fns: Mapping[Hashable, Callable[[], object]], device: torch.device, rounds: int
) -> dict[Hashable, float]:
    """Median wall time in milliseconds of each of ``fns``, timed in ``rounds`` rounds that
    call each once in turn: on a shared machine whose speed drifts, the drift then hits every
    function alike instead of whichever was timed during a slow spell. No warm-up."""
    times: dict[Hashable, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_once_ms(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}
