"""Scaling methods: formulas from math, parity with Meta, properties, validation.

Oracles: ``spec.inv_freq`` (the paper's formula in Python floats), Meta's
``apply_scaling`` (llama-models, Llama 3.1 and Llama 4), closed-form identities of each
method, and transformers (in ``test_hf_config.py``).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ropekit import RopeConfig, RopeValueError, RotaryEmbedding, inv_freq, spec
from ropekit.scaling import (
    SCALINGS,
    Dynamic,
    Linear,
    Llama3,
    LongRope,
    Ntk,
    Plain,
    Proportional,
    Scaling,
    Yarn,
    scaling_from_dict,
)
from tests.conftest import load_meta_functions

EVEN_DIMS = st.integers(2, 128).map(lambda k: 2 * k)  # d in [4, 256]
THETAS = st.sampled_from([10000.0, 500000.0, 1e6, 150000.0, 2.5])
FACTORS = st.floats(1.0, 64.0)
# Relative slack for "bounded between default/factor and default": one float64 rounding
# of the blend (the bound itself is exact math).
SLACK = 4e-16


def _phi_like(n: int) -> LongRope:
    """LongRoPE with ``n`` pairs and distinct short/long factors."""
    short = [1.0 + 0.01 * i for i in range(n)]
    long = [1.0 + 0.5 * i for i in range(n)]
    return LongRope(short, long, original_max_position_embeddings=4096, factor=32.0)


ALL_METHODS: list[Scaling] = [
    Plain(),
    Linear(4.0),
    Ntk(8.0),
    Dynamic(2.0, max_position=4096),
    Dynamic(2.0, max_position=4096, fixed_length=16384),
    Yarn(4.0, 32768),
    Yarn(40.0, 4096, mscale=0.707, mscale_all_dim=1.0),
    Llama3(8.0, 1.0, 4.0, 8192),
    _phi_like(32),
    Proportional(0.25),
]


# --------------------------------------------------------------------------- registry


def test_registry_holds_every_method() -> None:
    assert set(SCALINGS) == {
        "default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope", "proportional"
    }  # fmt: skip
    for name, cls in SCALINGS.items():
        assert cls.name == name and dataclasses.is_dataclass(cls)


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.name)
def test_frozen_hashable_and_dict_round_trip(method: Scaling) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.factor = 3.0  # type: ignore[misc]
    hash(method)
    assert scaling_from_dict(method.to_dict()) == method


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.name)
def test_one_signature_float64_and_positive_factor(method: Scaling) -> None:
    inv, factor = method.frequencies(64, 10000.0, None, 8192)
    assert inv.dtype == torch.float64 and inv.shape == (32,)
    assert bool(torch.isfinite(inv).all()) and bool((inv >= 0).all())
    assert isinstance(factor, float) and factor > 0


def test_scaling_from_dict_errors_and_opt_out() -> None:
    with pytest.raises(RopeValueError, match="rope_type='nope'"):
        scaling_from_dict({"rope_type": "nope"})
    with pytest.raises(RopeValueError, match="bogus"):
        scaling_from_dict({"rope_type": "linear", "factor": 2.0, "bogus": 1})
    assert scaling_from_dict(
        {"rope_type": "linear", "factor": 2.0, "bogus": 1}, allow_unknown=True
    ) == Linear(2.0)
    with pytest.raises(RopeValueError, match="factor"):
        scaling_from_dict({"type": "yarn", "original_max_position_embeddings": 4096})


# --------------------------------------------------------------------------- formulas


@given(d=EVEN_DIMS, theta=THETAS, factor=FACTORS)
def test_linear_is_default_over_factor(d: int, theta: float, factor: float) -> None:
    got, attn = Linear(factor).frequencies(d, theta, None, None)
    torch.testing.assert_close(got, spec.inv_freq(d, theta) / factor, rtol=1e-15, atol=0)
    assert attn == 1.0


@given(d=EVEN_DIMS, theta=THETAS, alpha=FACTORS)
def test_ntk_slows_the_lowest_pair_by_alpha_and_keeps_the_highest(
    d: int, theta: float, alpha: float
) -> None:
    d = max(d, 4)
    got, _ = Ntk(alpha).frequencies(d, theta, None, None)
    default = spec.inv_freq(d, theta)
    assert float(got[0]) == 1.0
    # theta' ** (-(d-2)/d) = theta ** (-(d-2)/d) / alpha: the defining property of NTK.
    torch.testing.assert_close(got[-1], default[-1] / alpha, rtol=1e-13, atol=0)


@given(d=EVEN_DIMS, theta=THETAS, factor=FACTORS, length=st.integers(1, 40000))
def test_dynamic_is_the_ntk_formula_of_the_requested_length(
    d: int, theta: float, factor: float, length: int
) -> None:
    max_pos = 4096
    got, attn = Dynamic(factor, max_pos).frequencies(d, theta, None, length)
    big = max(length, max_pos)
    base = theta * (factor * big / max_pos - (factor - 1)) ** (d / (d - 2))
    torch.testing.assert_close(got, spec.inv_freq(d, base), rtol=1e-13, atol=0)
    assert attn == 1.0


@given(d=EVEN_DIMS, theta=THETAS, factor=FACTORS, length=st.integers(1, 4096))
def test_dynamic_equals_default_up_to_max_position(
    d: int, theta: float, factor: float, length: int
) -> None:
    default = Plain().frequencies(d, theta, None, None)[0]
    assert torch.equal(Dynamic(factor, 4096).frequencies(d, theta, None, length)[0], default)
    assert torch.equal(Dynamic(factor, 4096).frequencies(d, theta, None, None)[0], default)


def test_dynamic_is_independent_of_call_history() -> None:
    method = Dynamic(2.0, max_position=64)
    config = RopeConfig(16, scaling=method, max_position=64)
    rope = RotaryEmbedding(config)
    q = torch.randn(1, 2, 100, 16, dtype=torch.float64)
    fresh = [rope(q[:, :, :s], q[:, :, :s]) for s in (100, 80, 65, 10)]
    # Now in another order, on the same module, with other lengths in between.
    rope(q, q)
    again = [rope(q[:, :, :s], q[:, :, :s]) for s in (10, 65, 100, 80)]
    for (a, _), s in zip(fresh, (100, 80, 65, 10), strict=True):
        b = again[(10, 65, 100, 80).index(s)][0]
        assert torch.equal(a, b)
    # And the base really follows the length (the test above is not vacuous).
    assert not torch.equal(fresh[1][0][:, :, :65], fresh[2][0])


def test_dynamic_fixed_length_keeps_one_base_for_a_whole_generation() -> None:
    method = Dynamic(2.0, max_position=64, fixed_length=256)
    assert method.depends_on_seq_len is False
    assert Dynamic(2.0, max_position=64).depends_on_seq_len is True
    want = Dynamic(2.0, max_position=64).frequencies(32, 1e4, None, 256)[0]
    for length in (None, 1, 64, 100, 256, 1000):
        assert torch.equal(method.frequencies(32, 1e4, None, length)[0], want)
    # Decoding one token at a time gives the same keys as one long prefill.
    rope = RotaryEmbedding(RopeConfig(32, scaling=method, max_position=64))
    k = torch.randn(1, 1, 200, 32, dtype=torch.float64)
    _, prefill = rope(k, k)
    steps = [rope(k[:, :, t : t + 1], k[:, :, t : t + 1], offset=t)[1] for t in range(0, 200, 37)]
    for t, step in zip(range(0, 200, 37), steps, strict=True):
        assert torch.equal(step[:, :, 0], prefill[:, :, t])


@given(d=EVEN_DIMS, theta=THETAS, factor=FACTORS, omp=st.sampled_from([2048, 4096, 32768]))
def test_yarn_and_llama3_lie_between_default_over_factor_and_default(
    d: int, theta: float, factor: float, omp: int
) -> None:
    default = spec.inv_freq(d, theta)
    for method in (Yarn(factor, omp), Yarn(factor, omp, truncate=False),
                   Llama3(factor, 1.0, 4.0, omp)):  # fmt: skip
        got, _ = method.frequencies(d, theta, None, None)
        assert bool((got <= default * (1 + SLACK)).all()), method
        assert bool((got >= default / factor * (1 - SLACK)).all()), method
        ramp = method.ramp(d, theta, None)
        assert bool((ramp >= 0).all() and (ramp <= 1).all())
        assert bool((ramp[1:] >= ramp[:-1]).all())  # interpolation grows toward low freqs
        # The ramp is the blend weight: got = default * ((1 - r) + r / factor).
        torch.testing.assert_close(got, default * ((1 - ramp) + ramp / factor), rtol=1e-13, atol=0)


def test_yarn_ramp_bounds_from_the_paper_formula() -> None:
    # Qwen2.5-7B + YaRN x4: d = 128, theta = 1e6, L0 = 32768, beta 32 / 1.
    d, theta, omp = 128, 1e6, 32768

    def index(turns: float) -> float:  # pair i turns L0 / (2π theta^(2i/d)) times
        return d * math.log(omp / (2 * math.pi * turns)) / (2 * math.log(theta))

    low, high = math.floor(index(32)), math.ceil(index(1))
    ramp = Yarn(4.0, omp).ramp(d, theta, None)
    assert bool((ramp[: low + 1] == 0).all()) and bool((ramp[high:] == 1).all())
    assert 0 < float(ramp[low + 1]) < float(ramp[high - 1]) < 1


@pytest.mark.parametrize(
    ("method", "want"),
    [
        (Yarn(4.0, 32768), 0.1 * math.log(4.0) + 1),
        (Yarn(1.0, 32768), 1.0),
        (Yarn(40.0, 4096, mscale=1.0, mscale_all_dim=1.0), 1.0),
        (Yarn(40.0, 4096, mscale=0.707, mscale_all_dim=1.0),
         (0.1 * 0.707 * math.log(40) + 1) / (0.1 * math.log(40) + 1)),
        (Yarn(40.0, 4096, mscale=0.707), 0.1 * math.log(40) + 1),  # needs both
        (Yarn(4.0, 4096, attention_factor=0.5), 0.5),
        (LongRope([1.0], [2.0], 4096, 32.0), math.sqrt(1 + math.log(32) / math.log(4096))),
        (LongRope([1.0], [2.0], 4096, 1.0), 1.0),
        (LongRope([1.0], [2.0], 4096, 32.0, attention_factor=1.5), 1.5),
    ],
)  # fmt: skip
def test_attention_factor_defaults(method: Scaling, want: float) -> None:
    got = method.frequencies(2 * len(getattr(method, "short_factor", [0] * 32)), 1e4, None, None)[1]
    assert got == pytest.approx(want, rel=1e-15)


def test_longrope_switches_exactly_after_the_original_context() -> None:
    n, omp = 32, 4096
    method = _phi_like(n)
    default = spec.inv_freq(2 * n, 10000.0)
    short = default / torch.tensor(method.short_factor, dtype=torch.float64)
    long = default / torch.tensor(method.long_factor, dtype=torch.float64)
    for seq_len, want in [(None, short), (1, short), (omp, short), (omp + 1, long), (10**6, long)]:
        torch.testing.assert_close(method.frequencies(2 * n, 1e4, None, seq_len)[0], want,
                                   rtol=1e-15, atol=0)  # fmt: skip
    # Through the module: seq_len is max(position) + 1, so position omp - 1 is short,
    # position omp is long, for prefill and for a single decoded token alike.
    config = RopeConfig(2 * n, scaling=method, max_position=131072)
    rope = RotaryEmbedding(config)
    x = torch.randn(1, 1, omp + 1, 2 * n, dtype=torch.float64)
    factor = method.resolved_attention_factor()

    def rotated(freqs: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return factor * spec.apply(x[:, :, pos], pos, freqs)

    last = torch.tensor([omp - 1])
    q_short, _ = rope(x[:, :, last], x[:, :, last], offset=omp - 1)
    torch.testing.assert_close(q_short, rotated(short, last), rtol=1e-12, atol=1e-12)
    nxt = torch.tensor([omp])
    q_long, _ = rope(x[:, :, nxt], x[:, :, nxt], offset=omp)
    torch.testing.assert_close(q_long, rotated(long, nxt), rtol=1e-12, atol=1e-12)
    q_prefill, _ = rope(x, x)  # omp + 1 tokens: everything rotated with the long factors
    torch.testing.assert_close(q_prefill[:, :, :1], rotated(long, torch.tensor([0])),
                               rtol=1e-12, atol=1e-12)  # fmt: skip


@given(d=EVEN_DIMS, theta=THETAS, p=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
       factor=st.sampled_from([1.0, 2.0]))  # fmt: skip
def test_proportional_rotates_the_first_pairs_at_full_head_frequencies(
    d: int, theta: float, p: float, factor: float
) -> None:
    got, _ = Proportional(p, factor).frequencies(d, theta, None, None)
    k = int(p * d // 2)
    torch.testing.assert_close(got[:k], spec.inv_freq(d, theta)[:k] / factor,
                               rtol=1e-15, atol=0)  # fmt: skip
    assert bool((got[k:] == 0).all())


def test_proportional_zero_frequency_pairs_pass_through() -> None:
    config = RopeConfig(16, scaling=Proportional(0.5))
    x = torch.randn(1, 1, 5, 16, dtype=torch.float64)
    y, _ = RotaryEmbedding(config)(x, x)
    # Half-split pairs (i, i + 8): pairs 4..7 are lanes 4..7 and 12..15.
    untouched = [4, 5, 6, 7, 12, 13, 14, 15]
    assert torch.equal(y[..., untouched], x[..., untouched])
    assert not torch.equal(y[:, :, 1:, :4], x[:, :, 1:, :4])


@pytest.mark.parametrize("method", [Linear(2.0), Yarn(4.0, 4096), Llama3(8.0, 1.0, 4.0, 8192)],
                         ids=lambda m: m.name)  # fmt: skip
def test_partial_rotary_scales_the_rotary_dim_spectrum(method: Scaling) -> None:
    partial, _ = method.frequencies(80, 1e4, 32, None)
    full, _ = method.frequencies(32, 1e4, None, None)
    assert torch.equal(partial, full)


# --------------------------------------------------------------------------- Meta


@given(d=EVEN_DIMS, theta=THETAS)
def test_llama3_is_bit_identical_to_meta_apply_scaling(d: int, theta: float) -> None:
    # Meta's function scales whatever frequencies it is given (and hard-codes 8, 1, 4,
    # 8192: Llama 3.1). Given ropekit's unscaled float64 spectrum (itself checked against
    # the paper's formula in test_frequencies.py), the result must be bit-identical.
    apply_scaling = load_meta_functions("llama3/model.py", ["apply_scaling"])["apply_scaling"]
    want = apply_scaling(inv_freq(d, theta))
    got, attn = Llama3(8.0, 1.0, 4.0, 8192).frequencies(d, theta, None, None)
    assert want.dtype == torch.float64 and torch.equal(got, want)
    assert attn == 1.0


@pytest.mark.parametrize(("factor", "high"), [(16.0, 1.0), (8.0, 4.0), (32.0, 4.0)])
def test_llama3_matches_meta_llama4_apply_scaling(factor: float, high: float) -> None:
    # llama4/model.py's apply_scaling takes the factor and high_freq_factor (low = 1);
    # (16, 1) is Llama 4 Scout, whose bands are equal.
    apply_scaling = load_meta_functions("llama4/model.py", ["apply_scaling"])["apply_scaling"]
    want = apply_scaling(inv_freq(128, 500000.0), factor, high)
    got, _ = Llama3(factor, 1.0, high, 8192).frequencies(128, 500000.0, None, None)
    assert want.dtype == torch.float64 and torch.equal(got, want)


def test_llama31_tables_match_meta_precompute_freqs_cis() -> None:
    # End to end through Meta's float32 pipeline, positions through the 131072 context.
    fns = load_meta_functions("llama3/model.py", ["apply_scaling", "precompute_freqs_cis"])
    end = 131072
    cis = fns["precompute_freqs_cis"](128, end, 500000.0, use_scaled=True)  # [end, 64]
    positions = torch.unique(torch.cat([torch.arange(64), torch.linspace(0, end - 1, 257).long(),
                                        torch.arange(end - 64, end)]))  # fmt: skip
    config = RopeConfig(128, theta=500000.0, scaling=Llama3(8.0, 1.0, 4.0, 8192))
    cos, sin = config.cos_sin(positions, dtype=torch.float64)
    inv = config.inv_freq()
    inv_meta = fns["apply_scaling"](
        1.0 / (500000.0 ** (torch.arange(0, 128, 2)[:64].float() / 128))
    ).double()
    torch.testing.assert_close(inv, inv_meta, rtol=1e-6, atol=0)
    # Meta's float32 angle is off by |m| |inv_meta - inv| plus one float32 rounding.
    m = positions.double()[:, None]
    bound = m * (inv_meta - inv).abs() + 2**-23 * m * inv + 2**-21
    assert bool(((cis[positions].real.double() - cos).abs() <= bound).all())
    assert bool(((cis[positions].imag.double() - sin).abs() <= bound).all())


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: Linear(0.5), "factor"),
        (lambda: Linear(float("nan")), "factor"),
        (lambda: Linear(float("inf")), "factor"),
        (lambda: Linear(True), "factor"),
        (lambda: Ntk(0.9), "alpha"),
        (lambda: Dynamic(0.5, 4096), "factor"),
        (lambda: Dynamic(2.0, 0), "max_position"),
        (lambda: Dynamic(2.0, 4096, fixed_length=0), "fixed_length"),
        (lambda: Yarn(0.99, 4096), "factor"),
        (lambda: Yarn(4.0, 0), "original_max_position_embeddings"),
        (lambda: Yarn(4.0, 4096.0), "original_max_position_embeddings"),
        (lambda: Yarn(4.0, 4096, beta_fast=1.0, beta_slow=32.0), "beta_fast"),
        (lambda: Yarn(4.0, 4096, beta_slow=0.0), "beta_slow"),
        (lambda: Yarn(4.0, 4096, mscale=float("nan")), "mscale"),
        (lambda: Yarn(4.0, 4096, attention_factor=0.0), "attention_factor"),
        (lambda: Yarn(4.0, 4096, truncate="yes"), "truncate"),
        (lambda: Llama3(8.0, 4.0, 1.0, 8192), "low_freq_factor"),
        (lambda: Llama3(0.0, 1.0, 4.0, 8192), "factor"),
        (lambda: Llama3(8.0, 0.0, 4.0, 8192), "low_freq_factor"),
        (lambda: Llama3(8.0, 1.0, 4.0, -1), "original_max_position_embeddings"),
        (lambda: LongRope([], [1.0], 4096, 2.0), "short_factor"),
        (lambda: LongRope([1.0, -1.0], [1.0, 1.0], 4096, 2.0), "short_factor[1]"),
        (lambda: LongRope([1.0, 1.0], [1.0, 0.0], 4096, 2.0), "long_factor[1]"),
        (lambda: LongRope("ab", [1.0, 1.0], 4096, 2.0), "short_factor"),
        (lambda: LongRope([1.0], [1.0], 1, 2.0), "original_max_position_embeddings"),
        (lambda: LongRope([1.0], [1.0], 4096, 0.5), "factor"),
        (lambda: LongRope([1.0], [1.0], 4096, 2.0).frequencies(64, 1e4, None, None),
         "short_factor"),
        (lambda: Proportional(0.0), "partial_rotary_factor"),
        (lambda: Proportional(1.5), "partial_rotary_factor"),
        (lambda: Proportional(0.25, factor=0.5), "factor"),
        (lambda: Ntk(2.0).frequencies(2, 1e4, None, None), "d=2"),
        (lambda: Dynamic(2.0, 64).frequencies(4, 1e4, 2, 100), "d=2"),
        (lambda: Yarn(4.0, 8192).check_config(128, None, 4096), "original_max_position_embeddings"),
        (lambda: Llama3(8.0, 1.0, 4.0, 8192).check_config(128, None, 4096),
         "original_max_position_embeddings"),
        (lambda: _phi_like(32).check_config(128, None, 131072), "short_factor"),
    ],
)  # fmt: skip
def test_bad_parameters_raise_a_value_error_naming_them(build, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RopeValueError, match=name.replace("[", r"\[").replace("]", r"\]")) as err:
        build()
    assert isinstance(err.value, ValueError)


def test_equal_band_edges_are_a_legal_step() -> None:
    # Kimi K2 ships beta_fast == beta_slow == 1; Llama 4 Scout low == high == 1.
    yarn = Yarn(32.0, 4096, beta_fast=1.0, beta_slow=1.0)
    llama = Llama3(16.0, 1.0, 1.0, 8192)
    for method in (yarn, llama):
        got, _ = method.frequencies(128, 500000.0, None, None)
        assert bool(torch.isfinite(got).all())
    default = spec.inv_freq(128, 500000.0)
    got, _ = llama.frequencies(128, 500000.0, None, None)
    long = 2 * math.pi / default > 8192
    assert 0 < int(long.sum()) < 64
    torch.testing.assert_close(got[long], default[long] / 16.0, rtol=1e-15, atol=0)
    torch.testing.assert_close(got[~long], default[~long], rtol=1e-15, atol=0)


def test_config_wires_scaling_into_tables() -> None:
    method = _phi_like(16)
    config = RopeConfig(32, scaling=method, max_position=131072)
    assert config.attention_factor == method.resolved_attention_factor()
    assert torch.equal(config.inv_freq(4097), method.frequencies(32, 1e4, None, 4097)[0])
    positions = torch.arange(5)
    cos, _ = config.cos_sin(positions, seq_len=4097, dtype=torch.float64)
    angle = positions.double()[:, None] * config.inv_freq(4097)
    torch.testing.assert_close(cos, config.attention_factor * angle.cos(), rtol=1e-15, atol=1e-15)
