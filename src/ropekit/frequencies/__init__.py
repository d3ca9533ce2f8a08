"""Frequency math: the unscaled spectrum (``base``), the context-extension methods
(``scaling``, public as :mod:`ropekit.scaling`) and the Llama 4 attention temperature."""

from .base import MAX_EXACT_POSITION, inv_freq, rotary_lanes
from .temperature import Llama4Temperature

__all__ = ["MAX_EXACT_POSITION", "Llama4Temperature", "inv_freq", "rotary_lanes"]
