"""cos_sin: exact to 1e-6 at |position| up to 2**24, shapes, dtypes and bad input."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ropekit

mpmath.mp.dps = 40


def exact_cos_sin(position: int, i: int, d: int, theta: float) -> tuple[float, float]:
    """cos/sin(position * theta ** (-2i/d)) in 40-digit arithmetic: the ground truth."""
    angle = mpmath.mpf(position) * mpmath.power(mpmath.mpf(theta), mpmath.mpf(-2 * i) / d)
    return float(mpmath.cos(angle)), float(mpmath.sin(angle))


@pytest.mark.parametrize("theta", [10000.0, 500000.0, 1e7])
@pytest.mark.parametrize("position", [1_000_000, -1_000_000, 2**24, -(2**24), 2**24 - 1])
def test_float32_tables_within_1e6_of_exact_math(position: int, theta: float) -> None:
    d = 128
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(d, theta), torch.tensor([position]))
    assert cos.dtype == sin.dtype == torch.float32
    worst = 0.0
    for i in range(d // 2):
        c, s = exact_cos_sin(position, i, d, theta)
        worst = max(worst, abs(float(cos[0, i]) - c), abs(float(sin[0, i]) - s))
    # One float32 rounding of a value in [-1, 1] is <= 2**-25 ~ 3e-8; the target is 1e-6.
    assert worst < 1e-7


def test_float32_angles_are_what_goes_wrong() -> None:
    # The common recipe (float32 angle) at position 1e6: the 6e-2. This pins down
    # that the precision test above measures something a naive table fails.
    inv = ropekit.inv_freq(128, 10000.0, dtype=torch.float32)
    naive = (torch.tensor([1e6], dtype=torch.float32)[:, None] * inv).cos()
    exact = torch.tensor([exact_cos_sin(1_000_000, i, 128, 10000.0)[0] for i in range(64)])
    assert float((naive[0].double() - exact).abs().max()) > 1e-2


@given(
    shape=st.lists(st.integers(1, 5), min_size=0, max_size=3),
    n=st.integers(1, 9),
    factor=st.floats(0.25, 4.0),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
)
def test_shape_dtype_and_attention_factor(shape: list[int], n: int, factor: float, dtype: torch.dtype) -> None:
    positions = torch.randint(-50_000, 50_000, shape)
    freqs = torch.rand(n, dtype=torch.float64) + 1e-3
    cos, sin = ropekit.cos_sin(freqs, positions, attention_factor=factor, dtype=dtype)
    assert cos.shape == sin.shape == (*shape, n)
    assert cos.dtype == sin.dtype == dtype
    angle = positions.double()[..., None] * freqs
    assert torch.equal(cos, (factor * angle.cos()).to(dtype))
    assert torch.equal(sin, (factor * angle.sin()).to(dtype))


def test_positions_dtype_never_limits_precision() -> None:
    freqs = ropekit.inv_freq(64, 10000.0)
    ref = ropekit.cos_sin(freqs, torch.arange(0, 40000, 7, dtype=torch.int64))
    for dt in (torch.int32, torch.float64, torch.float32):  # 40000 is exact in all of them
        got = ropekit.cos_sin(freqs, torch.arange(0, 40000, 7).to(dt))
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    # float32 inverse frequencies are used as given (their own rounding), not recomputed
    # in float32 arithmetic: the angle is still formed in float64.
    f32 = freqs.float()
    got_c, _ = ropekit.cos_sin(f32, torch.tensor([10**6]))
    want = torch.cos(10**6 * f32.double()).float()
    assert torch.equal(got_c[0], want)


def test_negative_positions_are_mirror_images() -> None:
    freqs = ropekit.inv_freq(32, 10000.0)
    p = torch.arange(0, 5000, 13)
    cp, sp = ropekit.cos_sin(freqs, p, dtype=torch.float64)
    cn, sn = ropekit.cos_sin(freqs, -p, dtype=torch.float64)
    assert torch.equal(cp, cn) and torch.equal(sp, -sn)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda f: ropekit.cos_sin(f, torch.tensor([True, False])), "positions.dtype=torch.bool"),
        (lambda f: ropekit.cos_sin(f, torch.tensor([1 + 2j])), "positions.dtype=torch.complex64"),
        (lambda f: ropekit.cos_sin(f, torch.tensor([0.0, math.nan])), "NaN or inf"),
        (lambda f: ropekit.cos_sin(f, torch.tensor([math.inf])), "NaN or inf"),
        (lambda f: ropekit.cos_sin(f, torch.tensor([2**53 + 1])), "2**53"),
        (lambda f: ropekit.cos_sin(f, torch.tensor([-(2**63)])), "2**53"),
        (lambda f: ropekit.cos_sin(f, [0, 1]), "positions must be a torch.Tensor"),
        (lambda f: ropekit.cos_sin(f[None], torch.arange(3)), "1-D real floating"),
        (lambda f: ropekit.cos_sin(torch.arange(4), torch.arange(3)), "1-D real floating"),
        (lambda f: ropekit.cos_sin(f, torch.arange(3), attention_factor=0.0), "attention_factor=0.0"),
        (lambda f: ropekit.cos_sin(f, torch.arange(3), attention_factor=math.nan), "attention_factor=nan"),
        (lambda f: ropekit.cos_sin(f, torch.arange(3), dtype=torch.int64), "dtype=torch.int64"),
    ],
)
def test_bad_input_raises(call, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        call(ropekit.inv_freq(8))
    assert isinstance(info.value, ropekit.RopeValueError)
    assert needle in str(info.value)


def test_largest_exact_position_is_accepted() -> None:
    cos, _ = ropekit.cos_sin(torch.tensor([1.0], dtype=torch.float64), torch.tensor([2**53, -(2**53)]))
    assert bool(torch.isfinite(cos).all())
