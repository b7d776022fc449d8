"""Fused LM-head losses: ``hidden @ weight.T`` and the loss in one chunked pass.

Common arguments (all losses):

- ``input``: ``(..., T, D)`` final hidden states, fp64/fp32/bf16/fp16. ``input[..., t, :]``
  predicts ``target[..., t]`` (shift before calling).
- ``weight``: ``(V, D)`` LM-head weight, same dtype and device as ``input`` (under
  ``torch.autocast`` the head's tensors are cast to its dtype first, as ``F.linear`` would
  take them; the statistics and the loss stay fp32).
- ``target``: ``(..., T)`` int64 token ids in ``[0, V)`` or ``ignore_index``.
- ``bias``: optional ``(V,)``.
- ``chunk_size``: rows of logits computed at once; ``None`` sizes chunks from a memory
  budget (64 MiB of logits on CPU, 1 GiB on CUDA), grown up to 4x for sequence losses
  so that the longest sequence fits one chunk (single pass, 6·N·D·V FLOPs instead of
  8). On the CPU, results are deterministic for a given chunk size. On CUDA the row
  kernels reduce in a fixed order, but the scatter-adds over tokens (``index_add_``: the
  per-sequence sums of the sequence losses, the flattening backward's ``dW`` and ``db``) use
  atomics, so their last bits vary run to run unless ``torch.use_deterministic_algorithms(True)``,
  under which PyTorch runs its deterministic version of them (no loss raises in that mode;
  cuBLAS then needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, as for any model).

The ``[tokens, V]`` logits are never materialised: peak extra memory is one chunk of
logits plus the gradients. Losses and statistics are fp32 (fp64 for fp64 input).
Non-finite hidden states propagate: the loss and gradients become NaN, as in the
reference. On CUDA each call synchronises with the host a few times before its chunk
loop (target validation, token compaction, chunk plan), never inside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from unlearnx import _ops
from unlearnx._objectives import OBJECTIVES, REDUCTIONS, reduce_sequences

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _autocasting(t: Tensor) -> bool:
    return torch.is_autocast_enabled(t.device.type)


def _autocast_head(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Under ``torch.autocast`` on the tensors' device, the floating ones in its dtype, as the
    LM head's ``F.linear`` would take them (the cast is differentiable: fp32 master weights get
    their gradients); unchanged otherwise. The ops then run with autocast off."""
    first = next(t for t in tensors if t is not None)
    if not _autocasting(first):
        return tensors
    dtype = torch.get_autocast_dtype(first.device.type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def _dtype_differs(t: Tensor, input: Tensor) -> bool:
    """``t``'s dtype is not ``input``'s, outside autocast (under it, the head's tensors are cast
    to autocast's dtype before the ops)."""
    return t.dtype != input.dtype and not _autocasting(input)


def _check_head(input: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None) -> None:
    if not isinstance(input, Tensor) or input.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"input: expected a float64/float32/bfloat16/float16 tensor, got {_describe(input)}")
    if input.dim() < 2:
        raise ValueError(f"input: expected shape (..., T, D), got {tuple(input.shape)}")
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"weight: expected a (V, D) tensor, got {_describe(weight)}")
    if _dtype_differs(weight, input):
        raise TypeError(f"weight: dtype {weight.dtype} differs from input dtype {input.dtype}")
    if weight.device != input.device:
        raise ValueError(f"weight: on {weight.device}, input on {input.device}")
    if weight.shape[1] != input.shape[-1]:
        raise ValueError(
            f"weight: shape {tuple(weight.shape)} does not match hidden size D={input.shape[-1]}"
        )
    if weight.shape[0] == 0:
        raise ValueError("weight: the vocabulary (V = weight.shape[0]) is empty")
    if not isinstance(target, Tensor) or target.dtype != torch.int64:
        raise TypeError(f"target: expected an int64 tensor, got {_describe(target)}")
    if target.shape != input.shape[:-1]:
        raise ValueError(
            f"target: shape {tuple(target.shape)} must equal input.shape[:-1] = {tuple(input.shape[:-1])}"
        )
    if target.device != input.device:
        raise ValueError(f"target: on {target.device}, input on {input.device}")
    if target.numel() == 0:
        raise ValueError(f"input: empty batch (shape {tuple(input.shape)})")
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.shape != weight.shape[:1]:
            raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {_describe(bias)}")
        if _dtype_differs(bias, input) or bias.device != input.device:
            raise TypeError(
                f"bias: expected {input.dtype} on {input.device}, got {bias.dtype} on {bias.device}"
            )


def _check_options(reduction: str, chunk_size: int | None, ignore_index: int) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {ignore_index!r}")


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _needs(input: Tensor, weight: Tensor, bias: Tensor | None) -> list[bool]:
    on = torch.is_grad_enabled()
    return [
        on and input.requires_grad,
        on and weight.requires_grad,
        on and bias is not None and bias.requires_grad,
    ]


def token_logprobs(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> Tensor:
    """Log-probability of each target, ``(..., T)`` fp32 (fp64 for fp64 input), 0 where ignored.

    Differentiable w.r.t. ``input``, ``weight`` and ``bias`` for any upstream gradient:
    the backward recomputes logits per chunk (forward 2·N·D·V FLOPs, backward 6·N·D·V).
    """
    _check_head(input, weight, target, bias)
    _check_options("none", chunk_size, ignore_index)
    return _token_values("logp", [], input, weight, target, None, None, None, bias, ignore_index, chunk_size)


def sequence_logprobs(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``(sums, counts)``, each ``(...)``: summed target log-probs (fp32/fp64) and int64 valid-token
    counts per sequence of ``(..., T, D)`` input. Under ``torch.no_grad`` this is the
    forward-only path (2·N·D·V FLOPs) used by reference caches and evaluation."""
    logp = token_logprobs(input, weight, target, bias=bias, ignore_index=ignore_index, chunk_size=chunk_size)
    return logp.sum(-1), (target != ignore_index).sum(-1)


def _token_values(
    family: str,
    family_params: list[float],
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    ref_input: Tensor | None,
    ref_weight: Tensor | None,
    ref_bias: Tensor | None,
    bias: Tensor | None,
    ignore_index: int,
    chunk_size: int | None,
) -> Tensor:
    """Per-token value of a row family, shape of ``target``, 0 where ignored."""
    input, weight, bias, ref_input, ref_weight, ref_bias = _autocast_head(
        input, weight, bias, ref_input, ref_weight, ref_bias
    )
    dim = input.shape[-1]
    ref = None if ref_input is None else ref_input.detach().reshape(1, -1, ref_input.shape[-1])
    values, _ = _ops.token_values(
        input.reshape(1, -1, dim),
        weight,
        bias,
        target.reshape(1, -1),
        ref,
        _frozen(ref_weight),
        _frozen(ref_bias),
        family,
        family_params,
        ignore_index,
        chunk_size,
    )
    return values.view(target.shape)


def _frozen(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


def _sequence_objective(
    objective: str,
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    params: Tensor | None,
    hparams: list[float],
    bias: Tensor | None,
    ignore_index: int,
    reduction: str,
    chunk_size: int | None,
    ref: tuple[Tensor, Tensor, Tensor | None] | None = None,
) -> Tensor:
    """Loss ``f(S_b)`` of ``_objectives.OBJECTIVES[objective]`` over the sequences of ``target``;
    ``ref`` = (ref_input, ref_weight, ref_bias) for objectives on reference-based values."""
    ref_input, ref_weight, ref_bias = ref if ref is not None else (None, None, None)
    input, weight, bias, ref_input, ref_weight, ref_bias = _autocast_head(
        input, weight, bias, ref_input, ref_weight, ref_bias
    )
    if reduction == "none":
        # Per-sequence losses need per-sequence upstream gradients: go through the
        # token op (two passes) and let autograd do the per-sequence math.
        obj = OBJECTIVES[objective]
        values = _token_values(
            obj.family,
            obj.family_params(hparams),
            input,
            weight,
            target,
            ref_input,
            ref_weight,
            ref_bias,
            bias,
            ignore_index,
            chunk_size,
        )
        return reduce_sequences(
            objective, values.sum(-1), (target != ignore_index).sum(-1), params, hparams, "none"
        )
    seq_len, dim = input.shape[-2:]
    loss, *_ = _ops.sequence_loss(
        input.reshape(-1, seq_len, dim),
        weight,
        bias,
        target.reshape(-1, seq_len),
        None if ref_input is None else ref_input.detach().reshape(-1, seq_len, ref_input.shape[-1]),
        _frozen(ref_weight),
        _frozen(ref_bias),
        None if params is None else params.reshape(-1),
        objective,
        hparams,
        ignore_index,
        reduction,
        chunk_size,
        _needs(input, weight, bias),
    )
    return loss


def nll_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Negative log-likelihood. ``"mean"``: over all valid tokens of the batch (the Hugging
    Face convention; 0 if none); ``"sum"``; ``"none"``: per token, shape of ``target``.
    Gradient ascent is its negative."""
    _check_head(input, weight, target, bias)
    _check_options(reduction, chunk_size, ignore_index)
    if reduction == "none":
        return -token_logprobs(
            input, weight, target, bias=bias, ignore_index=ignore_index, chunk_size=chunk_size
        )
    return _sequence_objective(
        "nll", input, weight, target, None, [], bias, ignore_index, reduction, chunk_size
    )


def npo_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    ref_logps: Tensor,
    *,
    beta: float = 0.1,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """NPO (Zhang et al. 2024): ``-(2/beta) log sigmoid(-beta (S - S_ref))`` per sequence.

    ``S`` is the policy's summed target log-prob of a sequence, ``ref_logps (...)`` the
    reference model's (precomputed, e.g. by :func:`sequence_logprobs`). ``"mean"`` averages
    over sequences with at least one valid token, ``"none"`` returns ``(...)``.
    """
    _check_head(input, weight, target, bias)
    _check_options(reduction, chunk_size, ignore_index)
    _check_positive("beta", beta)
    if not isinstance(ref_logps, Tensor) or not ref_logps.is_floating_point():
        raise TypeError(f"ref_logps: expected a float tensor, got {_describe(ref_logps)}")
    if ref_logps.shape != target.shape[:-1]:
        raise ValueError(
            f"ref_logps: expected shape {tuple(target.shape[:-1])}, got {tuple(ref_logps.shape)}"
        )
    if ref_logps.device != input.device:
        raise ValueError(f"ref_logps: on {ref_logps.device}, input on {input.device}")
    ref = ref_logps.detach().to(torch.float64 if input.dtype == torch.float64 else torch.float32)
    return _sequence_objective(
        "npo", input, weight, target, ref, [float(beta)], bias, ignore_index, reduction, chunk_size
    )


def simnpo_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    beta: float = 4.5,
    delta: float = 0.0,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """SimNPO (Fan et al. 2024) as the authors' code and open-unlearning write it:
    ``-(2/beta) log sigmoid(beta (-S/|y| - delta))``, ``S`` the summed answer log-prob.

    The paper's margin ``gamma`` is ``beta * delta``; this package keeps the name ``gamma`` for
    the forget-term weight (OU's ``method_args``), so the margin is given as ``delta``.
    Defaults are OU's (``beta`` 4.5, ``delta`` 0). Reductions as :func:`npo_loss`.
    """
    _check_head(input, weight, target, bias)
    _check_options(reduction, chunk_size, ignore_index)
    _check_positive("beta", beta)
    if isinstance(delta, bool) or not isinstance(delta, (int, float)):
        raise TypeError(f"delta: expected a number, got {delta!r}")
    margin = float(beta * delta)
    return _sequence_objective(
        "simnpo",
        input,
        weight,
        target,
        None,
        [float(beta), margin],
        bias,
        ignore_index,
        reduction,
        chunk_size,
    )


# --------------------------------------------------------------------------- reference-based losses


def _check_ref(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    ref_input: Tensor,
    ref_weight: Tensor,
    ref_bias: Tensor | None,
) -> None:
    if not isinstance(ref_input, Tensor) or _dtype_differs(ref_input, input):
        raise TypeError(
            f"ref_input: expected a {input.dtype} tensor (the policy's dtype), got {_describe(ref_input)}"
        )
    if ref_input.shape[:-1] != input.shape[:-1]:
        raise ValueError(
            f"ref_input: shape {tuple(ref_input.shape)} must match input's leading dims "
            f"{tuple(input.shape[:-1])}"
        )
    if ref_input.device != input.device:
        raise ValueError(f"ref_input: on {ref_input.device}, input on {input.device}")
    if not isinstance(ref_weight, Tensor) or ref_weight.dim() != 2:
        raise ValueError(f"ref_weight: expected a (V, D_ref) tensor, got {_describe(ref_weight)}")
    if _dtype_differs(ref_weight, input) or ref_weight.device != input.device:
        raise TypeError(
            f"ref_weight: expected {input.dtype} on {input.device}, got "
            f"{ref_weight.dtype} on {ref_weight.device}"
        )
    if ref_weight.shape != (weight.shape[0], ref_input.shape[-1]):
        raise ValueError(
            f"ref_weight: expected shape ({weight.shape[0]}, {ref_input.shape[-1]}), "
            f"got {tuple(ref_weight.shape)}"
        )
    if ref_bias is not None and (
        not isinstance(ref_bias, Tensor)
        or ref_bias.shape != weight.shape[:1]
        or _dtype_differs(ref_bias, input)
        or ref_bias.device != input.device
    ):
        raise ValueError(
            f"ref_bias: expected a ({weight.shape[0]},) {input.dtype} tensor on {input.device}, "
            f"got {_describe(ref_bias)}"
        )


def margin_flatten_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Logit-margin flattening (constrained primal-dual unlearning, arXiv 2506.05314):
    ``(max_v z - mean_v z)^2`` per valid position, token mean over the batch (``"none"``:
    per position, 0 where ignored). The target only marks valid positions.

    Softmax-free. The forward needs the logits only for their row maxima (one GEMM,
    2·N·D·V FLOPs); the mean is ``input . mean_row(W) + mean(b)``. The backward needs no
    vocabulary GEMM: ``dZ = 2m (onehot(argmax) - 1/V)`` is sparse plus rank one. Ties send
    the gradient to the first maximal index, as ``torch.max`` does.
    """
    _check_head(input, weight, target, bias)
    _check_options(reduction, chunk_size, ignore_index)
    input, weight, bias = _autocast_head(input, weight, bias)
    dim = input.shape[-1]
    margin, _ = _ops.flatten_margins(
        input.reshape(-1, dim), weight, bias, target.reshape(-1), ignore_index, chunk_size
    )
    per_token = margin.square().view(target.shape)
    if reduction == "none":
        return per_token
    total = per_token.sum()
    return total if reduction == "sum" else total / (target != ignore_index).sum().clamp(min=1)


def kl_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    ref_input: Tensor,
    ref_weight: Tensor,
    *,
    ref_bias: Tensor | None = None,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """``KL(pi_ref || pi_theta)`` per valid position, token mean (``"none"``: per position).

    ``pi_theta = softmax(input @ weight.T + bias)``; ``pi_ref = softmax(ref_input @
    ref_weight.T + ref_bias)``, computed per chunk from the frozen reference's hidden
    states ``ref_input (..., T, D_ref)`` and head ``ref_weight (V, D_ref)`` (same dtype as the
    policy); no gradient flows into the reference.
    """
    _check_head(input, weight, target, bias)
    _check_options(reduction, chunk_size, ignore_index)
    _check_ref(input, weight, target, ref_input, ref_weight, ref_bias)
    if reduction == "none":
        return _token_values(
            "kl", [], input, weight, target, ref_input, ref_weight, ref_bias, bias, ignore_index, chunk_size
        )
    return _sequence_objective(
        "kl",
        input,
        weight,
        target,
        None,
        [],
        bias,
        ignore_index,
        reduction,
        chunk_size,
        (ref_input, ref_weight, ref_bias),
    )


def dipo_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    ref_input: Tensor,
    ref_weight: Tensor,
    *,
    top_k: int = 1,
    shift: float = 1.0,
    beta: float = 1.0,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """DiPO (arXiv 2510.04773), **as reconstructed** in DESIGN section 3: the paper's method
    section could not be read, so this follows its abstract and summaries (TDPO-style
    distribution-level rewards, a Bradley-Terry preference, sequence KL). Not tested for
    parity with the authors' code.

    With reference logits ``r_t`` and ``H_t`` its ``top_k`` largest entries (entries tied
    with the ``top_k``-th largest value are all in ``H_t``),
    ``q+ = softmax(r - shift 1_H)`` (forgetting-promoting), ``q- = softmax(r + shift 1_H)``
    (memory-promoting), ``Delta_t = KL(q-||pi) - KL(q+||pi) - KL(q-||pi_ref) + KL(q+||pi_ref)
    = <q+ - q-, z_t - r_t>``, and per sequence ``L = -log sigmoid(beta sum_t Delta_t)`` over
    valid tokens (``log 2`` when the policy equals the reference). ``"mean"`` averages over
    sequences with a valid token. If the paper's form differs, the parameters that would
    change are how ``q+-`` are built (``top_k``, ``shift``), the sign and scale of
    ``Delta`` (``beta``), and the preference link (log-sigmoid). Defaults ``top_k=1,
    shift=1.0, beta=1.0`` are untuned.

    Cost: ``Delta_t`` is linear in the policy logits and ``q+ - q-`` comes from the
    reference alone, so the policy logits are never formed: ``<q+ - q-, z_t> = <(q+ - q-) W,
    x_t> + <q+ - q-, b>``. With gradients that is 3 GEMMs (6·N·D·V FLOPs: reference logits,
    ``(q+ - q-) W``, ``dW``) instead of the 4 (8·N·D·V) of a logits-based loss with a
    reference, and one ``[C, V]`` chunk alive instead of two.
    """
    _check_head(input, weight, target, bias)
    _check_options(reduction, chunk_size, ignore_index)
    _check_ref(input, weight, target, ref_input, ref_weight, ref_bias)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= weight.shape[0]:
        raise ValueError(f"top_k: expected an int in [1, V={weight.shape[0]}], got {top_k!r}")
    _check_positive("shift", shift)
    _check_positive("beta", beta)
    return _sequence_objective(
        "dipo",
        input,
        weight,
        target,
        None,
        [float(beta), float(top_k), float(shift)],
        bias,
        ignore_index,
        reduction,
        chunk_size,
        (ref_input, ref_weight, ref_bias),
    )


DTO_SCORES = ("margin", "logp")


def dto_target_mask(
    ref_input: Tensor,
    ref_weight: Tensor,
    target: Tensor,
    *,
    target_ratio: float = 0.3,
    suffix_ratio: float = 1.0,
    score: str | Callable[[dict[str, Tensor]], Tensor] = "margin",
    ref_bias: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> Tensor:
    """DTO's target tokens (arXiv 2510.00125, **as reconstructed** in DESIGN section 3), a
    bool ``(..., T)`` mask, from one forward-only fused pass of the original model.

    Among the last ``ceil(suffix_ratio * n)`` valid tokens of each sequence (``n`` valid
    tokens), the ``round(target_ratio * that count)`` with the highest score are targets.
    ``score``: ``"margin"`` (default; the reference's target logit minus its best other
    logit), ``"logp"`` (the reference's target log-prob), or a callable taking
    ``{"margin", "logp", "lse"}`` (each ``(..., T)`` fp32) and returning ``(..., T)`` scores.
    """
    _check_head(ref_input, ref_weight, target, ref_bias)
    _check_options("none", chunk_size, ignore_index)
    for name, value, low_open in (
        ("target_ratio", target_ratio, False),
        ("suffix_ratio", suffix_ratio, True),
    ):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not (0 < value <= 1 if low_open else 0 <= value <= 1):
            raise ValueError(
                f"{name}: expected a number in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}"
            )
    if not callable(score) and score not in DTO_SCORES:
        raise ValueError(f"score: expected one of {DTO_SCORES} or a callable, got {score!r}")
    with torch.no_grad():
        ref_input, ref_weight, ref_bias = _autocast_head(ref_input, ref_weight, ref_bias)
        dim = ref_input.shape[-1]
        _, stats = _ops.token_values(
            ref_input.reshape(1, -1, dim),
            ref_weight,
            ref_bias,
            target.reshape(1, -1),
            None,
            None,
            None,
            "target_score",
            [],
            ignore_index,
            chunk_size,
        )
        named = {k: s.view(target.shape) for k, s in zip(("lse", "logp", "margin"), stats, strict=True)}
        scores = score(named) if callable(score) else named[score]
        if not isinstance(scores, Tensor) or scores.shape != target.shape:
            raise ValueError(f"score: the callable must return a tensor of shape {tuple(target.shape)}")
        return _select_targets(scores.float(), target != ignore_index, target_ratio, suffix_ratio)


def _select_targets(scores: Tensor, valid: Tensor, target_ratio: float, suffix_ratio: float) -> Tensor:
    flat_scores, flat_valid = scores.reshape(-1, scores.shape[-1]), valid.reshape(-1, valid.shape[-1])
    mask = torch.zeros_like(flat_valid)
    for b in range(flat_valid.shape[0]):
        positions = flat_valid[b].nonzero().squeeze(1)
        n_suffix = math.ceil(suffix_ratio * positions.numel())
        candidates = positions[positions.numel() - n_suffix :]
        k = math.floor(target_ratio * n_suffix + 0.5)
        if k:
            order = torch.sort(flat_scores[b, candidates], descending=True, stable=True).indices
            mask[b, candidates[order[:k]]] = True
    return mask.view(valid.shape)


def dto_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    ref_input: Tensor,
    ref_weight: Tensor,
    target_mask: Tensor,
    *,
    beta: float = 0.1,
    kl_weight: float = 1.0,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> Tensor:
    """DTO (arXiv 2510.00125), **as reconstructed** in DESIGN section 3 (the paper's exact
    losses could not be read; not tested for parity with the authors' code): on the valid
    tokens marked by ``target_mask`` (see :func:`dto_target_mask`), token-level NPO
    ``-(2/beta) log sigmoid(-beta (logp_t - logp_ref_t))`` averaged over them; on the other
    valid tokens ``kl_weight * KL(pi_ref || pi)`` averaged over them. An empty set
    contributes 0. Scalar fp32 loss. If the paper's form differs, the parts that would
    change are the per-token forget term (``beta``), the retain term and its weight
    (``kl_weight``), and the selection in :func:`dto_target_mask`.
    """
    _check_head(input, weight, target, bias)
    _check_options("mean", chunk_size, ignore_index)
    _check_ref(input, weight, target, ref_input, ref_weight, ref_bias)
    _check_positive("beta", beta)
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or kl_weight < 0:
        raise ValueError(f"kl_weight: expected a non-negative number, got {kl_weight!r}")
    if (
        not isinstance(target_mask, Tensor)
        or target_mask.dtype != torch.bool
        or target_mask.shape != target.shape
    ):
        raise TypeError(
            f"target_mask: expected a bool tensor of shape {tuple(target.shape)}, "
            f"got {_describe(target_mask)}"
        )
    input, weight, bias, ref_input, ref_weight, ref_bias = _autocast_head(
        input, weight, bias, ref_input, ref_weight, ref_bias
    )
    seq_len, dim = input.shape[-2:]
    loss, *_ = _ops.dto_loss(
        input.reshape(-1, seq_len, dim),
        weight,
        bias,
        target.reshape(-1, seq_len),
        ref_input.detach().reshape(-1, seq_len, ref_input.shape[-1]),
        ref_weight.detach(),
        _frozen(ref_bias),
        target_mask.to(input.device).reshape(-1, seq_len),
        float(beta),
        float(kl_weight),
        ignore_index,
        chunk_size,
        _needs(input, weight, bias),
    )
    return loss
