"""``unlearn(...)``: one unlearning job from Python."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainingArguments

from unlearnx.train.cache import ReferenceCache
from unlearnx.train.data import PairCollator, PairedDataset, QADataset
from unlearnx.train.methods import RETAIN_TERMS, resolve
from unlearnx.train.trainer import MetricsJsonl, PrimalDual, UnlearnTrainer


@dataclass
class UnlearnConfig:
    """Job settings. ``hparams`` override the method's defaults (checked by name);
    ``retain=None`` takes the method's default retain term."""

    method: str = "npo"
    hparams: dict = field(default_factory=dict)
    retain: str | None = None
    forget_weight: float = 1.0
    retain_weight: float = 1.0
    learning_rate: float = 1e-5
    epochs: float = 5.0
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    seed: int = 0
    bf16: bool = False
    dual_per_micro_batch: bool = False
    logging_steps: int = 1


def unlearn(
    model,
    tokenizer,
    forget: list[tuple[str, str]],
    retain: list[tuple[str, str]] | None,
    config: UnlearnConfig,
    out_dir: str | Path,
) -> dict:
    """Runs ``config.method`` on ``model`` (trained in place) with the forget (and retain) QA
    pairs; writes ``out_dir/metrics.jsonl`` and returns ``{"cache_bytes", "steps", "lambda"}``."""
    method, hp, retain_term = resolve(config.method, config.hparams, config.retain)
    if retain_term != "none" and not retain:
        raise ValueError(
            f"retain: method {config.method!r} with retain term {retain_term!r} needs a retain set"
        )
    out_dir = Path(out_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    forget_ds = QADataset(tokenizer, *map(list, zip(*forget, strict=True)), max_length=config.max_length)
    retain_ds = (
        QADataset(tokenizer, *map(list, zip(*retain, strict=True)), max_length=config.max_length)
        if retain_term != "none"
        else None
    )
    dto_options = {k: hp[k] for k in method.dto_options}
    forget_cache = (
        ReferenceCache.build(model, forget_ds, set(method.needs), pad_id=pad_id, dto_options=dto_options)
        if method.needs
        else None
    )
    retain_needs = set(RETAIN_TERMS[retain_term][1]) if retain_term != "none" else set()
    retain_cache = (
        ReferenceCache.build(model, retain_ds, retain_needs, pad_id=pad_id) if retain_needs else None
    )
    dual = (
        PrimalDual(hp["lambda0"], hp["eta"], hp["eps"], hp["warmup_steps"], config.dual_per_micro_batch)
        if method.dual
        else None
    )
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        seed=config.seed,
        bf16=config.bf16,
        remove_unused_columns=False,
        report_to=[],
        save_strategy="no",
        logging_steps=config.logging_steps,
        use_cpu=not torch.cuda.is_available(),
        lr_scheduler_type="constant",
        weight_decay=0.0,
    )
    callbacks = [MetricsJsonl(out_dir / "metrics.jsonl"), *([dual] if dual else [])]
    trainer = UnlearnTrainer(
        model=model,
        args=args,
        train_dataset=PairedDataset(forget_ds, retain_ds, config.seed),
        data_collator=PairCollator(pad_id),
        callbacks=callbacks,
        method=method,
        hparams=hp,
        retain=retain_term,
        forget_cache=forget_cache,
        retain_cache=retain_cache,
        forget_weight=config.forget_weight,
        retain_weight=config.retain_weight,
        dual=dual,
    )
    trainer.train()
    cache_bytes = sum(c.nbytes() for c in (forget_cache, retain_cache) if c is not None)
    return {
        "cache_bytes": cache_bytes,
        "steps": trainer.state.global_step,
        "lambda": None if dual is None else dual.lam,
    }
