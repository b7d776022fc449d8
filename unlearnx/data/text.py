"""Plain-text documents for unlearning, chunked MUSE-style: each document is tokenised
(with BOS) and cut into consecutive pieces of at most ``max_length`` tokens; every token is a
target (labels = input_ids)."""

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


class TextChunks(Dataset):
    """Items ``{"input_ids", "attention_mask", "labels", "index"}`` like ``train.data.QADataset``."""

    def __init__(self, tokenizer, documents: list[str], max_length: int = 512) -> None:
        if max_length < 2:
            raise ValueError(f"max_length: expected at least 2 tokens, got {max_length}")
        self.items: list[dict[str, Tensor]] = []
        for doc in documents:
            ids = tokenizer(doc)["input_ids"]
            for start in range(0, len(ids), max_length):
                piece = torch.tensor(ids[start : start + max_length])
                if piece.numel() < 2:
                    continue
                self.items.append(
                    {
                        "input_ids": piece,
                        "attention_mask": torch.ones_like(piece),
                        "labels": piece.clone(),
                        "index": torch.tensor(len(self.items)),
                    }
                )
        if not self.items:
            raise ValueError("documents: nothing to train on after tokenisation")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]
