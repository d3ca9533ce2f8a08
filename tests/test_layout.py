"""Checkpoint layout conversion: Meta (interleaved) <-> Hugging Face (half) weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ropekit


def hf_style_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Independent oracle: the reshape/transpose recipe of HF's Llama conversion script."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


@given(st.integers(1, 4), st.integers(1, 8), st.integers(1, 5))
def test_matches_conversion_recipe_and_round_trips(n_heads: int, pairs: int, cols: int) -> None:
    w = torch.randn(n_heads * 2 * pairs, cols)
    half = ropekit.layout.to_half_layout(w, n_heads)
    assert torch.equal(half, hf_style_permute(w, n_heads))
    assert torch.equal(ropekit.layout.to_interleaved_layout(half, n_heads), w)


@pytest.mark.parametrize("rotary_dim", [None, 4])
def test_meta_and_converted_checkpoints_give_identical_scores(rotary_dim: int | None) -> None:
    # A GQA attention layer: 4 query heads, 2 key heads, head_dim 8, model width 24.
    g = torch.Generator().manual_seed(0)
    d, hq, hk, width, s = 8, 4, 2, 24, 7
    # power-of-two-valued weights and inputs keep every product exact in float64, so the
    # only difference between the two paths could be the order of a sum: none here.
    wq = torch.randint(-4, 5, (hq * d, width), generator=g).double() / 4
    wk = torch.randint(-4, 5, (hk * d, width), generator=g).double() / 4
    x = torch.randint(-4, 5, (1, s, width), generator=g).double() / 4

    def scores(wq, wk, interleaved):
        cfg = ropekit.RopeConfig(head_dim=d, rotary_dim=rotary_dim, interleaved=interleaved)
        q = (x @ wq.T).view(1, s, hq, d).transpose(1, 2)
        k = (x @ wk.T).view(1, s, hk, d).transpose(1, 2)
        q, k = ropekit.RotaryEmbedding(cfg)(q, k, torch.tensor([0, 1, 2, 30, 400, 5000, 60000]))
        k = k.repeat_interleave(hq // hk, dim=1)
        return q @ k.mT

    meta = scores(wq, wk, interleaved=True)
    hf = scores(
        ropekit.layout.to_half_layout(wq, hq, rotary_dim=rotary_dim),
        ropekit.layout.to_half_layout(wk, hk, rotary_dim=rotary_dim),
        interleaved=False,
    )
    # Same lanes, same products, summed in a permuted order: equal to float64 rounding.
    torch.testing.assert_close(hf, meta, rtol=1e-13, atol=1e-13)
    # while the unconverted weights under half layout would not be
    wrong = scores(wq, wk, interleaved=False)
    assert float((wrong - meta).abs().max()) > 1e-3


def test_bias_and_partial_rotary_rows_past_rotary_dim_stay() -> None:
    b = torch.arange(12.0)  # one head of 12 lanes, 4 rotated
    assert ropekit.layout.to_half_layout(b, 1, rotary_dim=4).tolist() == [0, 2, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11]


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        ((torch.ones(10, 3), 3), {}, "not divisible by n_heads=3"),
        ((torch.ones(6, 3), 2), {}, "head_dim=3 is odd"),
        ((torch.ones(2, 2, 2), 1), {}, "weight.shape=(2, 2, 2)"),
        ((torch.ones(8, 3), 0), {}, "n_heads=0"),
        ((torch.ones(8, 3), 1), {"rotary_dim": 3}, "rotary_dim=3"),
        ((torch.ones(8, 3), 1), {"rotary_dim": 10}, "rotary_dim=10"),
    ],
)
def test_bad_input_raises(args, kwargs, needle: str) -> None:
    with pytest.raises(ropekit.RopeValueError) as info:
        ropekit.layout.to_half_layout(*args, **kwargs)
    assert needle in str(info.value)
