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

and, in Llama 4's complex format: :class:`ComplexTables` for ``Llama4TextRotaryEmbedding``
(``(x, position_ids [b, s])`` -> complex ``freqs_cis`` ``[b, s, n]``) and
:class:`VisionComplexTables` for ``Llama4VisionRotaryEmbedding`` (``(pixel_values)`` ->
complex ``[side**2 + 1, 1, n]`` for the fixed square grid of its config).

In the real-valued ones both halves of the last dim are equal (Hugging Face's ``rotate_half``
pairing of lanes ``(j, j + n)``), and ``cos[..., j] = f cos(angle_j)`` with the angle of
band ``j`` as the :class:`~ropekit.axes.AxesConfig` (or :class:`~ropekit.RopeConfig`)
says. The complex ones (Llama 4) hold ``f cos(angle_j) + i f sin(angle_j)`` for pair
``j`` (lanes ``(2j, 2j + 1)``), complex64 for half and float32 models, complex128 for
float64 ones.

Rotation drop-ins (same signatures as the family functions they replace; each checks the
pair count of the tables it gets, as the 1-D patch does):

* :func:`rotary_pos_emb` -> ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)``,
  also ``unsqueeze_dim=0`` with ``[s, 2n]`` tables (Pixtral);
* :func:`rotary_pos_emb_vision` -> Qwen-VL's ``apply_rotary_pos_emb_vision(q, k, cos,
  sin)``, ``q`` ``[N, h, d]``, tables ``[N, 2n]``;
* :func:`rotary_pos_emb_prefix` -> DINOv3's ``apply_rotary_pos_emb(q, k, cos, sin,
  **kwargs)``, ``q`` ``[b, h, T, d]``, tables ``[P, 2n]``: the first ``T - P`` tokens (CLS
  and registers) pass through;
* :func:`rotary_pos_emb_one` -> Gemma 4's ``apply_rotary_pos_emb(x, cos, sin,
  unsqueeze_dim=1)``: one tensor per call, any of the layer types' pair counts;
* :func:`multidimensional_rope` -> Gemma 4's ``apply_multidimensional_rope(x, cos, sin,
  position_ids, unsqueeze_dim=2)``: ``x`` ``[b, N, h, d]`` cut into ``A`` lane blocks (``A``
  the last dim of ``position_ids``), each rotated half-split by its block of the tables;
* :func:`rotary_emb_complex` -> Llama 4's ``apply_rotary_emb(xq, xk, freqs_cis)``, ``xq``
  ``[b, s, h, d]``, complex ``[b, s, n]`` tables, interleaved pairs;
* :func:`vision_rotary_emb_complex` -> Llama 4's ``vision_apply_rotary_emb(query, key,
  freqs_ci)``, ``query`` ``[b, T, h, d]``, complex tables of ``T n`` entries (``[T, 1, n]``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..apply import compute_dtype
from ..apply.api import apply_rope, apply_rope_qk, hf_halves
from ..axes.config import AxesConfig
from ..axes.positions import llama4_vision_positions, patch_centers
from ..axes.tables import axis_bands, cos_sin
from ..config import RopeConfig
from ..errors import RopeValueError, check_tensor
from ..modules.rotary import KeptFrequencies
from ..tables.cos_sin import cos_sin as cos_sin_1d
from ..tables.cos_sin import position_tables
from .tables import RotaryTables, doubled

__all__ = [
    "AxesTables",
    "ComplexTables",
    "DinoTables",
    "LayerTables",
    "VisionComplexTables",
    "multidimensional_rope",
    "rotary_emb_complex",
    "rotary_pos_emb",
    "rotary_pos_emb_one",
    "rotary_pos_emb_prefix",
    "rotary_pos_emb_vision",
    "vision_rotary_emb_complex",
]

_Pair = tuple[torch.Tensor, torch.Tensor]


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
        if not isinstance(config, AxesConfig) or config.pairing not in ("half", "blocks"):
            raise RopeValueError(
                f"config={config!r} is not allowed: expected an AxesConfig with pairing='half' "
                "(Hugging Face's rotate_half) or 'blocks' (one rotate_half block per axis)"
            )
        if config.pairing == "blocks" and (axes_first or list(config.axis) != sorted(config.axis)):
            raise RopeValueError(
                f"config={config!r} is not allowed with axes_first={axes_first}: expected "
                "pairing='blocks' with the bands ordered axis by axis, for [.., N, A] ids"
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
            if position_ids.ndim not in (2, 3) or position_ids.shape[-1] != a:
                raise RopeValueError(
                    f"position_ids.shape={tuple(position_ids.shape)} is not allowed: expected "
                    f"[N, {a}] (or [b, N, {a}])"
                )
            positions = position_ids
        self._bands = self._bands.to(positions.device)
        cos, sin = cos_sin(self._bands, positions, dtype=compute_dtype(x.dtype))
        if self.config.pairing == "blocks":
            # Gemma 4: axis a's block of lanes is [its cos, its cos] (rotate_half per block)
            sizes = list(self.config.block_pairs)
            return (torch.cat([t for c in cos.split(sizes, -1) for t in (c, c)], dim=-1),
                    torch.cat([t for c in sin.split(sizes, -1) for t in (c, c)], dim=-1))  # fmt: skip
        return doubled(cos, sin)


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
        return doubled(*cos_sin(self._bands, coords, dtype=compute_dtype(pixel_values.dtype)))


class LayerTables(nn.Module):
    """Hugging Face-format tables with one RoPE per layer type (Gemma 3 text).

    Args:
        configs: ``{layer_type: RopeConfig}`` (``ropekit.hf.from_hf(config,
            layer_type=...)`` for each type in ``config.layer_types``).

        mixed_pairs: allow layer types of different pair counts (Gemma 4: local layers of
            head dim 256, global ones of 512); ``n_pairs`` is then the tuple of them.

    ``forward(x, position_ids [b, s], layer_type)`` -> the :class:`~ropekit.hf.RotaryTables`
    of that type: ``[b, s, 2n]`` (``n`` that type's pair count).
    """

    def __init__(self, configs: Mapping[str, RopeConfig], *, mixed_pairs: bool = False) -> None:
        super().__init__()
        if not configs:
            raise RopeValueError("configs={} is not allowed: expected one RopeConfig per layer type")
        pairs = {c.n_pairs for c in configs.values()}
        if mixed_pairs:
            # Gemma 4: each layer type has its own head dim; n_pairs is then the sorted
            # tuple of the pair counts, every one of which the rotation accepts.
            self.n_pairs: int | tuple[int, ...] = tuple(sorted(pairs))
        elif len(pairs) != 1:
            raise RopeValueError(
                f"layer types rotating {sorted(pairs)} pairs are not allowed: expected one pair "
                "count (the attention code shares one head dim)"
            )
        else:
            self.n_pairs = pairs.pop()
        self.tables = nn.ModuleDict({k: RotaryTables(c) for k, c in configs.items()})

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str) -> _Pair:
        if layer_type not in self.tables:
            raise RopeValueError(
                f"layer_type={layer_type!r} is not allowed: expected one of {sorted(self.tables)}"
            )
        return self.tables[layer_type](x, position_ids)


class ComplexTables(KeptFrequencies):
    """Llama 4's complex ``freqs_cis`` (``Llama4TextRotaryEmbedding``), computed exactly.

    Args:
        config: the text model's :class:`~ropekit.RopeConfig` (``from_hf(text_config)``,
            ``interleaved=True``: Llama 4 pairs lanes ``(2j, 2j + 1)``).

    ``forward(x, position_ids [b, s])`` -> complex ``[b, s, n]``, entry ``j`` equal to
    ``f (cos(m inv_freq[j]) + i sin(m inv_freq[j]))`` (``f`` the attention factor), from
    float64 angles rounded once to ``compute_dtype(x.dtype)`` (complex64 for half and
    float32 ``x``, as transformers' are; complex128 for float64). No buffers; the kept
    float64 frequencies follow ``model.to(device)``. Length-dependent methods (dynamic
    NTK, LongRoPE) pick their table set from ``max(position_ids) + 1``, as
    :class:`~ropekit.hf.RotaryTables` does.

    Example:
        >>> tables = ComplexTables(RopeConfig(head_dim=8, interleaved=True))
        >>> freqs = tables(torch.zeros(1), torch.arange(3)[None])
        >>> tuple(freqs.shape), freqs.dtype, tables.n_pairs
        ((1, 3, 4), torch.complex64, 4)
    """

    def __init__(self, config: RopeConfig) -> None:
        if not isinstance(config, RopeConfig) or not config.interleaved:
            raise RopeValueError(
                f"config={config!r} is not allowed: expected a RopeConfig with "
                "interleaved=True (Llama 4's complex form pairs lanes (2j, 2j + 1))"
            )
        # kept tables of the first positions, as hf.RotaryTables (CPU positions there are
        # gathered rows)
        super().__init__(config, kept_positions=None)
        self.n_pairs = config.n_pairs

    def extra_repr(self) -> str:
        return repr(self.config)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        check_tensor("position_ids", position_ids)
        dtype = compute_dtype(x.dtype)
        got = self._kept_rows(position_ids) if dtype is torch.float32 else None
        if got is not None:
            return torch.complex(*got)
        if self._frequencies is None:
            inv_freq, factor = self.config.frequencies(int(position_ids.max()) + 1)
            cos, sin = cos_sin_1d(inv_freq, position_ids, attention_factor=factor, dtype=dtype)
        else:
            inv_freq, fine = self._on(position_ids.device)
            cos, sin = position_tables(inv_freq, position_ids, self._frequencies[1], fine, dtype)
        return torch.complex(cos, sin)


class VisionComplexTables(nn.Module):
    """Llama 4's vision ``freqs_ci`` (``Llama4VisionRotaryEmbedding``), computed exactly.

    Args:
        config: the :class:`~ropekit.axes.AxesConfig` (``preset("llama4_vision", ...)``:
            ``[x bands, y bands]``, interleaved pairs).
        side: patches per image side (``image_size // patch_size``; the model's grid is
            square and fixed by its config).

    ``forward(pixel_values)`` -> complex ``[side**2 + 1, 1, n]``: row ``r < side**2`` at
    the patch position ``(r % side + 1, r // side + 1)``, the last row (the CLS token the
    model appends) at angle 0 (:func:`ropekit.axes.positions.llama4_vision_positions`).
    ``pixel_values`` only sets the dtype (complex64 for half and float32, complex128 for
    float64) and the device. transformers builds its table once at init as a complex64
    buffer (which ``model.to`` moves and ``model.double()`` leaves complex64); this
    recomputes the small table per call from float64 angles, rounded once.
    """

    def __init__(self, config: AxesConfig, side: int) -> None:
        super().__init__()
        if not isinstance(config, AxesConfig) or config.pairing != "interleaved" or config.n_axes != 2:
            raise RopeValueError(
                f"config={config!r} is not allowed: expected a 2-axis AxesConfig with "
                "pairing='interleaved' (preset('llama4_vision'))"
            )
        self.config = config
        self.side = int(side)
        self.n_pairs = config.n_pairs
        self._positions = llama4_vision_positions(self.side)  # [side**2 + 1, 2] (x, y)
        self._bands = axis_bands(config)

    def extra_repr(self) -> str:
        return f"{self.config!r}, side={self.side}"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        device = pixel_values.device
        self._bands = self._bands.to(device)
        cos, sin = cos_sin(self._bands, self._positions.to(device),
                           dtype=compute_dtype(pixel_values.dtype))  # fmt: skip
        return torch.complex(cos, sin).unsqueeze(1)


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


def _complex_halves(freqs: object, n_pairs: int, name: str) -> _Pair:
    """``(real, imag)`` views of a complex table, checked to hold ``n_pairs`` pairs."""
    if not isinstance(freqs, torch.Tensor) or not freqs.is_complex() or freqs.ndim < 1:
        what = f"{freqs.dtype} of shape {tuple(freqs.shape)}" if isinstance(freqs, torch.Tensor) \
            else type(freqs).__name__  # fmt: skip
        raise RopeValueError(
            f"{name}={what} is not allowed: expected Llama 4's complex table [..., n]"
        )
    if freqs.shape[-1] != n_pairs:
        raise RopeValueError(
            f"{name}.shape={tuple(freqs.shape)} is not allowed: the patched model rotates "
            f"n={n_pairs} pairs, expected a complex table [..., n={n_pairs}]"
        )
    return freqs.real, freqs.imag


def rotary_emb_complex(n_pairs: int) -> Callable[..., _Pair]:
    """Llama 4's ``apply_rotary_emb(xq, xk, freqs_cis)`` with ropekit's rotation.

    ``xq`` ``[b, s, h_q, d]``, ``xk`` ``[b, s, h_k, d]``, ``freqs_cis`` complex ``[b, s,
    n]`` (broadcast over heads). Pair ``j`` is lanes ``(2j, 2j + 1)``, rotated as
    ``(x[2j] + i x[2j+1]) * freqs_cis[..., j]`` (``interleaved=True``). transformers
    computes in float32 whatever the input dtype; this in ``compute_dtype(xq.dtype)``,
    returning ``xq.dtype``."""

    def apply_rotary_emb(
        xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor
    ) -> _Pair:
        c, s = _complex_halves(freqs_cis, n_pairs, "freqs_cis")
        if c.ndim == 3:  # [b, s, n] -> [b, s, 1, n]
            c, s = c.unsqueeze(-2), s.unsqueeze(-2)
        return apply_rope_qk(xq, xk, c, s, interleaved=True)

    return apply_rotary_emb


def vision_rotary_emb_complex(n_pairs: int) -> Callable[..., _Pair]:
    """Llama 4's ``vision_apply_rotary_emb(query, key, freqs_ci)`` with ropekit's rotation.

    ``query``, ``key`` ``[b, T, h, d]``; ``freqs_ci`` complex with ``T n`` entries
    (``[T, 1, n]`` from the vision rotary module), one row per token, broadcast over the
    batch and heads; interleaved pairs. transformers computes in float32; this in
    ``compute_dtype(query.dtype)``, returning ``query.dtype``."""

    def vision_apply_rotary_emb(
        query: torch.Tensor, key: torch.Tensor, freqs_ci: torch.Tensor
    ) -> _Pair:
        c, s = _complex_halves(freqs_ci, n_pairs, "freqs_ci")
        tokens = query.shape[1] if query.ndim == 4 else -1
        if query.ndim != 4 or c.numel() != tokens * n_pairs:
            raise RopeValueError(
                f"query.shape={tuple(query.shape)} is not allowed with freqs_ci of shape "
                f"{tuple(freqs_ci.shape)}: expected [b, T, h, d] with T * n = "
                f"{c.numel()} table entries"
            )
        c, s = c.reshape(tokens, 1, n_pairs), s.reshape(tokens, 1, n_pairs)
        return apply_rope_qk(query, key, c, s, interleaved=True)

    return vision_apply_rotary_emb


def rotary_pos_emb_one(n_pairs: int | tuple[int, ...]) -> Callable[..., torch.Tensor]:
    """Gemma 4's ``apply_rotary_pos_emb(x, cos, sin, unsqueeze_dim=1)``: one tensor.

    ``x`` ``[b, h, s, d]`` (``unsqueeze_dim=1``) or ``[b, s, h, d]`` (2, as Gemma 4's text
    attention calls it); tables ``[b, s, 2n]`` with ``n`` one of ``n_pairs`` (the pair
    counts of the layer types)."""
    allowed = (n_pairs,) if isinstance(n_pairs, int) else tuple(n_pairs)

    def apply_rotary_pos_emb(
        x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
    ) -> torch.Tensor:
        c, s = hf_halves(cos, sin, unsqueeze_dim)
        if c.shape[-1] not in allowed:
            raise RopeValueError(
                f"cos.shape={tuple(cos.shape)} is not allowed: the patched model rotates "
                f"n in {list(allowed)} pairs, expected Hugging Face tables [..., 2n]"
            )
        return apply_rope(x, c, s)

    return apply_rotary_pos_emb


def multidimensional_rope(n_pairs: int) -> Callable[..., torch.Tensor]:
    """Gemma 4's ``apply_multidimensional_rope(x, cos, sin, position_ids, unsqueeze_dim=2)``.

    ``x`` ``[b, N, h, d]``; ``cos``/``sin`` ``[b, N, 2n]`` (``2n = d``), as ``A`` lane blocks
    of ``d / A`` lanes, ``A = position_ids.shape[-1]``, each block two equal halves (its
    axis's ``cos``); block ``a`` of ``x`` is rotated half-split by block ``a`` of the
    tables (ropekit's ``pairing="blocks"``), in one kernel call (blocks as a batch dim)."""

    def apply_multidimensional_rope(
        x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position_ids: torch.Tensor,
        unsqueeze_dim: int = 2,
    ) -> torch.Tensor:  # fmt: skip
        _check_pairs(cos, n_pairs)
        a = position_ids.shape[-1]
        d = x.shape[-1]
        if unsqueeze_dim != 2 or cos.ndim != 3 or d != 2 * n_pairs or d % (2 * a):
            raise RopeValueError(
                f"x.shape={tuple(x.shape)}, cos.shape={tuple(cos.shape)}, unsqueeze_dim="
                f"{unsqueeze_dim} are not allowed with {a} axes: expected x [b, N, h, d], "
                f"tables [b, N, d] (d = {2 * n_pairs}, a multiple of {2 * a}), unsqueeze_dim=2"
            )
        block = d // a
        # [b, N, A, block] -> the first half of each block, [b, N, 1, A, block / 2]
        c = cos.unflatten(-1, (a, block))[..., : block // 2].unsqueeze(2)
        s = sin.unflatten(-1, (a, block))[..., : block // 2].unsqueeze(2)
        return apply_rope(x.unflatten(-1, (a, block)), c, s).flatten(-2)

    return apply_multidimensional_rope
