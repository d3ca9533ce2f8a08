"""Applying the rotation: validation, the public functions and their backends."""

from .backends import Backend
from .rotate import (
    apply_rope,
    apply_rope_,
    apply_rope_qk,
    apply_rope_qk_,
    check_rope_args,
    compute_dtype,
)

__all__ = [
    "Backend",
    "apply_rope",
    "apply_rope_",
    "apply_rope_qk",
    "apply_rope_qk_",
    "check_rope_args",
    "compute_dtype",
]
