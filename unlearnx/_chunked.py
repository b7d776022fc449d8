"""Chunk driver: the LM head and the row kernels over chunks of tokens.

Only one ``[C, V]`` chunk of logits exists at a time. Ignored tokens are dropped before
any GEMM. Per chunk: ``Z = X_c W^T (+ b)`` (ATen GEMM), the statistics kernel
(``lse_stats``), and, where gradients are wanted, the gradient kernel rewrites ``Z`` in
place into ``dL/dZ`` (``logprob_grad_``) before ``dX_c = dZ W`` and ``dW += dZ^T X_c``.

These functions run inside the custom ops of ``_ops``: they may synchronise with the
device (``nonzero`` and the chunk plan need host-side counts, once per call), and
the compiler never traces into them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unlearnx._objectives import OBJECTIVES, per_sequence_grad, per_sequence_loss, reduction_scale

CPU_CHUNK_BYTES = 64 << 20
CUDA_CHUNK_BYTES = 1 << 30
# The single pass saves a quarter of the FLOPs (6 instead of 8 N·D·V), so an automatic
# chunk grows up to this factor past its budget to hold the longest sequence.
SINGLE_PASS_STRETCH = 4


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and loss dtype: fp64 for fp64 inputs, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_rows(vocab: int, dtype: torch.dtype, device: torch.device, chunk_size: int | None) -> int:
    """Rows per chunk: ``chunk_size`` if given, else what fits the device's logits budget."""
    if chunk_size is not None:
        return chunk_size
    budget = CUDA_CHUNK_BYTES if device.type == "cuda" else CPU_CHUNK_BYTES
    return max(1, budget // (vocab * torch.empty((), dtype=dtype).element_size()))


@dataclass
class Tokens:
    """The valid tokens of a batch, compacted. ``rows`` index the flattened input."""

    rows: Tensor  # (n,) int64
    x: Tensor  # (n, D) input dtype
    t: Tensor  # (n,) int64, in [0, V)
    seq: Tensor  # (n,) int64 sequence of each row (rows // T)


def compact(input2d: Tensor, target1d: Tensor, vocab: int, ignore_index: int, seq_len: int) -> Tokens:
    valid = target1d != ignore_index
    rows = valid.nonzero().squeeze(1)
    t = target1d.index_select(0, rows)
    bad = (t < 0) | (t >= vocab)
    if bad.any():
        value = t[bad][0].item()
        raise ValueError(
            f"target: value {value} is outside [0, {vocab}) and is not ignore_index={ignore_index}"
        )
    return Tokens(rows, input2d.index_select(0, rows), t, torch.div(rows, seq_len, rounding_mode="floor"))


class Head:
    """``weight (V, D)``, optional ``bias (V,)``, and gradient accumulators."""

    def __init__(self, weight: Tensor, bias: Tensor | None, n_input: int, needs: Sequence[bool]) -> None:
        self.weight, self.bias = weight, bias
        acc = acc_dtype(weight.dtype)
        dev = weight.device
        need_x, need_w, need_b = needs
        self.gx = torch.zeros(n_input, weight.shape[1], dtype=weight.dtype, device=dev) if need_x else None
        # Low-precision weights accumulate dW over chunks in fp32.
        self.gw = torch.zeros(weight.shape, dtype=acc, device=dev) if need_w else None
        self.gb = torch.zeros(weight.shape[0], dtype=acc, device=dev) if need_b and bias is not None else None

    @property
    def wants_grad(self) -> bool:
        return self.gx is not None or self.gw is not None or self.gb is not None

    def logits(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return x @ self.weight.t()
        return torch.addmm(self.bias, x, self.weight.t())

    def backprop(self, dz: Tensor, x: Tensor, rows: Tensor) -> None:
        if self.gx is not None:
            self.gx.index_copy_(0, rows, dz @ self.weight)
        if self.gw is not None:
            if self.gw.dtype == dz.dtype:
                self.gw.addmm_(dz.t(), x)
            else:
                self.gw += dz.t() @ x
        if self.gb is not None:
            self.gb += dz.sum(0, dtype=self.gb.dtype)

    def grads(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        w = self.weight
        return (
            self.gx,
            None if self.gw is None else self.gw.to(w.dtype),
            None if self.gb is None else self.gb.to(w.dtype),
        )


# on_chunk(start, end, lse_c, logp_c) -> per-row gradient coefficient, or None for none
OnChunk = Callable[[int, int, Tensor, Tensor], "Tensor | None"]


def sweep(
    tok: Tokens,
    head: Head,
    bounds: Sequence[tuple[int, int]],
    on_chunk: OnChunk,
    stats: tuple[Tensor, Tensor] | None = None,
) -> None:
    """One pass of the LM head over ``bounds``: the statistics kernel (unless ``stats``,
    the ``(lse, logp)`` of an earlier pass, are given), then the gradient kernel and
    backprop for each chunk whose ``on_chunk`` returns coefficients."""
    for start, end in bounds:
        x, t = tok.x[start:end], tok.t[start:end]
        z = head.logits(x)
        if stats is None:
            lse_c, logp_c = torch.ops.unlearnx.lse_stats(z, t)
        else:
            lse_c, logp_c = stats[0][start:end], stats[1][start:end]
        coef = on_chunk(start, end, lse_c, logp_c)
        if coef is not None:
            torch.ops.unlearnx.logprob_grad_(z, t, lse_c, logp_c, coef)
            head.backprop(z, x, tok.rows[start:end])


def uniform_bounds(n: int, rows: int) -> list[tuple[int, int]]:
    return [(s, min(s + rows, n)) for s in range(0, n, rows)]


def sequence_bounds(counts: Tensor, rows: int) -> list[tuple[int, int]] | None:
    """Chunks holding whole sequences, or None if some sequence is longer than ``rows``."""
    bounds, start, end = [], 0, 0
    for c in counts.tolist():
        if c > rows:
            return None
        if end + c - start > rows:
            bounds.append((start, end))
            start = end
        end += c
    if end > start:
        bounds.append((start, end))
    return bounds


def token_logprobs(
    input2d: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target1d: Tensor,
    ignore_index: int,
    chunk: int | None,
) -> tuple[Tensor, Tensor]:
    """``(logp (N,), lse (N,))`` in the accumulation dtype, 0 at ignored positions."""
    tok = compact(input2d, target1d, weight.shape[0], ignore_index, 1)
    head = Head(weight, bias, input2d.shape[0], (False, False, False))
    acc = acc_dtype(input2d.dtype)
    lse = torch.zeros(input2d.shape[0], dtype=acc, device=input2d.device)
    logp = torch.zeros_like(lse)

    def keep(start: int, end: int, lse_c: Tensor, logp_c: Tensor) -> None:
        rows = tok.rows[start:end]
        lse.index_copy_(0, rows, lse_c)
        logp.index_copy_(0, rows, logp_c)

    rows = chunk_rows(weight.shape[0], input2d.dtype, input2d.device, chunk)
    sweep(tok, head, uniform_bounds(tok.rows.numel(), rows), keep)
    return logp, lse


def token_logprobs_backward(
    grad: Tensor,
    input2d: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target1d: Tensor,
    logp: Tensor,
    lse: Tensor,
    ignore_index: int,
    chunk: int | None,
    needs: Sequence[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Recompute pass: gradients of ``sum(grad * logp)`` for any upstream ``grad (N,)``."""
    tok = compact(input2d, target1d, weight.shape[0], ignore_index, 1)
    head = Head(weight, bias, input2d.shape[0], needs)
    coef = grad.index_select(0, tok.rows).to(lse.dtype)
    stats = lse.index_select(0, tok.rows), logp.index_select(0, tok.rows)
    rows = chunk_rows(weight.shape[0], input2d.dtype, input2d.device, chunk)
    sweep(tok, head, uniform_bounds(tok.rows.numel(), rows), lambda s, e, *_: coef[s:e], stats)
    return head.grads()


def sequence_loss(
    input3d: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target2d: Tensor,
    params: Tensor | None,
    objective: str,
    hparams: Sequence[float],
    ignore_index: int,
    reduction: str,
    chunk: int | None,
    needs: Sequence[bool],
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Loss ``sum_b f(S_b)`` (scaled for ``reduction``) and its gradients.

    Single pass (6·N·D·V FLOPs) when chunks can hold whole sequences (or ``f`` is linear):
    each chunk's coefficients ``df/dS_b`` are known once its statistics are. Otherwise two
    passes (8·N·D·V): statistics for every chunk, then a recompute with the coefficients.
    """
    n_seq, seq_len, dim = input3d.shape
    tok = compact(input3d.reshape(-1, dim), target2d.reshape(-1), weight.shape[0], ignore_index, seq_len)
    head = Head(weight, bias, n_seq * seq_len, needs)
    acc = acc_dtype(input3d.dtype)
    counts = torch.bincount(tok.seq, minlength=n_seq)
    scale = reduction_scale(objective, counts, reduction, acc)
    rows = chunk_rows(weight.shape[0], input3d.dtype, input3d.device, chunk)
    n = tok.rows.numel()
    total = torch.zeros((), dtype=acc, device=input3d.device)

    def contribution(s_partial: Tensor, present: Tensor) -> tuple[Tensor, Tensor | None]:
        """(scaled loss of the present sequences, its gradient w.r.t. S if wanted)."""
        zero = torch.zeros_like(s_partial)
        per = per_sequence_loss(objective, s_partial, counts, params, hparams)
        value = torch.where(present, per, zero).sum() * scale
        if not head.wants_grad:
            return value, None
        grad = per_sequence_grad(objective, s_partial, counts, params, hparams)
        return value, torch.where(present, grad, zero) * scale

    def summed(start: int, end: int, logp: Tensor) -> Tensor:
        # fp64: a sequential index_add of hundreds of fp32 log-probs drifts by ulps of S
        sums = torch.zeros(n_seq, dtype=torch.float64, device=logp.device)
        return sums.index_add_(0, tok.seq[start:end], logp.double()).to(acc)

    if OBJECTIVES[objective].linear:
        bounds = uniform_bounds(n, rows)
    else:
        host_counts = counts.cpu()
        longest = int(host_counts.max()) if n_seq else 0
        if chunk is None and rows < longest <= SINGLE_PASS_STRETCH * rows:
            rows = longest
        bounds = sequence_bounds(host_counts, rows)
    if bounds is not None:

        def single_pass(start: int, end: int, lse_c: Tensor, logp_c: Tensor) -> Tensor | None:
            nonlocal total
            present = torch.zeros(n_seq, dtype=torch.bool, device=lse_c.device)
            present[tok.seq[start:end]] = True
            value, grad = contribution(summed(start, end, logp_c), present)
            total = total + value
            return None if grad is None else grad.index_select(0, tok.seq[start:end])

        sweep(tok, head, bounds, single_pass)
        return total, *_shaped(head.grads(), input3d)

    bounds = uniform_bounds(n, rows)
    lse = torch.empty(n, dtype=acc, device=input3d.device)
    logp = torch.empty_like(lse)

    def stats_only(start: int, end: int, lse_c: Tensor, logp_c: Tensor) -> None:
        lse[start:end] = lse_c
        logp[start:end] = logp_c

    sweep(tok, head, bounds, stats_only)
    total, grad = contribution(summed(0, n, logp), counts > 0)
    if grad is not None:
        coef = grad.index_select(0, tok.seq)
        sweep(tok, head, bounds, lambda s, e, *_: coef[s:e], (lse, logp))
    return total, *_shaped(head.grads(), input3d)


def _shaped(grads: tuple[Tensor | None, ...], input3d: Tensor) -> tuple[Tensor | None, ...]:
    gx, *rest = grads
    return (None if gx is None else gx.view(input3d.shape), *rest)
