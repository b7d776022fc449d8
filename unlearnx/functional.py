"""Fused LM-head losses: ``hidden @ weight.T`` and the loss in one chunked pass.

Common arguments (all losses):

- ``input``: ``(..., T, D)`` final hidden states, fp64/fp32/bf16/fp16. ``input[..., t, :]``
  predicts ``target[..., t]`` (shift before calling).
- ``weight``: ``(V, D)`` LM-head weight, same dtype and device as ``input``.
- ``target``: ``(..., T)`` int64 token ids in ``[0, V)`` or ``ignore_index``.
- ``bias``: optional ``(V,)``.
- ``chunk_size``: rows of logits computed at once; ``None`` sizes chunks from a memory
  budget (64 MiB of logits on CPU, 1 GiB on CUDA), grown up to 4x for sequence losses
  so that the longest sequence fits one chunk (single pass, 6·N·D·V FLOPs instead of
  8). Results are deterministic for a given chunk size.

The ``[tokens, V]`` logits are never materialised: peak extra memory is one chunk of
logits plus the gradients. Losses and statistics are fp32 (fp64 for fp64 input).
Non-finite hidden states propagate: the loss and gradients become NaN, as in the
reference. On CUDA each call synchronises once with the host (to size the compacted
token set and plan chunks).
"""

from __future__ import annotations

import torch
from torch import Tensor

from unlearnx import _ops
from unlearnx._objectives import REDUCTIONS, reduce_sequences

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _check_head(input: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None) -> None:
    if not isinstance(input, Tensor) or input.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"input: expected a float64/float32/bfloat16/float16 tensor, got {_describe(input)}")
    if input.dim() < 2:
        raise ValueError(f"input: expected shape (..., T, D), got {tuple(input.shape)}")
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"weight: expected a (V, D) tensor, got {_describe(weight)}")
    if weight.dtype != input.dtype:
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
        if bias.dtype != input.dtype or bias.device != input.device:
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
    dim = input.shape[-1]
    logp, _ = _ops.token_logprobs(
        input.reshape(-1, dim), weight, bias, target.reshape(-1), ignore_index, chunk_size
    )
    return logp.view(target.shape)


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
) -> Tensor:
    """Loss ``f(S_b)`` of ``_objectives.OBJECTIVES[objective]`` over the sequences ``target[..., :]``."""
    if reduction == "none":
        # Per-sequence losses need per-sequence upstream gradients: go through the
        # token op (two passes) and let autograd do the per-sequence math.
        sums, counts = sequence_logprobs(
            input, weight, target, bias=bias, ignore_index=ignore_index, chunk_size=chunk_size
        )
        return reduce_sequences(objective, sums, counts, params, hparams, "none")
    seq_len, dim = input.shape[-2:]
    loss, *_ = _ops.sequence_loss(
        input.reshape(-1, seq_len, dim),
        weight,
        bias,
        target.reshape(-1, seq_len),
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
    beta: float = 2.5,
    gamma: float | None = None,
    delta: float | None = None,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """SimNPO (Fan et al. 2024), paper form: ``-(2/beta) log sigmoid(-(beta/|y|) S - gamma)``.

    ``gamma`` is the paper's margin (default 0). The authors' code writes
    ``sigmoid(beta (-S/|y| - delta))``, i.e. ``gamma = beta * delta``: pass ``delta`` to use
    the code's parameterisation. Passing both is an error. Reductions as :func:`npo_loss`.
    """
    _check_head(input, weight, target, bias)
    _check_options(reduction, chunk_size, ignore_index)
    _check_positive("beta", beta)
    if gamma is not None and delta is not None:
        raise ValueError("gamma, delta: pass one margin (gamma = beta * delta), not both")
    for name, value in (("gamma", gamma), ("delta", delta)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{name}: expected a number, got {value!r}")
    margin = float(beta * delta) if delta is not None else float(gamma or 0.0)
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
