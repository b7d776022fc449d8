"""The Hugging Face integration: fused losses on patched causal LMs of several families."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from unlearnx import functional as F
from unlearnx.integrations.transformers import patch_causal_lm


def unpatched_reference_loss(
    model, input_ids: Tensor, attention_mask: Tensor | None, labels: Tensor
) -> Tensor:
    """The model's own token-mean cross-entropy with materialised logits (for comparisons)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))


def _tiny(family: str, tie: bool = False):
    import transformers as tf

    common = dict(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    configs = {
        "llama": lambda: tf.LlamaConfig(intermediate_size=64, num_key_value_heads=2, **common),
        "mistral": lambda: tf.MistralConfig(intermediate_size=64, num_key_value_heads=2, **common),
        "qwen2": lambda: tf.Qwen2Config(intermediate_size=64, num_key_value_heads=2, **common),
        "gemma": lambda: tf.GemmaConfig(intermediate_size=64, num_key_value_heads=2, head_dim=8, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(intermediate_size=64, **common),
    }
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(configs[family]())


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 101, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    labels = ids.clone()
    labels[:, :4] = -100  # prompt
    labels[mask == 0] = -100
    return ids, mask, labels


def _nll(hidden, weight, target, bias):
    return F.nll_loss(hidden, weight, target, bias=bias, chunk_size=5)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma", "gpt_neox"])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_fused_nll_matches_the_models_own_loss(family: str, tie: bool) -> None:
    model = _tiny(family, tie)
    ids, mask, labels = _batch()
    want = unpatched_reference_loss(model, ids, mask, labels)
    grads_want = torch.autograd.grad(want, list(model.parameters()), allow_unused=True)
    patch_causal_lm(model)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, unlearnx_loss=_nll)
    assert out.logits is None
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    for (name, _), g, w in zip(model.named_parameters(), grads, grads_want, strict=True):
        if w is None:
            assert g is None or g.abs().max() == 0, name
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=name)
    # without unlearnx_loss the model is unchanged (generation still works)
    assert model(input_ids=ids, attention_mask=mask).logits.shape == (3, 12, 101)
    assert model.generate(input_ids=ids[:1, :4], max_new_tokens=2, do_sample=False).shape == (1, 6)


def test_a_deep_copy_of_a_patched_model_runs_its_own_weights() -> None:
    """Regression: the patched forward once called the original model's bound forward, so a
    deep copy (as tests and relearning make) ran, and generated from, the weights it was
    copied from."""
    import copy

    model = patch_causal_lm(_tiny("llama"))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
    ids, mask, _ = _batch()
    fresh = copy.deepcopy(twin)  # the same weights, patched only through the copy
    got, want = (
        twin(input_ids=ids, attention_mask=mask).logits,
        fresh(input_ids=ids, attention_mask=mask).logits,
    )
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, model(input_ids=ids, attention_mask=mask).logits)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model = _tiny("llama")
    ids, mask, labels = _batch()
    patch_causal_lm(model).train()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, unlearnx_loss=_nll).loss
    want = torch.autograd.grad(loss, list(model.parameters()))
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss2 = model(input_ids=ids, attention_mask=mask, labels=labels, unlearnx_loss=_nll).loss
    for g, w in zip(torch.autograd.grad(loss2, list(model.parameters())), want, strict=True):
        torch.testing.assert_close(g, w)


def test_models_that_postprocess_logits_are_refused() -> None:
    import transformers as tf

    cfg = tf.Gemma2Config(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=30.0,
    )
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        patch_causal_lm(tf.AutoModelForCausalLM.from_config(cfg))
    model = patch_causal_lm(_tiny("llama"))
    with pytest.raises(ValueError, match="labels"):
        model(input_ids=_batch()[0], unlearnx_loss=_nll)


def test_low_precision_body_with_an_fp32_head() -> None:
    """bf16 hidden states meet an fp32 head: the head runs in bf16, gradients reach the fp32 weight."""
    model = _tiny("llama").to(torch.bfloat16)
    model.lm_head.float()
    ids, mask, labels = _batch()
    patch_causal_lm(model)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, unlearnx_loss=_nll)
    (grad,) = torch.autograd.grad(out.loss, [model.lm_head.weight])
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().max() > 0
    from unlearnx.integrations.transformers import hidden_states

    with torch.no_grad():  # the model's own forward cannot mix dtypes; materialise by hand
        logits = (
            hidden_states(model, ids, mask)[:, :-1] @ model.lm_head.weight.to(torch.bfloat16).t()
        ).float()
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, 101), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss.detach(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_fsdp2_sharded_model_gives_the_unsharded_loss_and_gradients(tie: bool, tmp_path) -> None:
    """FSDP2 on gloo/CPU, 2 ranks with half the batch each (what accelerate's FSDP2 wrapping
    does, per decoder layer and at the root): the head weight read inside the patched forward is
    the gathered one, so the loss and the gathered gradients equal one unsharded process's.
    (accelerate itself enables FSDP only on GPUs; this is the sharding our forward must survive.)"""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import torchrun

    script = Path(__file__).parent / "helpers" / "fsdp_grads.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt"), str(int(tie))], check=True)
    torchrun(script, str(tmp_path / "two.pt"), str(int(tie)), nproc=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert two["param_types"] == ["DTensor"]  # really sharded
    torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-5, atol=1e-6)
    assert one["grads"].keys() == two["grads"].keys()
    for name, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_zero3_registers_the_head_as_an_external_parameter(tie: bool, monkeypatch) -> None:
    """ZeRO-3 gathers a parameter only around its own module's forward, and the head module never
    runs on the fused path: under ZeRO-3 the head weight must be registered on the root module.
    (DeepSpeed is not installed here: a stand-in records the registration calls.)"""
    import sys
    import types

    import transformers.integrations.deepspeed as hf_ds

    model, plain = _tiny("llama", tie), _tiny("llama", tie)  # before the stand-in is installed
    calls = []
    zero = types.ModuleType("deepspeed.zero")
    zero.register_external_parameter = lambda module, p: calls.append((module, p))
    monkeypatch.setitem(sys.modules, "deepspeed", types.ModuleType("deepspeed"))
    monkeypatch.setitem(sys.modules, "deepspeed.zero", zero)
    monkeypatch.setattr(hf_ds, "is_deepspeed_zero3_enabled", lambda: True)
    patch_causal_lm(model)
    assert len(calls) == 1 and calls[0][0] is model and calls[0][1] is model.lm_head.weight
    monkeypatch.setattr(hf_ds, "is_deepspeed_zero3_enabled", lambda: False)
    calls.clear()
    patch_causal_lm(plain)
    assert calls == []
