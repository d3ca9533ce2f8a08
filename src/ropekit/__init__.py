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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The names below are imported on first use (PEP 562), not here: importing them imports
# torch (~1.5 s), and the command line (``ropekit --help``, ``ropekit-lab --help``) must
# answer before that. ``import ropekit`` followed by any attribute access behaves as an
# eager import would; the TYPE_CHECKING block gives type checkers and IDEs the same view.
_EXPORTS: dict[str, str] = {
    "LAYOUTS": ".apply",
    "Backend": ".apply",
    "apply_rope": ".apply",
    "apply_rope_qk": ".apply",
    "RopeConfig": ".config",
    "RopeValueError": ".errors",
    "inv_freq": ".frequencies",
    "RotaryEmbedding": ".modules",
    "PRESETS": ".presets",
    "preset": ".presets",
    "cos_sin": ".tables",
}
_SUBMODULES = ("axes", "diffusers", "hf", "layout", "positions", "scaling", "spec")

if TYPE_CHECKING:
    from . import axes, diffusers, hf, layout, positions, scaling, spec
    from .apply import LAYOUTS, Backend, apply_rope, apply_rope_qk
    from .config import RopeConfig
    from .errors import RopeValueError
    from .frequencies import inv_freq
    from .modules import RotaryEmbedding
    from .presets import PRESETS, preset
    from .tables import cos_sin


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS and name not in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # The first use loads every export at once, as the eager import did: from then on
    # they are plain module attributes (what torch.compile and pickling see).
    for export, module in _EXPORTS.items():
        globals()[export] = getattr(importlib.import_module(module, __name__), export)
    for sub in _SUBMODULES:
        globals()[sub] = importlib.import_module(f".{sub}", __name__)
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
