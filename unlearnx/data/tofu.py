"""TOFU data (JSON Lines, one question/answer object per line) and QA encoding.

Files as published by locuslab/TOFU: ``forget01/05/10.json``, ``retain90/95/99.json``,
``*_perturbed.json`` (with ``paraphrased_answer`` and a list ``perturbed_answer``),
``real_authors(_perturbed).json``, ``world_facts(_perturbed).json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from unlearnx.data.template import IGNORE_INDEX, Template, encode_chat, pad_id, template_for

FORGET_SPLITS = ("forget01", "forget05", "forget10")


def load_split(data_dir: str | Path, name: str) -> list[dict]:
    """Rows of ``<data_dir>/<name>.json``. Raises FileNotFoundError naming the file."""
    path = Path(data_dir) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"data_dir: no TOFU split {name!r} at {path}")
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class Encoded:
    input_ids: torch.Tensor  # (B, T) int64, right-padded
    attention_mask: torch.Tensor  # (B, T) int64: 0 wherever input_ids == pad (OU's collator)
    labels: torch.Tensor  # (B, T) int64: the answer tokens, -100 on prompt and padding


def prompt_ids(tokenizer, question: str, template: Template | str = "auto") -> list[int]:
    """The ids a model answers ``question`` from: the conversation up to the generation prompt,
    as open-unlearning builds it (:func:`unlearnx.data.template.encode_chat`)."""
    return encode_chat(tokenizer, _template(tokenizer, template), [question], [""], for_generation=True)[
        "input_ids"
    ]


def encode_qa(
    tokenizer,
    questions: list[str],
    answers: list[str],
    max_length: int = 512,
    *,
    template: Template | str = "auto",
) -> Encoded:
    """Encodes each question/answer as open-unlearning does (``preprocess_chat_instance``, see
    :func:`unlearnx.data.template.encode_chat`): the whole conversation through ``template`` (a
    :class:`Template` or a preset name; ``auto``: the tokenizer's chat template if it has one,
    else ``Question: ...\nAnswer: ...``), EOS appended if absent, labels the answer tokens (-100
    on the prompt and padding). Sequences longer than ``max_length`` are cut at the right."""
    if len(questions) != len(answers):
        raise ValueError(f"answers: {len(answers)} answers for {len(questions)} questions")
    chosen = _template(tokenizer, template)
    encoded = [
        encode_chat(tokenizer, chosen, [q], [a], max_length=max_length)
        for q, a in zip(questions, answers, strict=True)
    ]
    ids = [torch.tensor(e["input_ids"][:max_length]) for e in encoded]
    labels = [torch.tensor(e["labels"][:max_length]) for e in encoded]
    pad = pad_id(tokenizer)
    input_ids = pad_sequence(ids, batch_first=True, padding_value=pad)
    # OU's collator mask: every pad id is masked, EOS included where pad = EOS
    attention_mask = (input_ids != pad).long()
    return Encoded(
        input_ids, attention_mask, pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
    )


def _template(tokenizer, template: Template | str) -> Template:
    return template if isinstance(template, Template) else template_for(tokenizer, template)


def load_hf_data(spec: str) -> list[tuple[str, str]] | list[str]:
    """QA pairs (columns ``question``, ``answer``) or documents (column ``text``, e.g. MUSE's
    ``raw`` and ``scal``/``sust`` splits) from ``hf:ID[:CONFIG[:SPLIT]]`` (split ``train`` by
    default; e.g. ``hf:locuslab/TOFU:forget10``, ``hf:muse-bench/MUSE-News:raw:forget``), from
    ``hf:FOLDER:CONFIG:SPLIT`` for a local copy in MUSE's layout, or from a folder written by
    ``Dataset.save_to_disk``."""
    import datasets

    if spec.startswith("hf:"):
        repo, config, split = ([*spec[3:].split(":"), None, None])[:3]
        if Path(repo).is_dir() and config is not None:
            from unlearnx.data.muse import load_rows

            ds = datasets.Dataset.from_list(load_rows(repo, config, split or "train"))
        else:
            ds = datasets.load_dataset(repo, config, split=split or "train")
    else:
        ds = datasets.load_from_disk(spec)
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ValueError(f"dataset: {spec} has splits {sorted(ds)}; save the one to use on its own")
            ds = ds["train"]
    if {"question", "answer"} <= set(ds.column_names):
        return [(str(q), str(a)) for q, a in zip(ds["question"], ds["answer"], strict=True)]
    if "text" in ds.column_names:
        return [str(t) for t in ds["text"] if str(t).strip()]
    raise ValueError(
        f"dataset: {spec} has neither question/answer nor text columns (it has {ds.column_names})"
    )
