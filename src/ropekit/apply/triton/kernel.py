"""The Triton kernel: one pass over one or two tensors, table rows read by position.

Notation: ``b`` batch, ``h`` heads (``h_q``/``h_k``), ``s`` sequence length, ``t`` packed
tokens, ``d`` head dim, ``n`` rotated pairs (``2n <= d``), ``R`` rows of a cos/sin table.
In the kernel's own names: ``B``/``H1``/``H2``/``S`` for ``b``/``h``/``s`` of the launch,
``N`` for ``n``, ``TAIL = d - 2n``.

What it computes, for every row ``x`` of ``d`` lanes (one head of one token)::

    y[u] = x[u] cos_i - x[v] sin_i      pair i = lanes (u, v) = (i, i + n)    half (GPT-NeoX, HF)
    y[v] = x[v] cos_i + x[u] sin_i                       or (2i, 2i + 1)    interleaved (GPT-J)
    y[2n:] = x[2n:]                     copied bit for bit (skipped in place: y is x)

``cos_i``/``sin_i`` come from the token's table row and are converted to float32 (float64
for float64 ``x``); the products and sums are done in that dtype and the result is
rounded once to ``y``'s dtype: the formula of :mod:`ropekit.apply.formula`. ``CONJ``
negates ``sin`` (rotation by ``-θ``: ``inverse=True``, and the gradient).

In place (``y_ptr == x_ptr``) is safe: a program loads both lanes of every pair of its
rows before it stores either, and no two programs own the same row.

Launch planning (tiles, grid, strides, 32/64-bit addressing) is in :mod:`.plan`, the
launcher and the torch op in :mod:`.ops`.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["rope_kernel"]


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

    ``s`` ``[BLOCK_S]``: the tile's token indices (``s_ok``: inside ``S``); ``t_row``
    ``[BLOCK_S]``: element offset of each token's row in both tables (``row_ok``: inside
    the table).
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
    if CONJ:  # R(θ)ᵀ = R(-θ)
        sn = -sn

    if INTERLEAVED:
        # Load the 2n lanes as one contiguous run (wide vector loads), then split the
        # pairs (2i, 2i+1) in registers.
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
def rope_kernel(
    x1_ptr, y1_ptr, x2_ptr, y2_ptr, cos_ptr, sin_ptr, pos_ptr, offs_ptr, cu_ptr,
    offset, S, H1, H2, table_rows, n_seq, search_steps,
    x1_sb, x1_sh, x1_ss, x1_sd, y1_sb, y1_sh, y1_ss, y1_sd,
    x2_sb, x2_sh, x2_ss, x2_sd, y2_sb, y2_sh, y2_ss, y2_sd,
    c_sb, c_sh, c_ss, c_sn, p_sb, p_ss, o_s, u_s,
    N: tl.constexpr, TAIL: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    INTERLEAVED: tl.constexpr, CONJ: tl.constexpr, HAS_POS: tl.constexpr, HAS_OFFS: tl.constexpr,
    VARLEN: tl.constexpr, GATHER: tl.constexpr, COS_PER_HEAD: tl.constexpr,
    INT64: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    """RoPE of up to two tensors ``x1`` ``[B, H1, S, d]`` and ``x2`` ``[B, H2, S, d]`` into
    ``y1``/``y2`` (which may be ``x1``/``x2`` themselves), every tensor read through its
    own strides (``*_sb, *_sh, *_ss, *_sd``).

    Grid: 1-D, ``B * cdiv(S, BLOCK_S) * (cdiv(H1, BLOCK_H) + cdiv(H2, BLOCK_H))``
    programs; head blocks vary fastest, so that the programs sharing a token block (and
    its table rows) run together; the first ``cdiv(H1, BLOCK_H)`` belong to ``x1``.

    Table row ``r`` of token ``(b, s)``: ``base + offset (+ offs[b'])``, with ``base`` =
    ``s``; ``pos[b, s]`` (``HAS_POS``); or, packed (``VARLEN``, ``B == 1``, ``S == t``),
    ``s - cu[j]`` for the document ``j`` that holds token ``s``, found by a binary search
    over ``cu_seqlens`` (``search_steps`` halvings; no host value needed), with
    ``b' = j``. cos/sin element: ``ptr + b c_sb + h c_sh + r c_ss + i c_sn`` (both tables
    have these strides; a broadcast table has ``r = s``). ``GATHER``: rows outside
    ``[0, table_rows)`` are not read (NaN output instead).
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
        # Largest j with cu[j] <= s, keeping cu[lo] <= s < cu[hi] (cu[n_seq] = t > s):
        # repeated boundaries (empty documents) are skipped.
        lo = tl.zeros([BLOCK_S], dtype=tl.int32)
        hi = lo + n_seq
        for _ in range(search_steps):
            mid = (lo + hi) // 2
            go = tl.load(cu_ptr + mid * u_s) <= s
            lo = tl.where(go, mid, lo)
            hi = tl.where(go, hi, mid)
        row = s - tl.load(cu_ptr + lo * u_s)
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
