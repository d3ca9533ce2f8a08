"""The Triton GPU kernel: one pass over q and k, cos/sin read and math done in float32.

Notation: ``b`` batch, ``h_q``/``h_k`` query/key heads, ``s`` sequence length, ``t``
packed tokens (varlen), ``d`` head dim, ``n`` rotated pairs (``2n <= d``), ``R`` rows of
a cos/sin table.

What the kernel computes, for every row ``x`` of ``d`` lanes (one head of one token)::

    y[u] = x[u] cos_i - x[v] sin_i        pair i = lanes (u, v) = (i, i + n)   half (GPT-NeoX/HF)
    y[v] = x[v] cos_i + x[u] sin_i                           or (2i, 2i + 1) interleaved (GPT-J/Meta)
    y[2n:] = x[2n:]                       copied bit for bit

with ``cos_i``/``sin_i`` taken from the table row of that token, converted to float32
(float64 for float64 ``x``); the products and sums are float32 and the result is rounded
once to ``x.dtype``. This is :func:`ropekit.apply.eager.rope_reference`, the formula in
torch ops, and :func:`rope_qk_reference` states the table/positions form in torch ops
beside the kernel; the tests hold both kernel entry points to float64 oracles.

The gradient of a rotation by ``+θ`` is the rotation by ``-θ`` (``R(θ)ᵀ = R(-θ)``), so the
backward pass is the same kernel with ``sin`` negated (the ``CONJ`` flag): no second
kernel, no saved activations, only the tables and positions.

Design
------
* One kernel, specialised by ``tl.constexpr`` flags: pair layout, forward/backward,
  how a token finds its table row (its index ``s``, a ``positions`` tensor, a per-batch
  ``offsets`` tensor, or its position inside its sequence from ``cu_seqlens``), and
  32- or 64-bit address arithmetic (64-bit only when some tensor spans ``>= 2**31``
  elements, because 64-bit integer math costs registers and instructions).
* Every tensor is read through its own strides (``[b, h, s, d]`` views of
  ``[b, s, h, d]`` projections, slices of a fused qkv, ``expand``-ed tables): nothing is
  made contiguous, so there are no hidden copies of activations.
* A program owns a ``[BLOCK_S tokens, BLOCK_H heads, d]`` tile of one tensor; q's and
  k's tiles are programs of the same launch (one launch per call; decode is
  launch-bound). A token's cos/sin row is loaded once per program and broadcast over
  the ``BLOCK_H`` heads. Tiles hold ``~2 * BLOCK_ELEMS`` elements (each of the two lane
  halves is one wide, coalesced load: for the usual ``[b, s, h, d]`` storage a tile of
  one token and all heads is one contiguous run); small launches (decode) shrink the
  tiles so that the grid still covers the GPU.
* The cu_seqlens path finds each token's sequence by a vectorised binary search over
  ``cu_seqlens`` (``ceil(log2(#seqs + 1))`` steps), so no ``max_seqlen`` host value is
  needed and nothing syncs with the host.
* Table rows outside ``[0, R)`` are never read: their cos/sin load as NaN, so the output
  row is NaN rather than garbage or a memory fault. :func:`triton_rope_qk` checks the
  rows beforehand (``validate=True``) without syncing the device.

Host path (what a call costs before the GPU sees it, often more than the kernel itself):
launch parameters (tiles, grid, strides, 64-bit or not) are a pure function of shapes,
strides and flags, memoised in an LRU table (:func:`_qk_launch`, :func:`_apply_launches`);
a call then only checks its arguments, allocates the outputs and launches. In eager mode
the kernel is launched directly (inside a small ``torch.autograd.Function`` when a
gradient is needed). Under ``torch.compile`` the same code runs as a
:func:`torch.library.triton_op` (with ``register_autograd``), so ``fullgraph=True``
traces into the kernel and differentiates it. Importing this module imports triton;
``import ropekit`` does not import this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ..errors import RopeValueError, check_int, check_tensor
from .eager import rope_reference
from .rotate import check_rope_args

__all__ = [
    "rope_qk_reference",
    "token_positions",
    "triton_apply_rope",
    "triton_apply_rope_qk",
    "triton_rope_qk",
    "triton_supports",
]

#: Elements of one lane half of a tile that a program aims for (a tile is twice this):
#: 2048 keeps 8 KB (bf16) to 16 KB (fp32) per program in flight in 4 warps, ~16
#: elements (two or four 16-byte vectors) per thread and half.
BLOCK_ELEMS = 2048
#: Smaller launches shrink tiles (down to MIN_BLOCK_ELEMS) until they have at least
#: MIN_PROGRAMS programs, about four per SM of an H100 (132 SMs).
MIN_PROGRAMS = 512
MIN_BLOCK_ELEMS = 512
_INT32_LIMIT = 2**31 - 1
_DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))


# ----------------------------------------------------------------------------- kernel


@triton.jit
def _rope_tile(
    x_ptr, y_ptr, cos_ptr, sin_ptr,
    b, s, s_ok, t_row, row_ok, h0, H,
    x_sb, x_sh, x_ss, x_sd, y_sb, y_sh, y_ss, y_sd, c_sh, c_sn,
    N: tl.constexpr, TAIL: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    INTERLEAVED: tl.constexpr, CONJ: tl.constexpr, COS_PER_HEAD: tl.constexpr,
    INT64: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    """Rotate the ``[BLOCK_S, BLOCK_H, d]`` tile of heads ``h0 + [0, BLOCK_H)`` of one tensor.

    ``t_row`` ``[BLOCK_S]``: element offset of each token's row in both tables.
    """
    cdt = tl.float64 if F64 else tl.float32
    h = h0 + tl.arange(0, BLOCK_H)
    if INT64:
        h = h.to(tl.int64)
    i = tl.arange(0, BLOCK_N)
    h_ok = h < H
    i_ok = i < N
    ok = (s_ok[:, None] & h_ok[None, :])[:, :, None] & i_ok[None, None, :]  # [S, H, N]
    x_row = x_ptr + b * x_sb + s[:, None] * x_ss + h[None, :] * x_sh  # [S, H]
    y_row = y_ptr + b * y_sb + s[:, None] * y_ss + h[None, :] * y_sh

    # Masked-out table rows read as NaN: an out-of-range position poisons its output row
    # instead of reading memory it does not own.
    if COS_PER_HEAD:
        c_mask = (row_ok[:, None] & h_ok[None, :])[:, :, None] & i_ok[None, None, :]
        c_off = (t_row[:, None] + h[None, :] * c_sh)[:, :, None] + i[None, None, :] * c_sn
    else:  # one row per token, broadcast over the heads: [S, 1, N]
        c_mask = row_ok[:, None, None] & i_ok[None, None, :]
        c_off = t_row[:, None, None] + i[None, None, :] * c_sn
    c = tl.load(cos_ptr + c_off, mask=c_mask, other=float("nan")).to(cdt)
    sn = tl.load(sin_ptr + c_off, mask=c_mask, other=float("nan")).to(cdt)
    if CONJ:  # backward: R(θ)ᵀ = R(-θ)
        sn = -sn

    if INTERLEAVED:
        # Load the 2n lanes as one contiguous run (wide vector loads), then split pairs
        # (2i, 2i+1) in registers.
        BLOCK_S: tl.constexpr = x_row.shape[0]
        lane = tl.arange(0, 2 * BLOCK_N)[None, None, :]
        m = (s_ok[:, None] & h_ok[None, :])[:, :, None] & (lane < 2 * N)
        xp = tl.load(x_row[:, :, None] + lane * x_sd, mask=m, other=0.0).to(cdt)
        a, bb = tl.split(tl.reshape(xp, [BLOCK_S, BLOCK_H, BLOCK_N, 2]))
        out = tl.reshape(tl.join(a * c - bb * sn, bb * c + a * sn), [BLOCK_S, BLOCK_H, 2 * BLOCK_N])
        tl.store(y_row[:, :, None] + lane * y_sd, out.to(y_ptr.dtype.element_ty), mask=m)
    else:
        lo = i[None, None, :]
        a = tl.load(x_row[:, :, None] + lo * x_sd, mask=ok, other=0.0).to(cdt)
        bb = tl.load(x_row[:, :, None] + (lo + N) * x_sd, mask=ok, other=0.0).to(cdt)
        tl.store(
            y_row[:, :, None] + lo * y_sd, (a * c - bb * sn).to(y_ptr.dtype.element_ty), mask=ok
        )
        tl.store(
            y_row[:, :, None] + (lo + N) * y_sd,
            (bb * c + a * sn).to(y_ptr.dtype.element_ty),
            mask=ok,
        )

    if TAIL > 0:  # lanes [2n, d): loaded and stored without conversion, i.e. bit for bit
        t = 2 * N + tl.arange(0, BLOCK_T)
        tm = (s_ok[:, None] & h_ok[None, :])[:, :, None] & (t < 2 * N + TAIL)[None, None, :]
        v = tl.load(x_row[:, :, None] + t[None, None, :] * x_sd, mask=tm)
        tl.store(y_row[:, :, None] + t[None, None, :] * y_sd, v, mask=tm)


@triton.jit(do_not_specialize=["offset", "S", "table_rows", "n_seq", "search_steps"])
def _rope_kernel(
    x1_ptr, y1_ptr, x2_ptr, y2_ptr, cos_ptr, sin_ptr, pos_ptr, offs_ptr, cu_ptr,
    offset, S, H1, H2, table_rows, n_seq, search_steps,
    x1_sb, x1_sh, x1_ss, x1_sd, y1_sb, y1_sh, y1_ss, y1_sd,
    x2_sb, x2_sh, x2_ss, x2_sd, y2_sb, y2_sh, y2_ss, y2_sd,
    c_sb, c_sh, c_ss, c_sn, p_sb, p_ss, o_s,
    N: tl.constexpr, TAIL: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    INTERLEAVED: tl.constexpr, CONJ: tl.constexpr, HAS_POS: tl.constexpr, HAS_OFFS: tl.constexpr,
    VARLEN: tl.constexpr, GATHER: tl.constexpr, COS_PER_HEAD: tl.constexpr,
    INT64: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    """RoPE on up to two tensors ``x1`` ``[B, H1, S, d]`` and ``x2`` ``[B, H2, S, d]``.

    Grid: 1-D, ``B * cdiv(S, BLOCK_S) * (cdiv(H1, BLOCK_H) + cdiv(H2, BLOCK_H))``
    programs; head blocks vary fastest so that the programs sharing a token block (and
    its table rows) run together; the first ``cdiv(H1, BLOCK_H)`` belong to ``x1``.

    Table row of token ``(b, s)``: ``r = base + offset (+ offs[b'])`` with ``base`` = ``s``,
    ``pos[b, s]`` (``HAS_POS``) or ``s - cu[j]`` for the sequence ``j`` holding packed token
    ``s`` (``VARLEN``, ``b' = j``). cos/sin element: ``ptr + b c_sb + h c_sh + r c_ss + i c_sn``
    (both tables have these strides).
    """
    pid = tl.program_id(0)
    n_hblk1 = tl.cdiv(H1, BLOCK_H)
    n_hblk = n_hblk1 + tl.cdiv(H2, BLOCK_H)
    hb = pid % n_hblk
    rest = pid // n_hblk
    n_sblk = tl.cdiv(S, BLOCK_S)
    sb = rest % n_sblk
    b = rest // n_sblk
    if INT64:
        b = b.to(tl.int64)
        sb = sb.to(tl.int64)
    s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < S

    if VARLEN:
        # Largest j with cu[j] <= s, keeping cu[lo] <= s < cu[hi] (cu[n_seq] = t > s).
        lo = tl.zeros([BLOCK_S], dtype=tl.int32)
        hi = lo + n_seq
        for _ in range(search_steps):
            mid = (lo + hi) // 2
            go = tl.load(cu_ptr + mid) <= s
            lo = tl.where(go, mid, lo)
            hi = tl.where(go, hi, mid)
        row = s - tl.load(cu_ptr + lo)
        if HAS_OFFS:
            row = row + tl.load(offs_ptr + lo * o_s, mask=s_ok, other=0)
    else:
        if HAS_POS:  # noqa: SIM108 (constexpr branches read more plainly in a kernel)
            row = tl.load(pos_ptr + b * p_sb + s * p_ss, mask=s_ok, other=0)
        else:
            row = s
        if HAS_OFFS:
            row = row + tl.load(offs_ptr + b * o_s)
    row = row + offset
    if INT64:
        row = row.to(tl.int64)
    if GATHER:  # noqa: SIM108
        row_ok = s_ok & (row >= 0) & (row < table_rows)
    else:
        row_ok = s_ok
    t_row = b * c_sb + row * c_ss

    if hb < n_hblk1:
        _rope_tile(
            x1_ptr, y1_ptr, cos_ptr, sin_ptr, b, s, s_ok, t_row, row_ok, hb * BLOCK_H, H1,
            x1_sb, x1_sh, x1_ss, x1_sd, y1_sb, y1_sh, y1_ss, y1_sd, c_sh, c_sn,
            N, TAIL, BLOCK_H, BLOCK_N, BLOCK_T, INTERLEAVED, CONJ, COS_PER_HEAD, INT64, F64,
        )  # fmt: skip
    else:
        _rope_tile(
            x2_ptr, y2_ptr, cos_ptr, sin_ptr, b, s, s_ok, t_row, row_ok,
            (hb - n_hblk1) * BLOCK_H, H2,
            x2_sb, x2_sh, x2_ss, x2_sd, y2_sb, y2_sh, y2_ss, y2_sd, c_sh, c_sn,
            N, TAIL, BLOCK_H, BLOCK_N, BLOCK_T, INTERLEAVED, CONJ, COS_PER_HEAD, INT64, F64,
        )  # fmt: skip


# ----------------------------------------------------------------------------- launch plans
#
# Everything here is a pure function of shapes, strides and flags (plain ints): memoised,
# it costs a dict lookup per call. ``_Meta`` = ``(shape, strides)`` of a tensor.

_Meta = tuple[tuple[int, ...], tuple[int, ...]]


class _Launch(NamedTuple):
    """One kernel launch: ``_rope_kernel[grid](9 tensors, offset, *args, **meta)``."""

    grid: tuple[int]
    args: tuple[int, ...]
    meta: dict[str, Any]


def _pow2(v: int) -> int:
    """Smallest power of two >= ``v`` (plain arithmetic: also fine on symbolic sizes)."""
    p = 1
    while p < v:
        p *= 2
    return p


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _extent(meta: _Meta | None) -> int:
    """One past the largest element offset (from ``data_ptr``) that a tensor addresses."""
    if meta is None:
        return 0
    shape, stride = meta
    if any(size == 0 for size in shape):
        return 0
    return 1 + sum((size - 1) * st for size, st in zip(shape, stride, strict=True))


def _needs_int64(*metas: _Meta | None) -> bool:
    """Whether 32-bit element offsets overflow for any of these tensors."""
    return max(_extent(m) for m in metas) > _INT32_LIMIT


def _tiles(
    B: int, S: int, H1: int, H2: int, n: int, block_elems: int, num_warps: int | None
) -> tuple[int, int, int, int, int]:
    """``(BLOCK_S, BLOCK_H, BLOCK_N, num_warps, programs)`` for a ``[B, H1 + H2, S]`` grid."""
    bn = _pow2(n)
    # The smaller head count sets BLOCK_H, so GQA's few key heads do not pad to h_q.
    heads = _pow2(min(H1, H2) if H2 else H1)
    bh = min(heads, max(1, block_elems // bn))
    bs = min(_pow2(S), max(1, block_elems // (bn * bh)))

    def programs() -> int:
        return B * _cdiv(S, bs) * (_cdiv(H1, bh) + _cdiv(H2, bh))

    while programs() < MIN_PROGRAMS and bs * bh * bn > MIN_BLOCK_ELEMS:
        if bs > 1:
            bs //= 2
        elif bh > 1:
            bh //= 2
        else:
            break
    if num_warps is None:
        # ~16 elements per thread and half: 2048 -> 4 warps, 512 -> 1, 4096+ -> 8.
        num_warps = min(8, max(1, bs * bh * bn // 512))
    return bs, bh, bn, num_warps, programs()


def _meta(
    n: int,
    tail: int,
    tiles: tuple[int, int, int, int, int],
    *,
    interleaved: bool,
    conj: bool,
    has_pos: bool,
    has_offs: bool,
    varlen: bool,
    gather: bool,
    cos_per_head: bool,
    int64: bool,
    f64: bool,
) -> dict[str, Any]:
    bs, bh, bn, num_warps, _ = tiles
    return dict(
        N=n, TAIL=tail, BLOCK_S=bs, BLOCK_H=bh, BLOCK_N=bn, BLOCK_T=_pow2(tail) if tail else 1,
        INTERLEAVED=interleaved, CONJ=conj, HAS_POS=has_pos, HAS_OFFS=has_offs, VARLEN=varlen,
        GATHER=gather, COS_PER_HEAD=cos_per_head, INT64=int64, F64=f64, num_warps=num_warps,
    )  # fmt: skip


@functools.lru_cache(maxsize=512)
def _qk_launch(
    q: _Meta,
    k: _Meta,
    yq_stride: tuple[int, ...],
    yk_stride: tuple[int, ...],
    table: _Meta,
    pos: _Meta | None,
    offs: _Meta | None,
    cu: _Meta | None,
    f64: bool,
    interleaved: bool,
    conj: bool,
    block_elems: int,
    num_warps: int | None,
) -> _Launch:
    """Launch of :func:`triton_rope_qk` on ``q`` ``[b, h_q, s, d]`` / ``[t, h_q, d]`` etc."""
    (q_shape, q_st), (k_shape, k_st), (t_shape, t_st) = q, k, table
    n, d = t_shape[1], q_shape[-1]
    if len(q_shape) == 4:  # [b, h, s, d]
        B, S = q_shape[0], q_shape[2]
        strides = [q_st, yq_stride, k_st, yk_stride]
        H1, H2 = q_shape[1], k_shape[1]
    else:  # packed [t, h, d]: one "batch" of t tokens
        B, S = 1, q_shape[0]
        strides = [(0, st[1], st[0], st[2]) for st in (q_st, yq_stride, k_st, yk_stride)]
        H1, H2 = q_shape[1], k_shape[1]
    p_sb = p_ss = 0
    if pos is not None:
        (p_shape, p_st) = pos
        p_ss = p_st[-1]
        if len(p_shape) == 2 and p_shape[0] > 1:  # [b, s]; [1, s] and [s] are shared
            p_sb = p_st[0]
    n_seq = 0 if cu is None else cu[0][0] - 1
    search_steps = 0  # ceil(log2(n_seq + 1)): halvings of [0, n_seq] down to one sequence
    while (1 << search_steps) <= n_seq:
        search_steps += 1
    tiles = _tiles(B, S, H1, H2, n, block_elems, num_warps)
    int64 = _needs_int64(q, (q_shape, yq_stride), k, (k_shape, yk_stride), table, pos, offs, cu)
    meta = _meta(
        n, d - 2 * n, tiles, interleaved=interleaved, conj=conj, has_pos=pos is not None,
        has_offs=offs is not None, varlen=cu is not None, gather=True, cos_per_head=False,
        int64=int64, f64=f64,
    )  # fmt: skip
    args = (
        S, H1, H2, t_shape[0], n_seq, search_steps,
        *strides[0], *strides[1], *strides[2], *strides[3],
        0, 0, t_st[0], t_st[1], p_sb, p_ss, 0 if offs is None else offs[1][0],
    )  # fmt: skip
    return _Launch((tiles[4] if B * S * max(H1, H2) else 0,), args, meta)


def _fold_dims(
    sizes: tuple[int, ...], strides: list[tuple[int, ...]]
) -> list[tuple[int, list[int]]]:
    """Drop size-1 dims and merge neighbours that are one flat dim in every tensor.

    Dims ``k`` (outer) and ``k + 1`` merge when ``stride[k] == stride[k+1] * size[k+1]``
    for all tensors; e.g. ``[b, h, s]`` of a contiguous ``x`` with an ``[s, n]`` table
    (table strides ``0, 0, n``) becomes ``[b*h, s]``.
    """
    dims: list[tuple[int, list[int]]] = []
    for j, size in enumerate(sizes):
        if size == 1:
            continue
        st = [t[j] for t in strides]
        if dims and all(p == q * size for p, q in zip(dims[-1][1], st, strict=True)):
            dims[-1] = (dims[-1][0] * size, st)
        else:
            dims.append((size, st))
    return dims


def _expanded_strides(
    c_shape: tuple[int, ...], c_stride: tuple[int, ...], ndim: int
) -> tuple[int, ...]:
    """Strides of a table ``expand``-ed to ``ndim`` dims (right-aligned; broadcast dims 0)."""
    lead = ndim - len(c_shape)
    out = []
    for j in range(ndim):
        cj = j - lead
        out.append(0 if cj < 0 or c_shape[cj] == 1 else c_stride[cj])
    return tuple(out)


_Plan = tuple[int, int, int, tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _plan(
    shape: tuple[int, ...], xst: tuple[int, ...], yst: tuple[int, ...], cst: tuple[int, ...]
) -> _Plan | None:
    """``(B, H, S, x_strides, y_strides, table_strides)`` of a ``[B, H, S, d]`` view covering
    ``x`` ``[*B, d]`` (table strides: ``expand``-ed to ``[*B, n]``), or None when no such
    view exists (more than three batch dims that do not merge)."""
    dims = _fold_dims(shape[:-1], [xst[:-1], yst[:-1], cst[:-1]])
    if len(dims) > 3:
        return None
    # The kernel's head slot is the dim it broadcasts one table row over; give it a dim
    # along which the table does not change, if there is one.
    one = (1, [0, 0, 0])
    flat = [j for j, (_, st) in enumerate(dims) if st[2] == 0]
    if flat:
        head = dims.pop(flat[-1])
    elif len(dims) == 3:
        head = dims.pop(1)
    else:
        head = one
    while len(dims) < 2:
        dims.insert(0, one)
    (B, sb), (H, sh), (S, ss) = dims[0], head, dims[1]
    x4, y4, c4 = ((sb[j], sh[j], ss[j], last) for j, last in enumerate((xst[-1], yst[-1], cst[-1])))
    return B, H, S, x4, y4, c4


@functools.lru_cache(maxsize=512)
def _apply_launches(
    xs: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...],
    table: _Meta,
    f64: bool,
    interleaved: bool,
    conj: bool,
    block_elems: int,
    num_warps: int | None,
) -> tuple[tuple[_Launch, int, int], ...] | None:
    """Launches ``(launch, i1, i2)`` (``i2 = -1``: one tensor) rotating ``xs[i]`` =
    ``(shape, x_strides, y_strides)`` by a table broadcast to each; None when some ``x``
    has no 3-D view (the caller then splits it)."""
    c_shape, c_st = table
    n = c_shape[-1]
    plans = []
    for shape, xst, yst in xs:
        p = _plan(shape, xst, yst, _expanded_strides(c_shape, c_st, len(shape)))
        if p is None:
            return None
        plans.append(p)
    # One launch covers both tensors when they share the grid's batch and sequence dims and
    # address the table alike (e.g. q [b, h_q, s, d] and k [b, h_k, s, d] with [s, n]).
    shared = len({(p[0], p[2], p[5]) for p in plans}) == 1
    groups = [(0, 1)] if len(plans) == 2 and shared else [(j, -1) for j in range(len(plans))]
    out = []
    for i1, i2 in groups:
        B, H1, S, x1, y1, c = plans[i1]
        H2, x2, y2 = (plans[i2][1], plans[i2][3], plans[i2][4]) if i2 >= 0 else (0, x1, y1)
        tiles = _tiles(B, S, H1, H2, n, block_elems, num_warps)
        metas = [(xs[i][0], xs[i][1]) for i in (i1, i2) if i >= 0]
        metas += [(xs[i][0], xs[i][2]) for i in (i1, i2) if i >= 0]
        meta = _meta(
            n, xs[i1][0][-1] - 2 * n, tiles, interleaved=interleaved, conj=conj,
            has_pos=False, has_offs=False, varlen=False, gather=False,
            cos_per_head=c[1] != 0, int64=_needs_int64(table, *metas), f64=f64,
        )  # fmt: skip
        args = (S, H1, H2, 0, 0, 0, *x1, *y1, *x2, *y2, *c, 0, 0, 0)
        out.append((_Launch((tiles[4] if B * S * max(H1, H2) else 0,), args, meta), i1, i2))
    return tuple(out)


def _memo(fn: Callable[..., Any], *key: Any) -> Any:
    """``fn(*key)`` through its LRU table; computed directly when ``key`` holds symbolic
    sizes (``torch.compile(dynamic=True)``), which cannot be hashed."""
    try:
        return fn(*key)
    except TypeError:
        return fn.__wrapped__(*key)


# ----------------------------------------------------------------------------- launching


def _launch(
    kernel: Any,
    launch: _Launch,
    x1: torch.Tensor,
    y1: torch.Tensor,
    x2: torch.Tensor,
    y2: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    offset: int = 0,
) -> None:
    """``kernel[grid](...)``; ``kernel`` is :func:`_rope_kernel` itself (eager) or
    ``wrap_triton(_rope_kernel)`` (inside the torch ops, for tracing)."""
    if launch.grid[0] == 0:
        return
    # x1 stands in for absent optional pointers; the kernel never dereferences them.
    kernel[launch.grid](
        x1, y1, x2, y2, cos, sin,
        x1 if positions is None else positions,
        x1 if offsets is None else offsets,
        x1 if cu_seqlens is None else cu_seqlens,
        offset, *launch.args, **launch.meta,
    )  # fmt: skip


def _same_strides(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # The kernel addresses both tables with one set of strides (fewer launch arguments);
    # tables laid out differently (rare, and small) are made contiguous.
    if cos.stride() != sin.stride():
        return cos.contiguous(), sin.contiguous()
    return cos, sin


def _apply_into(
    kernel: Any,
    xs: list[torch.Tensor],
    ys: list[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
    conj: bool,
    block_elems: int = BLOCK_ELEMS,
    num_warps: int | None = None,
) -> None:
    """``ys[i] = rope(xs[i])`` (``[*B, d]``, one or two tensors), tables broadcast to each."""
    cos, sin = _same_strides(cos, sin)
    key = tuple((x.shape, x.stride(), y.stride()) for x, y in zip(xs, ys, strict=True))
    plan = _memo(
        _apply_launches, key, (cos.shape, cos.stride()), xs[0].dtype == torch.float64,
        interleaved, conj, block_elems, num_warps,
    )  # fmt: skip
    if plan is not None:
        for launch, i1, i2 in plan:
            x2, y2 = (xs[i2], ys[i2]) if i2 >= 0 else (xs[i1], ys[i1])
            _launch(kernel, launch, xs[i1], ys[i1], x2, y2, cos, sin)
        return
    if len(xs) > 1:
        for x, y in zip(xs, ys, strict=True):
            _apply_into(kernel, [x], [y], cos, sin, interleaved, conj, block_elems, num_warps)
        return
    # Strides no 3-D view can express: one launch per leading index.
    (x,), (y,) = xs, ys
    target = (*x.shape[:-1], cos.shape[-1])
    ce, se = cos.expand(target), sin.expand(target)
    for j in range(x.shape[0]):
        _apply_into(kernel, [x[j]], [y[j]], ce[j], se[j], interleaved, conj, block_elems, num_warps)


def _apply_forward(
    kernel: Any,
    xs: list[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
    conj: bool,
) -> list[torch.Tensor]:
    ys = [torch.empty_like(x) for x in xs]
    _apply_into(kernel, xs, ys, cos, sin, interleaved, conj)
    return ys


def _qk_forward(
    kernel: Any,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    offset: int,
    interleaved: bool,
    conj: bool,
    block_elems: int = BLOCK_ELEMS,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    yq, yk = torch.empty_like(q), torch.empty_like(k)
    c_st = cos.stride()
    if sin.stride() != c_st:
        cos, sin = _same_strides(cos, sin)
        c_st = cos.stride()
    launch = _memo(
        _qk_launch,
        (q.shape, q.stride()),
        (k.shape, k.stride()),
        yq.stride(),
        yk.stride(),
        (cos.shape, c_st),
        None if positions is None else (positions.shape, positions.stride()),
        None if offsets is None else (offsets.shape, offsets.stride()),
        None if cu_seqlens is None else (cu_seqlens.shape, cu_seqlens.stride()),
        q.dtype == torch.float64,
        interleaved,
        conj,
        block_elems,
        num_warps,
    )
    _launch(kernel, launch, q, yq, k, yk, cos, sin, positions, offsets, cu_seqlens, offset)
    return yq, yk


# ----------------------------------------------------------------------------- torch ops
#
# What torch.compile sees: each op's body allocates its outputs and launches
# wrap_triton(_rope_kernel), which Inductor inlines. Eager calls skip the op dispatch
# (see _dispatch); the autograd formulas are the same in both.


@triton_op("ropekit::triton_rope", mutates_args=())
def _rope_op(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool, conj: bool
) -> torch.Tensor:
    return _apply_forward(wrap_triton(_rope_kernel), [x], cos, sin, interleaved, conj)[0]


def _rope_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    ctx.save_for_backward(inputs[1], inputs[2])
    ctx.interleaved, ctx.conj = inputs[-2:]


def _rope_backward(ctx, grad):  # type: ignore[no-untyped-def]
    cos, sin = ctx.saved_tensors
    return _rope_op(grad, cos, sin, ctx.interleaved, not ctx.conj), None, None, None, None


_rope_op.register_autograd(_rope_backward, setup_context=_rope_setup)


@triton_op("ropekit::triton_rope_pair", mutates_args=())
def _rope_pair_op(
    x1: torch.Tensor,
    x2: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
    conj: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    y1, y2 = _apply_forward(wrap_triton(_rope_kernel), [x1, x2], cos, sin, interleaved, conj)
    return y1, y2


def _rope_pair_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    ctx.save_for_backward(inputs[2], inputs[3])
    ctx.interleaved, ctx.conj = inputs[-2:]


def _rope_pair_backward(ctx, grad1, grad2):  # type: ignore[no-untyped-def]
    cos, sin = ctx.saved_tensors
    g1, g2 = _rope_pair_op(grad1, grad2, cos, sin, ctx.interleaved, not ctx.conj)
    return g1, g2, None, None, None, None


_rope_pair_op.register_autograd(_rope_pair_backward, setup_context=_rope_pair_setup)


@triton_op("ropekit::triton_rope_qk", mutates_args=())
def _rope_qk_op(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    offset: int,
    interleaved: bool,
    conj: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _qk_forward(
        wrap_triton(_rope_kernel), q, k, cos, sin, positions, offsets, cu_seqlens, offset,
        interleaved, conj,
    )  # fmt: skip


def _rope_qk_setup(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    _, _, cos, sin, positions, offsets, cu_seqlens, ctx.offset, ctx.interleaved, ctx.conj = inputs
    ctx.save_for_backward(cos, sin, positions, offsets, cu_seqlens)


def _rope_qk_backward(ctx, grad_q, grad_k):  # type: ignore[no-untyped-def]
    cos, sin, positions, offsets, cu_seqlens = ctx.saved_tensors
    gq, gk = _rope_qk_op(
        grad_q, grad_k, cos, sin, positions, offsets, cu_seqlens, ctx.offset, ctx.interleaved,
        not ctx.conj,
    )  # fmt: skip
    return gq, gk, None, None, None, None, None, None, None, None


_rope_qk_op.register_autograd(_rope_qk_backward, setup_context=_rope_qk_setup)


# ----------------------------------------------------------------------------- eager path
#
# A torch.library op costs tens of microseconds of dispatch per call (more than a decode
# step's kernel). Eager calls on plain tensors launch the kernel directly, inside this
# autograd.Function when a gradient is needed; its backward is again a rotation
# (by -θ), through the same dispatch, so double backward works.


class _Rotate(torch.autograd.Function):
    """``ys = R(±θ) xs`` for the forms above; ``form`` is "apply" or "qk"."""

    @staticmethod
    def forward(ctx, form: str, conj: bool, args: tuple, *xs: torch.Tensor) -> tuple:  # type: ignore[override]
        ctx.form, ctx.conj, ctx.args = form, conj, args
        return _eager(form, conj, args, xs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple:  # type: ignore[override]
        return None, None, None, *_dispatch(ctx.form, not ctx.conj, ctx.args, grads)


class _RotateFunc(_Rotate):
    """:class:`_Rotate` for torch.func transforms, which need ``setup_context`` (whose
    ``apply`` binds arguments by signature: tens of microseconds, so only here)."""

    @staticmethod
    def forward(form: str, conj: bool, args: tuple, *xs: torch.Tensor) -> tuple:  # type: ignore[override]
        return _eager(form, conj, args, xs)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
        ctx.form, ctx.conj, ctx.args = inputs[:3]


def _eager(form: str, conj: bool, args: tuple, xs: tuple[torch.Tensor, ...]) -> tuple:
    if form == "qk":
        return _qk_forward(_rope_kernel, *xs, *args, conj)
    cos, sin, interleaved = args
    return tuple(_apply_forward(_rope_kernel, list(xs), cos, sin, interleaved, conj))


def _dispatch(form: str, conj: bool, args: tuple, xs: tuple[torch.Tensor, ...]) -> tuple:
    """Rotate ``xs`` (one or two tensors): the torch op under tracing or for tensor
    subclasses, else a direct launch (through :class:`_Rotate` if a gradient is needed).

    ``args``: ``(cos, sin, interleaved)`` for "apply"; ``(cos, sin, positions, offsets,
    cu_seqlens, offset, interleaved)`` for "qk".
    """
    plain = needs_grad = False
    if not torch.compiler.is_compiling():
        # Plain tensors and no dispatch mode (make_fx, FakeTensorMode, ...) watching.
        plain = (
            type(xs[0]) is torch.Tensor
            and type(xs[-1]) is torch.Tensor
            and not torch._C._len_torch_dispatch_stack()
        )
        needs_grad = (xs[0].requires_grad or xs[-1].requires_grad) and torch.is_grad_enabled()
    if not plain:
        if form == "qk":
            return _rope_qk_op(*xs, *args, conj)
        if len(xs) == 2:
            return _rope_pair_op(*xs, *args, conj)
        return (_rope_op(*xs, *args, conj),)
    if torch._C._are_functorch_transforms_active():
        # torch.func wraps tensors (the type test passes) and tracks gradients its own
        # way, through an autograd.Function that unwraps them.
        return _RotateFunc.apply(form, conj, args, *xs)
    if needs_grad:
        return _Rotate.apply(form, conj, args, *xs)
    return _eager(form, conj, args, xs)


# ----------------------------------------------------------------------------- public API

#: Whether triton runs kernels in its interpreter (TRITON_INTERPRET=1 when triton was
#: first imported): then they take CPU tensors. A plain flag, so torch.compile reads it
#: as a constant instead of tracing the kernel object.
_INTERPRETED = type(_rope_kernel).__name__ == "InterpretedFunction"


def triton_supports(x: torch.Tensor) -> bool:
    """Whether the kernel can run on ``x``'s device: a GPU, or the CPU under
    ``TRITON_INTERPRET=1`` (set before triton was first imported)."""
    return x.is_cuda or (_INTERPRETED and x.device.type == "cpu")


def _check_kernel_input(name: str, x: torch.Tensor) -> None:
    if x.dtype not in _DTYPES:
        raise RopeValueError(
            f"{name}.dtype={x.dtype} is not allowed: expected one of float16, bfloat16, "
            "float32, float64"
        )
    if not triton_supports(x):
        raise RopeValueError(
            f"{name} is on {x.device}, which the Triton kernel cannot use: expected a CUDA "
            "tensor (or a CPU tensor with TRITON_INTERPRET=1 set before importing triton)"
        )


def _check_tables_no_grad(cos: torch.Tensor, sin: torch.Tensor) -> None:
    # The kernel has no gradient for the tables; returning none would silently drop it.
    if (cos.requires_grad or sin.requires_grad) and torch.is_grad_enabled():
        raise RopeValueError(
            "cos/sin require grad, which the Triton kernel does not compute: expected tables "
            "without requires_grad (use the torch backend to differentiate the tables)"
        )


def _check_flags(interleaved: object, validate: object = True) -> None:
    if type(interleaved) is not bool or type(validate) is not bool:
        raise RopeValueError(f"interleaved={interleaved!r}, validate={validate!r}: expected bools")


def triton_apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False
) -> torch.Tensor:
    """:func:`ropekit.apply_rope` in one Triton kernel: same arguments, same result.

    Args:
        x: ``[*B, d]`` float16/bfloat16/float32/float64 CUDA tensor, any strides.
        cos, sin: ``[*C, n]`` tables broadcastable to ``x[..., :n]`` (any float dtype;
            read and used in float32, or float64 for float64 ``x``).
        interleaved: pair lanes ``(2i, 2i+1)`` instead of ``(i, i+n)``.

    Returns:
        A new tensor like ``x`` (same strides when ``x`` is dense): lanes ``[0, 2n)``
        rotated, lanes ``[2n, d)`` copied bit for bit. Differentiable in ``x``.

    Example:
        >>> x = torch.randn(2, 8, 16, 64, device="cuda", dtype=torch.bfloat16)
        >>> cos, sin = ropekit.cos_sin(ropekit.inv_freq(64), torch.arange(16, device="cuda"))
        >>> y = triton_apply_rope(x, cos, sin)  # == ropekit.apply_rope(x, cos, sin)
    """
    check_rope_args(x, cos, sin)
    _check_flags(interleaved)
    _check_kernel_input("x", x)
    _check_tables_no_grad(cos, sin)
    return _dispatch("apply", False, (cos, sin, interleaved), (x,))[0]


def triton_apply_rope_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`triton_apply_rope` of ``q`` and of ``k`` by the same tables, in one launch.

    ``cos``/``sin`` must broadcast to both ``q[..., :n]`` and ``k[..., :n]`` (e.g. ``[s, n]``
    or ``[b, 1, s, n]`` for ``[b, h_q, s, d]``/``[b, h_k, s, d]``). When the two cannot share
    one grid (different batch/sequence extents after folding), it launches twice.
    """
    check_rope_args(q, cos, sin)
    check_rope_args(k, cos, sin)
    _check_flags(interleaved)
    _check_kernel_input("q", q)
    _check_kernel_input("k", k)
    if q.dtype != k.dtype or q.shape[-1] != k.shape[-1]:
        raise RopeValueError(
            f"q ({q.dtype}, d={q.shape[-1]}) and k ({k.dtype}, d={k.shape[-1]}): expected one "
            "dtype and one head dim"
        )
    _check_tables_no_grad(cos, sin)
    yq, yk = _dispatch("apply", False, (cos, sin, interleaved), (q, k))
    return yq, yk


def token_positions(
    size: int,
    positions: torch.Tensor | None = None,
    *,
    offset: int | torch.Tensor = 0,
    cu_seqlens: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The table row of every token, as :func:`triton_rope_qk` defines it (plain torch).

    ``size`` is ``s`` (``[b, h, s, d]`` inputs) or ``t`` (packed ``[t, h, d]``). Row of a
    token = base + ``offset`` (int, or tensor indexed by batch row / sequence), where base
    is ``positions[..]`` if given, else its index within its sequence (``cu_seqlens``), else
    its index ``s``. Returns int64 ``[s]``, ``[b, s]`` or ``[t]``.
    """
    if positions is not None:
        device = positions.device
    elif cu_seqlens is not None:
        device = cu_seqlens.device
    elif isinstance(offset, torch.Tensor):
        device = offset.device
    idx = torch.arange(size, device=device, dtype=torch.int64)
    if cu_seqlens is not None:
        cu = cu_seqlens.to(torch.int64)
        seq = torch.repeat_interleave(
            torch.arange(cu.shape[0] - 1, device=cu.device), cu.diff(), output_size=size
        )
        base = idx - cu[seq]
        if isinstance(offset, torch.Tensor):
            return base + offset.to(torch.int64)[seq]
        return base + offset
    base = idx if positions is None else positions.to(torch.int64)
    if isinstance(offset, torch.Tensor):  # [b]: one offset per batch row
        return base + offset.to(torch.int64)[:, None]
    return base + offset


def rope_qk_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None = None,
    *,
    offset: int | torch.Tensor = 0,
    cu_seqlens: torch.Tensor | None = None,
    interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch statement of :func:`triton_rope_qk`: gather table rows, then rotate.

    ``rows = token_positions(...)``; ``cos[rows]``, ``sin[rows]`` broadcast over heads;
    the formula in torch ops (:func:`ropekit.apply.eager.rope_reference`) on ``q`` and ``k``.
    """
    size = q.shape[0] if q.ndim == 3 else q.shape[2]
    rows = token_positions(size, positions, offset=offset, cu_seqlens=cu_seqlens, device=q.device)
    c, s = cos[rows], sin[rows]  # [s, n], [b, s, n] or [t, n]
    if q.ndim == 3:  # packed: [t, 1, n], shared by the heads
        c, s = c.unsqueeze(-2), s.unsqueeze(-2)
    elif rows.ndim == 2:  # per batch row: [b, 1, s, n]
        c, s = c.unsqueeze(-3), s.unsqueeze(-3)
    return (
        rope_reference(q, c, s, interleaved=interleaved),
        rope_reference(k, c, s, interleaved=interleaved),
    )


def _is_int_tensor(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _check_rows(
    size: int,
    positions: torch.Tensor | None,
    offset: int | torch.Tensor,
    cu: torch.Tensor | None,
    table_rows: int,
    device: torch.device,
) -> None:
    """A well-formed ``cu_seqlens``, then every token's row within ``[0, table_rows)``.

    On CPU (eager) this raises :class:`RopeValueError`. On a GPU, or inside
    ``torch.compile``, it queues device-side asserts: no host sync, but a failure is
    reported by the next synchronising call (and ends the CUDA context).
    """
    host = device.type == "cpu" and not torch.compiler.is_compiling()
    if cu is not None:
        if host:
            if int(cu[0]) != 0 or int(cu[-1]) != size or bool((cu.diff() < 0).any()):
                raise RopeValueError(
                    f"cu_seqlens={cu.tolist()} is not allowed: expected non-decreasing offsets "
                    f"from 0 to the number of packed tokens t={size}"
                )
        else:
            ok = (cu[0] == 0) & (cu[-1] == size) & (cu.diff() >= 0).all()
            torch._assert_async(ok, "ropekit: cu_seqlens must rise from 0 to the token count")
    rows = token_positions(size, positions, offset=offset, cu_seqlens=cu)
    if rows.numel() == 0:
        return
    lo, hi = torch.aminmax(rows)
    if host:
        if int(lo) < 0 or int(hi) >= table_rows:
            raise RopeValueError(
                f"token positions span [{int(lo)}, {int(hi)}] but cos/sin have {table_rows} "
                f"rows: expected positions (after offset) in [0, {table_rows})"
            )
    else:
        ok = (lo >= 0) & (hi < table_rows)
        torch._assert_async(ok, "ropekit: a token position is outside the cos/sin table")


def triton_rope_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None = None,
    *,
    offset: int | torch.Tensor = 0,
    cu_seqlens: torch.Tensor | None = None,
    interleaved: bool = False,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys in one launch, reading table rows by token position.

    Args:
        q, k: ``[b, h_q, s, d]`` and ``[b, h_k, s, d]`` (any strides; e.g. transposed
            ``[b, s, h, d]`` projections), or packed ``[t, h_q, d]``/``[t, h_k, d]``.
            Same dtype (float16/bfloat16/float32/float64) and device.
        cos, sin: ``[R, n]`` tables, row ``r`` for position ``r`` (e.g.
            ``ropekit.cos_sin(inv_freq, torch.arange(R))``), ``2n <= d``.
        positions: integer ``[s]`` or ``[b, s]`` (4-D inputs), ``[t]`` (packed); default
            ``arange(s)`` or, with ``cu_seqlens``, each token's index in its sequence.
        offset: int, or integer tensor ``[b]`` (4-D; one per batch row, e.g. KV-cache
            lengths) / ``[#seqs]`` (with ``cu_seqlens``) added to every position.
        cu_seqlens: packed inputs only; int32/int64 ``[#seqs + 1]`` sequence starts
            (``0 = cu[0] <= cu[1] <= ... = t``); positions restart at 0 in each sequence.
        interleaved: pair lanes ``(2i, 2i+1)`` instead of ``(i, i+n)``.
        validate: check that every row is inside the table (and ``cu_seqlens``) before
            launching: an exception on CPU, a device-side assert (no host sync) on GPU;
            this costs a few small kernel launches. With ``validate=False`` an
            out-of-range row gives a NaN output row; the default int-offset case is
            always checked on the host, for free.

    Returns:
        ``(q_rot, k_rot)``, new tensors shaped like ``q`` and ``k``, differentiable in
        ``q`` and ``k`` (the backward is the same kernel, rotating by ``-θ``).

    Example:
        >>> cos, sin = ropekit.cos_sin(ropekit.inv_freq(128), torch.arange(4096, device="cuda"))
        >>> q = torch.randn(1, 4096, 32, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        >>> k = torch.randn(1, 4096, 8, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        >>> q_rot, k_rot = triton_rope_qk(q, k, cos, sin)          # prefill
        >>> q1, k1 = triton_rope_qk(q[:, :, -1:], k[:, :, -1:], cos, sin, offset=4095)
    """
    check_tensor("q", q)
    check_tensor("k", k)
    check_tensor("cos", cos)
    check_tensor("sin", sin)
    _check_flags(interleaved, validate)
    _check_kernel_input("q", q)
    # Shapes fetched once: this runs on every call, often for a few-microsecond kernel.
    qs, ks, cs = q.shape, k.shape, cos.shape
    if q.dtype != k.dtype:
        raise RopeValueError(f"q.dtype={q.dtype}, k.dtype={k.dtype}: expected one dtype")
    ndim = len(qs)
    packed = ndim == 3
    if len(ks) != ndim or ndim not in (3, 4):
        raise RopeValueError(
            f"q.shape={tuple(qs)}, k.shape={tuple(ks)}: expected [b, h, s, d] "
            "for both, or packed [t, h, d] for both"
        )
    d = qs[-1]
    if qs[0] != ks[0] or d != ks[-1] or (not packed and qs[2] != ks[2]):
        raise RopeValueError(
            f"q.shape={tuple(qs)} and k.shape={tuple(ks)} do not match: expected "
            "equal batch, sequence (or token) and head dims"
        )
    if len(cs) != 2 or cs != sin.shape or cos.dtype != sin.dtype:
        raise RopeValueError(
            f"cos {tuple(cs)} {cos.dtype}, sin {tuple(sin.shape)} {sin.dtype}: expected "
            "two [R, n] tables of one floating dtype"
        )
    rows_in_table, n = cs
    if n == 0 or 2 * n > d or not cos.is_floating_point():
        raise RopeValueError(
            f"cos.shape={tuple(cs)} ({cos.dtype}) with head dim d={d} is not "
            "allowed: expected a floating table with n >= 1 pairs and 2n <= d"
        )
    _check_tables_no_grad(cos, sin)
    device = q.device
    if k.device != device or cos.device != device or sin.device != device:
        raise RopeValueError(
            f"q is on {device}, k on {k.device}, cos on {cos.device}, sin on {sin.device}: "
            "expected one device"
        )
    size = qs[0] if packed else qs[2]
    if positions is None and cu_seqlens is None and not isinstance(offset, torch.Tensor):
        # The hot path (prefill, decode with one offset): checked on the host, for free.
        check_int("offset", offset)
        if offset < 0 or offset + size > rows_in_table:
            raise RopeValueError(
                f"offset={offset} with {size} tokens needs table rows [{offset}, "
                f"{offset + size}) but cos/sin have {rows_in_table}: expected 0 <= offset and "
                f"offset + s <= {rows_in_table}"
            )
        args = (cos, sin, None, None, None, offset, interleaved)
        return _dispatch("qk", False, args, (q, k))  # type: ignore[return-value]

    b = 1 if packed else qs[0]
    for name, t in (("positions", positions), ("cu_seqlens", cu_seqlens), ("offset", offset)):
        if not isinstance(t, torch.Tensor):
            continue
        if not _is_int_tensor(t):
            raise RopeValueError(
                f"{name}.dtype={t.dtype} is not allowed: expected an integer dtype"
            )
        if t.device != device:
            raise RopeValueError(f"q is on {device}, {name} on {t.device}: expected one device")
    if cu_seqlens is not None:
        check_tensor("cu_seqlens", cu_seqlens)
        if not packed or positions is not None:
            raise RopeValueError(
                "cu_seqlens is not allowed here: expected packed [t, h, d] inputs and no "
                "positions (positions restart at 0 in every sequence)"
            )
        if cu_seqlens.ndim != 1 or cu_seqlens.shape[0] < 2:
            raise RopeValueError(
                f"cu_seqlens.shape={tuple(cu_seqlens.shape)} is not allowed: expected "
                "[#seqs + 1] with at least one sequence"
            )
        # The binary search reads cu_seqlens as a dense vector.
        cu_seqlens = cu_seqlens.contiguous()
    if positions is not None:
        check_tensor("positions", positions)
        allowed = [(size,)] if packed else [(size,), (b, size), (1, size)]
        if tuple(positions.shape) not in allowed:
            raise RopeValueError(
                f"positions.shape={tuple(positions.shape)} is not allowed: expected one of "
                f"{allowed}"
            )
    offsets = None
    if isinstance(offset, torch.Tensor):
        n_rows = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else b
        if tuple(offset.shape) != (n_rows,):
            raise RopeValueError(
                f"offset.shape={tuple(offset.shape)} is not allowed: expected [{n_rows}] (one "
                "per " + ("sequence" if cu_seqlens is not None else "batch row") + ")"
            )
        offsets, offset = offset, 0
    else:
        check_int("offset", offset)
    if validate:
        _check_rows(
            size, positions, offset if offsets is None else offsets, cu_seqlens, rows_in_table,
            device,
        )  # fmt: skip
    return _dispatch(
        "qk", False, (cos, sin, positions, offsets, cu_seqlens, offset, interleaved), (q, k)
    )  # type: ignore[return-value]
