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
  grad_weight, grad_bias, grad_logits, grad_weight_input)`` and ``dto_loss(...)``: gradients
  come out of the forward; the backward only scales them by the incoming gradient. Where
  ``_chunked.defers_weight_grad`` holds (one chunk of at most ``D`` positions), ``grad_weight``
  is empty and the backward forms it as ``grad_logits^T (g grad_weight_input)``
  (``[B*T, V]``, ``[B*T, D]``, zero past the valid tokens); otherwise those two are empty.
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


def _scaled(t: Tensor, grad_loss: Tensor, inplace: bool = False) -> Tensor:
    """``t * grad_loss`` in ``t``'s dtype. fp16 cannot hold a GradScaler's first loss scale,
    2^16, and a 0-dim GPU tensor is cast to the other operand's dtype, so in fp16 the scale
    goes on as two factors, each at most 2^16 for scales below 2^32 and exact for powers of
    two."""
    if t.dtype != torch.float16:
        g = grad_loss.to(t.dtype)
        return t.mul_(g) if inplace else t * g
    mantissa, exponent = torch.frexp(grad_loss.float())
    low = torch.div(exponent, 2, rounding_mode="floor")
    first = torch.ldexp(mantissa, exponent - low).to(t.dtype)
    second = torch.ldexp(torch.ones_like(mantissa), low).to(t.dtype)
    return (t.mul_(first) if inplace else t * first).mul_(second)


def _deferred_weight_grad(dz: Tensor, x: Tensor, grad_loss: Tensor) -> Tensor:
    """``dz^T (g x)``: ``g`` goes on the small factor, except in fp16, where ``g`` may be a
    loss scale that overflows ``g x``; there the product is scaled in place."""
    if x.dtype == torch.float16:
        return _scaled(dz.t() @ x, grad_loss, inplace=True)
    return dz.t() @ _scaled(x, grad_loss)


def _prescaled_grad(ctx, grad_loss: Tensor, *unused: Tensor):
    """The op returned d loss / d (input, weight, bias), or the factors of d loss / d weight:
    scale them by the incoming gradient."""
    if grad_loss is None:  # undefined, as gradcheck's undefined-gradient check passes it
        return (None,) * ctx.n_inputs
    gx, gw, gb, dz, xs = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    if need_w:
        gw = _deferred_weight_grad(dz, xs, grad_loss) if dz.numel() else _scaled(gw, grad_loss)
    grads = (
        _scaled(gx, grad_loss) if need_x else None,
        gw if need_w else None,
        _scaled(gb, grad_loss) if need_b else None,
    )
    return (*grads, *(None,) * (ctx.n_inputs - 3))


LossOutputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _loss_outputs(input: Tensor, loss: Tensor, head: _chunked.Head) -> LossOutputs:
    gx, gw, gb = head.grads()
    dz, xs = head.weight_grad_factors() or (None, None)
    return (
        loss,
        _or_empty(None if gx is None else gx.view(input.shape), input),
        *(_or_empty(t, input) for t in (gw, gb, dz, xs)),
    )


def _fake_loss(input, weight, bias, needs, defer: bool) -> LossOutputs:
    gx, gw, gb = _fake_grads(input, weight, bias, needs)
    positions = input.shape[0] * input.shape[1]
    if defer:
        gw = input.new_empty(0)
        factors = (input.new_empty(positions, weight.shape[0]), input.new_empty(positions, weight.shape[1]))
    else:
        factors = (input.new_empty(0), input.new_empty(0))
    return (input.new_empty((), dtype=_acc(input)), gx, gw, gb, *factors)


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
) -> LossOutputs:
    obj = _chunked.OBJECTIVES[objective]
    family, fparams = obj.family, obj.family_params(hparams)
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
            fparams,
            ignore_index,
            needs,
            _chunked.defers_weight_grad(input, weight, family, fparams, chunk_size, needs),
        )
        loss = _chunked.sequence_loss(p, params, objective, hparams, reduction, chunk_size)
    return _loss_outputs(input, loss, p.head)


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
    obj = _chunked.OBJECTIVES[objective]
    defer = _chunked.defers_weight_grad(
        input, weight, obj.family, obj.family_params(hparams), chunk_size, needs
    )
    return _fake_loss(input, weight, bias, needs, defer)


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
) -> LossOutputs:
    defer = _chunked.defers_weight_grad(input, weight, "kl", [], chunk_size, needs)
    with _autocast_off(input):
        p = _chunked.build(
            input, weight, bias, target, ref_input, ref_weight, ref_bias, "kl", [], ignore_index, needs, defer
        )
        loss = _chunked.dto_loss(p, target_mask, beta, kl_weight, chunk_size)
    return _loss_outputs(input, loss, p.head)


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
    defer = _chunked.defers_weight_grad(input, weight, "kl", [], chunk_size, needs)
    return _fake_loss(input, weight, bias, needs, defer)


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
