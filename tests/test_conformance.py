"""One conformance suite for every backend in the registry.

Every backend × dtype × tensor layout × kind of positions × plain/``out=``/in place,
and autograd (the gradient of the *base* tensor when a view is rotated in place, against
the out-of-place gradient and the exact one), against independent float64 oracles:

* values: :func:`ropekit.spec.apply`, explicit block-diagonal rotation matrices in
  float64, at positions computed here by plain Python loops (not by ropekit.positions);
* gradients: the exact gradient of ``sum(w * R(θ) x)`` is ``R(θ)ᵀ w = R(-θ) w``, i.e. the
  same oracle at negated positions.

Shapes are small and odd (``d = 10`` with 4 rotated pairs and 2 pass-through lanes, GQA
head counts 3 and 1, an empty packed document) so that the Triton interpreter and the
compiled backend stay fast enough for CI.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # the Triton backend runs in Triton's CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ropekit
from ropekit import spec
from ropekit.apply.dispatch import REGISTRY, Backend, _loaded
from tests.conftest import TOL

B, S, D, N, R = 2, 5, 10, 4, 64  # batch, sequence, head dim, rotated pairs, table rows
DOCS = [3, 0, 4]  # packed document lengths (one empty)
T = sum(DOCS)
HQ, HK = 3, 1
FREQS = ropekit.inv_freq(2 * N, 10000.0)  # [n] float64

BACKENDS = [b.value for b in REGISTRY]
LAYOUTS = ["bhsd", "bshd", "thd"]
KINDS = {
    "bhsd": ["broadcast", "offset", "offset_b", "positions_s", "positions_bs"],
    "bshd": ["broadcast", "offset", "offset_b", "positions_s", "positions_bs"],
    "thd": ["broadcast", "offset", "positions_t", "cu_seqlens", "cu_seqlens_offsets"],
}
CASES = [(lay, kind) for lay in LAYOUTS for kind in KINDS[lay]]
# backend="compiled" compiles a graph per dtype, layout and pattern of size-1 dims (each
# ~0.5 s here): it runs every case out of place and one case per layout in the other
# modes, which covers its code paths (allocate, write into outs, in place) in CI time.
COMPILED_MODES = {(lay, KINDS[lay][2]) for lay in LAYOUTS}


def value_params() -> list:
    return [
        (backend, lay, kind, mode)
        for backend in BACKENDS
        for lay, kind in CASES
        for mode in ("plain", "out", "inplace")
        if backend != "compiled" or mode == "plain" or (lay, kind) in COMPILED_MODES
    ]


def grad_params() -> list:
    return [
        (backend, lay, kind, inplace)
        for backend in BACKENDS
        for lay, kind in CASES
        for inplace in (False, True)
        if backend != "compiled" or (lay, kind) in COMPILED_MODES
    ]


def dtypes_for(backend: str) -> list[torch.dtype]:
    if backend == "triton" and not torch.cuda.is_available():
        return [torch.float32, torch.float16]  # what the interpreter computes exactly
    if backend == "compiled":
        return [torch.float32, torch.bfloat16]  # each dtype is a compilation (see above)
    return [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def device_for(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def skip_unavailable(backend: str) -> None:
    """Every registered backend must run here (a missing one fails, it is never skipped)."""
    loaded = _loaded(Backend(backend))
    if isinstance(loaded, str):
        pytest.fail(f"backend {backend!r} must run in CI: {loaded}")
    if backend == "compiled":
        # A fresh Dynamo cache per test: each test meets new patterns, and without a reset
        # a long test session passes Dynamo's recompile limit, after which the backend
        # (by design) runs the uncompiled formula, which is not what this suite tests.
        torch._dynamo.reset()


# ----------------------------------------------------------------------------- the oracle


def expected_rows(layout: str, kind: str) -> list[list[int]]:
    """Position of every token, per canonical batch row, by plain Python."""
    if layout == "thd":
        if kind == "broadcast":
            return [[(7 * j) % R for j in range(T)]]
        if kind == "offset":
            return [[11 + j for j in range(T)]]
        if kind == "positions_t":
            return [[(5 * j + 3) % R for j in range(T)]]
        starts = [0, 20, 40] if kind == "cu_seqlens_offsets" else [0, 0, 0]
        return [[starts[doc] + j for doc, n in enumerate(DOCS) for j in range(n)]]
    if kind in ("broadcast", "positions_bs"):
        return [[(3 * j + 17 * bi) % R for j in range(S)] for bi in range(B)]
    if kind == "offset":
        return [[9 + j for j in range(S)] for _ in range(B)]
    if kind == "offset_b":
        return [[j + off for j in range(S)] for off in (4, 50)]
    return [[(11 * j) % R for j in range(S)] for _ in range(B)]  # positions_s


def position_args(layout: str, kind: str, device: str) -> dict:
    """Keyword arguments of the call (indexed kinds); {} for broadcast tables."""
    dev = dict(device=device)
    if kind == "broadcast":
        return {}
    if kind == "offset":
        return {"offset": expected_rows(layout, kind)[0][0]}
    if kind == "offset_b":
        return {"offset": torch.tensor([4, 50], **dev)}
    if kind == "positions_s":
        return {"positions": torch.tensor(expected_rows(layout, kind)[0], **dev)}
    if kind == "positions_bs":
        return {"positions": torch.tensor(expected_rows(layout, kind), **dev)}
    if kind == "positions_t":
        return {"positions": torch.tensor(expected_rows(layout, kind)[0], dtype=torch.int32, **dev)}
    cu = torch.tensor([0, 3, 3, 7], dtype=torch.int32, **dev)
    if kind == "cu_seqlens":
        return {"cu_seqlens": cu}
    return {"cu_seqlens": cu, "offset": torch.tensor([0, 20, 40], **dev)}


def shape(layout: str, h: int) -> tuple[int, ...]:
    return {"bhsd": (B, h, S, D), "bshd": (B, S, h, D), "thd": (T, h, D)}[layout]


def canonical(x: torch.Tensor, layout: str) -> torch.Tensor:
    """[b, h, s, d] view, written out here independently of ropekit.apply.checks."""
    if layout == "bhsd":
        return x
    if layout == "bshd":
        return x.permute(0, 2, 1, 3)
    return x.permute(1, 0, 2)[None]


def oracle(x: torch.Tensor, layout: str, kind: str, interleaved: bool, sign: int = 1) -> torch.Tensor:
    """float64 rotation by explicit matrices, in the caller's layout."""
    xc = canonical(x.to(torch.float64), layout)
    rows = expected_rows(layout, kind)
    out = torch.stack(
        [
            spec.apply(xc[bi], sign * torch.tensor(rows[bi]), FREQS, interleaved=interleaved)
            for bi in range(xc.shape[0])
        ]
    )
    if layout == "bhsd":
        return out
    if layout == "bshd":
        return out.permute(0, 2, 1, 3)
    return out[0].permute(1, 0, 2)


def tables(layout: str, kind: str, dtype: torch.dtype, device: str):
    """Exact tables: [R, n] for indexed kinds, else per-token tables in the caller's layout."""
    tdtype = torch.float64 if dtype == torch.float64 else torch.float32
    if kind != "broadcast":
        return ropekit.cos_sin(FREQS, torch.arange(R, device=device), dtype=tdtype)
    rows = torch.tensor(expected_rows(layout, kind), device=device)
    cos, sin = ropekit.cos_sin(FREQS, rows, dtype=tdtype)  # [b', s, n]
    if layout == "bhsd":
        return cos[:, None], sin[:, None]  # [b, 1, s, n]
    if layout == "bshd":
        return cos[:, :, None], sin[:, :, None]  # [b, s, 1, n]
    return cos[0][:, None], sin[0][:, None]  # [t, 1, n]


def make_inputs(layout: str, dtype: torch.dtype, device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(shape(layout, HQ), generator=g, dtype=torch.float64).to(dtype).to(device)
    k = torch.randn(shape(layout, HK), generator=g, dtype=torch.float64).to(dtype).to(device)
    return q, k


def check_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert got.dtype == dtype and got.shape == want.shape, what
    torch.testing.assert_close(got.double().cpu(), want, **TOL[dtype], msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(("backend", "layout", "kind", "mode"), value_params())
def test_values(backend: str, layout: str, kind: str, mode: str) -> None:
    skip_unavailable(backend)
    device = device_for(backend)
    for dtype in dtypes_for(backend):
        for interleaved in (False, True):
            q, k = make_inputs(layout, dtype, device, seed=hash((layout, kind)) % 1000)
            q0, k0 = q.clone(), k.clone()
            cos, sin = tables(layout, kind, dtype, device)
            args = dict(
                layout=layout, interleaved=interleaved, backend=backend,
                **position_args(layout, kind, device),
            )  # fmt: skip
            what = f"{backend} {dtype} {layout} {kind} {mode} interleaved={interleaved}"
            if mode == "plain":
                yq, yk = ropekit.apply_rope_qk(q, k, cos, sin, **args)
                (y1,) = (ropekit.apply_rope(q, cos, sin, **args),)
                check_close(y1, oracle(q0, layout, kind, interleaved), dtype, what + " (q alone)")
                assert torch.equal(q, q0) and torch.equal(k, k0), "inputs must not change"
            elif mode == "out":
                oq, ok = torch.empty_like(q), torch.empty_like(k)
                yq, yk = ropekit.apply_rope_qk(q, k, cos, sin, out=(oq, ok), **args)
                assert yq is oq and yk is ok
                assert torch.equal(q, q0) and torch.equal(k, k0), "inputs must not change"
            else:
                yq, yk = ropekit.apply_rope_qk(q, k, cos, sin, **args, inplace=True)
                assert yq is q and yk is k
            check_close(yq, oracle(q0, layout, kind, interleaved), dtype, what + " q")
            check_close(yk, oracle(k0, layout, kind, interleaved), dtype, what + " k")
            # lanes past 2n are copied bit for bit
            assert torch.equal(yq[..., 2 * N :], q0[..., 2 * N :]), what
            # inverse undoes the rotation
            back = ropekit.apply_rope(yq, cos, sin, inverse=True, **args)
            check_close(back, oracle(yq, layout, kind, interleaved, sign=-1), dtype, what + " inverse")


# ----------------------------------------------------------------------------- autograd


def fused_views(layout: str, base: torch.Tensor):
    """q and k as views of one fused buffer, in the caller's layout; base [.., HQ + HK + 1, D]."""
    if layout == "bhsd":  # base [b, s, heads, d] -> [b, h, s, d] views (HF's transpose)
        return base[:, :, :HQ].transpose(1, 2), base[:, :, HQ : HQ + HK].transpose(1, 2)
    if layout == "bshd":
        return base[:, :, :HQ], base[:, :, HQ : HQ + HK]
    return base[:, :HQ], base[:, HQ : HQ + HK]  # thd: base [t, heads, d]


@pytest.mark.parametrize(("backend", "layout", "kind", "inplace"), grad_params())
def test_gradients_of_the_base(backend: str, layout: str, kind: str, inplace: bool) -> None:
    """Rotate q and k, views of one buffer, and differentiate a weighted sum of the buffer.

    The base's gradient is R(θ)ᵀ w in the rotated heads and w itself in the untouched head.
    """
    skip_unavailable(backend)
    device = device_for(backend)
    dtype = torch.float32
    full = (B, S, HQ + HK + 1, D) if layout != "thd" else (T, HQ + HK + 1, D)
    g = torch.Generator().manual_seed(1)
    leaf = torch.randn(full, generator=g, dtype=torch.float64).to(dtype).to(device)
    leaf.requires_grad_(True)
    w = torch.randn(full, generator=g, dtype=torch.float64).to(dtype).to(device)
    cos, sin = tables(layout, kind, dtype, device)
    args = dict(layout=layout, backend=backend, **position_args(layout, kind, device))
    buf = leaf * 1  # a non-leaf buffer, as a projection's output is
    q, k = fused_views(layout, buf)
    if inplace:
        ropekit.apply_rope_qk(q, k, cos, sin, **args, inplace=True)
        (buf * w).sum().backward()
    else:
        yq, yk = ropekit.apply_rope_qk(q, k, cos, sin, **args)
        wq, wk = fused_views(layout, w)
        rest = fused_views_rest(layout, buf) * fused_views_rest(layout, w)
        ((yq * wq).sum() + (yk * wk).sum() + rest.sum()).backward()
    grad = leaf.grad.double().cpu()
    wq, wk = (t.double().cpu() for t in fused_views(layout, w))
    gq, gk = fused_views(layout, grad)
    what = f"{backend} {layout} {kind} inplace={inplace}"
    check_close(gq.to(dtype), oracle(wq, layout, kind, False, sign=-1), dtype, what + " dq")
    check_close(gk.to(dtype), oracle(wk, layout, kind, False, sign=-1), dtype, what + " dk")
    rest = fused_views_rest(layout, grad)
    assert torch.equal(rest, fused_views_rest(layout, w.double().cpu())), what + ": pass-through head"


def fused_views_rest(layout: str, base: torch.Tensor) -> torch.Tensor:
    """The head of the fused buffer that is not rotated (v, say)."""
    return base[..., HQ + HK :, :]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "compiled"])
def test_inplace_view_of_single_tensor_gradient(backend: str) -> None:
    """The issue's case: ``apply_rope(out[:, :, 0], cos[:, None], sin[:, None], inplace=True)`` on a
    packed ``[b, s, 2, h, d]`` buffer; the other half must get the identity gradient."""
    skip_unavailable(backend)
    device = device_for(backend)
    leaf = torch.randn(B, S, 2, HQ, D, device=device, requires_grad=True)
    rows = torch.tensor(expected_rows("bshd", "positions_s")[0], device=device)
    cos, sin = ropekit.cos_sin(FREQS, rows)  # [s, n]
    buf = leaf * 1
    ropekit.apply_rope(buf[:, :, 0], cos[:, None], sin[:, None], layout="bshd", backend=backend, inplace=True)
    w = torch.randn_like(buf)
    (buf * w).sum().backward()
    torch.testing.assert_close(leaf.grad[:, :, 1], w[:, :, 1], rtol=0, atol=0)
    want = oracle(w[:, :, 0].double().cpu(), "bshd", "positions_s", False, sign=-1)
    check_close(leaf.grad[:, :, 0], want, torch.float32, backend)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "compiled"])
def test_double_backward(backend: str) -> None:
    """The backward is again a rotation, so it differentiates: d/dw of <R^T w, v> = R v.

    (backend="compiled" runs the formula under torch's own autograd: torch's concern.)
    """
    skip_unavailable(backend)
    device = device_for(backend)
    x = torch.randn(B, HQ, S, D, device=device, requires_grad=True)
    cos, sin = tables("bhsd", "offset", torch.float32, device)
    y = ropekit.apply_rope(x, cos, sin, offset=9, backend=backend)
    w = torch.randn_like(y, requires_grad=True)
    (gx,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
    v = torch.randn_like(gx)
    (gw,) = torch.autograd.grad((gx * v).sum(), w)
    check_close(gw, oracle(v.detach().cpu(), "bhsd", "offset", False), torch.float32, backend)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "compiled"])
def test_torch_func_grad(backend: str) -> None:
    """torch.func transforms see the same gradient rule (the Function has setup_context)."""
    skip_unavailable(backend)
    device = device_for(backend)
    x = torch.randn(B, HQ, S, D, device=device)
    w = torch.randn_like(x)
    cos, sin = tables("bhsd", "offset", torch.float32, device)
    grad = torch.func.grad(
        lambda x: (ropekit.apply_rope(x, cos, sin, offset=9, backend=backend) * w).sum()
    )(x)
    check_close(grad, oracle(w.cpu(), "bhsd", "offset", False, sign=-1), torch.float32, backend)
