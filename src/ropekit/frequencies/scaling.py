"""Context-extension ("scaling") methods: how each one changes the frequencies.

Every method is a small frozen dataclass that validates its own parameters and maps
``(head_dim, theta, rotary_dim, seq_len)`` to ``(inv_freq, attention_factor)`` through
one signature, :meth:`Scaling.frequencies`. They are registered by name in
:data:`SCALINGS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import RopeValueError
from .base import inv_freq as base_inv_freq

__all__ = ["SCALINGS", "Scaling", "register", "scaling_from_dict"]

#: name -> Scaling subclass
SCALINGS: dict[str, type[Scaling]] = {}


def register(cls: type[Scaling]) -> type[Scaling]:
    """Class decorator adding a :class:`Scaling` subclass to :data:`SCALINGS` under ``cls.name``."""
    if cls.name in SCALINGS:
        raise RopeValueError(f"scaling name {cls.name!r} is already registered")
    SCALINGS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Scaling:
    """Base of all scaling methods; on its own it is plain RoPE (no scaling).

    Subclasses override :meth:`frequencies` and, if their tables change with the
    requested length, set ``depends_on_seq_len = True``.
    """

    name: ClassVar[str] = "default"
    depends_on_seq_len: ClassVar[bool] = False

    def frequencies(
        self, head_dim: int, theta: float, rotary_dim: int | None, seq_len: int | None
    ) -> tuple[torch.Tensor, float]:
        """Return ``(inv_freq [d // 2] float64, attention_factor)`` for this method."""
        return base_inv_freq(head_dim, theta, rotary_dim=rotary_dim), 1.0

    def to_dict(self) -> dict[str, Any]:
        """``{"rope_type": name, **parameters}`` (Hugging Face ``rope_parameters`` style)."""
        return {"rope_type": self.name, **dataclasses.asdict(self)}


register(Scaling)


def scaling_from_dict(params: dict[str, Any]) -> Scaling:
    """Build a registered method from ``{"rope_type": name, **parameters}``."""
    params = dict(params)
    name = params.pop("rope_type", None) or params.pop("type", None)
    if name not in SCALINGS:
        raise RopeValueError(
            f"rope_type={name!r} is not allowed: expected one of {sorted(SCALINGS)}"
        )
    cls = SCALINGS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise RopeValueError(
            f"unknown parameter(s) {unknown} for rope_type={name!r}: expected some of {sorted(known)}"
        )
    return cls(**params)
