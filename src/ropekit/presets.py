"""Named configurations of well-known model families.

Values are taken from the models' published ``config.json`` files.
"""

from __future__ import annotations

from .config import RopeConfig
from .errors import RopeValueError

__all__ = ["PRESETS", "preset"]

#: name -> RopeConfig
PRESETS: dict[str, RopeConfig] = {
    # Llama 2: head_dim 4096/32, theta 1e4, 4k context; Meta's checkpoints are interleaved,
    # the Hugging Face conversion is half-split (see ropekit.to_half_layout).
    "llama-2-7b": RopeConfig(head_dim=128, theta=10000.0, max_position=4096),
    # Llama 3 (8B): theta 5e5, 8k context.
    "llama-3-8b": RopeConfig(head_dim=128, theta=500000.0, max_position=8192),
}


def preset(name: str) -> RopeConfig:
    """The :class:`RopeConfig` registered as ``name`` (see :data:`PRESETS`)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise RopeValueError(f"preset={name!r} is not allowed: expected one of {sorted(PRESETS)}") from None
