"""Patch diffusers transformers (Flux, Flux 2, Wan, HunyuanVideo, CogVideoX, LTX-Video)
to use ropekit's exact N-axis RoPE: :func:`patch`, :func:`unpatch`, :func:`patched`,
:func:`is_patched`, :data:`SUPPORTED`; the replacement rotary modules
(:class:`FluxIdsTables`, :class:`VideoGridTables`, :class:`LTXVideoTables`) and
CogVideoX's pipeline tables (:func:`cogvideox_rotary_emb`).

Notation: ``n`` rotated pairs, ``d = 2n`` rotated lanes, ``S`` tokens, ``B`` batch.

Importing this package does not import diffusers: :func:`patch` imports it when it runs.
See ``docs/diffusers.md``.
"""

from .patching import (
    DIFFUSERS_VERSIONS,
    SUPPORTED,
    UnsupportedTransformerError,
    check_diffusers_version,
    is_patched,
    patch,
    patched,
    unpatch,
)
from .tables import (
    FluxIdsTables,
    LTXVideoTables,
    VideoGridTables,
    cogvideox_rotary_emb,
    interleave_pairs,
)

__all__ = [
    "DIFFUSERS_VERSIONS",
    "SUPPORTED",
    "FluxIdsTables",
    "LTXVideoTables",
    "UnsupportedTransformerError",
    "VideoGridTables",
    "check_diffusers_version",
    "cogvideox_rotary_emb",
    "interleave_pairs",
    "is_patched",
    "patch",
    "patched",
    "unpatch",
]
