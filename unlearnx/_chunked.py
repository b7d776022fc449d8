"""Chunk driver: the LM head and the row kernels over chunks of tokens.

Only one ``[C, V]`` chunk of logits (two with a reference model) exists at a time.
Ignored tokens are dropped before any GEMM. Per chunk: ``Z = X_c W^T (+ b)`` (ATen GEMM),
``R`` likewise from the reference hidden states and head where the loss needs them, the
family's statistics kernel, and, where gradients are wanted, its gradient kernel rewrites
``Z`` in place into ``dL/dZ`` before ``dX_c = dZ W`` and ``dW += dZ^T X_c``.

These functions run inside the custom ops of ``_ops``: they may synchronise with the
device before the chunk loop (target validation, ``nonzero`` and the chunk plan need
host-side values), never inside it, and the compiler never traces into them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unlearnx import _rows
from unlearnx._objectives import OBJECTIVES, per_sequence_grad, per_sequence_loss, reduction_scale

CPU_CHUNK_BYTES = 64 << 20
CUDA_CHUNK_BYTES = 1 << 30
# The single pass saves a quarter of the FLOPs (6 instead of 8 N·D·V), so an automatic
# chunk grows up to this factor past its budget to hold the longest sequence.
SINGLE_PASS_STRETCH = 4


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and loss dtype: fp64 for fp64 inputs, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_rows(
    vocab: int, dtype: torch.dtype, device: torch.device, chunk_size: int | None, n_mats: int = 1
) -> int:
    """Rows per chunk: ``chunk_size`` if given, else what fits the device's logits budget
    (shared by ``n_mats`` chunk matrices: 2 with reference logits)."""
    if chunk_size is not None:
        return chunk_size
    budget = CUDA_CHUNK_BYTES if device.type == "cuda" else CPU_CHUNK_BYTES
    return max(1, budget // (n_mats * vocab * torch.empty((), dtype=dtype).element_size()))


def defers_weight_grad(
    input3d: Tensor,
    weight: Tensor,
    family: str,
    family_params: Sequence[float],
    chunk_size: int | None,
    needs: Sequence[bool],
) -> bool:
    """Whether a loss op whose backward scales the gradients it returned leaves ``dW`` to
    that backward, as ``dZ^T (g X)``: when ``dW`` is wanted and the ``P = B*T`` positions fit
    one chunk of at most ``D`` rows, so that the chunk's kept ``dZ [P, V]`` is no larger than
    the ``dW [V, D]`` it replaces. The forward then forms no ``V x D`` tensor and the backward
    one, where it used to form ``dW`` and scale it into a second: 28-35 of about 440 ms for
    fused NLL at N=512, D=512, V=32000 fp32 on the 2-core AVX2 CPU (docs/performance.md).
    Decided from shapes alone, so the fake op knows its output shapes."""
    n_seq, seq_len, dim = input3d.shape
    positions = n_seq * seq_len
    n_mats = _n_mats(_rows.make(family, family_params))
    rows = chunk_rows(weight.shape[0], input3d.dtype, input3d.device, chunk_size, n_mats)
    return bool(needs[1]) and 0 < positions <= min(rows, dim)


@dataclass
class Tokens:
    """The valid tokens of a batch, compacted. ``rows`` index the flattened input."""

    rows: Tensor  # (n,) int64
    x: Tensor  # (n, D) input dtype
    t: Tensor  # (n,) int64, in [0, V)
    seq: Tensor  # (n,) int64 sequence of each row (rows // T)
    xr: Tensor | None = None  # (n, D_ref) reference hidden states


def compact(
    input2d: Tensor,
    target1d: Tensor,
    vocab: int,
    ignore_index: int,
    seq_len: int,
    ref2d: Tensor | None = None,
) -> Tokens:
    valid = target1d != ignore_index
    rows = valid.nonzero().squeeze(1)
    t = target1d.index_select(0, rows)
    bad = (t < 0) | (t >= vocab)
    if bad.any():
        value = t[bad][0].item()
        raise ValueError(
            f"target: value {value} is outside [0, {vocab}) and is not ignore_index={ignore_index}"
        )
    xr = None if ref2d is None else ref2d.index_select(0, rows)
    seq = torch.div(rows, seq_len, rounding_mode="floor")
    return Tokens(rows, input2d.index_select(0, rows), t, seq, xr)


def _padded(t: Tensor, rows: int) -> Tensor:
    """``t [n, k]`` with zero rows appended up to ``rows``; ``t`` itself if it has them."""
    if t.shape[0] == rows:
        return t
    out = t.new_zeros(rows, t.shape[1])
    out[: t.shape[0]] = t
    return out


class Head:
    """``weight (V, D)``, optional ``bias (V,)``, and gradient accumulators. ``dW`` and ``db``
    start as the first chunk's product (a ``V x D`` zero fill costs a GEMM's worth of memory
    traffic per call); low-precision weights accumulate ``dW`` in fp32 from the second chunk
    on, and ``db`` in fp32."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        n_input: int,
        needs: Sequence[bool],
        defer_weight_grad: bool = False,
    ) -> None:
        self.weight, self.bias = weight, bias
        self.acc = acc_dtype(weight.dtype)
        need_x, need_w, need_b = needs
        self.need_w, self.need_b = need_w, need_b and bias is not None
        dev = weight.device
        self.gx = torch.zeros(n_input, weight.shape[1], dtype=weight.dtype, device=dev) if need_x else None
        self.gw: Tensor | None = None
        self.gb: Tensor | None = None
        # the call is one chunk, whose (dZ, X) are kept for dW = dZ^T X (see weight_grad_factors)
        self.defer_rows = n_input if need_w and defer_weight_grad else 0
        self._factors: tuple[Tensor, Tensor] | None = None
        self._logits_buf: Tensor | None = None

    @property
    def wants_grad(self) -> bool:
        return self.gx is not None or self.need_w or self.need_b

    def logits(self, x: Tensor) -> Tensor:
        """``[C, V]`` logits of a chunk, written into one buffer reused by every chunk of
        the call: a fresh ``[C, V]`` allocation is above glibc's mmap threshold, so each
        chunk would page-fault its logits in afresh (about 28 ms per 64 MiB on the 2-core
        development VM). The previous chunk's logits are dead by then. One GEMM over the
        whole vocabulary: in blocks of 1024 weight rows the GEMM alone was 15% faster on the
        AMD EPYC, but the whole loss was no faster there and 6-14% slower on an Intel Xeon
        (docs/performance.md)."""
        rows = x.shape[0]
        buf = self._logits_buf
        if buf is None or buf.shape[0] < rows:
            buf = self._logits_buf = x.new_empty(rows, self.weight.shape[0])
        out = buf[:rows]
        if self.bias is None:
            return torch.mm(x, self.weight.t(), out=out)
        return torch.addmm(self.bias, x, self.weight.t(), out=out)

    def backprop(self, dz: Tensor, x: Tensor, rows: Tensor, dx: Tensor | None = None) -> None:
        """Accumulates the gradients of a chunk from ``dz = dL/dZ``; ``dx``: ``dz @ W`` when
        the caller has it already."""
        if self.gx is not None:
            self.gx.index_copy_(0, rows, dz @ self.weight if dx is None else dx)
        if self.defer_rows:
            if self._factors is not None:
                raise RuntimeError("a deferred weight gradient takes exactly one chunk")
            self._factors = (_padded(dz, self.defer_rows), _padded(x, self.defer_rows))
        elif self.need_w:
            if self.gw is None:
                self.gw = dz.t() @ x  # in the GEMM's dtype: a single chunk needs no fp32 copy
            elif self.gw.dtype == dz.dtype == self.acc:
                self.gw.addmm_(dz.t(), x)
            else:  # low precision past the first chunk: dW goes to fp32 once, then accumulates
                self.gw = self.gw.to(self.acc)
                self.gw += dz.t() @ x
        if self.need_b:
            db = dz.sum(0, dtype=self.acc)
            self.gb = db if self.gb is None else self.gb.add_(db)

    def weight_grad_factors(self) -> tuple[Tensor, Tensor] | None:
        """``(dZ [P, V], X [P, D])`` with ``dW = dZ^T X`` if the weight gradient was deferred
        (rows past the valid tokens are zero), else None."""
        if not self.defer_rows:
            return None
        if self._factors is None:  # no valid token
            w = self.weight
            return w.new_zeros(self.defer_rows, w.shape[0]), w.new_zeros(self.defer_rows, w.shape[1])
        return self._factors

    def grads(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``(dX, dW, dB)``, None where not wanted; dW is None if deferred."""
        w = self.weight
        gw = gb = None
        if self.need_w and not self.defer_rows:
            gw = torch.zeros_like(w) if self.gw is None else self.gw.to(w.dtype)
        if self.need_b:
            gb = torch.zeros_like(self.bias) if self.gb is None else self.gb.to(w.dtype)
        return self.gx, gw, gb


@dataclass
class Problem:
    """Everything a pass needs: compacted tokens, the policy head, the reference head
    (frozen, only for families that need one) and the row family."""

    tok: Tokens
    head: Head
    ref: Head | None
    family: object
    n_seq: int
    n_rows: int  # B * T, ignored positions included
    acc: torch.dtype
    # a linear family's U = G W of every token, kept by a statistics-only pass for the
    # recompute pass's dX (N x D, the size of the input)
    linear_u: Tensor | None = None


def build(
    input3d: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target2d: Tensor,
    ref_input: Tensor | None,
    ref_weight: Tensor | None,
    ref_bias: Tensor | None,
    family: str,
    family_params: Sequence[float],
    ignore_index: int,
    needs: Sequence[bool],
    defer_weight_grad: bool = False,
) -> Problem:
    """``defer_weight_grad``: see :func:`defers_weight_grad`."""
    n_seq, seq_len, dim = input3d.shape
    fam = _rows.make(family, family_params)
    ref2d = ref_input.reshape(n_seq * seq_len, -1) if fam.needs_ref else None
    tok = compact(
        input3d.reshape(-1, dim), target2d.reshape(-1), weight.shape[0], ignore_index, seq_len, ref2d
    )
    ref = Head(ref_weight, ref_bias, 0, (False, False, False)) if fam.needs_ref else None
    head = Head(weight, bias, n_seq * seq_len, needs, defer_weight_grad)
    return Problem(tok, head, ref, fam, n_seq, n_seq * seq_len, acc_dtype(input3d.dtype))


# on_chunk(start, end, stats) -> per-row gradient coefficient(s), or None for none
OnChunk = Callable[[int, int, "_rows.Stats"], "Tensor | tuple[Tensor, ...] | None"]


def sweep(
    p: Problem, bounds: Sequence[tuple[int, int]], on_chunk: OnChunk, saved: _rows.Stats | None = None
) -> None:
    """One pass of the head(s) over ``bounds``: the family's statistics kernel (unless
    ``saved``, the statistics of an earlier pass, are given), then its gradient kernel and
    backprop for each chunk whose ``on_chunk`` returns coefficients."""
    if p.family.linear:
        return _sweep_linear(p, bounds, on_chunk, saved)
    tok = p.tok
    for start, end in bounds:
        x, t = tok.x[start:end], tok.t[start:end]
        z = p.head.logits(x)
        r = p.ref.logits(tok.xr[start:end]) if p.ref is not None else None
        stats = p.family.stats(z, r, t) if saved is None else tuple(s[start:end] for s in saved)
        coef = on_chunk(start, end, stats)
        if coef is not None:
            p.family.grad_(z, r, t, stats, coef)
            p.head.backprop(z, x, tok.rows[start:end])


def _sweep_linear(
    p: Problem, bounds: Sequence[tuple[int, int]], on_chunk: OnChunk, saved: _rows.Stats | None
) -> None:
    """``sweep`` for a family whose value is ``<g, z - r>`` with ``g`` from the reference rows
    alone (DiPO). ``<g, z> = <g W, x> + <g, b>``, so per chunk: ``R`` (GEMM), ``G`` from ``R``
    in place, ``U = G W`` (GEMM), and with coefficients ``c``: ``dX = c U`` (no GEMM),
    ``dW += (c G)^T X`` (GEMM). The policy logits are never formed: 3 GEMMs (6·N·D·V) with
    gradients instead of the 4 (8·N·D·V) of a logits-based loss with a reference."""
    tok, head, acc = p.tok, p.head, p.acc
    for start, end in bounds:
        x = tok.x[start:end]
        g = p.ref.logits(tok.xr[start:end])
        offset = p.family.direction_(g)
        u = None
        if saved is None:
            u = g @ head.weight
            value = torch.einsum("cd,cd->c", u.to(acc), x.to(acc)) - offset
            if head.bias is not None:
                value = value + (g @ head.bias).to(acc)
            stats = (value,)
        else:
            stats = tuple(s[start:end] for s in saved)
        coef = on_chunk(start, end, stats)
        if coef is None:
            if u is not None and head.gx is not None:  # a recompute pass will want dX = c U
                if p.linear_u is None:
                    p.linear_u = torch.empty(tok.x.shape[0], u.shape[1], dtype=u.dtype, device=u.device)
                p.linear_u[start:end] = u
            continue
        dx = None
        if head.gx is not None:
            if u is None:
                u = p.linear_u[start:end] if p.linear_u is not None else g @ head.weight
            dx = u * coef.to(u.dtype)[:, None]
        g.mul_(coef.to(g.dtype)[:, None])
        head.backprop(g, x, tok.rows[start:end], dx=dx)


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


def _n_mats(family) -> int:
    """``[C, V]`` matrices alive per chunk: policy logits, and reference logits if needed (a
    linear family forms only the reference's)."""
    return 2 if family.needs_ref and not family.linear else 1


def token_values(p: Problem, chunk: int | None) -> tuple[Tensor, Tensor]:
    """``(values (N,), stats (k, N))`` of every token, 0 at ignored positions; the statistics
    are what a recompute pass needs."""
    n_all = p.n_rows
    dev = p.tok.x.device
    values = torch.zeros(n_all, dtype=p.acc, device=dev)
    saved: list[Tensor] = []

    def keep(start: int, end: int, stats: _rows.Stats) -> None:
        rows = p.tok.rows[start:end]
        if not saved:
            saved.extend(torch.zeros(n_all, dtype=s.dtype, device=dev) for s in stats)
        for buf, s in zip(saved, stats, strict=True):
            buf.index_copy_(0, rows, s)
        values.index_copy_(0, rows, p.family.value(stats))

    rows = chunk_rows(p.head.weight.shape[0], p.tok.x.dtype, dev, chunk, _n_mats(p.family))
    sweep(p, uniform_bounds(p.tok.rows.numel(), rows), keep)
    stacked = torch.stack(saved) if saved else torch.zeros(0, n_all, dtype=p.acc, device=dev)
    return values, stacked


def token_values_backward(
    p: Problem, grad: Tensor, stats: Tensor, chunk: int | None
) -> tuple[Tensor | None, ...]:
    """Recompute pass: gradients of ``sum(grad * values)`` for any upstream ``grad (N,)``."""
    coef = grad.index_select(0, p.tok.rows).to(p.acc)
    saved = tuple(s.index_select(0, p.tok.rows) for s in stats)
    rows = chunk_rows(p.head.weight.shape[0], p.tok.x.dtype, p.tok.x.device, chunk, _n_mats(p.family))
    sweep(p, uniform_bounds(p.tok.rows.numel(), rows), lambda s, e, _: coef[s:e], saved)
    return p.head.grads()


def sequence_loss(
    p: Problem,
    params: Tensor | None,
    objective: str,
    hparams: Sequence[float],
    reduction: str,
    chunk: int | None,
) -> Tensor:
    """Loss ``sum_b f(S_b)`` (scaled for ``reduction``); its gradients accumulate in ``p.head``.

    Single pass (6·N·D·V FLOPs for the policy) when chunks can hold whole sequences (or
    ``f`` is linear): each chunk's coefficients ``df/dS_b`` are known once its statistics
    are. Otherwise two passes (8·N·D·V): statistics for every chunk, then a recompute.
    """
    tok, n_seq, acc = p.tok, p.n_seq, p.acc
    counts = torch.bincount(tok.seq, minlength=n_seq)
    scale = reduction_scale(objective, counts, reduction, acc)
    rows = chunk_rows(p.head.weight.shape[0], tok.x.dtype, tok.x.device, chunk, _n_mats(p.family))
    n = tok.rows.numel()
    total = torch.zeros((), dtype=acc, device=tok.x.device)

    def contribution(s_partial: Tensor, present: Tensor) -> tuple[Tensor, Tensor | None]:
        """(scaled loss of the present sequences, its gradient w.r.t. S if wanted)."""
        zero = torch.zeros_like(s_partial)
        per = per_sequence_loss(objective, s_partial, counts, params, hparams)
        value = torch.where(present, per, zero).sum() * scale
        if not p.head.wants_grad:
            return value, None
        grad = per_sequence_grad(objective, s_partial, counts, params, hparams)
        return value, torch.where(present, grad, zero) * scale

    def summed(start: int, end: int, values: Tensor) -> Tensor:
        # fp64: a sequential index_add of hundreds of fp32 values drifts by ulps of S
        sums = torch.zeros(n_seq, dtype=torch.float64, device=values.device)
        return sums.index_add_(0, tok.seq[start:end], values.double()).to(acc)

    if OBJECTIVES[objective].linear:
        bounds = uniform_bounds(n, rows)
    else:
        host_counts = counts.cpu()
        longest = int(host_counts.max()) if n_seq else 0
        if chunk is None and rows < longest <= SINGLE_PASS_STRETCH * rows:
            rows = longest
        bounds = sequence_bounds(host_counts, rows)
    if bounds is not None:

        def single_pass(start: int, end: int, stats: _rows.Stats) -> Tensor | None:
            nonlocal total
            present = torch.zeros(n_seq, dtype=torch.bool, device=tok.x.device)
            present[tok.seq[start:end]] = True
            value, grad = contribution(summed(start, end, p.family.value(stats)), present)
            total = total + value
            return None if grad is None else grad.index_select(0, tok.seq[start:end])

        sweep(p, bounds, single_pass)
        return total

    bounds = uniform_bounds(n, rows)
    saved: list[Tensor] = []

    def stats_only(start: int, end: int, stats: _rows.Stats) -> None:
        if not saved:
            saved.extend(torch.empty(n, dtype=s.dtype, device=s.device) for s in stats)
        for buf, s in zip(saved, stats, strict=True):
            buf[start:end] = s

    sweep(p, bounds, stats_only)
    total, grad = contribution(summed(0, n, p.family.value(tuple(saved))), counts > 0)
    if grad is not None:
        coef = grad.index_select(0, tok.seq)
        sweep(p, bounds, lambda s, e, _: coef[s:e], tuple(saved))
    return total


def dto_loss(p: Problem, mask: Tensor, beta: float, kl_weight: float, chunk: int | None) -> Tensor:
    """DTO (reconstruction): token NPO on the target tokens (``mask``) averaged over them,
    plus ``kl_weight`` times KL to the reference averaged over the other valid tokens.
    Token-level, so always one pass; ``p.family`` is the reference family. Gradients
    accumulate in ``p.head``."""
    tok, acc = p.tok, p.acc
    on_target = mask.reshape(-1).index_select(0, tok.rows)
    n_target = on_target.sum().clamp(min=1).to(acc)
    n_other = (~on_target).sum().clamp(min=1).to(acc)
    total = torch.zeros((), dtype=acc, device=tok.x.device)

    def chunk_loss(start: int, end: int, stats: _rows.Stats) -> tuple[Tensor, Tensor] | None:
        nonlocal total
        _, _, logp, ref_logp, kl = stats
        tgt = on_target[start:end]
        u = beta * (logp - ref_logp)
        npo = -(2.0 / beta) * torch.nn.functional.logsigmoid(-u)
        zero = torch.zeros_like(kl)
        total = total + torch.where(tgt, npo, zero).sum() / n_target
        total = total + kl_weight * torch.where(tgt, zero, kl).sum() / n_other
        if not p.head.wants_grad:
            return None
        a = torch.where(tgt, 2.0 * torch.sigmoid(u) / n_target, zero)
        c = torch.where(tgt, zero, torch.full_like(kl, kl_weight) / n_other)
        return a, c

    rows = chunk_rows(p.head.weight.shape[0], tok.x.dtype, tok.x.device, chunk, 2)
    sweep(p, uniform_bounds(tok.rows.numel(), rows), chunk_loss)
    return total


def flatten_margins(p: Problem, chunk: int | None) -> tuple[Tensor, Tensor]:
    """``(margin (N,), argmax (N,))``: ``max_v z - mean_v z`` per token (0 / -1 where
    ignored). The mean is ``x . mean_row(W) + mean(b)``: no GEMM."""
    tok, acc, n_all = p.tok, p.acc, p.n_rows
    w_mean = p.head.weight.to(acc).mean(0)
    mean = tok.x.to(acc) @ w_mean
    if p.head.bias is not None:
        mean = mean + p.head.bias.to(acc).mean()
    margin = torch.zeros(n_all, dtype=acc, device=tok.x.device)
    argmax = torch.full((n_all,), -1, dtype=torch.int64, device=tok.x.device)

    def keep(start: int, end: int, stats: _rows.Stats) -> None:
        rows = tok.rows[start:end]
        margin.index_copy_(0, rows, stats[0] - mean[start:end])
        argmax.index_copy_(0, rows, stats[1])

    rows = chunk_rows(p.head.weight.shape[0], tok.x.dtype, tok.x.device, chunk)
    sweep(p, uniform_bounds(tok.rows.numel(), rows), keep)
    return margin, argmax


def flatten_backward(
    grad: Tensor, input2d: Tensor, weight: Tensor, bias: Tensor | None, argmax: Tensor, needs: Sequence[bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``sum(grad * margin)``. ``dmargin/dz = onehot(argmax) - 1/V`` is sparse
    plus rank one, so ``dX = g (W[argmax] - mean_row(W))``, ``dW`` a scatter-add minus a
    rank-one update, ``db`` a scatter-add minus a constant: O(N·D + V·D), no vocabulary GEMM."""
    acc = acc_dtype(input2d.dtype)
    vocab = weight.shape[0]
    rows = (argmax >= 0).nonzero().squeeze(1)
    g = grad.index_select(0, rows).to(acc)
    top = argmax.index_select(0, rows)
    need_x, need_w, need_b = needs
    gx = gw = gb = None
    if need_x:
        w_mean = weight.to(acc).mean(0)
        gx = torch.zeros_like(input2d)
        gx.index_copy_(
            0, rows, (g[:, None] * (weight.index_select(0, top).to(acc) - w_mean)).to(input2d.dtype)
        )
    if need_w:
        x = input2d.index_select(0, rows).to(acc)
        gx_sum = g @ x
        gw = torch.zeros(weight.shape, dtype=acc, device=weight.device).index_add_(0, top, g[:, None] * x)
        gw = (gw - gx_sum / vocab).to(weight.dtype)
    if need_b and bias is not None:
        # index_add_, not a weighted bincount: on CUDA the latter has no deterministic
        # implementation and raises under torch.use_deterministic_algorithms(True)
        gb = torch.zeros(vocab, dtype=acc, device=bias.device).index_add_(0, top, g)
        gb = (gb - g.sum() / vocab).to(bias.dtype)
    return gx, gw, gb
