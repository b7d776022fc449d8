"""Relearning attacks: how much of what a model forgot comes back after a little fine-tuning on
part of the forget set (the robustness check of SimNPO and of "Jogging the memory of unlearned
LLMs" (Hu et al., 2024)).

:func:`relearn` fine-tunes a model (NLL on the answers, through the fused path) on a random subset
of the forget set, and measures TOFU's answer probability on that subset and on the rest of the
forget set before training and every ``eval_every`` steps. The rest is the interesting part: it
was never trained on, so what returns there was suppressed, not removed. Run it on the unlearned
models and on the original one with the same ``seed``: they relearn the same subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset
from transformers import TrainerCallback

from unlearnx.data import template
from unlearnx.train.api import CONSTANT_SCHEDULE, UnlearnConfig, _dataset, answer_report, finetune


@dataclass
class RelearnConfig:
    """``subset``: examples relearned, a count (int >= 1) or a fraction of the forget set in
    (0, 1); ``steps`` optimiser steps of AdamW at ``learning_rate`` (constant), batches of
    ``batch_size``; the forget metrics at step 0 and every ``eval_every`` steps (and the last)."""

    subset: int | float = 0.1
    steps: int = 20
    eval_every: int = 5
    learning_rate: float = 1e-5
    batch_size: int = 4
    max_length: int = 512
    seed: int = 0

    def check(self, n_forget: int) -> int:
        """The subset size for a forget set of ``n_forget`` examples; ValueError naming the bad field."""
        s = self.subset
        if isinstance(s, bool) or not isinstance(s, int | float):
            raise ValueError(f"subset: expected a count or a fraction, got {s!r}")
        size = s if isinstance(s, int) else max(1, round(s * n_forget))
        if isinstance(s, float) and not 0 < s < 1:
            raise ValueError(f"subset: a fraction must be in (0, 1), got {s!r}")
        if not 1 <= size < n_forget:
            raise ValueError(
                f"subset: {size} examples of a forget set of {n_forget}; the attack needs at least one "
                "example to relearn and one left out"
            )
        for name in ("steps", "eval_every", "batch_size", "max_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if not (isinstance(self.learning_rate, int | float) and self.learning_rate > 0):
            raise ValueError(f"learning_rate: expected a positive number, got {self.learning_rate!r}")
        return size


def relearn_split(n_forget: int, config: RelearnConfig) -> tuple[list[int], list[int]]:
    """(relearned, held-out) indices of the forget set: a random subset drawn from ``seed``."""
    size = config.check(n_forget)
    order = torch.randperm(n_forget, generator=torch.Generator().manual_seed(config.seed)).tolist()
    return sorted(order[:size]), sorted(order[size:])


class _ForgetProbe(TrainerCallback):
    def __init__(self, sets: dict, pad_id: int, every: int, history: list) -> None:
        self.sets, self.pad_id, self.every, self.history = sets, pad_id, every, history

    def _probe(self, step: int, model) -> None:
        record = {"step": step}
        for name, ds in self.sets.items():
            record[name] = answer_report(model, ds, self.pad_id, len(ds))
        self.history.append(record)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._probe(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._probe(state.global_step, model)


def relearn(model, tokenizer, forget, config: RelearnConfig, out_dir: str | Path) -> dict:
    """Runs the attack on ``model`` (trained in place). ``forget``: QA pairs or a dataset (as for
    ``unlearn``). Returns ``{"relearned": indices, "held_out": indices, "history": [{"step",
    "relearned": report, "held_out": report}]}`` with :func:`~unlearnx.train.api.answer_report`'s
    ``{"examples", "prob", "logp_per_token"}``."""
    data = _dataset(tokenizer, forget, config.max_length)
    relearned, held_out = relearn_split(len(data), config)
    sets = {"relearned": Subset(data, relearned), "held_out": Subset(data, held_out)}
    history: list[dict] = []
    pad_id = template.pad_id(tokenizer)
    # N optimiser steps at a constant rate on the subset: the attack the papers describe
    train = UnlearnConfig(
        **CONSTANT_SCHEDULE,
        learning_rate=config.learning_rate,
        max_steps=config.steps,
        batch_size=config.batch_size,
        max_length=config.max_length,
        seed=config.seed,
        report_examples=0,
    )
    finetune(
        model,
        tokenizer,
        sets["relearned"],
        train,
        out_dir,
        callbacks=[_ForgetProbe(sets, pad_id, config.eval_every, history)],
    )
    return {"relearned": relearned, "held_out": held_out, "history": history}


def relearn_table(results: dict[str, dict]) -> str:
    """Markdown: per model, the held-out and relearned answer probability at each probed step."""
    steps = sorted({h["step"] for r in results.values() for h in r["history"]})
    head = "| model | part | " + " | ".join(f"step {s}" for s in steps) + " |"
    lines = [head, "|---|---|" + "---|" * len(steps)]
    for name, r in results.items():
        by_step = {h["step"]: h for h in r["history"]}
        for part in ("held_out", "relearned"):
            cells = [f"{by_step[s][part]['prob']:.4f}" if s in by_step else "" for s in steps]
            lines.append(f"| {name} | {part.replace('_', '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_relearn(results: dict[str, dict], path: str | Path) -> Path:
    """Held-out forget probability against relearning steps, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, r in results.items():
        ax.plot(
            [h["step"] for h in r["history"]], [h["held_out"]["prob"] for h in r["history"]], "o-", label=name
        )
    ax.set_xlabel("relearning steps")
    ax.set_ylabel("forget prob (held-out part)")
    ax.set_title("relearning attack")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
