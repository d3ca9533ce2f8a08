"""cos/sin tables: ``cos(m * theta_i)``, ``sin(m * theta_i)`` for positions ``m``.

Notation: ``n`` pairs (length of ``inv_freq``), ``*P`` the shape of ``positions``.

Precision
---------
The angle ``m * theta_i`` grows with the position: at ``m = 1e6`` a float32 angle has
a rounding step of 0.0625 rad, so ``cos`` computed from a float32 angle is wrong in the
second decimal. ropekit forms the angle in float64 (exact for integer positions up to
2**53, relative error 2**-53), evaluates cos/sin in float64 (whose range reduction is
exact for such arguments) and rounds once to the requested dtype. The result is within
one rounding step of the output dtype of the exact value: < 1e-7 absolute for float32 at
``|m| <= 2**24`` and any ``theta <= 1e7`` (measured in ``tests/test_tables.py``).
"""

from __future__ import annotations

import torch

from ..errors import RopeValueError, check_float, check_float_dtype, check_tensor
from ..frequencies.base import MAX_EXACT_POSITION

__all__ = ["check_positions", "cos_sin"]


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def check_positions(positions: torch.Tensor) -> torch.Tensor:
    """Reject positions that cannot be turned into exact float64 angles.

    Integer and floating tensors are accepted; bool and complex are not. Value checks
    (|m| <= 2**53, finite) need the data, so they run only on CPU tensors outside of
    ``torch.compile``: on an accelerator they would force a device sync on every call.
    """
    check_tensor("positions", positions)
    if positions.dtype == torch.bool or positions.is_complex():
        raise RopeValueError(
            f"positions.dtype={positions.dtype} is not allowed: expected an integer or real floating dtype"
        )
    if positions.device.type != "cpu" or _is_compiling() or positions.numel() == 0:
        return positions
    if positions.is_floating_point():
        if not bool(torch.isfinite(positions).all()):
            raise RopeValueError("positions contains NaN or inf: expected finite positions")
    elif positions.dtype not in (torch.int64, torch.uint64):
        return positions  # 8/16/32-bit integers always fit in float64 exactly
    # max/min as Python numbers rather than abs() on the tensor: abs() of the most
    # negative int64 wraps around, and float() would round 2**53 + 1 down to 2**53.
    item = float if positions.is_floating_point() else int
    biggest = max(abs(item(positions.max())), abs(item(positions.min())))
    if biggest > MAX_EXACT_POSITION:
        raise RopeValueError(
            f"positions has |value| up to {biggest}: expected |position| <= 2**53, "
            "beyond which float64 cannot represent every position"
        )
    return positions


def cos_sin(
    inv_freq: torch.Tensor,
    positions: torch.Tensor,
    *,
    attention_factor: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for ``positions``.

    ``cos[..., i] = attention_factor * cos(m * inv_freq[i])`` (and likewise ``sin``),
    where ``m = positions[...]``.

    Args:
        inv_freq: ``[n]`` real tensor of inverse frequencies (any float dtype; used in float64).
        positions: ``[*P]`` integer or real tensor, negative allowed; its device is the
            output device.
        attention_factor: finite ``> 0`` multiplier folded into both tables (YaRN's
            attention temperature, LongRoPE's scale; 1 for plain RoPE).
        dtype: floating dtype of the returned tables.

    Returns:
        ``(cos, sin)``, each ``[*P, n]`` of ``dtype``.

    Example:
        >>> import math
        >>> c, s = cos_sin(torch.tensor([1.0]), torch.tensor([0, 1]))
        >>> torch.allclose(c[:, 0], torch.tensor([1.0, math.cos(1.0)]))
        True
    """
    check_tensor("inv_freq", inv_freq)
    if inv_freq.ndim != 1 or not inv_freq.is_floating_point():
        raise RopeValueError(
            f"inv_freq with shape {tuple(inv_freq.shape)} and dtype {inv_freq.dtype} is not "
            "allowed: expected a 1-D real floating tensor [n]"
        )
    check_positions(positions)
    attention_factor = check_float("attention_factor", attention_factor, positive=True)
    check_float_dtype("dtype", dtype)
    # float64 angle, float64 trig, one rounding at the end (see module docstring).
    freqs = inv_freq.to(device=positions.device, dtype=torch.float64)
    angle = positions.to(torch.float64).unsqueeze(-1) * freqs
    cos, sin = torch.cos(angle), torch.sin(angle)
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos.to(dtype), sin.to(dtype)
