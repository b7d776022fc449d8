"""Hugging Face causal LMs with fused losses instead of materialised logits.

:func:`patch_causal_lm` wraps a model's ``forward``: called with ``unlearnx_loss=fn`` it runs
the decoder, shifts, and returns ``CausalLMOutputWithPast(loss=fn(hidden, weight, target,
bias))`` with ``logits=None``; called without it, it is the model's own forward (generation,
evaluation). The head weight is read inside the patched forward, so it is the unsharded
weight under FSDP (the root module's parameter group is gathered for its forward) and the shared
one with tied embeddings. ZeRO-3 gathers a parameter only for the forward of the module that
owns it, and the head module never runs here, so under ZeRO-3 the head's parameters are
registered as external parameters of the root module (DeepSpeed's mechanism for exactly this).
Gradient checkpointing is the decoder's own and keeps working.

Supported: decoder-only models whose logits are ``hidden @ W.T (+ b)`` with nothing after the
head: the Llama, Mistral, Qwen2, Gemma and GPT-NeoX families among others. Models that
post-process logits (Gemma 2's soft-capping, ``logit_scale`` of Cohere) are refused.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable

from torch import Tensor

# fn(hidden (B, T-1, D), weight (V, D), target (B, T-1), bias (V,) or None) -> loss
FusedLoss = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]

_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def check_supported(model) -> None:
    """Raises NotImplementedError for models whose logits are not ``hidden @ W.T (+ b)``."""
    cfg = model.config
    for attr in _LOGIT_POSTPROCESSING:
        if getattr(cfg, attr, None) not in (None, 1, 1.0):
            raise NotImplementedError(
                f"model: {type(model).__name__} post-processes its logits (config.{attr}="
                f"{getattr(cfg, attr)!r}); fused losses would be computed on the wrong logits"
            )
    if model.get_output_embeddings() is None:
        raise NotImplementedError(f"model: {type(model).__name__} has no output embeddings (LM head)")


def is_sharded(model) -> bool:
    """True when ``model``'s parameters are sharded (FSDP1 or FSDP2, DeepSpeed ZeRO-3), i.e.
    they cannot be read outside the model's own forward."""
    from torch.distributed.tensor import DTensor

    if type(model).__name__ in ("FullyShardedDataParallel", "DeepSpeedEngine"):
        return True
    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters())


def _register_head_for_zero3(model) -> None:
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return
    from deepspeed.zero import register_external_parameter

    head = model.get_output_embeddings()
    for p in (head.weight, getattr(head, "bias", None)):
        if p is not None:
            register_external_parameter(model, p)


def hidden_states(model, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs) -> Tensor:
    """``(B, T, D)`` final hidden states (after the final norm), without the LM head; peft
    models (LoRA, ...) are unwrapped to their transformers model, adapters included."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state


def patch_causal_lm(model):
    """Makes ``model(input_ids, attention_mask, labels=..., unlearnx_loss=fn)`` compute ``fn`` on
    the fused path (``labels`` are shifted inside, as Hugging Face does; a ``fn`` with the
    attribute ``unshifted = True`` gets every position and the labels as given). Returns the model.
    A peft model (LoRA, ...) is patched through its base model: peft passes the keyword on."""
    if hasattr(model, "get_base_model"):
        patch_causal_lm(model.get_base_model())
        return model
    check_supported(model)
    if getattr(model, "_unlearnx_patched", False):
        return model
    _register_head_for_zero3(model)
    bound = model.forward
    # called with the patched model as self, so that a deep copy of the patched model runs its
    # own weights rather than those of the model it was copied from
    original = bound.__func__ if isinstance(bound, types.MethodType) and bound.__self__ is model else None

    @functools.wraps(bound)
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        labels=None,
        *,
        unlearnx_loss: FusedLoss | None = None,
        **kwargs,
    ):
        if unlearnx_loss is None:
            call = bound if original is None else functools.partial(original, self)
            return call(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if labels is None:
            raise ValueError("labels: required with unlearnx_loss")
        from transformers.modeling_outputs import CausalLMOutputWithPast

        kwargs.pop("use_cache", None)
        hidden = hidden_states(self, input_ids, attention_mask, use_cache=False, **kwargs)
        head = self.get_output_embeddings()
        # a low-precision body with an fp32 head (mixed-precision set-ups that keep the head in
        # fp32): run the head in the hidden states' dtype, as autocast would for its matmul
        # (gradients flow back through the cast)
        weight, bias = head.weight, getattr(head, "bias", None)
        if weight.dtype != hidden.dtype:
            weight = weight.to(hidden.dtype)
            bias = None if bias is None else bias.to(hidden.dtype)
        if getattr(unlearnx_loss, "unshifted", False):
            loss = unlearnx_loss(hidden, weight, labels, bias)
        else:
            loss = unlearnx_loss(hidden[:, :-1], weight, labels[:, 1:], bias)
        return CausalLMOutputWithPast(loss=loss, logits=None)

    model.forward = types.MethodType(forward, model)
    model._unlearnx_patched = True
    return model
