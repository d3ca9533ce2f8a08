"""Unscaled RoPE frequencies: ``theta_i = theta ** (-2i / d)``.

Notation: ``d`` is the number of lanes RoPE sees (``rotary_dim`` or ``head_dim``),
``n = d // 2`` the number of rotated pairs, ``i`` in ``[0, n)`` the pair index.

Conventions
-----------
* Exponent ``2i / d`` (RoFormer eq. 15, Meta's ``arange(0, d, 2)[: d // 2] / d``).
  For even ``d`` this is bit-identical to the older "half index" formula
  ``arange(0, d // 2) / (d // 2)`` (see :func:`ropekit.spec.inv_freq_half_index`).
* Odd ``head_dim`` (no ``rotary_dim``): ``n = head_dim // 2`` pairs with exponent
  ``2i / head_dim``; the last lane has no partner and passes through unrotated. This is
  what Meta's slicing ``[: d // 2]`` gives and what the LLMs-from-scratch study settled
  on: the spectrum is the paper's one evaluated at the true ``d``, instead of the
  half-index formula, which silently treats the head as if it had ``d - 1`` lanes.
* ``rotary_dim`` (partial rotary, GPT-NeoX / Phi): must be even and ``<= head_dim``;
  the frequencies use ``d = rotary_dim`` and lanes ``[rotary_dim, head_dim)`` pass
  through.

Precision: computed in float64 and cast once to the requested dtype.
"""

from __future__ import annotations

import torch

from ..errors import RopeValueError, check_float, check_float_dtype, check_int

__all__ = ["MAX_EXACT_POSITION", "inv_freq", "rotary_lanes"]

#: Largest |position| for which float64 angles are exact integers times frequencies
#: (every integer up to 2**53 is representable in float64).
MAX_EXACT_POSITION = 2**53


def rotary_lanes(head_dim: int, rotary_dim: int | None = None) -> int:
    """Validate ``head_dim``/``rotary_dim`` and return ``d``, the lanes RoPE's formula sees.

    ``d = rotary_dim`` if given (even, ``2 <= rotary_dim <= head_dim``), else ``head_dim``
    (``>= 2``; may be odd, in which case its last lane is passed through). Returned as a
    Python ``int`` (numpy integers are accepted).
    """
    head_dim = check_int("head_dim", head_dim, minimum=2)
    if rotary_dim is None:
        return head_dim
    rotary_dim = check_int("rotary_dim", rotary_dim, minimum=2)
    if rotary_dim % 2:
        raise RopeValueError(
            f"rotary_dim={rotary_dim} is not allowed: expected an even int (lanes are rotated in pairs)"
        )
    if rotary_dim > head_dim:
        raise RopeValueError(
            f"rotary_dim={rotary_dim} is not allowed: expected an even int <= head_dim={head_dim}"
        )
    return rotary_dim


def _check_theta(theta: float) -> float:
    return check_float("theta", theta, positive=True)


def inv_freq(
    head_dim: int,
    theta: float = 10000.0,
    *,
    rotary_dim: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Inverse frequencies of the rotated pairs.

    ``inv_freq[i] = theta ** (-2 i / d)`` for ``i in [0, d // 2)``, ``d = rotary_dim or head_dim``.

    Args:
        head_dim: lanes per attention head (``>= 2``; odd allowed, last lane passes through).
        theta: the base (10000 in the paper; 500000 for Llama 3). Finite and ``> 0``.
        rotary_dim: optional even number of leading lanes to rotate (partial rotary).
        dtype: output dtype; the values are computed in float64 and rounded once.

    Returns:
        Tensor ``[d // 2]``.

    Example:
        >>> inv_freq(4, 100.0)
        tensor([1.0000, 0.1000], dtype=torch.float64)
    """
    d = rotary_lanes(head_dim, rotary_dim)
    theta = _check_theta(theta)
    check_float_dtype("dtype", dtype)
    exponent = torch.arange(0, d, 2, dtype=torch.float64)[: d // 2] / d
    # ``1 / theta**e`` rather than ``theta**-e``: the same rounding as Meta and HF use, so
    # ropekit's float64 values match theirs bit for bit when they are computed in float64.
    out = 1.0 / torch.pow(theta, exponent)
    # A finite theta > 0 can still leave float64's range: theta = 5e-324 underflows
    # theta ** e to 0 (frequency inf), theta = 1e308 can push 1 / theta ** e below the
    # smallest subnormal (frequency 0, a pair that never turns).
    # (Not re-checked inside torch.compile, where reading the values would break the
    # graph: the config that holds theta was built, and this check ran, outside it.)
    if not torch.compiler.is_compiling() and not bool((torch.isfinite(out) & (out > 0)).all()):
        raise RopeValueError(
            f"theta={theta!r} is not allowed for d={d} lanes: its inverse frequencies "
            "theta ** (-2i / d) leave float64's range (inf or 0); expected a theta whose "
            "powers theta ** (2i / d) are finite and > 0 (e.g. 1e-300 < theta < 1e300)"
        )
    return out.to(dtype)
