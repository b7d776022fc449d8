"""The fixture of ``tests/data/ou_train_golden.json``: one training micro-batch of each method
that open-unlearning also has, on a tiny Llama (the reference) and a perturbed copy of it (the
policy being unlearned), so that NPO's ratio and the KL are not trivially zero.

The golden numbers come from OU's own ``compute_loss`` run outside the project on exactly these
tensors; the test runs unlearnx's trainer on them. Encoding parity with OU is tested elsewhere
(``tests/test_template.py``, ``tests/test_smollm2.py``), so the batches are built here with
unlearnx's encoder and collator, which equal OU's.
"""

from __future__ import annotations

import copy
import functools

import torch

FORGET = [
    ("Who wrote the river maps?", "The river maps were written by Ana Holt."),
    ("Where was Ana Holt born?", "Ana Holt was born in a quiet harbour town far in the north."),
    ("What did Ana Holt study?", "She studied old charts."),
]
RETAIN = [
    ("What did Ben Ito write?", "Ben Ito wrote novels about winter and long roads."),
    ("Where does Ben Ito live?", "In an old town."),
    ("Which prize did Ben Ito win?", "Ben Ito won the lantern prize for his third novel."),
]

# unlearnx method, its hparams, OU trainer class, OU method_args (and the reference model where
# the method keeps one)
CASES = {
    "ga": ("ga", {}, "GradAscent", {}),
    "grad_diff": ("grad_diff", {}, "GradDiff", {"gamma": 1.0, "alpha": 1.0, "retain_loss_type": "NLL"}),
    "grad_diff_kl": (
        "grad_diff",
        {"retain_loss_type": "KL", "alpha": 2.0},
        "GradDiff",
        {"gamma": 1.0, "alpha": 2.0, "retain_loss_type": "KL"},
    ),
    "npo": ("npo", {}, "NPO", {"beta": 0.1, "gamma": 1.0, "alpha": 1.0, "retain_loss_type": "NLL"}),
    "npo_kl": (
        "npo",
        {"retain_loss_type": "KL", "beta": 0.5},
        "NPO",
        {"beta": 0.5, "gamma": 1.0, "alpha": 1.0, "retain_loss_type": "KL"},
    ),
    "simnpo": (
        "simnpo",
        {},
        "SimNPO",
        {"delta": 0.0, "beta": 4.5, "gamma": 0.125, "alpha": 1.0, "retain_loss_type": "NLL"},
    ),
    "simnpo_delta": (
        "simnpo",
        {"delta": 1.0, "beta": 2.0, "gamma": 0.5},
        "SimNPO",
        {"delta": 1.0, "beta": 2.0, "gamma": 0.5, "alpha": 1.0, "retain_loss_type": "NLL"},
    ),
    "pdu": (
        "pdu",
        {"alpha": 3.0, "dual_step_size": 2.0, "retain_loss_eps": 0.3, "dual_warmup_epochs": 0},
        "PDU",
        {
            "gamma": 1.0,
            "alpha": 3.0,
            "retain_loss_type": "NLL",
            "retain_loss_eps": 0.3,
            "primal_dual": True,
            "dual_step_size": 2.0,
            "dual_update_upon": "step",
            "dual_warmup_epochs": 0,
        },
    ),
}


MODELS = ("tiny", "smollm2")
SMOLLM2_CASES = ("npo_kl", "pdu", "simnpo")  # the real model's share of the suite's time


def setup(model: str = "tiny"):
    """``(tokenizer, reference, policy, batch, datasets)``: fp32 models on CPU, ``batch`` of
    OU's shape ``{"forget": {...}, "retain": {...}}`` (right-padded, attention 0 at pad ids),
    the ``index`` key included (unlearnx's reference cache reads it). ``model``: ``"tiny"``, a
    2-layer Llama over a word tokenizer (Question:/Answer: tags), or ``"smollm2"``, the bundled
    SmolLM2-135M-Instruct (its chat template; pad = EOS, so OU's mask also hides the EOS
    tokens inside each conversation)."""
    from unlearnx.data.template import pad_id
    from unlearnx.data.tokenizer import build_word_tokenizer
    from unlearnx.models import tiny_llama
    from unlearnx.train.data import QADataset, pad

    if model == "tiny":
        tok = build_word_tokenizer([q + " " + a for q, a in FORGET + RETAIN])
        reference = tiny_llama(len(tok), hidden=32, intermediate=64, layers=2, heads=2, seed=0).eval()
    else:
        reference, tok = _smollm2()
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            # the real model moves by a fraction of each tensor's spread, the tiny one by 0.05
            scale = 0.05 if model == "tiny" else 0.02 * float(p.std())
            p.add_(scale * torch.randn(p.shape, generator=g))
    sets = {
        name: QADataset(tok, [q for q, _ in pairs], [a for _, a in pairs])
        for name, pairs in (("forget", FORGET), ("retain", RETAIN))
    }
    batch = {name: pad([ds[i] for i in range(len(ds))], pad_id(tok)) for name, ds in sets.items()}
    return tok, reference, policy, batch, sets


@functools.cache
def _smollm2():
    from unlearnx.models import load_pretrained

    model, tok = load_pretrained("smollm2")
    return model.eval(), tok  # never trained: setup() trains deep copies


def gradient_summary(model) -> dict[str, list[float]]:
    """Per parameter: ``[sum, L2 norm, first 4 entries]`` of its gradient (0s where none)."""
    out = {}
    for name, p in model.named_parameters():
        g = torch.zeros_like(p) if p.grad is None else p.grad.detach()
        flat = g.double().flatten()
        out[name] = [float(flat.sum()), float(flat.norm()), *map(float, flat[:4])]
    return out
