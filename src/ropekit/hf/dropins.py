"""Hugging Face-format drop-ins for multi-axis and per-layer-type rotary modules.

Notation: ``b`` batch, ``h`` heads, ``s`` sequence length, ``N`` vision tokens (patches,
all images packed), ``T`` tokens of a ViT sequence (prefix + patches), ``P`` patches,
``A`` position axes, ``n`` rotated pairs, ``d`` head dim.

:func:`ropekit.hf.patch` swaps a family's rotary modules for these and rebinds the
attention's rotation global to one of the rotation drop-ins below. Each module returns
exactly the format of the module it replaces (so the family's own code around it, e.g.
Qwen2.5-VL's window permutation of the tables, keeps working), from float64 angles rounded
once to ``compute_dtype(x.dtype)`` (float32 for half and float32 models, float64 for
float64 ones). None holds buffers: ``model.to(dtype)`` cannot degrade them.

=====================  ================================  ===============================
module                 replaces                          ``forward`` -> ``(cos, sin)``
=====================  ================================  ===============================
:class:`AxesTables`    Qwen2/2.5/3-VL text               ``(x, position_ids [A, b, s] or
                       ``...RotaryEmbedding`` (M-RoPE)   [b, s])`` -> ``[b, s, 2n]``
:class:`AxesTables`    Qwen-VL ``...VisionRotary...``,   ``(x, position_ids [N, A])`` ->
                       Pixtral ``...VisionRotary...``    ``[N, 2n]``
:class:`DinoTables`    DINOv3 ``...RopePositionEmb...``  ``(pixel_values [b, c, H, W])``
                                                         -> ``[P, 2n]``
:class:`LayerTables`   Gemma 3 ``Gemma3RotaryEmbedding`` ``(x, position_ids [b, s],
                       (one RoPE per layer type)         layer_type)`` -> ``[b, s, 2n]``
=====================  ================================  ===============================

In all of them both halves of the last dim are equal (Hugging Face's ``rotate_half``
pairing of lanes ``(j, j + n)``), and ``cos[..., j] = f cos(angle_j)`` with the angle of
band ``j`` as the :class:`~ropekit.axes.AxesConfig` (or :class:`~ropekit.RopeConfig`)
says.

Rotation drop-ins (same signatures as the family functions they replace; each checks the
pair count of the tables it gets, as the 1-D patch does):

* :func:`rotary_pos_emb` -> ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)``,
  also ``unsqueeze_dim=0`` with ``[s, 2n]`` tables (Pixtral);
* :func:`rotary_pos_emb_vision` -> Qwen-VL's ``apply_rotary_pos_emb_vision(q, k, cos,
  sin)``, ``q`` ``[N, h, d]``, tables ``[N, 2n]``;
* :func:`rotary_pos_emb_prefix` -> DINOv3's ``apply_rotary_pos_emb(q, k, cos, sin,
  **kwargs)``, ``q`` ``[b, h, T, d]``, tables ``[P, 2n]``: the first ``T - P`` tokens (CLS
  and registers) pass through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..apply import compute_dtype
from ..apply.api import apply_rope_qk, hf_halves
from ..axes.config import AxesConfig
from ..axes.positions import patch_centers
from ..axes.tables import axis_bands, cos_sin
from ..config import RopeConfig
from ..errors import RopeValueError
from .tables import RotaryTables

__all__ = [
    "AxesTables",
    "DinoTables",
    "LayerTables",
    "rotary_pos_emb",
    "rotary_pos_emb_prefix",
    "rotary_pos_emb_vision",
]

_Pair = tuple[torch.Tensor, torch.Tensor]


def _doubled(cos: torch.Tensor, sin: torch.Tensor) -> _Pair:
    """``[..., n]`` -> Hugging Face's ``[..., 2n]`` (both halves equal)."""
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


class AxesTables(nn.Module):
    """Hugging Face-format tables of an N-axis RoPE (Qwen-VL M-RoPE and axial vision RoPE,
    Pixtral).

    Args:
        config: the :class:`~ropekit.axes.AxesConfig` (``pairing="half"``).
        axes_first: how the family passes positions. ``True`` (Qwen-VL text):
            ``position_ids`` ``[A, b, s]``, or ``[b, s]`` meaning the same id on every
            axis (text-only calls), tables ``[b, s, 2n]``. ``False`` (vision towers):
            ``position_ids`` ``[N, A]``, tables ``[N, 2n]``.

    ``forward(x, position_ids)``: ``x`` only sets the dtype (``compute_dtype(x.dtype)``).

    Example:
        >>> from ropekit.axes import preset
        >>> tables = AxesTables(preset("qwen2_vl", head_dim=16, section=(2, 3, 3)), axes_first=True)
        >>> cos, sin = tables(torch.zeros(1), torch.zeros(3, 1, 5, dtype=torch.long))
        >>> tuple(cos.shape), tables.n_pairs
        ((1, 5, 16), 8)
    """

    def __init__(self, config: AxesConfig, *, axes_first: bool) -> None:
        super().__init__()
        if not isinstance(config, AxesConfig) or config.pairing != "half":
            raise RopeValueError(
                f"config={config!r} is not allowed: expected an AxesConfig with pairing='half' "
                "(Hugging Face's rotate_half)"
            )
        self.config = config
        self.axes_first = bool(axes_first)
        self.n_pairs = config.n_pairs
        self._bands = axis_bands(config)  # float64 frequencies, moved to the positions' device

    def extra_repr(self) -> str:
        return f"{self.config!r}, axes_first={self.axes_first}"

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> _Pair:
        a = self.config.n_axes
        if self.axes_first:
            if position_ids.ndim == 2:  # text-only: one id for every axis
                position_ids = position_ids.expand(a, -1, -1)
            if position_ids.ndim != 3 or position_ids.shape[0] != a:
                raise RopeValueError(
                    f"position_ids.shape={tuple(position_ids.shape)} is not allowed: expected "
                    f"[{a}, b, s] or [b, s]"
                )
            positions = position_ids.movedim(0, -1)  # [b, s, A]
        else:
            if position_ids.ndim != 2 or position_ids.shape[-1] != a:
                raise RopeValueError(
                    f"position_ids.shape={tuple(position_ids.shape)} is not allowed: expected "
                    f"[N, {a}]"
                )
            positions = position_ids
        self._bands = self._bands.to(positions.device)
        return _doubled(*cos_sin(self._bands, positions, dtype=compute_dtype(x.dtype)))


class DinoTables(nn.Module):
    """Hugging Face-format tables of DINOv3's 2-D RoPE on patch-centre coordinates.

    Args:
        config: the :class:`~ropekit.axes.AxesConfig` (``ropekit.axes.preset("dinov3",
            ...)``: ``[y bands, x bands]``, frequencies ``2 pi theta ** (-4k / d)``).
        patch_size: ``(ph, pw)`` pixels per patch.
        augment: ``None``, or ``(fn, shift, jitter, rescale)``: in training mode the
            family's own coordinate augmentation ``fn(coords, shift, jitter, rescale)``
            (random), applied to the family's own float32 coordinates so that a training
            step draws the same random numbers and uses the same positions as the
            unpatched model; only the angles are then float64.
        centers: the family's ``(h, w, dtype=, device=) -> [P, 2]`` patch-centre function,
            used with ``augment`` only (its float32 coordinates are what gets augmented).

    ``forward(pixel_values [b, c, H, W])`` -> ``(cos, sin)`` ``[P, 2n]``, ``P = (H // ph)
    (W // pw)`` patches in row-major order, ``compute_dtype(pixel_values.dtype)``. In eval
    mode the coordinates are exact float64 patch centres ``2 (i + 0.5) / H - 1``
    (:func:`ropekit.axes.positions.patch_centers`).
    """

    def __init__(
        self,
        config: AxesConfig,
        patch_size: tuple[int, int],
        augment: tuple[Callable[..., torch.Tensor], Any, Any, Any] | None = None,
        centers: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, AxesConfig) or config.pairing != "half" or config.n_axes != 2:
            raise RopeValueError(
                f"config={config!r} is not allowed: expected a 2-axis AxesConfig with "
                "pairing='half'"
            )
        self.config = config
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.n_pairs = config.n_pairs
        self._augment = augment
        self._centers = centers  # the family's float32 coordinates (training mode only)
        self._bands = axis_bands(config)

    def extra_repr(self) -> str:
        return f"{self.config!r}, patch_size={self.patch_size}"

    def forward(self, pixel_values: torch.Tensor) -> _Pair:
        h = pixel_values.shape[-2] // self.patch_size[0]
        w = pixel_values.shape[-1] // self.patch_size[1]
        device = pixel_values.device
        augment = self._augment
        if self.training and augment is not None and any(v is not None for v in augment[1:]):
            if self._centers is None:
                raise RopeValueError("DinoTables in training mode needs the family's centers")
            coords = self._centers(h, w, dtype=torch.float32, device=device)
            coords = augment[0](coords, *augment[1:]).to(torch.float64)
        else:
            coords = patch_centers(h, w).to(device)
        self._bands = self._bands.to(device)
        return _doubled(*cos_sin(self._bands, coords, dtype=compute_dtype(pixel_values.dtype)))


class LayerTables(nn.Module):
    """Hugging Face-format tables with one RoPE per layer type (Gemma 3 text).

    Args:
        configs: ``{layer_type: RopeConfig}`` (``ropekit.hf.from_hf(config,
            layer_type=...)`` for each type in ``config.layer_types``).

    ``forward(x, position_ids [b, s], layer_type)`` -> the :class:`~ropekit.hf.RotaryTables`
    of that type: ``[b, s, 2n]``.
    """

    def __init__(self, configs: Mapping[str, RopeConfig]) -> None:
        super().__init__()
        if not configs:
            raise RopeValueError("configs={} is not allowed: expected one RopeConfig per layer type")
        pairs = {c.n_pairs for c in configs.values()}
        if len(pairs) != 1:
            raise RopeValueError(
                f"layer types rotating {sorted(pairs)} pairs are not allowed: expected one pair "
                "count (the attention code shares one head dim)"
            )
        self.n_pairs = pairs.pop()
        self.tables = nn.ModuleDict({k: RotaryTables(c) for k, c in configs.items()})

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str) -> _Pair:
        if layer_type not in self.tables:
            raise RopeValueError(
                f"layer_type={layer_type!r} is not allowed: expected one of {sorted(self.tables)}"
            )
        return self.tables[layer_type](x, position_ids)


# ---------------------------------------------------------------------------------------
# Rotations.


def _check_pairs(cos: torch.Tensor, n_pairs: int) -> None:
    if cos.shape[-1] != 2 * n_pairs:
        raise RopeValueError(
            f"cos.shape={tuple(cos.shape)} is not allowed: the patched model rotates "
            f"n={n_pairs} pairs, expected Hugging Face tables [..., 2n={2 * n_pairs}]"
        )


def rotary_pos_emb(n_pairs: int) -> Callable[..., _Pair]:
    """``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)`` with ropekit's rotation.

    ``q`` ``[b, h, s, d]`` (``unsqueeze_dim=1``) or ``[b, s, h, d]`` (2); ``cos``/``sin``
    ``[b, s, 2n]`` or ``[s, 2n]``. ``unsqueeze_dim=0`` with ``[s, 2n]`` tables (Pixtral:
    they broadcast over ``[b, h, s, d]`` as ``[1, 1, s, 2n]``) is the ``[s, n]`` case of 1.
    """

    def apply_rotary_pos_emb(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        unsqueeze_dim: int = 1,
    ) -> _Pair:  # fmt: skip
        if unsqueeze_dim == 0 and isinstance(cos, torch.Tensor) and cos.ndim == 2:
            unsqueeze_dim = 1  # [1, s, 2n] against [b, h, s, d]: what [s, n] broadcasts to
        c, s = hf_halves(cos, sin, unsqueeze_dim)
        _check_pairs(cos, n_pairs)
        return apply_rope_qk(q, k, c, s)

    return apply_rotary_pos_emb


def rotary_pos_emb_vision(n_pairs: int) -> Callable[..., _Pair]:
    """Qwen-VL's ``apply_rotary_pos_emb_vision(q, k, cos, sin)``: ``q``, ``k``
    ``[N, h, d]``, tables ``[N, 2n]`` (one row per vision token, broadcast over heads).

    The family computes in float32 (also for float64 models) and casts back; this runs
    in ``compute_dtype(q.dtype)`` (float32 for half precision, float64 for float64) and
    returns ``q.dtype``."""

    def apply_rotary_pos_emb_vision(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> _Pair:
        c, s = hf_halves(cos, sin, 2)  # [N, 1, n]
        _check_pairs(cos, n_pairs)
        return apply_rope_qk(q, k, c, s)

    return apply_rotary_pos_emb_vision


def rotary_pos_emb_prefix(n_pairs: int) -> Callable[..., _Pair]:
    """DINOv3's ``apply_rotary_pos_emb(q, k, cos, sin, **kwargs)``: ``q``, ``k``
    ``[b, h, T, d]``, tables ``[P, 2n]`` for the last ``P`` tokens; the ``T - P`` prefix
    tokens (CLS, registers) are copied through unrotated."""

    def apply_rotary_pos_emb(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, **kwargs: Any
    ) -> _Pair:
        c, s = hf_halves(cos, sin, 1)  # [P, n]
        _check_pairs(cos, n_pairs)
        prefix = q.shape[-2] - cos.shape[-2]
        if prefix < 0:
            raise RopeValueError(
                f"q.shape={tuple(q.shape)} is not allowed with tables for {cos.shape[-2]} "
                "patches: expected at least as many tokens as patches"
            )
        rq, rk = apply_rope_qk(q[..., prefix:, :], k[..., prefix:, :], c, s)
        return (torch.cat((q[..., :prefix, :], rq), dim=-2),
                torch.cat((k[..., :prefix, :], rk), dim=-2))  # fmt: skip

    return apply_rotary_pos_emb
