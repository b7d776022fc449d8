"""Every fused loss against unlearnx.reference: values and gradients, dtypes, edge cases."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import CUDA, CUDA_ONLY, EPS, IGNORE, Problem, make_problem, requires_cuda
from unlearnx import functional as F
from unlearnx import losses
from unlearnx import reference as R

# every test here runs once per CPU ISA level and once on the SIMT-emulated CUDA kernels
# (tests/conftest.py::cpu_backend)
pytestmark = pytest.mark.usefixtures("cpu_backend")


@dataclass(frozen=True)
class Case:
    name: str
    fused: Callable
    ref: Callable
    extra: str = ""  # "ref_logps": NPO's reference sums; "ref": a reference model; "dto": model + mask
    kwargs: tuple = ()
    reduces: bool = True

    def call(self, fn: Callable, p: Problem, x, w, b, ref_round: torch.dtype | None = None, **kw):
        """``ref_round``: round the reference model to that dtype first (for an fp64 truth)."""
        args: tuple = ()
        if self.extra == "ref_logps":
            args = (p.ref_logps.to(x.device),)
        elif self.extra in ("ref", "dto"):
            xr, wr, br = (None if u is None else u.to(x.dtype) for u in p.ref(ref_round or x.dtype))
            args = (xr, wr, p.mask) if self.extra == "dto" else (xr, wr)
            kw = {**kw, "ref_bias": None if b is None else br}
        return fn(x, w, p.t, *args, bias=b, **dict(self.kwargs), **kw)


CASES = [
    Case("token_logprobs", F.token_logprobs, R.token_logprobs, reduces=False),
    Case("nll", F.nll_loss, R.nll_loss),
    Case("npo", F.npo_loss, R.npo_loss, extra="ref_logps", kwargs=(("beta", 0.5),)),
    # beta 0.5 keeps the sigmoid unsaturated at these sizes (at 2.5 the loss is ~1e-9 and
    # any ulp of S is amplified ~20x, which says nothing about either implementation)
    Case("simnpo", F.simnpo_loss, R.simnpo_loss, kwargs=(("beta", 0.5), ("delta", 0.6))),
    Case("flatten", F.margin_flatten_loss, R.margin_flatten_loss),
    Case("kl", F.kl_loss, R.kl_loss, extra="ref"),
    Case("dipo", F.dipo_loss, R.dipo_loss, extra="ref", kwargs=(("top_k", 3), ("shift", 0.7), ("beta", 0.5))),
    Case(
        "dto", F.dto_loss, R.dto_loss, extra="dto", kwargs=(("beta", 0.3), ("kl_weight", 0.7)), reduces=False
    ),
]
IDS = [c.name for c in CASES]
REDUCING = [c for c in CASES if c.reduces]


def _sum_logps(fn: Callable) -> Callable:
    def wrapped(x, w, t, *, bias=None, **kw):
        sums, _ = fn(x, w, t, bias=bias, **kw)
        return sums

    return wrapped


CASES.append(
    Case("sequence_logprobs", _sum_logps(F.sequence_logprobs), _sum_logps(R.sequence_logprobs), reduces=False)
)
IDS.append("sequence_logprobs")


def _loss_and_grads(case: Case, fn: Callable, p: Problem, params: list[torch.Tensor], **kw):
    x, w, *b = params
    out = case.call(fn, p, x, w, b[0] if b else None, **kw)
    params = [t for t in params if t.requires_grad]
    # a fixed, uneven upstream gradient exercises per-token / per-sequence backward
    upstream = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype, device=out.device).view(out.shape)
    grads = torch.autograd.grad((out * upstream).sum(), params)
    return [out.detach(), *grads]


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


# --------------------------------------------------------------------------- fp64 exactness


FP64_CASES = [(c, r) for c in CASES for r in (("mean", "sum", "none") if c in REDUCING else (None,))]


@pytest.mark.parametrize("case,reduction", FP64_CASES, ids=[f"{c.name}-{r}" for c, r in FP64_CASES])
@pytest.mark.parametrize("chunk_size", [None, 1, 4, 11])
def test_fp64_matches_reference(case: Case, reduction: str | None, chunk_size: int | None) -> None:
    """chunk 1 and 4 are shorter than the sequences (two-pass), 11 and None hold them (single pass)."""
    p = make_problem(B=4, T=9, D=8, V=37)
    kw = {} if reduction is None else {"reduction": reduction}
    fused = _loss_and_grads(case, case.fused, p, p.leaves(torch.float64), chunk_size=chunk_size, **kw)
    ref = _loss_and_grads(case, case.ref, p, p.leaves(torch.float64), **kw)
    for name, a, b in zip(("value", "d_input", "d_weight", "d_bias"), fused, ref, strict=True):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{case.name} {name}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("chunk_size", [2, None])
def test_gradcheck(case: Case, chunk_size: int | None) -> None:
    p = make_problem(B=2, T=4, D=3, V=7, ignore_frac=0.2, seed=1)
    x, w, b = p.leaves(torch.float64)

    def fn(x, w, b):
        return case.call(case.fused, p, x, w, b, chunk_size=chunk_size)

    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-7)


# the ops whose backward scales the gradients their forward formed (sequence_loss, dto_loss)
PRESCALED_OPS = [c for c in CASES if c.name in ("nll", "npo", "simnpo", "kl", "dipo", "dto")]


def _record_weight_grad_deferral(monkeypatch) -> list[bool]:
    from unlearnx import _chunked

    decided: list[bool] = []
    original = _chunked.defers_weight_grad

    def recording(*args) -> bool:
        decided.append(original(*args))
        return decided[-1]

    monkeypatch.setattr(_chunked, "defers_weight_grad", recording)
    return decided


@pytest.mark.parametrize("case", PRESCALED_OPS, ids=[c.name for c in PRESCALED_OPS])
@pytest.mark.parametrize("ignore_frac", [0.0, 0.4, 1.0])
def test_one_chunk_of_at_most_d_positions_defers_the_weight_gradient(
    case: Case, ignore_frac: float, monkeypatch
) -> None:
    """B*T = 6 <= D = 8 positions in one chunk: the op returns dZ and X (zero past the valid
    tokens) and the backward forms dW = dZ^T (g X); values and gradients as the reference's."""
    decided = _record_weight_grad_deferral(monkeypatch)
    p = make_problem(B=2, T=3, D=8, V=37, ignore_frac=ignore_frac, seed=5)
    fused = _loss_and_grads(case, case.fused, p, p.leaves(torch.float64))
    assert decided and all(decided), decided
    ref = _loss_and_grads(case, case.ref, p, p.leaves(torch.float64))
    for name, a, b in zip(("value", "d_input", "d_weight", "d_bias"), fused, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{case.name} {name}")
    if ignore_frac == 0.4:  # gradcheck on a smaller head (4 <= D = 4 positions), once per loss
        q = make_problem(B=2, T=2, D=4, V=7, ignore_frac=ignore_frac, seed=5)
        fn = lambda x, w, b: case.call(case.fused, q, x, w, b)  # noqa: E731
        assert torch.autograd.gradcheck(fn, q.leaves(torch.float64), eps=1e-6, atol=1e-7)
    assert all(decided), decided


@pytest.mark.parametrize("case", PRESCALED_OPS, ids=[c.name for c in PRESCALED_OPS])
@pytest.mark.parametrize("positions", [6, 10], ids=["dW_deferred", "dW_in_forward"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_ONLY)])
def test_fp16_gradients_survive_a_gradscaler_loss_scale(
    case: Case, positions: int, device: str, monkeypatch
) -> None:
    # a GradScaler's first loss scale, 2^16, is above fp16's largest value: taken as one fp16
    # factor it made every gradient inf. And 2^16 times hidden states above 1 overflows fp16,
    # so the deferred dW = dZ^T (g X) scales after its GEMM in fp16. Scaling by a power of
    # two is exact: the scaled gradients are the unscaled ones times 2^16, bit for bit.
    decided = _record_weight_grad_deferral(monkeypatch)
    p = make_problem(B=2, T=positions // 2, D=8, V=37, seed=6, device=device)
    x, w, b = p.leaves(torch.float16)
    assert x.abs().max() > 1
    unit = torch.autograd.grad(case.call(case.fused, p, x, w, b), (x, w, b))
    scale = 2.0**16
    scaled = torch.autograd.grad(case.call(case.fused, p, x, w, b) * scale, (x, w, b))
    assert all(decided) == (positions <= 8), decided
    for name, u, s in zip(("d_input", "d_weight", "d_bias"), unit, scaled, strict=True):
        assert u.abs().max() * scale < torch.finfo(torch.float16).max, name
        torch.testing.assert_close(s, u * scale, rtol=0, atol=0, msg=name)


# --------------------------------------------------------------------------- low precision


ERR_SLACK = {torch.float32: 8, torch.bfloat16: 8, torch.float16: 8}


LOW_PRECISION = [c for c in CASES if c.name != "sequence_logprobs"]


@pytest.mark.parametrize("case", LOW_PRECISION, ids=[c.name for c in LOW_PRECISION])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape", [dict(B=2, T=33, D=64, V=1031), dict(B=1, T=1, D=32, V=513)], ids=["odd_V", "N1"]
)
@pytest.mark.parametrize("peaked", [False, True], ids=["spread", "peaked"])
def test_low_precision_error_no_worse_than_reference(case, dtype, shape, peaked) -> None:
    """Error against an fp64 truth on the same rounded inputs: fused <= reference + margin,
    margin = the reference's own error + 8 units of the dtype's epsilon times the quantity's
    scale. Both paths are within an ulp or two of the truth; which one lands closer on a
    given element is luck (the fused path rounds dW per chunk and uses its own exp)."""
    p = make_problem(**shape, peaked=peaked, ignore_frac=0.0 if shape["T"] == 1 else 0.25, seed=3)
    params = p.leaves(dtype)
    truth = _loss_and_grads(
        case, case.ref, p, [t.detach().double().requires_grad_() for t in params], ref_round=dtype
    )
    fused = _loss_and_grads(case, case.fused, p, p.leaves(dtype), chunk_size=16)
    ref = _loss_and_grads(case, case.ref, p, p.leaves(dtype))
    for name, f, r, t in zip(("value", "d_input", "d_weight", "d_bias"), fused, ref, truth, strict=True):
        assert torch.isfinite(f).all(), name
        scale = t.abs().max().item()
        err_f, err_r = _max_err(f, t), _max_err(r, t)
        margin = err_r + ERR_SLACK[dtype] * EPS[dtype] * scale + 1e-30
        assert err_f <= err_r + margin, f"{case.name} {name}: fused {err_f:.3g} reference {err_r:.3g}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_ONLY)])
def test_autocast_runs_the_head_in_its_dtype(case: Case, device: str) -> None:
    # under torch.autocast the loss is the loss of the head cast to bf16 (as F.linear would
    # take it), and fp32 leaves get those gradients in fp32; autocast inside the ops once
    # turned their GEMMs to bf16 against fp32 buffers (an error in a GPU trainer's bf16 mixed
    # precision). Bit for bit on the CPU; CUDA's atomic scatter-adds vary in the last bits.
    p = make_problem(B=2, T=9, D=16, V=97, seed=2, device=device)
    leaves = p.leaves(torch.float32)
    with torch.autocast(device, dtype=torch.bfloat16):
        auto = _loss_and_grads(case, case.fused, p, leaves, chunk_size=5)
    cast = _loss_and_grads(case, case.fused, p, p.leaves(torch.bfloat16), chunk_size=5)
    for name, a, c in zip(("value", "d_input", "d_weight", "d_bias"), auto, cast, strict=True):
        if name != "value":
            assert a.dtype == torch.float32, name
        tol = {"rtol": 0, "atol": 0} if device == "cpu" else {"rtol": 1e-2, "atol": 1e-4}
        torch.testing.assert_close(a, c.to(a.dtype), **tol, msg=f"{case.name} {name}")


def test_peaked_rows_keep_gradient_in_fp32() -> None:
    """p(target) ~ 1 - 1e-9: the reference's 1 - exp(logp) loses it, the fused path keeps it."""
    V, D = 64, 8
    w = torch.zeros(V, D)
    w[:, 0] = torch.linspace(-1, 1, V)
    w[5, 0] = 0.0
    w[5, 1] = 1.0
    x = torch.zeros(1, 1, D)
    x[0, 0, 1] = 25.0  # z_5 = 25, every other logit 0
    t = torch.tensor([[5]])
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    (gt,) = torch.autograd.grad(R.nll_loss(x64, w64, t), x64)
    x32 = x.clone().requires_grad_()
    (gf,) = torch.autograd.grad(F.nll_loss(x32, w, t), x32)
    assert gt[0, 0, 1].abs().item() > 1e-10
    torch.testing.assert_close(gf.double(), gt, rtol=1e-4, atol=0)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("chunk_size", [1, None])
def test_all_ignored_gives_zero_loss_and_zero_grads(case: Case, chunk_size: int | None) -> None:
    p = make_problem(B=2, T=5, D=4, V=11)
    p.t[:] = IGNORE
    params = p.leaves(torch.float32)
    out = case.call(case.fused, p, *params, chunk_size=chunk_size)
    assert torch.equal(out, torch.zeros_like(out))
    grads = torch.autograd.grad(out.sum(), params)
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("case", REDUCING, ids=[c.name for c in REDUCING])
def test_non_contiguous_inputs(case: Case) -> None:
    p = make_problem(B=3, T=6, D=8, V=29)
    x = p.x.transpose(0, 1).contiguous().transpose(0, 1).float().requires_grad_()  # (B, T, D), strided
    w = p.w.t().contiguous().t().float().requires_grad_()
    assert not x.is_contiguous() and not w.is_contiguous()
    a = case.call(case.fused, p, x, w, None, chunk_size=4)
    e = case.call(case.ref, p, x, w, None)
    torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    ga = torch.autograd.grad(a, (x, w))
    ge = torch.autograd.grad(e, (x, w))
    for u, v in zip(ga, ge, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)


def test_frozen_weight_and_no_grad_paths() -> None:
    p = make_problem()
    x = p.x.float().requires_grad_()
    w = p.w.float()  # frozen head: no dW work, no dW returned
    loss = F.npo_loss(x, w, p.t, p.ref_logps)
    (gx,) = torch.autograd.grad(loss, x)
    (gx_ref,) = torch.autograd.grad(R.npo_loss(x, w, p.t, p.ref_logps), x)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        value = F.npo_loss(x, w, p.t, p.ref_logps)
    assert not value.requires_grad
    torch.testing.assert_close(value, loss.detach())


def test_closed_forms() -> None:
    p = make_problem(B=3, T=6, D=8, V=29, bias=False)
    x, w = p.x.float(), p.w.float()
    sums, counts = F.sequence_logprobs(x, w, p.t)
    # NPO at the reference equals (2/beta) log 2 for every non-empty sequence
    for beta in (0.1, 1.0):
        npo = F.npo_loss(x, w, p.t, sums, beta=beta, reduction="none")
        torch.testing.assert_close(npo, torch.full_like(npo, 2 / beta * math.log(2)))
    # SimNPO as OU and the authors' code write it: -(2/beta) logsigmoid(beta (-S/|y| - delta))
    a = F.simnpo_loss(x, w, p.t, beta=2.0, delta=0.25, reduction="none")
    expected = -(2 / 2.0) * torch.nn.functional.logsigmoid(2.0 * (-sums / counts - 0.25))
    torch.testing.assert_close(a, expected)
    # NLL mean is the HF token mean
    hf = torch.nn.functional.cross_entropy((x @ w.t()).reshape(-1, 29), p.t.reshape(-1), ignore_index=IGNORE)
    torch.testing.assert_close(F.nll_loss(x, w, p.t), hf)


def test_modules_match_functional() -> None:
    p = make_problem()
    x, w, b = (t.float() for t in (p.x, p.w, p.b))
    torch.testing.assert_close(losses.NLLLoss()(x, w, p.t, bias=b), F.nll_loss(x, w, p.t, bias=b))
    torch.testing.assert_close(
        losses.NPOLoss(beta=0.2)(x, w, p.t, p.ref_logps), F.npo_loss(x, w, p.t, p.ref_logps, beta=0.2)
    )
    m = losses.SimNPOLoss(delta=0.1, reduction="sum")
    torch.testing.assert_close(m(x, w, p.t), F.simnpo_loss(x, w, p.t, delta=0.1, reduction="sum"))
    assert "delta=0.1" in repr(m)
    xr, wr, br = p.ref(torch.float32)
    torch.testing.assert_close(
        losses.MarginFlattenLoss()(x, w, p.t, bias=b), F.margin_flatten_loss(x, w, p.t, bias=b)
    )
    torch.testing.assert_close(
        losses.KLLoss(reduction="sum")(x, w, p.t, xr, wr, ref_bias=br),
        F.kl_loss(x, w, p.t, xr, wr, ref_bias=br, reduction="sum"),
    )
    torch.testing.assert_close(
        losses.DiPOLoss(top_k=2)(x, w, p.t, xr, wr), F.dipo_loss(x, w, p.t, xr, wr, top_k=2)
    )
    torch.testing.assert_close(
        losses.DTOLoss(kl_weight=0.5)(x, w, p.t, xr, wr, p.mask),
        F.dto_loss(x, w, p.t, xr, wr, p.mask, kl_weight=0.5),
    )


# --------------------------------------------------------------------------- bad input


def _bad_calls():
    p = make_problem(B=2, T=4, D=8, V=13)
    x, w, t = p.x.float(), p.w.float(), p.t
    r = p.ref_logps
    yield "input", TypeError, lambda: F.nll_loss(x.long(), w, t)
    yield "weight", TypeError, lambda: F.nll_loss(x, w.double(), t)
    yield "weight", ValueError, lambda: F.nll_loss(x, w[:, :5], t)
    yield "target", TypeError, lambda: F.nll_loss(x, w, t.int())
    yield "target", ValueError, lambda: F.nll_loss(x, w, t[:, :3])
    yield "target", ValueError, lambda: F.nll_loss(x, w, torch.full_like(t, 13))
    yield "target", ValueError, lambda: F.token_logprobs(x, w, torch.full_like(t, -1))
    yield "bias", ValueError, lambda: F.nll_loss(x, w, t, bias=torch.zeros(12))
    yield "input", ValueError, lambda: F.nll_loss(x[:0], w, t[:0])
    yield "reduction", ValueError, lambda: F.nll_loss(x, w, t, reduction="avg")
    yield "chunk_size", ValueError, lambda: F.nll_loss(x, w, t, chunk_size=0)
    yield "ref_logps", ValueError, lambda: F.npo_loss(x, w, t, r[:1])
    yield "ref_logps", TypeError, lambda: F.npo_loss(x, w, t, r.long())
    yield "beta", ValueError, lambda: F.npo_loss(x, w, t, r, beta=0.0)
    yield "delta", TypeError, lambda: F.simnpo_loss(x, w, t, delta="0.1")
    xr, wr = p.xr.float(), p.wr.float()
    yield "ref_input", TypeError, lambda: F.kl_loss(x, w, t, xr.double(), wr)
    yield "ref_input", TypeError, lambda: F.kl_loss(x, w, t, None, wr)
    yield "ref_input", ValueError, lambda: F.kl_loss(x, w, t, xr[:1], wr)
    yield "ref_weight", ValueError, lambda: F.kl_loss(x, w, t, xr, wr[:5])
    yield "ref_bias", ValueError, lambda: F.kl_loss(x, w, t, xr, wr, ref_bias=torch.zeros(3))
    yield "top_k", ValueError, lambda: F.dipo_loss(x, w, t, xr, wr, top_k=0)
    yield "top_k", ValueError, lambda: F.dipo_loss(x, w, t, xr, wr, top_k=14)
    yield "shift", ValueError, lambda: F.dipo_loss(x, w, t, xr, wr, shift=-1.0)
    yield "target_mask", TypeError, lambda: F.dto_loss(x, w, t, xr, wr, p.mask.int())
    yield "kl_weight", ValueError, lambda: F.dto_loss(x, w, t, xr, wr, p.mask, kl_weight=-1)
    yield "target_ratio", ValueError, lambda: F.dto_target_mask(xr, wr, t, target_ratio=1.5)
    yield "suffix_ratio", ValueError, lambda: F.dto_target_mask(xr, wr, t, suffix_ratio=0.0)
    yield "score", ValueError, lambda: F.dto_target_mask(xr, wr, t, score="entropy")
    yield "score", ValueError, lambda: F.dto_target_mask(xr, wr, t, score=lambda s: s["logp"][:, :1])


@pytest.mark.parametrize("arg,exc,call", list(_bad_calls()), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_names_the_argument(arg: str, exc: type, call: Callable) -> None:
    with pytest.raises(exc, match=arg):
        call()


def test_non_finite_hidden_states_propagate() -> None:
    p = make_problem(B=1, T=3, D=4, V=7, ignore_frac=0.0)
    x = p.x.float().clone()
    x[0, 1, 2] = float("nan")
    assert torch.isnan(F.nll_loss(x, p.w.float(), p.t))
    assert torch.isnan(R.nll_loss(x, p.w.float(), p.t))


# --------------------------------------------------------------------------- operators


def test_opcheck_chunked_ops() -> None:
    p = make_problem(B=2, T=5, D=8, V=19)
    x, w, b = p.leaves(torch.float32)
    xr, wr, br = p.ref(torch.float32)
    none3 = (None, None, None)
    for family, fp, ref in (
        ("logp", [], none3),
        ("kl", [], (xr, wr, br)),
        ("dipo", [2.0, 0.5], (xr, wr, None)),
    ):
        for chunk in (3, None):
            torch.library.opcheck(
                torch.ops.unlearnx.token_values.default, (x, w, b, p.t, *ref, family, fp, IGNORE, chunk)
            )
        values, stats = torch.ops.unlearnx.token_values(
            x.detach(), w.detach(), b.detach(), p.t, *ref, family, fp, IGNORE, 3
        )
        args = (
            torch.ones_like(values),
            x.detach(),
            w.detach(),
            b.detach(),
            p.t,
            *ref,
            stats,
            family,
            fp,
            IGNORE,
            3,
            [True, True, False],
        )
        torch.library.opcheck(torch.ops.unlearnx.token_values_backward.default, args)
    needs = [True, True, True]
    # chunk None: the 10 positions are one chunk, of more than D = 8 rows; T = 3: 6 positions,
    # dW left to the backward (the op's outputs change shape with that)
    deferred = make_problem(B=2, T=3, D=8, V=19)
    for q, chunks, dto_chunks in ((p, (2, None), (4, None)), (deferred, (None,), (None,))):
        qx, qw, qb = q.leaves(torch.float32)
        qxr, qwr, qbr = q.ref(torch.float32)
        for objective, params, hp, ref in (
            ("nll", None, [], none3),
            ("npo", q.ref_logps, [0.1], none3),
            ("simnpo", None, [2.5, 0.0], none3),
            ("kl", None, [], (qxr, qwr, qbr)),
            ("dipo", None, [1.0, 1.0, 1.0], (qxr, qwr, qbr)),
        ):
            for chunk in chunks:
                args = (qx, qw, qb, q.t, *ref, params, objective, hp, IGNORE, "mean", chunk, needs)
                torch.library.opcheck(torch.ops.unlearnx.sequence_loss.default, args)
        for chunk in dto_chunks:
            args = (qx, qw, qb, q.t, qxr, qwr, qbr, q.mask, 0.1, 1.0, IGNORE, chunk, needs)
            torch.library.opcheck(torch.ops.unlearnx.dto_loss.default, args)
    x2, t1 = x.detach().reshape(-1, 8).requires_grad_(), p.t.reshape(-1)
    torch.library.opcheck(torch.ops.unlearnx.flatten_margins.default, (x2, w, b, t1, IGNORE, 3))
    _, argmax = torch.ops.unlearnx.flatten_margins(x2.detach(), w.detach(), b.detach(), t1, IGNORE, 3)
    torch.library.opcheck(
        torch.ops.unlearnx.flatten_margins_backward.default,
        (torch.ones(10), x2.detach(), w.detach(), b.detach(), argmax, needs),
    )


def test_torch_compile_fullgraph() -> None:
    """No graph breaks: the fused losses are opaque custom ops with fake impls and autograd."""
    p = make_problem(B=2, T=6, D=8, V=23)
    x, w, b = p.leaves(torch.float32)

    def step(x, w, b):
        h = torch.tanh(x) * 2  # something for the compiler to fuse around the op
        loss = F.npo_loss(h, w, p.t, p.ref_logps, bias=b) + F.nll_loss(h, w, p.t, bias=b, chunk_size=4)
        loss = loss + F.nll_loss(h[:, :3], w, p.t[:, :3], bias=b)  # 6 <= D positions: dW deferred
        return (
            loss
            + F.token_logprobs(h, w, p.t, bias=b).mean()
            + F.simnpo_loss(h, w, p.t, reduction="none").sum()
        )

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(x, w, b)
    torch.testing.assert_close(got, step(*p.leaves(torch.float32)))
    g_got = torch.autograd.grad(got, (x, w, b))
    xs, ws, bs = p.leaves(torch.float32)
    g_want = torch.autograd.grad(step(xs, ws, bs), (xs, ws, bs))
    for u, v in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(u, v)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 7),
    D=st.integers(1, 9),
    V=st.integers(1, 70),
    chunk=st.one_of(st.none(), st.integers(1, 12)),
    ignore_frac=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_property_npo_and_nll_match_reference(B, T, D, V, chunk, ignore_frac, seed) -> None:
    p = make_problem(B=B, T=T, D=D, V=V, ignore_frac=ignore_frac, seed=seed)
    for case in (CASES[1], CASES[2]):
        fused = _loss_and_grads(case, case.fused, p, p.leaves(torch.float64), chunk_size=chunk)
        ref = _loss_and_grads(case, case.ref, p, p.leaves(torch.float64))
        for a, e in zip(fused, ref, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------- devices


@requires_cuda
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [7, None])
@pytest.mark.parametrize("T", [40, 16], ids=["B*T>D", "B*T<=D"])  # chunk None, B*T <= D: dW deferred
def test_cuda_matches_reference(case: Case, dtype: torch.dtype, chunk_size: int | None, T: int) -> None:
    assert CUDA
    p = make_problem(B=4, T=T, D=64, V=32003, device="cuda", seed=5)
    params = p.leaves(dtype)
    truth = _loss_and_grads(
        case, case.ref, p, [t.detach().double().requires_grad_() for t in params], ref_round=dtype
    )
    fused = _loss_and_grads(case, case.fused, p, p.leaves(dtype), chunk_size=chunk_size)
    ref = _loss_and_grads(case, case.ref, p, p.leaves(dtype))
    for name, f, r, t in zip(("value", "d_input", "d_weight", "d_bias"), fused, ref, truth, strict=True):
        err_r = _max_err(r, t)
        margin = err_r + ERR_SLACK[dtype] * EPS[dtype] * t.abs().max().item() + 1e-30
        assert _max_err(f, t) <= err_r + margin, f"{case.name} {name}"


@pytest.mark.parametrize("case", [c for c in CASES if c.reduces], ids=[c.name for c in CASES if c.reduces])
@pytest.mark.parametrize("T", [9, 2], ids=["dW_in_forward", "dW_deferred"])
def test_backward_through_a_retained_graph_sees_the_saved_gradients_intact(case: Case, T: int) -> None:
    # the single-pass ops save their gradients (or dW's factors) and scale them in backward:
    # neither autograd adopting them as .grad nor a later accumulation may change what a
    # second backward sees (handing autograd the saved tensor itself for an upstream of 1
    # fails exactly here)
    p = make_problem(T=T, seed=4)
    x, w, b = p.leaves(torch.float32)
    loss = case.call(case.fused, p, x, w, b, chunk_size=None)
    loss.backward(retain_graph=True)
    first = [t.grad.clone() for t in (x, w, b)]
    loss.backward(retain_graph=True)
    loss.backward(torch.tensor(0.5))
    for t, g in zip((x, w, b), first, strict=True):
        torch.testing.assert_close(t.grad, 2.5 * g, rtol=1e-6, atol=1e-7)


PRESCALED = [c for c in CASES if c.reduces and c.name != "flatten"]  # flatten has a real backward


@pytest.mark.parametrize("case", PRESCALED, ids=[c.name for c in PRESCALED])
def test_backward_fills_no_gradient_for_the_ops_gradient_outputs(case: Case) -> None:
    # the single-pass ops return their gradients as outputs, which nothing differentiates;
    # autograd materialised zeros for them (a V x D fill per backward, 26 ms of 577 at
    # N=512, D=512, V=32000 on the 2-core CPU) until set_materialize_grads(False)
    p = make_problem(seed=4)
    x, w, b = p.leaves(torch.float32)
    loss = case.call(case.fused, p, x, w, b, chunk_size=None)
    with torch.profiler.profile(record_shapes=True) as prof:
        loss.backward()
    fills = [e.input_shapes for e in prof.events() if e.name in ("aten::fill_", "aten::zero_")]
    assert list(w.shape) not in [s[0] for s in fills if s], fills


# Head.backprop is shared; these have no reference head, whose rounding to bf16 in
# Case.call would be a V x D copy of its own
NO_REFERENCE_HEAD = [c for c in PRESCALED_OPS if c.extra in ("", "ref_logps")]


@pytest.mark.parametrize("case", NO_REFERENCE_HEAD, ids=[c.name for c in NO_REFERENCE_HEAD])
@pytest.mark.parametrize("chunk_size", [None, 4], ids=["one_chunk", "chunks"])
def test_bf16_weight_gradient_goes_to_fp32_only_to_accumulate_chunks(case: Case, chunk_size) -> None:
    # dW of a single chunk was converted to an fp32 V x D copy and back (158 against 127 MiB
    # peak at B=2, T=512, D=512, V=32000 bf16 on the CPU), though there is nothing to add
    p = make_problem(seed=4)  # 27 positions > D = 16: dW formed in the forward
    x, w, b = p.leaves(torch.bfloat16)
    with torch.profiler.profile(record_shapes=True) as prof:
        case.call(case.fused, p, x, w, b, chunk_size=chunk_size).backward()
    copies = [e.input_shapes[0] for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes]
    assert (list(w.shape) in copies) == (chunk_size is not None), copies


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_ONLY)])
def test_deterministic_mode_runs_every_loss_bit_identically(case: Case, device: str, monkeypatch) -> None:
    # torch.use_deterministic_algorithms(True) must not make a loss raise (a weighted CUDA
    # bincount would), and in it two runs agree to the bit on every device
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    p = make_problem(B=3, T=12, D=16, V=301, device=device, seed=3)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_loss_and_grads(case, case.fused, p, p.leaves(torch.float32), chunk_size=5) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(before)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b), case.name


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    "budget_rows,chunk_size,expected_sweeps",
    [(3, None, 1), (2, None, 2), (100, None, 1), (3, 4, 2), (3, 9, 1)],
    ids=["stretch-to-sequence", "too-long-two-pass", "fits", "explicit-short", "explicit-fits"],
)
def test_schedule_choice(monkeypatch, budget_rows, chunk_size, expected_sweeps) -> None:
    """Sequences of up to 9 valid tokens: an automatic chunk stretches up to 4x its budget
    to hold one (single pass, one sweep); otherwise statistics then recompute (two sweeps)."""
    from unlearnx import _chunked

    p = make_problem(B=3, T=9, D=8, V=31, ignore_frac=0.0)
    monkeypatch.setattr(_chunked, "CPU_CHUNK_BYTES", budget_rows * 31 * 4)
    sweeps = []
    real_sweep = _chunked.sweep
    monkeypatch.setattr(_chunked, "sweep", lambda *a, **k: (sweeps.append(1), real_sweep(*a, **k))[1])
    x, w, b = p.leaves(torch.float32)
    loss = F.npo_loss(x, w, p.t, p.ref_logps, bias=b, chunk_size=chunk_size)
    torch.testing.assert_close(loss, R.npo_loss(x, w, p.t, p.ref_logps, bias=b))
    assert len(sweeps) == expected_sweeps


def test_sequence_bounds_pack_whole_sequences() -> None:
    from unlearnx._chunked import sequence_bounds

    assert sequence_bounds(torch.tensor([3, 0, 4, 2, 5]), 7) == [(0, 7), (7, 14)]
    assert sequence_bounds(torch.tensor([3, 3, 3]), 6) == [(0, 6), (6, 9)]
    assert sequence_bounds(torch.tensor([8]), 7) is None
    assert sequence_bounds(torch.tensor([0, 0]), 7) == []


# --------------------------------------------------------------------------- loss-specific properties


def test_flatten_ties_send_the_gradient_to_the_first_maximum() -> None:
    """Two identical head rows give every token a tied maximum when they win."""
    p = make_problem(B=2, T=6, D=8, V=13, bias=False, ignore_frac=0.0)
    w = p.w.clone()
    w[7] = w[3]
    x = (3.0 * w[3] / w[3].norm()).expand(2, 6, 8).clone() + 0.01 * p.x  # rows 3 and 7 are the max
    z = x @ w.t()
    assert torch.equal(z.argmax(-1), torch.full_like(p.t, 3)) and torch.equal(z[..., 3], z[..., 7])
    xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    gf = torch.autograd.grad(F.margin_flatten_loss(xf, wf, p.t, chunk_size=5), (xf, wf))
    gr = torch.autograd.grad(R.margin_flatten_loss(xr, wr, p.t), (xr, wr))
    for a, e in zip(gf, gr, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    # the weight gradient's sparse part lands on row 3 only: rows 7 and 5 get the rank-one part alone
    torch.testing.assert_close(gf[1][7], gf[1][5])
    assert not torch.allclose(gf[1][3], gf[1][7])


def test_dipo_equals_log2_at_the_reference() -> None:
    p = make_problem(B=3, T=7, D=8, V=29)
    x, w, b = p.leaves(torch.float64)
    loss = F.dipo_loss(
        x, w, p.t, x.detach(), w.detach(), ref_bias=b.detach(), bias=b, top_k=2, shift=0.5, beta=2.0
    )
    torch.testing.assert_close(loss, torch.tensor(math.log(2), dtype=torch.float64))
    # the gradient there is beta/2 * sum_t (q+ - q-) backpropagated, not zero
    assert torch.autograd.grad(loss, x)[0].abs().max() > 1e-3


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("chunk_size", [2, None])
def test_dipo_top_k_with_ties_matches_reference(top_k: int, chunk_size: int | None) -> None:
    """top_k=1 takes its threshold from a row max, larger k from topk; the reference head has
    tied rows, so H holds more than top_k entries. Chunk 2 is the two-pass schedule (U kept
    from the statistics pass), None the single pass."""
    p = make_problem(B=3, T=7, D=8, V=29)
    x, w, b = p.leaves(torch.float64)
    xr, wr, br = p.ref(torch.float64)
    wr = wr.clone()
    wr[[4, 9]] = wr[2].clone()  # three tied reference logits in every row
    br = br.clone()
    br[[4, 9]] = br[2].clone()
    kw = dict(ref_bias=br, bias=b, top_k=top_k, shift=0.6, beta=1.5)
    fused = F.dipo_loss(x, w, p.t, xr, wr, chunk_size=chunk_size, **kw)
    ref = R.dipo_loss(x, w, p.t, xr, wr, **kw)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    for a, e in zip(torch.autograd.grad(fused, (x, w, b)), torch.autograd.grad(ref, (x, w, b)), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def _token_npo(p: Problem, x, w, b, beta: float) -> torch.Tensor:
    xr, wr, br = p.ref(torch.float64)
    valid = p.t != IGNORE
    logp = R.token_logprobs(x, w, p.t, bias=b)
    ref_logp = R.token_logprobs(xr, wr, p.t, bias=br)
    per = -(2 / beta) * torch.nn.functional.logsigmoid(-beta * (logp - ref_logp))
    return torch.where(valid, per, torch.zeros_like(per)).sum() / valid.sum()


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_dto_extremes(ratio: float) -> None:
    """target_ratio 0: KL alone (times kl_weight); 1: token-level NPO alone."""
    p = make_problem(B=3, T=8, D=8, V=31)
    xr, wr, br = p.ref(torch.float64)
    mask = F.dto_target_mask(xr, wr, p.t, ref_bias=br, target_ratio=ratio)
    assert mask.sum() == (0 if ratio == 0 else (p.t != IGNORE).sum())
    x, w, b = p.leaves(torch.float64)
    dto = F.dto_loss(x, w, p.t, xr, wr, mask, ref_bias=br, bias=b, beta=0.3, kl_weight=0.6)
    x2, w2, b2 = p.leaves(torch.float64)
    if ratio == 0:
        alone = 0.6 * F.kl_loss(x2, w2, p.t, xr, wr, ref_bias=br, bias=b2)
    else:
        alone = _token_npo(p, x2, w2, b2, 0.3)
    torch.testing.assert_close(dto, alone)
    for a, e in zip(
        torch.autograd.grad(dto, (x, w, b)), torch.autograd.grad(alone, (x2, w2, b2)), strict=True
    ):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize(
    "target_ratio,suffix_ratio,score", [(0.3, 1.0, "margin"), (0.5, 0.5, "logp"), (1.0, 0.3, "margin")]
)
def test_dto_target_mask_matches_a_direct_selection(target_ratio, suffix_ratio, score) -> None:
    p = make_problem(B=4, T=11, D=8, V=23)
    xr, wr, br = p.ref(torch.float64)
    mask = F.dto_target_mask(
        xr,
        wr,
        p.t,
        ref_bias=br,
        target_ratio=target_ratio,
        suffix_ratio=suffix_ratio,
        score=score,
        chunk_size=5,
    )
    z = xr @ wr.t() + br
    expected = torch.zeros_like(mask)
    for b in range(4):
        valid = [i for i in range(11) if p.t[b, i] != IGNORE]
        suffix = valid[len(valid) - math.ceil(suffix_ratio * len(valid)) :]
        scores = {}
        for i in suffix:
            y = int(p.t[b, i])
            others = torch.cat([z[b, i, :y], z[b, i, y + 1 :]])
            scores[i] = (
                float(z[b, i, y] - others.max()) if score == "margin" else float(z[b, i].log_softmax(-1)[y])
            )
        k = math.floor(target_ratio * len(suffix) + 0.5)
        for i in sorted(suffix, key=lambda i: -scores[i])[:k]:
            expected[b, i] = True
    assert torch.equal(mask, expected)
    custom = F.dto_target_mask(
        xr,
        wr,
        p.t,
        ref_bias=br,
        target_ratio=target_ratio,
        suffix_ratio=suffix_ratio,
        score=lambda stats: stats[score],
    )
    assert torch.equal(custom, mask)
