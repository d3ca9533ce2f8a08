"""apply_rope against the float64 specification (ropekit.spec) and RoPE's properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ropekit
from ropekit import spec
from ropekit.layout import half_from_interleaved_order
from tests.conftest import TOL, tol_at


@st.composite
def rope_case(draw, max_position: int = 1_000_000):
    """A random (x [b, h, s, D] float64, positions [s], freqs [n], interleaved) case.

    Covers odd head dims (last lane passes through) and partial rotary dims.
    """
    head_dim = draw(st.integers(2, 40))
    partial = draw(st.booleans()) and head_dim >= 4
    rotary_dim = 2 * draw(st.integers(1, head_dim // 2)) if partial else None
    theta = draw(st.sampled_from([10000.0, 500000.0, 1e6, 7.0]))
    b, h, s = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    positions = torch.tensor(draw(st.lists(st.integers(-max_position, max_position), min_size=s, max_size=s)))
    seed = draw(st.integers(0, 2**31 - 1))
    x = torch.randn(b, h, s, head_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    freqs = ropekit.inv_freq(head_dim, theta, rotary_dim=rotary_dim)
    return x, positions, freqs, draw(st.booleans())


def rope64(x, positions, freqs, interleaved):
    cos, sin = ropekit.cos_sin(freqs, positions, dtype=torch.float64)
    return ropekit.apply_rope(x, cos, sin, interleaved=interleaved)


@given(rope_case())
def test_matches_rotation_matrices(case) -> None:
    x, positions, freqs, interleaved = case
    got = rope64(x, positions, freqs, interleaved)
    want = spec.apply(x, positions, freqs, interleaved=interleaved)
    torch.testing.assert_close(got, want, **tol_at(torch.float64, positions, x))


@given(rope_case())
def test_interleaved_matches_meta_complex_form(case) -> None:
    x, positions, freqs, _ = case
    width = 2 * len(freqs)
    got = rope64(x[..., :width], positions, freqs, True)
    torch.testing.assert_close(
        got, spec.apply_complex(x[..., :width], positions, freqs),
        **tol_at(torch.float64, positions, x),
    )  # fmt: skip


@given(rope_case())
def test_layouts_are_one_rotation_up_to_lane_permutation(case) -> None:
    x, positions, freqs, _ = case
    order = half_from_interleaved_order(x.shape[-1], 2 * len(freqs))
    # x_half[j] = x_inter[order[j]]: rotating in half layout then permuting back equals
    # rotating in interleaved layout.
    half = rope64(x[..., order], positions, freqs, False)
    inter = rope64(x, positions, freqs, True)
    assert torch.equal(half, inter[..., order])


@given(rope_case(), st.integers(-1_000_000, 1_000_000))
def test_scores_depend_only_on_relative_position(case, shift: int) -> None:
    x, positions, freqs, interleaved = case
    q, k = x, x.flip(-2).roll(1, dims=-1)
    pos_q, pos_k = positions, positions.flip(0)
    scores = rope64(q, pos_q, freqs, interleaved) @ rope64(k, pos_k, freqs, interleaved).mT
    shifted = rope64(q, pos_q + shift, freqs, interleaved) @ rope64(k, pos_k + shift, freqs, interleaved).mT
    # Angles reach ~2e6 rad: float64 represents them to ~2e6 * 2**-53 ~ 2.5e-10.
    torch.testing.assert_close(shifted, scores, rtol=0, atol=1e-8 * x.shape[-1])


@given(rope_case())
def test_relative_offset_property_pairwise(case) -> None:
    # <R_m q, R_n k> == <R_{m-n} q, k> for every pair of positions, at offsets up to 2e6.
    x, positions, freqs, interleaved = case
    q, k = x[:, :, :1], x.roll(1, dims=-1)[:, :, :1]
    for m in positions[:2].tolist():
        for n in positions[-2:].tolist():
            lhs = (rope64(q, torch.tensor([m]), freqs, interleaved) * rope64(k, torch.tensor([n]), freqs, interleaved)).sum()
            rhs = (rope64(q, torch.tensor([m - n]), freqs, interleaved) * k).sum()
            torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-8 * x.shape[-1])


@given(rope_case())
def test_norm_preserved_and_inverse_rotation(case) -> None:
    x, positions, freqs, interleaved = case
    y = rope64(x, positions, freqs, interleaved)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=1e-12)
    back = rope64(y, -positions, freqs, interleaved)
    torch.testing.assert_close(back, x, rtol=1e-9, atol=1e-9)


@given(rope_case())
def test_lanes_past_rotary_dim_are_bitwise_unchanged_and_input_untouched(case) -> None:
    x, positions, freqs, interleaved = case
    before = x.clone()
    y = rope64(x, positions, freqs, interleaved)
    assert torch.equal(x, before)
    assert torch.equal(y[..., 2 * len(freqs) :], x[..., 2 * len(freqs) :])
    assert y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("head_dim", [64, 7, 10])
def test_dtype_within_one_rounding_of_exact(dtype: torch.dtype, interleaved: bool, head_dim: int) -> None:
    g = torch.Generator().manual_seed(head_dim)
    x = torch.randn(2, 3, 33, head_dim, generator=g).to(dtype)
    positions = torch.randint(0, 100_000, (33,), generator=g)
    freqs = ropekit.inv_freq(head_dim, 10000.0)
    cos, sin = ropekit.cos_sin(freqs, positions)
    got = ropekit.apply_rope(x, cos, sin, interleaved=interleaved)
    assert got.dtype == dtype
    exact = spec.apply(x.double(), positions, freqs, interleaved=interleaved)
    torch.testing.assert_close(got.double(), exact, **TOL[dtype])


def test_half_precision_beats_native_half_arithmetic() -> None:
    # The float32 arithmetic is what keeps fp16 within one rounding: pins it down.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 128, 64, generator=g).half()
    positions = torch.arange(128)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(64), positions)
    exact = spec.apply(x.double(), positions, ropekit.inv_freq(64))
    ours = (ropekit.apply_rope(x, cos, sin).double() - exact).abs().max()
    c, s = cos.half(), sin.half()
    a, b = x[..., :32], x[..., 32:]
    native = torch.cat((a * c - b * s, b * c + a * s), -1)
    assert float(ours) < float((native.double() - exact).abs().max())


def test_non_contiguous_input_and_broadcast_tables() -> None:
    g = torch.Generator().manual_seed(1)
    bshd = torch.randn(2, 9, 4, 16, generator=g, dtype=torch.float64)
    x = bshd.transpose(1, 2)  # [b, h, s, d] view, not contiguous
    assert not x.is_contiguous()
    positions = torch.randint(0, 5000, (2, 9), generator=g)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(16), positions, dtype=torch.float64)
    got = ropekit.apply_rope(x, cos[:, None], sin[:, None])
    want = torch.stack(
        [spec.apply(x[i], positions[i], ropekit.inv_freq(16)) for i in range(2)]
    )
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    # strided lanes too (every other lane of a wider tensor)
    wide = torch.randn(3, 32, generator=g, dtype=torch.float64)
    c1, s1 = ropekit.cos_sin(ropekit.inv_freq(16), torch.arange(3), dtype=torch.float64)
    torch.testing.assert_close(
        ropekit.apply_rope(wide[:, ::2], c1, s1), ropekit.apply_rope(wide[:, ::2].contiguous(), c1, s1)
    )


@pytest.mark.parametrize("interleaved", [False, True])
def test_gradcheck_float64(interleaved: bool) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 3, 7, dtype=torch.float64, generator=g, requires_grad=True)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(7, 100.0), torch.tensor([0, 5, 900]), dtype=torch.float64)
    cos.requires_grad_(True)
    sin.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, c, s: ropekit.apply_rope(x, c, s, interleaved=interleaved), (x, cos, sin)
    )


@pytest.mark.parametrize("interleaved", [False, True])
def test_nan_stays_in_its_own_row(interleaved: bool) -> None:
    x = torch.randn(2, 2, 5, 10)
    x[1, 0, 3, 2] = float("nan")
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(10), torch.arange(5))
    y = ropekit.apply_rope(x, cos, sin, interleaved=interleaved)
    bad = torch.isnan(y).nonzero().tolist()
    partner = 3 if interleaved else 7
    assert sorted(bad) == [[1, 0, 3, 2], [1, 0, 3, partner]]


def test_deterministic() -> None:
    x = torch.randn(2, 4, 64, 32)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(32), torch.arange(64))
    assert torch.equal(ropekit.apply_rope(x, cos, sin), ropekit.apply_rope(x, cos, sin))


@pytest.mark.parametrize(
    ("x", "cos", "sin", "needle"),
    [
        (torch.ones(2, 8, dtype=torch.int32), torch.ones(2, 4), torch.ones(2, 4), "x.dtype=torch.int32"),
        (torch.tensor(1.0), torch.ones(1), torch.ones(1), "0-d"),
        (torch.ones(2, 8), torch.ones(2, 4), torch.ones(2, 3), "differ"),
        (torch.ones(2, 8), torch.ones(2, 4), torch.ones(2, 4, dtype=torch.float64), "one dtype for both"),
        (torch.ones(2, 8), torch.ones(2, 4, dtype=torch.int64), torch.ones(2, 4, dtype=torch.int64), "cos.dtype=torch.int64"),
        (torch.ones(2, 8), torch.ones(2, 0), torch.ones(2, 0), "n >= 1"),
        (torch.ones(2, 8), torch.ones(2, 5), torch.ones(2, 5), "2 * cos.shape[-1] <= x.shape[-1]"),
        (torch.ones(2, 8), torch.ones(3, 4), torch.ones(3, 4), "do not broadcast"),
        (torch.ones(8), torch.ones(2, 4), torch.ones(2, 4), "never grows beyond x"),
        ("not a tensor", torch.ones(4), torch.ones(4), "x must be a torch.Tensor"),
    ],
)
def test_bad_input_raises(x, cos, sin, needle: str) -> None:
    with pytest.raises(ropekit.RopeValueError) as info:
        ropekit.apply_rope(x, cos, sin)
    assert needle in str(info.value)


# ----------------------------------------------------------------------------- HF drop-in


@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_apply_rotary_pos_emb_matches_hugging_face(unsqueeze_dim: int, dtype: torch.dtype) -> None:
    """Oracle: transformers' own apply_rotary_pos_emb (Llama), on its own [b, s, 2n] tables."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as hf_apply

    g = torch.Generator().manual_seed(5)
    b, h, s, d = 2, 4, 7, 16
    q = torch.randn(b, h, s, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, 2, s, d, generator=g, dtype=torch.float64)
    if unsqueeze_dim == 2:  # [b, s, h, d] inputs
        q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [9, 10, 11, 500, 501, 502, 7000]])
    freqs = ropekit.inv_freq(d).double()
    emb = torch.cat((positions[..., None] * freqs, positions[..., None] * freqs), -1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)  # HF's convention: [b, s, 2n]
    q, k = q.to(dtype), k.to(dtype)
    want_q, want_k = hf_apply(q.double(), k.double(), cos.double(), sin.double(), unsqueeze_dim=unsqueeze_dim)
    got_q, got_k = ropekit.hf.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    assert got_q.dtype == dtype and got_q.shape == q.shape
    torch.testing.assert_close(got_q.double(), want_q, **TOL[dtype])
    torch.testing.assert_close(got_k.double(), want_k, **TOL[dtype])
    # and HF's own result in its own dtype agrees within that dtype's rounding
    hf_q, _ = hf_apply(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    assert hf_q.dtype == got_q.dtype


def test_apply_rotary_pos_emb_bad_arguments() -> None:
    q = torch.randn(1, 2, 3, 8)
    cos = torch.randn(1, 3, 8)
    with pytest.raises(ropekit.RopeValueError, match="unsqueeze_dim=3"):
        ropekit.hf.apply_rotary_pos_emb(q, q.clone(), cos, cos, unsqueeze_dim=3)
    with pytest.raises(ropekit.RopeValueError, match="an even last dim"):
        ropekit.hf.apply_rotary_pos_emb(q, q.clone(), cos[..., :7], cos[..., :7])
