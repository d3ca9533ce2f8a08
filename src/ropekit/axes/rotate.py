"""Rotating by N-axis tables: the existing rotation functions, composed.

Notation: ``d`` head dim, ``n`` bands, ``n_k`` the pairs of lane block ``k``.

``pairing="half"`` and ``"interleaved"`` are one call of :func:`ropekit.apply_rope` /
:func:`ropekit.apply_rope_qk` (``interleaved=`` set from the config): the tables are
ordinary ``[*, n]`` tables. ``pairing="blocks"`` (Gemma 4 vision) rotates each lane block
``[2 o_k, 2 o_k + 2 n_k)`` (``o_k`` the pairs before it) half-split with the table columns
``[o_k, o_k + n_k)``, one call per block on a lane slice, and concatenates; lanes past
``2n`` pass through. No new kernel: every backend serves every pairing.
"""

from __future__ import annotations

import torch

from ..apply.api import apply_rope, apply_rope_qk
from ..apply.dispatch import Backend
from ..errors import RopeValueError, check_tensor
from .config import AxesConfig

__all__ = ["apply_axes_rope", "apply_axes_rope_qk"]


def _check(config: AxesConfig, xs: tuple[torch.Tensor, ...], names: tuple[str, ...]) -> None:
    if not isinstance(config, AxesConfig):
        raise RopeValueError(f"config={config!r} is not allowed: expected a ropekit.axes.AxesConfig")
    for name, x in zip(names, xs, strict=True):
        check_tensor(name, x)
        if x.ndim < 1 or x.shape[-1] < 2 * config.n_pairs:
            raise RopeValueError(
                f"{name}.shape={tuple(x.shape)} is not allowed: expected a last dim >= "
                f"2 * {config.n_pairs} (the config's bands)"
            )


def _blocks(config: AxesConfig) -> list[tuple[int, int]]:
    """``(first pair, pairs)`` of each lane block."""
    out, start = [], 0
    for count in config.block_pairs or ():
        out.append((start, count))
        start += count
    return out


def _rotate_blocks(
    config: AxesConfig, xs: tuple[torch.Tensor, ...], cos: torch.Tensor, sin: torch.Tensor,
    **kw: object,
) -> tuple[torch.Tensor, ...]:
    n = config.n_pairs
    pieces: list[list[torch.Tensor]] = [[] for _ in xs]
    for start, count in _blocks(config):
        lanes = slice(2 * start, 2 * (start + count))
        c, s = cos[..., start : start + count], sin[..., start : start + count]
        if len(xs) == 1:
            rotated = (apply_rope(xs[0][..., lanes], c, s, interleaved=False, **kw),)
        else:
            rotated = apply_rope_qk(xs[0][..., lanes], xs[1][..., lanes], c, s,
                                    interleaved=False, **kw)  # fmt: skip
        for got, y in zip(pieces, rotated, strict=True):
            got.append(y)
    for got, x in zip(pieces, xs, strict=True):
        if x.shape[-1] > 2 * n:
            got.append(x[..., 2 * n :])
    return tuple(torch.cat(got, dim=-1) for got in pieces)


def apply_axes_rope(
    config: AxesConfig,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    layout: str = "bhsd",
    inverse: bool = False,
    backend: Backend | str = "auto",
) -> torch.Tensor:
    """Rotate ``x`` by tables of ``config`` (from :func:`ropekit.axes.cos_sin`).

    Args:
        config: the :class:`~ropekit.axes.AxesConfig` the tables were built for (its
            ``pairing`` says which lanes each band rotates).
        x: ``[b, h, s, d]`` (or any ``[*B, d]``), ``[b, s, h, d]`` or ``[t, h, d]`` as
            ``layout`` says, ``d >= 2n``.
        cos, sin: ``[*C, n]`` tables broadcastable to ``x[..., :n]`` (``[s, n]`` for
            ``bhsd``, ``[s, 1, n]`` for ``bshd``; ``[*P, h, n]`` mixed tables as they are).
        layout, inverse, backend: as in :func:`ropekit.apply_rope`.

    Returns:
        A tensor like ``x``; lanes past ``2n`` unchanged. Differentiable as
        :func:`ropekit.apply_rope`.
    """
    _check(config, (x,), ("x",))
    kw = dict(layout=layout, inverse=inverse, backend=backend)
    if config.pairing == "blocks":
        return _rotate_blocks(config, (x,), cos, sin, **kw)[0]
    return apply_rope(x, cos, sin, interleaved=config.interleaved, **kw)


def apply_axes_rope_qk(
    config: AxesConfig,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    layout: str = "bhsd",
    inverse: bool = False,
    backend: Backend | str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`apply_axes_rope` of queries and keys with the same tables, in one call of
    :func:`ropekit.apply_rope_qk` per lane block (one in all for ``half``/``interleaved``)."""
    _check(config, (q, k), ("q", "k"))
    kw = dict(layout=layout, inverse=inverse, backend=backend)
    if config.pairing == "blocks":
        yq, yk = _rotate_blocks(config, (q, k), cos, sin, **kw)
        return yq, yk
    return apply_rope_qk(q, k, cos, sin, interleaved=config.interleaved, **kw)
