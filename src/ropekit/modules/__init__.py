"""``nn.Module`` wrappers."""

from .rotary import RotaryEmbedding, default_positions

__all__ = ["RotaryEmbedding", "default_positions"]
