"""Applying the rotation.

Imports flow one way: ``api`` (the public functions) → ``checks`` (the one argument
checker) and ``dispatch`` (the kernel protocol, the backend registry and the shared
autograd Function in ``autograd``) → the kernels: ``formula`` (the torch formula, the
``reference`` and ``torch`` backends), ``cpu/`` (the C kernel), ``compiled``,
``triton/`` (kernel, launch planning, torch op). Kernel backends are imported on first
use.
"""

from .api import apply_rope, apply_rope_qk
from .checks import LAYOUTS
from .dispatch import Backend
from .formula import compute_dtype

__all__ = [
    "LAYOUTS",
    "Backend",
    "apply_rope",
    "apply_rope_qk",
    "compute_dtype",
]
