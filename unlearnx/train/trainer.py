"""The unlearning loop on Hugging Face ``Trainer``: forget + retain terms on the fused path,
the reference cache instead of a second model, and the primal-dual retain constraint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from unlearnx import functional
from unlearnx.integrations.transformers import patch_causal_lm
from unlearnx.train.cache import ReferenceCache
from unlearnx.train.methods import RETAIN_TERMS, Method


class PrimalDual(TrainerCallback, ExportableState):
    """``lambda <- max(0, lambda + eta (L_r - eps))`` once per optimiser step, on the retain
    loss averaged over the step's micro-batches and all-reduced across ranks, after
    ``warmup_steps``. ``per_micro_batch=True`` is the authors' variant (open-unlearning PDU):
    an update after every micro-batch, on that rank's loss alone."""

    def __init__(
        self, lambda0: float, eta: float, eps: float, warmup_steps: int = 0, per_micro_batch: bool = False
    ) -> None:
        self.lam, self.eta, self.eps = float(lambda0), float(eta), float(eps)
        self.warmup_steps, self.per_micro_batch = int(warmup_steps), per_micro_batch
        self._sum, self._count, self.step = 0.0, 0, 0

    def observe(self, retain_loss: Tensor) -> None:
        if self.per_micro_batch:
            if self.step >= self.warmup_steps:
                self.lam = max(0.0, self.lam + self.eta * (float(retain_loss) - self.eps))
            return
        self._sum += float(retain_loss)
        self._count += 1

    def state(self) -> dict:
        """Saved in checkpoints, so a resumed run continues with the same lambda."""
        return {
            "args": {
                "lambda0": self.lam,
                "eta": self.eta,
                "eps": self.eps,
                "warmup_steps": self.warmup_steps,
                "per_micro_batch": self.per_micro_batch,
            },
            "attributes": {"lam": self.lam, "step": self.step},
        }

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        if self.per_micro_batch or self._count == 0:
            return
        mean = torch.tensor([self._sum, float(self._count)], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(mean)
        self._sum, self._count = 0.0, 0
        if state.global_step > self.warmup_steps:
            self.lam = max(0.0, self.lam + self.eta * (float(mean[0] / mean[1]) - self.eps))


class PairingEpoch(TrainerCallback):
    """Tells a ``PairedDataset`` which epoch starts, so random retain pairs are fresh per epoch
    and the same after a resume (the restored ``state.epoch`` is mid-epoch there)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch accumulates fractions of an epoch: 0.9999999 at the start of epoch 1
        self.dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))


class MetricsJsonl(TrainerCallback):
    """Appends every log record (losses, lambda, step) to ``path`` as JSON Lines (main process)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


# cached reference tensors that meet the policy's hidden states in a kernel (same dtype needed)
_REF_FLOATS = ("hidden", "head_weight", "head_bias")


def _shifted(ref: dict[str, Tensor]) -> dict[str, Tensor]:
    """Cache entries aligned with positions, shifted like the patched forward shifts hidden/labels."""
    out = dict(ref)
    if "hidden" in out:
        out["hidden"] = out["hidden"][:, :-1]
    if "dto_mask" in out:
        out["dto_mask"] = out["dto_mask"][:, 1:]
    return out


class UnlearnTrainer(Trainer):
    """``Trainer`` whose batches are ``{"forget": ..., "retain": ...}`` (see
    ``train.data.PairCollator``) and whose loss is ``gamma * L_f + alpha * L_r`` (OU's names,
    from ``hparams``), or ``gamma * L_f + lambda (L_r - eps)`` when a :class:`PrimalDual` is
    among the callbacks."""

    def __init__(
        self,
        *args,
        method: Method,
        hparams: dict,
        retain: str,
        forget_cache: ReferenceCache | None,
        retain_cache: ReferenceCache | None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        patch_causal_lm(self.model)
        self.method, self.hparams, self.retain = method, hparams, retain
        self.forget_cache, self.retain_cache = forget_cache, retain_cache

    @property
    def dual(self) -> PrimalDual | None:
        # looked up each time: resuming from a checkpoint replaces the callback with a restored copy
        return next((c for c in self.callback_handler.callbacks if isinstance(c, PrimalDual)), None)

    def _term(
        self,
        model,
        batch: dict[str, Tensor],
        cache: ReferenceCache | None,
        term,
        logp_out: list | None = None,
    ) -> Tensor:
        """The term's loss on ``batch``; with ``logp_out``, also appends the batch's mean
        per-token answer log-prob, forward-only from the same hidden states (for the logs)."""
        device = batch["input_ids"].device
        ref = (
            {}
            if cache is None
            else _shifted(cache.batch(batch["index"], batch["input_ids"].shape[1], device))
        )
        hp = self.hparams

        def loss(hidden, weight, target, bias):
            refs = {
                k: v.to(hidden.dtype) if k in _REF_FLOATS and v.dtype != hidden.dtype else v
                for k, v in ref.items()
            }
            if logp_out is not None:
                with torch.no_grad():
                    sums, counts = functional.sequence_logprobs(
                        hidden.detach(), weight.detach(), target, bias=None if bias is None else bias.detach()
                    )
                logp_out.append(float(sums.sum() / counts.sum().clamp(min=1)))
            return term(hidden, weight, target, bias, refs, hp)

        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            unlearnx_loss=loss,
        )
        return out.loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # log-probs for the logs only on the micro-batches of a logging step (an extra
        # forward-only pass of the head, 2·N·D·V FLOPs)
        logging = self.model.training and (self.state.global_step + 1) % max(1, self.args.logging_steps) == 0
        forget_logp: list[float] = []
        forget = self._term(
            model, inputs["forget"], self.forget_cache, self.method.forget, forget_logp if logging else None
        )
        logs = {"forget_loss": float(forget.detach())}
        if forget_logp:
            logs["forget_logp"] = forget_logp[0]
        gamma = self.hparams.get("gamma", 1.0)
        if self.retain == "none":
            loss = gamma * forget
        else:
            if "retain" not in inputs:
                raise ValueError(
                    f"retain: the method uses a {self.retain!r} retain term but no retain set was given"
                )
            term, _ = RETAIN_TERMS[self.retain]
            retain_logp: list[float] = []
            retain = self._term(
                model, inputs["retain"], self.retain_cache, term, retain_logp if logging else None
            )
            logs["retain_loss"] = float(retain.detach())
            if retain_logp:
                logs["retain_logp"] = retain_logp[0]
            dual = self.dual
            if dual is not None:
                dual.observe(retain.detach())
                loss = gamma * forget + dual.lam * (retain - dual.eps)
                logs["lambda"] = dual.lam
            else:
                loss = gamma * forget + self.hparams.get("alpha", 1.0) * retain
        if self.model.training:
            self._unlearnx_logs = logs
        return (loss, None) if return_outputs else loss

    def _save_checkpoint(self, model, trial) -> None:
        """Atomic checkpoints: the Trainer writes ``checkpoint-N`` into a staging folder, which
        is then renamed into place, so a kill during a save leaves the previous checkpoints
        intact and no half-written one for ``resume`` to pick up."""
        import os
        import shutil

        final_dir = self.args.output_dir
        staging = os.path.join(final_dir, ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        self.args.output_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = final_dir
        if self.args.should_save:
            for name in os.listdir(staging):
                target = os.path.join(final_dir, name)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(os.path.join(staging, name), target)
            shutil.rmtree(staging, ignore_errors=True)

    def log(self, logs: dict, *args, **kwargs) -> None:
        logs = {**getattr(self, "_unlearnx_logs", {}), **logs}
        super().log(logs, *args, **kwargs)
