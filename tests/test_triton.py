"""The Triton backend through the public API, against float64 oracles.

Notation: ``b`` batch, ``h_q``/``h_k`` heads, ``s`` sequence, ``t`` packed tokens, ``d``
head dim, ``n`` rotated pairs, ``R`` table rows.

Runs everywhere: with a CUDA GPU on compiled kernels; on a CPU-only machine through
Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set by ``tests/conftest.py``
before triton is first imported), where every dtype runs (its bf16 rounding can differ
from torch's in the last bit, still within one bf16 step). ``torch.compile`` cannot trace interpreted kernels:
on a CPU its test stops at AOTAutograd's joint graph (the kernel in the forward and the
backward), on a GPU it runs. The > 2**31-element test needs a GPU.

Oracles never use the code under test: expected values are RoFormer's explicit float64
rotation matrices (:func:`ropekit.spec.apply`) at token positions worked out by
Python loops, or (random tables, no positions) the formula written out here in float64;
tables are built here from the frequencies in float64. Tolerances: ``tests/conftest.py``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

CUDA = torch.cuda.is_available()
if not CUDA:  # must precede the first import of triton (conftest.py sets it too)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ropekit  # noqa: E402
from ropekit import apply_rope, apply_rope_qk, spec  # noqa: E402
from ropekit.apply.triton import ops, plan  # noqa: E402
from tests.conftest import TOL  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

# One geometry for the value tests: GQA with head counts that are not powers of two
# (ragged head blocks), partial rotary (lanes 8 and 9 pass through), and packed documents
# of 3, 0 (empty), 4 and 2 tokens.
B, S, HQ, HK, D, N = 2, 6, 3, 2, 10, 4
CU = [0, 3, 3, 7, 9]
T = CU[-1]
R = 48  # table rows
FREQS = ropekit.inv_freq(D, 10000.0, rotary_dim=2 * N)  # [n] float64


@pytest.fixture(autouse=True, scope="module")
def _kernel_usable():
    if not (CUDA or ops.INTERPRETED):
        pytest.fail(
            "triton was imported without TRITON_INTERPRET=1 on a machine without a GPU: set "
            "it in the environment or in tests/conftest.py before anything imports triton"
        )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64).to(DEVICE, dtype)


def tables(positions, dtype=torch.float32, freqs=FREQS):
    """cos/sin ``[*P, n]`` at integer ``positions`` ``[*P]``: float64 angles, rounded once."""
    angle = torch.as_tensor(positions, dtype=torch.float64)[..., None] * freqs
    return angle.cos().to(DEVICE, dtype), angle.sin().to(DEVICE, dtype)


def table_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def to_bhsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "bshd" else x


def exact(x, rows, layout: str, interleaved: bool = False, sign: int = 1, freqs=FREQS):
    """RoFormer's float64 rotation matrices at ``rows`` (``[t]`` packed, else ``[b][s]``),
    in ``x``'s layout; ``sign=-1`` rotates by ``-θ``. NaNs (planted in pass-through lanes,
    which are compared bitwise instead) are zeroed first: a matrix product spreads them."""
    rotate = functools.partial(spec.apply, freqs=freqs, interleaved=interleaved)
    x = x.detach().double().cpu().nan_to_num(0.0)
    if layout == "thd":
        return rotate(x.transpose(0, 1), torch.tensor(rows) * sign).transpose(0, 1)
    xb = to_bhsd(x, layout)
    out = torch.stack([rotate(xb[i], torch.tensor(rows[i]) * sign) for i in range(len(xb))])
    return to_bhsd(out, layout)


def close(actual: torch.Tensor, expected64: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.detach().double().cpu(), expected64, **TOL[dtype])


# ----------------------------------------------------------------------------- cases
#
# Each case: (layout, how the angles are given). ``build(dtype)`` returns the keyword
# arguments of the call (tables included) and the expected row of every token, worked
# out here by loops: ``[t]`` for packed inputs, ``[b][s]`` otherwise.

P_S = [5, 0, 17, 3, 3, 40]  # [s]: repeats and any order
P_BS = [[1, 2, 3, 4, 5, 6], [30, 2, 9, 0, 9, 11]]  # [b, s]
P_T = [4, 4, 0, 1, 2, 12, 30, 7, 8]  # [t]


def _doc_rows(offsets=None):
    rows = []
    for j in range(len(CU) - 1):
        start = 0 if offsets is None else offsets[j]
        rows += [start + i for i in range(CU[j + 1] - CU[j])]
    return rows


def _case(name: str, dtype: torch.dtype):
    tdt = table_dtype(dtype)
    full = tables(range(R), tdt)  # [R, n], row r at position r
    dev = functools.partial(torch.tensor, device=DEVICE)
    if name == "bhsd-table":  # broadcast [s, n]
        return "bhsd", dict(zip(("cos", "sin"), tables(P_S, tdt), strict=True)), [P_S] * B
    if name == "bhsd-table-per-batch":  # broadcast [b, 1, s, n]
        c, s = tables(P_BS, tdt)
        return "bhsd", dict(cos=c[:, None], sin=s[:, None]), P_BS
    if name == "bshd-table":  # broadcast [s, 1, n]
        c, s = tables(P_S, tdt)
        return "bshd", dict(cos=c[:, None], sin=s[:, None]), [P_S] * B
    if name == "thd-table":  # broadcast [t, 1, n]
        c, s = tables(P_T, tdt)
        return "thd", dict(cos=c[:, None], sin=s[:, None]), P_T
    kw = dict(cos=full[0], sin=full[1])
    if name == "bhsd-offset":
        return "bhsd", dict(kw, offset=7), [[7 + j for j in range(S)]] * B
    if name == "bshd-offset-tensor":
        off = [3, 20]
        return "bshd", dict(kw, offset=dev(off)), [[o + j for j in range(S)] for o in off]
    if name == "bhsd-positions-s":
        return "bhsd", dict(kw, positions=dev(P_S)), [P_S] * B
    if name == "bshd-positions-bs":
        return "bshd", dict(kw, positions=dev(P_BS, dtype=torch.int32)), P_BS
    if name == "bhsd-positions-bs-offset-tensor":
        off = [2, 1]
        rows = [[p + o for p in ps] for ps, o in zip(P_BS, off, strict=True)]
        return "bhsd", dict(kw, positions=dev(P_BS), offset=dev(off)), rows
    if name == "bshd-positions-s-offset-int":
        return "bshd", dict(kw, positions=dev(P_S), offset=5), [[p + 5 for p in P_S]] * B
    if name == "thd-offset":
        return "thd", dict(kw, offset=11), [11 + i for i in range(T)]
    if name == "thd-positions":
        return "thd", dict(kw, positions=dev(P_T)), P_T
    if name == "thd-cu":
        return "thd", dict(kw, cu_seqlens=dev(CU, dtype=torch.int32)), _doc_rows()
    if name == "thd-cu-offsets":
        off = [5, 9, 0, 30]
        return "thd", dict(kw, cu_seqlens=dev(CU), offset=dev(off)), _doc_rows(off)
    raise AssertionError(name)


CASES = [
    "bhsd-table", "bhsd-table-per-batch", "bshd-table", "thd-table", "bhsd-offset",
    "bshd-offset-tensor", "bhsd-positions-s", "bshd-positions-bs",
    "bhsd-positions-bs-offset-tensor", "bshd-positions-s-offset-int", "thd-offset",
    "thd-positions", "thd-cu", "thd-cu-offsets",
]  # fmt: skip


def qk(layout: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k in ``layout``; a NaN and a -0.0 in the pass-through lanes (copied bitwise)."""

    def shape(h: int) -> tuple[int, ...]:
        return {"bhsd": (B, h, S, D), "bshd": (B, S, h, D), "thd": (T, h, D)}[layout]

    q, k = rand(*shape(HQ), dtype=dtype, seed=seed), rand(*shape(HK), dtype=dtype, seed=seed + 1)
    q[..., 2 * N], k[..., -1] = float("nan"), -0.0
    return q, k


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("case", CASES)
def test_qk_plain_out_and_in_place(case, interleaved, dtype) -> None:
    """apply_rope_qk (new outputs, then out= into strided buffers, then inplace=True)
    against the rotation matrices; inputs untouched, pass-through lanes bitwise."""
    layout, kw, rows = _case(case, dtype)
    kw.update(layout=layout, interleaved=interleaved, backend="triton")
    q, k = qk(layout, dtype)
    want = [exact(x, rows, layout, interleaved) for x in (q, k)]
    before = [bits(x).clone() for x in (q, k)]

    got = apply_rope_qk(q, k, **kw)
    for y, x, w, b0 in zip(got, (q, k), want, before, strict=True):
        close(y[..., : 2 * N], w[..., : 2 * N], dtype)
        assert y.shape == x.shape and torch.equal(bits(y[..., 2 * N :]), bits(x[..., 2 * N :]))
        assert torch.equal(bits(x), b0), "input modified"

    # out=: views into wider buffers, written through their strides
    outs = [torch.full((*x.shape[:-1], D + 3), 7.0, dtype=dtype, device=DEVICE)[..., 1 : D + 1]
            for x in (q, k)]  # fmt: skip
    got = apply_rope_qk(q, k, out=outs, **kw)
    assert got[0] is outs[0] and got[1] is outs[1]
    for y, x, w in zip(outs, (q, k), want, strict=True):
        close(y[..., : 2 * N], w[..., : 2 * N], dtype)
        assert torch.equal(bits(y[..., 2 * N :]), bits(x[..., 2 * N :]))
        assert (y._base[..., 0] == 7).all() and (y._base[..., D + 1 :] == 7).all()

    # in place: the same values, in q's and k's own memory
    q2, k2 = q.clone(), k.clone()
    got = apply_rope_qk(q2, k2, **kw, inplace=True)
    assert got[0] is q2 and got[1] is k2
    for y, x, w in zip((q2, k2), (q, k), want, strict=True):
        close(y[..., : 2 * N], w[..., : 2 * N], dtype)
        assert torch.equal(bits(y[..., 2 * N :]), bits(x[..., 2 * N :]))


@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("case", CASES)
def test_single_tensor_plain_and_in_place(case, interleaved) -> None:
    layout, kw, rows = _case(case, torch.float32)
    kw.update(layout=layout, interleaved=interleaved, backend="triton")
    x, _ = qk(layout, torch.float32, seed=5)
    want = exact(x, rows, layout, interleaved)
    close(apply_rope(x, **kw)[..., : 2 * N], want[..., : 2 * N], torch.float32)
    y = x.clone()
    assert apply_rope(y, **kw, inplace=True) is y
    close(y[..., : 2 * N], want[..., : 2 * N], torch.float32)
    assert torch.equal(bits(y[..., 2 * N :]), bits(x[..., 2 * N :]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("case", ["bshd-table", "bshd-positions-bs", "thd-cu-offsets"])
def test_inverse_rotates_by_minus_theta(case, interleaved, dtype) -> None:
    layout, kw, rows = _case(case, dtype)
    kw.update(layout=layout, interleaved=interleaved, backend="triton", inverse=True)
    q, k = qk(layout, dtype, seed=3)
    for y, x in zip(apply_rope_qk(q, k, **kw), (q, k), strict=True):
        close(y[..., : 2 * N], exact(x, rows, layout, interleaved, sign=-1)[..., : 2 * N], dtype)
    q2, k2 = q.clone(), k.clone()
    apply_rope_qk(q2, k2, **kw, inplace=True)
    close(q2[..., : 2 * N], exact(q, rows, layout, interleaved, sign=-1)[..., : 2 * N], dtype)


def test_mixed_dtypes_gqa_and_odd_head_dim() -> None:
    """q float32 and k bfloat16 (one launch: the kernel is typed per pointer); d = 7, n = 3."""
    freqs = ropekit.inv_freq(7, 10000.0)
    q, k = rand(2, 5, 3, 7), rand(2, 5, 1, 7, dtype=torch.bfloat16, seed=1)
    cos, sin = tables(range(9), freqs=freqs)
    pos = [[0, 8, 2, 3, 1], [4, 4, 4, 0, 7]]
    yq, yk = apply_rope_qk(q, k, cos, sin, positions=torch.tensor(pos, device=DEVICE),
                           layout="bshd", interleaved=True, backend="triton")  # fmt: skip
    close(yq, exact(q, pos, "bshd", True, freqs=freqs), torch.float32)
    close(yk, exact(k, pos, "bshd", True, freqs=freqs), torch.bfloat16)


def test_many_documents_binary_search() -> None:
    """cu_seqlens of 37 documents of random lengths (empty ones included)."""
    lengths = torch.randint(0, 6, (37,), generator=gen(5)).tolist()
    cu = [0]
    for length in lengths:
        cu.append(cu[-1] + length)
    rows = [i for length in lengths for i in range(length)]
    q, k = rand(cu[-1], 2, D), rand(cu[-1], 1, D, seed=1)
    cos, sin = tables(range(8))
    yq, yk = apply_rope_qk(q, k, cos, sin, cu_seqlens=torch.tensor(cu, device=DEVICE),
                           layout="thd", backend="triton")  # fmt: skip
    close(yq, exact(q, rows, "thd"), torch.float32)
    close(yk, exact(k, rows, "thd"), torch.float32)


def test_empty_inputs() -> None:
    cos, sin = tables(range(R))
    x = rand(2, 0, 5, D)
    assert apply_rope(x, cos[:5], sin[:5], backend="triton").shape == x.shape
    q, k = rand(0, 3, D), rand(0, 1, D)
    yq, yk = apply_rope_qk(q, k, cos, sin, cu_seqlens=torch.tensor([0, 0], device=DEVICE),
                           layout="thd", backend="triton")  # fmt: skip
    assert yq.shape == q.shape and yk.shape == k.shape


def test_refuses_devices_it_cannot_run_on() -> None:
    x = torch.empty(1, 2, 3, D, device="meta")
    c = torch.empty(3, N, device="meta")
    with pytest.raises(ropekit.RopeValueError, match="backend='triton' cannot run on"):
        apply_rope(x, c, c, backend="triton")


def rope64(x, cos, sin, interleaved):
    """The formula in float64 torch ops (for random tables, where no positions exist)."""
    x, c, s = x.double().cpu(), cos.double().cpu(), sin.double().cpu()
    n = c.shape[-1]
    a, b = (x[..., 0 : 2 * n : 2], x[..., 1 : 2 * n : 2]) if interleaved else (
        x[..., :n], x[..., n : 2 * n])  # fmt: skip
    ya, yb = a * c - b * s, b * c + a * s
    rot = torch.stack((ya, yb), dim=-1).flatten(-2) if interleaved else torch.cat((ya, yb), -1)
    return torch.cat((rot, x[..., 2 * n :]), dim=-1)


@st.composite
def strided_case(draw):
    """x of random shape with a random order of its stored batch dims; a random table."""
    b, h, s = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    d = draw(st.integers(2, 19))
    n = draw(st.integers(1, d // 2))
    order = draw(st.permutations([0, 1, 2]))
    cos_shape = draw(st.sampled_from([(s, n), (b, 1, s, n), (1, h, 1, n), (b, h, s, n), (n,)]))
    return (b, h, s, d), order, cos_shape, draw(st.booleans()), draw(st.integers(0, 2**16))


@settings(max_examples=25, deadline=None)
@given(strided_case())
def test_random_shapes_strides_and_table_broadcasts(args) -> None:
    shape, order, cos_shape, interleaved, seed = args
    stored = [shape[j] for j in order] + [shape[3]]
    x = rand(*stored, seed=seed).permute(*[order.index(j) for j in range(3)], 3)
    g = gen(seed + 1)
    cos = (torch.rand(cos_shape, generator=g) * 2 - 1).to(DEVICE)
    sin = (torch.rand(cos_shape, generator=g) * 2 - 1).to(DEVICE)
    y = apply_rope(x, cos, sin, interleaved=interleaved, backend="triton")
    close(y, rope64(x, cos, sin, interleaved), torch.float32)
    z = x.clone()
    apply_rope(z, cos, sin, interleaved=interleaved, backend="triton", inplace=True)
    close(z, rope64(x, cos, sin, interleaved), torch.float32)


def test_batch_dims_no_view_covers() -> None:
    """Five batch dims that do not merge into [B, H, S] (lane stride 2 as well)."""
    x = rand(2, 5, 3, 2, 2 * D).permute(0, 3, 2, 1, 4)[..., ::2][:, :, :, ::2]
    cos = (torch.rand(3, 1, N, generator=gen(1)) * 2 - 1).to(DEVICE)
    sin = (torch.rand(3, 1, N, generator=gen(2)) * 2 - 1).to(DEVICE)
    for interleaved in (False, True):
        y = apply_rope(x, cos, sin, interleaved=interleaved, backend="triton")
        close(y, rope64(x, cos, sin, interleaved), torch.float32)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "case", ["bhsd-table", "bshd-positions-bs", "thd-cu-offsets", "bhsd-offset"]
)
def test_gradient_is_the_inverse_rotation(case, dtype) -> None:
    """dL/dq = R(-θ) dL/dy_q (same for k), incoming gradients of any strides."""
    layout, kw, rows = _case(case, dtype)
    q, k = (x.nan_to_num(0.0).requires_grad_() for x in qk(layout, dtype, seed=7))
    yq, yk = apply_rope_qk(q, k, layout=layout, backend="triton", **kw)
    gq = rand(*reversed(yq.shape), dtype=dtype, seed=8).permute(*reversed(range(yq.ndim)))
    gk = rand(*yk.shape, dtype=dtype, seed=9)
    torch.autograd.backward((yq, yk), (gq, gk))
    close(q.grad, exact(gq, rows, layout, sign=-1), dtype)
    close(k.grad, exact(gk, rows, layout, sign=-1), dtype)


@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_in_place_on_views_gives_the_base_its_gradient(interleaved) -> None:
    """q and k rotated in place as slices of a fused [b, s, 3, h, d] qkv projection: the
    base gets the out-of-place gradient in the q and k slices and the identity in v."""
    layout, kw, rows = _case("bshd-positions-bs", torch.float32)
    kw.update(layout=layout, interleaved=interleaved, backend="triton")
    base0 = rand(B, S, 3, HQ, D, seed=11)
    w = rand(B, S, 3, HQ, D, seed=12)

    base = base0.clone().requires_grad_()
    qkv = base * 1.0  # a non-leaf, as a projection's output is
    q, k = apply_rope_qk(qkv[:, :, 0], qkv[:, :, 1], **kw, inplace=True)
    assert q._base is qkv and k._base is qkv
    (qkv * w).sum().backward()
    close(qkv[:, :, 0], exact(base0[:, :, 0], rows, layout, interleaved), torch.float32)
    assert torch.equal(qkv[:, :, 2], base0[:, :, 2])

    ref = base0.clone().requires_grad_()
    yq, yk = apply_rope_qk(ref[:, :, 0], ref[:, :, 1], **kw)
    (
        (yq * w[:, :, 0]).sum() + (yk * w[:, :, 1]).sum() + (ref[:, :, 2] * w[:, :, 2]).sum()
    ).backward()
    torch.testing.assert_close(base.grad, ref.grad, **TOL[torch.float32])
    close(base.grad[:, :, 1], exact(w[:, :, 1], rows, layout, interleaved, sign=-1), torch.float32)
    assert torch.equal(base.grad[:, :, 2], w[:, :, 2])

    # one tensor, packed, in place on a view with cu_seqlens and per-document offsets
    layout, kw, rows = _case("thd-cu-offsets", torch.float32)
    wide0 = rand(T, HQ, 2 * D, seed=13)
    wide = wide0.clone().requires_grad_()
    h = wide * 1.0
    apply_rope(h[..., :D], layout=layout, interleaved=interleaved, backend="triton", **kw, inplace=True)
    g = rand(T, HQ, 2 * D, seed=14)
    h.backward(g)
    close(wide.grad[..., :D], exact(g[..., :D], rows, layout, interleaved, sign=-1),
          torch.float32)  # fmt: skip
    assert torch.equal(wide.grad[..., D:], g[..., D:])


def test_gradcheck_and_gradgradcheck_float64() -> None:
    _, kw, _ = _case("thd-cu-offsets", torch.float64)
    q = rand(T, 2, 5, dtype=torch.float64).requires_grad_()
    k = rand(T, 1, 5, dtype=torch.float64, seed=1).requires_grad_()
    kw["cos"], kw["sin"] = kw["cos"][:, :2], kw["sin"][:, :2]

    def fn(a, b):
        return apply_rope_qk(a, b, layout="thd", interleaved=True, backend="triton", **kw)

    assert torch.autograd.gradcheck(fn, (q, k), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (q, k), fast_mode=True)


# ----------------------------------------------------------------------------- launches


class Recorder:
    """Stands in for ``rope_kernel`` in :mod:`ropekit.apply.triton.ops`: records every
    launch (its arguments) and runs it."""

    def __init__(self, real) -> None:
        self.real, self.launches = real, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((args, kwargs))
            return self.real[grid](*args, **kwargs)

        return launch


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    rec = Recorder(ops.rope_kernel)
    monkeypatch.setattr(ops, "rope_kernel", rec)
    return rec


def test_one_launch_per_qk_call(recorder) -> None:
    """q and k in one launch, whatever the layout, positions, out= or in place; forward
    and backward; the in-place launch writes into q's and k's own memory."""
    _, kw_bs, _ = _case("bshd-positions-bs", torch.float32)
    _, kw_cu, _ = _case("thd-cu-offsets", torch.float32)
    _, kw_tab, _ = _case("bhsd-table", torch.float32)
    qb, kb = qk("bshd", torch.float32)
    qt, kt = qk("thd", torch.float32)
    qh, kh = qk("bhsd", torch.float32)
    mixed = qb.transpose(1, 2), kb.transpose(1, 2).contiguous()  # [b,s,h,d] view, dense [b,h,s,d]
    fused = rand(B, S, 3, HQ, D, seed=3)
    calls = {
        "qk bshd positions": lambda: apply_rope_qk(qb, kb, layout="bshd", backend="triton", **kw_bs),
        "qk thd cu_seqlens": lambda: apply_rope_qk(qt, kt, layout="thd", backend="triton", **kw_cu),
        "qk broadcast table": lambda: apply_rope_qk(qh, kh, backend="triton", **kw_tab),
        "qk broadcast, q a view": lambda: apply_rope_qk(*mixed, backend="triton", **kw_tab),
        "qk mixed dtypes": lambda: apply_rope_qk(qh, kh.half(), backend="triton", **kw_tab),
        "qk out=": lambda: apply_rope_qk(
            qt, kt, layout="thd", backend="triton", out=(torch.empty_like(qt), torch.empty_like(kt)),
            **kw_cu,
        ),
        "qk_ thd": lambda: apply_rope_qk(qt.clone(), kt.clone(), layout="thd", backend="triton",
                                          **kw_cu, inplace=True),
        "qk_ fused views": lambda: apply_rope_qk(fused[:, :, 0], fused[:, :, 1], layout="bshd",
                                                  backend="triton", **kw_bs, inplace=True),
    }  # fmt: skip
    for name, call in calls.items():
        recorder.launches.clear()
        call()
        assert len(recorder.launches) == 1, (name, len(recorder.launches))
        if name.startswith("qk_"):
            args = recorder.launches[0][0]
            assert args[1] is args[0] and args[3] is args[2], "in place: y is x"

    # with autograd: one launch forward, one backward
    q, k = (x.detach().requires_grad_() for x in (qb, kb))
    recorder.launches.clear()
    yq, yk = apply_rope_qk(q, k, layout="bshd", backend="triton", **kw_bs)
    assert len(recorder.launches) == 1
    torch.autograd.backward((yq, yk), (torch.ones_like(yq), torch.ones_like(yk)))
    assert len(recorder.launches) == 2 and recorder.launches[1][1]["CONJ"]

    base = fused.clone().requires_grad_()
    qkv = base * 1.0
    recorder.launches.clear()
    q, k = apply_rope_qk(qkv[:, :, 0], qkv[:, :, 1], layout="bshd", backend="triton", **kw_bs, inplace=True)
    assert len(recorder.launches) == 1
    (q.sum() + k.sum()).backward()
    # The dispatcher gives each tensor rotated in place its own autograd node (torch lets a
    # Function that modifies a view return only that view): one launch each backward.
    assert len(recorder.launches) == 3


@pytest.mark.parametrize("block_elems", [8, 32, 4096])
def test_tiles_of_every_size(monkeypatch, recorder, block_elems) -> None:
    """Tiles of one head and token, of 4 of q's 5 and k's 3 heads (ragged head blocks),
    and of 16 tokens (ragged token blocks: 21 = 16 + 5): the same result."""
    monkeypatch.setattr(
        ops, "_plan_indexed", functools.partial(plan.plan_indexed, block_elems=block_elems)
    )
    q, k = rand(1, 21, 5, 12), rand(1, 21, 3, 12, seed=1)
    freqs = ropekit.inv_freq(12, 10000.0, rotary_dim=10)
    cos, sin = tables(range(24), freqs=freqs)
    for interleaved in (False, True):
        recorder.launches.clear()
        yq, yk = apply_rope_qk(q, k, cos, sin, offset=2, layout="bshd", interleaved=interleaved,
                               backend="triton")  # fmt: skip
        ((_, meta),) = recorder.launches
        want = {8: (1, 1), 32: (1, 4), 4096: (16, 4)}[block_elems]
        assert (meta["BLOCK_S"], meta["BLOCK_H"]) == want
        rows = [[2 + j for j in range(21)]]
        close(yq, exact(q, rows, "bshd", interleaved, freqs=freqs), torch.float32)
        close(yk, exact(k, rows, "bshd", interleaved, freqs=freqs), torch.float32)


def test_int64_addressing(monkeypatch, recorder) -> None:
    """The 64-bit address variant (forced on small inputs) computes the same."""
    monkeypatch.setattr(plan, "needs_int64", lambda *metas: True)
    for cached in (ops._plan_indexed, ops._plan_broadcast):  # plans memoised: recompute
        cached.cache_clear()
    try:
        for case in ("thd-cu-offsets", "bshd-table"):
            layout, kw, rows = _case(case, torch.float32)
            q, k = qk(layout, torch.float32, seed=4)
            recorder.launches.clear()
            got = apply_rope_qk(q, k, layout=layout, interleaved=True, backend="triton", **kw)
            assert recorder.launches[0][1]["INT64"]
            for y, x in zip(got, (q, k), strict=True):
                close(y[..., : 2 * N], exact(x, rows, layout, True)[..., : 2 * N], torch.float32)
    finally:
        monkeypatch.undo()
        for cached in (ops._plan_indexed, ops._plan_broadcast):
            cached.cache_clear()


# ----------------------------------------------------------------------------- torch op


def test_torch_op_path_matches_direct_launch() -> None:
    """Under a dispatch mode (as in make_fx or FakeTensor tracing) the backend runs its
    registered torch op, as under torch.compile: the same outputs and gradients."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    layout, kw, _ = _case("thd-cu-offsets", torch.float32)
    q0, k0 = (x.nan_to_num(0.0) for x in qk(layout, torch.float32))

    def run():
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        yq, yk = apply_rope_qk(q, k, layout=layout, backend="triton", **kw)
        y = apply_rope(q, kw["cos"][:T, None], kw["sin"][:T, None], layout="thd", backend="triton")
        outs = (yq, yk, y)
        grads = torch.autograd.grad(outs, (q, k), [torch.ones_like(o) for o in outs])
        return [o.detach() for o in outs] + list(grads)

    direct = run()
    mode = Record()
    with mode:
        via_op = run()
    assert any("ropekit.triton_rotate" in op for op in mode.ops), sorted(mode.ops)
    for a, b in zip(direct, via_op, strict=True):  # same kernel; sums of grads may reorder
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_torch_op_autograd_formula() -> None:
    """The op's own autograd (what torch.compile differentiates): backward = the same op
    rotating by -θ, at the same rows."""
    layout, kw, rows = _case("thd-cu-offsets", torch.float64)
    q, k = (x.nan_to_num(0.0).requires_grad_() for x in qk(layout, torch.float64))
    cq, ck = q.transpose(0, 1)[None], k.transpose(0, 1)[None]  # canonical [1, h, t, d]
    yq, _ = torch.ops.ropekit.triton_rotate(
        [cq, ck], kw["cos"], kw["sin"], None, kw["offset"], kw["cu_seqlens"], 0, True, False, False
    )
    close(yq[0].transpose(0, 1), exact(q, rows, layout), torch.float64)
    g = rand(*yq.shape, dtype=torch.float64, seed=3)
    yq.backward(g)  # yk unused: its gradient arrives as None
    close(q.grad, exact(g[0].transpose(0, 1), rows, layout, sign=-1), torch.float64)
    assert k.grad is None or not k.grad.any()


# ----------------------------------------------------------------------------- plans


def test_tile_choice() -> None:
    """Big launches get ~2 * BLOCK_ELEMS-element tiles; decode-sized ones shrink tiles so
    the grid has enough programs; GQA's smaller head count sets BLOCK_H."""
    bs, bh, bn, warps, programs = plan.tiles(1, 4096, 32, 8, 64, plan.BLOCK_ELEMS, None)
    assert (bn, bh) == (64, 8) and bs * bh * bn == plan.BLOCK_ELEMS and warps == 4
    assert programs == (4096 // bs) * (32 // 8 + 1)
    bs, bh, bn, warps, programs = plan.tiles(32, 1, 32, 32, 64, plan.BLOCK_ELEMS, None)
    assert bs == 1 and bh * bn == plan.MIN_BLOCK_ELEMS and programs == 32 * 2 * (32 // bh)
    assert warps == 1
    assert plan.tiles(1, 1, 1, 0, 3, plan.BLOCK_ELEMS, 2)[1:4] == (1, 4, 2)


def test_int64_decision() -> None:
    assert plan.needs_int64(((2**31,), (1,))) and not plan.needs_int64(((2**20,), (1,)))
    assert plan.needs_int64(((2, 2**30), (1, 2**30)))  # strides reach past 2**31
    assert not plan.needs_int64(((2**33,), (0,)), None)  # expanded: one element
    assert not plan.needs_int64(((0, 2**40), (2**40, 1)))  # empty


def _x(shape, strides, f64=False, inplace=False):
    return (tuple(shape), tuple(strides), tuple(strides), f64, inplace)


def test_plans_share_one_launch_when_they_can() -> None:
    # q a [b, s, h, d] view, k dense [b, h, s, d], an [s, n] table: one [B, H, S] grid
    q = _x((2, 3, 5, 8), (120, 8, 24, 1))
    k = _x((2, 2, 5, 8), (80, 40, 8, 1))
    (launch,) = plan.plan_broadcast((q, k), ((5, 4), (4, 1)), False, False)
    assert (launch.first, launch.second) == (0, 1) and launch.args[:3] == (5, 3, 2)
    assert not launch.meta["COS_PER_HEAD"]
    # a contiguous [b, h, s, d] with an [s, n] table folds b and h into the head slot
    (launch,) = plan.plan_broadcast((_x((2, 3, 5, 8), (120, 40, 8, 1)),), ((5, 4), (4, 1)),
                                    False, False)  # fmt: skip
    assert launch.args[:3] == (5, 6, 0) and launch.grid[0] >= 1
    # indexed: one launch; separate ones for different TAIL (head dims) or compute dtypes
    table = ((16, 4), (4, 1))
    q, k = _x((2, 3, 5, 10), (150, 50, 10, 1)), _x((2, 1, 5, 10), (50, 50, 10, 1))
    assert len(plan.plan_indexed((q, k), table, None, None, None, False, False)) == 1
    k8 = _x((2, 1, 5, 8), (40, 40, 8, 1))
    assert len(plan.plan_indexed((q, k8), table, None, None, None, False, False)) == 2
    k64 = _x((2, 1, 5, 10), (50, 50, 10, 1), f64=True)
    assert len(plan.plan_indexed((q, k64), table, None, None, None, False, False)) == 2
    # in place skips the pass-through copy; then d no longer matters
    q_ip, k8_ip = (*q[:4], True), (*k8[:4], True)
    (launch,) = plan.plan_indexed((q_ip, k8_ip), table, None, None, None, False, False)
    assert launch.meta["TAIL"] == 0
    # cu_seqlens of 4 documents: 3 halvings (2**3 > 4)
    (launch,) = plan.plan_indexed((q,), table, None, ((4,), (1,)), ((5,), (1,)), False, False)
    assert launch.args[4:6] == (4, 3) and launch.meta["VARLEN"] and launch.meta["HAS_OFFS"]


def test_no_view_for_unmergeable_batch_dims() -> None:
    x = _x((2, 2, 3, 5, 8), (480, 8, 160, 16, 2))
    assert plan.plan_broadcast((x,), ((3, 1, 4), (4, 4, 1)), False, False) is None


def test_import_costs() -> None:
    """``import ropekit`` (and the backend package) import no triton; plan.py imports
    without triton; without a GPU or interpreter load() says why."""
    code = """
import sys
sys.modules["triton"] = None  # any import of triton fails
import ropekit, ropekit.apply.triton as backend
from ropekit.apply.triton import plan
assert plan.tiles(1, 8, 2, 1, 4, plan.BLOCK_ELEMS, None)
print("reason:", backend.load())
"""
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reason: triton cannot be imported" in proc.stdout, proc.stdout
    code = "import ropekit.apply.triton as b; r = b.load(); print(isinstance(r, str), r)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("False" if CUDA else "True no CUDA device"), proc.stdout


# ----------------------------------------------------------------------------- compilers

_SM90_COMPILE = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ropekit.apply.triton.kernel import rope_kernel as fn

elem = {"x1_ptr": "x", "y1_ptr": "x", "x2_ptr": "x", "y2_ptr": "x", "cos_ptr": "t", "sin_ptr": "t",
        "pos_ptr": "i64", "offs_ptr": "i64", "cu_ptr": "i32"}
# strides a launch sees as multiples of 16 (d = 128 rows) and specialises as such
aligned = [*elem, *(f"{t}_s{a}" for t in ("x1", "y1", "x2", "y2") for a in "bhs"), "c_ss"]
unit = ["x1_sd", "y1_sd", "x2_sd", "y2_sd", "c_sn"]  # what a launch specialises as 1


def ptx(x, table="fp32", **flags):
    const = dict(N=64, TAIL=0, BLOCK_S=1, BLOCK_H=32, BLOCK_N=64, BLOCK_T=1, INTERLEAVED=False,
                 CONJ=False, HAS_POS=False, HAS_OFFS=False, VARLEN=False, GATHER=True,
                 COS_PER_HEAD=False, INT64=False, F64=x == "fp64")
    const.update(flags)
    const.update(dict.fromkeys(unit, 1))
    sig = {a: "constexpr" if a in const else "i32" for a in fn.arg_names}
    sig.update({a: "*" + {"x": x, "t": table}.get(e, e) for a, e in elem.items()})
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    src = ASTSource(fn, sig, const, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]


wide = [ptx("bf16"), ptx("fp16", INTERLEAVED=True, HAS_POS=True, CONJ=True)]
for code in wide:  # d=128 rows: 16-byte loads and stores
    assert "ld.global.v4" in code and "st.global.v4" in code, "no 16-byte vector access"
ptx("fp32", VARLEN=True, HAS_OFFS=True, INTERLEAVED=True, N=61, TAIL=3, BLOCK_T=4, INT64=True)
ptx("fp64", "bf16", COS_PER_HEAD=True, GATHER=False, HAS_POS=True, HAS_OFFS=True, TAIL=2, BLOCK_T=2)
print("compiled")
"""


def _without_interpreter(code: str) -> subprocess.CompletedProcess[str]:
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silence triton 3.9's notice; 1 is the default
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(CUDA, reason="on a GPU every other test compiles the kernel for real")
def test_kernel_compiles_for_sm90_with_wide_accesses() -> None:
    """The interpreter executes Python and accepts code the compiler rejects: compile the
    kernel for an H100 (sm_90, no GPU needed) in a process without TRITON_INTERPRET, and
    check that contiguous d=128 rows move in 16-byte vectors."""
    proc = _without_interpreter(_SM90_COMPILE)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


_TRACE = r"""
import torch
from torch._dynamo.backends.common import aot_autograd

import ropekit
from ropekit.apply.triton import ops

ops.INTERPRETED = True  # let CPU tensors stand in for CUDA ones: nothing launches
joints = []


def stop(joint, inputs, **kw):  # AOTAutograd's partitioner gets the forward + backward graph
    joints.append(joint.code)
    raise RuntimeError("traced")


q0, k0 = torch.randn(2, 6, 4, 64), torch.randn(2, 6, 2, 64)
cos, sin = torch.rand(32, 32), torch.rand(32, 32)
off = torch.tensor([3, 0])


def f(q, k):
    yq, yk = ropekit.apply_rope_qk(q * 2, k, cos, sin, offset=off, layout="bshd", backend="triton")
    y1 = ropekit.apply_rope(yq[:, :, :1], cos[:6, None], sin[:6, None], layout="bshd",
                            interleaved=True, backend="triton")
    return yq.sum(2) + yk.sum(2) + y1.sum(2)


backend = aot_autograd(fw_compiler=lambda gm, _: gm, partition_fn=stop)
try:
    torch.compile(f, fullgraph=True, backend=backend)(q0.requires_grad_(), k0.requires_grad_())
except Exception:
    if not joints:
        raise
(code,) = joints
print("kernels", code.count("triton_kernel_wrapper_functional("))
print("forward", code.count("'CONJ': False"), "backward", code.count("'CONJ': True"))
"""


@pytest.mark.skipif(CUDA, reason="test_compile_fullgraph_forward_backward runs it for real")
def test_compile_traces_into_the_kernel() -> None:
    """torch.compile(fullgraph=True) of apply_rope_qk/apply_rope with backend="triton":
    Dynamo traces without a graph break, and AOTAutograd's joint graph holds the kernel
    (triton_kernel_wrapper_functional) once per call in the forward and once per call in
    the backward. Compiled Triton code cannot run on the CPU, so this stops at the joint
    graph, in a process without TRITON_INTERPRET (a regular JITFunction, as on a GPU)."""
    proc = _without_interpreter(_TRACE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kernels 4" in proc.stdout and "forward 2 backward 2" in proc.stdout, proc.stdout


# ----------------------------------------------------------------------------- GPU only


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compile_fullgraph_forward_backward(dtype) -> None:
    """torch.compile traces into the kernel (triton_op), forward and backward, no breaks;
    compiled and eager runs agree up to the reordering of the sums around the kernel."""
    q0 = rand(2, 6, 4, 64, dtype=dtype)
    k0 = rand(2, 6, 2, 64, dtype=dtype, seed=1)
    cos, sin = tables(range(32), freqs=ropekit.inv_freq(64, 10000.0))
    off = torch.tensor([3, 0], device=DEVICE)

    def f(q, k):
        yq, yk = apply_rope_qk(q * 2, k, cos, sin, offset=off, layout="bshd", backend="triton")
        y1 = apply_rope(yq[:, :, :1], cos[:6, None], sin[:6, None], layout="bshd",
                        interleaved=True, backend="triton")  # fmt: skip
        return yq.sum(2) + 0.5 * yk.sum(2) + y1.sum(2)

    compiled = torch.compile(f, fullgraph=True)
    results = []
    for fn in (f, compiled):
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        out = fn(q, k)
        out.float().square().sum().backward()
        results.append((out, q.grad, k.grad))
    tol = {key: 4 * v for key, v in TOL[dtype].items()}
    for eager, comp in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(comp, eager, **tol)


@cuda_only
def test_more_than_2_31_elements() -> None:
    """64-bit addressing on a real > 2**31-element tensor (12 GiB of GPU memory)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 16 * 2**30:
        pytest.skip(f"needs 16 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    s = 2**23 + 64
    q = torch.randn(1, 2, s, 128, device="cuda", dtype=torch.float16)  # 2**31 + 16384 elements
    k = torch.randn(1, 1, s, 128, device="cuda", dtype=torch.float16)
    assert plan.needs_int64((q.shape, q.stride()))
    freqs = ropekit.inv_freq(128, 10000.0)
    cos, sin = tables(range(4096), freqs=freqs)
    positions = torch.arange(s, device="cuda", dtype=torch.int32) % 4096
    yq, yk = apply_rope_qk(q, k, cos, sin, positions=positions, backend="triton")
    for sl in (slice(0, 64), slice(s // 2, s // 2 + 64), slice(s - 64, s)):
        rows = [(torch.arange(s)[sl] % 4096).tolist()]
        close(yq[:, :, sl], exact(q[:, :, sl], rows, "bhsd", freqs=freqs), torch.float16)
        close(yk[:, :, sl], exact(k[:, :, sl], rows, "bhsd", freqs=freqs), torch.float16)
    del q, k, yq, yk
    torch.cuda.empty_cache()
