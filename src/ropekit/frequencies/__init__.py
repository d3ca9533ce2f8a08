"""Frequency math: the unscaled spectrum and the context-extension methods."""

from .base import MAX_EXACT_POSITION, inv_freq, rotary_lanes
from .scaling import (
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
from .temperature import Llama4Temperature

__all__ = [
    "MAX_EXACT_POSITION",
    "MULTI_AXIS_KEYS",
    "SCALINGS",
    "Dynamic",
    "Linear",
    "Llama3",
    "Llama4Temperature",
    "LongRope",
    "Ntk",
    "Plain",
    "Proportional",
    "Scaling",
    "Yarn",
    "inv_freq",
    "register",
    "rotary_lanes",
    "scaling_from_dict",
]
