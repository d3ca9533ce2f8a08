"""inv_freq: the paper's formula, edge conventions, and parity with Meta and Hugging Face."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ropekit
from ropekit import spec
from tests.conftest import load_meta_functions

THETAS = [10000.0, 500000.0, 1e6, 1e7, 2.5]


@given(head_dim=st.integers(2, 300), theta=st.sampled_from(THETAS))
def test_inv_freq_is_paper_formula(head_dim: int, theta: float) -> None:
    # Oracle: theta ** (-2i/d) evaluated with Python floats, pair by pair.
    got = ropekit.inv_freq(head_dim, theta)
    want = spec.inv_freq(head_dim, theta)
    assert got.dtype == torch.float64 and got.shape == (head_dim // 2,)
    torch.testing.assert_close(got, want, rtol=4e-16, atol=0)


@given(rotary=st.integers(1, 64), extra=st.integers(0, 40), theta=st.sampled_from(THETAS))
def test_partial_rotary_uses_rotary_dim(rotary: int, extra: int, theta: float) -> None:
    rotary_dim = 2 * rotary
    got = ropekit.inv_freq(rotary_dim + extra, theta, rotary_dim=rotary_dim)
    torch.testing.assert_close(got, spec.inv_freq(rotary_dim, theta), rtol=4e-16, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_is_one_rounding_of_float64(dtype: torch.dtype) -> None:
    exact = ropekit.inv_freq(128, 500000.0)
    assert torch.equal(ropekit.inv_freq(128, 500000.0, dtype=dtype), exact.to(dtype))


@given(half=st.integers(1, 200), theta=st.sampled_from(THETAS))
def test_half_index_formula_identical_for_even_dims(half: int, theta: float) -> None:
    d = 2 * half
    assert torch.equal(ropekit.inv_freq(d, theta), ropekit.spec.inv_freq_half_index(d, theta))


@given(half=st.integers(1, 200), theta=st.sampled_from([10000.0, 500000.0]))
def test_half_index_formula_differs_for_odd_dims(half: int, theta: float) -> None:
    d = 2 * half + 1
    paper = ropekit.inv_freq(d, theta)
    old = ropekit.spec.inv_freq_half_index(d, theta)
    assert paper[0] == old[0] == 1.0
    if half > 1:
        # exponent 2i/d < i/half for i > 0: the paper's frequencies are higher.
        assert bool((paper[1:] > old[1:]).all())
    # The old formula is exactly the spectrum of a (d - 1)-lane head.
    assert torch.equal(old, ropekit.inv_freq(d - 1, theta))


def test_odd_head_dim_matches_meta_slicing() -> None:
    # Meta: 1 / theta ** (arange(0, d, 2)[: d // 2] / d), here for d = 7 and 9 in float64.
    for d in (7, 9, 129):
        meta = 1.0 / (10000.0 ** (torch.arange(0, d, 2)[: d // 2].double() / d))
        assert torch.equal(ropekit.inv_freq(d, 10000.0), meta)


@pytest.mark.parametrize(("head_dim", "theta"), [(128, 10000.0), (128, 500000.0), (64, 1e6), (96, 1e4)])
def test_matches_meta_precompute_freqs_cis(head_dim: int, theta: float) -> None:
    meta = load_meta_functions("llama3/model.py", ["precompute_freqs_cis"])
    freqs_cis = meta["precompute_freqs_cis"](head_dim, 2, theta)  # row 1 = e^{i * inv_freq}
    meta_inv = torch.angle(freqs_cis[1]).double()
    # Meta computes in float32: the exponent 2i/d is rounded before theta ** e, which
    # amplifies its error by ln(theta) (~2.3e-7 relative at d=96), and we read the value
    # back through atan2 of float32 cos/sin. 1e-6 relative is the parity bound.
    torch.testing.assert_close(ropekit.inv_freq(head_dim, theta), meta_inv, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("head_dim", "theta"), [(128, 10000.0), (128, 500000.0), (64, 1e6), (80, 1e4)])
def test_matches_transformers_default(head_dim: int, theta: float) -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    hf_inv, factor = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    assert factor == 1.0
    # HF computes in float32 (see the Meta test for why that is ~2e-7 relative).
    torch.testing.assert_close(ropekit.inv_freq(head_dim, theta), hf_inv.double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"head_dim": 0}, "head_dim=0"),
        ({"head_dim": -4}, "head_dim=-4"),
        ({"head_dim": 1}, "head_dim=1"),
        ({"head_dim": 8.0}, "head_dim=8.0"),
        ({"head_dim": True}, "head_dim=True"),
        ({"head_dim": 8, "theta": 0.0}, "theta=0.0"),
        ({"head_dim": 8, "theta": -1.0}, "theta=-1.0"),
        ({"head_dim": 8, "theta": math.inf}, "theta=inf"),
        ({"head_dim": 8, "theta": math.nan}, "theta=nan"),
        ({"head_dim": 8, "theta": "1e4"}, "theta='1e4'"),
        ({"head_dim": 8, "rotary_dim": 3}, "rotary_dim=3"),
        ({"head_dim": 8, "rotary_dim": 10}, "rotary_dim=10"),
        ({"head_dim": 8, "rotary_dim": 0}, "rotary_dim=0"),
        ({"head_dim": 8, "dtype": torch.int32}, "dtype=torch.int32"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs: dict, needle: str) -> None:
    with pytest.raises(ropekit.RopeValueError, match="expected") as info:
        ropekit.inv_freq(**kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)
