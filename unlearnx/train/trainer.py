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
from unlearnx.train.methods import DUAL_UPDATES, Method, retain_term


class PrimalDual(TrainerCallback, ExportableState):
    """The dual variable of PDU's retain constraint, as open-unlearning's PDU trainer (written
    by the paper's authors) updates it: ``lambda <- max(0, lambda + dual_step_size (L_r -
    retain_loss_eps)``, starting from ``alpha``, once updates are enabled at the end of epoch
    ``dual_warmup_epochs`` (from the start when 0). ``update_upon``:

    - ``"step"`` (OU's default): after every micro-batch, on that rank's retain loss; the
      loss of that micro-batch used lambda before the update;
    - ``"epoch"``: after each epoch, on the mean retain loss over the training data in eval
      mode (the trainer's :meth:`UnlearnTrainer.mean_retain_loss`);
    - ``"optimizer_step"`` (unlearnx's variant): once per optimiser step, on the retain loss
      averaged over the step's micro-batches and all-reduced across ranks, so every rank
      holds the same lambda.

    ``primal_dual=False`` keeps lambda at ``alpha`` (OU's linear scalarisation)."""

    def __init__(
        self,
        alpha: float,
        dual_step_size: float,
        retain_loss_eps: float,
        dual_warmup_epochs: float = 0,
        update_upon: str = "step",
        primal_dual: bool = True,
    ) -> None:
        if update_upon not in DUAL_UPDATES:
            raise ValueError(f"dual_update_upon: expected one of {DUAL_UPDATES}, got {update_upon!r}")
        self.lam, self.step_size, self.eps = float(alpha), float(dual_step_size), float(retain_loss_eps)
        self.warmup_epochs = float(dual_warmup_epochs)
        self.update_upon, self.primal_dual = update_upon, primal_dual
        self.can_update = self.warmup_epochs == 0
        self._sum, self._count = 0.0, 0

    @classmethod
    def from_hparams(cls, hp: dict) -> PrimalDual:
        """From PDU's resolved hyper-parameters (OU's names)."""
        return cls(
            hp["alpha"],
            hp["dual_step_size"],
            hp["retain_loss_eps"],
            hp["dual_warmup_epochs"],
            hp["dual_update_upon"],
            bool(hp["primal_dual"]),
        )

    def update(self, retain_loss: float) -> None:
        if self.primal_dual and self.can_update:
            self.lam = max(0.0, self.lam + self.step_size * (float(retain_loss) - self.eps))

    def observe(self, retain_loss: Tensor) -> None:
        """Called with each micro-batch's retain loss, after the loss has used lambda."""
        if self.update_upon == "step":
            self.update(float(retain_loss))
        elif self.update_upon == "optimizer_step":
            self._sum += float(retain_loss)
            self._count += 1

    def state(self) -> dict:
        """Saved in checkpoints, so a resumed run continues with the same lambda."""
        return {
            "args": {
                "alpha": self.lam,
                "dual_step_size": self.step_size,
                "retain_loss_eps": self.eps,
                "dual_warmup_epochs": self.warmup_epochs,
                "update_upon": self.update_upon,
                "primal_dual": self.primal_dual,
            },
            "attributes": {"can_update": self.can_update},
        }

    def on_step_end(self, args, state, control, **kwargs):
        if self.update_upon != "optimizer_step" or self._count == 0:
            return
        mean = torch.tensor([self._sum, float(self._count)], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(mean)
        self._sum, self._count = 0.0, 0
        self.update(float(mean[0] / mean[1]))

    def on_epoch_end(self, args, state, control, **kwargs):
        # state.epoch is fractional; 4.9999999 at the end of epoch 5
        if (state.epoch or 0.0) + 1e-6 >= self.warmup_epochs:
            self.can_update = True


class _EpochDualPass(TrainerCallback):
    """Runs after :class:`PrimalDual` at each epoch end: ``update_upon="epoch"``'s pass over
    the retain data."""

    def __init__(self, trainer: UnlearnTrainer) -> None:
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        dual = self.trainer.dual
        if dual is not None and dual.update_upon == "epoch" and dual.can_update and dual.primal_dual:
            dual.update(self.trainer.mean_retain_loss())
            self.trainer.log({"lambda": dual.lam})


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
    from ``hparams``), or ``gamma * L_f + lambda (L_r - retain_loss_eps)`` when a
    :class:`PrimalDual` is among the callbacks."""

    def __init__(
        self,
        *args,
        method: Method,
        hparams: dict,
        retain: str,
        forget_cache: ReferenceCache | None,
        retain_cache: ReferenceCache | None,
        kl_reduction: str = "batchmean",
        log_name: str = "forget",
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.log_name = log_name  # the logs' name of the first term (finetuning: "answer")
        self.add_callback(_EpochDualPass(self))
        patch_causal_lm(self.model)
        self.method, self.hparams, self.retain = method, hparams, retain
        self.retain_term = None if retain == "none" else retain_term(retain, kl_reduction)
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
        *,
        unshifted: bool = False,
    ) -> Tensor:
        """The term's loss on ``batch`` (``unshifted``: the term sees every position with the
        labels unshifted, see :mod:`unlearnx.train.methods`); with ``logp_out``, also appends
        the batch's mean per-token answer log-prob, forward-only from the same hidden states
        (for the logs)."""
        device = batch["input_ids"].device
        ref = {} if cache is None else cache.batch(batch["index"], batch["input_ids"].shape[1], device)
        ref = ref if unshifted else _shifted(ref)
        hp = self.hparams

        def loss(hidden, weight, target, bias):
            refs = {
                k: v.to(hidden.dtype) if k in _REF_FLOATS and v.dtype != hidden.dtype else v
                for k, v in ref.items()
            }
            if logp_out is not None:
                h, t = (hidden[:, :-1], target[:, 1:]) if unshifted else (hidden, target)
                with torch.no_grad():
                    sums, counts = functional.sequence_logprobs(
                        h.detach(), weight.detach(), t, bias=None if bias is None else bias.detach()
                    )
                logp_out.append(float(sums.sum() / counts.sum().clamp(min=1)))
            return term(hidden, weight, target, bias, refs, hp)

        loss.unshifted = unshifted  # read by the patched forward

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
            model,
            inputs["forget"],
            self.forget_cache,
            self.method.forget,
            forget_logp if logging else None,
            unshifted=self.hparams.get("flatten_positions") == "unshifted",
        )
        logs = {f"{self.log_name}_loss": float(forget.detach())}
        if forget_logp:
            logs[f"{self.log_name}_logp"] = forget_logp[0]
        gamma = self.hparams.get("gamma", 1.0)
        if self.retain == "none":
            loss = gamma * forget
        else:
            if "retain" not in inputs:
                raise ValueError(
                    f"retain: the method uses a {self.retain!r} retain term but no retain set was given"
                )
            retain_logp: list[float] = []
            retain = self._retain_loss(model, inputs["retain"], retain_logp if logging else None)
            logs["retain_loss"] = float(retain.detach())
            if retain_logp:
                logs["retain_logp"] = retain_logp[0]
            dual = self.dual
            if dual is not None:
                loss = gamma * forget + dual.lam * (retain - dual.eps)
                logs["lambda"] = dual.lam
                if self.model.training:
                    dual.observe(retain.detach())
            else:
                loss = gamma * forget + self.hparams.get("alpha", 1.0) * retain
        if self.model.training:
            self._unlearnx_logs = logs
        return (loss, None) if return_outputs else loss

    def _retain_loss(self, model, batch: dict[str, Tensor], logp_out: list | None = None) -> Tensor:
        rt = self.retain_term
        return self._term(model, batch, self.retain_cache, rt.fn, logp_out, unshifted=rt.unshifted)

    @torch.no_grad()
    def mean_retain_loss(self) -> float:
        """The retain loss averaged over the training data's retain batches, in eval mode
        (PDU's ``dual_update_upon="epoch"``, as OU's ``post_epoch_dual_param_update``)."""
        was_training = self.model.training
        self.model.eval()
        total, batches = 0.0, 0
        try:
            for batch in self.get_train_dataloader():
                batch = self._prepare_inputs(batch)
                total += float(self._retain_loss(self.model, batch["retain"]))
                batches += 1
        finally:
            self.model.train(was_training)
        return total / max(batches, 1)

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
