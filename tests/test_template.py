"""Prompt templates: which preset ``auto`` picks, and a date-stamping chat template never
depends on the day (OU's Llama-3.x configs fix ``date_string``)."""

from __future__ import annotations

import pytest

from unlearnx.data.template import TEMPLATES, encode_chat, template_for
from unlearnx.data.tokenizer import build_word_tokenizer

# a Llama-3.x-like template: system block with the date, then the turns
DATED = (
    "{{ bos_token }}system : today is {{ date_string | default('26 Nov 2026') }} . "
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
WORDS = "system today is 10 apr 2025 26 nov user assistant you are a helpful what colour sky blue : ."


def _tokenizer(chat_template: str | None):
    tok = build_word_tokenizer([WORDS])
    tok.chat_template = chat_template
    return tok


def test_auto_picks_the_preset_from_the_tokenizer() -> None:
    assert template_for(_tokenizer(None)) == TEMPLATES["qa-tags"]
    assert (
        template_for(_tokenizer("{% for m in messages %}{{ m['content'] }}{% endfor %}")) == TEMPLATES["chat"]
    )
    assert template_for(_tokenizer(DATED)) == TEMPLATES["llama3"]
    with pytest.raises(ValueError, match="template: expected auto or one of"):
        template_for(_tokenizer(None), "llama2")


def test_a_dated_chat_template_gets_ous_fixed_date_and_system_prompt() -> None:
    tok = _tokenizer(DATED)
    enc = encode_chat(tok, template_for(tok), ["what colour is the sky ?"], ["blue"])
    text = tok.decode(enc["input_ids"])
    assert "today is 10 apr 2025" in text and "26 nov" not in text
    assert "system : you are a helpful" in text
    answer = [i for i, label in zip(enc["input_ids"], enc["labels"], strict=True) if label != -100]
    assert tok.decode(answer) == "blue. </s>"
