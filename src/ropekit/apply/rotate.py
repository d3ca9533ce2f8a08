"""Rotating the lanes of ``x`` by precomputed cos/sin tables.

Notation: ``x`` is ``[*B, D]`` (typically ``[b, h, s, d]``: batch, heads, sequence,
head dim); ``cos``/``sin`` are ``[*C, n]`` with ``*C`` broadcastable to ``*B``; ``n``
pairs are rotated, occupying the first ``2n <= D`` lanes.

Pair layouts (both rotate pair ``i`` by the angle behind ``cos[..., i]``):

* half (``interleaved=False``; GPT-NeoX, Hugging Face ``rotate_half``): lane ``i`` is
  paired with lane ``i + n``::

      y[i]     = x[i] cos_i - x[i+n] sin_i
      y[i + n] = x[i+n] cos_i + x[i] sin_i

* interleaved (``interleaved=True``; GPT-J, Meta's complex form): lane ``2i`` is paired
  with ``2i + 1``, i.e. ``(x[2i] + j x[2i+1]) * (cos_i + j sin_i)``.

Lanes ``[2n, D)`` are copied through bit for bit. The input is never modified.
"""

from __future__ import annotations

import torch

from ..errors import RopeValueError, check_tensor

__all__ = ["apply_rope", "check_rope_args", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype for inputs of ``dtype``: float32 for half precision, else itself.

    fp16/bf16 products and sums are rounded at every step; doing the two multiplies and
    the add in float32 and rounding once keeps the result within one output rounding step.
    """
    return torch.promote_types(dtype, torch.float32)


def check_rope_args(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> int:
    """Validate the arguments of :func:`apply_rope`; return ``n``, the number of pairs."""
    check_tensor("x", x)
    check_tensor("cos", cos)
    check_tensor("sin", sin)
    if not x.is_floating_point():
        raise RopeValueError(
            f"x.dtype={x.dtype} is not allowed: expected a floating dtype "
            "(float16, bfloat16, float32, float64)"
        )
    if x.ndim == 0:
        raise RopeValueError("x is a 0-d tensor: expected at least one (lane) dimension")
    if cos.shape != sin.shape:
        raise RopeValueError(
            f"cos.shape={tuple(cos.shape)} and sin.shape={tuple(sin.shape)} differ: expected equal shapes"
        )
    if cos.dtype != sin.dtype or not cos.is_floating_point():
        raise RopeValueError(
            f"cos.dtype={cos.dtype}, sin.dtype={sin.dtype}: expected one real floating dtype for both"
        )
    if cos.ndim == 0 or cos.shape[-1] == 0:
        raise RopeValueError(
            f"cos.shape={tuple(cos.shape)} is not allowed: expected [..., n] with n >= 1 pairs"
        )
    if not (x.device == cos.device == sin.device):
        raise RopeValueError(
            f"x is on {x.device}, cos on {cos.device}, sin on {sin.device}: expected one device"
        )
    n = cos.shape[-1]
    if 2 * n > x.shape[-1]:
        raise RopeValueError(
            f"cos has n={n} pairs, which need 2n={2 * n} lanes, but x.shape[-1]={x.shape[-1]}: "
            f"expected 2 * cos.shape[-1] <= x.shape[-1]"
        )
    target = (*x.shape[:-1], n)
    try:
        broadcast = torch.broadcast_shapes(cos.shape, target)
    except RuntimeError:
        broadcast = None
    if broadcast != torch.Size(target):
        raise RopeValueError(
            f"cos/sin of shape {tuple(cos.shape)} do not broadcast to x[..., :n] of shape "
            f"{tuple(target)}: expected a shape that broadcasts to it without growing x"
        )
    return n


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False
) -> torch.Tensor:
    """Rotate the first ``2n`` lanes of ``x`` (``n = cos.shape[-1]``) by the tables.

    Args:
        x: ``[*B, D]`` floating tensor (e.g. ``[b, h, s, d]``).
        cos, sin: ``[*C, n]`` tables (see :func:`ropekit.cos_sin`), broadcastable to
            ``x[..., :n]``; e.g. ``[s, n]`` or ``[b, 1, s, n]``.
        interleaved: pair lanes ``(2i, 2i+1)`` (GPT-J/Meta) instead of ``(i, i+n)``
            (GPT-NeoX/HF).

    Returns:
        A new tensor shaped and typed like ``x``. Arithmetic is float32 for
        half-precision ``x`` and ``x.dtype`` otherwise; lanes past ``2n`` are unchanged.

    Example:
        >>> x = torch.tensor([1.0, 0.0, 5.0])
        >>> apply_rope(x, torch.tensor([0.0]), torch.tensor([1.0]))  # 90 degrees
        tensor([0., 1., 5.])
    """
    n = check_rope_args(x, cos, sin)
    work = compute_dtype(x.dtype)
    c, s = cos.to(work), sin.to(work)
    rot = x[..., : 2 * n].to(work)
    if interleaved:
        pairs = rot.unflatten(-1, (n, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        out = torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)
    else:
        a, b = rot[..., :n], rot[..., n:]
        out = torch.cat((a * c - b * s, b * c + a * s), dim=-1)
    out = out.to(x.dtype)
    if 2 * n == x.shape[-1]:
        return out
    return torch.cat((out, x[..., 2 * n :]), dim=-1)
