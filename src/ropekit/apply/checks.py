"""The one argument checker of every rotation call, and the canonical form it produces.

Notation: ``b`` batch, ``h`` heads, ``s`` sequence, ``t`` packed tokens, ``d`` head dim,
``n`` rotated pairs, ``R`` rows of a position-indexed table.

Every public function (:mod:`ropekit.apply.api`) and :class:`~ropekit.RotaryEmbedding`
goes through :func:`check_call` once per call; backends never re-check. It returns a
:class:`Call` whose tensors are *views* of the caller's in one canonical form, so that a
kernel sees one convention whatever the layout:

=========  ====================  ==========================================================
layout     caller's ``x``        canonical view
=========  ====================  ==========================================================
``bhsd``   ``[b, h, s, d]``      ``x`` itself (also any ``[*B, d]`` with broadcast tables)
``bshd``   ``[b, s, h, d]``      ``x.transpose(1, 2)``: ``[b, h, s, d]``
``thd``    ``[t, h, d]`` packed  ``x.transpose(0, 1)[None]``: ``[1, h, t, d]``
=========  ====================  ==========================================================

Two ways to give the angles (never guessed from shapes):

* broadcast (no ``positions``/``offset``/``cu_seqlens``): ``cos``/``sin`` ``[*C, n]``
  broadcast to ``x[..., :n]`` in the caller's layout, without growing ``x`` (at most
  ``x.ndim`` dims);
* indexed (any of them given): ``cos``/``sin`` are ``[R, n]`` tables, row ``r`` for
  position ``r`` (see :mod:`ropekit.positions`); ``x`` must have its layout's rank.

Memory rules (eager calls; ``torch.compile`` cannot trace data pointers): an in-place
target must not overlap itself (``expand``-ed or ``as_strided`` tensors), the tables or
another target (``q`` and a view of ``q``); an ``out`` tensor must not overlap itself, the
tables, another output or any input (``out=x`` is refused: in place is ``inplace=True``).
Overlap between two tensors is decided exactly for views of one buffer with the same strides
(fused ``qkv`` slices are fine) and conservatively, by byte ranges, otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..errors import RopeValueError
from ..positions import Positions

__all__ = ["DTYPES", "LAYOUTS", "Call", "check_call", "from_canonical"]

LAYOUTS = ("bhsd", "bshd", "thd")
#: Real dtypes the kernels compute in; float8 and integer inputs are refused up front
#: (float8 has no arithmetic in torch: it would fail deep inside a promotion).
DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
_DTYPE_NAMES = "float16, bfloat16, float32 or float64"


class Call(NamedTuple):
    """A checked call in canonical form (a NamedTuple: cheap to build at decode sizes).

    ``xs``/``outs``: canonical views (``outs`` None: allocate; ``inplace``: write ``xs``).
    ``cos``/``sin``: broadcastable to each ``x[..., :n]`` (``rows`` None) or ``[R, n]``.
    """

    xs: tuple[torch.Tensor, ...]
    outs: tuple[torch.Tensor, ...] | None
    cos: torch.Tensor
    sin: torch.Tensor
    rows: Positions | None
    inplace: bool
    interleaved: bool
    inverse: bool


def _flag(name: str, value: object) -> bool:
    if value is not True and value is not False:
        raise RopeValueError(f"{name}={value!r} is not allowed: expected a bool")
    return value  # type: ignore[return-value]


def _tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise RopeValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _canonical(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "bhsd":
        return x
    if layout == "bshd":
        return x.transpose(1, 2)
    return x.transpose(0, 1).unsqueeze(0)


def from_canonical(y: torch.Tensor, layout: str) -> torch.Tensor:
    """The caller's layout of a canonical result (inverse of the table above)."""
    if layout == "bhsd":
        return y
    if layout == "bshd":
        return y.transpose(1, 2)
    return y.squeeze(0).transpose(0, 1)


def _rank_error(name: str, x: torch.Tensor, layout: str) -> RopeValueError:
    want = {"bhsd": "[b, h, s, d]", "bshd": "[b, s, h, d]", "thd": "packed [t, h, d]"}[layout]
    return RopeValueError(
        f"{name}.shape={tuple(x.shape)} is not allowed with layout={layout!r}: expected "
        f"{want} (pass layout= to say how the tensor is laid out; it is never guessed)"
    )


def _check_x(name: str, x: object, layout: str, indexed: bool) -> torch.Tensor:
    x = _tensor(name, x)
    if x.dtype not in DTYPES:
        raise RopeValueError(f"{name}.dtype={x.dtype} is not allowed: expected {_DTYPE_NAMES}")
    rank = x.ndim
    if layout == "bhsd":
        if rank == 0:
            raise RopeValueError(f"{name} is a 0-d tensor: expected at least one (lane) dimension")
        if indexed and rank != 4:
            raise _rank_error(name, x, layout)
    elif rank != (4 if layout == "bshd" else 3):
        raise _rank_error(name, x, layout)
    return x


def _check_tables(
    cos: object, sin: object, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = _tensor("cos", cos), _tensor("sin", sin)
    shape = cos.shape
    if shape != sin.shape:
        raise RopeValueError(
            f"cos.shape={tuple(shape)} and sin.shape={tuple(sin.shape)} differ: expected equal shapes"
        )
    dtype = cos.dtype
    if dtype != sin.dtype or dtype not in DTYPES:
        raise RopeValueError(
            f"cos.dtype={dtype}, sin.dtype={sin.dtype}: expected one dtype for both, "
            f"{_DTYPE_NAMES}"
        )
    if not shape or shape[-1] == 0:
        raise RopeValueError(
            f"cos.shape={tuple(shape)} is not allowed: expected [..., n] with n >= 1 pairs"
        )
    if not (cos.is_cpu and sin.is_cpu and x.is_cpu) and not (
        cos.device == x.device and sin.device == x.device
    ):
        raise RopeValueError(
            f"cos is on {cos.device}, sin on {sin.device}, the inputs on {x.device}: expected "
            "one device"
        )
    return cos, sin


def _check_broadcast(name: str, x: torch.Tensor, cshape: torch.Size) -> None:
    # Right-aligned, each table dim must be 1 or equal to x's, and the table may not have
    # more dims than x (a leading size-1 dim would grow the result). A plain loop:
    # torch.broadcast_shapes costs more than a decode-size rotation.
    xshape = x.shape
    ok = len(cshape) <= len(xshape)
    for i in range(2, len(cshape) + 1) if ok else ():
        size = cshape[-i]
        if size != 1 and size != xshape[-i]:
            ok = False
            break
    if not ok:
        n = cshape[-1]
        raise RopeValueError(
            f"cos/sin of shape {tuple(cshape)} do not broadcast to {name}[..., :n] of shape "
            f"{(*xshape[:-1], n)}: expected at most {len(xshape)} dims, each 1 or equal to "
            f"{name}'s (the result never grows beyond {name})"
        )


def _span(t: torch.Tensor) -> tuple[int, int]:
    """Byte range ``[start, end)`` that ``t``'s elements can occupy (empty: ``(0, 0)``)."""
    numel = t.numel()
    if not numel:
        return 0, 0
    start = t.data_ptr()
    if t.is_contiguous():  # the common case, without a Python loop over the dims
        return start, start + numel * t.element_size()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return start, start + (last + 1) * t.element_size()


def _self_overlaps(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` may share memory (conservative: True when unsure).

    Sorted by stride, each dim must step past everything the smaller dims span; this
    holds for every dense or sliced tensor and fails for ``expand`` (stride 0) and
    overlapping ``as_strided`` windows.
    """
    if t.is_contiguous() or t.numel() <= 1:
        return False
    extent = 0  # the largest element offset reachable by the dims seen so far
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True) if sz > 1):
        if stride <= extent:
            return True
        extent += (size - 1) * stride
    return False


def _hits(delta: int, dims: list[tuple[int, int, int]]) -> bool:
    """Whether ``delta = sum(k_m * stride_m)`` has a solution with ``lo_m <= k_m <= hi_m``
    (``dims`` sorted by stride, largest first, each stride larger than all the smaller
    dims can span, so at most two values of each ``k_m`` need trying)."""
    if not dims:
        return delta == 0
    (stride, lo, hi), rest = dims[0], dims[1:]
    k = delta // stride
    return any(lo <= c <= hi and _hits(delta - c * stride, rest) for c in (k, k + 1))


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` may share an element's memory (conservative: True when
    unsure; exact for two self-overlap-free views of one buffer with equal strides)."""
    a0, a1 = _span(a)
    b0, b1 = _span(b)
    if not (a0 < b1 and b0 < a1) or a.device != b.device:
        return False
    size = a.element_size()
    if b.element_size() != size or a.stride() != b.stride() or (b0 - a0) % size:
        return True  # not two views of one buffer alike: byte ranges decide
    if _self_overlaps(a) or _self_overlaps(b):
        return True
    # Element i of a meets element j of b iff (i - j) . stride = delta, with i - j in
    # [-(size_b - 1), size_a - 1] per dim.
    dims = sorted(
        ((st, 1 - sb, sa - 1) for sa, sb, st in zip(a.shape, b.shape, a.stride(), strict=True)
         if max(sa, sb) > 1),
        reverse=True,
    )  # fmt: skip
    reach = 0
    for st, lo, hi in reversed(dims):  # nested strides, or undecidable here: say overlap
        if st <= reach:
            return True
        reach += max(-lo, hi) * st
    return _hits((b0 - a0) // size, dims)


def _check_memory(
    targets: Sequence[torch.Tensor],
    target_names: Sequence[str],
    inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    cos: torch.Tensor,
    sin: torch.Tensor,
    inplace: bool,
) -> None:
    # Byte ranges first, each tensor's once: disjoint ranges (the common case) settle a
    # pair without the exact test, which runs only for pairs whose ranges meet.
    spans = [_span(t) for t in targets]
    tables = ((cos, "cos", _span(cos)), (sin, "sin", _span(sin)))
    input_spans = spans if inplace else [_span(x) for x in inputs]
    for i, (t, name) in enumerate(zip(targets, target_names, strict=True)):
        if _self_overlaps(t):
            raise RopeValueError(
                f"{name} has elements that share memory (an expanded or overlapping "
                f"as_strided tensor, strides {t.stride()}): expected a tensor whose elements "
                "are distinct, as the rotation writes every one"
            )
        a0, a1 = spans[i]
        for table, tname, (b0, b1) in tables:
            if a0 < b1 and b0 < a1 and _overlap(t, table):
                raise RopeValueError(
                    f"{name} overlaps {tname} in memory: expected the tables in separate memory"
                )
        for j in range(i + 1, len(targets)):
            b0, b1 = spans[j]
            if a0 < b1 and b0 < a1 and _overlap(t, targets[j]):
                raise RopeValueError(
                    f"{name} and {target_names[j]} overlap in memory: expected separate memory "
                    "(each would be rotated more than once)"
                )
        if inplace:
            continue
        for j, (x, xname) in enumerate(zip(inputs, input_names, strict=True)):
            b0, b1 = input_spans[j]
            if not (a0 < b1 and b0 < a1):
                continue
            if j == i and t.data_ptr() == x.data_ptr() and t.stride() == x.stride():
                raise _out_is_input(name, xname)
            if _overlap(t, x):
                raise RopeValueError(
                    f"{name} overlaps {xname} in memory: expected separate memory (for an "
                    "in-place rotation pass inplace=True instead of out=)"
                )


def _out_is_input(oname: str, name: str) -> RopeValueError:
    return RopeValueError(
        f"{oname} is {name} itself: out= takes a separate buffer; to rotate {name} in place "
        "pass inplace=True (without out=)"
    )


def check_call(
    xs: Sequence[object],
    names: Sequence[str],
    cos: object,
    sin: object,
    *,
    positions: torch.Tensor | None = None,
    offset: int | torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    layout: str = "bhsd",
    interleaved: bool = False,
    inverse: bool = False,
    out: Sequence[object] | None = None,
    inplace: bool = False,
    own_tables: bool = False,
) -> Call:
    """Check one call's arguments (once, for every backend) and return it canonically.

    ``own_tables``: ``cos``/``sin`` were built by the caller for exactly these inputs
    (:class:`~ropekit.RotaryEmbedding`: one float dtype, the inputs' device, broadcasting
    ``[*P, n]``), so their checks are skipped; everything about the inputs is checked.

    Raises :class:`~ropekit.RopeValueError` naming the bad argument and what is allowed.
    """
    if layout not in LAYOUTS:
        raise RopeValueError(f"layout={layout!r} is not allowed: expected one of {LAYOUTS}")
    if interleaved is not True and interleaved is not False:
        _flag("interleaved", interleaved)
    if inverse is not True and inverse is not False:
        _flag("inverse", inverse)
    # Written for decode sizes, where this function costs as much as the rotation: plain
    # loops rather than generators, each tensor attribute read once, and the common case
    # (CPU, one device) skips the device objects.
    indexed = positions is not None or offset is not None or cu_seqlens is not None
    checked = []
    for x, name in zip(xs, names, strict=True):
        checked.append(_check_x(name, x, layout, indexed))
    x0 = checked[0]
    if not own_tables:
        cos, sin = _check_tables(cos, sin, x0)
    cshape = cos.shape
    n = cshape[-1]
    x0_cpu = x0.is_cpu
    for i, x in enumerate(checked):
        name = names[i]
        if i and (x.is_cpu != x0_cpu or (not x0_cpu and x.device != x0.device)):
            raise RopeValueError(
                f"{names[0]} is on {x0.device}, {name} on {x.device}: expected one device"
            )
        if 2 * n > x.shape[-1]:
            raise RopeValueError(
                f"cos has n={n} pairs, which need 2n={2 * n} lanes, but {name}.shape[-1]="
                f"{x.shape[-1]}: expected 2 * cos.shape[-1] <= {name}.shape[-1]"
            )
        if not indexed and not own_tables:
            xshape = x.shape
            # (the common [s, n] / [1, n] table against a [..., s, d] tensor, inline)
            if len(cshape) != 2 or len(xshape) < 2 or (cshape[0] != 1 and cshape[0] != xshape[-2]):
                _check_broadcast(name, x, cshape)
    checked = tuple(checked)
    canon = checked if layout == "bhsd" else tuple(_canonical(x, layout) for x in checked)
    rows = None
    if indexed:
        if len(cshape) != 2:
            raise RopeValueError(
                f"cos.shape={tuple(cshape)} is not allowed with positions/offset/cu_seqlens: "
                "expected a [R, n] table whose row r holds position r"
            )
        c0 = canon[0]
        b, s = c0.shape[0], c0.shape[2]
        for c, x, name in zip(canon[1:], checked[1:], names[1:], strict=True):
            if c.shape[0] != b or c.shape[2] != s:
                raise RopeValueError(
                    f"{names[0]}.shape={tuple(x0.shape)} and {name}.shape={tuple(x.shape)} do "
                    "not match: expected equal batch and sequence (or token) dims"
                )
        rows = Positions.check(
            s, None if layout == "thd" else b, positions=positions, offset=offset,
            cu_seqlens=cu_seqlens, device=x0.device,
        )  # fmt: skip
        rows.check_rows(cshape[0], x0.device)
    elif layout != "bhsd":  # tables in the caller's layout, to canonical like x
        if len(cshape) == 2 and cshape[0] != 1:
            # Right-aligned, a [s, n] table would line up with the heads dim of a
            # [b, s, h, d] / [t, h, d] tensor: never what is meant, and silently wrong
            # when s == h.
            want = "[s, 1, n] or [b, s, 1, n]" if layout == "bshd" else "[t, 1, n]"
            raise RopeValueError(
                f"cos.shape={tuple(cshape)} is not allowed with layout={layout!r}: its "
                f"first dim would line up with the heads; expected {want} (or a [R, n] "
                "table with positions/offset/cu_seqlens)"
            )
        rank = x0.ndim
        if cos.ndim < rank:
            cos = cos.reshape((1,) * (rank - cos.ndim) + tuple(cshape))
            sin = sin.reshape(cos.shape)
        cos, sin = _canonical(cos, layout), _canonical(sin, layout)

    if inplace is not True and inplace is not False:
        _flag("inplace", inplace)
    outs = None
    if out is not None:
        if inplace:
            raise RopeValueError(
                "inplace=True and out= are not allowed together: expected one of them "
                "(inplace=True writes the inputs, out= a separate buffer)"
            )
        if len(out) != len(checked):
            raise RopeValueError(
                f"out has {len(out)} tensors: expected {len(checked)} ({', '.join(names)})"
            )
        out_names = ["out"] if len(checked) == 1 else [f"out[{i}]" for i in range(len(out))]
        outs_user = []
        for o, x, oname, name in zip(out, checked, out_names, names, strict=True):
            o = _tensor(oname, o)
            if o is x:
                raise _out_is_input(oname, name)
            if o.shape != x.shape or o.dtype != x.dtype or o.device != x.device:
                raise RopeValueError(
                    f"{oname} of shape {tuple(o.shape)}, dtype {o.dtype} on {o.device} is not "
                    f"allowed: expected {name}'s shape {tuple(x.shape)}, dtype {x.dtype}, "
                    f"device {x.device}"
                )
            outs_user.append(o)
        if not torch.compiler.is_compiling():
            _check_memory(outs_user, out_names, checked, names, cos, sin, inplace=False)
        outs = tuple(_canonical(o, layout) for o in outs_user) if layout != "bhsd" else tuple(outs_user)
    elif inplace and not torch.compiler.is_compiling():
        _check_memory(checked, names, checked, names, cos, sin, inplace=True)
    return Call(canon, outs, cos, sin, rows, inplace, interleaved, inverse)
