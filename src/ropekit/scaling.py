"""Context-extension ("scaling") methods, one frozen dataclass each.

``ropekit.scaling.Yarn(factor=4.0, original_max_position_embeddings=32768)`` and so on;
:class:`Plain` is plain RoPE (what ``RopeConfig(scaling=None)`` means), :class:`Scaling`
the abstract base, :data:`SCALINGS` the registry by name and :func:`scaling_from_dict`
the inverse of :meth:`Scaling.to_dict`. The formulas are in
:mod:`ropekit.frequencies.scaling`, where the classes are defined.
"""

from .frequencies.scaling import (
    MULTI_AXIS_KEYS,
    SCALINGS,
    Dynamic,
    Linear,
    Llama3,
    LongRope,
    Ntk,
    Plain,
    Proportional,
    Scaling,
    Yarn,
    register,
    scaling_from_dict,
)

__all__ = [
    "MULTI_AXIS_KEYS",
    "SCALINGS",
    "Dynamic",
    "Linear",
    "Llama3",
    "LongRope",
    "Ntk",
    "Plain",
    "Proportional",
    "Scaling",
    "Yarn",
    "register",
    "scaling_from_dict",
]
