"""ropekit: exact, fast, verified Rotary Position Embedding (RoPE) for PyTorch.

Notation used in every docstring: ``b`` batch, ``h`` heads (``h_q``/``h_k`` for queries
and keys), ``s`` sequence length, ``t`` packed tokens (``[t, h, d]``), ``d`` head dim, ``n`` rotated
pairs (``d // 2`` or ``rotary_dim // 2``), ``R`` rows of a position-indexed cos/sin table,
``*P`` the shape of a positions tensor.
"""

from . import reference
from .apply import (
    Backend,
    apply_rope,
    apply_rope_,
    apply_rope_qk,
    apply_rope_qk_,
    apply_rotary_pos_emb,
)
from .config import RopeConfig
from .errors import RopeValueError
from .frequencies import (
    SCALINGS,
    Dynamic,
    Linear,
    Llama3,
    LongRope,
    Ntk,
    Proportional,
    Scaling,
    Yarn,
    inv_freq,
    inv_freq_half_index,
    scaling_from_dict,
)
from .layout import to_half_layout, to_interleaved_layout
from .modules import RotaryEmbedding
from .presets import PRESETS, preset
from .tables import cos_sin

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SCALINGS",
    "Backend",
    "Dynamic",
    "Linear",
    "Llama3",
    "LongRope",
    "Ntk",
    "Proportional",
    "RopeConfig",
    "RopeValueError",
    "RotaryEmbedding",
    "Scaling",
    "Yarn",
    "apply_rope",
    "apply_rope_",
    "apply_rope_qk",
    "apply_rope_qk_",
    "apply_rotary_pos_emb",
    "cos_sin",
    "inv_freq",
    "inv_freq_half_index",
    "preset",
    "reference",
    "scaling_from_dict",
    "to_half_layout",
    "to_interleaved_layout",
]
