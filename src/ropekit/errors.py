"""Errors raised by ropekit, and the small checks that raise them.

Every bad input ends in :class:`RopeValueError`, a subclass of :class:`ValueError`,
whose message names the offending argument, the value received and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["RopeValueError"]


class RopeValueError(ValueError):
    """A bad argument to a ropekit function (subclass of :class:`ValueError`)."""


def _fail(name: str, value: Any, allowed: str) -> RopeValueError:
    return RopeValueError(f"{name}={value!r} is not allowed: expected {allowed}")


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` if it is a true integer (bools are rejected) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, value, "an int" + (f" >= {minimum}" if minimum is not None else ""))
    if minimum is not None and value < minimum:
        raise _fail(name, value, f"an int >= {minimum}")
    return value


def check_float(
    name: str, value: Any, *, positive: bool = False, minimum: float | None = None
) -> float:
    """Return ``float(value)`` for a finite real number, optionally > 0 or >= ``minimum``."""
    if torch.compiler.is_compiling():
        # Under torch.compile(dynamic=True) Python floats can arrive as symbols, on which
        # math.isfinite would break the graph; every such value was checked when the
        # config that holds it was built, outside the compiled region.
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, value, "a real number")
    v = float(value)
    if not math.isfinite(v):
        raise _fail(name, value, "a finite number")
    if positive and v <= 0:
        raise _fail(name, value, "a finite number > 0")
    if minimum is not None and v < minimum:
        raise _fail(name, value, f"a finite number >= {minimum}")
    return v


def check_float_dtype(name: str, dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise _fail(name, dtype, "a floating torch.dtype (float16, bfloat16, float32, float64)")
    return dtype


def check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise RopeValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value
