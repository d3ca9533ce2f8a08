"""The specification: RoPE straight from the paper, in float64, with no shortcuts.

RoFormer (Su et al., 2021), eq. 13-15: a ``d``-lane vector at position ``m`` is
multiplied by the block-diagonal matrix ``R_m = diag(R(m θ_0), …, R(m θ_{n-1}))`` with
``R(a) = [[cos a, -sin a], [sin a, cos a]]`` and ``θ_i = theta ** (-2i/d)``.

This module builds those matrices explicitly and multiplies by them. It is slow on
purpose: every fast path in ropekit is tested against it. (It is not the ``reference``
backend, :attr:`ropekit.Backend.REFERENCE`, which is the formula in plain torch ops.) Layouts differ only in which
lanes form pair ``i``: ``(2i, 2i+1)`` interleaved, ``(i, i+n)`` half-split; here that is
a permutation of the matrix, not a different formula.

Meta's complex formulation (``apply_complex``) is the same rotation written as the
product ``(x_{2i} + j x_{2i+1}) · e^{j m θ_i}``; the tests check the two agree.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "apply",
    "apply_complex",
    "inv_freq",
    "inv_freq_half_index",
    "pair_indices",
    "rotation_matrix",
]


def inv_freq(d: int, theta: float = 10000.0, n_pairs: int | None = None) -> torch.Tensor:
    """``θ_i = theta ** (-2i/d)`` for ``i < n_pairs`` (default ``d // 2``), from Python floats."""
    n = d // 2 if n_pairs is None else n_pairs
    return torch.tensor([theta ** (-2.0 * i / d) for i in range(n)], dtype=torch.float64)


def inv_freq_half_index(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The older formula ``1 / theta ** (arange(0, d // 2) / (d // 2))`` (float64).

    For comparison with :func:`ropekit.inv_freq` only. For even ``head_dim`` the two are
    equal bit for bit (``2i / d == i / (d / 2)`` exactly in floating point, because
    ``d / 2`` is an exact halving); for odd ``head_dim`` this one uses exponent
    ``i / ((d - 1) / 2)``, the spectrum of a ``d - 1`` lane head, so its frequencies are
    lower than the paper's.
    """
    n = head_dim // 2
    return 1.0 / torch.pow(theta, torch.arange(n, dtype=torch.float64) / n)


def pair_indices(n: int, interleaved: bool) -> list[tuple[int, int]]:
    """The two lanes of each pair ``i < n``: ``(2i, 2i+1)`` or ``(i, i+n)``."""
    return [(2 * i, 2 * i + 1) if interleaved else (i, i + n) for i in range(n)]


def rotation_matrix(
    position: float, freqs: torch.Tensor, width: int, interleaved: bool
) -> torch.Tensor:
    """``[width, width]`` float64 matrix rotating each pair by ``position * freqs[i]``.

    Lanes outside the ``len(freqs)`` pairs keep a 1 on the diagonal (pass through).
    """
    r = torch.eye(width, dtype=torch.float64)
    for i, (p, q) in enumerate(pair_indices(len(freqs), interleaved)):
        a = float(position) * float(freqs[i])
        c, s = math.cos(a), math.sin(a)
        r[p, p], r[p, q] = c, -s
        r[q, p], r[q, q] = s, c
    return r


def apply(
    x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, *, interleaved: bool = False
) -> torch.Tensor:
    """Rotate ``x`` ``[..., s, D]`` at ``positions`` ``[s]`` by explicit matrices (float64).

    ``y[..., t, :] = R_{positions[t]} @ x[..., t, :]``.
    """
    x = x.to(torch.float64)
    mats = torch.stack(
        [rotation_matrix(float(m), freqs, x.shape[-1], interleaved) for m in positions.tolist()]
    )
    return torch.einsum("tij,...tj->...ti", mats, x)


def apply_complex(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Meta's formulation (interleaved pairs, even ``D == 2 * len(freqs)``), in complex128.

    ``x[..., s, D]`` is viewed as ``D/2`` complex numbers and multiplied by
    ``exp(j * positions[t] * freqs)``.
    """
    z = torch.view_as_complex(x.to(torch.float64).unflatten(-1, (-1, 2)).contiguous())
    angle = positions.to(torch.float64)[:, None] * freqs.to(torch.float64)
    rot = torch.polar(torch.ones_like(angle), angle)
    return torch.view_as_real(z * rot).flatten(-2)
