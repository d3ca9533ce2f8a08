"""``nn.Module`` wrappers."""

from .rotary import RotaryEmbedding

__all__ = ["RotaryEmbedding"]
