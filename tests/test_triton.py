"""The Triton kernel (ropekit.apply.triton_kernel) against float64 oracles.

Runs everywhere: on a CUDA GPU it runs compiled kernels in float32/float16/bfloat16; on
a CPU-only machine it runs the same kernel through Triton's interpreter
(``TRITON_INTERPRET=1``, set below before triton is first imported) in float32/float16
(bf16 arithmetic is not faithful in the interpreter). ``torch.compile`` and the
> 2**31-element test need a GPU (the interpreter cannot be traced by torch.compile).

Oracles never call the kernel's own helpers: expected table rows are computed with
Python loops, and rotations with :func:`ropekit.apply_rope` in float64 (plain torch) or
with the paper's rotation matrices (:mod:`ropekit.reference`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

CUDA = torch.cuda.is_available()
if not CUDA:  # must precede the first import of the kernel module (triton reads it then)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ropekit  # noqa: E402
from ropekit import reference  # noqa: E402
from ropekit.apply import triton_kernel as tk  # noqa: E402
from ropekit.errors import RopeValueError  # noqa: E402
from tests.conftest import TOL  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
LAYOUTS = [False, True]  # interleaved
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.fixture(autouse=True, scope="module")
def _kernel_usable():
    if not tk.triton_supports(torch.empty(0, device=DEVICE)):
        pytest.fail(
            "the Triton kernel was imported without TRITON_INTERPRET=1 on a machine without a "
            "GPU (another module imported ropekit.apply.triton_kernel first): set "
            "TRITON_INTERPRET=1 in the environment or in tests/conftest.py"
        )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float32).to(DEVICE, dtype)


def tables(rows: int, n: int, seed: int = 1, dtype=torch.float32):
    """Random cos/sin in [-1, 1], independent: a wrong lane or sign cannot cancel out."""
    g = gen(seed)
    c = torch.rand(rows, n, generator=g, dtype=torch.float64) * 2 - 1
    s = torch.rand(rows, n, generator=g, dtype=torch.float64) * 2 - 1
    return c.to(DEVICE, dtype), s.to(DEVICE, dtype)


def rope64(x, cos, sin, interleaved):
    """Exact rotation of the given (rounded) inputs: the formula in float64 torch ops.

    Written out here rather than calling ropekit.apply_rope, which may itself dispatch to
    the Triton kernel on a GPU.
    """
    x, c, s = x.double(), cos.double(), sin.double()
    n = c.shape[-1]
    a, b = (
        (x[..., 0 : 2 * n : 2], x[..., 1 : 2 * n : 2])
        if interleaved
        else (x[..., :n], x[..., n : 2 * n])
    )
    ya, yb = a * c - b * s, b * c + a * s
    rot = torch.stack((ya, yb), dim=-1).flatten(-2) if interleaved else torch.cat((ya, yb), -1)
    return torch.cat((rot, x[..., 2 * n :]), dim=-1)


def assert_close(actual: torch.Tensor, expected64: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.double(), expected64, **TOL[dtype])


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


# ------------------------------------------------------------------ triton_apply_rope


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", LAYOUTS)
@pytest.mark.parametrize("d,n", [(8, 4), (7, 3), (12, 4), (2, 1), (130, 64)])
def test_apply_matches_float64(dtype, interleaved, d, n) -> None:
    """Full, odd (last lane passes through), partial rotary and a non-power-of-2 head."""
    x = rand(2, 3, 5, d, dtype=dtype)
    if 2 * n < d:  # tail lanes must be copied bit for bit, special values included
        x[..., 2 * n] = float("nan")
        x[..., -1] = -0.0
    cos, sin = tables(5, n)
    before = x.clone()
    y = tk.triton_apply_rope(x, cos, sin, interleaved=interleaved)
    assert torch.equal(bits(x), bits(before)), "input modified"
    assert y.shape == x.shape
    assert_close(y[..., : 2 * n], rope64(x, cos, sin, interleaved)[..., : 2 * n], dtype)
    assert torch.equal(bits(y[..., 2 * n :]), bits(x[..., 2 * n :]))


@pytest.mark.parametrize("interleaved", LAYOUTS)
@pytest.mark.parametrize(
    "cos_shape",
    [(5, 4), (2, 1, 5, 4), (2, 3, 5, 4), (4,), (1, 4), (3, 1, 4), (2, 3, 1, 4)],
    ids=["s_n", "b1sn", "bhsn_per_head", "n", "1n", "h1n", "bh1n"],
)
def test_apply_broadcast_tables(interleaved, cos_shape) -> None:
    x = rand(2, 3, 5, 8)
    g = gen(4)
    cos = (torch.rand(cos_shape, generator=g, dtype=torch.float64) * 2 - 1).float().to(DEVICE)
    sin = (torch.rand(cos_shape, generator=g, dtype=torch.float64) * 2 - 1).float().to(DEVICE)
    y = tk.triton_apply_rope(x, cos, sin, interleaved=interleaved)
    assert_close(y, rope64(x, cos, sin, interleaved), torch.float32)


def _views():
    """Non-contiguous inputs the kernel must read through their strides."""
    base = rand(2, 5, 3, 8)
    fused = rand(2, 3, 5, 3 * 8)  # a fused qkv projection; take q's lanes
    wide = rand(2, 3, 5, 8, 2)  # lane stride 2
    return {
        "transposed_bshd": base.transpose(1, 2),
        "qkv_slice": fused[..., 8:16],
        "lane_stride_2": wide[..., 0],
        "expanded_heads": rand(2, 1, 5, 8).expand(2, 3, 5, 8),
        "reversed_dims": rand(8, 5, 3, 2).permute(3, 2, 1, 0),
        "5d_unmergeable": rand(2, 5, 3, 2, 8).permute(0, 3, 2, 1, 4)[:, :, :, ::2],
    }


@pytest.mark.parametrize("name", list(_views()))
@pytest.mark.parametrize("interleaved", LAYOUTS)
@pytest.mark.parametrize("per_head", [False, True])
def test_apply_strided_inputs(name, interleaved, per_head) -> None:
    """Shared ``[s, n]`` tables, or contiguous ``[*B, n]`` ones whose strides differ from x's
    (the kernel then reads a table row per head)."""
    x = _views()[name]
    cos, sin = tables(x.shape[:-1].numel() if per_head else x.shape[-2], 4)
    if per_head:
        cos, sin = cos.view(*x.shape[:-1], 4), sin.view(*x.shape[:-1], 4)
    y = tk.triton_apply_rope(x, cos, sin, interleaved=interleaved)
    assert_close(y, rope64(x, cos, sin, interleaved), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", LAYOUTS)
@pytest.mark.parametrize(
    "k_layout,cos_shape,launches",
    [("bshd", (5, 4), 1), ("bshd", (2, 1, 5, 4), 1), ("bhsd", (5, 4), 2)],
    ids=["shared_table", "per_batch_table", "mixed_strides"],
)
def test_apply_qk_pair(monkeypatch, dtype, interleaved, k_layout, cos_shape, launches) -> None:
    """q and k (GQA) by the same tables: one launch when both fit one grid, else two."""
    q = rand(2, 5, 4, 9, dtype=dtype).transpose(1, 2)
    k = rand(2, 5, 2, 9, dtype=dtype, seed=1).transpose(1, 2)
    if k_layout == "bhsd":
        k = k.contiguous()
    g = gen(2)
    cos = (torch.rand(cos_shape, generator=g) * 2 - 1).to(DEVICE)
    sin = (torch.rand(cos_shape, generator=g) * 2 - 1).to(DEVICE)
    calls = []
    real = tk._launch
    monkeypatch.setattr(tk, "_launch", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    yq, yk = tk.triton_apply_rope_qk(q, k, cos, sin, interleaved=interleaved)
    assert len(calls) == launches
    assert_close(yq, rope64(q, cos, sin, interleaved), dtype)
    assert_close(yk, rope64(k, cos, sin, interleaved), dtype)
    qg, kg = q.detach().requires_grad_(), k.detach().requires_grad_()
    yq, yk = tk.triton_apply_rope_qk(qg, kg, cos, sin, interleaved=interleaved)
    (yq.float().sum() + 2 * yk.float().sum()).backward()
    ones = torch.ones(q.shape, dtype=torch.float64, device=DEVICE)
    assert_close(qg.grad, rope64(ones, cos, -sin, interleaved), dtype)
    assert_close(kg.grad, rope64(2 * ones[:, :2], cos, -sin, interleaved), dtype)


def test_apply_matches_rotation_matrices() -> None:
    """Tie the kernel to the specification: RoFormer's matrices from frequencies."""
    freqs = ropekit.inv_freq(16, 10000.0)
    positions = torch.tensor([0, 1, 7, 100, 4095])
    x = rand(2, 3, 5, 16)
    cos, sin = ropekit.cos_sin(freqs, positions.to(DEVICE), dtype=torch.float32)
    for interleaved in LAYOUTS:
        y = tk.triton_apply_rope(x, cos, sin, interleaved=interleaved)
        want = reference.apply(x.cpu(), positions, freqs, interleaved=interleaved)
        # float32 tables are within ~6e-8 of exact; rotation in float32.
        torch.testing.assert_close(y.cpu().double(), want, rtol=1e-5, atol=1e-5)


def test_apply_float64_and_gradcheck() -> None:
    x = rand(1, 2, 3, 5, dtype=torch.float64).requires_grad_()
    cos, sin = tables(3, 2, dtype=torch.float64)
    y = tk.triton_apply_rope(x, cos, sin)
    assert_close(y.detach(), rope64(x.detach(), cos, sin, False), torch.float64)
    for interleaved in LAYOUTS:
        fn = lambda t, i=interleaved: tk.triton_apply_rope(t, cos, sin, interleaved=i)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
        # the backward is again a differentiable rotation
        assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", LAYOUTS)
def test_apply_backward_is_inverse_rotation(dtype, interleaved) -> None:
    """dL/dx against autograd through the float64 torch path; incoming grads of any strides."""
    x = rand(2, 3, 5, 7, dtype=dtype).requires_grad_()
    cos, sin = tables(5, 3)
    g = rand(2, 5, 3, 7, dtype=dtype, seed=9).transpose(1, 2)
    tk.triton_apply_rope(x, cos, sin, interleaved=interleaved).backward(g)
    x64 = x.detach().double().requires_grad_()
    rope64(x64, cos, sin, interleaved).backward(g.double())
    assert_close(x.grad, x64.grad, dtype)
    # .sum() hands the kernel a zero-stride gradient
    x.grad = None
    tk.triton_apply_rope(x, cos, sin, interleaved=interleaved).sum().backward()
    x64.grad = None
    rope64(x64, cos, sin, interleaved).sum().backward()
    assert_close(x.grad, x64.grad, dtype)


def test_apply_empty_and_errors() -> None:
    cos, sin = tables(5, 4)
    empty = tk.triton_apply_rope(rand(2, 0, 5, 8), cos, sin)
    assert empty.shape == (2, 0, 5, 8)
    with pytest.raises(RopeValueError, match="dtype"):
        tk.triton_apply_rope(rand(5, 8).to(torch.int32), cos, sin)
    with pytest.raises(RopeValueError, match="broadcast"):
        tk.triton_apply_rope(rand(2, 3, 6, 8), cos, sin)
    with pytest.raises(RopeValueError, match="require grad"):
        tk.triton_apply_rope(rand(5, 8), cos.requires_grad_(), sin)


# ------------------------------------------------------------------ triton_rope_qk


def rows_oracle(b, s, positions=None, offset=0, cu=None):
    """Table row of every token, by loops: ``[b, s]``, or ``[t]`` for packed inputs."""
    if cu is not None:
        out = []
        for j in range(len(cu) - 1):
            extra = offset[j] if isinstance(offset, list) else offset
            out += [p + extra for p in range(cu[j + 1] - cu[j])]
        return torch.tensor(out)
    out = []
    for i in range(b):
        if positions is None:
            base = list(range(s))
        elif isinstance(positions[0], list):  # [b, s] or [1, s]
            base = positions[i if len(positions) > 1 else 0]
        else:  # [s]
            base = positions
        extra = offset[i] if isinstance(offset, list) else offset
        out.append([p + extra for p in base])
    return torch.tensor(out)


def qk_oracle(q, k, cos, sin, rows, interleaved):
    c, s = cos.double()[rows.to(cos.device)], sin.double()[rows.to(cos.device)]
    if q.ndim == 4:  # rows [b, s] -> [b, 1, s, n]
        c, s = c[:, None], s[:, None]
    else:  # rows [t] -> [t, 1, n]
        c, s = c[:, None], s[:, None]
    return rope64(q, c, s, interleaved), rope64(k, c, s, interleaved)


QK_CASES = {
    "default": dict(),
    "offset_int": dict(offset=7),
    "offset_tensor": dict(offset=[3, 11]),
    "positions_s": dict(positions=[4, 0, 9, 9, 1]),
    "positions_bs": dict(positions=[[0, 1, 2, 3, 4], [19, 2, 5, 0, 8]]),
    "positions_1s": dict(positions=[[6, 5, 4, 3, 2]]),
    "positions_and_offsets": dict(positions=[[0, 1, 2, 3, 4], [9, 2, 5, 0, 8]], offset=[1, 2]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", LAYOUTS)
@pytest.mark.parametrize("case", list(QK_CASES))
def test_qk_positions(dtype, interleaved, case) -> None:
    """GQA (h_q=4, h_k=2), transposed [b, s, h, d] views, every way of giving positions."""
    kw = QK_CASES[case]
    b, s, d, n = 2, 5, 10, 4  # partial rotary: lanes 8, 9 pass through
    q = rand(b, s, 4, d, dtype=dtype).transpose(1, 2)
    k = rand(b, s, 2, d, dtype=dtype, seed=3).transpose(1, 2)
    cos, sin = tables(24, n)
    pos_list, off = kw.get("positions"), kw.get("offset", 0)
    rows = rows_oracle(b, s, pos_list, off)
    args = {}
    if pos_list is not None:
        args["positions"] = torch.tensor(pos_list, device=DEVICE)
    if isinstance(off, list):
        args["offset"] = torch.tensor(off, device=DEVICE, dtype=torch.int32)
    elif off:
        args["offset"] = off
    before = q.clone(), k.clone()
    yq, yk = tk.triton_rope_qk(q, k, cos, sin, interleaved=interleaved, **args)
    assert torch.equal(q, before[0]) and torch.equal(k, before[1])
    eq, ek = qk_oracle(q, k, cos, sin, rows, interleaved)
    assert_close(yq, eq, dtype)
    assert_close(yk, ek, dtype)
    assert torch.equal(bits(yq[..., 2 * n :]), bits(q[..., 2 * n :]))
    # the plain-torch statement of the same op agrees
    rq, rk = tk.rope_qk_reference(q, k, cos, sin, interleaved=interleaved, **args)
    assert_close(rq, eq, dtype)
    assert_close(rk, ek, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", LAYOUTS)
@pytest.mark.parametrize("offsets", [None, [5, 0, 2, 1]])
def test_qk_varlen(dtype, interleaved, offsets) -> None:
    """Packed [t, h, d] with cu_seqlens (an empty sequence included): positions restart."""
    cu = [0, 3, 3, 8, 11]
    t, d = cu[-1], 7  # odd head dim
    q = rand(t, 4, d, dtype=dtype)
    k = rand(t, 1, d, dtype=dtype, seed=2)
    cos, sin = tables(16, 3)
    rows = rows_oracle(1, t, None, offsets or 0, cu)
    args = {"cu_seqlens": torch.tensor(cu, device=DEVICE, dtype=torch.int32)}
    if offsets is not None:
        args["offset"] = torch.tensor(offsets, device=DEVICE)
    yq, yk = tk.triton_rope_qk(q, k, cos, sin, interleaved=interleaved, **args)
    eq, ek = qk_oracle(q, k, cos, sin, rows, interleaved)
    assert_close(yq, eq, dtype)
    assert_close(yk, ek, dtype)


def test_qk_varlen_many_sequences() -> None:
    """Binary search over 37 sequences of random lengths (zero allowed)."""
    lengths = torch.randint(0, 6, (37,), generator=gen(5)).tolist()
    cu = [0]
    for length in lengths:
        cu.append(cu[-1] + length)
    q, k = rand(cu[-1], 2, 8), rand(cu[-1], 2, 8, seed=1)
    cos, sin = tables(8, 4)
    cu_t = torch.tensor(cu, device=DEVICE)
    yq, yk = tk.triton_rope_qk(q, k, cos, sin, cu_seqlens=cu_t)
    eq, ek = qk_oracle(q, k, cos, sin, rows_oracle(1, cu[-1], None, 0, cu), False)
    assert_close(yq, eq, torch.float32)
    assert_close(yk, ek, torch.float32)


def test_qk_packed_with_positions_and_table_dtypes() -> None:
    """Packed inputs with explicit positions; bf16/fp16 tables are upcast, not a problem."""
    q, k = rand(6, 2, 8), rand(6, 3, 8, seed=1)
    positions = [5, 1, 0, 2, 2, 7]
    for table_dtype in (torch.float16, torch.bfloat16, torch.float64):
        cos, sin = tables(8, 4, dtype=table_dtype)
        yq, yk = tk.triton_rope_qk(q, k, cos, sin, torch.tensor(positions, device=DEVICE))
        eq, ek = qk_oracle(q, k, cos, sin, torch.tensor(positions), False)
        assert_close(yq, eq, torch.float32)
        assert_close(yk, ek, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_qk_backward(dtype) -> None:
    """Gradients of q and k: rotation by -θ at the same positions (GQA, per-batch offsets)."""
    q = rand(2, 5, 4, 8, dtype=dtype).transpose(1, 2).requires_grad_()
    k = rand(2, 2, 5, 8, dtype=dtype, seed=1).requires_grad_()
    cos, sin = tables(16, 4)
    off = torch.tensor([2, 9], device=DEVICE)
    yq, yk = tk.triton_rope_qk(q, k, cos, sin, offset=off, interleaved=True)
    gq, gk = rand(*yq.shape, dtype=dtype, seed=7), rand(*yk.shape, dtype=dtype, seed=8)
    torch.autograd.backward((yq, yk), (gq, gk))
    rows = rows_oracle(2, 5, None, [2, 9])
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    eq, ek = qk_oracle(q64, k64, cos, sin, rows, True)
    torch.autograd.backward((eq, ek), (gq.double(), gk.double()))
    assert_close(q.grad, q64.grad, dtype)
    assert_close(k.grad, k64.grad, dtype)


def test_qk_gradcheck_float64_varlen() -> None:
    q = rand(5, 2, 4, dtype=torch.float64).requires_grad_()
    k = rand(5, 1, 4, dtype=torch.float64, seed=1).requires_grad_()
    cos, sin = tables(8, 2, dtype=torch.float64)
    cu = torch.tensor([0, 2, 5], device=DEVICE)
    assert torch.autograd.gradcheck(
        lambda a, b: tk.triton_rope_qk(
            a, b, cos, sin, cu_seqlens=cu, offset=torch.tensor([1, 3], device=DEVICE)
        ),
        (q, k),
        fast_mode=True,
    )


def test_torch_op_path_matches_direct_launch() -> None:
    """Eager calls on plain tensors launch the kernel directly; under a dispatch mode (as
    in make_fx or FakeTensor tracing) they go through the registered torch ops, as
    torch.compile does. Both give identical outputs and gradients."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    q0, k0 = rand(2, 5, 4, 8).transpose(1, 2), rand(2, 2, 5, 8, seed=1)
    cos, sin = tables(8, 3)

    def run():
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        yq, yk = tk.triton_rope_qk(q, k, cos, sin, offset=torch.tensor([1, 3], device=DEVICE))
        pq, pk = tk.triton_apply_rope_qk(q, k, cos[:5], sin[:5], interleaved=True)
        y = tk.triton_apply_rope(q, cos[:5], sin[:5])
        outs = (yq, yk, pq, pk, y)
        grads = torch.autograd.grad(outs, (q, k), [torch.ones_like(o) for o in outs])
        return [o.detach() for o in outs] + list(grads)

    direct = run()
    mode = Record()
    with mode:
        via_ops = run()
    for name in ("triton_rope_qk", "triton_rope_pair", "triton_rope."):
        assert any(f"ropekit.{name}" in op for op in mode.ops), (name, sorted(mode.ops))
    for a, b in zip(direct, via_ops, strict=True):  # same kernel; sums of grads may reorder
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_torch_func_grad() -> None:
    """torch.func.grad (functorch-wrapped tensors) differentiates through the kernel:
    the gradient of sum(y * w) is R(-θ) w, as autograd computes it."""
    q = rand(1, 2, 3, 8, dtype=torch.float64)
    k = rand(1, 1, 3, 8, dtype=torch.float64, seed=1)
    w = rand(1, 2, 3, 8, dtype=torch.float64, seed=2)
    cos, sin = tables(4, 3, dtype=torch.float64)

    def loss(t):
        yq, _ = tk.triton_rope_qk(t, k, cos, sin, offset=1)
        return (tk.triton_apply_rope(yq, cos[:3], sin[:3]) * w).sum()

    got = torch.func.grad(loss)(q)
    rows = rows_oracle(1, 3, None, 1)
    c, s = cos[rows][:, None], sin[rows][:, None]
    want = rope64(rope64(w, cos[:3], -sin[:3], False), c, -s, False)
    assert_close(got, want, torch.float64)


def test_qk_rows_outside_table() -> None:
    q, k = rand(1, 2, 4, 8), rand(1, 1, 4, 8, seed=1)
    cos, sin = tables(6, 4)
    with pytest.raises(RopeValueError, match="offset=3"):
        tk.triton_rope_qk(q, k, cos, sin, offset=3)  # rows [3, 7) of 6: checked on the host
    bad = torch.tensor([0, 6, 2, -1], device=DEVICE)
    if DEVICE == "cpu":
        with pytest.raises(RopeValueError, match=r"span \[-1, 6\]"):
            tk.triton_rope_qk(q, k, cos, sin, bad)
        with pytest.raises(RopeValueError, match="cu_seqlens"):
            tk.triton_rope_qk(q[0].transpose(0, 1), k[0].transpose(0, 1), cos, sin,
                              cu_seqlens=torch.tensor([0, 3, 2]))  # fmt: skip
    # without validation nothing outside the table is read: those rows come out NaN
    yq, yk = tk.triton_rope_qk(q, k, cos, sin, bad, validate=False)
    good = torch.tensor([True, False, True, False])
    assert torch.isnan(yq[:, :, ~good, :8]).all() and torch.isnan(yk[:, :, ~good, :8]).all()
    eq, _ = qk_oracle(q, k, cos, sin, torch.tensor([[0, 0, 2, 0]]), False)
    assert_close(yq[:, :, good], eq[:, :, good], torch.float32)


def test_qk_argument_errors() -> None:
    q, k = rand(2, 4, 5, 8), rand(2, 2, 5, 8)
    cos, sin = tables(8, 4)
    cases = [
        (dict(k=k.half()), "dtype"),
        (dict(k=rand(2, 2, 4, 8)), "do not match"),
        (dict(q=rand(4, 5, 8)), "expected"),
        (dict(cos=cos[:, :1].expand(8, 5)), "2n <= d|n >= 1"),
        (dict(cos=cos[None]), "table"),
        (dict(positions=torch.arange(5.0)), "integer"),
        (dict(positions=torch.arange(4)), "positions.shape"),
        (dict(offset=torch.tensor([1, 2, 3])), "offset.shape"),
        (dict(offset=1.5), "offset"),
        (dict(cu_seqlens=torch.tensor([0, 5])), "cu_seqlens"),
    ]
    for kw, match in cases:
        args = dict(q=q, k=k, cos=cos, sin=sin)
        args.update(
            {key: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for key, v in kw.items()}
        )
        if args["cos"].shape != sin.shape:
            args["sin"] = args["cos"]
        with pytest.raises(RopeValueError, match=match):
            tk.triton_rope_qk(**args)


def test_int64_path(monkeypatch) -> None:
    """The 64-bit address variant computes the same thing (forced on small inputs)."""
    assert tk._needs_int64(((2**31,), (1,))) and not tk._needs_int64(((2**20,), (1,)))
    assert tk._needs_int64(((2, 2**30), (1, 2**30)))  # strides reach past 2**31
    assert not tk._needs_int64(((2**33,), (0,)), None)  # expanded: one element
    # Launch plans are memoised by shape and strides: recompute them with the patch.
    monkeypatch.setattr(tk, "_needs_int64", lambda *metas: True)
    tk._qk_launch.cache_clear()
    try:
        q, k = rand(3, 2, 7), rand(3, 1, 7, seed=1)
        cos, sin = tables(4, 3)
        cu = torch.tensor([0, 1, 3], device=DEVICE)
        yq, yk = tk.triton_rope_qk(q, k, cos, sin, cu_seqlens=cu, interleaved=True)
        assert tk._qk_launch(
            (q.shape, q.stride()), (k.shape, k.stride()), q.stride(), k.stride(),
            (cos.shape, cos.stride()), None, None, (cu.shape, cu.stride()), False, True, False,
            tk.BLOCK_ELEMS, None,
        ).meta["INT64"]  # fmt: skip
    finally:
        tk._qk_launch.cache_clear()
    eq, ek = qk_oracle(q, k, cos, sin, rows_oracle(1, 3, None, 0, [0, 1, 3]), True)
    assert_close(yq, eq, torch.float32)
    assert_close(yk, ek, torch.float32)


@pytest.mark.parametrize("interleaved", LAYOUTS)
@pytest.mark.parametrize("block_elems", [8, 32, 4096])
def test_tiles_of_every_size(monkeypatch, interleaved, block_elems) -> None:
    """Tiles of one head and token, of 4 of q's 5 and k's 3 heads (ragged head blocks),
    and of 16 tokens (ragged token blocks: 21 = 16 + 5): the same result."""
    q = rand(1, 21, 5, 12).transpose(1, 2)
    k = rand(1, 21, 3, 12, seed=1).transpose(1, 2)
    cos, sin = tables(24, 5)  # partial rotary: lanes 10, 11 pass through
    launches = []
    real = tk._launch
    monkeypatch.setattr(
        tk,
        "_launch",
        lambda kernel, launch, *a: launches.append(launch) or real(kernel, launch, *a),
    )
    yq, yk = tk._qk_forward(
        tk._rope_kernel, q, k, cos, sin, None, None, None, 2, interleaved, False,
        block_elems=block_elems,
    )  # fmt: skip
    (launch,) = launches
    want = {8: (1, 1), 32: (1, 4), 4096: (16, 4)}[block_elems]
    assert (launch.meta["BLOCK_S"], launch.meta["BLOCK_H"]) == want
    eq, ek = qk_oracle(q, k, cos, sin, rows_oracle(1, 21, None, 2), interleaved)
    assert_close(yq, eq, torch.float32)
    assert_close(yk, ek, torch.float32)


def test_tile_choice() -> None:
    """Big launches get ~2 * BLOCK_ELEMS-element tiles; decode-sized ones shrink tiles so
    the grid has enough programs; GQA's smaller head count sets BLOCK_H."""
    bs, bh, bn, warps, programs = tk._tiles(1, 4096, 32, 8, 64, tk.BLOCK_ELEMS, None)
    assert (bn, bh) == (64, 8) and bs * bh * bn == tk.BLOCK_ELEMS and warps == 4
    assert programs == (4096 // bs) * (32 // 8 + 1)
    bs, bh, bn, warps, programs = tk._tiles(32, 1, 32, 32, 64, tk.BLOCK_ELEMS, None)
    assert bs == 1 and bh * bn == tk.MIN_BLOCK_ELEMS and programs == 32 * 2 * (32 // bh)
    assert warps == 1
    assert tk._tiles(1, 1, 1, 0, 3, tk.BLOCK_ELEMS, 2)[1:4] == (1, 4, 2)


@st.composite
def strided_case(draw):
    """x of random shape and a random permutation of its batch dims; a random table shape."""
    b, h, s = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    d = draw(st.integers(2, 19))
    n = draw(st.integers(1, d // 2))
    order = draw(st.permutations([0, 1, 2]))
    cos_shape = draw(st.sampled_from([(s, n), (b, 1, s, n), (1, h, 1, n), (b, h, s, n), (n,)]))
    return (b, h, s, d), n, order, cos_shape, draw(st.booleans()), draw(st.integers(0, 2**16))


@settings(max_examples=25, deadline=None)
@given(strided_case())
def test_apply_random_shapes_and_strides(case) -> None:
    shape, _, order, cos_shape, interleaved, seed = case
    stored = [shape[j] for j in order] + [shape[3]]
    inverse = [order.index(j) for j in range(3)] + [3]
    x = rand(*stored, seed=seed).permute(*inverse)
    g = gen(seed + 1)
    cos = (torch.rand(cos_shape, generator=g) * 2 - 1).to(DEVICE)
    sin = (torch.rand(cos_shape, generator=g) * 2 - 1).to(DEVICE)
    y = tk.triton_apply_rope(x, cos, sin, interleaved=interleaved)
    assert_close(y, rope64(x, cos, sin, interleaved), torch.float32)


def test_import_ropekit_does_not_import_triton() -> None:
    code = "import sys, ropekit; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


_SM90_COMPILE = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ropekit.apply import triton_kernel as tk

fn = tk._rope_kernel
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


@pytest.mark.skipif(CUDA, reason="on a GPU every other test compiles the kernel for real")
def test_kernel_compiles_for_sm90_with_wide_accesses() -> None:
    """The interpreter executes Python and accepts code the compiler rejects: compile the
    kernel for an H100 (sm_90, no GPU needed) in a process without TRITON_INTERPRET, and
    check that contiguous d=128 rows move in 16-byte vectors."""
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silence triton 3.9's notice; 1 is the default
    proc = subprocess.run(
        [sys.executable, "-c", _SM90_COMPILE], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


_TRACE = r"""
import torch
from torch._dynamo.backends.common import aot_autograd

from ropekit.apply import triton_kernel as tk

tk._INTERPRETED = True  # let CPU tensors stand in for CUDA ones: nothing launches


joints = []


def stop(joint, inputs, **kw):  # AOTAutograd's partitioner gets the forward + backward graph
    joints.append(joint.code)
    raise RuntimeError("traced")


q0, k0 = torch.randn(2, 6, 4, 64), torch.randn(2, 6, 2, 64)
cos, sin = torch.rand(32, 32), torch.rand(32, 32)
off = torch.tensor([3, 0])


def f(q, k):
    q, k = (q * 2).transpose(1, 2), k.transpose(1, 2)
    yq, yk = tk.triton_rope_qk(q, k, cos, sin, offset=off)
    yp, _ = tk.triton_apply_rope_qk(q, k, cos[:6], sin[:6], interleaved=True)
    y1 = tk.triton_apply_rope(q[:, :1], cos[:6], sin[:6])
    return yq.sum(1) + yk.sum(1) + y1.sum(1) + yp.sum(1)

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
    """torch.compile(fullgraph=True) sees through all three entry points to the kernel:
    Dynamo traces the Python wrappers without a break and AOTAutograd's joint graph holds
    the kernel (triton_kernel_wrapper_functional) for the forward and backward passes.

    Compiled Triton code cannot run on the CPU, so this stops at the joint graph; the GPU
    test runs it. Runs in a process without TRITON_INTERPRET, where the kernel is a
    regular JITFunction as on a GPU.
    """
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _TRACE], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rope_qk, apply_rope_qk (one launch for q and k), apply_rope; in the backward the
    # pair's gradients have different strides (one is materialised zeros): two launches.
    assert "kernels 7" in proc.stdout and "forward 3 backward 4" in proc.stdout, proc.stdout


# ------------------------------------------------------------------ GPU only


@cuda_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_compile_fullgraph_forward_backward(dtype) -> None:
    """torch.compile traces into the kernel (triton_op), forward and backward, no breaks.

    The strides the kernel sees come from inside the graph (a transpose of a product);
    compiled and eager runs must agree up to the reordering of the sums around the kernel.
    """
    q0 = rand(2, 6, 4, 64, dtype=dtype)
    k0 = rand(2, 6, 2, 64, dtype=dtype, seed=1)
    cos, sin = tables(32, 32)
    off = torch.tensor([3, 0], device=DEVICE)

    def f(q, k):
        q, k = (q * 2).transpose(1, 2), k.transpose(1, 2)
        yq, yk = tk.triton_rope_qk(q, k, cos, sin, offset=off)
        yp, _ = tk.triton_apply_rope_qk(q, k, cos[:6], sin[:6], interleaved=True)
        return (
            yq.sum(1)
            + 0.5 * yk.sum(1)
            + tk.triton_apply_rope(q[:, :1], cos[:6], sin[:6]).sum(1)
            + yp.sum(1)
        )

    compiled = torch.compile(f, fullgraph=True)
    outs = []
    for fn in (f, compiled):
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        out = fn(q, k)
        out.float().square().sum().backward()
        outs.append((out, q.grad, k.grad))
    tol = {key: 4 * v for key, v in TOL[dtype].items()}
    for eager, comp in zip(outs[0], outs[1], strict=True):
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
    assert tk._needs_int64((q.shape, q.stride()))
    cos, sin = tables(4096, 64)
    positions = torch.arange(s, device="cuda", dtype=torch.int32) % 4096
    yq, yk = tk.triton_rope_qk(q, k, cos, sin, positions, validate=False)
    for sl in (slice(0, 64), slice(s // 2, s // 2 + 64), slice(s - 64, s)):
        rows = (torch.arange(s)[sl] % 4096)[None]
        eq, ek = qk_oracle(q[:, :, sl], k[:, :, sl], cos, sin, rows, False)
        assert_close(yq[:, :, sl], eq, torch.float16)
        assert_close(yk[:, :, sl], ek, torch.float16)
    del q, k, yq, yk
    torch.cuda.empty_cache()
