"""Evaluation: TOFU metrics on Hugging Face causal LMs, with fused forward-only log-probs."""
