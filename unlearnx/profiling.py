"""Timing and peak-memory measurement used by the demo and the benchmarks.

Peak extra memory is measured from a baseline taken before the measured call:
- CUDA: ``torch.cuda.max_memory_allocated`` after a reset;
- CPU: the process's resident high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs``, Linux only). glibc is told to serve every allocation of
  64 KiB or more by mmap, and its heap is trimmed before the baseline, so memory freed
  earlier cannot be silently reused (that would hide allocations from the count).
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable

import torch

_M_MMAP_THRESHOLD = -3
_mmap_forced = False


def _release_heap() -> None:
    global _mmap_forced
    libc = ctypes.CDLL("libc.so.6")
    if not _mmap_forced:
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        _mmap_forced = True
    libc.malloc_trim(0)


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
    base = _proc_status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return (_proc_status_kb("VmHWM") - base) / 1024


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in milliseconds (device-synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
