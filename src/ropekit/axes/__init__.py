"""N-axis RoPE: multimodal (M-RoPE), 2-D vision and 3-D video rotary embeddings.

Notation: ``A`` position axes, ``n`` rotated pairs (bands), ``d`` head dim, ``h`` heads,
``*P`` the leading shape of positions ``[*P, A]``.

One description serves every layout: :class:`AxesConfig` says, for each band ``j``, the
axis whose coordinate it reads and its float64 frequency (``angle_j = pos[..., axis[j]]
* freq[j]``), and how bands sit on the lanes (``pairing``). Known layouts are presets
(:func:`preset`, :data:`PRESETS`); :func:`cos_sin` builds exact tables ``[*P, n]`` from
positions ``[*P, A]`` for the existing rotation functions (:func:`ropekit.apply_rope`
and every backend), :func:`apply_axes_rope` adds the per-block pairing;
:class:`AxisRotaryEmbedding` is the module. Learned per-head frequencies (RoPE-Mixed)
are :func:`mixed_cos_sin` / :class:`MixedRotaryEmbedding`. Position builders (Qwen-VL
M-RoPE ids, patch grids, video latents) are in :mod:`ropekit.axes.positions`.

See ``docs/axes.md`` for each layout's formula.
"""

from . import positions
from .config import PAIRINGS, AxesConfig
from .modules import AxisRotaryEmbedding, MixedRotaryEmbedding, init_mixed_frequencies
from .presets import PRESETS, preset
from .rotate import apply_axes_rope, apply_axes_rope_qk
from .tables import AxisBands, axis_bands, cos_sin, mixed_cos_sin

__all__ = [
    "PAIRINGS",
    "PRESETS",
    "AxesConfig",
    "AxisBands",
    "AxisRotaryEmbedding",
    "MixedRotaryEmbedding",
    "apply_axes_rope",
    "apply_axes_rope_qk",
    "axis_bands",
    "cos_sin",
    "init_mixed_frequencies",
    "mixed_cos_sin",
    "positions",
    "preset",
]
