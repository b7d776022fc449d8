"""Unlearning methods by name: a forget term on the fused path, the reference-cache items it
needs and its default hyper-parameters (DESIGN section 3).

Hyper-parameters carry open-unlearning's ``method_args`` names and defaults (commit d3d7cf9,
``configs/trainer/*.yaml``), so a config written for OU's trainers ports by copying them:
``gamma`` weighs the forget term and ``alpha`` the retain term (both 1.0 by default; SimNPO's
``gamma`` 0.125), ``retain_loss_type`` picks the retain term (``NLL``, ``KL``, or ``none``),
``beta`` is NPO's/SimNPO's inverse temperature (0.1 / 4.5), ``delta`` SimNPO's margin (0).

Every term is ``fn(hidden, weight, target, bias, ref, hp)`` with ``hidden (B, T-1, D)`` and
``target (B, T-1)`` already shifted, and ``ref`` the batch's reference-cache entries shifted
the same way (``hidden``: reference hidden states, ``dto_mask``: targets over ``target``).
Two terms see OU's unshifted positions instead (``hidden (B, T, D)``, ``target`` the labels
``(B, T)``), as OU computes them: PDU's flattening with ``flatten_positions="unshifted"`` (the
logits at each labelled position; ``"shifted"``: those predicting a labelled token) and the KL
retain term (all positions, ``batchmean``; ``kl_reduction="token_mean"`` is the token mean
over answer targets instead).
DiPO and DTO are the reconstructions documented in :mod:`unlearnx.functional`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnx import functional as F

Term = Callable[[Tensor, Tensor, Tensor, "Tensor | None", dict, dict], Tensor]


def _ref_head(ref: dict) -> tuple[Tensor, Tensor, Tensor | None]:
    return ref["hidden"], ref["head_weight"], ref.get("head_bias")


def _ga(h, w, t, b, ref, hp):
    return -F.nll_loss(h, w, t, bias=b)


def _npo(h, w, t, b, ref, hp):
    return F.npo_loss(h, w, t, ref["seq_logp"], beta=hp["beta"], bias=b)


def _simnpo(h, w, t, b, ref, hp):
    return F.simnpo_loss(h, w, t, beta=hp["beta"], delta=hp["delta"], bias=b)


def _dipo(h, w, t, b, ref, hp):
    rh, rw, rb = _ref_head(ref)
    return F.dipo_loss(
        h, w, t, rh, rw, ref_bias=rb, top_k=hp["top_k"], shift=hp["shift"], beta=hp["beta"], bias=b
    )


def _flatten(h, w, t, b, ref, hp):
    return F.margin_flatten_loss(h, w, t, bias=b)


def _dto(h, w, t, b, ref, hp):
    rh, rw, rb = _ref_head(ref)
    return F.dto_loss(
        h, w, t, rh, rw, ref["dto_mask"], ref_bias=rb, beta=hp["beta"], kl_weight=hp["kl_weight"], bias=b
    )


def retain_nll(h, w, t, b, ref, hp):
    return F.nll_loss(h, w, t, bias=b)


def retain_kl(h, w, t, b, ref, hp):
    rh, rw, rb = _ref_head(ref)
    return F.kl_loss(h, w, t, rh, rw, ref_bias=rb, bias=b)


def retain_kl_batchmean(h, w, t, b, ref, hp):
    """OU's ``kl_div(log_softmax(policy), log_softmax(ref), reduction="batchmean",
    log_target=True)`` over the flattened logits: ``KL(ref || policy)`` summed over every one of
    the ``B x T`` unshifted positions (prompt and padding included) and divided by ``B T``."""
    rh, rw, rb = _ref_head(ref)
    every = torch.zeros_like(t)  # the KL reads the target only to skip ignored positions
    return F.kl_loss(h, w, every, rh, rw, ref_bias=rb, bias=b, reduction="sum") / t.numel()


@dataclass(frozen=True)
class RetainTerm:
    fn: Term
    needs: frozenset[str]  # reference-cache items of the retain set
    unshifted: bool = False  # positions 0..T-1 with labels unshifted (else OU's shifted targets)


KL_REDUCTIONS = ("batchmean", "token_mean")
RETAIN_TERMS: dict[str, RetainTerm] = {
    "nll": RetainTerm(retain_nll, frozenset()),
    # OU's KL: all B x T positions, batchmean; "kl_token_mean": unlearnx's token mean over answers
    "kl": RetainTerm(retain_kl_batchmean, frozenset({"hidden"}), unshifted=True),
    "kl_token_mean": RetainTerm(retain_kl, frozenset({"hidden"})),
}


def retain_term(retain: str, kl_reduction: str = "batchmean") -> RetainTerm:
    """The retain term ``retain`` (``nll`` or ``kl``), the KL with ``kl_reduction``."""
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_reduction: expected one of {KL_REDUCTIONS}, got {kl_reduction!r}")
    return RETAIN_TERMS["kl_token_mean" if retain == "kl" and kl_reduction == "token_mean" else retain]


@dataclass(frozen=True)
class Method:
    forget: Term
    needs: frozenset[str]  # reference-cache items of the forget set
    defaults: dict = field(default_factory=dict)  # with retain_loss_type where a retain term can be used
    dual: bool = False  # primal-dual retain constraint (PDU)
    dto_options: tuple[str, ...] = ()  # hparams forwarded to dto_target_mask when building the cache


def _weights(gamma: float = 1.0, retain: str | None = "NLL") -> dict:
    """OU's forget weight ``gamma``, and where a retain term can be used, its weight ``alpha``
    and ``retain_loss_type``."""
    return {"gamma": gamma} if retain is None else {"gamma": gamma, "alpha": 1.0, "retain_loss_type": retain}


METHODS: dict[str, Method] = {
    # OU's GradAscent has no method_args; gamma scales its term like every other method's
    "ga": Method(_ga, frozenset(), _weights(retain=None)),
    "grad_diff": Method(_ga, frozenset(), _weights()),
    "npo": Method(_npo, frozenset({"seq_logp"}), {"beta": 0.1, **_weights()}),
    "simnpo": Method(_simnpo, frozenset(), {"beta": 4.5, "delta": 0.0, **_weights(gamma=0.125)}),
    "dipo": Method(_dipo, frozenset({"hidden"}), {"top_k": 1, "shift": 1.0, "beta": 1.0, **_weights()}),
    # OU's configs/trainer/PDU.yaml; OU leaves retain_loss_eps unset (???), 0.3 is the authors'
    # TOFU setting (community/methods/PDU/run.sh: also alpha 100, dual_step_size 5)
    "pdu": Method(
        _flatten,
        frozenset(),
        {
            "retain_loss_eps": 0.3,
            "primal_dual": True,
            "dual_step_size": 1.0,
            "dual_update_upon": "step",
            "dual_warmup_epochs": 5,
            "flatten_positions": "unshifted",
            **_weights(),
        },
        dual=True,
    ),
    # self-contained, as its paper says: no retain data (its KL on the non-target tokens of
    # the forget set is what keeps utility), so no retain term unless one is asked for
    "dto": Method(
        _dto,
        frozenset({"hidden", "dto_mask"}),
        {"beta": 0.1, "kl_weight": 1.0, "target_ratio": 0.3, "suffix_ratio": 1.0, **_weights(retain="none")},
        dto_options=("target_ratio", "suffix_ratio"),
    ),
}
RETAIN_TYPES = ("nll", "kl", "none")
DUAL_UPDATES = ("step", "epoch", "optimizer_step")
CHOICES = {"dual_update_upon": DUAL_UPDATES, "flatten_positions": ("unshifted", "shifted")}


def resolve(name: str, overrides: dict | None = None, retain: str | None = None) -> tuple[Method, dict, str]:
    """``(method, hyper-parameters, retain term)`` with user overrides checked by name. The
    retain term (``nll``, ``kl`` or ``none``) is ``hparams["retain_loss_type"]`` (OU's name,
    any case); ``retain`` sets it too, and may not contradict it."""
    if name not in METHODS:
        raise ValueError(f"method: unknown {name!r}; choose from {sorted(METHODS)}")
    m = METHODS[name]
    unknown = set(overrides or {}) - set(m.defaults)
    if unknown:
        raise ValueError(
            f"hparams: {sorted(unknown)} are not hyper-parameters of {name!r} "
            f"(it has {sorted(m.defaults) or 'none'})"
        )
    hp = {**m.defaults, **(overrides or {})}
    for key, allowed in CHOICES.items():
        if key in hp and hp[key] not in allowed:
            raise ValueError(f"hparams: {key} must be one of {allowed}, got {hp[key]!r}")
    if "retain_loss_type" not in hp:
        if retain not in (None, "none"):
            raise ValueError(f"retain: {name!r} has no retain term, got {retain!r}")
        return m, hp, "none"
    given = {str(v).lower() for v in (retain, (overrides or {}).get("retain_loss_type")) if v is not None}
    if len(given) > 1:
        raise ValueError(
            f"retain: {retain!r} contradicts hparams retain_loss_type={overrides['retain_loss_type']!r}"
        )
    term = given.pop() if given else str(hp["retain_loss_type"]).lower()
    if term not in RETAIN_TYPES:
        raise ValueError(f"retain: expected 'nll', 'kl' or 'none' (retain_loss_type NLL, KL), got {term!r}")
    if m.dual and term == "none":
        raise ValueError("retain: pdu needs a retain term (its constraint is on the retain loss)")
    return m, hp, term
