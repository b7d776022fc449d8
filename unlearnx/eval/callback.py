"""Evaluation during training: a Hugging Face ``TrainerCallback`` running the TOFU or MUSE
metrics every N optimiser steps and/or every epoch, logging a history and keeping the best
checkpoint.

In multi-process runs (DDP) the main process evaluates while the others wait at a barrier,
so all ranks leave the callback together. Sharded parameters (FSDP, ZeRO-3) would need every
rank to take part in the forward passes; the callback refuses such models rather than hang.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from transformers import TrainerCallback

from unlearnx.eval import report, tofu
from unlearnx.integrations.transformers import is_sharded

PLOT_KEYS = {
    "tofu": ("model_utility", "forget_Q_A_Prob"),
    "muse": ("retain_knowmem_ROUGE", "forget_knowmem_ROUGE", "forget_verbmem_ROUGE"),
}
"""The summary keys plotted by default for each benchmark."""


def flatten_summary(summary: Mapping, prefix: str = "") -> dict[str, float]:
    """The numbers of a nested summary under ``/``-joined keys (``{"forget": {"prob": p}}`` ->
    ``{"forget/prob": p}``)."""
    out = {}
    for k, v in summary.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_summary(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


class EvalCallback(TrainerCallback):
    """Runs ``evaluate(model) -> summary`` (a nested dict of numbers) during training.

    Writes ``out_dir/eval_history.jsonl`` (one flattened summary per evaluation, with ``step``
    and ``epoch``) and ``out_dir/eval_history.png``; saves the model and tokenizer to
    ``out_dir/best`` whenever ``criterion`` (a summary key such as ``"model_utility"``,
    ``"forget_quality"`` or ``"forget_Q_A_Prob"``) improves in direction ``mode``. The save goes to a
    temporary folder first and is then renamed over the old one, so a kill never leaves a
    half-written ``best``.
    """

    def __init__(
        self,
        evaluate: Callable[[object], Mapping],
        tokenizer,
        out_dir: str | Path,
        *,
        every_steps: int | None = None,
        every_epochs: int | None = None,
        criterion: str = "model_utility",
        mode: str = "max",
        history_plot: tuple[str, ...] = PLOT_KEYS["tofu"],
    ) -> None:
        if every_steps is None and every_epochs is None:
            raise ValueError("every_steps, every_epochs: set at least one")
        for name, v in (("every_steps", every_steps), ("every_epochs", every_epochs)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode: expected 'max' or 'min', got {mode!r}")
        self.evaluate, self.tokenizer, self.out_dir = evaluate, tokenizer, Path(out_dir)
        self.every_steps, self.every_epochs = every_steps, every_epochs
        self.criterion, self.mode, self.history_plot = criterion, mode, history_plot
        self.best: float | None = None
        self.history: list[dict] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            self._evaluate(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.every_epochs and round(state.epoch or 0) % self.every_epochs == 0:
            self._evaluate(state, model)

    def _evaluate(self, state, model) -> None:
        if model is None:
            raise ValueError("model: the Trainer passed no model to the callback")
        if is_sharded(model):
            raise NotImplementedError(
                f"{type(self).__name__}: sharded models (FSDP, ZeRO-3) are not supported yet"
            )
        if state.is_world_process_zero:
            was_training = model.training
            model.eval()
            summary = self.evaluate(model)
            model.train(was_training)
            record = {"step": state.global_step, "epoch": state.epoch, **flatten_summary(summary)}
            self.history.append(record)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with (self.out_dir / "eval_history.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            report.plot_history(self.history, self.history_plot, self.out_dir / "eval_history.png")
            value = record.get(self.criterion)
            if value is None:
                raise KeyError(
                    f"criterion: {self.criterion!r} is not in the evaluation summary ({sorted(record)})"
                )
            if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
                self.best = value
                self._save_best(model, record)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def _save_best(self, model, record: dict) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".best-", dir=self.out_dir))
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        (tmp / "eval_summary.json").write_text(json.dumps(record, indent=1) + "\n")
        best = self.out_dir / "best"
        old = self.out_dir / ".best-old"
        if best.exists():
            os.replace(best, old)
        os.replace(tmp, best)
        shutil.rmtree(old, ignore_errors=True)


def benchmark_evaluator(
    benchmark: str, tokenizer, data: str | Path, **options
) -> Callable[[object], Mapping]:
    """``model -> summary`` of :func:`unlearnx.eval.tofu.evaluate_tofu` (``data``: the TOFU
    folder) or :func:`unlearnx.eval.muse.evaluate_muse` (``data``: a MUSE hub id or folder;
    ``template``: a preset name, default ``auto``); ``options`` go to that function."""
    if benchmark == "tofu":
        return lambda model: tofu.evaluate_tofu(model, tokenizer, Path(data), **options)[0]
    if benchmark == "muse":
        from unlearnx.data.template import template_for
        from unlearnx.eval import muse

        template = template_for(tokenizer, options.pop("template", "auto"))
        return lambda model: muse.evaluate_muse(model, tokenizer, data, template=template, **options)[0]
    raise ValueError(f"benchmark: expected tofu or muse, got {benchmark!r}")


def _callback_options(options: dict) -> dict:
    """Pops :class:`EvalCallback`'s own settings out of ``options``; the rest go to the evaluation."""
    keys = ("every_steps", "every_epochs", "criterion", "mode", "history_plot")
    return {k: options.pop(k) for k in keys if k in options}


class TofuEvalCallback(EvalCallback):
    """:class:`EvalCallback` over :func:`unlearnx.eval.tofu.evaluate_tofu` on ``data_dir``
    (the other ``options`` go to it); criteria are OU's metric names such as
    ``"model_utility"`` or ``"forget_Q_A_Prob"``."""

    def __init__(self, tokenizer, data_dir: str | Path, out_dir: str | Path, **options) -> None:
        own = _callback_options(options)
        super().__init__(
            benchmark_evaluator("tofu", tokenizer, data_dir, **options), tokenizer, out_dir, **own
        )


class MuseEvalCallback(EvalCallback):
    """:class:`EvalCallback` over :func:`unlearnx.eval.muse.evaluate_muse` on the MUSE data at
    ``source``; criteria are OU's metric names (default ``retain_knowmem_ROUGE``, max)."""

    def __init__(self, tokenizer, source: str | Path, out_dir: str | Path, **options) -> None:
        options.setdefault("criterion", "retain_knowmem_ROUGE")
        options.setdefault("history_plot", PLOT_KEYS["muse"])
        own = _callback_options(options)
        super().__init__(benchmark_evaluator("muse", tokenizer, source, **options), tokenizer, out_dir, **own)
