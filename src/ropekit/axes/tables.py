"""Exact cos/sin tables of N-axis RoPE, from positions ``[*P, A]``.

Notation: ``A`` position axes, ``n`` bands (rotated pairs), ``h`` heads, ``*P`` the leading
shape of the positions, ``f`` the attention factor.

Fixed frequencies (:class:`~ropekit.axes.AxesConfig`)::

    cos[..., j] = f * cos(pos[..., axis[j]] * freq[j])      (likewise sin)

Each axis's columns are built by ropekit's 1-D tables (:func:`ropekit.cos_sin`: float64
angle addition, integer or fractional coordinates, rounded once to ``dtype``) from that
axis's coordinate and the frequencies of its bands, then placed into their bands. So
every entry is the 1-D table's entry of its own ``(coordinate, frequency)`` bit for bit:
a config with one axis equals 1-D ropekit exactly, and the precision statement of
:mod:`ropekit.tables.cos_sin` holds per band.

Learned mixed frequencies (RoPE-Mixed, Heo et al. 2024; :func:`mixed_cos_sin`)::

    angle[..., head, j] = sum_a pos[..., a] * F[a, head, j]          (float64, a = 0, 1, ...)

computed directly in float64 (a sum over axes has no angle-addition split), cos/sin
rounded once; differentiable in ``F``.
"""

from __future__ import annotations

import torch

from ..errors import RopeValueError, check_float, check_float_dtype, check_tensor
from ..tables.cos_sin import check_positions, fine_table, position_tables
from .config import AxesConfig

__all__ = ["AxisBands", "axis_bands", "cos_sin", "mixed_cos_sin"]


class AxisBands:
    """The per-axis pieces of a config's tables on one device: for each axis that has
    bands, its band indices, float64 frequencies and angle-addition fine table.

    A pure function of the config (what a module keeps so that a call does trig only
    for its own positions); build it with :func:`axis_bands`.
    """

    __slots__ = ("config", "device", "parts")

    def __init__(self, config: AxesConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        parts = []
        freq = config.frequencies()
        for a in range(config.n_axes):
            bands = config.bands(a)
            if not bands:
                continue
            index = torch.tensor(bands, dtype=torch.int64)
            contiguous = bands == tuple(range(bands[0], bands[0] + len(bands)))
            inv = freq.index_select(0, index)
            fine = fine_table(inv, attention_factor=config.attention_factor)
            where = slice(bands[0], bands[-1] + 1) if contiguous else index.to(self.device)
            parts.append((a, where, inv.to(self.device), fine.to(self.device)))
        self.parts = tuple(parts)

    def to(self, device: torch.device | str) -> AxisBands:
        """The same pieces on ``device`` (itself if already there)."""
        device = torch.device(device)
        return self if device == self.device else AxisBands(self.config, device)


def axis_bands(config: AxesConfig, device: torch.device | str = "cpu") -> AxisBands:
    """:class:`AxisBands` of ``config`` on ``device``."""
    if not isinstance(config, AxesConfig):
        raise RopeValueError(f"config={config!r} is not allowed: expected a ropekit.axes.AxesConfig")
    return AxisBands(config, device)


def _check_axes_positions(positions: torch.Tensor, n_axes: int) -> None:
    check_tensor("positions", positions)
    if positions.ndim < 1 or positions.shape[-1] != n_axes:
        raise RopeValueError(
            f"positions.shape={tuple(positions.shape)} is not allowed: expected [*P, {n_axes}] "
            f"(one coordinate per axis in the last dim)"
        )
    if positions.dtype == torch.bool or positions.is_complex():
        raise RopeValueError(
            f"positions.dtype={positions.dtype} is not allowed: expected an integer or real "
            "floating dtype"
        )


def cos_sin(
    config: AxesConfig | AxisBands,
    positions: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables of an N-axis RoPE.

    ``cos[..., j] = f * cos(positions[..., axis[j]] * freq[j])`` (and ``sin``), float64
    angles by angle addition, rounded once (see the module docstring).

    Args:
        config: an :class:`~ropekit.axes.AxesConfig` (or its :class:`AxisBands`, kept by
            a module, which changes the speed only).
        positions: ``[*P, A]`` integer or real coordinates (fractional allowed: DINOv3,
            LTX, EVA-02 rescaled grids), ``|value| <= 2**53``; their device is the output
            device. Pass real coordinates as float64: a float32 coordinate has already
            lost its digits.
        dtype: floating dtype of the tables.

    Returns:
        ``(cos, sin)``, each ``[*P, n]`` of ``dtype``, for :func:`ropekit.apply_rope` and
        the other rotation functions (broadcast over heads as the layout needs) or
        :func:`ropekit.axes.apply_axes_rope`.

    Example:
        >>> from ropekit.axes import AxesConfig
        >>> cfg = AxesConfig(axis=(0, 1), freq=(1.0, 1.0), n_axes=2)
        >>> c, s = cos_sin(cfg, torch.tensor([[0, 2]]), dtype=torch.float64)
        >>> torch.allclose(c, torch.tensor([[1.0, torch.cos(torch.tensor(2.0)).item()]],
        ...                                dtype=torch.float64))
        True
    """
    bands = config if isinstance(config, AxisBands) else axis_bands(config)
    cfg = bands.config
    _check_axes_positions(positions, cfg.n_axes)
    check_float_dtype("dtype", dtype)
    bands = bands.to(positions.device)
    check_positions(positions)  # |m| <= 2**53 and finite, once for all axes
    # [2, *P, n]: cos and sin are two contiguous halves of one buffer, as in 1-D
    out = torch.empty(2, *positions.shape[:-1], cfg.n_pairs, dtype=dtype, device=positions.device)
    factor = cfg.attention_factor
    cos, sin = out[0], out[1]
    for a, where, inv, fine in bands.parts:
        # the 1-D tables of this axis's coordinate; the frequencies and fine table are
        # AxisBands' own (checked once when it was built), the positions checked above
        c, s = position_tables(inv, positions[..., a], factor, fine, dtype)
        for half, part in ((cos, c), (sin, s)):
            if isinstance(where, slice):
                half[..., where] = part
            else:
                half.index_copy_(half.ndim - 1, where, part)
    return cos, sin


def mixed_cos_sin(
    freqs: torch.Tensor,
    positions: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    attention_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables of learned mixed frequencies (RoPE-Mixed).

    ``angle[..., head, j] = sum_a positions[..., a] * freqs[a, head, j]`` in float64
    (summed in axis order), ``cos``/``sin`` times ``attention_factor``, rounded once.

    Args:
        freqs: ``[A, h, n]`` real tensor (a parameter: gradients flow into it).
        positions: ``[*P, A]`` integer or real coordinates.
        dtype: floating dtype of the tables.
        attention_factor: finite ``> 0`` multiplier.

    Returns:
        ``(cos, sin)``, each ``[*P, h, n]`` of ``dtype``: for ``[b, s, h, d]`` inputs with
        positions ``[s, A]`` or ``[b, s, A]``, they broadcast as they are (``bshd``);
        for ``[b, h, s, d]`` move the head dim first (``.movedim(-2, -3)``).
    """
    check_tensor("freqs", freqs)
    if freqs.ndim != 3 or not freqs.is_floating_point():
        raise RopeValueError(
            f"freqs with shape {tuple(freqs.shape)} and dtype {freqs.dtype} is not allowed: "
            "expected a real floating tensor [A, h, n]"
        )
    _check_axes_positions(positions, freqs.shape[0])
    check_float_dtype("dtype", dtype)
    attention_factor = check_float("attention_factor", attention_factor, positive=True)
    check_positions(positions)
    pos = positions.to(torch.float64)
    f64 = freqs.to(device=positions.device, dtype=torch.float64)
    angle = pos[..., 0, None, None] * f64[0]
    for a in range(1, freqs.shape[0]):
        angle = angle + pos[..., a, None, None] * f64[a]
    c, s = torch.cos(angle), torch.sin(angle)
    if attention_factor != 1.0:
        c, s = c * attention_factor, s * attention_factor
    return c.to(dtype), s.to(dtype)
