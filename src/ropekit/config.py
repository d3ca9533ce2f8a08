"""``RopeConfig``: everything that determines a model's rotary embedding, validated once.

Reading and writing Hugging Face configs is :mod:`ropekit.hf` (``ropekit.hf.from_hf`` /
``ropekit.hf.to_hf``), which imports this module; this module imports nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .errors import RopeValueError, check_bool, check_float, check_int, check_tensor
from .frequencies.base import rotary_lanes
from .frequencies.scaling import Plain, Scaling
from .frequencies.temperature import Llama4Temperature
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
        scaling: a context-extension method (:mod:`ropekit.scaling`); always one:
            ``None`` (accepted by the constructor) is stored as plain RoPE,
            :class:`ropekit.scaling.Plain`.
        max_position: the context length the model is configured for (informational for
            plain RoPE; some scaling methods need it).
        temperature: a position-dependent multiplier of the *queries* that some models
            apply after RoPE (:class:`~ropekit.frequencies.Llama4Temperature`: Llama 4,
            Mistral 4, Ministral 3); ``None`` for none. It is not part of the rotation
            (:meth:`cos_sin`, :meth:`frequencies` and the rotation functions ignore it, as
            transformers' rotary modules do): multiply q by :meth:`query_scale`.

    Integers and reals may be numpy scalars (stored as Python ``int`` / ``float``); bools
    and strings are refused. Validation computes the tables once: a config that builds
    has finite inverse frequencies and a finite attention factor ``> 0``.
    """

    head_dim: int
    theta: float = 10000.0
    rotary_dim: int | None = None
    interleaved: bool = False
    scaling: Scaling = field(default_factory=Plain)
    max_position: int | None = None
    temperature: Llama4Temperature | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "head_dim", check_int("head_dim", self.head_dim, minimum=2))
        if self.rotary_dim is not None:
            set_(self, "rotary_dim", check_int("rotary_dim", self.rotary_dim, minimum=2))
        rotary_lanes(self.head_dim, self.rotary_dim)
        set_(self, "theta", check_float("theta", self.theta, positive=True))
        check_bool("interleaved", self.interleaved)
        if self.scaling is None:
            set_(self, "scaling", Plain())
        elif not isinstance(self.scaling, Scaling):
            raise RopeValueError(
                f"scaling={self.scaling!r} is not allowed: expected None or a ropekit Scaling "
                "instance (see ropekit.scaling.SCALINGS)"
            )
        if self.max_position is not None:
            set_(self, "max_position", check_int("max_position", self.max_position, minimum=1))
        if self.temperature is not None and not isinstance(self.temperature, Llama4Temperature):
            raise RopeValueError(
                f"temperature={self.temperature!r} is not allowed: expected None or a "
                "ropekit.frequencies.Llama4Temperature"
            )
        # The method's own parameters were validated when it was built; here they meet
        # the model's shape, base and context (pair counts of LongRoPE lists, original
        # context not longer than max_position, YaRN's theta > 1, frequencies that stay
        # inside float64's range for this theta and head size, ...).
        self.scaling.check_config(
            self.head_dim, self.rotary_dim, self.max_position, theta=self.theta
        )

    @property
    def n_pairs(self) -> int:
        """Number of rotated pairs ``n = (rotary_dim or head_dim) // 2``."""
        return rotary_lanes(self.head_dim, self.rotary_dim) // 2

    def frequencies(self, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
        """``(inv_freq [n] float64, attention_factor)`` for a sequence of ``seq_len`` tokens.

        ``seq_len`` matters only for methods whose tables depend on the length
        (dynamic NTK, LongRoPE); ``None`` means "within the configured context".
        """
        if seq_len is not None:
            check_int("seq_len", seq_len, minimum=1)
        return self.scaling.frequencies(self.head_dim, self.theta, self.rotary_dim, seq_len)

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

    def query_scale(self, positions: torch.Tensor) -> torch.Tensor:
        """The query multiplier ``[*P]`` (float64) at integer ``positions`` ``[*P]``.

        ``temperature.scale(positions)`` when the config has a temperature, else ones.
        Multiply the rotated queries by it (``q * scale[..., None]`` for ``q`` ``[*P, d]``
        broadcast over heads as the layout needs); keys are not scaled.
        """
        check_tensor("positions", positions)
        if self.temperature is None:
            return torch.ones(positions.shape, dtype=torch.float64, device=positions.device)
        return self.temperature.scale(positions)

    def replace(self, **changes: Any) -> RopeConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
