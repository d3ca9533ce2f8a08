"""ropekit: exact, fast, verified Rotary Position Embedding (RoPE) for PyTorch.

Notation used in every docstring: ``b`` batch, ``h`` heads (``h_q``/``h_k`` for queries
and keys), ``s`` sequence length, ``d`` head dim, ``n`` rotated pairs (``d // 2`` or
``rotary_dim // 2``), ``*P`` the shape of a positions tensor.
"""

from . import reference
from .apply import apply_rope
from .config import RopeConfig
from .errors import RopeValueError
from .frequencies import SCALINGS, Scaling, inv_freq, inv_freq_half_index
from .layout import to_half_layout, to_interleaved_layout
from .modules import RotaryEmbedding
from .presets import PRESETS, preset
from .tables import cos_sin

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SCALINGS",
    "RopeConfig",
    "RopeValueError",
    "RotaryEmbedding",
    "Scaling",
    "apply_rope",
    "cos_sin",
    "inv_freq",
    "inv_freq_half_index",
    "preset",
    "reference",
    "to_half_layout",
    "to_interleaved_layout",
]
