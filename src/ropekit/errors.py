"""Errors raised by ropekit, and the small checks that raise them.

Every bad input ends in :class:`RopeValueError`, a subclass of :class:`ValueError`,
whose message names the offending argument, the value received and what is allowed.

What counts as a number: Python ints and floats and the numbers that register
themselves with :mod:`numbers` (numpy's integer and floating scalars, ``np.int64(128)``,
``np.float32(1e4)``), returned as Python ``int`` / ``float``. ``bool`` (and numpy's
``bool_``) is refused although Python treats it as an int: ``head_dim=True`` is a
mistake, never a head size. Strings are refused even when they spell a number
(``"4096"``): a config that stores numbers as strings was written wrong, and guessing
how to parse it (``"0.5"``, ``"1e4"``, ``"0x10"``) would hide that.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import torch

__all__ = ["RopeValueError"]


class RopeValueError(ValueError):
    """A bad argument to a ropekit function (subclass of :class:`ValueError`)."""


def _fail(name: str, value: Any, allowed: str) -> RopeValueError:
    return RopeValueError(f"{name}={value!r} is not allowed: expected {allowed}")


def _is_bool(value: Any) -> bool:
    # numpy's bool_ is not a numbers.Integral, but say so explicitly: it must never pass
    # as a number, whatever numpy registers in the future.
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer ropekit accepts (int, numpy integer; not bool)."""
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number ropekit accepts (int, float, numpy scalar; not
    bool, not str)."""
    return isinstance(value, numbers.Real) and not _is_bool(value)


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as a Python ``int`` if it is a true integer >= ``minimum``.

    Accepts ``int`` and numpy integers; refuses bools, floats (``4096.0``) and strings.
    """
    if type(value) is int and (minimum is None or value >= minimum):
        return value  # the common case, first: this runs on every call at decode sizes
    if isinstance(value, torch.SymInt) or torch.compiler.is_compiling():
        # Under torch.compile(dynamic=True) an int argument arrives as a symbol: comparing
        # or indexing it here would specialise (or break) the graph. It was an int when
        # the caller passed it; its range is checked where the value is used.
        return value  # type: ignore[return-value]
    allowed = "an int" + (f" >= {minimum}" if minimum is not None else "")
    if not is_int(value):
        raise _fail(name, value, allowed)
    v = operator.index(value)
    if minimum is not None and v < minimum:
        raise _fail(name, value, allowed)
    return v


def check_float(
    name: str, value: Any, *, positive: bool = False, minimum: float | None = None
) -> float:
    """Return ``float(value)`` for a finite real number, optionally > 0 or >= ``minimum``.

    Accepts ints, floats and numpy scalars; refuses bools, strings, NaN and infinities.
    """
    if torch.compiler.is_compiling():
        # Under torch.compile(dynamic=True) Python floats can arrive as symbols, on which
        # math.isfinite would break the graph; every such value was checked when the
        # config that holds it was built, outside the compiled region.
        return value
    if not is_real(value):
        raise _fail(name, value, "a real number")
    try:
        v = float(value)
    except OverflowError:  # an int beyond the float range
        raise _fail(name, value, "a finite number") from None
    if not math.isfinite(v):
        raise _fail(name, value, "a finite number")
    if positive and v <= 0:
        raise _fail(name, value, "a finite number > 0")
    if minimum is not None and v < minimum:
        raise _fail(name, value, f"a finite number >= {minimum}")
    return v


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (``"false"``, ``0`` and numpy bools are refused)."""
    if not isinstance(value, bool):
        raise _fail(name, value, "a bool (true or false)")
    return value


def check_float_dtype(name: str, dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise _fail(name, dtype, "a floating torch.dtype (float16, bfloat16, float32, float64)")
    return dtype


def check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise RopeValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def in_version_window(version: str, low: str, high: str) -> bool:
    """Whether ``low <= version < high`` (PEP 440); False for an unparsable version.

    For the integrations, which patch peers' code and accept only the releases they were
    tested on. ``packaging`` is imported here, not at import time: it comes with the
    peers (transformers, diffusers), not with ropekit.
    """
    from packaging.version import InvalidVersion, Version

    try:
        return Version(low) <= Version(version) < Version(high)
    except InvalidVersion:
        return False
