"""Inputs, timing and memory measurement shared by the benchmark runner and suites.

Inputs are the final hidden states of a randomly initialised Llama-architecture model
(one decoder layer, the given hidden size and vocabulary) and its LM-head weight, so
activations have the scale and structure of a real model's, never all-zero tensors.

Peak extra memory is measured from a baseline taken after inputs exist:
- CUDA: ``torch.cuda.max_memory_allocated`` after a reset;
- CPU: the process's resident high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs``), with glibc told to serve every allocation of 64 KiB or
  more by mmap so that freed tensors leave the resident set at once.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from unlearnx import functional as F
from unlearnx import reference as R

_M_MMAP_THRESHOLD = -3
_MMAP_SET = False


def _force_mmap() -> None:
    global _MMAP_SET
    if not _MMAP_SET:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        _MMAP_SET = True


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
    _force_mmap()
    base = _proc_status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return (_proc_status_kb("VmHWM") - base) / 1024


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
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


@dataclass
class Inputs:
    x: torch.Tensor  # (B, T, D) final hidden states, requires grad
    w: torch.Tensor  # (V, D) LM head, requires grad
    t: torch.Tensor  # (B, T) next-token targets
    ref_logps: torch.Tensor  # (B,)


def model_inputs(
    B: int,
    T: int,
    D: int,
    V: int,
    dtype: torch.dtype,
    device: str = "cpu",
    seed: int = 0,
    ignore_frac: float = 0.0,
) -> Inputs:
    """Hidden states and head of a random one-layer Llama of hidden size D and vocabulary V."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    heads = max(1, D // 64)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=2 * D,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max(T, 128),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    ids = torch.randint(0, V, (B, T + 1), device=device)
    with torch.no_grad():
        hidden = torch.cat([model.model(input_ids=ids[i : i + 1, :T]).last_hidden_state for i in range(B)])
    target = ids[:, 1:].clone()
    if ignore_frac > 0:
        target[:, : int(T * ignore_frac)] = -100  # a prompt, as in QA unlearning data
    weight = model.lm_head.weight.detach().clone()
    del model
    with torch.no_grad():
        sums, _ = F.sequence_logprobs(hidden, weight, target)
    ref = sums + torch.randn_like(sums)  # a reference model a little different from the policy
    return Inputs(hidden.requires_grad_(), weight.requires_grad_(), target, ref)


def _npo(mod, inp: Inputs, **kw):
    return mod.npo_loss(inp.x, inp.w, inp.t, inp.ref_logps, **kw)


def _nll(mod, inp: Inputs, **kw):
    return mod.nll_loss(inp.x, inp.w, inp.t, **kw)


def _simnpo(mod, inp: Inputs, **kw):
    return mod.simnpo_loss(inp.x, inp.w, inp.t, **kw)


LOSSES: dict[str, Callable] = {"nll": _nll, "npo": _npo, "simnpo": _simnpo}
# FLOPs of forward+backward in units of N*D*V: single pass 6, two-pass recompute 8.
FLOP_FACTOR = {"nll": 6, "npo": 6, "simnpo": 6}


def step(loss: str, impl: str, inp: Inputs, chunk_size: int | None = None) -> Callable[[], None]:
    """A closure running forward+backward of ``loss`` with ``impl`` ("fused" or "reference")."""
    mod, kw = (F, {"chunk_size": chunk_size}) if impl == "fused" else (R, {})

    def run() -> None:
        inp.x.grad = inp.w.grad = None
        LOSSES[loss](mod, inp, **kw).backward()

    return run
