"""PyTorch operators of unlearnx: fake (meta) implementations and autograd glue.

C++ row kernels (``csrc/ops.cpp``; see ``csrc/kernels.h`` for what each computes):
``lse_stats``, ``logprob_grad_``, ``max_stats``, ``ref_stats``, ``ref_grad_``,
``dipo_direction_``.

Chunked operators (the driver in ``_chunked``; opaque to ``torch.compile``). Inputs are
``input [B, T, D]``, ``weight [V, D]``, ``bias [V]?``, ``target [B, T]``, and for
reference-based losses ``ref_input [B, T, D_ref]``, ``ref_weight [V, D_ref]``, ``ref_bias?``:

- ``token_values(..., family, family_params, ...) -> (values [B*T], stats [k, B*T])``: the
  per-token value of a row family (``logp``: log p(target); ``kl``: KL(pi_ref || pi);
  ``dipo``: Delta_t; ``target_score``: the target's margin), differentiable for any
  upstream gradient by recompute (``token_values_backward``).
- ``sequence_loss(..., params?, objective, hparams, ...) -> (loss, grad_input,
  grad_weight, grad_bias)`` and ``dto_loss(...)``: gradients come out of the forward; the
  backward only scales them by the incoming gradient.
- ``flatten_margins(input [N, D], weight, bias?, target [N], ...) -> (margin [N],
  argmax [N])`` with a GEMM-free backward (``flatten_margins_backward``).

Gradients not asked for (``needs``) are returned as empty tensors. The reference model
gets no gradient.
"""

import torch
from torch import Tensor

import unlearnx._C  # registers the C++ operators
from unlearnx import _chunked


def _autocast_off(t: Tensor) -> torch.autocast:
    """Op bodies run with autocast off: ``unlearnx.functional`` has cast the head to autocast's
    dtype already, and the chunk loop's GEMMs must keep the dtypes the kernels are given
    (autocast would turn them to bf16 against fp32 gradient buffers)."""
    return torch.autocast(t.device.type, enabled=False)


def _acc(t: Tensor) -> torch.dtype:
    return _chunked.acc_dtype(t.dtype)


def _or_empty(grad: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if grad is None else grad


def _fake_grads(input: Tensor, weight: Tensor, bias: Tensor | None, needs: list[bool]):
    shapes = (input, weight, weight[:, 0] if bias is None else bias)
    return tuple(
        t.new_empty(t.shape) if need else t.new_empty(0) for t, need in zip(shapes, needs, strict=True)
    )


# ------------------------------------------------------------------ fake row kernels

# the CPU/CUDA kernels and their SIMT emulation share schemas, so they share fakes
_KERNEL_NAMESPACES = ["unlearnx"] + (["unlearnx_simt"] if unlearnx._C.build_info()["simt"] else [])


def _row_kernel_fake(name: str):
    def register(fn):
        for ns in _KERNEL_NAMESPACES:
            torch.library.register_fake(f"{ns}::{name}")(fn)
        return fn

    return register


@_row_kernel_fake("lse_stats")
def _lse_stats_fake(logits, target):
    return tuple(logits.new_empty(logits.shape[0], dtype=_acc(logits)) for _ in range(2))


@_row_kernel_fake("logprob_grad_")
def _logprob_grad_fake(logits, target, lse, logp_target, coef) -> None:
    return None


@_row_kernel_fake("max_stats")
def _max_stats_fake(logits):
    rows = logits.shape[0]
    return logits.new_empty(rows, dtype=_acc(logits)), logits.new_empty(rows, dtype=torch.int64)


@_row_kernel_fake("ref_stats")
def _ref_stats_fake(logits, ref_logits, target):
    return tuple(logits.new_empty(logits.shape[0], dtype=_acc(logits)) for _ in range(5))


@_row_kernel_fake("ref_grad_")
def _ref_grad_fake(logits, ref_logits, target, lse, ref_lse, logp, ref_logp, a, c) -> None:
    return None


@_row_kernel_fake("dipo_direction_")
def _dipo_direction_fake(ref_logits, threshold, shift):
    return ref_logits.new_empty(ref_logits.shape[0], dtype=_acc(ref_logits))


# ------------------------------------------------------------------ token values (two-pass)

_N_STATS = {"logp": 2, "kl": 5, "dipo": 1, "target_score": 3}


@torch.library.custom_op("unlearnx::token_values", mutates_args=())
def token_values(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    ref_input: Tensor | None,
    ref_weight: Tensor | None,
    ref_bias: Tensor | None,
    family: str,
    family_params: list[float],
    ignore_index: int,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    with _autocast_off(input):
        p = _chunked.build(
            input,
            weight,
            bias,
            target,
            ref_input,
            ref_weight,
            ref_bias,
            family,
            family_params,
            ignore_index,
            (False, False, False),
        )
        return _chunked.token_values(p, chunk_size)


@token_values.register_fake
def _token_values_fake(
    input,
    weight,
    bias,
    target,
    ref_input,
    ref_weight,
    ref_bias,
    family,
    family_params,
    ignore_index,
    chunk_size,
):
    n = input.shape[0] * input.shape[1]
    return input.new_empty(n, dtype=_acc(input)), input.new_empty(_N_STATS[family], n, dtype=_acc(input))


@torch.library.custom_op("unlearnx::token_values_backward", mutates_args=())
def token_values_backward(
    grad: Tensor,
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    ref_input: Tensor | None,
    ref_weight: Tensor | None,
    ref_bias: Tensor | None,
    stats: Tensor,
    family: str,
    family_params: list[float],
    ignore_index: int,
    chunk_size: int | None,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    with _autocast_off(input):
        p = _chunked.build(
            input,
            weight,
            bias,
            target,
            ref_input,
            ref_weight,
            ref_bias,
            family,
            family_params,
            ignore_index,
            needs,
        )
        gx, gw, gb = _chunked.token_values_backward(p, grad, stats, chunk_size)
    return (
        _or_empty(None if gx is None else gx.view(input.shape), input),
        _or_empty(gw, input),
        _or_empty(gb, input),
    )


@token_values_backward.register_fake
def _token_values_backward_fake(
    grad,
    input,
    weight,
    bias,
    target,
    ref_input,
    ref_weight,
    ref_bias,
    stats,
    family,
    family_params,
    ignore_index,
    chunk_size,
    needs,
):
    return _fake_grads(input, weight, bias, needs)


def _token_values_setup(ctx, inputs, output) -> None:
    input, weight, bias, target, ref_input, ref_weight, ref_bias, family, fparams, ignore_index, chunk = (
        inputs
    )
    ctx.save_for_backward(input, weight, bias, target, ref_input, ref_weight, ref_bias, output[1])
    ctx.options = (family, fparams, ignore_index, chunk)


def _token_values_grad(ctx, grad_values: Tensor, grad_stats: Tensor):
    *tensors, stats = ctx.saved_tensors
    family, fparams, ignore_index, chunk = ctx.options
    needs = [bool(n) for n in ctx.needs_input_grad[:3]]
    grads = token_values_backward(grad_values, *tensors, stats, family, fparams, ignore_index, chunk, needs)
    return (*(g if n else None for g, n in zip(grads, needs, strict=True)), *(None,) * 8)


token_values.register_autograd(_token_values_grad, setup_context=_token_values_setup)


# ------------------------------------------------------------------ single-pass losses


def _prescaled_setup(ctx, inputs, output) -> None:
    # the gradient outputs get no gradient: unmaterialised, autograd would zero-fill a
    # V x D tensor for grad_weight on every backward
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*output[1:])
    ctx.n_inputs = len(inputs)


def _prescaled_grad(ctx, grad_loss: Tensor, *unused: Tensor):
    """The op returned d loss / d (input, weight, bias): scale them by the incoming gradient."""
    if grad_loss is None:  # undefined, as gradcheck's undefined-gradient check passes it
        return (None,) * ctx.n_inputs
    grads = [
        g * grad_loss.to(g.dtype) if n else None
        for g, n in zip(ctx.saved_tensors, ctx.needs_input_grad[:3], strict=True)
    ]
    return (*grads, *(None,) * (ctx.n_inputs - 3))


def _loss_outputs(input: Tensor, result) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    loss, gx, gw, gb = result
    return (
        loss,
        _or_empty(None if gx is None else gx.view(input.shape), input),
        _or_empty(gw, input),
        _or_empty(gb, input),
    )


def _fake_loss(input, weight, bias, needs):
    return (input.new_empty((), dtype=_acc(input)), *_fake_grads(input, weight, bias, needs))


@torch.library.custom_op("unlearnx::sequence_loss", mutates_args=())
def sequence_loss(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    ref_input: Tensor | None,
    ref_weight: Tensor | None,
    ref_bias: Tensor | None,
    params: Tensor | None,
    objective: str,
    hparams: list[float],
    ignore_index: int,
    reduction: str,
    chunk_size: int | None,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    obj = _chunked.OBJECTIVES[objective]
    with _autocast_off(input):
        p = _chunked.build(
            input,
            weight,
            bias,
            target,
            ref_input,
            ref_weight,
            ref_bias,
            obj.family,
            obj.family_params(hparams),
            ignore_index,
            needs,
        )
        result = _chunked.sequence_loss(p, params, objective, hparams, reduction, chunk_size)
    return _loss_outputs(input, result)


@sequence_loss.register_fake
def _sequence_loss_fake(
    input,
    weight,
    bias,
    target,
    ref_input,
    ref_weight,
    ref_bias,
    params,
    objective,
    hparams,
    ignore_index,
    reduction,
    chunk_size,
    needs,
):
    return _fake_loss(input, weight, bias, needs)


sequence_loss.register_autograd(_prescaled_grad, setup_context=_prescaled_setup)


@torch.library.custom_op("unlearnx::dto_loss", mutates_args=())
def dto_loss(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    ref_input: Tensor,
    ref_weight: Tensor,
    ref_bias: Tensor | None,
    target_mask: Tensor,
    beta: float,
    kl_weight: float,
    ignore_index: int,
    chunk_size: int | None,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    with _autocast_off(input):
        p = _chunked.build(
            input, weight, bias, target, ref_input, ref_weight, ref_bias, "kl", [], ignore_index, needs
        )
        result = _chunked.dto_loss(p, target_mask, beta, kl_weight, chunk_size)
    return _loss_outputs(input, result)


@dto_loss.register_fake
def _dto_loss_fake(
    input,
    weight,
    bias,
    target,
    ref_input,
    ref_weight,
    ref_bias,
    target_mask,
    beta,
    kl_weight,
    ignore_index,
    chunk_size,
    needs,
):
    return _fake_loss(input, weight, bias, needs)


dto_loss.register_autograd(_prescaled_grad, setup_context=_prescaled_setup)


# ------------------------------------------------------------------ flattening margins


@torch.library.custom_op("unlearnx::flatten_margins", mutates_args=())
def flatten_margins(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    ignore_index: int,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    with _autocast_off(input):
        p = _chunked.build(
            input[None],
            weight,
            bias,
            target[None],
            None,
            None,
            None,
            "max",
            [],
            ignore_index,
            (False, False, False),
        )
        return _chunked.flatten_margins(p, chunk_size)


@flatten_margins.register_fake
def _flatten_margins_fake(input, weight, bias, target, ignore_index, chunk_size):
    n = input.shape[0]
    return input.new_empty(n, dtype=_acc(input)), input.new_empty(n, dtype=torch.int64)


@torch.library.custom_op("unlearnx::flatten_margins_backward", mutates_args=())
def flatten_margins_backward(
    grad: Tensor, input: Tensor, weight: Tensor, bias: Tensor | None, argmax: Tensor, needs: list[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    with _autocast_off(input):
        grads = _chunked.flatten_backward(grad, input, weight, bias, argmax, needs)
    return tuple(_or_empty(g, input) for g in grads)


@flatten_margins_backward.register_fake
def _flatten_margins_backward_fake(grad, input, weight, bias, argmax, needs):
    return _fake_grads(input, weight, bias, needs)


def _flatten_setup(ctx, inputs, output) -> None:
    input, weight, bias, *_ = inputs
    ctx.save_for_backward(input, weight, bias, output[1])


def _flatten_grad(ctx, grad_margin: Tensor, grad_argmax: Tensor | None):
    input, weight, bias, argmax = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:3]]
    grads = flatten_margins_backward(grad_margin, input, weight, bias, argmax, needs)
    return (*(g if n else None for g, n in zip(grads, needs, strict=True)), None, None, None)


flatten_margins.register_autograd(_flatten_grad, setup_context=_flatten_setup)
