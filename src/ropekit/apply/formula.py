"""The rotation in plain torch ops: the readable formula and an allocation-lean variant.

Notation: ``x`` is ``[*B, D]``, ``cos``/``sin`` are ``[*C, n]`` broadcastable to
``x[..., :n]``; ``a``/``b`` are the two lanes of every pair (``x[..., :n]``/``x[..., n:2n]``
in the half layout, ``x[..., 0:2n:2]``/``x[..., 1:2n:2]`` interleaved)::

    y_a = a cos - b sin
    y_b = b cos + a sin
    y[..., 2n:] = x[..., 2n:]

Both do the products and sums in :func:`compute_dtype` (float32 for half precision) and
round once to ``x.dtype``. ``rotate_reference`` and ``rotate_torch`` are the ``reference``
and ``torch`` backends: they implement the kernel protocol of
:mod:`ropekit.apply.dispatch`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["compute_dtype", "rope_reference", "rotate_reference", "rotate_torch"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype for inputs of ``dtype``: float32 for half precision, else itself.

    fp16/bf16 products and sums are rounded at every step; doing the two multiplies and
    the add in float32 and rounding once keeps the result within one output rounding step.
    """
    return torch.promote_types(dtype, torch.float32)


def _pairs(t: torch.Tensor, n: int, interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the two lanes of every pair: ``(t[..., :n], t[..., n:2n])`` or even/odd lanes."""
    if interleaved:
        return t[..., 0 : 2 * n : 2], t[..., 1 : 2 * n : 2]
    return t[..., :n], t[..., n : 2 * n]


def rope_reference(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool
) -> torch.Tensor:
    """The formula as written (``Backend.REFERENCE``): differentiable in ``x``, ``cos``, ``sin``.

    This is also what ropekit traces inside ``torch.compile``, where Inductor fuses it into
    one kernel. Arguments are not validated here (see :func:`ropekit.apply_rope`).
    """
    n = cos.shape[-1]
    work = compute_dtype(x.dtype)
    c, s = cos.to(work), sin.to(work)
    a, b = (lane.to(work) for lane in _pairs(x, n, interleaved))
    # Each half is rounded to x.dtype before it is joined (the same values as rounding the
    # joined result): Inductor then fuses the join into the loop that computes it, instead
    # of materialising a float32 intermediate (~3x slower in bf16 under torch.compile).
    ya, yb = (a * c - b * s).to(x.dtype), (b * c + a * s).to(x.dtype)
    out = (
        torch.stack((ya, yb), dim=-1).flatten(-2) if interleaved else torch.cat((ya, yb), dim=-1)
    )
    if 2 * n == x.shape[-1]:
        return out
    return torch.cat((out, x[..., 2 * n :]), dim=-1)


def rotate_reference(
    xs: Sequence[torch.Tensor],
    outs: Sequence[torch.Tensor] | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: object = None,
    *,
    interleaved: bool,
    inverse: bool,
) -> tuple[torch.Tensor, ...]:
    """``Backend.REFERENCE``: :func:`rope_reference` of each tensor (torch's own autograd,
    so differentiable in the tables too); written into ``outs`` when given.

    ``rows`` is always None: the dispatcher gathers table rows for this backend.
    """
    if inverse:
        sin = -sin
    ys = [rope_reference(x, cos, sin, interleaved=interleaved) for x in xs]
    if outs is None:
        return tuple(ys)
    for out, y in zip(outs, ys, strict=True):
        out.copy_(y)
    return tuple(outs)


def rotate_torch(
    xs: Sequence[torch.Tensor],
    outs: Sequence[torch.Tensor] | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: object = None,
    *,
    interleaved: bool,
    inverse: bool,
) -> tuple[torch.Tensor, ...]:
    """``Backend.TORCH``: write the rotation of each ``xs[i]`` into ``outs[i]`` (any device)
    and return ``outs`` (new tensors when ``outs`` is None).

    ``outs[i]`` may be ``xs[i]`` itself (in place). ``inverse`` rotates by ``-angle``.
    Not differentiable by itself (``torch.autograd`` sees ``out=`` writes); ropekit wraps
    it in an ``autograd.Function`` whose backward is this function with ``inverse`` flipped.

    For float32/float64 inputs written to a separate output, each half of the result is
    one ``mul`` into its slice of ``out`` and one in-place ``addcmul_``: four passes over
    ``n`` lanes and no temporaries or ``cat``, about half the memory traffic of
    :func:`rope_reference`. torch's vectorised ``addcmul`` may fuse ``a c - b s`` into one
    FMA (one rounding instead of two), so results can differ from the formula's in the
    last bit: both are within one rounding step of the exact rotation.
    """
    if outs is None:
        outs = [torch.empty_like(x) for x in xs]
    n = cos.shape[-1]
    sign = -1.0 if inverse else 1.0
    for x, out in zip(xs, outs, strict=True):
        work = compute_dtype(x.dtype)
        c, s = cos.to(work), sin.to(work)
        a, b = _pairs(x, n, interleaved)
        out_a, out_b = _pairs(out, n, interleaved)
        if work == x.dtype and out.data_ptr() != x.data_ptr():
            torch.mul(a, c, out=out_a).addcmul_(b, s, value=-sign)
            torch.mul(b, c, out=out_b).addcmul_(a, s, value=sign)
        else:
            # Half precision (widen first) or in place (both lanes of a pair must be read
            # before either is written): work on float32/float64 copies.
            a, b = a.to(work, copy=True), b.to(work, copy=True)
            out_a.copy_(torch.mul(a, c).addcmul_(b, s, value=-sign))
            out_b.copy_(torch.mul(b, c).addcmul_(a, s, value=sign))
        if out.data_ptr() != x.data_ptr() and 2 * n < x.shape[-1]:
            out[..., 2 * n :].copy_(x[..., 2 * n :])
    return tuple(outs)
