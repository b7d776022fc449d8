"""Prompt templates and chat encoding as open-unlearning does it (OU ``template_args`` and
``src/data/utils.py::preprocess_chat_instance`` at commit d3d7cf9).

A :class:`Template` either applies the tokenizer's chat template (with an optional system prompt
and a fixed ``date_string``, so a template that stamps today's date never makes results depend
on the day) or concatenates manual tags (``user_start_tag + question + user_end_tag +
asst_start_tag + answer``). :func:`encode_chat` turns prompts and responses (earlier pairs are
in-context examples) into ids and labels the way OU does: the whole conversation tokenised at
once, EOS appended if absent, labels -100 over the prompt ids.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id (what open-unlearning pads with)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@dataclass(frozen=True)
class Template:
    """OU's ``template_args``: ``apply_chat_template`` with ``system_prompt`` / ``date_string``,
    or the four manual tags (plus ``system_prompt_with_special_tokens`` in front)."""

    apply_chat_template: bool = False
    system_prompt: str | None = None
    date_string: str | None = None
    user_start_tag: str = "Question: "
    user_end_tag: str = "\n"
    asst_start_tag: str = "Answer: "
    asst_end_tag: str = "\n\n"
    system_prompt_with_special_tokens: str | None = None


TEMPLATES: dict[str, Template] = {
    # OU configs/model/Llama-2-7b-hf.yaml (the MUSE target models) and phi-1_5.yaml's shape
    "qa-tags": Template(),
    # the tokenizer's own chat template, no system prompt (OU's Qwen2.5 / gemma / zephyr configs)
    "chat": Template(apply_chat_template=True),
    # OU's Llama-3.x-Instruct configs: the chat template with a fixed date
    "llama3": Template(
        apply_chat_template=True, system_prompt="You are a helpful assistant.", date_string="10 Apr 2025"
    ),
}


def template_for(tokenizer, name: str = "auto") -> Template:
    """A preset of :data:`TEMPLATES` by name; ``"auto"``: ``"llama3"`` if the tokenizer's chat
    template stamps a date (``date_string``: Llama-3.x, whose OU configs fix the date and system
    prompt), else ``"chat"`` if it has a chat template, else ``"qa-tags"``."""
    if name == "auto":
        chat = getattr(tokenizer, "chat_template", None)
        name = "qa-tags" if not chat else "llama3" if "date_string" in str(chat) else "chat"
    if name not in TEMPLATES:
        raise ValueError(f"template: expected auto or one of {sorted(TEMPLATES)}, got {name!r}")
    if TEMPLATES[name].apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"template: {name!r} applies the chat template, but this tokenizer has none (use qa-tags)"
        )
    return TEMPLATES[name]


def _chat_ids(tokenizer, chat: list[dict], template: Template, *, generation_prompt: bool) -> list[int]:
    extra = {"date_string": template.date_string} if template.date_string is not None else {}
    out = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=generation_prompt, **extra)
    # transformers 5 returns a BatchEncoding; 4.x a list of ids
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def encode_chat(
    tokenizer,
    template: Template,
    prompts: list[str],
    responses: list[str],
    *,
    max_length: int = 512,
    for_generation: bool = False,
) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` (lists of ints) of one conversation: ``prompts[-1]`` /
    ``responses[-1]`` is the example, earlier pairs are in-context examples.

    Training (``for_generation=False``): ``input_ids`` is the whole conversation (+ EOS), labels
    -100 over the prompt. Generation: ``input_ids`` stops after the generation prompt and
    ``labels`` is the whole conversation (OU's ``predict_with_generate``).
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"responses: {len(responses)} responses for {len(prompts)} prompts (need >= 1 each)")
    if template.apply_chat_template:
        chat = [{"role": "system", "content": template.system_prompt}] if template.system_prompt else []
        for p, r in zip(prompts, responses, strict=True):
            chat += [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        chat_ids = _chat_ids(tokenizer, chat, template, generation_prompt=False)
        prompt_ids = _chat_ids(tokenizer, chat[:-1], template, generation_prompt=True)
    else:
        t = template
        text = t.system_prompt_with_special_tokens or ""
        for p, r in zip(prompts[:-1], responses[:-1], strict=True):
            text += t.user_start_tag + p + t.user_end_tag + t.asst_start_tag + r + t.asst_end_tag
        text += t.user_start_tag + prompts[-1] + t.user_end_tag + t.asst_start_tag
        kw = dict(add_special_tokens=True, max_length=max_length, truncation=True)
        chat_ids = list(tokenizer(text + responses[-1], **kw)["input_ids"])
        prompt_ids = list(tokenizer(text, **kw)["input_ids"])
    if tokenizer.eos_token_id is not None and chat_ids[-1] != tokenizer.eos_token_id:
        chat_ids.append(tokenizer.eos_token_id)
    if for_generation:
        return {"input_ids": prompt_ids, "labels": chat_ids}
    n = min(len(prompt_ids), len(chat_ids))
    return {"input_ids": chat_ids, "labels": [IGNORE_INDEX] * n + chat_ids[n:]}


def encode_completion(
    tokenizer,
    prefix: str,
    text: str,
    *,
    max_length: int = 2048,
    insert_space: bool = False,
    for_generation: bool = False,
) -> dict[str, list[int]]:
    """OU's ``preprocess_pretraining_instance``: ``prefix (+ " ") + text`` with special tokens,
    at most ``max_length`` tokens after the prefix; labels -100 over the prefix (and always on
    the first token). For generation ``input_ids`` is the prefix alone."""
    full = list(
        tokenizer(prefix + (" " if insert_space else "") + text, add_special_tokens=True)["input_ids"]
    )
    prefix_ids = list(tokenizer(prefix, add_special_tokens=True)["input_ids"])
    full = full[: len(prefix_ids) + max_length]
    n = min(max(len(prefix_ids), 1), len(full))
    labels = [IGNORE_INDEX] * n + full[n:]
    return {"input_ids": prefix_ids if for_generation else full, "labels": labels}
