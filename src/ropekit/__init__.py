"""ropekit: exact, fast, verified Rotary Position Embedding (RoPE) for PyTorch.

The top level holds what a newcomer needs: :class:`RopeConfig`, :class:`RotaryEmbedding`,
:func:`apply_rope` / :func:`apply_rope_qk` (``inplace=True`` to rotate in place),
:func:`cos_sin` and :func:`inv_freq`, :func:`preset` / :data:`PRESETS`, :class:`Backend`,
:class:`RopeValueError` and :data:`LAYOUTS`. The rest lives in submodules:
:mod:`ropekit.scaling` (the context-extension methods), :mod:`ropekit.spec` (the float64
specification everything is tested against), :mod:`ropekit.positions`,
:mod:`ropekit.hf` (Hugging Face configs, tables and patching), :mod:`ropekit.layout`
(converting weights between the pair layouts), :mod:`ropekit.axes` (N-axis RoPE:
M-RoPE, 2-D vision and 3-D video layouts) and :mod:`ropekit.diffusers` (patching diffusers
transformers; imports diffusers only when a patch runs).

Notation used in every docstring: ``b`` batch, ``h`` heads (``h_q``/``h_k`` for queries
and keys), ``s`` sequence length, ``t`` packed tokens (``[t, h, d]``), ``d`` head dim, ``n`` rotated
pairs (``d // 2`` or ``rotary_dim // 2``), ``R`` rows of a position-indexed cos/sin table,
``*P`` the shape of a positions tensor.
"""

from . import axes, diffusers, hf, layout, positions, scaling, spec
from .apply import LAYOUTS, Backend, apply_rope, apply_rope_qk
from .config import RopeConfig
from .errors import RopeValueError
from .frequencies import inv_freq
from .modules import RotaryEmbedding
from .presets import PRESETS, preset
from .tables import cos_sin

__version__ = "0.1.0"

__all__ = [
    "LAYOUTS",
    "PRESETS",
    "Backend",
    "RopeConfig",
    "RopeValueError",
    "RotaryEmbedding",
    "apply_rope",
    "apply_rope_qk",
    "axes",
    "cos_sin",
    "diffusers",
    "hf",
    "inv_freq",
    "layout",
    "positions",
    "preset",
    "scaling",
    "spec",
]
