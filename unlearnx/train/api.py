"""``unlearn(...)``: one unlearning job from Python."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset
from transformers import TrainingArguments

from unlearnx.data.template import pad_id as pad_id_of
from unlearnx.integrations.transformers import is_sharded
from unlearnx.train import methods
from unlearnx.train.cache import ReferenceCache
from unlearnx.train.data import PairCollator, PairedDataset, QADataset
from unlearnx.train.methods import Method, resolve, retain_nll
from unlearnx.train.trainer import MetricsJsonl, PairingEpoch, PrimalDual, UnlearnTrainer

CONSTANT_SCHEDULE = {"lr_scheduler": "constant", "warmup_epochs": 0.0, "weight_decay": 0.0, "grad_accum": 1}
"""``UnlearnConfig`` fields for a plain schedule instead of OU's: a constant rate, no warm-up,
weight decay or accumulation (the relearning attack, the demo, quick runs)."""


@dataclass
class UnlearnConfig:
    """Job settings. ``hparams`` override the method's defaults (checked by name);
    ``retain=None`` takes the method's default retain term. The training defaults are
    open-unlearning's TOFU unlearning setup (commit d3d7cf9: ``configs/trainer/finetune.yaml``,
    ``configs/experiment/unlearn/tofu/default.yaml``): batch 8 x 4 accumulation, 10 epochs, lr
    1e-5 on a linear schedule after one warm-up epoch, weight decay 0.01, ``paged_adamw_32bit``
    where bitsandbytes and CUDA exist (``optim="auto"``), bf16 where the GPU has it."""

    method: str = "npo"
    hparams: dict = field(default_factory=dict)
    retain: str | None = None
    learning_rate: float = 1e-5
    # transformers' scheduler names (constant, linear, cosine, ...); warm-up in epochs of the
    # forget set (OU's warmup_epochs) or as a fraction of the steps (one of the two); AdamW's
    # decoupled weight decay; the optimiser by transformers' name, or auto (see the docstring)
    lr_scheduler: str = "linear"
    warmup_epochs: float = 1.0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    optim: str = "auto"
    epochs: float = 10.0
    batch_size: int = 8
    grad_accum: int = 4
    max_length: int = 512
    seed: int = 0
    # retain partner of a forget example: "random" at every access (OU), or "fixed" per example
    retain_pairing: str = "random"
    bf16: bool | None = None  # None: where the GPU supports it
    # the KL retain term: OU's "batchmean" over all B x T positions, or "token_mean" over answers
    kl_reduction: str = "batchmean"
    # prompt template of QA data: auto (see unlearnx.data.template.template_for) or a preset
    template: str = "auto"
    logging_steps: int = 1
    save_steps: int | None = None  # checkpoint every N optimiser steps (resumable)
    # forget/retain answer probabilities before and after, on the first N examples of each (0: off)
    report_examples: int = 200
    max_steps: int | None = None  # overrides epochs
    # sharded training through accelerate, on a multi-GPU launch (torchrun / accelerate launch):
    # FSDP with Trainer's fsdp_config (a dict or a JSON file), or a DeepSpeed config file (ZeRO-3)
    fsdp: bool = False
    fsdp_config: dict | str | None = None
    deepspeed: str | None = None

    def __post_init__(self) -> None:
        if self.warmup_epochs and self.warmup_ratio:
            raise ValueError(
                "warmup_epochs, warmup_ratio: set one of the two (--warmup-ratio needs --warmup-epochs 0)"
            )


def unlearn(
    model,
    tokenizer,
    forget: list[tuple[str, str]] | Dataset,
    retain: list[tuple[str, str]] | Dataset | None,
    config: UnlearnConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    callbacks: list | None = None,
    save_to: str | Path | None = None,
    reference_model=None,
) -> dict:
    """Runs ``config.method`` on ``model`` (trained in place) with the forget (and retain) data:
    QA pairs, or datasets such as ``unlearnx.data.text.TextChunks`` (plain text, MUSE-style).
    Writes ``out_dir/metrics.jsonl`` and, with ``save_steps``, resumable checkpoints under
    ``out_dir/checkpoints`` (``resume=True`` continues from the latest). ``save_to``: a folder
    for the final model and tokenizer, written by the main process alone, atomically; under
    FSDP or ZeRO-3 the full weights are gathered first (the in-memory ``model`` stays sharded).
    Returns ``{"cache_bytes", "reference_model_bytes", "steps", "epochs", "lambda", "report"}``: the
    reference cache's size against what keeping a frozen copy of the model would hold, and what
    was forgotten and kept (:func:`answer_report` of the forget and retain sets before and after).
    ``reference_model``: the model the reference cache is built from (default ``model`` itself,
    before training); sequential requests pass the original model here."""
    method, hp, retain_term = resolve(config.method, config.hparams, config.retain)
    return _run(
        model,
        tokenizer,
        method,
        hp,
        retain_term,
        forget,
        retain,
        config,
        out_dir,
        resume,
        callbacks,
        save_to,
        report=config.report_examples > 0,
        reference_model=reference_model,
    )


def finetune(
    model,
    tokenizer,
    pairs: list[tuple[str, str]] | Dataset,
    config: UnlearnConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    callbacks: list | None = None,
    save_to: str | Path | None = None,
) -> dict:
    """Plain NLL training on QA pairs or a dataset (labels on the answers), through the same
    fused path: OU's finetune experiment (TOFU's target on ``full``, the retain model on
    ``retainXX``; :data:`FINETUNE_DEFAULTS`), the demo's models, relearning attacks. The
    ``method`` and ``hparams`` of ``config`` are ignored; ``resume`` and ``save_to`` as in
    :func:`unlearn`."""
    method = Method(retain_nll, frozenset())
    return _run(
        model,
        tokenizer,
        method,
        {},
        "none",
        pairs,
        None,
        config,
        out_dir,
        resume,
        callbacks,
        save_to,
        report=False,
        log_name="answer",
    )


FINETUNE_DEFAULTS = {"epochs": 5.0}
"""OU's ``configs/experiment/finetune/tofu/default.yaml`` where it differs from the unlearning
defaults (the rest agree: lr 1e-5, batch 8 x 4, linear schedule, one warm-up epoch, weight
decay 0.01, ``paged_adamw_32bit``, bf16)."""


def _dataset(tokenizer, data, max_length: int, template: str = "auto") -> Dataset:
    """QA pairs become a ``QADataset``; a ready dataset (``QADataset``, ``data.text.TextChunks``)
    is used as it is."""
    if isinstance(data, Dataset):
        return data
    if not data:
        raise ValueError("forget: the dataset is empty")
    return QADataset(tokenizer, *map(list, zip(*data, strict=True)), max_length=max_length, template=template)


def _warmup(config: UnlearnConfig, examples: int) -> dict:
    """The warm-up as TrainingArguments take it. ``warmup_epochs`` becomes steps as OU counts
    them: ``int(epochs * examples // (batch * accumulation * processes))``. transformers 5 takes
    a ratio as a float ``warmup_steps`` and has no ``warmup_ratio``; 4.x has ``warmup_ratio``."""
    if config.warmup_epochs:
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        per_step = config.batch_size * config.grad_accum * world
        return {"warmup_steps": int(config.warmup_epochs * examples // per_step)}
    if "warmup_ratio" in inspect.signature(TrainingArguments.__init__).parameters:
        return {"warmup_ratio": config.warmup_ratio}
    return {"warmup_steps": float(config.warmup_ratio)}


def training_precision_and_optimiser(config: UnlearnConfig) -> tuple[bool, str, str]:
    """``(bf16, optim, why)``: the config's, or where it says auto (``bf16=None``,
    ``optim="auto"``) OU's choices where this machine allows them, with the reason."""
    import importlib.util

    cuda = torch.cuda.is_available()
    bf16 = config.bf16 if config.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported())
    optim, why = config.optim, "as configured"
    if optim == "auto":
        if cuda and importlib.util.find_spec("bitsandbytes") is not None:
            optim, why = "paged_adamw_32bit", "open-unlearning's optimiser"
        else:
            optim = "adamw_torch_fused"
            why = "AdamW: paged_adamw_32bit (open-unlearning's) needs bitsandbytes and CUDA"
    return bf16, optim, why


def _run(
    model,
    tokenizer,
    method: Method,
    hp: dict,
    retain_term: str,
    forget,
    retain,
    config: UnlearnConfig,
    out_dir,
    resume: bool,
    callbacks: list | None,
    save_to,
    *,
    report: bool,
    reference_model=None,
    log_name: str = "forget",
) -> dict:
    if retain_term != "none" and (retain is None or len(retain) == 0):
        raise ValueError(
            f"retain: method {config.method!r} with retain term {retain_term!r} needs a retain set"
        )
    out_dir = Path(out_dir)
    pad_id = pad_id_of(tokenizer)  # OU pads with EOS where the tokenizer has no pad token
    forget_ds = _dataset(tokenizer, forget, config.max_length, config.template)
    retain_ds = (
        _dataset(tokenizer, retain, config.max_length, config.template) if retain_term != "none" else None
    )
    dto_options = {k: hp[k] for k in method.dto_options}
    reference = model if reference_model is None else reference_model
    forget_cache = (
        ReferenceCache.build(reference, forget_ds, set(method.needs), pad_id=pad_id, dto_options=dto_options)
        if method.needs
        else None
    )
    rt = None if retain_term == "none" else methods.retain_term(retain_term, config.kl_reduction)
    retain_needs = set(rt.needs) if rt is not None else set()
    retain_cache = (
        # every position up to the longest example: OU's KL also covers a batch's padding
        ReferenceCache.build(reference, retain_ds, retain_needs, pad_id=pad_id, full_width=rt.unshifted)
        if retain_needs
        else None
    )
    sets = {"forget": (forget_ds, forget_cache), "retain": (retain_ds, retain_cache)}
    sets = {k: v for k, v in sets.items() if v[0] is not None}
    limit = config.report_examples
    # the model's summed log-probs are in the cache already where the method needs them (unless
    # the cache is another model's)
    before = {
        k: answer_report(
            model, d, pad_id, limit, seq_logp=None if c is None or reference_model is not None else c.seq_logp
        )
        for k, (d, c) in sets.items()
        if report
    }
    dual = PrimalDual.from_hparams(hp) if method.dual else None
    bf16, optim, why = training_precision_and_optimiser(config)
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        seed=config.seed,
        bf16=bf16,
        optim=optim,
        remove_unused_columns=False,
        report_to=[],
        logging_steps=config.logging_steps,
        use_cpu=not torch.cuda.is_available(),
        lr_scheduler_type=config.lr_scheduler,
        **_warmup(config, len(forget_ds)),
        weight_decay=config.weight_decay,
        max_steps=config.max_steps or -1,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        restore_callback_states_from_checkpoint=True,
        fsdp=config.fsdp or None,
        fsdp_config=config.fsdp_config,
        deepspeed=config.deepspeed,
    )
    pairs = PairedDataset(forget_ds, retain_ds, config.seed, config.retain_pairing)
    callbacks = [
        MetricsJsonl(out_dir / "metrics.jsonl"),
        PairingEpoch(pairs),
        *([dual] if dual else []),
        *(callbacks or []),
    ]
    trainer = UnlearnTrainer(
        model=model,
        args=args,
        train_dataset=pairs,
        data_collator=PairCollator(pad_id),
        callbacks=callbacks,
        method=method,
        hparams=hp,
        retain=retain_term,
        forget_cache=forget_cache,
        retain_cache=retain_cache,
        kl_reduction=config.kl_reduction,
        log_name=log_name,
    )
    _check_sharding(trainer, config)
    has_checkpoint = resume and any((out_dir / "checkpoints").glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if has_checkpoint else None)
    summary = None
    if report:
        # sharded parameters cannot be read outside the training forward
        sharded = is_sharded(trainer.model)
        summary = {
            k: {"before": before[k], "after": None if sharded else answer_report(model, d, pad_id, limit)}
            for k, (d, _) in sets.items()
        }
    if save_to is not None:
        _save_final(trainer, tokenizer, Path(save_to))
    cache_bytes = sum(c.nbytes() for c in (forget_cache, retain_cache) if c is not None)
    return {
        "cache_bytes": cache_bytes,
        "reference_model_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "lambda": None if trainer.dual is None else trainer.dual.lam,
        "report": summary,
        "optimiser": {"optim": optim, "bf16": bf16, "why": why, "warmup_steps": args.warmup_steps},
    }


def answer_report(
    model, dataset: Dataset, pad_id: int, limit: int, *, seq_logp: Tensor | None = None
) -> dict:
    """``{"examples", "prob", "logp_per_token"}`` on the first ``limit`` examples of ``dataset``
    (QA pairs or text chunks): TOFU's probability, the mean over examples of
    ``exp(S / |y|)`` (``S`` the summed target log-prob, ``|y|`` its token count), and the mean
    of ``S / |y|``. Forward-only through the fused path, unless ``seq_logp (len(dataset),)``
    already holds ``model``'s ``S`` (a reference cache's)."""
    subset = Subset(dataset, range(min(limit, len(dataset))))
    if seq_logp is None:
        sums = ReferenceCache.build(model, subset, {"seq_logp"}, pad_id=pad_id).seq_logp
    else:
        sums = seq_logp[: len(subset)]
    counts = torch.tensor([int((subset[i]["labels"][1:] != -100).sum()) for i in range(len(subset))])
    per = sums / counts.clamp(min=1)
    return {"examples": len(subset), "prob": float(per.exp().mean()), "logp_per_token": float(per.mean())}


def _check_sharding(trainer, config: UnlearnConfig) -> None:
    """accelerate turns FSDP on only for multi-GPU launches and silently trains unsharded
    otherwise; a job that asked for sharding must not run without it."""
    for flag, wanted, enabled in (
        ("fsdp", config.fsdp, trainer.is_fsdp_enabled),
        ("deepspeed", config.deepspeed, trainer.is_deepspeed_enabled),
    ):
        if wanted and not enabled:
            raise ValueError(
                f"{flag}: requested, but accelerate did not enable it; it needs a multi-GPU launch "
                "(torchrun or accelerate launch with CUDA devices)"
            )


def _save_final(trainer, tokenizer, path: Path) -> None:
    state_dict = None
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # a collective: every rank takes part, the main process receives the full weights
        wrapped = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
        state_dict = trainer.accelerator.get_state_dict(wrapped)
    if trainer.args.should_save:
        save_model(trainer.accelerator.unwrap_model(trainer.model), tokenizer, path, state_dict=state_dict)
    trainer.accelerator.wait_for_everyone()


def save_model(model, tokenizer, path: str | Path, *, state_dict: dict | None = None) -> Path:
    """Saves model and tokenizer to ``path`` atomically: a temporary sibling folder first, then
    renamed into place, so a kill during the save leaves either the old or the new folder.
    ``state_dict``: weights to write instead of ``model``'s own (gathered from shards)."""
    import os
    import shutil
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    old = path.with_name(f".{path.name}-old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path
