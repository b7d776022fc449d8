"""Small randomly initialised models for the demo, benchmarks and tests (no downloads)."""

from __future__ import annotations

import torch


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
):
    """A ``LlamaForCausalLM`` with ``layers`` decoder layers of width ``hidden`` (heads of 32 by
    default, MLP width ``2 * hidden``), initialised from ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = heads or max(1, hidden // 32)
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
    )
    return LlamaForCausalLM(cfg)
