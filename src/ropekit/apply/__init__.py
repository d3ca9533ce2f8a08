"""Applying the rotation: validation, the torch path (fast backends join here)."""

from .rotate import apply_rope, check_rope_args, compute_dtype

__all__ = ["apply_rope", "check_rope_args", "compute_dtype"]
