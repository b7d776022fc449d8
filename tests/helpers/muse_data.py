"""A small synthetic MUSE dataset in the published layout (``<config>/<split>.jsonl``), a word
tokenizer covering it and a "chain" Llama that has memorised part of it: the fixture of the
MUSE tests and of the open-unlearning parity numbers in ``tests/data/ou_muse_golden.json``.

The model is built, not trained, so its predictions do not depend on the machine: its decoder
layers output zero (``o_proj`` and ``down_proj`` are zero), the embedding is one-hot, and the
head maps each word to the next one in :data:`CHAIN` with a logit of 10·sqrt(D) against 0, so
greedy decoding follows the chain with a margin no rounding can flip. Forget texts and forget
answers follow the chain in long runs (memorised); holdout texts and retain answers are
random words (not)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "the a river town author wrote many novels about old maps and quiet harbours in winter "
    "who what where did live city born year book first second sea north south"
).split()
TAG_WORDS = ["question", "answer", ":", "?", "."]
CHAIN = [*WORDS, *TAG_WORDS]
"""Token order of the tokenizer (after its 4 special tokens) and the model's memorised cycle."""


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + " ."


def _chain(rng: random.Random, n: int, start: str | None = None, jump: float = 0.15) -> str:
    """``n`` words following :data:`CHAIN`, jumping to a random word with probability ``jump``."""
    i = CHAIN.index(start) + 1 if start else rng.randrange(len(WORDS))
    out = []
    for _ in range(n):
        if rng.random() < jump:
            i = rng.randrange(len(WORDS))
        out.append(CHAIN[i % len(CHAIN)])
        i += 1
    return " ".join(out)


def muse_rows(seed: int = 0) -> dict[str, dict[str, list[dict]]]:
    """``{config: {split: rows}}`` with every configuration and split of MUSE-News."""
    rng = random.Random(seed)
    texts = {
        "forget": [_chain(rng, rng.randint(20, 40), jump=0.3) for _ in range(6)],
        "holdout": [_chain(rng, rng.randint(20, 40), jump=0.5) for _ in range(6)],
    }

    def qa(n: int, memorised: bool) -> list[dict]:
        # after "... ? answer :" the chain model continues with the word after ":"
        return [
            {
                "question": _sentence(rng, 4, 8)[:-2] + " ?",
                "answer": _chain(rng, rng.randint(2, 6), start=":", jump=0.3)
                if memorised
                else _sentence(rng, 1, 4),
            }
            for _ in range(n)
        ]

    return {
        "raw": {
            "forget": [{"text": t} for t in texts["forget"]],
            "retain1": [{"text": _sentence(rng, 20, 40)} for _ in range(4)],
            "retain2": [{"text": _sentence(rng, 20, 40)} for _ in range(4)],
            "holdout": [{"text": t} for t in texts["holdout"]],
        },
        "knowmem": {
            "forget_qa": qa(5, True),
            "forget_qa_icl": qa(2, True),
            "retain_qa": qa(5, False),
            "retain_qa_icl": qa(2, False),
        },
        "verbmem": {
            "forget": [
                {"prompt": " ".join(t.split()[:8]), "gt": " ".join(t.split()[8:20])}
                for t in texts["forget"][:5]
            ]
        },
        "privleak": {
            "forget": [{"text": t} for t in texts["forget"]],
            "retain": [{"text": _sentence(rng, 20, 40)} for _ in range(4)],
            "holdout": [{"text": t} for t in texts["holdout"]],
        },
        "scal": {f"forget_{i}": [{"text": t} for t in texts["forget"][: 2 * i]] for i in (1, 2)},
        "sust": {f"forget_{i}": [{"text": t} for t in texts["forget"][2 * i - 2 : 2 * i]] for i in (1, 2)},
    }


def write_muse(folder: Path, seed: int = 0) -> Path:
    """Writes :func:`muse_rows` as ``folder/<config>/<split>.jsonl``; returns ``folder``."""
    for config, splits in muse_rows(seed).items():
        (folder / config).mkdir(parents=True, exist_ok=True)
        for split, rows in splits.items():
            (folder / config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def tokenizer_and_model(seed: int = 0):
    """The word tokenizer over :data:`CHAIN` and the chain model (see the module docstring)."""
    import torch

    from unlearnx.data.tokenizer import SPECIAL, build_word_tokenizer
    from unlearnx.models import tiny_llama

    tok = build_word_tokenizer(CHAIN)
    ids = [tok.convert_tokens_to_ids(w) for w in CHAIN]
    assert ids == list(range(len(SPECIAL), len(SPECIAL) + len(CHAIN))), "tokenizer order changed"
    vocab, hidden = len(tok), 64
    model = tiny_llama(vocab, hidden=hidden, heads=2, seed=seed, max_positions=512, tokenizer=tok).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        head = torch.zeros(vocab, hidden)
        for k, i in enumerate(ids):
            head[ids[(k + 1) % len(ids)], i] = 10.0
        for i in range(len(SPECIAL)):  # special tokens lead into the chain's first word
            head[ids[0], i] = 10.0
        model.lm_head.weight.copy_(head)
    return tok, model
