"""Plain-text documents for unlearning, chunked as open-unlearning's ``PretrainingDataset``
does for MUSE: the documents are joined with blank lines, tokenised without special tokens and
cut into pieces of ``max_length`` tokens; each piece is decoded and tokenised again with the
tokenizer's special tokens (BOS), and every token after the first is a target."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset


def read_documents(path: str | Path) -> list[str]:
    """A ``.txt`` file is one document; a folder gives one document per ``*.txt`` inside (sorted)."""
    path = Path(path)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    docs = [f.read_text() for f in files if f.is_file()]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"documents: no non-empty .txt document at {path}")
    return docs


def chunk_texts(tokenizer, documents: list[str], max_length: int) -> list[str]:
    """OU's ``PretrainingDataset._chunk_raw_text``: ``"\n\n".join(documents)`` cut into
    decoded pieces of ``max_length`` tokens (an empty last piece is dropped)."""
    ids = tokenizer("\n\n".join(documents), add_special_tokens=False)["input_ids"]
    pieces = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
    return [tokenizer.decode(p) for p in pieces if p]


class TextChunks(Dataset):
    """Items ``{"input_ids", "attention_mask", "labels", "index"}`` like ``train.data.QADataset``:
    each piece of :func:`chunk_texts`, re-tokenised with special tokens and cut at
    ``max_length`` tokens after the first, labels -100 on the first token only."""

    def __init__(self, tokenizer, documents: list[str], max_length: int = 512) -> None:
        if max_length < 1:
            raise ValueError(f"max_length: expected at least 1 token, got {max_length}")
        self.items: list[dict[str, Tensor]] = []
        for text in chunk_texts(tokenizer, documents, max_length):
            piece = torch.tensor(tokenizer(text, add_special_tokens=True)["input_ids"][: max_length + 1])
            if piece.numel() < 2:
                continue
            labels = piece.clone()
            labels[0] = -100
            self.items.append(
                {
                    "input_ids": piece,
                    "attention_mask": torch.ones_like(piece),
                    "labels": labels,
                    "index": torch.tensor(len(self.items)),
                }
            )
        if not self.items:
            raise ValueError("documents: nothing to train on after tokenisation")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]
