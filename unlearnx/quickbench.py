"""Quick benchmark: NPO unlearning steps on a tiny Hugging Face Llama, fused vs reference.

A randomly initialised ``LlamaForCausalLM`` gets a "forget" batch (random token
sequences whose first quarter is a prompt, masked with -100). The reference
log-probabilities ``S_ref`` are computed once, forward-only, with the fused
:func:`unlearnx.functional.sequence_logprobs` (what a reference cache stores). Then two
identical copies of the model take the same AdamW steps on the NPO loss: one through
the fused loss on the final hidden states and ``lm_head.weight``, one through
:mod:`unlearnx.reference`, which materialises the ``[tokens, V]`` logits. The demo
prints both loss curves, the time per step and the peak extra memory of a step.

``unlearnx bench`` runs it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from unlearnx import functional, reference
from unlearnx.models import tiny_llama
from unlearnx.profiling import median_ms, peak_extra_mb


@dataclass
class QuickBenchConfig:
    steps: int = 4
    batch: int = 8
    seq_len: int = 512
    hidden: int = 256
    layers: int = 2
    vocab: int = 32000
    beta: float = 0.1
    lr: float = 3e-5
    device: str = "cpu"
    seed: int = 0


def forget_batch(cfg: QuickBenchConfig) -> tuple[Tensor, Tensor]:
    """``(input_ids (B, T), target (B, T))``: target is input shifted by one, prompt masked."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    ids = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq_len + 1), generator=g)
    target = ids[:, 1:].clone()
    target[:, : cfg.seq_len // 4] = -100
    return ids[:, :-1].to(cfg.device), target.to(cfg.device)


def npo_loss(model, impl: str, ids: Tensor, target: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    hidden = model.model(input_ids=ids).last_hidden_state
    module = functional if impl == "fused" else reference
    return module.npo_loss(hidden, model.lm_head.weight, target, ref_logps, beta=beta)


def run(cfg: QuickBenchConfig) -> dict:
    """Runs the demo; returns ``{impl: {"losses", "ms_per_step", "peak_extra_mb"}}``."""
    device = torch.device(cfg.device)
    base = tiny_llama(
        cfg.vocab,
        hidden=cfg.hidden,
        layers=cfg.layers,
        heads=max(1, cfg.hidden // 64),
        max_positions=cfg.seq_len,
        seed=cfg.seed,
    ).to(cfg.device)
    ids, target = forget_batch(cfg)
    with torch.no_grad():
        ref_logps, _ = functional.sequence_logprobs(
            base.model(input_ids=ids).last_hidden_state, base.lm_head.weight, target
        )
    results = {}
    for impl in ("fused", "reference"):
        model = copy.deepcopy(base).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        losses: list[float] = []

        def step(model=model, opt=opt, impl=impl, losses=losses) -> None:
            opt.zero_grad(set_to_none=True)
            loss = npo_loss(model, impl, ids, target, ref_logps, cfg.beta)
            loss.backward()
            opt.step()
            losses.append(loss.item())

        step()  # creates the optimiser state, so the measured steps are steady-state
        peak = peak_extra_mb(step, device)
        ms = median_ms(step, device, repeats=max(1, cfg.steps - 2), warmup=0)
        results[impl] = {"losses": losses, "ms_per_step": ms, "peak_extra_mb": peak}
        del model, opt
    return results


def report(cfg: QuickBenchConfig, results: dict) -> str:
    n_tokens = cfg.batch * (cfg.seq_len - cfg.seq_len // 4)
    lines = [
        f"unlearnx bench: NPO (beta={cfg.beta}) on a random Llama ({cfg.layers} layers, D={cfg.hidden}, "
        f"V={cfg.vocab}), {cfg.batch} x {cfg.seq_len} tokens ({n_tokens} answer tokens), fp32, {cfg.device}",
        "",
        "step   loss fused    loss reference",
    ]
    fused, ref = results["fused"]["losses"], results["reference"]["losses"]
    lines += [f"{i:>4}   {a:11.6f}   {b:15.6f}" for i, (a, b) in enumerate(zip(fused, ref, strict=True))]
    lines += ["", "impl        ms/step   peak extra MiB (one training step)"]
    for impl in ("fused", "reference"):
        r = results[impl]
        lines.append(f"{impl:<10} {r['ms_per_step']:8.0f}   {r['peak_extra_mb']:8.0f}")
    f, r = results["fused"], results["reference"]
    lines += [
        "",
        f"fused / reference: time {f['ms_per_step'] / r['ms_per_step']:.2f}x, "
        f"peak extra memory {f['peak_extra_mb'] / r['peak_extra_mb']:.2f}x; "
        f"largest loss difference {max(abs(a - b) for a, b in zip(fused, ref, strict=True)):.2e}",
    ]
    return "\n".join(lines)
