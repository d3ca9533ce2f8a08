"""The one argument checker: every bad input of the rotation-core issue, on every backend.

Each case was silently wrong (garbage, a grown result, a double rotation) or a raw
exception from inside torch on at least one backend; now each is a RopeValueError naming
the bad argument, before any backend runs. The memory-overlap logic is also checked
against brute force (the sets of element addresses).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ropekit
from ropekit.apply.checks import _overlap, _self_overlaps
from ropekit.apply.dispatch import REGISTRY

BACKENDS = [b.value for b in REGISTRY]
FREQS = ropekit.inv_freq(8)


def tables(s: int = 5):
    return ropekit.cos_sin(FREQS, torch.arange(s))  # [s, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_table_with_an_extra_leading_dim_is_refused(backend: str) -> None:
    cos, sin = tables()
    with pytest.raises(ropekit.RopeValueError, match="never grows beyond x"):
        ropekit.apply_rope(torch.randn(5, 8), cos[None], sin[None], backend=backend)
    lane_strided = torch.randn(5, 16)[:, ::2]
    with pytest.raises(ropekit.RopeValueError, match="never grows beyond x"):
        ropekit.apply_rope(lane_strided, cos[None], sin[None], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_aliasing_of_q_and_k_is_refused(backend: str) -> None:
    cos, sin = tables()
    q = torch.randn(2, 3, 5, 8)
    before = q.clone()
    for k in (q[:], q.view(2, 3, 5, 8), q[:, 1:], q.transpose(0, 1).transpose(0, 1)):
        with pytest.raises(ropekit.RopeValueError, match="overlap in memory"):
            ropekit.apply_rope_qk(q, k[:, :2] if k.shape[1] == 3 else k, cos, sin, backend=backend, inplace=True)
    assert torch.equal(q, before), "nothing is written when the call is refused"


@pytest.mark.parametrize("backend", BACKENDS)
def test_disjoint_slices_of_one_buffer_are_fine(backend: str) -> None:
    """Fused qkv: q, k, v interleaved in memory but element-disjoint (exact check)."""
    cos, sin = tables()
    qkv = torch.randn(2, 5, 3, 2, 8)  # [b, s, 3, h, d]
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    want_q = ropekit.apply_rope(q, cos[:, None], sin[:, None], backend="reference")
    ropekit.apply_rope_qk(q, k, cos[:, None], sin[:, None], backend=backend, inplace=True)
    torch.testing.assert_close(q, want_q)


@pytest.mark.parametrize("backend", BACKENDS)
def test_expanded_inplace_target_is_refused(backend: str) -> None:
    cos, sin = tables()
    with pytest.raises(ropekit.RopeValueError, match="share memory"):
        ropekit.apply_rope(torch.randn(1, 8).expand(5, 8), cos, sin, backend=backend, inplace=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_out_is_refused(backend: str) -> None:
    cos, sin = tables()
    x = torch.randn(5, 8)
    rows_overlap = torch.empty(64).as_strided((5, 8), (4, 1))
    with pytest.raises(ropekit.RopeValueError, match="share memory"):
        ropekit.apply_rope(x, cos, sin, out=rows_overlap, backend=backend)
    big = torch.randn(5, 8)
    c, s = big[:, :4], big[:, 4:]
    with pytest.raises(ropekit.RopeValueError, match="overlaps cos"):
        ropekit.apply_rope(x, c, s, out=big, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64, torch.int32])
def test_non_real_and_float8_dtypes_are_refused(dtype: torch.dtype) -> None:
    cos, sin = tables()
    x = torch.randn(5, 8).to(dtype)
    with pytest.raises(ropekit.RopeValueError, match=f"x.dtype={dtype}"):
        ropekit.apply_rope(x, cos, sin)
    with pytest.raises(ropekit.RopeValueError, match=f"cos.dtype={dtype}"):
        ropekit.apply_rope(torch.randn(5, 8), cos.to(dtype), sin.to(dtype))


def test_layout_is_never_guessed() -> None:
    """A [b, s, h, d] tensor with equal q/k head counts: the layout argument decides."""
    rope_bshd = ropekit.RotaryEmbedding(ropekit.RopeConfig(head_dim=8), layout="bshd")
    rope_bhsd = ropekit.RotaryEmbedding(ropekit.RopeConfig(head_dim=8))
    q, k = torch.randn(2, 6, 4, 8), torch.randn(2, 6, 4, 8)  # [b, s, h, d]
    got_q, _ = rope_bshd(q, k)
    want_q, _ = rope_bhsd(q.transpose(1, 2), k.transpose(1, 2))
    torch.testing.assert_close(got_q, want_q.transpose(1, 2))
    freqs = ropekit.inv_freq(8)
    oracle = ropekit.spec.apply(q.transpose(1, 2), torch.arange(6), freqs).transpose(1, 2)
    torch.testing.assert_close(got_q.double(), oracle, rtol=2e-6, atol=2e-6)
    with pytest.raises(ropekit.RopeValueError, match="layout="):
        ropekit.apply_rope(torch.randn(2, 6, 8), *tables(6), layout="bshd")
    with pytest.raises(ropekit.RopeValueError, match="layout='bsdh' is not allowed"):
        ropekit.apply_rope(torch.randn(2, 6, 8), *tables(6), layout="bsdh")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"offset": 3}, "needs table rows [3, 8)"),
        ({"offset": -1}, "needs table rows [-1, 4)"),
        ({"positions": torch.tensor([0, 1, 2, 3, 9])}, "span [0, 9]"),
        ({"positions": torch.tensor([0.0, 1, 2, 3, 4])}, "positions.dtype=torch.float32"),
        ({"positions": torch.tensor([0, 1, 2])}, "positions.shape=(3,)"),
        ({"offset": torch.tensor([1, 2, 3])}, "offset.shape=(3,)"),
        ({"offset": 1.5}, "offset=1.5"),
        ({"cu_seqlens": torch.tensor([0, 5])}, "cu_seqlens is not allowed with layout"),
    ],
)
def test_bad_positions_are_refused(kwargs: dict, needle: str) -> None:
    cos, sin = tables(5)  # a [5, n] table indexed by position
    with pytest.raises(ropekit.RopeValueError) as info:
        ropekit.apply_rope(torch.randn(2, 3, 5, 8), cos, sin, **kwargs)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("cu", "needle"),
    [
        ([0, 3, 2, 6], "non-decreasing"),
        ([1, 6], "from 0 to the number of tokens (6)"),
        ([0, 5], "from 0 to the number of tokens (6)"),
        ([6], "at least one document"),
    ],
)
def test_bad_cu_seqlens_are_refused(cu: list[int], needle: str) -> None:
    cos, sin = tables(8)
    with pytest.raises(ropekit.RopeValueError) as info:
        ropekit.apply_rope(torch.randn(6, 2, 8), cos, sin, cu_seqlens=torch.tensor(cu), layout="thd")
    assert needle in str(info.value)


def test_indexed_tables_must_be_two_dimensional() -> None:
    cos, sin = tables(5)
    with pytest.raises(ropekit.RopeValueError, match=r"expected a \[R, n\] table"):
        ropekit.apply_rope(torch.randn(2, 3, 5, 8), cos[None], sin[None], offset=0)


# ----------------------------------------------------------------------------- overlap logic


def addresses(t: torch.Tensor) -> set[int]:
    """Every element's storage offset, by brute force."""
    idx = torch.arange(t.untyped_storage().nbytes() // t.element_size())
    view = idx.as_strided(t.shape, t.stride(), t.storage_offset())
    return set(view.flatten().tolist())


views = st.tuples(
    st.lists(st.integers(1, 4), min_size=1, max_size=3),  # sizes
    st.lists(st.integers(0, 12), min_size=3, max_size=3),  # strides
    st.integers(0, 20),  # storage offset
)


@given(views, views)
def test_overlap_and_self_overlap_are_never_missed(a, b) -> None:
    """Any strides, expanded and overlapping windows included: a sharing of memory is
    always reported (false alarms are allowed here; see the exact case below)."""
    buf = torch.zeros(200)
    (sa, sta, oa), (sb, stb, ob) = a, b
    sb = sb[: len(sa)] + [1] * (len(sa) - len(sb))  # b has a's rank
    ta = buf.as_strided(sa, sta[: len(sa)], oa)
    tb = buf.as_strided(sb, stb[: len(sa)], ob)
    truth_a, truth_b = addresses(ta), addresses(tb)
    assert _self_overlaps(ta) or len(truth_a) == ta.numel(), "self-overlap must never be missed"
    if truth_a & truth_b:
        assert _overlap(ta, tb), "an overlap must never be missed"


slices = st.tuples(*(st.tuples(st.integers(0, n - 1), st.integers(1, n)) for n in (4, 5, 6)))


@given(slices, slices, st.sampled_from([(1, 1, 1), (1, 1, 2), (2, 1, 3), (1, 2, 1)]))
def test_overlap_is_exact_for_slices_of_one_buffer(a, b, steps) -> None:
    """Views like q/k/v of a fused buffer (same strides): decided element for element."""
    base = torch.zeros(4, 5, 6)

    def view(spec):
        # the same shape for both views (equal extents), different starts
        return base[tuple(slice(lo, lo + 1 + (n - 1) // st * st, st) for (lo, _), n, st
                          in zip(spec, (2, 2, 3), steps, strict=True))]

    def clip(spec):
        return tuple((min(lo, d - 1 - (n - 1) // st * st), ln) for (lo, ln), d, n, st
                     in zip(spec, (4, 5, 6), (2, 2, 3), steps, strict=True))

    ta, tb = view(clip(a)), view(clip(b))
    assert ta.stride() == tb.stride()
    assert _overlap(ta, tb) == bool(addresses(ta) & addresses(tb))


@pytest.mark.parametrize("layout", ["bshd", "thd"])
def test_two_dim_tables_are_refused_where_they_would_meet_the_heads(layout: str) -> None:
    """[s, n] right-aligned against [b, s, h, d] (or [t, h, d]) lines up with h: refused
    even when s == h, where broadcasting would silently succeed."""
    x = torch.randn(2, 4, 4, 8) if layout == "bshd" else torch.randn(4, 4, 8)
    cos, sin = tables(4)
    with pytest.raises(ropekit.RopeValueError, match="would line up with the heads"):
        ropekit.apply_rope(x, cos, sin, layout=layout)
    ropekit.apply_rope(x, cos[:, None], sin[:, None], layout=layout)  # [s, 1, n]: fine
    ropekit.apply_rope(x, cos[:1], sin[:1], layout=layout)  # [1, n]: one angle for all
