"""Training data: encoded QA examples, forget/retain pairing, padding collator."""

from __future__ import annotations

import random

import torch
from torch import Tensor
from torch.utils.data import Dataset

from unlearnx.data.template import Template
from unlearnx.data.tofu import encode_qa


class QADataset(Dataset):
    """Question/answer pairs encoded once through ``template`` (a preset name or a
    :class:`~unlearnx.data.template.Template`); item ``i`` is ``{"input_ids", "attention_mask",
    "labels", "index"}`` (1-D int64, unpadded; labels -100 on the prompt)."""

    def __init__(
        self,
        tokenizer,
        questions: list[str],
        answers: list[str],
        max_length: int = 512,
        template: Template | str = "auto",
    ) -> None:
        if not questions:
            raise ValueError("questions: the dataset is empty")
        self.items = []
        for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
            enc = encode_qa(tokenizer, [q], [a], max_length, template=template)
            self.items.append(
                {
                    "input_ids": enc.input_ids[0],
                    "attention_mask": enc.attention_mask[0],
                    "labels": enc.labels[0],
                    "index": torch.tensor(i),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]


PAIRINGS = ("random", "fixed")


class PairedDataset(Dataset):
    """Each forget example with a retain example; without a retain set, forget examples alone.

    ``pairing="random"`` (open-unlearning's ``ForgetRetainDataset``): a fresh retain example
    every epoch: a draw seeded by ``(seed, epoch, forget index)``, so each epoch pairs afresh
    while a run resumed from a checkpoint (or another rank) draws the same ones; the trainer
    sets the epoch (:meth:`set_epoch`). ``"fixed"``: one partner per forget example for the
    whole run. Both give the same pairs for a given seed on every run."""

    def __init__(
        self, forget: QADataset, retain: QADataset | None, seed: int = 0, pairing: str = "random"
    ) -> None:
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing: expected one of {PAIRINGS}, got {pairing!r}")
        self.forget, self.retain, self.seed, self.epoch = forget, retain, seed, 0
        fixed = pairing == "fixed" and retain is not None
        rng = random.Random(seed)
        self.pairs = [rng.randrange(len(retain)) for _ in range(len(forget))] if fixed else None

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose random pairs ``__getitem__`` draws (``pairing="random"``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict:
        item = {"forget": self.forget[i]}
        if self.retain is not None:
            if self.pairs is not None:
                j = self.pairs[i]
            else:  # a str seed is hashed with SHA-512: the same draw in every process
                j = random.Random(f"{self.seed}/{self.epoch}/{i}").randrange(len(self.retain))
            item["retain"] = self.retain[j]
        return item


def pad(items: list[dict[str, Tensor]], pad_id: int, width: int | None = None) -> dict[str, Tensor]:
    """Right-pads encoded examples into a batch (to ``width`` if given, else the longest) with
    open-unlearning's collator mask: attention 0 wherever ``input_ids == pad_id``, so a pad id
    inside a sequence (pad = EOS when the tokenizer has no pad token) is masked as OU masks it."""
    width = width or max(int(it["input_ids"].numel()) for it in items)
    out = {
        "input_ids": torch.full((len(items), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(items), width), -100, dtype=torch.long),
        "index": torch.stack([it["index"] for it in items]),
    }
    for row, it in enumerate(items):
        n = it["input_ids"].numel()
        for key in ("input_ids", "labels"):
            out[key][row, :n] = it[key]
    out["attention_mask"] = (out["input_ids"] != pad_id).long()
    return out


class PairCollator:
    """Collates ``PairedDataset`` items into ``{"forget": batch, "retain": batch}``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, dict[str, Tensor]]:
        out = {"forget": pad([it["forget"] for it in items], self.pad_id)}
        if "retain" in items[0]:
            out["retain"] = pad([it["retain"] for it in items], self.pad_id)
        return out
