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

Lanes ``[2n, D)`` are copied through bit for bit. The input is never modified, except by
the in-place variants (``apply_rope_``, ``apply_rope_qk_``), whose names end in ``_`` as
torch's do.

Every function takes ``backend`` (:class:`ropekit.Backend` or its string value; see
:mod:`ropekit.apply.backends`): ``"auto"`` (the default) picks the fastest implementation
for the tensors' device, the others force one. All of them compute the same rotation:
products and sums in float32 for half-precision inputs (in ``x.dtype`` otherwise),
rounded once to ``x.dtype``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import RopeValueError, check_tensor
from .backends import Backend, rotate
from .eager import compute_dtype

__all__ = [
    "apply_rope",
    "apply_rope_",
    "apply_rope_qk",
    "apply_rope_qk_",
    "check_rope_args",
    "compute_dtype",
]


def check_rope_args(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> int:
    """Validate the arguments of :func:`apply_rope`; return ``n``, the number of pairs."""
    check_tensor("x", x)
    _check_tables(cos, sin)
    return _check_x("x", x, cos, sin)


def _check_tables(cos: torch.Tensor, sin: torch.Tensor) -> None:
    check_tensor("cos", cos)
    check_tensor("sin", sin)
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
    if not (cos.is_cpu and sin.is_cpu) and cos.device != sin.device:
        raise RopeValueError(f"cos is on {cos.device}, sin on {sin.device}: expected one device")


def _check_x(name: str, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> int:
    """``x`` against tables already checked by :func:`_check_tables`; returns ``n``."""
    if not x.is_floating_point():
        which = "" if name == "x" else f" (x is {name})"
        raise RopeValueError(
            f"x.dtype={x.dtype} is not allowed{which}: expected a floating dtype "
            "(float16, bfloat16, float32, float64)"
        )
    if x.ndim == 0:
        raise RopeValueError(f"{name} is a 0-d tensor: expected at least one (lane) dimension")
    if not (x.is_cpu and cos.is_cpu) and x.device != cos.device:
        raise RopeValueError(
            f"{name} is on {x.device}, cos on {cos.device}, sin on {sin.device}: expected one device"
        )
    n = cos.shape[-1]
    if 2 * n > x.shape[-1]:
        raise RopeValueError(
            f"cos has n={n} pairs, which need 2n={2 * n} lanes, but {name}.shape[-1]={x.shape[-1]}: "
            f"expected 2 * cos.shape[-1] <= {name}.shape[-1]"
        )
    # Right-aligned, each table dim must be 1 or equal to x's (extra leading dims: 1).
    # A plain loop: torch.broadcast_shapes costs more than a decode-size rotation.
    xshape, cshape = x.shape, cos.shape
    for i in range(2, len(cshape) + 1):
        size = cshape[-i]
        if size != 1 and (i > len(xshape) or size != xshape[-i]):
            raise RopeValueError(
                f"cos/sin of shape {tuple(cshape)} do not broadcast to {name}[..., :n] of shape "
                f"{(*xshape[:-1], n)}: expected a shape that broadcasts to it without growing "
                f"{name}"
            )
    return n


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise RopeValueError(f"{name}={value!r} is not allowed: expected a bool")
    return value


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


def _check_out(out: object, x: torch.Tensor, name: str, like: str) -> torch.Tensor:
    """``out`` must have ``x``'s shape, dtype and device, and distinct elements."""
    out = check_tensor(name, out)
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise RopeValueError(
            f"{name} of shape {tuple(out.shape)}, dtype {out.dtype} on {out.device} is not "
            f"allowed: expected {like}'s shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
        )
    if any(stride == 0 and size > 1 for size, stride in zip(out.shape, out.stride(), strict=True)):
        raise RopeValueError(
            f"{name} has stride 0 in a dim of size > 1 (an expanded tensor): expected a "
            "tensor whose elements do not share memory"
        )
    return out


def _check_separate(
    outs: Sequence[torch.Tensor],
    xs: Sequence[torch.Tensor],
    out_names: Sequence[str],
    x_names: Sequence[str],
) -> None:
    """Each ``outs[i]`` is ``xs[i]`` itself (in place) or shares no memory with any input
    or other output.

    Conservative (byte ranges, not elements) and cheap: each range is computed once, which
    matters at decode sizes, where these checks cost as much as the rotation.
    """
    if torch.compiler.is_compiling():
        return  # data pointers are not traceable
    x_spans = [_span(x) for x in xs]
    o_spans = [_span(o) for o in outs]
    for i, (out, (o0, o1)) in enumerate(zip(outs, o_spans, strict=True)):
        for j, (x, (x0, x1)) in enumerate(zip(xs, x_spans, strict=True)):
            if o0 < x1 and x0 < o1 and out.device == x.device:
                if i == j and out.data_ptr() == x.data_ptr() and out.stride() == x.stride():
                    continue
                raise RopeValueError(
                    f"{out_names[i]} overlaps {x_names[j]} in memory: expected separate "
                    f"memory, or {x_names[i]} itself for an in-place rotation"
                )
        for j in range(i + 1, len(outs)):
            p0, p1 = o_spans[j]
            if o0 < p1 and p0 < o1 and out.device == outs[j].device:
                raise RopeValueError(
                    f"{out_names[i]} overlaps {out_names[j]} in memory: expected outputs in "
                    "separate memory"
                )


def apply_rope(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool = False,
    backend: Backend | str = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate the first ``2n`` lanes of ``x`` (``n = cos.shape[-1]``) by the tables.

    Args:
        x: ``[*B, D]`` floating tensor (e.g. ``[b, h, s, d]``), any strides.
        cos, sin: ``[*C, n]`` tables (see :func:`ropekit.cos_sin`), broadcastable to
            ``x[..., :n]``; e.g. ``[s, n]`` or ``[b, 1, s, n]``.
        interleaved: pair lanes ``(2i, 2i+1)`` (GPT-J/Meta) instead of ``(i, i+n)``
            (GPT-NeoX/HF).
        backend: a :class:`ropekit.Backend` or its name (``"auto"``, ``"reference"``,
            ``"torch"``, ``"cpu"``, ``"compiled"``, ``"triton"``).
        out: optional ``[*B, D]`` tensor of ``x``'s dtype and device to write into
            (reuse a buffer, skip an allocation); ``x`` itself is allowed (in place),
            other memory overlapping ``x`` is not. ``out=`` is not differentiable: with an
            input that requires grad it raises, as torch's ``out=`` does.

    Returns:
        A tensor shaped and typed like ``x`` (``out`` if given). Arithmetic is float32 for
        half-precision ``x`` and ``x.dtype`` otherwise; lanes past ``2n`` are unchanged.
        Differentiable in ``x`` (and in the tables with ``backend="reference"``/``"auto"``).

    Example:
        >>> x = torch.tensor([1.0, 0.0, 5.0])
        >>> apply_rope(x, torch.tensor([0.0]), torch.tensor([1.0]))  # 90 degrees
        tensor([0., 1., 5.])
    """
    check_rope_args(x, cos, sin)
    _check_flag("interleaved", interleaved)
    outs = None
    if out is not None:
        outs = (_check_out(out, x, "out", "x"),)
        _check_separate(outs, (x,), ("out",), ("x",))
    return rotate((x,), cos, sin, interleaved=interleaved, backend=backend, outs=outs)[0]


def apply_rope_(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool = False,
    backend: Backend | str = "auto",
) -> torch.Tensor:
    """In-place :func:`apply_rope`: overwrite ``x`` with its rotation and return it.

    Saves the output allocation (at prefill sizes a fresh buffer costs page faults with
    glibc's default allocator). Autograd-safe: the gradient of a rotation needs only the
    tables, so a non-leaf ``x`` may be rotated in place inside a graph; a leaf that
    requires grad is refused, as torch refuses in-place ops on such leaves.

    Example:
        >>> x = torch.tensor([[1.0, 0.0]])
        >>> _ = apply_rope_(x, torch.tensor([0.0]), torch.tensor([1.0]))
        >>> x
        tensor([[0., 1.]])
    """
    check_rope_args(x, cos, sin)
    _check_flag("interleaved", interleaved)
    return rotate((x,), cos, sin, interleaved=interleaved, backend=backend, inplace=True)[0]


def _check_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    check_tensor("q", q)
    check_tensor("k", k)
    _check_tables(cos, sin)
    _check_x("q", q, cos, sin)
    _check_x("k", k, cos, sin)


def apply_rope_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool = False,
    backend: Backend | str = "auto",
    out: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys by the same tables in one call.

    Equal to ``(apply_rope(q, cos, sin), apply_rope(k, cos, sin))``, but the tables are
    converted once and, with the ``cpu`` backend, both tensors go through one kernel call
    (one parallel region; it matters at decode sizes, where the call costs more than the
    arithmetic). With grouped-query attention ``q`` and ``k`` may have different head
    counts.

    Args:
        q, k: ``[*B_q, D]`` and ``[*B_k, D']`` (e.g. ``[b, h_q, s, d]``, ``[b, h_k, s, d]``).
        cos, sin: ``[*C, n]`` tables broadcastable to both.
        interleaved, backend: as in :func:`apply_rope`.
        out: optional pair ``(q_out, k_out)`` to write into (see :func:`apply_rope`).

    Returns:
        ``(q_rot, k_rot)`` shaped and typed like ``q`` and ``k``.
    """
    _check_qk(q, k, cos, sin)
    _check_flag("interleaved", interleaved)
    outs = None
    if out is not None:
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise RopeValueError(
                f"out={type(out).__name__} is not allowed: expected a pair (q_out, k_out)"
            )
        outs = (_check_out(out[0], q, "out[0]", "q"), _check_out(out[1], k, "out[1]", "k"))
        _check_separate(outs, (q, k), ("out[0]", "out[1]"), ("q", "k"))
    q_rot, k_rot = rotate((q, k), cos, sin, interleaved=interleaved, backend=backend, outs=outs)
    return q_rot, k_rot


def apply_rope_qk_(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool = False,
    backend: Backend | str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-place :func:`apply_rope_qk`: overwrite ``q`` and ``k``; returns them.

    Autograd rules as in :func:`apply_rope_`.
    """
    _check_qk(q, k, cos, sin)
    _check_flag("interleaved", interleaved)
    if q is k:
        raise RopeValueError("q and k are the same tensor: it would be rotated twice")
    q_rot, k_rot = rotate((q, k), cos, sin, interleaved=interleaved, backend=backend, inplace=True)
    return q_rot, k_rot
