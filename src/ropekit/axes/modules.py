"""``nn.Module`` s that rotate queries and keys by N-axis RoPE.

Notation: ``b`` batch, ``h_q``/``h_k`` query/key heads, ``s`` sequence length, ``t`` packed
tokens, ``d`` head dim, ``n`` bands, ``A`` position axes.

As :class:`ropekit.RotaryEmbedding`: positions come with each call (``[s, A]`` shared by
the batch, ``[b, s, A]`` per row, ``[t, A]`` packed), tables are built for them in float64
and rounded once, and nothing depends on earlier calls (no cache). Frequencies are kept
in float64 and follow the module's device, never its dtype (``module.to(torch.bfloat16)``
cannot round them).

* :class:`AxisRotaryEmbedding`: fixed frequencies (an :class:`~ropekit.axes.AxesConfig`).
* :class:`MixedRotaryEmbedding`: learned per-head mixed frequencies (RoPE-Mixed), a
  float64 ``nn.Parameter`` ``[A, h, n]``; gradients reach it through the differentiable
  rotation (``backend="auto"`` or ``"reference"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..apply.checks import LAYOUTS
from ..apply.dispatch import Backend, parse_backend
from ..apply.formula import compute_dtype
from ..errors import RopeValueError, check_bool, check_float, check_int, check_tensor
from .config import AxesConfig
from .rotate import apply_axes_rope, apply_axes_rope_qk
from .tables import AxisBands, axis_bands, cos_sin, mixed_cos_sin

__all__ = ["AxisRotaryEmbedding", "MixedRotaryEmbedding", "init_mixed_frequencies"]


def _check_layout(layout: object) -> str:
    if layout not in LAYOUTS:
        raise RopeValueError(f"layout={layout!r} is not allowed: expected one of {LAYOUTS}")
    return layout  # type: ignore[return-value]


def _check_call(
    layout: str, q: torch.Tensor, k: torch.Tensor | None, positions: torch.Tensor, n_axes: int,
    head_dim: int,
) -> tuple[tuple[torch.Tensor, ...], bool]:
    """Shapes of q, k and positions for ``layout``; returns the inputs and whether the
    positions are per batch row (``[b, s, A]``)."""
    check_tensor("q", q)
    xs = (q,) if k is None else (q, check_tensor("k", k))
    packed = layout == "thd"
    rank = 3 if packed else 4
    if any(x.ndim != rank for x in xs):
        want = {"bhsd": "[b, h, s, d]", "bshd": "[b, s, h, d]", "thd": "[t, h, d]"}[layout]
        shapes = ", ".join(f"{n}.shape={tuple(x.shape)}" for n, x in zip("qk", xs, strict=False))
        raise RopeValueError(f"{shapes}: expected {want} for layout={layout!r}")
    b, s = (None, q.shape[0]) if packed else (q.shape[0], q.shape[1 if layout == "bshd" else 2])
    if k is not None:
        kb, ks = (None, k.shape[0]) if packed else (k.shape[0], k.shape[1 if layout == "bshd" else 2])
        if kb != b or ks != s or k.shape[-1] != q.shape[-1]:
            raise RopeValueError(
                f"q.shape={tuple(q.shape)} and k.shape={tuple(k.shape)} do not match: "
                f"expected equal batch, sequence (or token) and head dims for layout={layout!r}"
            )
    if q.shape[-1] != head_dim:
        raise RopeValueError(f"q.shape[-1]={q.shape[-1]} is not allowed: expected head_dim={head_dim}")
    check_tensor("positions", positions)
    allowed = [(s, n_axes)] if packed else [(s, n_axes), (b, s, n_axes)]
    if tuple(positions.shape) not in allowed:
        want = " or ".join(str(list(a)) for a in allowed)
        raise RopeValueError(
            f"positions.shape={tuple(positions.shape)} is not allowed for q.shape="
            f"{tuple(q.shape)} and layout={layout!r}: expected {want} (one coordinate per "
            "axis in the last dim)"
        )
    return xs, positions.ndim == 3


def _table_dtype(xs: tuple[torch.Tensor, ...]) -> torch.dtype:
    # float32 tables for half/float32 inputs: the rotation runs in float32 then
    dtype = xs[0].dtype if len(xs) == 1 else torch.promote_types(xs[0].dtype, xs[1].dtype)
    return compute_dtype(dtype)


class AxisRotaryEmbedding(nn.Module):
    """Applies N-axis RoPE to queries (and keys), as ``config`` describes.

    Args:
        config: the :class:`~ropekit.axes.AxesConfig` (``config.lanes`` must equal the
            inputs' head dim).
        layout: ``"bhsd"`` (default), ``"bshd"`` or ``"thd"``; never guessed.
        backend: as in :func:`ropekit.apply_rope`.

    Example:
        >>> from ropekit.axes import preset
        >>> rope = AxisRotaryEmbedding(preset("qwen2_vl", head_dim=16, section=(2, 3, 3)))
        >>> q, k = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16)
        >>> pos = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 2, 2], [2, 2, 3], [2, 3, 2]])
        >>> q_rot, k_rot = rope(q, k, pos)
    """

    def __init__(
        self, config: AxesConfig, *, layout: str = "bhsd", backend: Backend | str = "auto"
    ) -> None:
        super().__init__()
        if not isinstance(config, AxesConfig):
            raise RopeValueError(
                f"config={config!r} is not allowed: expected a ropekit.axes.AxesConfig"
            )
        self._config = config
        self.layout = _check_layout(layout)
        self.backend = parse_backend(backend)
        with torch.device("cpu"):  # (also inside `with torch.device("meta")`)
            self._master = axis_bands(config, "cpu")
        self._bands: AxisBands = self._master

    @property
    def config(self) -> AxesConfig:
        """The config (read-only: build a new module to change it)."""
        return self._config

    def extra_repr(self) -> str:
        return f"{self.config!r}, layout={self.layout!r}, backend={self.backend.value!r}"

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        # follow the device, never the dtype: the device is read off a probe
        super()._apply(fn, recurse)
        probe = fn(torch.empty(0, dtype=torch.float64, device=self._bands.device))
        self._bands = self._master.to(probe.device)
        return self

    def cos_sin(
        self, positions: torch.Tensor, *, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables ``[*P, n]`` for positions ``[*P, A]`` (:func:`ropekit.axes.cos_sin`)."""
        check_tensor("positions", positions)
        return cos_sin(self._bands.to(positions.device), positions, dtype=dtype)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Rotate ``q`` and ``k`` at ``positions``.

        Args:
            q, k: ``[b, h_q, s, d]``/``[b, h_k, s, d]`` (``bhsd``), ``[b, s, h, d]``
                (``bshd``) or ``[t, h, d]`` (``thd``); ``k=None`` rotates ``q`` alone.
            positions: ``[s, A]`` (shared by the batch) or ``[b, s, A]`` (per row), or
                ``[t, A]`` packed; integer or real (float64 for fractional coordinates).

        Returns:
            ``(q_rot, k_rot)`` like ``q`` and ``k``; ``q_rot`` alone when ``k`` is None.
        """
        if positions is None:
            raise RopeValueError(
                "positions=None is not allowed: N-axis RoPE needs explicit positions [s, A] "
                "or [b, s, A] (see ropekit.axes.positions for the builders)"
            )
        xs, per_row = _check_call(self.layout, q, k, positions, self.config.n_axes,
                                  self.config.lanes)  # fmt: skip
        cos, sin = self.cos_sin(positions.to(q.device), dtype=_table_dtype(xs))
        cos, sin = _broadcast(cos, sin, self.layout, per_row, heads=False)
        args = dict(layout=self.layout, backend=self.backend)
        if k is None:
            return apply_axes_rope(self.config, q, cos, sin, **args)
        return apply_axes_rope_qk(self.config, q, k, cos, sin, **args)


def _broadcast(
    cos: torch.Tensor, sin: torch.Tensor, layout: str, per_row: bool, *, heads: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables ``[*P, n]`` (``heads``: ``[*P, h, n]``) shaped to broadcast over ``layout``."""
    if heads:
        if layout == "bhsd":  # [s, h, n] -> [h, s, n]; [b, s, h, n] -> [b, h, s, n]
            return cos.movedim(-2, -3), sin.movedim(-2, -3)
        return cos, sin  # [s, h, n] / [b, s, h, n] / [t, h, n] as they are
    if layout == "bhsd":
        if per_row:  # [b, s, n] -> [b, 1, s, n]
            return cos.unsqueeze(1), sin.unsqueeze(1)
        return cos, sin
    return cos.unsqueeze(-2), sin.unsqueeze(-2)  # [.., s, n] -> [.., s, 1, n]


def init_mixed_frequencies(
    head_dim: int,
    heads: int,
    *,
    theta: float = 10.0,
    rotate: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RoPE-Mixed's initial frequencies ``[2, heads, head_dim // 2]`` (float64).

    Magnitudes ``m_k = theta ** (-4k / head_dim)``, ``k < head_dim / 4``; each head draws
    an angle ``phi ~ U[0, 2 pi)`` (``rotate=False``: ``phi = 0``); the bands are
    ``[m cos(phi), m cos(phi + pi/2)]`` along x (axis 0) and ``[m sin(phi), m sin(phi +
    pi/2)]`` along y (axis 1): two orthogonal directions per magnitude (Heo et al. 2024).

    ``head_dim`` must be a multiple of 4. ``generator`` makes the draw reproducible.
    """
    d = check_int("head_dim", head_dim, minimum=4)
    if d % 4:
        raise RopeValueError(f"head_dim={d} is not allowed: expected a multiple of 4 for RoPE-Mixed")
    h = check_int("heads", heads, minimum=1)
    theta = check_float("theta", theta, positive=True)
    check_bool("rotate", rotate)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise RopeValueError(f"generator={generator!r} is not allowed: expected a torch.Generator")
    mag = 1.0 / torch.pow(theta, torch.arange(0, d, 4, dtype=torch.float64) / d)  # [d/4]
    if rotate:
        phi = torch.rand(h, 1, generator=generator, dtype=torch.float64) * (2 * math.pi)
    else:
        phi = torch.zeros(h, 1, dtype=torch.float64)
    fx = torch.cat([mag * torch.cos(phi), mag * torch.cos(phi + math.pi / 2)], dim=-1)
    fy = torch.cat([mag * torch.sin(phi), mag * torch.sin(phi + math.pi / 2)], dim=-1)
    return torch.stack([fx, fy])  # [2, h, d/2]


class MixedRotaryEmbedding(nn.Module):
    """RoPE-Mixed: learned per-head frequencies over ``A`` axes, one module per layer.

    ``angle[..., head, j] = sum_a pos[..., a] * freqs[a, head, j]`` (float64), bands
    paired ``(2j, 2j + 1)`` (``interleaved=True``, timm's layout) or ``(j, j + n)``.

    Args:
        freqs: initial ``[A, h, n]`` frequencies (e.g. :func:`init_mixed_frequencies`),
            kept as a float64 ``nn.Parameter`` ``self.freqs`` (it stays float64 under
            ``module.to(dtype)``; it follows the device).
        head_dim: ``d >= 2n`` of the inputs (default ``2n``).
        interleaved: pair layout.
        layout, backend: as in :class:`AxisRotaryEmbedding`; gradients reach ``freqs``
            with ``backend="auto"`` or ``"reference"``.
    """

    def __init__(
        self,
        freqs: torch.Tensor,
        *,
        head_dim: int | None = None,
        interleaved: bool = True,
        layout: str = "bhsd",
        backend: Backend | str = "auto",
    ) -> None:
        super().__init__()
        check_tensor("freqs", freqs)
        if freqs.ndim != 3 or not freqs.is_floating_point() or freqs.shape[-1] < 1:
            raise RopeValueError(
                f"freqs with shape {tuple(freqs.shape)} and dtype {freqs.dtype} is not "
                "allowed: expected a real floating tensor [A, h, n]"
            )
        n = freqs.shape[-1]
        self.head_dim = 2 * n if head_dim is None else check_int("head_dim", head_dim, minimum=2 * n)
        self.interleaved = check_bool("interleaved", interleaved)
        self.layout = _check_layout(layout)
        self.backend = parse_backend(backend)
        self.freqs = nn.Parameter(freqs.detach().to(torch.float64).clone())
        self._config = AxesConfig(axis=(0,) * n, freq=(0.0,) * n, n_axes=1, head_dim=self.head_dim,
                                  pairing="interleaved" if interleaved else "half")  # fmt: skip

    def extra_repr(self) -> str:
        a, h, n = self.freqs.shape
        return f"axes={a}, heads={h}, pairs={n}, interleaved={self.interleaved}, layout={self.layout!r}"

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        # the learned frequencies move with the module but stay float64
        probe = fn(torch.empty(0, dtype=torch.float64, device=self.freqs.device))
        with torch.no_grad():
            self.freqs.data = self.freqs.data.to(probe.device)
            if self.freqs.grad is not None:
                self.freqs.grad.data = self.freqs.grad.data.to(probe.device)
        return self

    def cos_sin(
        self, positions: torch.Tensor, *, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables ``[*P, h, n]`` for positions ``[*P, A]`` (:func:`ropekit.axes.mixed_cos_sin`)."""
        return mixed_cos_sin(self.freqs, positions, dtype=dtype)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Rotate ``q`` (and ``k``) at ``positions`` ``[s, A]``/``[b, s, A]``/``[t, A]``.

        ``h_q`` and ``h_k`` must equal the frequencies' head count (each head has its own
        frequencies).
        """
        if positions is None:
            raise RopeValueError("positions=None is not allowed: expected [s, A] or [b, s, A]")
        xs, per_row = _check_call(self.layout, q, k, positions, self.freqs.shape[0], self.head_dim)
        heads = self.freqs.shape[1]
        axis = 1 if self.layout == "bhsd" else (-2)
        for name, x in zip("qk", xs, strict=False):
            if x.shape[axis] != heads:
                raise RopeValueError(
                    f"{name}.shape={tuple(x.shape)} is not allowed: expected {heads} heads "
                    "(the learned frequencies have one set per head)"
                )
        cos, sin = self.cos_sin(positions.to(q.device), dtype=_table_dtype(xs))
        cos, sin = _broadcast(cos, sin, self.layout, per_row, heads=True)
        args = dict(layout=self.layout, backend=self.backend)
        if k is None:
            return apply_axes_rope(self._config, q, cos, sin, **args)
        return apply_axes_rope_qk(self._config, q, k, cos, sin, **args)
