"""PyTorch operators of unlearnx: fake (meta) implementations and autograd glue.

C++ row kernels (``csrc/ops.cpp``):

- ``unlearnx::lse_stats(logits [C, V], target [C]) -> (lse [C], logp_target [C])``
- ``unlearnx::logprob_grad_(logits [C, V]!, target, lse, logp_target, coef)``: in place,
  ``logits <- coef * (onehot(target) - softmax(logits))``.

Chunked operators (the driver in ``_chunked``; opaque to ``torch.compile``):

- ``unlearnx::token_logprobs(input [N, D], weight [V, D], bias [V]?, target [N], ...)
  -> (logp [N], lse [N])``, differentiable for any upstream gradient by recompute
  (``unlearnx::token_logprobs_backward``).
- ``unlearnx::sequence_loss(input [B, T, D], weight, bias?, target [B, T], params [B]?,
  objective, hparams, ...) -> (loss [], grad_input, grad_weight, grad_bias)``: gradients
  come out of the forward; the backward only scales them by the incoming gradient.
  Gradients not asked for (``needs``) are returned as empty tensors.
"""

import torch
from torch import Tensor

import unlearnx._C  # noqa: F401  (registers the C++ operators)
from unlearnx import _chunked


def _acc(t: Tensor) -> torch.dtype:
    return _chunked.acc_dtype(t.dtype)


def _or_empty(grad: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if grad is None else grad


def _fake_grads(input: Tensor, weight: Tensor, bias: Tensor | None, needs: list[bool]):
    shapes = (input, weight, weight[:, 0] if bias is None else bias)
    return tuple(
        t.new_empty(t.shape) if need else t.new_empty(0) for t, need in zip(shapes, needs, strict=True)
    )


@torch.library.register_fake("unlearnx::lse_stats")
def _lse_stats_fake(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    rows = logits.shape[0]
    return logits.new_empty(rows, dtype=_acc(logits)), logits.new_empty(rows, dtype=_acc(logits))


@torch.library.register_fake("unlearnx::logprob_grad_")
def _logprob_grad_fake(
    logits: Tensor, target: Tensor, lse: Tensor, logp_target: Tensor, coef: Tensor
) -> None:
    return None


@torch.library.custom_op("unlearnx::token_logprobs", mutates_args=())
def token_logprobs(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    ignore_index: int,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    return _chunked.token_logprobs(input, weight, bias, target, ignore_index, chunk_size)


@token_logprobs.register_fake
def _token_logprobs_fake(input, weight, bias, target, ignore_index, chunk_size):
    n = input.shape[0]
    return input.new_empty(n, dtype=_acc(input)), input.new_empty(n, dtype=_acc(input))


@torch.library.custom_op("unlearnx::token_logprobs_backward", mutates_args=())
def token_logprobs_backward(
    grad: Tensor,
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    logp: Tensor,
    lse: Tensor,
    ignore_index: int,
    chunk_size: int | None,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    grads = _chunked.token_logprobs_backward(
        grad, input, weight, bias, target, logp, lse, ignore_index, chunk_size, needs
    )
    return tuple(_or_empty(g, input) for g in grads)


@token_logprobs_backward.register_fake
def _token_logprobs_backward_fake(
    grad, input, weight, bias, target, logp, lse, ignore_index, chunk_size, needs
):
    return _fake_grads(input, weight, bias, needs)


def _token_logprobs_setup(ctx, inputs, output) -> None:
    input, weight, bias, target, ignore_index, chunk_size = inputs
    ctx.save_for_backward(input, weight, bias, target, *output)
    ctx.ignore_index, ctx.chunk_size = ignore_index, chunk_size


def _token_logprobs_grad(ctx, grad_logp: Tensor, grad_lse: Tensor):
    input, weight, bias, target, logp, lse = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:3]]
    grads = token_logprobs_backward(
        grad_logp, input, weight, bias, target, logp, lse, ctx.ignore_index, ctx.chunk_size, needs
    )
    return (*(g if n else None for g, n in zip(grads, needs, strict=True)), None, None, None)


token_logprobs.register_autograd(_token_logprobs_grad, setup_context=_token_logprobs_setup)


@torch.library.custom_op("unlearnx::sequence_loss", mutates_args=())
def sequence_loss(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    params: Tensor | None,
    objective: str,
    hparams: list[float],
    ignore_index: int,
    reduction: str,
    chunk_size: int | None,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    loss, *grads = _chunked.sequence_loss(
        input, weight, bias, target, params, objective, hparams, ignore_index, reduction, chunk_size, needs
    )
    return (loss, *(_or_empty(g, input) for g in grads))


@sequence_loss.register_fake
def _sequence_loss_fake(
    input, weight, bias, target, params, objective, hparams, ignore_index, reduction, chunk_size, needs
):
    return (input.new_empty((), dtype=_acc(input)), *_fake_grads(input, weight, bias, needs))


def _sequence_loss_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*output[1:])


def _sequence_loss_grad(ctx, grad_loss: Tensor, *unused: Tensor):
    grads = [
        g * grad_loss.to(g.dtype) if n else None
        for g, n in zip(ctx.saved_tensors, ctx.needs_input_grad[:3], strict=True)
    ]
    return (*grads, *(None,) * 8)


sequence_loss.register_autograd(_sequence_loss_grad, setup_context=_sequence_loss_setup)
