"""The Triton backend's launcher: the kernel protocol, and the torch op for torch.compile.

Notation: ``b`` batch, ``h`` heads, ``s`` sequence length, ``t`` packed tokens, ``d``
head dim, ``n`` rotated pairs, ``R`` table rows.

:func:`rotate_triton` is the backend's kernel in the protocol of
:mod:`ropekit.apply.dispatch`::

    rotate_triton(xs, outs, cos, sin, rows, *, interleaved, inverse) -> outputs

Eager calls on plain tensors (the hot path) look up the memoised launch plan
(:mod:`.plan`) and launch :func:`.kernel.rope_kernel` directly: for q and k one launch,
writing into new tensors, into ``outs``, or in place (``outs[i] is xs[i]``: the kernel
writes into ``x``'s own memory). Autograd is not done here: the dispatcher wraps this
function in its shared ``autograd.Rotate`` (whose backward calls it with ``inverse``
flipped).

Under ``torch.compile`` (and under dispatch modes such as ``FakeTensorMode`` or
``make_fx``, or functorch transforms: tensors without memory of their own to launch on) the
same launcher runs inside a :func:`torch.library.triton_op` with ``wrap_triton``, so
``fullgraph=True`` traces into the kernel; the op has its own autograd formula (the
same op with ``inverse`` flipped), because there the dispatcher's Function is not used.

Importing this module imports triton. Nothing syncs with the host on the launch path:
plans depend on shapes and strides only, and positions are read inside the kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.library import triton_op, wrap_triton

from ...errors import RopeValueError
from . import plan
from .kernel import rope_kernel

__all__ = ["INTERPRETED", "rotate_triton"]

#: Whether triton runs kernels in its interpreter (``TRITON_INTERPRET=1`` when triton was
#: first imported); they then take CPU tensors. A plain flag, so that torch.compile reads
#: it as a constant instead of tracing the kernel object.
INTERPRETED = type(rope_kernel).__name__ == "InterpretedFunction"

# Launch plans by shapes, strides and flags (pure functions of plain ints, see .plan).
_plan_indexed = functools.lru_cache(maxsize=512)(plan.plan_indexed)
_plan_broadcast = functools.lru_cache(maxsize=512)(plan.plan_broadcast)


def _memo(fn: Callable[..., Any], *key: Any) -> Any:
    """``fn(*key)`` through its LRU table; computed directly when ``key`` holds symbolic
    sizes (``torch.compile(dynamic=True)``), which cannot be hashed."""
    try:
        return fn(*key)
    except TypeError:
        return fn.__wrapped__(*key)


def _index(t: torch.Tensor | None) -> torch.Tensor | None:
    # The kernel does its row arithmetic in int32/int64; rarer integer dtypes (uint8,
    # int16, ...) are widened (a small device-side copy, no sync).
    if t is None or t.dtype in (torch.int32, torch.int64):
        return t
    return t.to(torch.int64)


def _meta(t: torch.Tensor | None) -> plan.Meta | None:
    return None if t is None else (t.shape, t.stride())


def _launch(
    kernel: Any,
    launch: plan.Launch,
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    offset: int,
) -> None:
    """``kernel[grid](...)`` for one planned launch; ``kernel`` is :func:`rope_kernel`
    (eager) or ``wrap_triton(rope_kernel)`` (inside the torch op, for tracing)."""
    if launch.grid[0] == 0:
        return
    i, j = launch.first, launch.second
    x1, y1 = xs[i], ys[i]
    x2, y2 = (xs[j], ys[j]) if j >= 0 else (x1, y1)
    # x1 stands in for absent optional pointers; the kernel never dereferences them.
    kernel[launch.grid](
        x1, y1, x2, y2, cos, sin,
        x1 if positions is None else positions,
        x1 if offsets is None else offsets,
        x1 if cu_seqlens is None else cu_seqlens,
        offset, *launch.args, **launch.meta,
    )  # fmt: skip


def _rotate_into(
    kernel: Any,
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    inplace: Sequence[bool],
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    offset: int,
    indexed: bool,
    interleaved: bool,
    conj: bool,
) -> None:
    """``ys[i] = R(±θ) xs[i]`` (``inplace[i]``: ``ys[i]`` is ``xs[i]``'s own memory)."""
    if cos.stride() != sin.stride():
        # The kernel addresses both tables with one set of strides (fewer arguments);
        # tables laid out differently (rare, and small) are made contiguous.
        cos, sin = cos.contiguous(), sin.contiguous()
    metas = tuple(
        (x.shape, x.stride(), y.stride(), x.dtype == torch.float64, ip)
        for x, y, ip in zip(xs, ys, inplace, strict=True)
    )
    table = (cos.shape, cos.stride())
    if indexed:
        launches = _memo(
            _plan_indexed, metas, table, _meta(positions), _meta(offsets), _meta(cu_seqlens),
            interleaved, conj,
        )  # fmt: skip
    else:
        launches = _memo(_plan_broadcast, metas, table, interleaved, conj)
    if launches is not None:
        for launch in launches:
            _launch(kernel, launch, xs, ys, cos, sin, positions, offsets, cu_seqlens, offset)
        return
    # Broadcast tables and batch dims that no [B, H, S] view covers (more than three that
    # do not merge): each tensor alone, then one launch per leading index.
    if len(xs) > 1:
        for x, y, ip in zip(xs, ys, inplace, strict=True):
            _rotate_into(kernel, [x], [y], [ip], cos, sin, None, None, None, 0, False,
                         interleaved, conj)  # fmt: skip
        return
    (x,), (y,) = xs, ys
    target = (*x.shape[:-1], cos.shape[-1])
    ce, se = cos.expand(target), sin.expand(target)
    for j in range(x.shape[0]):
        _rotate_into(kernel, [x[j]], [y[j]], inplace, ce[j], se[j], None, None, None, 0, False,
                     interleaved, conj)  # fmt: skip


# ----------------------------------------------------------------------------- torch op
#
# What torch.compile sees: the op's body allocates the outputs and launches
# wrap_triton(rope_kernel), which Inductor inlines. Its autograd formula is registered
# below (eager calls get theirs from the dispatcher's Function instead).


@triton_op("ropekit::triton_rotate", mutates_args=())
def _rotate_op(
    xs: list[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    offset: int,
    indexed: bool,
    interleaved: bool,
    inverse: bool,
) -> list[torch.Tensor]:
    ys = [torch.empty_like(x) for x in xs]
    _rotate_into(
        wrap_triton(rope_kernel), xs, ys, [False] * len(xs), cos, sin, positions, offsets,
        cu_seqlens, offset, indexed, interleaved, inverse,
    )  # fmt: skip
    return ys


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    _, cos, sin, positions, offsets, cu_seqlens, offset, indexed, interleaved, inverse = inputs
    ctx.save_for_backward(cos, sin, positions, offsets, cu_seqlens)
    ctx.flags = offset, indexed, interleaved, inverse
    ctx.like = [(x.shape, x.dtype, x.device) for x in inputs[0]]  # for absent gradients


def _backward(ctx: Any, grads: list[torch.Tensor | None]) -> tuple[Any, ...]:
    # dy/dx = R(θ), so dL/dx = R(θ)ᵀ g = R(-θ) g: the same op with the sign flipped.
    cos, sin, positions, offsets, cu_seqlens = ctx.saved_tensors
    offset, indexed, interleaved, inverse = ctx.flags
    gs = [
        g if g is not None else torch.zeros(shape, dtype=dtype, device=device)
        for g, (shape, dtype, device) in zip(grads, ctx.like, strict=True)
    ]
    gx = _rotate_op(
        gs, cos, sin, positions, offsets, cu_seqlens, offset, indexed, interleaved, not inverse
    )
    return gx, None, None, None, None, None, None, None, None, None


_rotate_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- protocol


def _plain(xs: Sequence[torch.Tensor], outs: Sequence[torch.Tensor] | None) -> bool:
    """Plain tensors with memory, nothing tracing: launch directly (no op dispatch, which
    costs tens of microseconds, more than a decode step's kernel)."""
    if torch._C._len_torch_dispatch_stack() or torch._C._are_functorch_transforms_active():
        return False
    if any(type(x) is not torch.Tensor for x in xs):
        return False
    return outs is None or all(type(o) is torch.Tensor for o in outs)


def rotate_triton(
    xs: Sequence[torch.Tensor],
    outs: Sequence[torch.Tensor] | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: Any = None,
    *,
    interleaved: bool,
    inverse: bool,
) -> tuple[torch.Tensor, ...]:
    """``Backend.TRITON``'s kernel: rotate every ``xs[i]`` (one launch for q and k).

    Args:
        xs: canonical views (:mod:`ropekit.apply.checks`), any strides: ``[*B, d]`` with
            broadcast tables, ``[b, h, s, d]`` (packed: ``[1, h, t, d]``) with ``rows``.
        outs: None (new tensors), or tensors like ``xs`` to write into; ``outs[i] is
            xs[i]`` writes ``xs[i]``'s own memory (in place).
        cos, sin: broadcastable to each ``x[..., :n]`` (``rows`` None), or ``[R, n]``
            tables read at ``rows`` (a checked :class:`~ropekit.positions.Positions`).
        interleaved: pair lanes ``(2i, 2i+1)`` instead of ``(i, i+n)``.
        inverse: rotate by ``-θ``.

    Returns:
        The outputs (``outs`` when given). Not differentiable by itself in eager mode
        (the dispatcher's autograd Function is); the torch op used under
        ``torch.compile`` is.
    """
    if rows is None:
        positions = offsets = cu_seqlens = None
        offset, indexed = 0, False
    else:
        positions, offsets = _index(rows.positions), _index(rows.offsets)
        cu_seqlens, offset, indexed = _index(rows.cu_seqlens), rows.offset, True
    if torch.compiler.is_compiling() or not _plain(xs, outs):
        ys = _rotate_op(
            list(xs), cos, sin, positions, offsets, cu_seqlens, offset, indexed, interleaved,
            inverse,
        )  # fmt: skip
        if outs is None:
            return tuple(ys)
        for o, y in zip(outs, ys, strict=True):
            o.copy_(y)
        return tuple(outs)
    x0 = xs[0]
    if not (x0.is_cuda or (INTERPRETED and x0.is_cpu)):
        raise RopeValueError(
            f"backend='triton' cannot run on tensors on {x0.device}: expected CUDA tensors "
            "(or CPU tensors with TRITON_INTERPRET=1 set before triton is imported)"
        )
    if outs is None:
        ys = tuple(torch.empty_like(x) for x in xs)
        inplace = (False,) * len(xs)
    else:
        ys = tuple(outs)
        # outs may be the xs themselves (inplace=True) or views of their memory: in place
        # for the kernel, which then need not copy the lanes past 2n.
        inplace = tuple(
            y is x or (y.data_ptr() == x.data_ptr() and y.stride() == x.stride())
            for x, y in zip(xs, ys, strict=True)
        )
    args = (
        rope_kernel, xs, ys, inplace, cos, sin, positions, offsets, cu_seqlens, offset, indexed,
        interleaved, inverse,
    )  # fmt: skip
    if x0.is_cuda and x0.get_device() != torch.cuda.current_device():
        # Triton launches on the current device, not the tensors': switch for the call.
        with torch.cuda.device(x0.device):
            _rotate_into(*args)
    else:
        _rotate_into(*args)
    return ys
