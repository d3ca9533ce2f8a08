"""``RopeConfig``: everything that determines a model's rotary embedding, validated once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from .errors import RopeValueError, check_float, check_int
from .frequencies.base import rotary_lanes
from .frequencies.scaling import Scaling
from .tables.cos_sin import cos_sin

__all__ = ["RopeConfig"]


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one attention layer.

    Attributes:
        head_dim: lanes per head ``d`` (``>= 2``; odd allowed: the last lane passes through).
        theta: frequency base (``theta_i = theta ** (-2i / rotary_dim)``), finite ``> 0``.
        rotary_dim: rotate only the first ``rotary_dim`` lanes (even, ``<= head_dim``);
            ``None`` rotates all ``2 * (head_dim // 2)`` of them.
        interleaved: pair lanes ``(2i, 2i+1)`` (GPT-J/Meta) instead of ``(i, i + n)``
            (GPT-NeoX/Hugging Face).
        scaling: a context-extension method (:mod:`ropekit.frequencies.scaling`);
            ``None`` is plain RoPE.
        max_position: the context length the model is configured for (informational for
            plain RoPE; some scaling methods need it).
    """

    head_dim: int
    theta: float = 10000.0
    rotary_dim: int | None = None
    interleaved: bool = False
    scaling: Scaling | None = None
    max_position: int | None = None

    def __post_init__(self) -> None:
        rotary_lanes(self.head_dim, self.rotary_dim)
        object.__setattr__(self, "theta", check_float("theta", self.theta, positive=True))
        if not isinstance(self.interleaved, bool):
            raise RopeValueError(f"interleaved={self.interleaved!r} is not allowed: expected a bool")
        if self.scaling is not None and not isinstance(self.scaling, Scaling):
            raise RopeValueError(
                f"scaling={self.scaling!r} is not allowed: expected None or a ropekit Scaling "
                "instance (see ropekit.SCALINGS)"
            )
        if self.max_position is not None:
            check_int("max_position", self.max_position, minimum=1)
        # The method's own parameters were validated when it was built; here they meet
        # the model's shape and context (pair counts of LongRoPE lists, original context
        # not longer than max_position, ...).
        self.method.check_config(self.head_dim, self.rotary_dim, self.max_position)

    @property
    def n_pairs(self) -> int:
        """Number of rotated pairs ``n = (rotary_dim or head_dim) // 2``."""
        return rotary_lanes(self.head_dim, self.rotary_dim) // 2

    @property
    def method(self) -> Scaling:
        """The scaling method, plain RoPE (:class:`Scaling`) when ``scaling`` is None."""
        return self.scaling if self.scaling is not None else Scaling()

    def frequencies(self, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
        """``(inv_freq [n] float64, attention_factor)`` for a sequence of ``seq_len`` tokens.

        ``seq_len`` matters only for methods whose tables depend on the length
        (dynamic NTK, LongRoPE); ``None`` means "within the configured context".
        """
        if seq_len is not None:
            check_int("seq_len", seq_len, minimum=1)
        return self.method.frequencies(self.head_dim, self.theta, self.rotary_dim, seq_len)

    def inv_freq(self, seq_len: int | None = None) -> torch.Tensor:
        """Inverse frequencies ``[n]`` (float64); see :meth:`frequencies`."""
        return self.frequencies(seq_len)[0]

    @property
    def attention_factor(self) -> float:
        """Multiplier folded into cos/sin (1 for plain RoPE) within the configured context."""
        return self.frequencies(None)[1]

    def cos_sin(
        self,
        positions: torch.Tensor,
        *,
        seq_len: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact tables ``[*P, n]`` for ``positions`` ``[*P]`` (see :func:`ropekit.cos_sin`)."""
        freqs, factor = self.frequencies(seq_len)
        return cos_sin(freqs, positions, attention_factor=factor, dtype=dtype)

    def replace(self, **changes: Any) -> RopeConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_hf(
        cls, config: Any, *, layer_type: str | None = None, allow_unknown: bool = False
    ) -> RopeConfig:
        """From a ``transformers`` config object or a ``config.json`` dict (4.x or 5.x).

        See :func:`ropekit.integrations.hf_config.from_hf`.
        """
        from .integrations.hf_config import from_hf

        return from_hf(config, layer_type=layer_type, allow_unknown=allow_unknown)

    def to_hf(self, *, version: int = 5) -> dict[str, Any]:
        """The RoPE keys of a Hugging Face ``config.json`` (``from_hf`` reads them back).

        See :func:`ropekit.integrations.hf_config.to_hf`.
        """
        from .integrations.hf_config import to_hf

        return to_hf(self, version=version)
