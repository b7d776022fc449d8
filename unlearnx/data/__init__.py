"""Data: TOFU-format loaders and question/answer encoding with prompt masking."""
