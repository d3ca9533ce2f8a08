"""Frequency math: the unscaled spectrum and the context-extension methods."""

from .base import MAX_EXACT_POSITION, inv_freq, inv_freq_half_index, rotary_lanes
from .scaling import (
    MULTI_AXIS_KEYS,
    SCALINGS,
    Dynamic,
    Linear,
    Llama3,
    LongRope,
    Ntk,
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
    "Proportional",
    "Scaling",
    "Yarn",
    "inv_freq",
    "inv_freq_half_index",
    "register",
    "rotary_lanes",
    "scaling_from_dict",
]
