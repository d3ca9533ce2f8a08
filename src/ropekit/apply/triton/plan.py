"""Launch planning for the Triton kernel: plain integer arithmetic (no triton, no torch).

Notation: ``b`` batch, ``h`` heads, ``s`` sequence length, ``t`` packed tokens, ``d``
head dim, ``n`` rotated pairs, ``R`` table rows. The kernel (:mod:`.kernel`) sees every
launch as ``x1`` ``[B, H1, S, d]`` and ``x2`` ``[B, H2, S, d]`` (``H2 = 0``: one tensor):

* indexed calls (``rows`` given): the canonical ``[b, h, s, d]`` views as they are
  (packed ``[1, h, t, d]``), ``[R, n]`` tables read at each token's row;
* broadcast tables (``rows`` None): any ``[*B, d]``; its batch dims are folded into
  ``[B, H, S]`` (:func:`batch_view`): size-1 dims dropped, neighbours that are one flat
  dim in every tensor merged, and the dim the table does not vary along (if any) put in
  the head slot, where one table row is shared by the ``BLOCK_H`` heads of a tile.

q and k share one launch when they can share its ``B`` and ``S`` (always for indexed
calls) and its compile-time flags (one ``TAIL`` and compute dtype).

Everything here is a pure function of shapes, strides and flags, memoised in LRU tables
by :mod:`.ops`: a call then costs one dict lookup for its plan. Shapes and strides are
tuples of ints (``torch.Size`` is one); under ``torch.compile(dynamic=True)`` they may
hold symbolic ints, which this arithmetic accepts too (only the memo is skipped).

Notation of the types: ``Meta = (shape, strides)`` of a tensor; ``XMeta = (shape,
x_strides, y_strides, f64, inplace)`` of a tensor to rotate and its output.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "BLOCK_ELEMS",
    "MIN_BLOCK_ELEMS",
    "MIN_PROGRAMS",
    "Launch",
    "batch_view",
    "extent",
    "fold_dims",
    "needs_int64",
    "plan_broadcast",
    "plan_indexed",
    "tiles",
]

#: Elements of one lane half of a tile that a program aims for (a tile is twice this):
#: 2048 keeps 8 KB (bf16) to 16 KB (fp32) per program in flight in 4 warps, ~16
#: elements (two or four 16-byte vectors) per thread and half.
BLOCK_ELEMS = 2048
#: Smaller launches shrink tiles (down to MIN_BLOCK_ELEMS) until they have at least
#: MIN_PROGRAMS programs, about four per SM of an H100 (132 SMs).
MIN_PROGRAMS = 512
MIN_BLOCK_ELEMS = 512
INT32_LIMIT = 2**31 - 1

Meta = tuple[tuple[int, ...], tuple[int, ...]]
XMeta = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], bool, bool]


class Launch(NamedTuple):
    """One kernel launch: ``rope_kernel[grid](9 pointers, offset, *args, **meta)``.

    ``first``/``second``: indices into the call's ``xs`` of the launch's ``x1``/``x2``
    (``second = -1``: one tensor; ``x1`` then stands in for the absent ``x2``).
    """

    grid: tuple[int]
    args: tuple[int, ...]
    meta: dict[str, Any]
    first: int
    second: int


def pow2(v: int) -> int:
    """Smallest power of two >= ``v`` (plain arithmetic: fine on symbolic sizes too)."""
    p = 1
    while p < v:
        p *= 2
    return p


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def extent(meta: Meta | None) -> int:
    """One past the largest element offset (from ``data_ptr``) that a tensor addresses."""
    if meta is None:
        return 0
    shape, stride = meta
    if any(size == 0 for size in shape):
        return 0
    return 1 + sum((size - 1) * st for size, st in zip(shape, stride, strict=True))


def needs_int64(*metas: Meta | None) -> bool:
    """Whether 32-bit element offsets overflow for any of these tensors.

    64-bit address arithmetic costs registers and instructions, so it is compiled in
    only when some tensor spans more than ``2**31 - 1`` elements.
    """
    return max(extent(m) for m in metas) > INT32_LIMIT


def tiles(
    B: int, S: int, H1: int, H2: int, n: int, block_elems: int, num_warps: int | None
) -> tuple[int, int, int, int, int]:
    """``(BLOCK_S, BLOCK_H, BLOCK_N, num_warps, programs)`` for a ``[B, H1 + H2, S]`` grid."""
    bn = pow2(n)
    # The smaller head count sets BLOCK_H, so GQA's few key heads do not pad to h_q.
    heads = pow2(min(H1, H2) if H2 else H1)
    bh = min(heads, max(1, block_elems // bn))
    bs = min(pow2(S), max(1, block_elems // (bn * bh)))

    def programs() -> int:
        return B * cdiv(S, bs) * (cdiv(H1, bh) + cdiv(H2, bh))

    # Small launches (decode) shrink the tiles so that the grid still covers the GPU.
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


def _constexprs(
    n: int,
    tail: int,
    tile: tuple[int, int, int, int, int],
    *,
    interleaved: bool,
    conj: bool,
    has_pos: bool = False,
    has_offs: bool = False,
    varlen: bool = False,
    gather: bool = False,
    cos_per_head: bool = False,
    int64: bool,
    f64: bool,
) -> dict[str, Any]:
    bs, bh, bn, num_warps, _ = tile
    return dict(
        N=n, TAIL=tail, BLOCK_S=bs, BLOCK_H=bh, BLOCK_N=bn, BLOCK_T=pow2(tail) if tail else 1,
        INTERLEAVED=interleaved, CONJ=conj, HAS_POS=has_pos, HAS_OFFS=has_offs, VARLEN=varlen,
        GATHER=gather, COS_PER_HEAD=cos_per_head, INT64=int64, F64=f64, num_warps=num_warps,
    )  # fmt: skip


def _tail(x: XMeta, n: int) -> int:
    # In place the lanes past 2n are already where they belong: nothing to copy.
    return 0 if x[4] else x[0][-1] - 2 * n


def _groups(xs: tuple[XMeta, ...], n: int) -> list[tuple[int, int]]:
    """``(first, second)`` launches for ``xs``: two tensors share one launch when they
    agree on the compile-time flags (``TAIL``, compute dtype)."""
    if len(xs) == 2 and _tail(xs[0], n) == _tail(xs[1], n) and xs[0][3] == xs[1][3]:
        return [(0, 1)]
    return [(i, -1) for i in range(len(xs))]


def _grid(B: int, S: int, H1: int, H2: int, programs: int) -> tuple[int]:
    return (programs if B * S * max(H1, H2) else 0,)  # an empty tensor: no launch


# ----------------------------------------------------------------------------- indexed


def plan_indexed(
    xs: tuple[XMeta, ...],
    table: Meta,
    pos: Meta | None,
    offs: Meta | None,
    cu: Meta | None,
    interleaved: bool,
    conj: bool,
    block_elems: int = BLOCK_ELEMS,
    num_warps: int | None = None,
) -> tuple[Launch, ...]:
    """Launches rotating ``xs`` (canonical ``[b, h, s, d]``, equal ``b`` and ``s``) by an
    ``[R, n]`` table read at rows given by ``pos`` (``[s]``/``[b, s]``), ``offs`` (``[b]``,
    or ``[#docs]`` with ``cu``) and ``cu`` (``[#docs + 1]``, packed: ``b == 1``)."""
    (t_shape, t_st) = table
    R, n = t_shape
    p_sb = p_ss = 0
    if pos is not None:
        p_shape, p_st = pos
        p_ss = p_st[-1]
        if len(p_shape) == 2 and p_shape[0] != 1:  # [b, s]; [s] is shared by the batch
            p_sb = p_st[0]
    o_s = 0 if offs is None else offs[1][0]
    u_s = 0 if cu is None else cu[1][0]
    n_seq = 0 if cu is None else cu[0][0] - 1
    search_steps = 0  # smallest k with 2**k > n_seq: halvings of [0, n_seq] down to one
    while (1 << search_steps) <= n_seq:
        search_steps += 1
    B, S = xs[0][0][0], xs[0][0][2]
    launches = []
    for first, second in _groups(xs, n):
        x1 = xs[first]
        x2 = xs[second] if second >= 0 else x1
        H1, H2 = x1[0][1], (x2[0][1] if second >= 0 else 0)
        tile = tiles(B, S, H1, H2, n, block_elems, num_warps)
        metas = [(x[0], x[1]) for x in (x1, x2)] + [(x[0], x[2]) for x in (x1, x2)]
        meta = _constexprs(
            n, _tail(x1, n), tile, interleaved=interleaved, conj=conj, has_pos=pos is not None,
            has_offs=offs is not None, varlen=cu is not None, gather=True,
            int64=needs_int64(*metas, table, pos, offs, cu), f64=x1[3],
        )  # fmt: skip
        args = (
            S, H1, H2, R, n_seq, search_steps, *x1[1], *x1[2], *x2[1], *x2[2],
            0, 0, t_st[0], t_st[1], p_sb, p_ss, o_s, u_s,
        )  # fmt: skip
        launches.append(Launch(_grid(B, S, H1, H2, tile[4]), args, meta, first, second))
    return tuple(launches)


# ----------------------------------------------------------------------------- broadcast


def fold_dims(
    sizes: tuple[int, ...], strides: list[tuple[int, ...]]
) -> list[tuple[int, list[int]]]:
    """Drop size-1 dims and merge neighbours that are one flat dim in every tensor.

    Dims ``k`` (outer) and ``k + 1`` merge when ``stride[k] == stride[k+1] * size[k+1]``
    for all tensors; e.g. ``[b, h, s]`` of a contiguous ``x`` with an ``[s, n]`` table
    (table strides ``0, 0, n``) becomes ``[b*h, s]``. Returns ``(size, strides)`` pairs.
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


def expanded_strides(
    c_shape: tuple[int, ...], c_stride: tuple[int, ...], ndim: int
) -> tuple[int, ...]:
    """Strides of a table ``expand``-ed to ``ndim`` dims (right-aligned; broadcast dims 0)."""
    lead = ndim - len(c_shape)
    return tuple(
        0 if j < lead or c_shape[j - lead] == 1 else c_stride[j - lead] for j in range(ndim)
    )


View = tuple[int, int, tuple[int, ...], list[tuple[int, int, int]]]


def batch_view(shapes: list[tuple[int, ...]], strides: list[tuple[int, ...]]) -> View | None:
    """``(B, S, heads, [(sb, sh, ss) per tensor])``: one ``[B, H_i, S]`` view of the batch
    dims of every ``x_i`` (``shapes``, one or two) for all tensors (``strides``: batch
    strides of each ``x``, each ``y``, then the table expanded to the same rank; the
    table comes last), or None when no such view exists.

    Two shapes may differ in one dim only (q's and k's heads), which then is the head
    slot; else the head slot is the innermost dim the table does not vary along (one
    table row read per token, shared by the heads), or, failing that, the middle one of
    three (the table is then read per head).
    """
    ndim = len(shapes[0])
    if any(len(sh) != ndim for sh in shapes):
        return None
    # compared, not hashed: under torch.compile(dynamic=True) sizes may be symbolic
    differ = [j for j in range(ndim) if any(sh[j] != shapes[0][j] for sh in shapes[1:])]
    if len(differ) > 1:
        return None
    zeros = [0] * len(strides)
    sizes = shapes[0]
    if differ:
        (j,) = differ
        rest = fold_dims(sizes[:j], [st[:j] for st in strides])
        rest += fold_dims(sizes[j + 1 :], [st[j + 1 :] for st in strides])
        heads = tuple(sh[j] for sh in shapes)
        head_st = [st[j] for st in strides]
    else:
        rest = fold_dims(sizes, strides)
        if len(rest) > 3:
            return None
        flat = [k for k, (_, st) in enumerate(rest) if st[-1] == 0]
        if flat:
            size, head_st = rest.pop(flat[-1])
        elif len(rest) == 3:
            size, head_st = rest.pop(1)
        else:
            size, head_st = 1, zeros
        heads = (size,) * len(shapes)
    if len(rest) > 2:
        return None
    while len(rest) < 2:  # a lone dim goes to S, which the kernel tiles by BLOCK_S
        rest.insert(0, (1, zeros))
    (B, sb), (S, ss) = rest
    return B, S, heads, [(sb[k], head_st[k], ss[k]) for k in range(len(strides))]


def plan_broadcast(
    xs: tuple[XMeta, ...],
    table: Meta,
    interleaved: bool,
    conj: bool,
    block_elems: int = BLOCK_ELEMS,
    num_warps: int | None = None,
) -> tuple[Launch, ...] | None:
    """Launches rotating ``xs`` (``[*B, d]`` each) by a table ``[*C, n]`` broadcast to
    each ``x[..., :n]``; None when some ``x`` alone has no ``[B, H, S]`` view (more than
    three batch dims that do not merge: the caller splits it)."""
    c_shape, c_st = table
    n = c_shape[-1]
    launches: list[Launch] = []
    for first, second in _groups(xs, n):
        group = [xs[first]] if second < 0 else [xs[first], xs[second]]
        view = _group_view(group, c_shape, c_st)
        if view is None and second >= 0:  # no shared view: one launch each
            for i in (first, second):
                one = _group_view([xs[i]], c_shape, c_st)
                if one is None:
                    return None
                launches.append(_broadcast_launch(xs, i, -1, one, table, interleaved, conj,
                                                  block_elems, num_warps))  # fmt: skip
            continue
        if view is None:
            return None
        launches.append(
            _broadcast_launch(xs, first, second, view, table, interleaved, conj, block_elems,
                              num_warps)
        )  # fmt: skip
    return tuple(launches)


def _group_view(group: list[XMeta], c_shape: tuple[int, ...], c_st: tuple[int, ...]) -> View | None:
    ndim = len(group[0][0])
    strides = [x[1][:-1] for x in group] + [x[2][:-1] for x in group]
    strides.append(expanded_strides(c_shape, c_st, ndim)[:-1])
    return batch_view([x[0][:-1] for x in group], strides)


def _broadcast_launch(
    xs: tuple[XMeta, ...],
    first: int,
    second: int,
    view: View,
    table: Meta,
    interleaved: bool,
    conj: bool,
    block_elems: int,
    num_warps: int | None,
) -> Launch:
    B, S, heads, st = view
    n = table[0][-1]
    x1 = xs[first]
    two = second >= 0
    H1, H2 = heads[0], (heads[1] if two else 0)
    # strides per tensor in view order: x1, (x2), y1, (y2), table
    sx1, sy1 = st[0], st[2 if two else 1]
    sx2, sy2 = (st[1], st[3]) if two else (sx1, sy1)
    sc = st[-1]
    tile = tiles(B, S, H1, H2, n, block_elems, num_warps)
    group = [x1] if not two else [x1, xs[second]]
    metas = [(x[0], x[1]) for x in group] + [(x[0], x[2]) for x in group]
    meta = _constexprs(
        n, _tail(x1, n), tile, interleaved=interleaved, conj=conj, cos_per_head=sc[1] != 0,
        int64=needs_int64(table, *metas), f64=x1[3],
    )  # fmt: skip
    lane = [x1[1][-1], x1[2][-1]]
    if two:
        lane += [xs[second][1][-1], xs[second][2][-1]]
    else:
        lane += lane
    args = (
        S, H1, H2, 0, 0, 0, *sx1, lane[0], *sy1, lane[1], *sx2, lane[2], *sy2, lane[3],
        sc[0], sc[1], sc[2], table[1][-1], 0, 0, 0, 0,
    )  # fmt: skip
    return Launch(_grid(B, S, H1, H2, tile[4]), args, meta, first, second)
