"""The public rotation functions.

Notation: ``b`` batch, ``h`` heads (``h_q``/``h_k``), ``s`` sequence length, ``t`` packed
tokens, ``d`` head dim, ``n`` rotated pairs (``2n <= d``), ``R`` rows of a cos/sin table.

Pair layouts (both rotate pair ``i`` by the angle behind ``cos[..., i]``):

* half (``interleaved=False``; GPT-NeoX, Hugging Face ``rotate_half``): lane ``i`` is
  paired with lane ``i + n``::

      y[i]     = x[i] cos_i - x[i+n] sin_i
      y[i + n] = x[i+n] cos_i + x[i] sin_i

* interleaved (``interleaved=True``; GPT-J, Meta's complex form): lane ``2i`` is paired
  with ``2i + 1``, i.e. ``(x[2i] + j x[2i+1]) * (cos_i + j sin_i)``.

Lanes ``[2n, d)`` are copied through bit for bit. ``inverse=True`` rotates by ``-θ``
(``sin`` negated), undoing a rotation exactly in real arithmetic.

Tensor layouts (``layout=``, never guessed from shapes): ``"bhsd"`` ``[b, h, s, d]`` (the
default; any ``[*B, d]`` with broadcast tables), ``"bshd"`` ``[b, s, h, d]`` (flash-attn,
Meta, torchtune) and ``"thd"`` packed ``[t, h, d]`` (varlen, with ``cu_seqlens``).

Angles come either as tables broadcast to ``x[..., :n]`` (no positions argument), or as
an ``[R, n]`` table read at each token's position, when ``positions``, ``offset`` or
``cu_seqlens`` is given (:mod:`ropekit.positions` has the rule). The Triton backend reads
those rows inside the kernel; the others slice (int offset) or gather them first.

Every function takes ``backend`` (:class:`ropekit.Backend` or its string value; see
:mod:`ropekit.apply.dispatch`): ``"auto"`` (the default) picks the fastest for the
tensors' device. All compute the same rotation: products and sums in float32 for
half-precision inputs (in ``x.dtype`` otherwise), rounded once to ``x.dtype``.

The input is never modified, except with ``inplace=True``, which overwrites it and
returns it. In place is autograd-safe, views included: the gradient of a rotation needs
only the tables. ``out=`` writes a separate buffer (not differentiable, as torch's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import RopeValueError, check_int
from .checks import check_call, from_canonical
from .dispatch import Backend, rotate

__all__ = ["apply_rope", "apply_rope_qk", "apply_rotary_pos_emb", "hf_halves"]

_Pos = torch.Tensor | None
_Off = int | torch.Tensor | None


def apply_rope(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    positions: _Pos = None,
    offset: _Off = None,
    cu_seqlens: _Pos = None,
    layout: str = "bhsd",
    interleaved: bool = False,
    inverse: bool = False,
    backend: Backend | str = "auto",
    out: torch.Tensor | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Rotate the first ``2n`` lanes of ``x`` (``n = cos.shape[-1]``) by the tables.

    Args:
        x: ``[b, h, s, d]`` (or any ``[*B, d]``), ``[b, s, h, d]`` or ``[t, h, d]`` as
            ``layout`` says; float16/bfloat16/float32/float64, any strides.
        cos, sin: ``[*C, n]`` tables broadcastable to ``x[..., :n]`` (e.g. ``[s, n]``
            for ``bhsd``, ``[s, 1, n]`` for ``bshd``), from :func:`ropekit.cos_sin`; or,
            with ``positions``/``offset``/``cu_seqlens``, ``[R, n]`` tables indexed by
            position.
        positions: integer ``[s]``, ``[b, s]`` or (``thd``) ``[t]`` positions.
        offset: int, or integer ``[b]`` (one per batch row) / ``[#docs]`` (with
            ``cu_seqlens``) added to the positions (tokens already in the KV cache).
        cu_seqlens: ``thd`` only: int ``[#docs + 1]`` document boundaries; positions
            restart at 0 in every document.
        layout: ``"bhsd"``, ``"bshd"`` or ``"thd"``.
        interleaved: pair lanes ``(2i, 2i+1)`` (GPT-J/Meta) instead of ``(i, i+n)``.
        inverse: rotate by ``-θ`` (the conjugate rotation; undoes a rotation).
        backend: a :class:`ropekit.Backend` or its name.
        out: optional separate tensor like ``x`` to write into. Memory overlapping ``x``
            (``x`` itself included: use ``inplace=True``), the tables or itself is
            refused. Not differentiable (as torch's ``out=``).
        inplace: overwrite ``x`` with its rotation and return it (saves the output
            allocation; not together with ``out``). Autograd-safe, also for views (a
            head slice of a fused ``[b, s, 3, h, d]`` buffer): the base tensor gets the
            rotation's gradient in the view's lanes and the identity elsewhere. A leaf
            that requires grad (or a view of one) is refused, as torch refuses in-place
            ops on such leaves; so is a tensor whose elements share memory (``expand``),
            which cannot be written element by element.

    Returns:
        A tensor shaped and typed like ``x`` (``out`` if given, ``x`` itself with
        ``inplace=True``); lanes past ``2n`` unchanged. Differentiable in ``x`` (and in
        the tables with ``backend="reference"`` or ``"auto"``).

    Example:
        >>> x = torch.tensor([1.0, 0.0, 5.0])
        >>> apply_rope(x, torch.tensor([0.0]), torch.tensor([1.0]))  # 90 degrees
        tensor([0., 1., 5.])
        >>> apply_rope(torch.tensor([0.0, 1.0]), torch.tensor([0.0]), torch.tensor([1.0]),
        ...            inverse=True)
        tensor([1., 0.])
        >>> x = torch.tensor([[1.0, 0.0]])
        >>> _ = apply_rope(x, torch.tensor([0.0]), torch.tensor([1.0]), inplace=True)
        >>> x
        tensor([[0., 1.]])
    """
    call = check_call(
        (x,), ("x",), cos, sin, positions=positions, offset=offset, cu_seqlens=cu_seqlens,
        layout=layout, interleaved=interleaved, inverse=inverse,
        out=None if out is None else (out,), inplace=inplace,
    )  # fmt: skip
    (y,) = rotate(call, backend)
    if inplace:
        return x
    return out if out is not None else from_canonical(y, layout)


def apply_rope_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    positions: _Pos = None,
    offset: _Off = None,
    cu_seqlens: _Pos = None,
    layout: str = "bhsd",
    interleaved: bool = False,
    inverse: bool = False,
    backend: Backend | str = "auto",
    out: Sequence[torch.Tensor] | None = None,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys by the same tables in one call.

    Equal to ``(apply_rope(q, ...), apply_rope(k, ...))``, but the arguments are checked
    once and the fast backends rotate both in one kernel call (``cpu``: one parallel
    region; ``triton``: one launch), which matters at decode sizes, where a call costs
    more than its arithmetic. With grouped-query attention ``h_q != h_k``.

    Args:
        q, k: ``[b, h_q, s, d]``/``[b, h_k, s, d]`` (or the ``bshd``/``thd`` forms), one
            device; equal ``b`` and ``s`` (or ``t``) when positions are given.
        cos, sin, positions, offset, cu_seqlens, layout, interleaved, inverse, backend:
            as in :func:`apply_rope`.
        out: optional pair ``(q_out, k_out)`` of separate buffers to write into (see
            :func:`apply_rope`).
        inplace: overwrite ``q`` and ``k`` and return them, autograd-safe for views as
            in :func:`apply_rope`. ``q`` and ``k`` must not share memory (``k = q[:]``
            would be rotated twice); disjoint slices of one fused ``qkv`` buffer are fine.

    Returns:
        ``(q_rot, k_rot)`` shaped and typed like ``q`` and ``k`` (``out`` if given,
        ``(q, k)`` themselves with ``inplace=True``).

    Example:
        >>> import ropekit
        >>> cos, sin = ropekit.cos_sin(ropekit.inv_freq(8), torch.arange(32))  # [R, n]
        >>> q, k = torch.randn(3, 4, 2, 8), torch.randn(3, 1, 2, 8)        # [t, h, d]
        >>> cu = torch.tensor([0, 2, 3])                                   # docs of 2 and 1
        >>> q2, k2 = apply_rope_qk(q, k, cos, sin, cu_seqlens=cu, layout="thd")
    """
    if out is not None and (not isinstance(out, (tuple, list)) or len(out) != 2):
        raise RopeValueError(
            f"out={type(out).__name__} is not allowed: expected a pair (q_out, k_out)"
        )
    call = check_call(
        (q, k), ("q", "k"), cos, sin, positions=positions, offset=offset,
        cu_seqlens=cu_seqlens, layout=layout, interleaved=interleaved, inverse=inverse, out=out,
        inplace=inplace,
    )  # fmt: skip
    yq, yk = rotate(call, backend)
    if inplace:
        return q, k
    if out is not None:
        return out[0], out[1]
    if layout == "bhsd":  # (canonical already: the common case, without two calls)
        return yq, yk
    return from_canonical(yq, layout), from_canonical(yk, layout)


def apply_rotary_pos_emb(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    unsqueeze_dim: int = 1,
    *,
    backend: Backend | str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for Hugging Face's ``apply_rotary_pos_emb`` (Llama and the models that
    copy it): ``q * cos + rotate_half(q) * sin``, likewise ``k``. The signature is
    transformers 5's, ``(q, k, cos, sin, unsqueeze_dim=1)`` (4.x had an unused
    ``position_ids`` before ``unsqueeze_dim``: pass ``unsqueeze_dim`` by keyword).

    Args:
        q, k: ``[b, h, s, d]`` (``unsqueeze_dim=1``) or ``[b, s, h, d]``
            (``unsqueeze_dim=2``).
        cos, sin: Hugging Face's tables ``[b, s, 2n]`` (or ``[s, 2n]``): both halves of
            the last dim hold the same ``n`` values (``cat((freqs, freqs), -1)``), so only
            the first half is read. ``2n <= d``: lanes past ``2n`` pass through
            (Hugging Face requires ``2n == d``).
        unsqueeze_dim: where the heads dim goes in the tables, 1 or 2, as in Hugging Face.
        backend: as in :func:`apply_rope` (keyword only; not in Hugging Face's signature).

    Returns:
        ``(q_embed, k_embed)`` in the dtypes of ``q`` and ``k`` (Hugging Face's result
        dtype is the promotion of ``q`` and the tables; with tables in ``q``'s dtype, as
        its rotary modules return them, the two agree).
    """
    c, s = hf_halves(cos, sin, unsqueeze_dim)
    return apply_rope_qk(q, k, c, s, backend=backend)


def hf_halves(
    cos: object, sin: object, unsqueeze_dim: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first halves of Hugging Face tables ``[b, s, 2n]`` / ``[s, 2n]``, with a size-1
    heads dim where ``unsqueeze_dim`` puts it: ``[b, 1, s, n]`` / ``[b, s, 1, n]`` (or
    ``[s, n]`` / ``[s, 1, n]``), checked. One ``as_strided`` view each: at decode sizes a
    slice plus an unsqueeze cost more than the rest of the argument checks."""
    if type(unsqueeze_dim) is not int or (unsqueeze_dim != 1 and unsqueeze_dim != 2):
        check_int("unsqueeze_dim", unsqueeze_dim)
        raise RopeValueError(
            f"unsqueeze_dim={unsqueeze_dim} is not allowed: expected 1 ([b, h, s, d] inputs) "
            "or 2 ([b, s, h, d] inputs)"
        )
    return _hf_half("cos", cos, unsqueeze_dim), _hf_half("sin", sin, unsqueeze_dim)


def _hf_half(name: str, t: object, unsqueeze_dim: int) -> torch.Tensor:
    if type(t) is not torch.Tensor and not isinstance(t, torch.Tensor):
        t = None
    shape = None if t is None else t.shape
    if shape is None or (len(shape) != 3 and len(shape) != 2) or shape[-1] % 2:
        got = type(t).__name__ if shape is None else tuple(shape)
        raise RopeValueError(
            f"{name} of shape {got} is not allowed: expected Hugging Face's [b, s, 2n] "
            "or [s, 2n] table (an even last dim: two copies of n values)"
        )
    stride = t.stride()
    n = shape[-1] // 2
    if len(shape) == 3:  # [b, s, n] -> [b, 1, s, n] or [b, s, 1, n]
        if unsqueeze_dim == 1:
            return t.as_strided((shape[0], 1, shape[1], n), (stride[0], 0, stride[1], stride[2]))
        return t.as_strided((shape[0], shape[1], 1, n), (stride[0], stride[1], 0, stride[2]))
    if unsqueeze_dim == 2:  # [s, n] -> [s, 1, n]
        return t.as_strided((shape[0], 1, n), (stride[0], 0, stride[1]))
    return t.narrow(-1, 0, n)  # [s, n]: broadcasts over [b, h, s, d] as it is
