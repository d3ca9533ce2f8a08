"""Every backend of apply_rope against the float64 specification, and the API around them.

Oracles: :mod:`ropekit.spec` (explicit float64 rotation matrices) for values, and
``backend="reference"`` (the plain torch formula) for the bit-exactness the fast backends
promise. Nothing here computes an expected value with the code under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if not torch.cuda.is_available():  # the Triton backend runs in Triton's CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ropekit
from ropekit import spec
from ropekit.apply import (
    Backend,
    apply_rope,
    apply_rope_qk,
)
from ropekit.apply import cpu as cpu_backend
from ropekit.apply.dispatch import resolve_backend
from tests.conftest import TOL, tol_at

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LOCAL = ["reference", "torch", "cpu", "auto"]  # backends that run here in milliseconds


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def case(b=2, h=3, s=5, d=10, rotary_dim=None, dtype=torch.float32, seed=0, per_row=False):
    """x [b, h, s, d] and exact float32/float64 tables for random positions."""
    g = gen(seed)
    x = torch.randn(b, h, s, d, generator=g, dtype=torch.float64).to(dtype)
    freqs = ropekit.inv_freq(d, 10000.0, rotary_dim=rotary_dim)
    positions = torch.randint(-5000, 100_000, (b, s) if per_row else (s,), generator=g)
    table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    cos, sin = ropekit.cos_sin(freqs, positions, dtype=table_dtype)
    if per_row:
        cos, sin = cos[:, None], sin[:, None]
    return x, positions, freqs, cos, sin


def exact(x, positions, freqs, interleaved):
    """The float64 rotation-matrix product (positions [s] or [b, s])."""
    if positions.ndim == 1:
        return spec.apply(x.double(), positions, freqs, interleaved=interleaved)
    return torch.stack(
        [
            spec.apply(x[i].double(), positions[i], freqs, interleaved=interleaved)
            for i in range(x.shape[0])
        ]
    )


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("backend", LOCAL)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize(
    ("d", "rotary_dim", "per_row"), [(10, None, False), (9, None, True), (12, 6, False)]
)
def test_backend_matches_rotation_matrices(
    backend, dtype, interleaved, d, rotary_dim, per_row
) -> None:
    x, positions, freqs, cos, sin = case(d=d, rotary_dim=rotary_dim, dtype=dtype, per_row=per_row)
    before = x.clone()
    got = apply_rope(x, cos, sin, interleaved=interleaved, backend=backend)
    assert got.dtype == dtype and got.shape == x.shape
    want = exact(x, positions, freqs, interleaved)
    torch.testing.assert_close(got.double(), want, **tol_at(dtype, positions, x.double()))
    n = cos.shape[-1]
    assert torch.equal(got[..., 2 * n :], x[..., 2 * n :])  # pass-through lanes, bit for bit
    assert torch.equal(x, before)  # input untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
def test_cpu_kernel_equals_the_formula_bit_for_bit(dtype, interleaved) -> None:
    # Documented property: the same float32 operations, each rounded on its own (no FMA).
    x, _, _, cos, sin = case(b=3, h=4, s=33, d=70, dtype=dtype, seed=3)
    x[0, 1, 2, 3] = float("nan")
    x[1, 2, 3, 4] = float("inf")
    want = apply_rope(x, cos, sin, interleaved=interleaved, backend="reference")
    got = apply_rope(x, cos, sin, interleaved=interleaved, backend="cpu")
    assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
    assert torch.equal(got.isnan(), want.isnan())
    # The torch backend may fuse a multiply-add (addcmul): within one rounding step.
    other = apply_rope(x, cos, sin, interleaved=interleaved, backend="torch")
    torch.testing.assert_close(other, want, **TOL[dtype], equal_nan=True)


@st.composite
def strided_case(draw):
    """Random batch shapes, transposes, slices and table broadcasts (for the C kernel's plan)."""
    ndim = draw(st.integers(1, 6))
    shape = draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim))
    n = draw(st.integers(1, 9))
    d = 2 * n + draw(st.integers(0, 3))
    dtype = draw(st.sampled_from(DTYPES))
    g = gen(draw(st.integers(0, 2**20)))
    base = torch.randn(*shape, d + draw(st.integers(0, 2)), generator=g).to(dtype)
    x = base[..., :d]  # lanes contiguous, rows possibly strided
    if ndim >= 2 and draw(st.booleans()):
        i, j = draw(st.permutations(range(ndim)))[:2]
        x = x.transpose(i, j)
    table_shape = [size if draw(st.booleans()) else 1 for size in x.shape[:-1]]
    keep = draw(st.integers(0, len(table_shape)))
    table_shape = table_shape[len(table_shape) - keep :]
    angle = torch.rand(*table_shape, n, generator=g, dtype=torch.float64) * 100
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return x, angle.cos().to(work), angle.sin().to(work), draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(strided_case())
def test_cpu_kernel_any_layout_equals_formula(args) -> None:
    x, cos, sin, interleaved = args
    want = apply_rope(x, cos, sin, interleaved=interleaved, backend="reference")
    assert torch.equal(apply_rope(x, cos, sin, interleaved=interleaved, backend="cpu"), want)
    other = apply_rope(x, cos, sin, interleaved=interleaved, backend="torch")
    torch.testing.assert_close(other, want, **TOL[x.dtype])
    y = x.clone()
    assert apply_rope(y, cos, sin, interleaved=interleaved, backend="cpu", inplace=True) is y
    assert torch.equal(y, want)


def test_cpu_kernel_layouts_it_does_not_take_still_work() -> None:
    # Lanes with stride 2, and 8 batch dims that no merge can reduce to the kernel's 6:
    # both are copied into layouts the kernel takes, with the same result.
    g = gen(4)
    wide = torch.randn(3, 5, 32, generator=g)
    cos, sin = torch.rand(5, 8, generator=g), torch.rand(5, 8, generator=g)
    x = wide[..., ::2]
    want = apply_rope(x, cos, sin, backend="reference")
    assert torch.equal(apply_rope(x, cos, sin, backend="cpu"), want)
    y = wide.clone()
    apply_rope(y[..., ::2], cos, sin, backend="cpu", inplace=True)
    assert torch.equal(y[..., ::2], want)
    assert torch.equal(y[..., 1::2], wide[..., 1::2])

    x8 = torch.randn(2, 3, 2, 3, 2, 3, 2, 3, 4, generator=g)
    c8 = torch.rand(2, 1, 2, 1, 2, 1, 2, 1, 2, generator=g)
    out = torch.empty_like(x8)
    # header: one tensor, float32, n=2, d=4, half pairs, forward, one thread; its record
    call = [1, 0, 2, 4, 0, 0, 1, *cpu_backend.loader._record(x8, out, c8, c8)]
    status = cpu_backend.loader.kernel().rotate(cpu_backend.loader.pack(call))
    assert status == 3  # too many dims: refused by the kernel
    want = apply_rope(x8, c8, c8, backend="reference")
    assert torch.equal(apply_rope(x8, c8, c8, backend="cpu"), want)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_kernel_splits_q_and_k_rows_over_threads(threads) -> None:
    # One call for q and k: the rows of both are split evenly over the threads (here
    # mid-way through q's runs of 1100 positions), with GQA head counts and two dtypes.
    g = gen(17)
    q = torch.randn(2, 3, 1100, 16, generator=g)
    k = torch.randn(2, 1, 1100, 16, generator=g).bfloat16()
    cos, sin = torch.rand(1100, 8, generator=g), torch.rand(1100, 8, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = apply_rope_qk(q, k, cos, sin, backend="cpu")
        q2, k2 = q.clone(), k.clone()
        apply_rope_qk(q2, k2, cos, sin, backend="cpu", interleaved=True, inplace=True)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got[0], apply_rope(q, cos, sin, backend="reference"))
    assert torch.equal(got[1], apply_rope(k, cos, sin, backend="reference"))
    assert torch.equal(q2, apply_rope(q, cos, sin, interleaved=True, backend="reference"))
    assert torch.equal(k2, apply_rope(k, cos, sin, interleaved=True, backend="reference"))
    # Equal head counts: q and k rows done in pairs, here with different row strides.
    q3 = torch.randn(2, 3, 1100, 20, generator=g)[..., :16]
    k3 = torch.randn(2, 3, 1100, 16, generator=g)
    try:
        torch.set_num_threads(threads)
        got = apply_rope_qk(q3, k3, cos, sin, backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got[0], apply_rope(q3, cos, sin, backend="reference"))
    assert torch.equal(got[1], apply_rope(k3, cos, sin, backend="reference"))


@pytest.mark.parametrize("interleaved", [False, True])
def test_cpu_kernel_bf16_q_and_k_together_forward_and_backward(interleaved) -> None:
    # bf16 interleaved pairs are read as 32-bit words; q and k with equal head counts run
    # in one loop (each table row read once for both). Partial rotary (70 of 72 lanes),
    # [b, s, h, d] views, and the backward (the same paths with sin negated).
    g = gen(18)
    q = torch.randn(1, 300, 8, 72, generator=g).bfloat16().transpose(1, 2)
    k = torch.randn(1, 300, 8, 72, generator=g).bfloat16().transpose(1, 2)
    cos, sin = torch.rand(300, 35, generator=g), torch.rand(300, 35, generator=g)
    q_leaf, k_leaf = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    got = apply_rope_qk(q_leaf, k_leaf, cos, sin, interleaved=interleaved, backend="cpu")
    grads = [torch.randn(q.shape, generator=g).bfloat16() for _ in range(2)]
    torch.autograd.backward(got, grads)
    for x, y, leaf, g_out in zip((q, k), got, (q_leaf, k_leaf), grads, strict=True):
        ref = x.clone().requires_grad_(True)
        want = apply_rope(ref, cos, sin, interleaved=interleaved, backend="reference")
        want.backward(g_out)
        assert torch.equal(y, want)
        assert torch.equal(leaf.grad, ref.grad)


def test_cpu_kernel_is_deterministic_across_thread_counts() -> None:
    x, _, _, cos, sin = case(b=4, h=8, s=64, d=64, dtype=torch.bfloat16)  # > 2**15 elements
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = apply_rope(x, cos, sin, backend="cpu")
        torch.set_num_threads(max(2, threads))
        many = apply_rope(x, cos, sin, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("backend", LOCAL)
def test_empty_tensors(backend) -> None:
    x = torch.randn(0, 3, 8)
    cos = sin = torch.ones(3, 4)
    assert apply_rope(x, cos, sin, backend=backend).shape == (0, 3, 8)


# ----------------------------------------------------------------------------- q and k


@pytest.mark.parametrize("backend", LOCAL)
@pytest.mark.parametrize("interleaved", [False, True])
def test_qk_equals_two_single_calls_with_gqa_and_mixed_dtypes(backend, interleaved) -> None:
    g = gen(5)
    q = torch.randn(2, 8, 7, 16, generator=g)
    k = torch.randn(2, 2, 7, 16, generator=g).bfloat16()
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(16), torch.arange(100, 107))
    q_rot, k_rot = apply_rope_qk(q, k, cos, sin, interleaved=interleaved, backend=backend)
    assert torch.equal(q_rot, apply_rope(q, cos, sin, interleaved=interleaved, backend=backend))
    assert torch.equal(k_rot, apply_rope(k, cos, sin, interleaved=interleaved, backend=backend))
    want_q = apply_rope(q, cos, sin, interleaved=interleaved, backend="reference")
    torch.testing.assert_close(q_rot, want_q, **TOL[torch.float32])


def test_qk_transposed_bshd_views() -> None:
    # [b, s, h, d] projections viewed as [b, h, s, d], as attention layers produce them.
    g = gen(6)
    q = torch.randn(2, 9, 4, 32, generator=g).transpose(1, 2)
    k = torch.randn(2, 9, 2, 32, generator=g).transpose(1, 2)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(32), torch.arange(9))
    q_rot, k_rot = apply_rope_qk(q, k, cos, sin, backend="cpu")
    assert q_rot.stride() == q.stride()  # the output keeps the input's layout
    freqs = ropekit.inv_freq(32)
    torch.testing.assert_close(
        q_rot.double(), exact(q, torch.arange(9), freqs, False), **TOL[torch.float32]
    )
    torch.testing.assert_close(
        k_rot.double(), exact(k, torch.arange(9), freqs, False), **TOL[torch.float32]
    )


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("interleaved", [False, True])
def test_gradcheck_and_gradgradcheck_float64(backend, interleaved) -> None:
    x, _, _, cos, sin = case(b=1, h=2, s=3, d=7, dtype=torch.float64, seed=7)
    x.requires_grad_(True)
    k = torch.randn(1, 1, 3, 7, dtype=torch.float64, generator=gen(8), requires_grad=True)

    def fn(x, k):
        return apply_rope_qk(x, k, cos, sin, interleaved=interleaved, backend=backend)

    assert torch.autograd.gradcheck(fn, (x, k))
    assert torch.autograd.gradgradcheck(fn, (x, k))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("interleaved", [False, True])
def test_gradients_equal_the_formulas_gradients(backend, dtype, interleaved) -> None:
    x, _, _, cos, sin = case(b=2, h=3, s=6, d=11, dtype=dtype, seed=9)
    g = torch.randn(x.shape, generator=gen(10)).to(dtype)
    grads = []
    for name in ("reference", backend):
        leaf = x.clone().requires_grad_(True)
        apply_rope(leaf, cos, sin, interleaved=interleaved, backend=name).backward(g)
        grads.append(leaf.grad)
    # The gradient is the inverse rotation of g: the C kernel's rounding is the formula's
    # (bit for bit); the torch kernel's addcmul may fuse a multiply-add.
    tol = {"rtol": 0, "atol": 0} if backend == "cpu" else TOL[dtype]
    torch.testing.assert_close(grads[1], grads[0], **tol)


def test_only_one_of_q_k_used_gets_a_gradient() -> None:
    q = torch.randn(1, 2, 3, 8, requires_grad=True)
    k = torch.randn(1, 2, 3, 8, requires_grad=True)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(8), torch.arange(3))
    q_rot, _ = apply_rope_qk(q, k, cos, sin, backend="cpu")
    q_rot.sum().backward()
    assert k.grad is None
    # d/dq sum(R q) = R^T 1, the inverse rotation of a vector of ones
    ones = torch.ones_like(q)
    torch.testing.assert_close(q.grad, apply_rope(ones, cos, -sin, backend="reference"))


def test_table_gradients_need_the_reference_backend() -> None:
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(8), torch.arange(4), dtype=torch.float64)
    cos.requires_grad_(True)
    assert resolve_backend("auto", x.device, tables_need_grad=True) is Backend.REFERENCE
    apply_rope(x, cos, sin).sum().backward()  # auto: differentiable in the tables
    assert cos.grad is not None
    with pytest.raises(ropekit.RopeValueError, match="cos/sin require grad"):
        apply_rope(x, cos, sin, backend="cpu")


# ----------------------------------------------------------------------------- in place, out=


@pytest.mark.parametrize("backend", LOCAL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_and_out_equal_the_functional_result(backend, dtype) -> None:
    g = gen(11)
    q = torch.randn(2, 4, 5, 10, generator=g).to(dtype)
    k = torch.randn(2, 2, 5, 10, generator=g).to(dtype)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(10, rotary_dim=8), torch.arange(5))
    want_q, want_k = apply_rope_qk(q, k, cos, sin, backend=backend)

    out = (torch.full_like(q, 7.0), torch.full_like(k, 7.0))
    got = apply_rope_qk(q, k, cos, sin, backend=backend, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    assert torch.equal(out[0], want_q) and torch.equal(out[1], want_k)
    single = torch.empty_like(q)
    assert apply_rope(q, cos, sin, backend=backend, out=single) is single
    assert torch.equal(single, want_q)

    q2, k2 = q.clone(), k.clone()
    got = apply_rope_qk(q2, k2, cos, sin, backend=backend, inplace=True)
    assert got[0] is q2 and got[1] is k2
    assert torch.equal(q2, want_q) and torch.equal(k2, want_k)
    q3 = q.clone()
    assert apply_rope(q3, cos, sin, backend=backend, inplace=True) is q3
    assert torch.equal(q3, want_q)


@pytest.mark.parametrize("backend", LOCAL)
def test_in_place_under_autograd_is_safe_for_non_leaves(backend) -> None:
    leaf = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(8), torch.arange(3), dtype=torch.float64)
    g = torch.randn(2, 3, 8, dtype=torch.float64, generator=gen(12))

    y = leaf * 2.0  # non-leaf, rotated in place below
    rotated = apply_rope(y, cos, sin, backend=backend, inplace=True)
    assert rotated is y
    (rotated * g).sum().backward()
    in_place_grad = leaf.grad.clone()

    leaf.grad = None
    (apply_rope(leaf * 2.0, cos, sin, backend="reference") * g).sum().backward()
    torch.testing.assert_close(in_place_grad, leaf.grad, **TOL[torch.float64])


def test_in_place_and_out_refuse_what_autograd_cannot_do() -> None:
    leaf = torch.randn(2, 3, 8, requires_grad=True)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(8), torch.arange(3))
    with pytest.raises(ropekit.RopeValueError, match="leaf tensor that requires grad"):
        apply_rope(leaf, cos, sin, inplace=True)
    with pytest.raises(ropekit.RopeValueError, match="out= does not support autograd"):
        apply_rope(leaf, cos, sin, out=torch.empty(2, 3, 8))
    with torch.no_grad():  # fine without autograd
        out = torch.empty(2, 3, 8)
        apply_rope(leaf, cos, sin, out=out)
    torch.testing.assert_close(out, apply_rope(leaf.detach(), cos, sin))


@pytest.mark.parametrize(
    ("make_out", "needle"),
    [
        (lambda x: torch.empty(2, 3, 9), "expected x's shape"),
        (lambda x: torch.empty(2, 3, 8, dtype=torch.float64), "expected x's shape"),
        (lambda x: torch.empty(1, 3, 8).expand(2, 3, 8), "share memory"),
        (lambda x: "no", "out must be a torch.Tensor"),
    ],
)
def test_bad_out_raises(make_out, needle) -> None:
    x = torch.randn(2, 3, 8)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(8), torch.arange(3))
    with pytest.raises(ropekit.RopeValueError, match=needle):
        apply_rope(x, cos, sin, out=make_out(x))


def test_out_overlapping_the_input_raises() -> None:
    buf = torch.randn(2, 3, 9)
    x = buf[..., :8]
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(8), torch.arange(3))
    with pytest.raises(ropekit.RopeValueError, match="overlaps x"):
        apply_rope(x, cos, sin, out=buf[..., 1:])
    flat = torch.randn(100)  # contiguous views: the range check's fast path
    with pytest.raises(ropekit.RopeValueError, match="out overlaps x"):
        apply_rope(flat[:48].view(2, 3, 8), cos, sin, out=flat[8:56].view(2, 3, 8))
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    with pytest.raises(ropekit.RopeValueError, match=r"out\[0\] overlaps k"):
        apply_rope_qk(q, k, cos, sin, out=(k, torch.empty_like(k)))
    with pytest.raises(ropekit.RopeValueError, match=r"out\[1\] overlaps q"):
        apply_rope_qk(q, k, cos, sin, out=(torch.empty_like(q), q))
    shared = torch.empty(1, 2, 3, 8)
    with pytest.raises(ropekit.RopeValueError, match=r"out\[0\] and out\[1\] overlap"):
        apply_rope_qk(q, k, cos, sin, out=(shared, shared))
    # q and k themselves are refused: in place is inplace=True, one way only.
    before = (q.clone(), k.clone())
    with pytest.raises(ropekit.RopeValueError, match=r"out\[0\] is q itself.*inplace=True"):
        apply_rope_qk(q, k, cos, sin, out=(q, k))
    with pytest.raises(ropekit.RopeValueError, match=r"out\[1\] is k itself.*inplace=True"):
        apply_rope_qk(q, k, cos, sin, out=(torch.empty_like(q), k))
    with pytest.raises(ropekit.RopeValueError, match=r"out is x itself.*inplace=True"):
        apply_rope(q, cos, sin, out=q)
    with pytest.raises(ropekit.RopeValueError, match=r"out is x itself.*inplace=True"):
        apply_rope(q, cos, sin, out=q[:])  # another view of the same memory
    with pytest.raises(ropekit.RopeValueError, match="inplace=True and out= are not allowed"):
        apply_rope(q, cos, sin, out=torch.empty_like(q), inplace=True)
    with pytest.raises(ropekit.RopeValueError, match="inplace=True and out= are not allowed"):
        apply_rope_qk(q, k, cos, sin, out=(torch.empty_like(q), torch.empty_like(k)),
                      inplace=True)
    with pytest.raises(ropekit.RopeValueError, match="inplace=1 is not allowed"):
        apply_rope(q, cos, sin, inplace=1)  # type: ignore[arg-type]
    assert torch.equal(q, before[0]) and torch.equal(k, before[1])
    with pytest.raises(ropekit.RopeValueError, match="expected a pair"):
        apply_rope_qk(q, k, cos, sin, out=torch.empty_like(q))  # type: ignore[arg-type]
    with pytest.raises(ropekit.RopeValueError, match="rotated more than once"):
        apply_rope_qk(q, q, cos, sin, inplace=True)


# ----------------------------------------------------------------------------- dispatch


def test_backend_names_and_errors() -> None:
    x = torch.randn(2, 8)
    cos, sin = torch.ones(2, 4), torch.zeros(2, 4)
    for name in ("auto", Backend.TORCH, "reference", Backend("cpu")):
        assert torch.equal(apply_rope(x, cos, sin, backend=name), x)  # angle 0
    with pytest.raises(ropekit.RopeValueError, match="backend='fast' is not allowed"):
        apply_rope(x, cos, sin, backend="fast")
    with pytest.raises(ropekit.RopeValueError, match="interleaved=1 is not allowed"):
        apply_rope(x, cos, sin, interleaved=1)  # type: ignore[arg-type]
    meta = torch.empty(2, 8, device="meta")
    with pytest.raises(ropekit.RopeValueError, match="backend='cpu' needs CPU tensors"):
        apply_rope(meta, cos.to("meta"), sin.to("meta"), backend="cpu")
    assert resolve_backend("auto", torch.device("cpu")) is (
        Backend.CPU if cpu_backend.cpu_kernel_available() else Backend.TORCH
    )
    assert resolve_backend("auto", torch.device("meta")) is Backend.TORCH


def test_the_cpu_kernel_is_built_here() -> None:
    # CI machines have a C compiler; without one, "auto" silently uses backend="torch".
    assert cpu_backend.cpu_kernel_available(), cpu_backend.cpu_kernel_status()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("interleaved", [False, True])
def test_triton_backend_matches_rotation_matrices(dtype, interleaved) -> None:
    # On a CPU-only machine this runs Triton's interpreter on CPU tensors (fp32/fp16 are
    # faithful there); with a GPU, the compiled kernel on CUDA tensors.
    x, positions, freqs, cos, sin = case(b=1, h=2, s=3, d=9, dtype=dtype, seed=13)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    got = apply_rope(x.to(device), cos.to(device), sin.to(device), interleaved=interleaved, backend="triton")
    torch.testing.assert_close(got.cpu().double(), exact(x, positions, freqs, interleaved), **TOL[dtype])


# ----------------------------------------------------------------------------- the build


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_kernel_is_built_once_then_loaded_and_missing_compiler_falls_back(tmp_path) -> None:
    probe = """
        import torch, ropekit
        from ropekit.apply import cpu
        x = torch.randn(2, 3, 8)
        c, s = ropekit.cos_sin(ropekit.inv_freq(8), torch.arange(3))
        diff = ropekit.apply_rope(x, c, s) - ropekit.apply_rope(x, c, s, backend="reference")
        same = bool(diff.abs().max() < 1e-6)
        print(cpu.cpu_kernel_available(), same)
        print(cpu.cpu_kernel_status())
        try:
            ropekit.apply_rope(x, c, s, backend="cpu")
        except ropekit.RopeValueError as err:
            print("refused:", err)
    """
    cache = str(tmp_path / "cache")
    built = _run(probe, ROPEKIT_CACHE_DIR=cache)
    assert built.returncode == 0, built.stderr
    assert built.stdout.splitlines()[0] == "True True"
    assert len(list((tmp_path / "cache").glob("rope_cpu_*.so"))) == 1
    # A second process loads the cached build: it works without a compiler.
    loaded = _run(probe, ROPEKIT_CACHE_DIR=cache, CC="/nonexistent/cc")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines()[0] == "True True"
    # No cache and no compiler: auto falls back to the torch backend, "cpu" says why.
    bare = _run(probe, ROPEKIT_CACHE_DIR=str(tmp_path / "empty"), CC="/nonexistent/cc")
    assert bare.returncode == 0, bare.stderr
    lines = bare.stdout.splitlines()
    assert lines[0] == "False True"
    assert lines[1].startswith("unavailable:") and "/nonexistent/cc" in lines[1]
    assert lines[2].startswith("refused: backend='cpu' is not available here")
    # A cache that cannot be written (here: below a file): built in a private temp dir.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    private = _run(probe, ROPEKIT_CACHE_DIR=str(blocker / "cache"))
    assert private.returncode == 0, private.stderr
    assert private.stdout.splitlines()[0] == "True True"
    assert "ropekit-" in private.stdout.splitlines()[1]


@pytest.mark.slow
def test_compiled_backend_forward_and_backward() -> None:
    # Real Inductor compilations (seconds each): forward, then backward (sin negated).
    x, positions, freqs, cos, sin = case(b=2, h=3, s=5, d=12, rotary_dim=10, seed=14)
    leaf = x.clone().requires_grad_(True)
    got = apply_rope(leaf, cos, sin, backend="compiled")
    torch.testing.assert_close(
        got.double(), exact(x, positions, freqs, False), **TOL[torch.float32]
    )
    assert torch.equal(got[..., 10:], x[..., 10:])
    g = torch.randn(x.shape, generator=gen(15))
    got.backward(g)
    ref = x.clone().requires_grad_(True)
    apply_rope(ref, cos, sin, backend="reference").backward(g)
    torch.testing.assert_close(leaf.grad, ref.grad, **TOL[torch.float32])
    longer, _, _, cos2, sin2 = case(b=1, h=2, s=9, d=12, rotary_dim=10, seed=16)
    torch.testing.assert_close(  # a new length reuses the dynamic-shape graph
        apply_rope(longer, cos2, sin2, backend="compiled"),
        apply_rope(longer, cos2, sin2, backend="reference"),
        **TOL[torch.float32],
    )


@pytest.mark.slow
def test_compiled_backend_keeps_compiling_past_dynamos_default_limit(caplog) -> None:
    # 3 dtypes x 2 layouts x (one tensor, a q/k pair) are 12 graphs of one compiled
    # function, more than Dynamo's default limit of 8, past which it refuses to compile
    # (fullgraph=True: an error). Results: the reference formula, within one rounding.
    import torch._dynamo.utils as dynamo_utils

    dynamo_utils.counters.clear()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for interleaved in (False, True):
            q, _, _, cos, sin = case(b=1, h=2, s=3, d=8, dtype=dtype, seed=17)
            k, _, _, _, _ = case(b=1, h=1, s=3, d=8, dtype=dtype, seed=18)
            want = [apply_rope(t, cos, sin, interleaved=interleaved) for t in (q, k)]
            got = [
                (apply_rope(q, cos, sin, interleaved=interleaved, backend="compiled"),),
                apply_rope_qk(q, k, cos, sin, interleaved=interleaved, backend="compiled"),
                apply_rope_qk(
                    q, k, cos, sin, interleaved=interleaved, backend="compiled",
                    out=(torch.empty_like(q), torch.empty_like(k)),
                ),
            ]  # fmt: skip
            for results in got:
                for y, w in zip(results, want, strict=False):
                    torch.testing.assert_close(y, w, **TOL[dtype])
    assert "recompile_limit" not in caplog.text
    assert not dynamo_utils.counters["unimplemented"]
    assert torch._dynamo.config.recompile_limit == 8  # restored after each call


def test_compiled_backend_past_the_recompile_limit_warns_and_stays_correct(monkeypatch) -> None:
    """With Dynamo's limit exhausted, new patterns run the uncompiled formula: same values,
    a RuntimeWarning, no failure."""
    from ropekit.apply import compiled

    torch._dynamo.reset()
    compiled._warn_limit.cache_clear()
    monkeypatch.setattr(compiled, "_RECOMPILE_LIMIT", 1)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(8), torch.arange(3))
    with torch._dynamo.config.patch(recompile_limit=1):
        apply_rope(torch.randn(2, 3, 8), cos, sin, backend="compiled")  # the one allowed graph
        x = torch.randn(2, 3, 8, dtype=torch.float64)  # a new pattern: past the limit
        with pytest.warns(RuntimeWarning, match="recompile limit"):
            got = apply_rope(x, cos.double(), sin.double(), backend="compiled")
    assert torch.equal(got, apply_rope(x, cos.double(), sin.double(), backend="reference"))
    torch._dynamo.reset()
