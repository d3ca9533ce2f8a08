"""Presets: every multi-axis layout ropekit knows, as an :class:`~ropekit.axes.AxesConfig`.

Notation: ``d`` head dim (LTX: the whole hidden size, which it rotates before splitting
heads), ``n = d / 2`` bands, ``theta`` the base, ``k`` a band's index within its axis.
Each preset is one constructor call (or two lines of band lists); the formulas, with
which band follows which axis, are in ``docs/axes.md``. Defaults are the pinned
peers' own (transformers 5.24 config classes, diffusers 0.42.1 constructor defaults: for
Qwen2/2.5/3-VL, Flux and HunyuanVideo checked in ``tests/test_axes_parity.py``), not
necessarily a released checkpoint's values (read those with
:func:`ropekit.hf.axes_from_hf`); every argument can be overridden.

The position builders that go with each preset are in :mod:`ropekit.axes.positions`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import RopeValueError, check_float, check_int
from .config import AxesConfig, _spectrum

__all__ = ["PRESETS", "preset"]


def _even(name: str, value: int, multiple: int) -> int:
    v = check_int(name, value, minimum=multiple)
    if v % multiple:
        raise RopeValueError(f"{name}={v} is not allowed: expected a multiple of {multiple}")
    return v


def qwen2_vl(head_dim: int = 128, theta: float = 1e6,
             section: Sequence[int] = (16, 24, 24)) -> AxesConfig:  # fmt: skip
    """Qwen2-VL text M-RoPE: contiguous sections over ``(t, h, w)``, half-split pairs."""
    return AxesConfig.sections(head_dim, theta, section)


def qwen2_5_vl(head_dim: int = 128, theta: float = 1e6,
               section: Sequence[int] = (16, 24, 24)) -> AxesConfig:  # fmt: skip
    """Qwen2.5-VL text M-RoPE (as Qwen2-VL; only its position ids differ: time in seconds)."""
    return AxesConfig.sections(head_dim, theta, section)


def qwen3_vl(head_dim: int = 128, theta: float = 5e5,
             section: Sequence[int] = (24, 20, 20)) -> AxesConfig:  # fmt: skip
    """Qwen3-VL text M-RoPE, interleaved sections (h: bands 1, 4, ...; w: 2, 5, ...)."""
    return AxesConfig.sections(head_dim, theta, section, interleaved_sections=True)


def qwen_vl_vision(head_dim: int = 80, theta: float = 10000.0) -> AxesConfig:
    """Qwen2-VL / 2.5-VL / 3-VL vision encoder: axial 2-D, ``[h bands, w bands]``, each axis
    ``theta ** (-4k / d)``, half-split over the head."""
    d = _even("head_dim", head_dim, 4)
    return AxesConfig.blocked((d // 2, d // 2), theta, pairing="half", names=("h", "w"))


def pixtral(head_dim: int = 64, theta: float = 10000.0) -> AxesConfig:
    """Pixtral vision: the 1-D spectrum ``theta ** (-2i / d)``; h takes the even ``i``, w
    the odd ones, ``[h bands, w bands]``, half-split."""
    d = _even("head_dim", head_dim, 4)
    inv = _spectrum(d, check_float("theta", theta, positive=True))
    n = d // 2
    return AxesConfig(axis=(0,) * (n // 2) + (1,) * (n // 2), freq=tuple(inv[0::2] + inv[1::2]),
                      n_axes=2, head_dim=d, names=("h", "w"))  # fmt: skip


def llama4_vision(head_dim: int = 88, theta: float = 10000.0) -> AxesConfig:
    """Llama 4 vision: ``[x bands, y bands]``, each ``theta ** (-4k / d)``, interleaved
    pairs; positions are ``(col + 1, row + 1)``, the CLS token at angle 0
    (:func:`ropekit.axes.positions.llama4_vision_positions`)."""
    d = _even("head_dim", head_dim, 4)
    return AxesConfig.blocked((d // 2, d // 2), theta, pairing="interleaved", names=("x", "y"))


def gemma4_vision(head_dim: int = 64, theta: float = 100.0) -> AxesConfig:
    """Gemma 4 vision: one lane block per axis (``[0, d/2)`` h, ``[d/2, d)`` w), each
    rotated half-split on its own with ``theta ** (-4k / d)``."""
    d = _even("head_dim", head_dim, 4)
    return AxesConfig.blocked((d // 2, d // 2), theta, pairing="blocks", names=("h", "w"))


def dinov3(head_dim: int = 64, theta: float = 100.0) -> AxesConfig:
    """DINOv3: ``[y bands, x bands]``, frequency ``2 pi theta ** (-4k / d)`` on patch-centre
    coordinates in ``[-1, 1]`` (:func:`ropekit.axes.positions.patch_centers`),
    half-split; prefix tokens unrotated."""
    d = _even("head_dim", head_dim, 4)
    return AxesConfig.blocked((d // 2, d // 2), theta, pairing="half", scale=2 * math.pi,
                              names=("y", "x"))  # fmt: skip


def eva02(head_dim: int = 64, theta: float = 10000.0) -> AxesConfig:
    """EVA-02 (timm ``RotaryEmbeddingCat``, ``in_pixels=False``): ``[h bands, w bands]``,
    ``theta ** (-4k / d)``, interleaved; ``ref_feat_shape`` rescales the grid
    (:func:`ropekit.axes.positions.eva_grid`)."""
    d = _even("head_dim", head_dim, 4)
    return AxesConfig.blocked((d // 2, d // 2), theta, pairing="interleaved", names=("h", "w"))


def flux(axes_dims: Sequence[int] = (16, 56, 56), theta: float = 10000.0) -> AxesConfig:
    """Flux.1: axis-blocked ``(16, 56, 56)`` lanes over ids ``(idx, h, w)``, interleaved."""
    return AxesConfig.blocked(axes_dims, theta, names=("idx", "h", "w") if len(axes_dims) == 3 else None)


def flux2(axes_dims: Sequence[int] = (32, 32, 32, 32), theta: float = 2000.0) -> AxesConfig:
    """Flux 2: four axes ``(t, h, w, l)`` of 32 lanes, theta 2000, interleaved."""
    return AxesConfig.blocked(axes_dims, theta, names=("t", "h", "w", "l") if len(axes_dims) == 4 else None)


def wan(head_dim: int = 128, theta: float = 10000.0) -> AxesConfig:
    """Wan 2.x: h = w = ``2 floor(d / 6)`` lanes, t the rest (44/42/42 for d = 128), each
    axis its own spectrum, interleaved."""
    d = _even("head_dim", head_dim, 2)
    hw = 2 * (d // 6)
    return AxesConfig.blocked((d - 2 * hw, hw, hw), theta, names=("t", "h", "w"))


def hunyuan_video(axes_dims: Sequence[int] = (16, 56, 56), theta: float = 256.0) -> AxesConfig:
    """HunyuanVideo: axis-blocked ``(16, 56, 56)`` over ``(t, h, w)``, theta 256, interleaved."""
    return AxesConfig.blocked(axes_dims, theta, names=("t", "h", "w") if len(axes_dims) == 3 else None)


def cogvideox(head_dim: int = 64, theta: float = 10000.0) -> AxesConfig:
    """CogVideoX: t = ``d / 4`` lanes, h = w = ``3d / 8``, each its own spectrum, interleaved."""
    d = _even("head_dim", head_dim, 8)
    return AxesConfig.blocked((d // 4, d // 8 * 3, d // 8 * 3), theta, names=("t", "h", "w"))


def ltx_video(dim: int = 2048, theta: float = 10000.0) -> AxesConfig:
    """LTX-Video: ``K = dim // 6`` frequencies ``(pi / 2) theta ** (k / (K - 1))``; band
    ``p + 3k + a`` reads axis ``a`` of ``(f, h, w)`` with frequency ``k``, after ``p = (dim
    % 6) / 2`` unrotated bands (frequency 0, LTX's padding); interleaved. Coordinates are
    LTX's ``2 g - 1`` (:func:`ropekit.axes.positions.ltx_video_coords`)."""
    d = _even("dim", dim, 2)
    if d < 12:
        raise RopeValueError(f"dim={d} is not allowed: expected an even int >= 12 (two frequencies per axis)")
    theta = check_float("theta", theta, positive=True)
    k_count = d // 6
    e = torch.arange(k_count, dtype=torch.float64) / max(k_count - 1, 1)
    spectrum = (torch.pow(theta, e) * (math.pi / 2)).tolist()
    pad = (d % 6) // 2
    axis = (0,) * pad + tuple(a for _ in range(k_count) for a in range(3))
    freq = (0.0,) * pad + tuple(f for f in spectrum for _ in range(3))
    return AxesConfig(axis=axis, freq=freq, n_axes=3, head_dim=d, pairing="interleaved",
                      names=("f", "h", "w"))  # fmt: skip


#: Preset name -> constructor (keyword arguments override the defaults).
PRESETS: dict[str, Callable[..., AxesConfig]] = {
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "qwen3_vl": qwen3_vl,
    "qwen_vl_vision": qwen_vl_vision,
    "pixtral": pixtral,
    "llama4_vision": llama4_vision,
    "gemma4_vision": gemma4_vision,
    "dinov3": dinov3,
    "eva02": eva02,
    "flux": flux,
    "flux2": flux2,
    "wan": wan,
    "hunyuan_video": hunyuan_video,
    "cogvideox": cogvideox,
    "ltx_video": ltx_video,
}


def preset(name: str, **overrides: Any) -> AxesConfig:
    """The :class:`~ropekit.axes.AxesConfig` of a known layout.

    Example:
        >>> preset("wan").axis.count(0), preset("wan").axis.count(1)
        (22, 21)
    """
    if name not in PRESETS:
        raise RopeValueError(f"preset {name!r} is not allowed: expected one of {sorted(PRESETS)}")
    known = list(inspect.signature(PRESETS[name]).parameters)
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise RopeValueError(
            f"preset {name!r} does not take {unknown}: expected keywords among {known}"
        )
    return PRESETS[name](**overrides)
