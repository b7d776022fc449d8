"""Unlearning driver: methods, reference cache, primal-dual, Hugging Face Trainer integration."""
