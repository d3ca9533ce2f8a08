"""Replacement rotary modules for diffusers transformers, and CogVideoX's pipeline tables.

Notation: ``n`` rotated pairs (bands), ``d = 2n`` rotated lanes, ``A`` position axes,
``S`` tokens (``S = T H W`` for a latent video of ``T`` frames and ``H x W`` patches),
``B`` batch, ``C`` channels.

Each module here takes exactly the arguments of the diffusers module it replaces and
returns tables in that module's format, built by :func:`ropekit.axes.cos_sin` (float64
angles, rounded once):

* every family stores a band's value twice, on lanes ``(2j, 2j + 1)`` (the
  ``repeat_interleave(2)`` layout of diffusers' ``use_real=True`` tables), so a table has
  ``d = 2n`` columns; the rotation of the patch reads one of each pair back;
* dtype: float64 when the input the module sees (ids, latents) is float64, else float32
  (diffusers' own tables are float32, or the model dtype for Wan's cached buffers): the
  rotation then runs in that dtype and rounds once to the activations' dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..axes.config import AxesConfig
from ..axes.positions import cogvideox_grid, grid, ltx_video_coords
from ..axes.presets import cogvideox
from ..axes.tables import AxisBands, axis_bands, cos_sin
from ..errors import RopeValueError, check_int

__all__ = [
    "FluxIdsTables",
    "LTXVideoTables",
    "VideoGridTables",
    "cogvideox_rotary_emb",
    "interleave_pairs",
]


def interleave_pairs(t: torch.Tensor) -> torch.Tensor:
    """``[*, n] -> [*, 2n]``, each value on two neighbouring lanes (``repeat_interleave(2)``)."""
    return t.unsqueeze(-1).expand(*t.shape, 2).flatten(-2)


def _table_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 models keep float64 tables; everything else rotates with float32 tables,
    # as diffusers does (its rotation upcasts the activations to float32)
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _tables(bands: AxisBands, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    c, s = cos_sin(bands, pos, dtype=dtype)
    return interleave_pairs(c), interleave_pairs(s)


class _Tables(nn.Module):
    """Common part: the :class:`~ropekit.axes.AxesConfig`, its cached bands, no buffers
    (so ``model.to(dtype)`` cannot round anything)."""

    def __init__(self, config: AxesConfig) -> None:
        super().__init__()
        if not isinstance(config, AxesConfig) or not config.interleaved:
            raise RopeValueError(
                f"config={config!r} is not allowed: expected an AxesConfig with "
                "pairing='interleaved' (diffusers' tables pair lanes (2j, 2j + 1))"
            )
        self.config = config
        self._bands = axis_bands(config)

    def extra_repr(self) -> str:
        return f"n_pairs={self.config.n_pairs}, n_axes={self.config.n_axes}"


class FluxIdsTables(_Tables):
    """Replaces ``FluxPosEmbed`` / ``Flux2PosEmbed``: ``forward(ids) -> (cos, sin)``.

    Args (forward):
        ids: ``[S, A']`` position ids (any real dtype; integer-valued in the pipelines),
            ``A' == A`` (Flux.1, which loops over every id column) or ``A' >= A``
            (``use_first_axes=True``: Flux 2 reads the first ``A`` columns).

    Returns:
        ``(cos, sin)``, each ``[S, 2n]`` on ``ids.device``.
    """

    def __init__(self, config: AxesConfig, *, use_first_axes: bool = False) -> None:
        super().__init__(config)
        self.use_first_axes = bool(use_first_axes)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.config.n_axes
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or (
            ids.shape[-1] < a if self.use_first_axes else ids.shape[-1] != a
        ):
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            want = f">= {a}" if self.use_first_axes else f"{a}"
            raise RopeValueError(f"ids of shape {shape} is not allowed: expected [S, {want}] ids")
        # the ids are exact small integers in every dtype the pipelines use; float64 keeps
        # any fractional id as it is
        pos = ids[:, :a].to(torch.float64)
        return _tables(self._bands, pos, _table_dtype(ids))


class VideoGridTables(_Tables):
    """Replaces ``WanRotaryPosEmbed`` / ``HunyuanVideoRotaryPosEmbed``: the integer patch
    grid ``(t, h, w)`` of a latent video, row-major.

    Args:
        config: the 3-axis config (``ropekit.axes.preset("wan")`` / ``"hunyuan_video"``).
        patch_size: ``(p_t, p_h, p_w)``.
        wan_shape: ``True``: tables ``[1, S, 1, 2n]`` (Wan); ``False``: ``[S, 2n]``
            (HunyuanVideo).

    Args (forward):
        hidden_states: ``[B, C, F, height, width]`` latents; ``T = F // p_t``, ``H =
            height // p_h``, ``W = width // p_w`` as the patch embedding floors them.
    """

    def __init__(self, config: AxesConfig, patch_size: Sequence[int], *, wan_shape: bool) -> None:
        super().__init__(config)
        sizes = tuple(patch_size)
        if config.n_axes != 3 or len(sizes) != 3:
            raise RopeValueError(
                f"n_axes={config.n_axes}, patch_size={patch_size!r} is not allowed: expected 3 "
                "axes (t, h, w) and 3 patch sizes"
            )
        self.patch_size = tuple(check_int(f"patch_size[{i}]", p, minimum=1) for i, p in enumerate(sizes))
        self.wan_shape = bool(wan_shape)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.ndim != 5:
            shape = tuple(getattr(hidden_states, "shape", ()))
            raise RopeValueError(
                f"hidden_states of shape {shape} is not allowed: expected [B, C, F, H, W] latents"
            )
        f, h, w = hidden_states.shape[2:]
        pt, ph, pw = self.patch_size
        pos = grid(f // pt, h // ph, w // pw).to(hidden_states.device)
        c, s = _tables(self._bands, pos, _table_dtype(hidden_states))
        if self.wan_shape:
            c, s = c[None, :, None], s[None, :, None]
        return c, s


def _scale(value: Any) -> float:
    # the pipelines pass Python floats or 0-d tensors (older LTX pipelines)
    return float(value.item() if isinstance(value, torch.Tensor) else value)


class LTXVideoTables(_Tables):
    """Replaces ``LTXVideoRotaryPosEmbed``: coordinates ``2 g - 1`` of the latent grid
    mapped onto the base grid (``g = i * scale * patch / base``), or of ``video_coords``
    (``g = video_coords / base``).

    Args:
        config: ``ropekit.axes.preset("ltx_video", dim=...)`` (``dim`` the hidden size).
        base: ``(base_num_frames, base_height, base_width)``.
        patch_size, patch_size_t: the transformer's patch sizes.

    Args (forward): as diffusers' ``(hidden_states [B, S, C], num_frames, height, width,
    rope_interpolation_scale=None, video_coords=None)``, ``video_coords`` ``[B, 3, S]``.

    Returns:
        ``(cos, sin)``, each ``[B, S, dim]``.
    """

    def __init__(self, config: AxesConfig, base: Sequence[float], patch_size: int, patch_size_t: int) -> None:
        super().__init__(config)
        self.base = tuple(float(b) for b in base)
        self.patch_size = check_int("patch_size", patch_size, minimum=1)
        self.patch_size_t = check_int("patch_size_t", patch_size_t, minimum=1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        rope_interpolation_scale: Sequence[Any] | None = None,
        video_coords: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = hidden_states.shape[0]
        dev = hidden_states.device
        if video_coords is None:
            if rope_interpolation_scale is None:
                # without a scale the peer leaves the integer grid unnormalised: g = i
                pos = grid(num_frames, height, width).to(torch.float64) * 2.0 - 1.0
            else:
                scale = tuple(_scale(v) for v in rope_interpolation_scale)
                pos = ltx_video_coords(num_frames, height, width, patch_size=self.patch_size,
                                       patch_size_t=self.patch_size_t, base=self.base,
                                       rope_interpolation_scale=scale)  # fmt: skip
            pos = pos.to(dev).expand(b, *pos.shape)
        else:
            if video_coords.ndim != 3 or video_coords.shape[1] != 3:
                raise RopeValueError(
                    f"video_coords of shape {tuple(video_coords.shape)} is not allowed: "
                    "expected [B, 3, S]"
                )
            base = torch.tensor(self.base, dtype=torch.float64, device=video_coords.device)
            pos = (video_coords.to(torch.float64).transpose(1, 2) / base) * 2.0 - 1.0
        return _tables(self._bands, pos, _table_dtype(hidden_states))


def _crop_region(src: tuple[int, int], width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """CogVideoX 1.0: the region of the ``height x width`` base grid that a ``src = (h, w)``
    grid covers once resized to fit it (aspect kept, Python rounding) and centred."""
    h, w = src
    if h / w > height / width:  # taller than the base grid: fit its height
        rh, rw = height, round(height / h * w)
    else:
        rw, rh = width, round(width / w * h)
    top, left = round((height - rh) / 2.0), round((width - rw) / 2.0)
    return (top, left), (top + rh, left + rw)


def cogvideox_rotary_emb(
    config: Any,
    height: int,
    width: int,
    num_frames: int,
    *,
    vae_scale_factor_spatial: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``image_rotary_emb`` that CogVideoX pipelines pass to the transformer, exact.

    CogVideoX computes its rotary tables in the pipeline
    (``_prepare_rotary_positional_embeddings``), not in the transformer; this returns the
    same tables (same grid, same format) from float64 angles rounded once.

    Args:
        config: the transformer's config (``transformer.config``: ``attention_head_dim``,
            ``patch_size``, ``patch_size_t``, ``sample_height``, ``sample_width``).
        height, width: the video's pixel size; the patch grid is ``height // (vae *
            patch_size)`` by ``width // (vae * patch_size)``.
        num_frames: latent frames (as the pipeline passes them).
        vae_scale_factor_spatial: the pipeline's ``vae_scale_factor_spatial``.
        device, dtype: of the tables (float32 as diffusers; float64 for a float64 model).

    Returns:
        ``(cos, sin)``, each ``[T H W, d]`` (``d = attention_head_dim``), values on lane
        pairs ``(2j, 2j + 1)``. CogVideoX 1.0 (``patch_size_t=None``): the grid spans the
        crop of the base grid (``linspace``); 1.5: integer rows and columns (``slice``),
        ``T = ceil(num_frames / patch_size_t)``.
    """
    head_dim = check_int("attention_head_dim", _get(config, "attention_head_dim"), minimum=8)
    p = check_int("patch_size", _get(config, "patch_size"), minimum=1)
    p_t = _get(config, "patch_size_t")
    vae = check_int("vae_scale_factor_spatial", vae_scale_factor_spatial, minimum=1)
    gh = check_int("height", height, minimum=1) // (vae * p)
    gw = check_int("width", width, minimum=1) // (vae * p)
    base_h = check_int("sample_height", _get(config, "sample_height"), minimum=1) // p
    base_w = check_int("sample_width", _get(config, "sample_width"), minimum=1) // p
    frames = check_int("num_frames", num_frames, minimum=1)
    if p_t is None:
        pos = cogvideox_grid(frames, gh, gw, crops_coords=_crop_region((gh, gw), base_w, base_h))
    else:
        p_t = check_int("patch_size_t", p_t, minimum=1)
        pos = cogvideox_grid(math.ceil(frames / p_t), gh, gw, grid_type="slice")
    c, s = cos_sin(cogvideox(head_dim), pos.to(device) if device is not None else pos, dtype=dtype)
    return interleave_pairs(c), interleave_pairs(s)


def _get(config: Any, name: str) -> Any:
    if isinstance(config, dict):
        if name not in config:
            raise RopeValueError(f"config has no {name!r}: expected a CogVideoX transformer config")
        return config[name]
    if not hasattr(config, name):
        raise RopeValueError(f"config has no {name!r}: expected a CogVideoX transformer config")
    return getattr(config, name)
