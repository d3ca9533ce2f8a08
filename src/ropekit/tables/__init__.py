"""cos/sin tables computed exactly (float64 angles, one rounding)."""

from .cos_sin import check_positions, cos_sin

__all__ = ["check_positions", "cos_sin"]
