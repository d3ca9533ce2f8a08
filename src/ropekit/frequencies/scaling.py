"""Context-extension ("scaling") methods: how each one changes the frequencies.

Every method is a small frozen dataclass that validates its own parameters and maps
``(head_dim, theta, rotary_dim, seq_len)`` to ``(inv_freq, attention_factor)`` through
one signature, :meth:`Scaling.frequencies`. They are registered by name in
:data:`SCALINGS`.

Notation: ``d`` lanes seen by RoPE (``rotary_dim or head_dim``), ``n = d // 2`` pairs,
``θ_i = theta ** (-2i / d)`` the unscaled inverse frequencies, ``λ_i = 2π / θ_i`` their
wavelengths, ``s`` the scale factor, ``L`` the requested sequence length.

==============  =======================================================================
method          inverse frequencies (``attention_factor`` 1 unless stated)
==============  =======================================================================
``default``     ``θ_i``
``linear``      ``θ_i / s`` (position interpolation)
``ntk``         ``θ'_i`` with base ``theta * alpha ** (d / (d - 2))`` (static NTK-aware)
``dynamic``     ``θ'_i`` with base ``theta * (s L / L0 - (s - 1)) ** (d / (d - 2))``,
                ``L = max(seq_len, L0)`` (dynamic NTK; ``L0 = max_position``)
``yarn``        ``θ_i ((1 - r_i) + r_i / s)``, ``r_i`` a linear ramp in ``i`` between
                the pairs that turn ``beta_fast`` and ``beta_slow`` times in the original
                context; attention ``0.1 ln s + 1`` (or the ``mscale`` ratio)
``llama3``      ``θ_i`` for ``λ_i < L0 / high``, ``θ_i / s`` for ``λ_i > L0 / low``, a
                smooth blend in between (Meta's ``apply_scaling``)
``longrope``    ``θ_i / short_factor_i`` for ``L <= L0``, ``θ_i / long_factor_i`` beyond;
                attention ``sqrt(1 + ln s / ln L0)``
``proportional`` ``θ_i / s`` for the first ``int(p d // 2)`` pairs, 0 (no rotation) for
                the rest (Gemma 4 global layers)
==============  =======================================================================

Precision: every table is computed in float64 from the float64 unscaled frequencies;
the scalar parts (new bases, ramp bounds, attention factors) are Python floats evaluated
in the same order as Hugging Face does, so attention factors agree with it exactly.

Validation: each dataclass checks its own parameters when it is built (types, ranges,
and an attention factor that must come out finite and > 0); :meth:`Scaling.check_config`
checks them against a model's shape, base and context, and is run by
:class:`ropekit.RopeConfig`, so a config that validates has finite, non-negative
frequencies and a finite attention factor > 0.

The classes know nothing about Hugging Face key names: reading and writing
``config.json`` files is the job of :mod:`ropekit.hf.config`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import RopeValueError, check_bool, check_float, check_int
from .base import inv_freq as base_inv_freq
from .base import rotary_lanes

__all__ = [
    "MULTI_AXIS_KEYS",
    "SCALINGS",
    "Dynamic",
    "Linear",
    "Llama3",
    "LongRope",
    "Ntk",
    "Plain",
    "Proportional",
    "Scaling",
    "Yarn",
    "register",
    "scaling_from_dict",
]

#: name -> Scaling subclass
SCALINGS: dict[str, type[Scaling]] = {}

#: Parameters of multi-axis RoPE (M-RoPE of Qwen2-VL and its descendants: one position
#: per axis, frequency bands split between axes). ropekit rotates with one position per
#: token, so these keys change a rotation it does not implement yet: they are refused
#: everywhere, never ignored (not even with ``allow_unknown=True``).
MULTI_AXIS_KEYS: frozenset[str] = frozenset(
    {"mrope_section", "mrope_interleaved", "mrope", "rope_section", "freq_allocation"}
)

#: ``ln`` of the largest float64: a base above ``exp`` of it overflows.
_LOG_MAX = math.log(sys.float_info.max)


def register(cls: type[Scaling]) -> type[Scaling]:
    """Class decorator adding a :class:`Scaling` subclass to :data:`SCALINGS` under ``cls.name``."""
    if cls.name in SCALINGS:
        raise RopeValueError(f"scaling name {cls.name!r} is already registered")
    SCALINGS[cls.name] = cls
    return cls


# --------------------------------------------------------------------------- helpers


def _check_factor(name: str, value: Any) -> float:
    """A stretch factor: finite and ``>= 1`` (``< 1`` would shrink the context)."""
    return check_float(name, value, minimum=1.0)


def _check_optional_positive(name: str, value: Any) -> float | None:
    return None if value is None else check_float(name, value, positive=True)


def _check_factor_list(name: str, value: Any) -> tuple[float, ...]:
    """A non-empty list of finite factors ``> 0``, stored as a tuple (hashable, immutable)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise RopeValueError(
            f"{name}={value!r} is not allowed: expected a non-empty list of numbers"
        )
    return tuple(check_float(f"{name}[{i}]", v, positive=True) for i, v in enumerate(value))


def _ntk_exponent(d: int, method: str) -> float:
    """``d / (d - 2)``: the exponent that makes NTK-aware scaling stretch the lowest pair by
    the full factor while leaving the highest one unchanged (undefined for ``d = 2``)."""
    if d <= 2:
        raise RopeValueError(
            f"rotary lanes d={d} are not allowed with {method!r} scaling: expected d > 2 "
            "(the NTK exponent d / (d - 2) is undefined for a single pair)"
        )
    return d / (d - 2)


def _scaled_base(theta: float, ratio: float, d: int, what: Any, method: str) -> float:
    """``theta * ratio ** (d / (d - 2))`` (NTK's new base), refusing a result beyond
    float64 instead of raising OverflowError (``alpha=1e300`` at ``d = 4``)."""
    exponent = _ntk_exponent(d, method)
    # Under torch.compile the length is a symbol, and math.log would specialise the graph
    # on its value; there the check is left to the eager calls (same config, same rule).
    if not torch.compiler.is_compiling() and math.log(theta) + exponent * math.log(ratio) >= _LOG_MAX:
        what = what() if callable(what) else what  # formatted only here (see Dynamic.base)
        raise RopeValueError(
            f"{what} is not allowed with theta={theta!r} and d={d} lanes ({method!r} "
            f"scaling): the NTK base theta * {ratio!r} ** (d / (d - 2)) overflows float64; "
            "expected a smaller value"
        )
    return theta * ratio**exponent


def _short(method: Any) -> str:
    """``repr(method)`` cut to a readable length (LongRoPE lists can be 64 entries long)."""
    text = repr(method)
    return text if len(text) <= 160 else text[:157] + "..."


def _check_context(name: str, original: int, max_position: int | None, method: str) -> None:
    if max_position is not None and original > max_position:
        raise RopeValueError(
            f"{name}={original} is not allowed with max_position={max_position} for "
            f"{method!r} scaling: expected {name} <= max_position (the extended context "
            "cannot be shorter than the one the model was trained on)"
        )


def _build(
    cls: type[Scaling], params: Mapping[str, Any], *, allow_unknown: bool, source: str
) -> Scaling:
    """``cls(**params)`` with ropekit's errors for unknown and missing keys.

    ``None`` values mean "not set" (that is how Hugging Face configs write an unset
    optional key), so they are dropped and the field's default applies.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(params) - set(fields))
    if unknown and not allow_unknown:
        raise RopeValueError(
            f"unknown {source} key(s) {unknown} for rope_type={cls.name!r}: expected some of "
            f"{sorted(fields)} (pass allow_unknown=True to ignore them)"
        )
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in params
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise RopeValueError(
            f"missing required {source} key(s) {missing} for rope_type={cls.name!r}"
        )
    return cls(**{k: v for k, v in params.items() if k in fields})


# --------------------------------------------------------------------------- base


@dataclass(frozen=True)
class Scaling(ABC):
    """Abstract base of all scaling methods (plain RoPE is :class:`Plain`).

    Subclasses implement :meth:`frequencies` and, if their tables change with the
    requested length, set ``depends_on_seq_len = True`` (or, like :class:`Dynamic`,
    make it a property of the instance; read it from instances only). Instantiating
    ``Scaling`` itself raises ``TypeError``.
    """

    name: ClassVar[str]
    depends_on_seq_len: ClassVar[bool] = False
    #: Whether some pairs may get frequency 0 on purpose (they then never turn).
    zero_frequencies: ClassVar[bool] = False

    @abstractmethod
    def frequencies(
        self, head_dim: int, theta: float, rotary_dim: int | None, seq_len: int | None
    ) -> tuple[torch.Tensor, float]:
        """Return ``(inv_freq [n] float64, attention_factor)`` for this method.

        ``seq_len`` (the number of positions the tables must cover, ``max(position) + 1``)
        is read only by methods with ``depends_on_seq_len``; ``None`` means "within the
        configured context".
        """

    def ramp(self, head_dim: int, theta: float, rotary_dim: int | None) -> torch.Tensor | None:
        """Per-pair interpolation weight ``r [n]`` in ``[0, 1]`` for methods that blend
        ``θ_i`` (``r = 0``) with ``θ_i / factor`` (``r = 1``); ``None`` for the others."""
        return None

    def check_config(
        self,
        head_dim: int,
        rotary_dim: int | None,
        max_position: int | None,
        *,
        theta: float = 10000.0,
    ) -> None:
        """Validate the parameters against a model's shape, base and context.

        Computes the tables (for length-dependent methods also the longest set: the one
        past ``max_position``) and requires finite inverse frequencies ``>= 0`` (``> 0``
        unless the method passes pairs through on purpose) and a finite attention
        factor ``> 0``. :meth:`frequencies` checks the shape-dependent parts again on
        every call; subclasses add checks of the context (``original_max_position_embeddings
        <= max_position``).

        Raises:
            RopeValueError: naming the parameter and the reason.
        """
        lengths: list[int | None] = [None]
        if self.depends_on_seq_len and max_position is not None:
            lengths.append(2 * max_position)
        for seq_len in lengths:
            inv, factor = self.frequencies(head_dim, theta, rotary_dim, seq_len)
            low_ok = bool((inv >= 0).all()) if self.zero_frequencies else bool((inv > 0).all())
            if not (bool(torch.isfinite(inv).all()) and low_ok):
                raise RopeValueError(
                    f"{_short(self)} is not allowed with head_dim={head_dim}, rotary_dim="
                    f"{rotary_dim}, theta={theta!r}: its inverse frequencies leave float64's "
                    "range (inf, NaN, 0 or negative); expected finite frequencies > 0"
                )
            if not (math.isfinite(factor) and factor > 0):
                raise RopeValueError(
                    f"{_short(self)} is not allowed: its attention factor is {factor!r}, "
                    "expected a finite number > 0"
                )

    def to_dict(self) -> dict[str, Any]:
        """``{"rope_type": name, **parameters}`` (ropekit field names; see :func:`scaling_from_dict`)."""
        return {"rope_type": self.name, **dataclasses.asdict(self)}


# --------------------------------------------------------------------------- methods


@register
@dataclass(frozen=True)
class Plain(Scaling):
    """Plain RoPE, no scaling: ``θ_i`` and attention factor 1 (``rope_type: default``).

    What ``RopeConfig(scaling=None)`` means: a config's ``scaling`` is always a method,
    this one when none is given.
    """

    name: ClassVar[str] = "default"

    def frequencies(
        self, head_dim: int, theta: float, rotary_dim: int | None, seq_len: int | None
    ) -> tuple[torch.Tensor, float]:
        return base_inv_freq(head_dim, theta, rotary_dim=rotary_dim), 1.0


@dataclass(frozen=True)
class _FromOriginalContext(Scaling):
    """Base of the methods defined relative to the context the model was trained on.

    Subclasses have an ``original_max_position_embeddings`` field; a model config's
    ``max_position`` (the extended context) must not be shorter than it.
    """

    def check_config(
        self,
        head_dim: int,
        rotary_dim: int | None,
        max_position: int | None,
        *,
        theta: float = 10000.0,
    ) -> None:
        super().check_config(head_dim, rotary_dim, max_position, theta=theta)
        _check_context(
            "original_max_position_embeddings",
            self.original_max_position_embeddings,  # type: ignore[attr-defined]
            max_position,
            self.name,
        )


@register
@dataclass(frozen=True)
class Linear(Scaling):
    """Position interpolation (Chen et al., 2023): ``θ_i / factor``.

    Equivalent to dividing every position by ``factor``: a model trained on ``L0`` tokens
    sees ``factor * L0`` tokens at the angles it knows, at the price of ``factor`` times
    finer angular steps between neighbours.
    """

    name: ClassVar[str] = "linear"
    factor: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", _check_factor("factor", self.factor))

    def ramp(self, head_dim: int, theta: float, rotary_dim: int | None) -> torch.Tensor:
        n = rotary_lanes(head_dim, rotary_dim) // 2
        return torch.ones(n, dtype=torch.float64)

    def frequencies(
        self, head_dim: int, theta: float, rotary_dim: int | None, seq_len: int | None
    ) -> tuple[torch.Tensor, float]:
        return base_inv_freq(head_dim, theta, rotary_dim=rotary_dim) / self.factor, 1.0


@register
@dataclass(frozen=True)
class Ntk(Scaling):
    """Static NTK-aware scaling (bloc97, 2023): a larger base, ``theta * alpha ** (d / (d - 2))``.

    The exponent makes the lowest pair (``i = n - 1``) slow down by exactly ``alpha``
    while the highest (``i = 0``) is unchanged, so short-range resolution is kept.
    (Hugging Face configs write it as ``rope_type: dynamic`` with an ``alpha``, HunYuan.)
    """

    name: ClassVar[str] = "ntk"
    alpha: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _check_factor("alpha", self.alpha))

    def frequencies(
        self, head_dim: int, theta: float, rotary_dim: int | None, seq_len: int | None
    ) -> tuple[torch.Tensor, float]:
        d = rotary_lanes(head_dim, rotary_dim)
        theta = check_float("theta", theta, positive=True)
        base = _scaled_base(theta, self.alpha, d, f"alpha={self.alpha!r}", self.name)
        return base_inv_freq(head_dim, base, rotary_dim=rotary_dim), 1.0


@register
@dataclass(frozen=True)
class Dynamic(Scaling):
    """Dynamic NTK scaling (emozilla, 2023): the NTK base grows with the length.

    ``theta' = theta * (factor * L / max_position - (factor - 1)) ** (d / (d - 2))`` with
    ``L = max(seq_len, max_position)``: plain RoPE up to ``max_position``, then an NTK
    ``alpha = factor * L / max_position - (factor - 1)`` growing linearly with ``L`` (slope
    ``factor / max_position``, from 1 at ``L = max_position``).

    Stateless: the tables depend only on the length passed in, never on earlier calls
    (transformers keeps the largest length seen and reuses it until the length drops
    below ``max_position``, so its tables depend on call history).

    KV caches: keys cached at step ``t`` were rotated with the base for length ``t``; a
    later query uses a larger base, so query/key angles no longer differ by exactly the
    relative position. ``fixed_length`` chooses:

    * ``None`` (default, Hugging Face semantics): the base follows the requested length
      (``max(position) + 1`` in :class:`ropekit.RotaryEmbedding`).
    * an int: the base is the one for ``max(fixed_length, max_position)`` whatever the
      call's length, so every key and query of a generation shares one base (choose the
      longest length you will generate to).
    """

    name: ClassVar[str] = "dynamic"
    factor: float
    max_position: int
    fixed_length: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", _check_factor("factor", self.factor))
        object.__setattr__(
            self, "max_position", check_int("max_position", self.max_position, minimum=1)
        )
        if self.fixed_length is not None:
            object.__setattr__(
                self, "fixed_length", check_int("fixed_length", self.fixed_length, minimum=1)
            )

    @property
    def depends_on_seq_len(self) -> bool:  # type: ignore[override]
        return self.fixed_length is None

    def base(self, theta: float, d: int, seq_len: int | None) -> float:
        """The NTK base for a sequence of ``seq_len`` tokens (``theta`` up to ``max_position``)."""
        length = self.fixed_length if self.fixed_length is not None else seq_len
        if length is None or length <= self.max_position:
            # Exactly theta: ``factor * L / L`` can be off by an ulp for a non-dyadic factor.
            return theta
        ratio = self.factor * length / self.max_position - (self.factor - 1)
        # The message is built lazily: formatting a symbolic length under torch.compile
        # would specialise the graph on its value.
        return _scaled_base(theta, ratio, d, lambda: f"seq_len={length}", self.name)

    def frequencies(
        self, head_dim: int, theta: float, rotary_dim: int | None, seq_len: int | None
    ) -> tuple[torch.Tensor, float]:
        d = rotary_lanes(head_dim, rotary_dim)
        _ntk_exponent(d, self.name)
        theta = check_float("theta", theta, positive=True)
        return base_inv_freq(head_dim, self.base(theta, d, seq_len), rotary_dim=rotary_dim), 1.0


@register
@dataclass(frozen=True)
class Yarn(_FromOriginalContext):
    """YaRN (Peng et al., 2023): NTK-by-parts interpolation plus an attention temperature.

    Pair ``i`` turns ``L0 / λ_i`` times over the original context ``L0``. Pairs that turn
    more than ``beta_fast`` times keep ``θ_i`` (extrapolation); pairs that turn fewer than
    ``beta_slow`` times get ``θ_i / factor`` (interpolation); in between a linear ramp in
    ``i``. The pair index where pair ``i`` turns ``b`` times is

        ``i(b) = d ln(L0 / (2π b)) / (2 ln theta)``

    and the ramp runs from ``low = i(beta_fast)`` to ``high = i(beta_slow)``, floored/ceiled
    when ``truncate`` and clipped to ``[0, d - 1]`` (exactly as transformers does).

    ``attention_factor`` multiplies cos and sin (so the logits by its square); unset, it is
    ``0.1 ln(factor) + 1``, or ``m(factor, mscale) / m(factor, mscale_all_dim)`` with
    ``m(s, k) = 0.1 k ln s + 1`` when both ``mscale`` and ``mscale_all_dim`` are set and
    non-zero (DeepSeek). It is computed when the method is built and must be finite and
    ``> 0``: ``mscale_all_dim = -10 / ln(factor)`` (a zero denominator) and
    ``mscale=-100`` (a negative factor) are refused there, not at the first forward.

    ``theta`` must be ``> 1`` with YaRN: the ramp bounds divide by ``ln theta``.
    """

    name: ClassVar[str] = "yarn"
    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "factor", _check_factor("factor", self.factor))
        set_(
            self,
            "original_max_position_embeddings",
            check_int(
                "original_max_position_embeddings",
                self.original_max_position_embeddings,
                minimum=1,
            ),
        )
        set_(self, "beta_fast", check_float("beta_fast", self.beta_fast, positive=True))
        set_(self, "beta_slow", check_float("beta_slow", self.beta_slow, positive=True))
        # Equal betas are a legal degenerate ramp (a step; Kimi K2 ships beta_fast ==
        # beta_slow == 1); only an inverted band is meaningless.
        if self.beta_fast < self.beta_slow:
            raise RopeValueError(
                f"beta_fast={self.beta_fast} is not allowed with beta_slow={self.beta_slow}: "
                "expected beta_fast >= beta_slow (pairs turning more than beta_fast times "
                "are kept, fewer than beta_slow times are interpolated)"
            )
        for key in ("mscale", "mscale_all_dim"):
            value = getattr(self, key)
            set_(self, key, None if value is None else check_float(key, value))
        set_(
            self,
            "attention_factor",
            _check_optional_positive("attention_factor", self.attention_factor),
        )
        check_bool("truncate", self.truncate)
        # The default attention factor is a ratio of two mscale terms: refuse here what
        # would otherwise fail (or flip the sign of every logit) only at the first forward.
        if self.mscale and self.mscale_all_dim and self.attention_factor is None:
            den = self._m(self.factor, self.mscale_all_dim)
            if den == 0:
                raise RopeValueError(
                    f"mscale_all_dim={self.mscale_all_dim!r} is not allowed with "
                    f"factor={self.factor!r}: the attention factor's denominator "
                    "0.1 * mscale_all_dim * ln(factor) + 1 is 0; expected another value"
                )
        factor = self.resolved_attention_factor()
        if not (math.isfinite(factor) and factor > 0):
            raise RopeValueError(
                f"mscale={self.mscale!r}, mscale_all_dim={self.mscale_all_dim!r} are not "
                f"allowed with factor={self.factor!r}: they give the attention factor "
                f"{factor!r}, expected a finite number > 0 (it multiplies cos and sin)"
            )

    @staticmethod
    def _m(scale: float, k: float = 1.0) -> float:
        """YaRN's ``mscale`` term ``0.1 k ln(scale) + 1`` (1 for ``scale <= 1``)."""
        return 1.0 if scale <= 1 else 0.1 * k * math.log(scale) + 1.0

    def resolved_attention_factor(self) -> float:
        """The cos/sin multiplier: ``attention_factor`` if set, else YaRN's default."""
        if self.attention_factor is not None:
            return self.attention_factor
        # ``if mscale and mscale_all_dim``: a zero counts as unset, as in transformers.
        if self.mscale and self.mscale_all_dim:
            return float(
                self._m(self.factor, self.mscale) / self._m(self.factor, self.mscale_all_dim)
            )
        return self._m(self.factor)

    def correction_range(self, d: int, theta: float) -> tuple[float, float]:
        """``(low, high)`` pair indices where the ramp starts and ends."""
        theta = check_float("theta", theta, positive=True)
        if theta <= 1:
            raise RopeValueError(
                f"theta={theta!r} is not allowed with {self.name!r} scaling: expected theta > 1 "
                "(the ramp bounds d ln(L0 / (2 pi beta)) / (2 ln theta) divide by ln theta)"
            )

        def index(turns: float) -> float:
            return (d * math.log(self.original_max_position_embeddings / (turns * 2 * math.pi))) / (
                2 * math.log(theta)
            )

        low, high = index(self.beta_fast), index(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        return max(low, 0), min(high, d - 1)

    def ramp(self, head_dim: int, theta: float, rotary_dim: int | None) -> torch.Tensor:
        d = rotary_lanes(head_dim, rotary_dim)
        low, high = self.correction_range(d, theta)
        if low == high:
            high += 0.001  # a step instead of a division by zero (transformers does the same)
        r = (torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)
        return r.clamp(0.0, 1.0)

    def frequencies(
        self, head_dim: int, theta: float, rotary_dim: int | None, seq_len: int | None
    ) -> tuple[torch.Tensor, float]:
        inv = base_inv_freq(head_dim, theta, rotary_dim=rotary_dim)
        r = self.ramp(head_dim, theta, rotary_dim)
        return inv / self.factor * r + inv * (1 - r), self.resolved_attention_factor()


@register
@dataclass(frozen=True)
class Llama3(_FromOriginalContext):
    """Llama 3.1's frequency-dependent interpolation (Meta's ``apply_scaling``).

    With ``λ_i = 2π / θ_i`` and ``L0 = original_max_position_embeddings``: pairs with
    ``λ_i < L0 / high_freq_factor`` are kept, pairs with ``λ_i > L0 / low_freq_factor``
    get ``θ_i / factor``, and in between

        ``θ'_i = (1 - g) θ_i / factor + g θ_i``,  ``g = (L0 / λ_i - low) / (high - low)``.

    ``low_freq_factor == high_freq_factor`` is allowed (Llama 4 Scout ships 1 and 1): the
    blend band is then empty and the change is a step at ``λ = L0 / low``.
    """

    name: ClassVar[str] = "llama3"
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", _check_factor("factor", self.factor))
        low = check_float("low_freq_factor", self.low_freq_factor, positive=True)
        high = check_float("high_freq_factor", self.high_freq_factor, positive=True)
        if low > high:
            raise RopeValueError(
                f"low_freq_factor={low} is not allowed with high_freq_factor={high}: expected "
                "low_freq_factor <= high_freq_factor (wavelengths above L0 / low_freq_factor are "
                "interpolated, below L0 / high_freq_factor kept)"
            )
        object.__setattr__(self, "low_freq_factor", low)
        object.__setattr__(self, "high_freq_factor", high)
        object.__setattr__(
            self,
            "original_max_position_embeddings",
            check_int(
                "original_max_position_embeddings",
                self.original_max_position_embeddings,
                minimum=1,
            ),
        )

    def _bands(
        self, inv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(wavelen, smooth, is_low, is_medium)`` for unscaled frequencies ``inv``."""
        omp = self.original_max_position_embeddings
        low, high = self.low_freq_factor, self.high_freq_factor
        wavelen = 2 * math.pi / inv
        is_low = wavelen > omp / low
        is_medium = (wavelen >= omp / high) & (wavelen <= omp / low)
        if low == high:
            # Empty band; the single boundary wavelength (if hit exactly) is kept unscaled.
            is_medium = torch.zeros_like(is_medium)
            smooth = torch.zeros_like(inv)
        else:
            smooth = (omp / wavelen - low) / (high - low)
        return wavelen, smooth, is_low, is_medium

    def ramp(self, head_dim: int, theta: float, rotary_dim: int | None) -> torch.Tensor:
        inv = base_inv_freq(head_dim, theta, rotary_dim=rotary_dim)
        _, smooth, is_low, is_medium = self._bands(inv)
        r = torch.where(is_low, 1.0, 0.0).to(torch.float64)
        return torch.where(is_medium, 1 - smooth, r)

    def frequencies(
        self, head_dim: int, theta: float, rotary_dim: int | None, seq_len: int | None
    ) -> tuple[torch.Tensor, float]:
        inv = base_inv_freq(head_dim, theta, rotary_dim=rotary_dim)
        _, smooth, is_low, is_medium = self._bands(inv)
        # Same operations in the same order as Meta's apply_scaling, so float64 inputs
        # give bit-identical outputs.
        scaled = torch.where(is_low, inv / self.factor, inv)
        blended = (1 - smooth) * scaled / self.factor + smooth * scaled
        return torch.where(is_medium, blended, scaled), 1.0


@register
@dataclass(frozen=True)
class LongRope(_FromOriginalContext):
    """LongRoPE (Ding et al., 2024; Phi-3): searched per-pair factors, short and long.

    ``θ_i / short_factor_i`` while ``seq_len <= original_max_position_embeddings``, and
    ``θ_i / long_factor_i`` from ``seq_len = original_max_position_embeddings + 1`` on
    (``seq_len`` counts positions ``0 .. seq_len - 1``). ``attention_factor`` defaults to
    ``sqrt(1 + ln(factor) / ln(original_max_position_embeddings))`` (1 if ``factor <= 1``)
    and applies to both sets.

    The switch changes the tables of *all* positions, so keys cached before a sequence
    crosses ``original_max_position_embeddings`` were rotated with the short factors;
    transformers has the same behaviour (see docs/scaling.md).
    """

    name: ClassVar[str] = "longrope"
    depends_on_seq_len: ClassVar[bool] = True
    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int
    factor: float
    attention_factor: float | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "short_factor", _check_factor_list("short_factor", self.short_factor))
        set_(self, "long_factor", _check_factor_list("long_factor", self.long_factor))
        # >= 2: the default attention factor divides by ln(original_max_position_embeddings).
        set_(
            self,
            "original_max_position_embeddings",
            check_int(
                "original_max_position_embeddings",
                self.original_max_position_embeddings,
                minimum=2,
            ),
        )
        set_(self, "factor", _check_factor("factor", self.factor))
        set_(
            self,
            "attention_factor",
            _check_optional_positive("attention_factor", self.attention_factor),
        )

    def resolved_attention_factor(self) -> float:
        """The cos/sin multiplier: ``attention_factor`` if set, else LongRoPE's default."""
        if self.attention_factor is not None:
            return self.attention_factor
        if self.factor <= 1.0:
            return 1.0
        return math.sqrt(
            1 + math.log(self.factor) / math.log(self.original_max_position_embeddings)
        )

    def factors(self, seq_len: int | None) -> tuple[float, ...]:
        """The factor set used for a sequence of ``seq_len`` tokens (short for ``None``)."""
        long = seq_len is not None and seq_len > self.original_max_position_embeddings
        return self.long_factor if long else self.short_factor

    def frequencies(
        self, head_dim: int, theta: float, rotary_dim: int | None, seq_len: int | None
    ) -> tuple[torch.Tensor, float]:
        inv = base_inv_freq(head_dim, theta, rotary_dim=rotary_dim)
        for key in ("short_factor", "long_factor"):
            got = len(getattr(self, key))
            if got != inv.numel():
                raise RopeValueError(
                    f"{key} has {got} entries: expected one per rotated pair, "
                    f"{inv.numel()} = (rotary_dim or head_dim) // 2"
                )
        ext = torch.tensor(self.factors(seq_len), dtype=torch.float64)
        return inv / ext, self.resolved_attention_factor()


@register
@dataclass(frozen=True)
class Proportional(Scaling):
    """Proportional RoPE (transformers 5.x, Gemma 4 global layers).

    Over the full ``d`` lanes, only the first ``k = int(partial_rotary_factor * d // 2)``
    pairs rotate, with the frequencies of the *whole* head, ``θ_i = theta ** (-2i / d)``;
    pairs ``k .. n - 1`` get frequency 0 (cos 1, sin 0: passed through). All are divided
    by ``factor``. Unlike ``rotary_dim`` (partial rotary), the exponent's denominator is
    ``d``, not ``2k``, and pairs keep the half-split partner ``i + n`` of the full head.
    """

    name: ClassVar[str] = "proportional"
    zero_frequencies: ClassVar[bool] = True
    partial_rotary_factor: float = 1.0
    factor: float = 1.0

    def __post_init__(self) -> None:
        p = check_float("partial_rotary_factor", self.partial_rotary_factor, positive=True)
        if p > 1:
            raise RopeValueError(
                f"partial_rotary_factor={p} is not allowed: expected a fraction in (0, 1]"
            )
        object.__setattr__(self, "partial_rotary_factor", p)
        object.__setattr__(self, "factor", _check_factor("factor", self.factor))

    def rotated_pairs(self, d: int) -> int:
        """``k``: how many leading pairs rotate (same rounding as transformers)."""
        return int(self.partial_rotary_factor * d // 2)

    def frequencies(
        self, head_dim: int, theta: float, rotary_dim: int | None, seq_len: int | None
    ) -> tuple[torch.Tensor, float]:
        d = rotary_lanes(head_dim, rotary_dim)
        inv = base_inv_freq(head_dim, theta, rotary_dim=rotary_dim)
        inv[self.rotated_pairs(d) :] = 0.0
        return inv / self.factor, 1.0


def scaling_from_dict(params: Mapping[str, Any], *, allow_unknown: bool = False) -> Scaling:
    """Build a registered method from ``{"rope_type": name, **parameters}`` (ropekit names).

    The inverse of :meth:`Scaling.to_dict`. Unknown parameters raise
    :class:`~ropekit.RopeValueError` unless ``allow_unknown`` (then they are ignored),
    except the keys of multi-axis RoPE (:data:`MULTI_AXIS_KEYS`), which are always refused;
    ``"type"`` is accepted for ``"rope_type"``. For Hugging Face dicts, whose key names
    differ for some methods, use :func:`ropekit.hf.from_hf`.
    """
    if not isinstance(params, Mapping):
        raise RopeValueError(f"params={params!r} is not allowed: expected a dict")
    if not isinstance(allow_unknown, bool):
        raise RopeValueError(f"allow_unknown={allow_unknown!r} is not allowed: expected a bool")
    params = dict(params)
    names = [params.pop(k) for k in ("rope_type", "type") if k in params]
    for name in names:
        if not isinstance(name, str):
            raise RopeValueError(
                f"rope_type={name!r} is not allowed: expected a string, one of {sorted(SCALINGS)}"
            )
    if len(set(names)) > 1:
        raise RopeValueError(
            f"rope_type={names[0]!r} and type={names[1]!r} are not allowed together: "
            "expected one name (type is the older spelling of rope_type)"
        )
    name = names[0] if names else None
    multi_axis = sorted(MULTI_AXIS_KEYS & set(params))
    if multi_axis:
        raise RopeValueError(
            f"{multi_axis} is not supported yet: multi-axis RoPE (M-RoPE) is not "
            "implemented by ropekit, and these keys change the rotation, so they are "
            "never ignored"
        )
    if name not in SCALINGS:
        raise RopeValueError(
            f"rope_type={name!r} is not allowed: expected one of {sorted(SCALINGS)}"
        )
    return _build(SCALINGS[name], params, allow_unknown=allow_unknown, source="scaling")
