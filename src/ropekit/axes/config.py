"""``AxesConfig``: which position axis and which frequency each rotated pair uses.

Notation: ``A`` position axes (``t, h, w`` for video, ``h, w`` for images), ``n`` rotated
pairs (bands), ``j`` a band index, ``d`` head dim, ``*P`` the leading shape of a
positions tensor ``[*P, A]``.

The whole description of an N-axis RoPE is two per-band lists::

    angle_j = pos[..., axis[j]] * freq[j]            (float64)

plus how the ``n`` bands are laid out over the ``d`` lanes (``pairing``):

* ``"half"``: band ``j`` rotates lanes ``(j, j + n)`` (Hugging Face ``rotate_half``;
  Qwen-VL, Pixtral, DINOv3);
* ``"interleaved"``: lanes ``(2j, 2j + 1)`` (complex form; Flux, Wan, HunyuanVideo,
  CogVideoX, LTX, Llama 4 vision, EVA-02);
* ``"blocks"``: the lanes are cut into consecutive blocks of ``2 * block_pairs[k]`` lanes,
  each rotated half-split on its own with the next ``block_pairs[k]`` bands (Gemma 4
  vision's ``apply_multidimensional_rope``).

Lanes ``[2n, d)`` pass through. Every band is then exactly the 1-D formula of its own
axis coordinate, which is how the tables are built (:mod:`ropekit.axes.tables`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import RopeValueError, check_float, check_int

__all__ = ["PAIRINGS", "AxesConfig"]

#: The pair layouts an :class:`AxesConfig` can describe.
PAIRINGS = ("half", "interleaved", "blocks")


def _int_tuple(name: str, values: Any, minimum: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, torch.Tensor)):
        raise RopeValueError(f"{name}={values!r} is not allowed: expected a sequence of ints")
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    return tuple(check_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(values))


def _float_tuple(name: str, values: Any) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, torch.Tensor)):
        raise RopeValueError(f"{name}={values!r} is not allowed: expected a sequence of reals")
    if isinstance(values, torch.Tensor):
        if values.is_complex() or values.dtype == torch.bool:
            raise RopeValueError(f"{name} of dtype {values.dtype} is not allowed: expected reals")
        values = values.to(torch.float64).tolist()
    return tuple(check_float(f"{name}[{i}]", v) for i, v in enumerate(values))


def _spectrum(dim: int, theta: float) -> list[float]:
    """``theta ** (-2k / dim)`` for ``k < dim / 2``, float64, as :func:`ropekit.inv_freq`
    rounds it (``1 / theta ** e``)."""
    e = torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim
    return (1.0 / torch.pow(theta, e)).tolist()


@dataclass(frozen=True)
class AxesConfig:
    """An N-axis rotary embedding: for each band ``j < n`` its axis and frequency.

    Attributes:
        axis: ``n`` ints, ``axis[j]`` in ``[0, n_axes)``: the coordinate band ``j`` reads.
        freq: ``n`` finite reals (kept as Python floats, i.e. float64): radians per unit
            of that coordinate. 0 is allowed (a band that never turns: LTX's padding).
        n_axes: ``A``, the last dim of the positions (``>= 1``; an axis no band reads is
            allowed: Flux 2's unused layer axis in text-only runs, Qwen3-VL's time axis
            when its section is 0).
        head_dim: ``d`` lanes per head, ``>= 2n``; ``None`` means ``2n``.
        pairing: ``"half"``, ``"interleaved"`` or ``"blocks"`` (see the module docstring).
        block_pairs: for ``pairing="blocks"`` only: pairs per lane block, summing to ``n``.
        attention_factor: finite ``> 0`` multiplier folded into cos and sin (1: none).
        names: optional axis names (``("t", "h", "w")``), for messages and ``repr`` only.

    Angles are float64 and rounded once when the tables are built; positions may be
    integers or fractional coordinates.

    Example:
        >>> cfg = AxesConfig(axis=(0, 1), freq=(1.0, 0.5), n_axes=2)
        >>> cfg.n_pairs, cfg.lanes
        (2, 4)
    """

    axis: tuple[int, ...]
    freq: tuple[float, ...]
    n_axes: int
    head_dim: int | None = None
    pairing: str = "half"
    block_pairs: tuple[int, ...] | None = None
    attention_factor: float = 1.0
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "n_axes", check_int("n_axes", self.n_axes, minimum=1))
        axis = _int_tuple("axis", self.axis, 0)
        freq = _float_tuple("freq", self.freq)
        if not axis:
            raise RopeValueError("axis=() is not allowed: expected at least one band")
        if len(axis) != len(freq):
            raise RopeValueError(
                f"axis has {len(axis)} bands and freq has {len(freq)}: expected one frequency "
                "per band"
            )
        bad = [a for a in axis if a >= self.n_axes]
        if bad:
            raise RopeValueError(
                f"axis={axis!r} is not allowed: expected axes in [0, n_axes={self.n_axes}), "
                f"got {bad[0]}"
            )
        set_(self, "axis", axis)
        set_(self, "freq", freq)
        n = len(axis)
        if self.head_dim is not None:
            d = check_int("head_dim", self.head_dim, minimum=2)
            if d < 2 * n:
                raise RopeValueError(
                    f"head_dim={d} is not allowed for {n} bands: expected head_dim >= 2 * {n} "
                    "(each band rotates two lanes)"
                )
            set_(self, "head_dim", d)
        if self.pairing not in PAIRINGS:
            raise RopeValueError(
                f"pairing={self.pairing!r} is not allowed: expected one of {PAIRINGS}"
            )
        if self.pairing == "blocks":
            if self.block_pairs is None:
                raise RopeValueError(
                    "pairing='blocks' needs block_pairs: expected the pairs of each lane block"
                )
            blocks = _int_tuple("block_pairs", self.block_pairs, 1)
            if sum(blocks) != n:
                raise RopeValueError(
                    f"block_pairs={blocks!r} is not allowed: expected pairs summing to the "
                    f"{n} bands"
                )
            set_(self, "block_pairs", blocks)
        elif self.block_pairs is not None:
            raise RopeValueError(
                f"block_pairs={self.block_pairs!r} is not allowed with pairing="
                f"{self.pairing!r}: expected None (block_pairs is for pairing='blocks')"
            )
        set_(self, "attention_factor",
             check_float("attention_factor", self.attention_factor, positive=True))  # fmt: skip
        if self.names is not None:
            names = tuple(self.names) if not isinstance(self.names, str) else None
            if names is None or len(names) != self.n_axes or not all(
                isinstance(s, str) for s in names
            ):
                raise RopeValueError(
                    f"names={self.names!r} is not allowed: expected None or {self.n_axes} strings"
                )
            set_(self, "names", names)

    # ------------------------------------------------------------------ derived

    @property
    def n_pairs(self) -> int:
        """``n``, the number of rotated pairs (bands)."""
        return len(self.axis)

    @property
    def lanes(self) -> int:
        """``d``: ``head_dim``, or ``2n`` when it is not set."""
        return self.head_dim if self.head_dim is not None else 2 * self.n_pairs

    @property
    def interleaved(self) -> bool:
        """Whether the pairs are ``(2j, 2j + 1)`` (the ``interleaved=`` of the rotation)."""
        return self.pairing == "interleaved"

    def bands(self, axis: int) -> tuple[int, ...]:
        """The band indices ``j`` that read coordinate ``axis``, ascending."""
        a = check_int("axis", axis, minimum=0)
        return tuple(j for j, b in enumerate(self.axis) if b == a)

    def frequencies(self) -> torch.Tensor:
        """``freq`` as a float64 tensor ``[n]`` (CPU)."""
        return torch.tensor(self.freq, dtype=torch.float64, device="cpu")

    def axis_index(self) -> torch.Tensor:
        """``axis`` as an int64 tensor ``[n]`` (CPU)."""
        return torch.tensor(self.axis, dtype=torch.int64, device="cpu")

    def replace(self, **changes: Any) -> AxesConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # ------------------------------------------------------------- constructors

    @classmethod
    def blocked(
        cls,
        axis_dims: Sequence[int],
        theta: float | Sequence[float] = 10000.0,
        *,
        pairing: str = "interleaved",
        scale: float | Sequence[float] = 1.0,
        head_dim: int | None = None,
        names: Sequence[str] | None = None,
        attention_factor: float = 1.0,
    ) -> AxesConfig:
        """Axis-concatenated RoPE: axis ``a`` owns ``axis_dims[a]`` consecutive lanes.

        Band ``k`` of axis ``a`` (``k < axis_dims[a] / 2``) has frequency
        ``scale[a] * theta[a] ** (-2k / axis_dims[a])``; bands are ordered axis by axis
        (all of axis 0, then axis 1, ...). An axis of 0 lanes is allowed (no bands).
        ``theta`` and ``scale`` may be one number for every axis. With ``pairing="blocks"``
        each axis's lanes are one half-split block (Gemma 4 vision).

        Example (Flux: ``(16, 56, 56)``, theta 1e4, interleaved pairs):
            >>> AxesConfig.blocked((16, 56, 56), 10000.0).n_pairs
            64
        """
        dims = _int_tuple("axis_dims", axis_dims, 0)
        if not dims:
            raise RopeValueError("axis_dims=() is not allowed: expected one entry per axis")
        for i, dim in enumerate(dims):
            if dim % 2:
                raise RopeValueError(
                    f"axis_dims[{i}]={dim} is not allowed: expected an even number of lanes "
                    "(lanes rotate in pairs)"
                )
        thetas = _per_axis("theta", theta, len(dims), positive=True)
        scales = _per_axis("scale", scale, len(dims), positive=True)
        axis: list[int] = []
        freq: list[float] = []
        for a, (dim, th, sc) in enumerate(zip(dims, thetas, scales, strict=True)):
            spectrum = _spectrum(dim, th) if dim else []
            axis += [a] * len(spectrum)
            # the scale multiplies the float64 frequency once (DINOv3's 2 pi): one rounding
            freq += [sc * f for f in spectrum] if sc != 1.0 else spectrum
        _check_finite_spectrum(freq, thetas)
        blocks = tuple(d // 2 for d in dims if d) if pairing == "blocks" else None
        return cls(
            axis=tuple(axis), freq=tuple(freq), n_axes=len(dims), head_dim=head_dim,
            pairing=pairing, block_pairs=blocks, attention_factor=attention_factor,
            names=None if names is None else tuple(names),
        )  # fmt: skip

    @classmethod
    def sections(
        cls,
        head_dim: int,
        theta: float,
        section: Sequence[int],
        *,
        interleaved_sections: bool = False,
        pairing: str = "half",
        names: Sequence[str] | None = ("t", "h", "w"),
        attention_factor: float = 1.0,
    ) -> AxesConfig:
        """M-RoPE: the 1-D spectrum ``theta ** (-2j / head_dim)`` with bands dealt to axes.

        ``interleaved_sections=False`` (Qwen2-VL, Qwen2.5-VL): the ``n = head_dim / 2``
        bands are cut into consecutive chunks of ``section[i]`` bands; chunk ``i`` reads
        axis ``i % len(section)``; ``sum(section) == n``.

        ``interleaved_sections=True`` (Qwen3-VL, 3 axes): band ``j`` reads axis 1 (h) if
        ``j % 3 == 1 and j < 3 * section[1]``, axis 2 (w) if ``j % 3 == 2 and j < 3 *
        section[2]``, else axis 0 (t); ``sum(section) == n``.

        Example (Qwen2-VL, head 128, sections ``[16, 24, 24]``):
            >>> cfg = AxesConfig.sections(128, 1e6, (16, 24, 24))
            >>> cfg.axis[15], cfg.axis[16], cfg.axis[40]
            (0, 1, 2)
        """
        d = check_int("head_dim", head_dim, minimum=2)
        if d % 2:
            raise RopeValueError(f"head_dim={d} is not allowed for M-RoPE: expected an even int")
        theta = check_float("theta", theta, positive=True)
        sec = _int_tuple("mrope_section", section, 0)
        n = d // 2
        if not sec or sum(sec) != n:
            raise RopeValueError(
                f"mrope_section={list(sec)!r} is not allowed with head_dim={d}: expected "
                f"sections summing to head_dim / 2 = {n}"
            )
        if interleaved_sections:
            if len(sec) != 3:
                raise RopeValueError(
                    f"mrope_section={list(sec)!r} is not allowed for interleaved M-RoPE: "
                    "expected 3 sections (t, h, w)"
                )
            axis = [0] * n
            for a in (1, 2):
                for j in range(a, min(3 * sec[a], n), 3):
                    axis[j] = a
            # the interleave must give each axis its section's count, or the checkpoint's
            # section does not describe it (transformers would silently clamp)
            counts = [axis.count(a) for a in range(3)]
            if counts != list(sec):
                raise RopeValueError(
                    f"mrope_section={list(sec)!r} is not allowed for interleaved M-RoPE: "
                    f"the interleave t, h, w, t, h, w, ... gives {counts} bands per axis; "
                    "expected sections it reproduces (h and w sections <= the t section)"
                )
            n_axes = 3
        else:
            axis = [i % len(sec) for i, c in enumerate(sec) for _ in range(c)]
            n_axes = len(sec)
        freq = _spectrum(d, theta)
        _check_finite_spectrum(freq, [theta])
        return cls(
            axis=tuple(axis), freq=tuple(freq), n_axes=n_axes, head_dim=d, pairing=pairing,
            attention_factor=attention_factor, names=None if names is None or len(names) !=
            n_axes else tuple(names),
        )  # fmt: skip


def _per_axis(name: str, value: Any, count: int, *, positive: bool) -> list[float]:
    if isinstance(value, (Sequence, torch.Tensor)) and not isinstance(value, (str, bytes)):
        values = _float_tuple(name, value)
        if len(values) != count:
            raise RopeValueError(
                f"{name}={list(values)!r} is not allowed: expected one value per axis ({count})"
            )
        if positive:
            for i, v in enumerate(values):
                check_float(f"{name}[{i}]", v, positive=True)
        return list(values)
    return [check_float(name, value, positive=positive)] * count


def _check_finite_spectrum(freq: list[float], thetas: list[float]) -> None:
    if not all(math.isfinite(f) and f > 0 for f in freq):
        raise RopeValueError(
            f"theta={thetas!r} is not allowed: its frequencies theta ** (-2k / dim) leave "
            "float64's range; expected a theta whose powers are finite and > 0"
        )
