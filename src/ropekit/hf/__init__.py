"""The Hugging Face codec: every Hugging Face key, in one package.

* :mod:`ropekit.hf.config`: :func:`from_hf` / :func:`to_hf`, reading and writing the RoPE
  part of ``config.json`` files and ``transformers`` config objects (4.x ``rope_scaling``
  and 5.x ``rope_parameters``, nested per layer type);
* :mod:`ropekit.hf.axes`: :func:`axes_from_hf` / :func:`mrope_settings`, the N-axis RoPE
  of Qwen2-VL, Qwen2.5-VL and Qwen3-VL (text M-RoPE and vision axial 2-D RoPE) as
  :class:`ropekit.axes.AxesConfig` (``from_hf`` stays 1-D and refuses them);
* :mod:`ropekit.hf.models`: per-model-type knowledge (defaults without transformers,
  multi-axis models, the Llama 4 temperature, interleaved pairs);
* :mod:`ropekit.hf.tables`: :class:`RotaryTables`, the Hugging Face-format
  cos/sin tables module (it returns tables and rotates nothing);
* :func:`apply_rotary_pos_emb`: the drop-in for Hugging Face's function of that name
  (defined in :mod:`ropekit.apply.api`);
* :mod:`ropekit.hf.patching`: :func:`patch` / :func:`unpatch`, the per-model patch (the
  module is not called ``patch``, so that ``ropekit.hf.patch`` is the function), with
  :mod:`ropekit.hf.families` (what it knows about the multi-axis, vision and
  per-layer-type families) and :mod:`ropekit.hf.dropins` (their table modules and
  rotation drop-ins).

The package imports :mod:`ropekit.config`, never the reverse. Importing it does not
import ``transformers`` (that happens when a function needs it).
"""

from ..apply.api import apply_rotary_pos_emb
from .axes import AXES_MODEL_TYPES, axes_from_hf, mrope_settings
from .config import from_hf, to_hf
from .patching import (
    FAMILY_MODEL_TYPES,
    SUPPORTED_MODEL_TYPES,
    TEXT_MODEL_TYPES,
    TRANSFORMERS_VERSIONS,
    UnsupportedModelError,
    check_transformers_version,
    is_patched,
    patch,
    patched,
    unpatch,
)
from .tables import RotaryTables

__all__ = [
    "AXES_MODEL_TYPES",
    "FAMILY_MODEL_TYPES",
    "SUPPORTED_MODEL_TYPES",
    "TEXT_MODEL_TYPES",
    "TRANSFORMERS_VERSIONS",
    "RotaryTables",
    "UnsupportedModelError",
    "apply_rotary_pos_emb",
    "axes_from_hf",
    "check_transformers_version",
    "from_hf",
    "is_patched",
    "mrope_settings",
    "patch",
    "patched",
    "to_hf",
    "unpatch",
]
