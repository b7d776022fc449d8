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
    attention_mask: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64: the answer tokens, -100 on prompt and padding


def prompt_text(tokenizer, question: str) -> str:
    """The prompt for a question: the tokenizer's chat template if it has one, else a
    plain ``Question: ...\\nAnswer:`` format."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return f"Question: {question}\nAnswer:"


def encode_qa(tokenizer, questions: list[str], answers: list[str], max_length: int = 512) -> Encoded:
    """Tokenises prompt + answer (+ EOS); labels are the answer tokens only. Sequences
    longer than ``max_length`` are cut at the right (the answer's end)."""
    if len(questions) != len(answers):
        raise ValueError(f"answers: {len(answers)} answers for {len(questions)} questions")
    rows, masks = [], []
    for q, a in zip(questions, answers, strict=True):
        prompt = tokenizer(prompt_text(tokenizer, q), add_special_tokens=True)["input_ids"]
        answer = tokenizer(" " + a, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            answer = [*answer, tokenizer.eos_token_id]
        ids = (prompt + answer)[:max_length]
        rows.append(ids)
        masks.append([0] * min(len(prompt), len(ids)) + [1] * max(0, len(ids) - len(prompt)))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, answer_mask) in enumerate(zip(rows, masks, strict=True)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        on_answer = torch.tensor(answer_mask, dtype=torch.bool)
        labels[i, : len(ids)] = torch.where(on_answer, torch.tensor(ids), -100)
    return Encoded(input_ids, attention, labels)


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
