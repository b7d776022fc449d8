"""``unlearnx unlearn``: argument parsing, config files and validation before any model loads."""

from __future__ import annotations

import argparse
import json
import tomllib
from dataclasses import fields
from pathlib import Path

from unlearnx.data.template import TEMPLATES, template_for
from unlearnx.models import MODEL_HELP, check_model, load_pretrained
from unlearnx.train.api import FINETUNE_DEFAULTS, UnlearnConfig
from unlearnx.train.data import PAIRINGS
from unlearnx.train.methods import KL_REDUCTIONS, METHODS, resolve

CONFIG_FIELDS = {f.name for f in fields(UnlearnConfig)}

LR_SCHEDULERS = ["constant", "constant_with_warmup", "linear", "cosine", "polynomial"]
FILE_KEYS = {
    "model",
    "forget",
    "retain",
    "out",
    "device",
    "resume",
    "requests",
    "request_mode",
    "request_reference",
}
LORA_KEYS = {"lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"}
EVAL_KEYS = {"eval", "eval_every", "eval_data", "eval_split", "eval_limit", "eval_criterion", "eval_mode"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "unlearn",
        help="run an unlearning method on a Hugging Face causal LM",
        description="Flags override --config (JSON or TOML with the same names, hparams as a "
        "table), which overrides the method's defaults.",
    )
    p.add_argument("--model", type=Path, help=MODEL_HELP)
    p.add_argument("--method", choices=sorted(METHODS), help="unlearning method (default npo)")
    p.add_argument(
        "--forget",
        type=Path,
        help="forget set: JSON Lines of question/answer; a Hugging Face dataset (hf:ID[:CONFIG[:SPLIT]] or a "
        "save_to_disk folder); or plain text (.txt file or folder of them, chunked into --max-length tokens)",
    )
    p.add_argument(
        "--requests",
        help="sequential unlearning: comma-separated forget sets (each in a --forget format), unlearned "
        "one after another from the previous result, measured after each; instead of --forget",
    )
    p.add_argument(
        "--request-mode",
        dest="request_mode",
        choices=["sequential", "growing"],
        help="sequential (default): request k alone each time; growing: requests 1..k together",
    )
    p.add_argument(
        "--request-reference",
        dest="request_reference",
        choices=["current", "original"],
        help="reference cache per request from the current model (default, as the papers) or the original",
    )
    p.add_argument("--retain", type=Path, help="retain set, in the same formats as --forget")
    p.add_argument("--out", type=Path, help="output folder: model/, metrics.jsonl, run.json, checkpoints/")
    p.add_argument("--config", type=Path, help="JSON or TOML file of settings")
    p.add_argument(
        "--retain-term",
        dest="retain_term",
        choices=["nll", "kl", "none"],
        help="retain objective (default: the method's)",
    )
    p.add_argument(
        "--hparam",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="method hyper-parameter, repeatable (e.g. --hparam beta=0.1)",
    )
    add_training_flags(p, epochs_help="epochs over the forget set (default 10)")
    p.add_argument(
        "--retain-pairing",
        dest="retain_pairing",
        choices=PAIRINGS,
        help="retain example of each forget example: random, drawn afresh every epoch "
        "(default, as open-unlearning), or fixed for the whole run",
    )
    p.add_argument(
        "--kl-reduction",
        dest="kl_reduction",
        choices=KL_REDUCTIONS,
        help="KL retain term: batchmean over all B x T positions (default, as open-unlearning) or "
        "token_mean over the answer tokens",
    )
    p.add_argument(
        "--report-examples",
        dest="report_examples",
        type=int,
        help="forget/retain answer probability before and after, on the first N examples of each "
        "(default 200; 0 turns the report off)",
    )
    e = p.add_argument_group(
        "evaluation during training",
        "--eval tofu|muse runs the TOFU or MUSE metrics every --eval-every steps (unlearnx.eval.callback): "
        "OUT/eval/eval_history.jsonl and .png, and OUT/eval/best, the best model by --eval-criterion; "
        "with --requests, before the first request and after each (in OUT/requests.*)",
    )
    e.add_argument("--eval", choices=EVAL_BENCHMARKS, help="benchmark to evaluate during training")
    e.add_argument("--eval-every", dest="eval_every", type=int, help="evaluate every N optimiser steps")
    e.add_argument(
        "--eval-data",
        dest="eval_data",
        help="TOFU data folder (the splits' .json files), or MUSE data (hub id or local folder)",
    )
    e.add_argument(
        "--eval-split", dest="eval_split", help="TOFU forget split: forget01, forget05 or forget10 (default)"
    )
    e.add_argument("--eval-limit", dest="eval_limit", type=int, help="examples per split (default: all)")
    e.add_argument(
        "--eval-criterion",
        dest="eval_criterion",
        help="summary key that picks OUT/eval/best (default model_utility for TOFU, e.g. forget_Q_A_Prob; "
        "retain_knowmem_ROUGE for MUSE)",
    )
    e.add_argument(
        "--eval-mode", dest="eval_mode", choices=["max", "min"], help="best is max (default) or min"
    )
    p.add_argument(
        "--fsdp",
        action="store_true",
        default=None,
        help="shard with FSDP (accelerate, FSDP2 by default); needs a multi-GPU launch: torchrun "
        "--nproc-per-node N -m unlearnx.cli unlearn ...",
    )
    p.add_argument(
        "--fsdp-config",
        dest="fsdp_config",
        type=Path,
        help='JSON file of Trainer\'s fsdp_config (e.g. {"transformer_layer_cls_to_wrap": '
        '["LlamaDecoderLayer"]}); with --fsdp',
    )
    p.add_argument(
        "--deepspeed",
        type=Path,
        help="DeepSpeed config JSON file (ZeRO-2/3, offload); needs the deepspeed package and GPUs",
    )
    add_lora_flags(p)


def add_training_flags(p, *, epochs_help: str) -> None:
    """The optimisation flags ``unlearn`` and ``finetune`` share (defaults: open-unlearning's)."""
    p.add_argument("--lr", dest="learning_rate", type=float, help="learning rate (default 1e-5)")
    p.add_argument(
        "--lr-scheduler",
        dest="lr_scheduler",
        choices=LR_SCHEDULERS,
        help="learning-rate schedule (default linear, as open-unlearning)",
    )
    p.add_argument(
        "--warmup-epochs",
        dest="warmup_epochs",
        type=float,
        help="warm-up in epochs (default 1, as open-unlearning; 0 for none)",
    )
    p.add_argument(
        "--warmup-ratio",
        dest="warmup_ratio",
        type=float,
        help="warm-up as a fraction of the steps, instead (needs --warmup-epochs 0)",
    )
    p.add_argument(
        "--weight-decay", dest="weight_decay", type=float, help="AdamW weight decay (default 0.01)"
    )
    p.add_argument(
        "--optim",
        help="transformers optimiser name (default auto: paged_adamw_32bit where bitsandbytes and "
        "CUDA exist, as open-unlearning, else adamw_torch_fused)",
    )
    p.add_argument("--epochs", type=float, help=epochs_help)
    p.add_argument("--max-steps", dest="max_steps", type=int, help="optimiser steps (overrides --epochs)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="examples per device batch (default 8)")
    p.add_argument(
        "--grad-accum", dest="grad_accum", type=int, help="gradient accumulation steps (default 4)"
    )
    p.add_argument("--max-length", dest="max_length", type=int, help="tokens per example (default 512)")
    p.add_argument("--seed", type=int, help="seed for pairing and training (default 0)")
    p.add_argument(
        "--template",
        choices=["auto", *TEMPLATES],
        help="prompt template of QA data (default auto: OU's llama3 preset for a date-stamping chat "
        "template, else the tokenizer's chat template, else Question:/Answer: tags)",
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 mixed precision (default: where the GPU supports it)",
    )
    p.add_argument("--save-steps", dest="save_steps", type=int, help="checkpoint every N steps (resumable)")
    p.add_argument(
        "--resume", action="store_true", default=None, help="continue from the latest checkpoint in --out"
    )
    p.add_argument(
        "--device", help="cpu or cuda (default: this rank's GPU under torchrun, else cuda if available)"
    )


def add_lora_flags(p) -> None:
    lo = p.add_argument_group(
        "LoRA",
        "--lora trains low-rank adapters (peft) instead of the weights; OUT/model is the merged model, "
        "OUT/adapter the adapter alone",
    )
    lo.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters (needs peft)")
    lo.add_argument("--lora-r", dest="lora_r", type=int, help="adapter rank (default 8)")
    lo.add_argument("--lora-alpha", dest="lora_alpha", type=float, help="scaling alpha (default 16)")
    lo.add_argument("--lora-dropout", dest="lora_dropout", type=float, help="adapter dropout (default 0)")
    lo.add_argument(
        "--lora-target-modules",
        dest="lora_target_modules",
        help="comma-separated module names, e.g. q_proj,v_proj (default: all linear layers but the head)",
    )


def _parse_hparam(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ValueError(f"--hparam: expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _read_config(path: Path) -> dict:
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (OSError, ValueError) as err:
        raise ValueError(f"--config: cannot read {path} ({err})") from err
    unknown = set(data) - CONFIG_FIELDS - FILE_KEYS - EVAL_KEYS - LORA_KEYS - {"method", "retain_term"}
    if unknown:
        raise ValueError(f"--config: unknown settings {sorted(unknown)}")
    return data


def _check_data(flag: str, path: Path):
    """QA pairs from JSON Lines or a Hugging Face dataset (``hf:ID...`` or a ``save_to_disk``
    folder), or plain-text documents (a .txt file or a folder of them)."""
    if (
        str(path).startswith("hf:")
        or (path / "dataset_info.json").is_file()
        or (path / "dataset_dict.json").is_file()
    ):
        from unlearnx.data.tofu import load_hf_data

        try:
            return load_hf_data(str(path))
        except (ValueError, OSError, FileNotFoundError) as err:
            raise ValueError(f"{flag}: {err}") from err
    if path.is_dir() or path.suffix == ".txt":
        from unlearnx.data.text import read_documents

        if not path.exists():
            raise ValueError(f"{flag}: no file at {path}")
        try:
            return read_documents(path)
        except ValueError as err:
            raise ValueError(f"{flag}: {err}") from err
    return _check_qa_file(flag, path)


def _check_qa_file(flag: str, path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise ValueError(f"{flag}: no file at {path}")
    pairs = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append((str(row["question"]), str(row["answer"])))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{flag}: line {n} of {path} is not a JSON object with question and answer ({err!r})"
                ) from err
    if not pairs:
        raise ValueError(f"{flag}: {path} has no examples")
    return pairs


def _read_json(flag: str, path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{flag}: cannot read {path} as JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{flag}: {path} holds a JSON {type(data).__name__}, expected an object")
    return data


def _check_sharding_settings(settings: dict) -> None:
    """FSDP and DeepSpeed settings, checked before any model loads."""
    fsdp, fsdp_config, deepspeed = (settings.get(k) for k in ("fsdp", "fsdp_config", "deepspeed"))
    if fsdp_config is not None and not fsdp:
        raise ValueError("--fsdp-config: given without --fsdp")
    if fsdp and deepspeed:
        raise ValueError("--fsdp, --deepspeed: choose one")
    if fsdp_config is not None and not isinstance(fsdp_config, dict):
        settings["fsdp_config"] = _read_json("--fsdp-config", fsdp_config)
    if deepspeed:
        import importlib.util

        _read_json("--deepspeed", deepspeed)
        settings["deepspeed"] = str(deepspeed)
        if importlib.util.find_spec("deepspeed") is None:
            raise ValueError("--deepspeed: the deepspeed package is not installed (pip install deepspeed)")
    if fsdp or deepspeed:
        import torch

        if not torch.cuda.is_available():
            flag = "--fsdp" if fsdp else "--deepspeed"
            raise ValueError(f"{flag}: accelerate shards only across GPUs, and no CUDA device is visible")


def plan(args: argparse.Namespace) -> dict:
    """Everything the job needs, validated; raises ValueError naming the bad setting."""
    settings = _read_config(args.config) if args.config else {}
    for key, value in vars(args).items():
        if key in ("config", "hparam", "command") or value is None:
            continue
        settings[key if key != "retain" else "retain_file"] = value
    if "retain" in settings and "retain_file" not in settings:
        settings["retain_file"] = Path(settings.pop("retain"))
    hparams = dict(settings.pop("hparams", {}))
    for text in args.hparam:
        name, value = _parse_hparam(text)
        hparams[name] = value
    requests = _plan_requests(settings)
    for key in ("model", "out") if requests else ("model", "forget", "out"):
        if key not in settings:
            raise ValueError(f"--{key}: required (flag or config file)")
    model = check_model("--model", Path(settings.pop("model")))
    out = Path(settings.pop("out"))
    method = settings.pop("method", "npo")
    retain_term = settings.pop("retain_term", None)
    _, _, retain_term = resolve(method, hparams, retain_term)
    forget = requests["sets"] if requests else _check_data("--forget", Path(settings.pop("forget")))
    retain_path = settings.pop("retain_file", None)
    retain = _check_data("--retain", Path(retain_path)) if retain_path else None
    if retain_term != "none" and retain is None:
        raise ValueError(
            f"--retain: method {method!r} uses a {retain_term!r} retain term and needs a retain set"
        )
    device, resume = settings.pop("device", None), bool(settings.pop("resume", False))
    evaluation = _plan_eval(
        {k: settings.pop(k) for k in list(settings) if k in EVAL_KEYS}, after_requests=bool(requests)
    )
    lora = _plan_lora({k: settings.pop(k) for k in list(settings) if k in LORA_KEYS})
    if requests and resume:
        raise ValueError("--resume: not with --requests (yet)")
    _check_sharding_settings(settings)
    config = UnlearnConfig(method=method, hparams=hparams, retain=retain_term, **settings)
    check_config(config)
    return {
        "model": model,
        "out": out,
        "forget": forget,
        "retain": retain,
        "config": config,
        "device": device,
        "resume": resume,
        "eval": evaluation,
        "requests": requests,
        "lora": lora,
    }


def check_config(config: UnlearnConfig) -> None:
    """Raises ValueError naming the flag of the first bad training setting."""
    if not (isinstance(config.report_examples, int) and config.report_examples >= 0):
        raise ValueError(f"--report-examples: expected an int >= 0, got {config.report_examples!r}")
    if config.retain_pairing not in PAIRINGS:
        raise ValueError(f"--retain-pairing: expected one of {PAIRINGS}, got {config.retain_pairing!r}")
    if config.template != "auto" and config.template not in TEMPLATES:
        raise ValueError(f"--template: expected auto or one of {sorted(TEMPLATES)}, got {config.template!r}")
    if config.kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"--kl-reduction: expected one of {KL_REDUCTIONS}, got {config.kl_reduction!r}")
    if config.lr_scheduler not in LR_SCHEDULERS:
        raise ValueError(f"--lr-scheduler: expected one of {LR_SCHEDULERS}, got {config.lr_scheduler!r}")
    if not (isinstance(config.warmup_ratio, int | float) and 0 <= config.warmup_ratio < 1):
        raise ValueError(f"--warmup-ratio: expected a number in [0, 1), got {config.warmup_ratio!r}")
    if not (isinstance(config.warmup_epochs, int | float) and config.warmup_epochs >= 0):
        raise ValueError(f"--warmup-epochs: expected a number >= 0, got {config.warmup_epochs!r}")
    from transformers.training_args import OptimizerNames

    optims = sorted(o.value for o in OptimizerNames)
    if config.optim != "auto" and config.optim not in optims:
        raise ValueError(f"--optim: expected auto or one of transformers' {optims}, got {config.optim!r}")
    if not (isinstance(config.weight_decay, int | float) and config.weight_decay >= 0):
        raise ValueError(f"--weight-decay: expected a number >= 0, got {config.weight_decay!r}")
    for name in ("learning_rate", "epochs", "batch_size", "grad_accum", "max_length"):
        if not getattr(config, name) > 0:
            flag = "lr" if name == "learning_rate" else name.replace("_", "-")
            raise ValueError(f"--{flag}: expected a positive number, got {getattr(config, name)!r}")


def as_flags(settings: dict) -> list[str]:
    """``settings`` (``UnlearnConfig`` fields whose flag is the field's name, e.g.
    :data:`~unlearnx.train.api.CONSTANT_SCHEDULE`) as ``unlearn`` flags."""
    return [arg for k, v in settings.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


def _plan_lora(options: dict) -> dict | None:
    """The --lora-* settings, checked; peft must be importable."""
    import importlib.util

    if not options.pop("lora", False):
        if options:
            raise ValueError(f"--{next(iter(options)).replace('_', '-')}: only with --lora")
        return None
    if importlib.util.find_spec("peft") is None:
        raise ValueError("--lora: the peft package is not installed (pip install 'unlearnx[lora]')")
    r, alpha = options.get("lora_r", 8), options.get("lora_alpha", 16.0)
    dropout, targets = options.get("lora_dropout", 0.0), options.get("lora_target_modules", "all-linear")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"--lora-r: expected a positive int, got {r!r}")
    if not (isinstance(alpha, int | float) and alpha > 0):
        raise ValueError(f"--lora-alpha: expected a positive number, got {alpha!r}")
    if not (isinstance(dropout, int | float) and 0 <= dropout < 1):
        raise ValueError(f"--lora-dropout: expected a number in [0, 1), got {dropout!r}")
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",")]
    if isinstance(targets, list) and (not targets or not all(isinstance(t, str) and t for t in targets)):
        raise ValueError(f"--lora-target-modules: expected comma-separated module names, got {targets!r}")
    return {"r": r, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": targets}


def _with_lora(model, lora: dict | None):
    """``model`` wrapped with LoRA adapters (peft) when asked for."""
    if lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    try:
        return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    except ValueError as err:  # e.g. target modules the model does not have
        raise SystemExit(f"unlearnx unlearn: --lora: {err}") from err


def _save_result(model, tok, out: Path) -> Path:
    """OUT/model: the model, LoRA adapters merged in (the adapter alone also goes to OUT/adapter)."""
    from unlearnx.train.api import save_model

    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    return save_model(model, tok, out / "model")


def _plan_requests(settings: dict) -> dict | None:
    """--requests (a comma-separated string, or a list in a config file), each set read and checked."""
    names = settings.pop("requests", None)
    mode = settings.pop("request_mode", None)
    reference = settings.pop("request_reference", None)
    if names is None:
        if mode is not None or reference is not None:
            raise ValueError(f"--request-{'mode' if mode is not None else 'reference'}: only with --requests")
        return None
    if "forget" in settings:
        raise ValueError("--requests: give either --forget or --requests, not both")
    paths = (
        [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    )
    if not paths or any(not p for p in paths):
        raise ValueError(f"--requests: expected comma-separated forget sets, got {names!r}")
    mode, reference = mode or "sequential", reference or "current"
    if mode not in ("sequential", "growing"):
        raise ValueError(f"--request-mode: expected sequential or growing, got {mode!r}")
    if reference not in ("current", "original"):
        raise ValueError(f"--request-reference: expected current or original, got {reference!r}")
    sets = [_check_data(f"--requests (request {i + 1})", Path(p)) for i, p in enumerate(paths)]
    return {"paths": paths, "sets": sets, "mode": mode, "reference": reference}


EVAL_BENCHMARKS = ["tofu", "muse"]
_EVAL_SPLITS = ("retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")


def _plan_eval(options: dict, *, after_requests: bool = False) -> dict | None:
    """The --eval-* settings, checked (the data's files included) before any model loads. With
    ``after_requests`` the benchmark runs before the first request and after each, so there is
    no --eval-every and no best checkpoint (--eval-criterion, --eval-mode)."""
    benchmark = options.pop("eval", None)
    if benchmark is None:
        if options:
            raise ValueError(f"--{next(iter(options)).replace('_', '-')}: only with --eval")
        return None
    from unlearnx.eval.tofu import FORGET_SPLITS

    if benchmark not in EVAL_BENCHMARKS:
        raise ValueError(f"--eval: expected one of {EVAL_BENCHMARKS}, got {benchmark!r}")
    every = options.pop("eval_every", None)
    if after_requests:
        for key in ("eval_every", "eval_criterion", "eval_mode"):
            if key in options or (key == "eval_every" and every is not None):
                raise ValueError(
                    f"--{key.replace('_', '-')}: not with --requests (the benchmark runs before the "
                    "first request and after each; no best checkpoint is kept)"
                )
    elif isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"--eval-every: expected a positive int with --eval, got {every!r}")
    split = options.pop("eval_split", None if benchmark == "muse" else "forget10")
    if benchmark == "muse" and split is not None:
        raise ValueError("--eval-split: only with --eval tofu")
    if benchmark == "tofu" and split not in FORGET_SPLITS:
        raise ValueError(f"--eval-split: expected one of {FORGET_SPLITS}, got {split!r}")
    limit = options.pop("eval_limit", None)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--eval-limit: expected a positive int, got {limit!r}")
    mode = options.pop("eval_mode", "max")
    if mode not in ("max", "min"):
        raise ValueError(f"--eval-mode: expected max or min, got {mode!r}")
    if "eval_data" not in options:
        what = "the TOFU data folder" if benchmark == "tofu" else "a MUSE hub id or local folder"
        raise ValueError(f"--eval-data: required with --eval {benchmark} ({what})")
    data = options.pop("eval_data")
    plan = {"benchmark": benchmark, "every_steps": every, "limit": limit, "mode": mode}
    if benchmark == "muse":
        from unlearnx.data.muse import check_source

        try:
            check_source(str(data))
        except ValueError as err:
            raise ValueError(f"--eval-data: {err}") from err
        plan.update(source=str(data), criterion=options.pop("eval_criterion", "retain_knowmem_ROUGE"))
    else:
        data = Path(data)
        holdout = "holdout" + split.removeprefix("forget")  # privleak's non-members
        missing = [
            n for n in (f"{split}_perturbed", holdout, *_EVAL_SPLITS) if not (data / f"{n}.json").is_file()
        ]
        if missing:
            raise ValueError(f"--eval-data: {data} lacks the TOFU splits {missing} (<name>.json each)")
        plan.update(
            data_dir=data, forget_split=split, criterion=options.pop("eval_criterion", "model_utility")
        )
    if options:
        raise ValueError(f"--{next(iter(options)).replace('_', '-')}: unknown evaluation setting")
    return plan


def _as_dataset(tok, data, max_length: int):
    """Documents (strings) become MUSE-style chunks; QA pairs stay pairs."""
    if data and isinstance(data[0], str):
        from unlearnx.data.text import TextChunks

        return TextChunks(tok, data, max_length)
    return data


def _load_for_training(job: dict, device: str | None, command: str):
    """Says which optimiser runs, loads the model, checks the template against its tokenizer
    and wraps LoRA: ``(model, tokenizer)``, or None after printing the error."""
    import sys

    from unlearnx.train.api import training_precision_and_optimiser

    bf16, optim, why = training_precision_and_optimiser(job["config"])
    print(f"optimiser {optim} ({why}); bf16 {bf16}")
    model, tok = load_pretrained(job["model"], device or _default_device())
    try:
        template_for(tok, job["config"].template)
    except ValueError as err:
        print(f"unlearnx {command}: --{err}", file=sys.stderr)
        return None
    return _with_lora(model, job["lora"]), tok


def _default_device() -> str:
    """This process's GPU under torchrun / accelerate launch (LOCAL_RANK), else cuda or cpu."""
    import os

    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        job = plan(args)
    except ValueError as err:
        print(f"unlearnx unlearn: {err}", file=sys.stderr)
        return 2
    import torch

    from unlearnx.train.api import unlearn

    loaded = _load_for_training(job, job["device"], "unlearn")
    if loaded is None:
        return 2
    model, tok = loaded
    if job["requests"]:
        return _run_requests(job, model, tok)
    forget, retain = (_as_dataset(tok, d, job["config"].max_length) for d in (job["forget"], job["retain"]))
    path = job["out"] / "model"
    callbacks = []
    if job["eval"]:
        from unlearnx.eval.callback import MuseEvalCallback, TofuEvalCallback

        options = dict(job["eval"])
        if options.pop("benchmark") == "muse":
            callbacks.append(MuseEvalCallback(tok, options.pop("source"), job["out"] / "eval", **options))
        else:
            callbacks.append(TofuEvalCallback(tok, options.pop("data_dir"), job["out"] / "eval", **options))
    result = unlearn(
        model,
        tok,
        forget,
        retain,
        job["config"],
        job["out"],
        resume=job["resume"],
        # a LoRA model is merged and saved below, by the main process
        save_to=None if job["lora"] else path,
        callbacks=callbacks,
    )
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return 0
    if job["lora"]:
        _save_result(model, tok, job["out"])
    cfg = job["config"]
    run_record = {"config": {f.name: getattr(cfg, f.name) for f in fields(cfg)}, "result": result}
    (job["out"] / "run.json").write_text(json.dumps(run_record, indent=1) + "\n")
    print(f"unlearned with {cfg.method} in {result['steps']} steps; model saved to {path}")
    print(
        f"reference cache {result['cache_bytes'] / 2**20:.1f} MiB vs "
        f"{result['reference_model_bytes'] / 2**20:.1f} MiB for a frozen reference model"
    )
    if result["report"]:
        print(format_report(result["report"]))
    if job["eval"]:
        ev = job["eval"]
        data = ev.get("forget_split", ev.get("source"))
        print(
            f"evaluated {ev['benchmark']} {data} every {ev['every_steps']} steps: "
            f"{job['out'] / 'eval' / 'eval_history.jsonl'}; best by {ev['criterion']} ({ev['mode']}): "
            f"{job['out'] / 'eval' / 'best'}"
        )
    return 0


def _run_requests(job: dict, model, tok) -> int:
    """Sequential unlearning: OUT/requests.json, requests.md, requests.png and the final OUT/model."""
    from unlearnx.train.sequential import plot_requests, requests_table, unlearn_requests

    req, cfg = job["requests"], job["config"]
    evaluate, plot_keys = None, ()
    if job["eval"]:
        from unlearnx.eval.callback import PLOT_KEYS, benchmark_evaluator

        ev = job["eval"]
        data = ev["source"] if ev["benchmark"] == "muse" else ev["data_dir"]
        options = {k: ev[k] for k in ("limit", "forget_split") if k in ev}
        evaluate = benchmark_evaluator(ev["benchmark"], tok, data, **options)
        plot_keys = PLOT_KEYS[ev["benchmark"]]
    result = unlearn_requests(
        model,
        tok,
        [_as_dataset(tok, s, cfg.max_length) for s in req["sets"]],
        _as_dataset(tok, job["retain"], cfg.max_length),
        cfg,
        job["out"],
        mode=req["mode"],
        reference=req["reference"],
        limit=cfg.report_examples or None,
        evaluate=evaluate,
    )
    _save_result(model, tok, job["out"])
    record = {
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        "requests": req["paths"],
        **result,
    }
    (job["out"] / "requests.json").write_text(json.dumps(record, indent=1) + "\n")
    table = requests_table(result)
    (job["out"] / "requests.md").write_text(table)
    plot_requests(result, job["out"] / "requests.png", plot_keys)
    print(table, end="")
    print(f"unlearned {len(req['paths'])} {req['mode']} requests; model saved to {job['out'] / 'model'}")
    return 0


def format_report(report: dict) -> str:
    """The before/after table of ``unlearn()``'s report."""
    lines = [f"{'':<8}{'examples':>9}{'prob before':>13}{'after':>9}{'logp/token before':>19}{'after':>9}"]
    for name, r in report.items():
        b, a = r["before"], r["after"]
        after = (f"{a['prob']:9.4f}", f"{a['logp_per_token']:9.4f}") if a else (f"{'n/a':>9}",) * 2
        lines.append(
            f"{name:<8}{b['examples']:>9}{b['prob']:13.4f}{after[0]}{b['logp_per_token']:19.4f}{after[1]}"
        )
    return "\n".join(lines)


def add_relearn_parser(sub) -> None:
    p = sub.add_parser(
        "relearn",
        help="relearning attack: fine-tune models on part of the forget set, track what comes back",
        description="Fine-tunes each --model on the same random subset of the forget set and measures "
        "the answer probability on that subset and on the rest (held out) before training and every "
        "--eval-every steps. Writes OUT/relearn.json, relearn.md and relearn.png.",
    )
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a model folder to attack, named (repeat: the unlearned models and the original)",
    )
    p.add_argument("--forget", type=Path, required=True, help="forget set, in the formats unlearn takes")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--subset", default="0.1", help="examples relearned: a count, or a fraction in (0, 1)")
    p.add_argument("--steps", type=int, default=20, help="relearning optimiser steps (default 20)")
    p.add_argument("--eval-every", dest="eval_every", type=int, default=5, help="probe every N steps (5)")
    p.add_argument("--lr", dest="learning_rate", type=float, default=1e-5, help="learning rate (1e-5)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=4, help="batch size (4)")
    p.add_argument("--max-length", dest="max_length", type=int, default=512, help="tokens per example (512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of training (0)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")


def run_relearn(args: argparse.Namespace) -> int:
    """Checks every input before loading a model, then attacks each model in turn."""
    import sys

    from unlearnx.train.relearn import RelearnConfig, plot_relearn, relearn, relearn_table

    def fail(message: str) -> int:
        print(f"unlearnx relearn: {message}", file=sys.stderr)
        return 2

    models = {}
    for spec in args.models:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            return fail(f"--model: expected NAME=PATH, got {spec!r}")
        if name in models:
            return fail(f"--model: the name {name!r} is used twice")
        try:
            models[name] = check_model("--model", Path(path))
        except ValueError as err:
            return fail(str(err))
    try:
        subset = float(args.subset) if "." in args.subset else int(args.subset)
    except ValueError:
        return fail(f"--subset: expected a count or a fraction, got {args.subset!r}")
    config = RelearnConfig(
        subset=subset,
        steps=args.steps,
        eval_every=args.eval_every,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
    )
    try:
        forget = _check_data("--forget", args.forget)
        config.check(len(forget))
    except ValueError as err:
        return fail(str(err).replace("subset:", "--subset:", 1))
    device = args.device or _default_device()
    results = {}
    for name, path in models.items():
        model, tok = load_pretrained(path, device)
        results[name] = relearn(
            model, tok, _as_dataset(tok, forget, config.max_length), config, args.out / "runs" / name
        )
        del model
    first = next(iter(results.values()))
    record = {
        "config": {f.name: getattr(config, f.name) for f in fields(config)},
        "models": {name: str(path) for name, path in models.items()},
        "relearned": first["relearned"],
        "held_out": first["held_out"],
        "history": {name: r["history"] for name, r in results.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "relearn.json").write_text(json.dumps(record, indent=1) + "\n")
    table = relearn_table(results)
    (args.out / "relearn.md").write_text(table)
    plot_relearn(results, args.out / "relearn.png")
    print(table, end="")
    print(f"wrote {args.out / 'relearn.json'}, relearn.md and relearn.png")
    return 0


TOFU_TRAIN_SPLITS = ("full", "retain90", "retain95", "retain99")


def add_finetune_parser(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a causal LM on QA data (open-unlearning's finetune experiment: the TOFU "
        "target on full, the retain model on retainXX)",
        description="NLL on the answers through the fused path, with open-unlearning's finetune "
        "defaults (5 epochs, lr 1e-5, batch 8 x 4, linear schedule, one warm-up epoch, weight decay "
        "0.01). Writes OUT/model, OUT/metrics.jsonl and OUT/run.json.",
    )
    p.add_argument("--model", type=Path, required=True, help=MODEL_HELP)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--split",
        choices=TOFU_TRAIN_SPLITS,
        help="a TOFU training split in --data-dir (full: the target; retain90/95/99: the retain model)",
    )
    data.add_argument("--data", type=Path, help="QA or text data, in the formats unlearn's --forget takes")
    p.add_argument(
        "--data-dir",
        dest="data_dir",
        type=Path,
        default=Path("..") / "shared" / "data" / "tofu",
        help="folder of the TOFU JSON Lines files (with --split)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_training_flags(p, epochs_help="epochs over the data (default 5, as open-unlearning's finetune)")
    add_lora_flags(p)


def plan_finetune(args: argparse.Namespace) -> dict:
    """The finetune job, validated before any model loads; raises ValueError naming the flag."""
    path = args.data if args.data is not None else args.data_dir / f"{args.split}.json"
    flag = "--data" if args.data is not None else "--data-dir"
    if args.data is None and not path.is_file():
        raise ValueError(f"--data-dir: {args.data_dir} has no {args.split}.json (pass the TOFU folder)")
    data = _check_data(flag, path)
    model = check_model("--model", args.model)
    skip = {"model", "split", "data", "data_dir", "out", "command", "device", "resume"}
    settings = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    lora = _plan_lora({k: settings.pop(k) for k in list(settings) if k in LORA_KEYS})
    config = UnlearnConfig(**{**FINETUNE_DEFAULTS, "report_examples": 0, **settings})
    check_config(config)
    return {"model": model, "data": data, "out": args.out, "config": config, "lora": lora}


def run_finetune(args: argparse.Namespace) -> int:
    import sys

    import torch

    from unlearnx.train.api import finetune

    try:
        job = plan_finetune(args)
    except ValueError as err:
        print(f"unlearnx finetune: {err}", file=sys.stderr)
        return 2
    cfg = job["config"]
    loaded = _load_for_training(job, args.device, "finetune")
    if loaded is None:
        return 2
    model, tok = loaded
    path = job["out"] / "model"
    result = finetune(
        model,
        tok,
        _as_dataset(tok, job["data"], cfg.max_length),
        cfg,
        job["out"],
        resume=bool(args.resume),
        save_to=None if job["lora"] else path,
    )
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return 0
    if job["lora"]:
        _save_result(model, tok, job["out"])
    settings = {
        f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("method", "hparams", "retain")
    }
    record = {"data": str(args.data or args.split), "config": settings, "result": result}
    (job["out"] / "run.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"fine-tuned in {result['steps']} steps; model saved to {path}")
    return 0
