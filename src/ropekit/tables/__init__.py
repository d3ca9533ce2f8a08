"""cos/sin tables in float64 (angle addition: m = hi + lo), rounded once; see `cos_sin`."""

from .cos_sin import BLOCK, check_positions, cos_sin, cos_sin_range, fine_table

__all__ = ["BLOCK", "check_positions", "cos_sin", "cos_sin_range", "fine_table"]
