"""``ropekit.axes``: the description, its tables, the rotation on every backend, modules.

Oracles are independent of the code under test: 1-D ropekit (for "a band is its axis's
1-D formula"), float64 rotations written here, and the relative-position property.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

if not torch.cuda.is_available():  # Triton runs in its CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ropekit
from ropekit import RopeValueError
from ropekit.apply.dispatch import REGISTRY
from ropekit.axes import (
    PRESETS,
    AxesConfig,
    AxisRotaryEmbedding,
    MixedRotaryEmbedding,
    apply_axes_rope,
    apply_axes_rope_qk,
    cos_sin,
    init_mixed_frequencies,
    mixed_cos_sin,
    preset,
)
from ropekit.axes import positions as P

F64 = torch.float64


# ------------------------------------------------------------------- bit for bit


@given(
    n=st.integers(1, 12),
    theta=st.sampled_from([100.0, 1e4, 5e5]),
    fractional=st.booleans(),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_one_axis_config_equals_1d_ropekit_bit_for_bit(n, theta, fractional, seed, dtype) -> None:
    g = torch.Generator().manual_seed(seed)
    inv = ropekit.inv_freq(2 * n, theta)
    cfg = AxesConfig(axis=(0,) * n, freq=tuple(inv.tolist()), n_axes=1)
    if fractional:
        pos = (torch.rand(3, 70, generator=g, dtype=F64) - 0.3) * 5000
    else:
        pos = torch.randint(-(2**20), 2**40, (3, 70), generator=g)
    c, s = cos_sin(cfg, pos.unsqueeze(-1), dtype=dtype)
    c1, s1 = ropekit.cos_sin(inv, pos, dtype=dtype)
    assert torch.equal(c, c1) and torch.equal(s, s1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_band_is_its_axis_1d_table_bit_for_bit(name) -> None:
    cfg = preset(name)
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(9, cfg.n_axes, generator=g, dtype=F64) * 3000 - 500
    c, s = cos_sin(cfg, pos)
    for j in range(cfg.n_pairs):
        cj, sj = ropekit.cos_sin(torch.tensor([cfg.freq[j]], dtype=F64), pos[:, cfg.axis[j]])
        assert torch.equal(c[:, j], cj[:, 0]) and torch.equal(s[:, j], sj[:, 0]), j


def test_tables_match_float64_oracle_at_large_and_fine_coordinates() -> None:
    cfg = preset("qwen3_vl")
    pos = torch.tensor([[2**24 + 3, 123456.25, 7.0], [1e6, -0.001, 2**30]], dtype=F64)
    c, s = cos_sin(cfg, pos, dtype=F64)
    angle = torch.stack([pos[:, a] * f for a, f in zip(cfg.axis, cfg.freq, strict=True)], -1)
    # the float64 angle's own rounding, |angle| 2**-53, dominates (cos_sin docstring)
    bound = float(angle.abs().max()) * 2**-52 + 1e-15
    assert (c - torch.cos(angle)).abs().max() < bound
    assert (s - torch.sin(angle)).abs().max() < bound


# ----------------------------------------------------------- relative positions


def rotate_oracle(cfg: AxesConfig, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """float64 rotation written from the definition: band j's lane pair by its angle."""
    angle = torch.stack([pos[..., a].to(F64) * f for a, f in zip(cfg.axis, cfg.freq, strict=True)], -1)
    n = cfg.n_pairs
    if cfg.pairing == "interleaved":
        pairs = [(2 * j, 2 * j + 1) for j in range(n)]
    elif cfg.pairing == "half":
        pairs = [(j, j + n) for j in range(n)]
    else:
        pairs, start = [], 0
        for count in cfg.block_pairs:
            pairs += [(2 * start + i, 2 * start + i + count) for i in range(count)]
            start += count
    y = x.to(F64).clone()
    for j, (u, v) in enumerate(pairs):
        c, s = torch.cos(angle[..., j]), torch.sin(angle[..., j])
        y[..., u] = x[..., u] * c - x[..., v] * s
        y[..., v] = x[..., v] * c + x[..., u] * s
    return y


@given(name=st.sampled_from(sorted(PRESETS)), seed=st.integers(0, 2**16))
def test_relative_position_property_per_axis(name, seed) -> None:
    cfg = preset(name) if name != "ltx_video" else preset(name, dim=64)
    g = torch.Generator().manual_seed(seed)
    d = cfg.lanes
    q, k = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    p, p2 = (torch.randint(-50, 50, (cfg.n_axes,), generator=g).to(F64) for _ in range(2))
    shift = torch.randint(-1000, 1000, (cfg.n_axes,), generator=g).to(F64)

    def dot(a: torch.Tensor, b: torch.Tensor) -> float:
        cq, sq = cos_sin(cfg, a[None], dtype=F64)
        ck, sk = cos_sin(cfg, b[None], dtype=F64)
        return float((apply_axes_rope(cfg, q[None], cq, sq) * apply_axes_rope(cfg, k[None], ck, sk)).sum())

    base = dot(p, p2)
    assert math.isclose(dot(p + shift, p2 + shift), base, rel_tol=1e-9, abs_tol=1e-9)
    # and each axis on its own: shifting one axis of both leaves the score
    for a in range(cfg.n_axes):
        e = torch.zeros(cfg.n_axes, dtype=F64)
        e[a] = shift[a]
        assert math.isclose(dot(p + e, p2 + e), base, rel_tol=1e-9, abs_tol=1e-9)
    # the rotation itself against the oracle
    cq, sq = cos_sin(cfg, p[None], dtype=F64)
    assert (apply_axes_rope(cfg, q[None], cq, sq) - rotate_oracle(cfg, q[None], p[None])).abs().max() < 1e-12


# ---------------------------------------------------------------- every backend


CASES = {
    "half": AxesConfig.sections(16, 1e4, (2, 3, 3), pairing="half").replace(head_dim=18),
    "interleaved": AxesConfig.blocked((4, 6, 6), 100.0, head_dim=18),
    "blocks": AxesConfig.blocked((8, 8), 100.0, pairing="blocks", head_dim=18),
}


@pytest.mark.parametrize("backend", [b.value for b in REGISTRY])
@pytest.mark.parametrize("pairing", sorted(CASES))
@pytest.mark.parametrize("layout", ["bhsd", "bshd", "thd"])
def test_every_backend_rotates_axes_tables_alike(backend, pairing, layout) -> None:
    cfg = CASES[pairing]
    g = torch.Generator().manual_seed(1)
    s = 7
    shape = {"bhsd": (2, 3, s, 18), "bshd": (2, s, 3, 18), "thd": (s, 3, 18)}[layout]
    kshape = {"bhsd": (2, 1, s, 18), "bshd": (2, s, 1, 18), "thd": (s, 1, 18)}[layout]
    q, k = torch.randn(*shape, generator=g), torch.randn(*kshape, generator=g)
    pos = torch.randint(0, 40, (s, cfg.n_axes), generator=g)
    try:
        rope = AxisRotaryEmbedding(cfg, layout=layout, backend=backend)
        got_q, got_k = rope(q, k, pos)
    except RopeValueError as e:  # a backend this machine cannot run
        if "not available" in str(e) or "unavailable" in str(e):
            pytest.skip(str(e))
        raise
    # float64 oracle, positions broadcast over batch and heads
    to_bhsd = {"bhsd": lambda x: x, "bshd": lambda x: x.transpose(1, 2), "thd": lambda x: x.transpose(0, 1)}
    want_q = rotate_oracle(cfg, to_bhsd[layout](q), pos)
    want_k = rotate_oracle(cfg, to_bhsd[layout](k), pos)
    assert (to_bhsd[layout](got_q).to(F64) - want_q).abs().max() < 4e-6
    assert (to_bhsd[layout](got_k).to(F64) - want_k).abs().max() < 4e-6
    ref_q, ref_k = AxisRotaryEmbedding(cfg, layout=layout, backend="reference")(q, k, pos)
    torch.testing.assert_close(got_q, ref_q, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(got_k, ref_k, rtol=2e-6, atol=2e-6)
    assert torch.equal(got_q[..., 16:], q[..., 16:])  # pass-through lanes


# ---------------------------------------------------------------------- modules


def test_module_keeps_float64_frequencies_under_dtype_casts_and_has_no_history() -> None:
    cfg = preset("qwen2_vl")
    rope = AxisRotaryEmbedding(cfg)
    pos = torch.tensor([[10**6, 3, 4], [10**6 + 1, 3, 5]])
    before = rope.cos_sin(pos)
    rope.to(torch.bfloat16)
    after = rope.cos_sin(pos)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    q = torch.randn(1, 2, 2, 128, dtype=torch.bfloat16)
    first = rope(q, positions=pos)
    rope(torch.randn(1, 2, 9, 128, dtype=torch.bfloat16), positions=torch.randint(0, 99, (9, 3)))
    assert torch.equal(rope(q, positions=pos), first)
    assert first.dtype == torch.bfloat16
    with torch.device("meta"):
        meta = AxisRotaryEmbedding(cfg)
    meta.to_empty(device="cpu")
    assert torch.equal(meta.cos_sin(pos)[0], before[0])


def test_module_per_row_positions_and_layouts_agree() -> None:
    cfg = preset("wan", head_dim=24)
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 3, 5, 24, generator=g)
    pos = torch.randint(0, 30, (2, 5, 3), generator=g)
    a = AxisRotaryEmbedding(cfg)(q, positions=pos)
    b = AxisRotaryEmbedding(cfg, layout="bshd")(q.transpose(1, 2), positions=pos).transpose(1, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for r in range(2):
        one = AxisRotaryEmbedding(cfg)(q[r : r + 1], positions=pos[r])
        torch.testing.assert_close(a[r : r + 1], one, rtol=0, atol=0)


def test_apply_axes_rope_qk_equals_two_single_calls_for_every_pairing() -> None:
    for cfg in CASES.values():
        q, k = torch.randn(1, 2, 4, 18), torch.randn(1, 1, 4, 18)
        c, s = cos_sin(cfg, torch.randint(0, 9, (4, cfg.n_axes)))
        yq, yk = apply_axes_rope_qk(cfg, q, k, c, s)
        assert torch.equal(yq, apply_axes_rope(cfg, q, c, s))
        assert torch.equal(yk, apply_axes_rope(cfg, k, c, s))
        back = apply_axes_rope(cfg, yq, c, s, inverse=True)
        torch.testing.assert_close(back, q, rtol=1e-5, atol=1e-5)


def test_mixed_module_layouts_and_gradient_through_rotation() -> None:
    freqs = init_mixed_frequencies(8, 2, generator=torch.Generator().manual_seed(0))
    pos = P.grid(2, 3)
    x = torch.randn(1, 2, 6, 8, dtype=F64)
    a = MixedRotaryEmbedding(freqs)(x, positions=pos)
    b = MixedRotaryEmbedding(freqs, layout="bshd")(x.transpose(1, 2), positions=pos).transpose(1, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # d/dF of sum(R x) by autograd vs central differences, in float64
    f = freqs.clone().requires_grad_(True)
    c, s = mixed_cos_sin(f, pos, dtype=F64)
    cfg = AxesConfig(axis=(0,) * 4, freq=(0.0,) * 4, n_axes=1, pairing="interleaved")
    w = torch.randn_like(x)
    (apply_axes_rope(cfg, x, c.movedim(-2, -3), s.movedim(-2, -3), backend="reference") * w).sum().backward()
    eps = 1e-6
    bump = torch.zeros_like(freqs)
    bump[1, 0, 2] = eps

    def loss(fr: torch.Tensor) -> float:
        cc, ss = mixed_cos_sin(fr, pos, dtype=F64)
        return float((apply_axes_rope(cfg, x, cc.movedim(-2, -3), ss.movedim(-2, -3)) * w).sum())

    numeric = (loss(freqs + bump) - loss(freqs - bump)) / (2 * eps)
    assert math.isclose(f.grad[1, 0, 2].item(), numeric, rel_tol=1e-6, abs_tol=1e-8)


# ------------------------------------------------------------------ builders


def test_position_builders_shapes_and_values() -> None:
    assert P.grid(2, 3, 4).shape == (24, 3)
    assert P.grid(2, 3, 4)[5].tolist() == [0, 1, 1]
    c = P.patch_centers(2, 4)
    assert c.dtype == F64 and c[0].tolist() == [-0.5, -0.75]
    assert P.with_prefix(c, 2).shape == (10, 2)
    assert P.llama4_vision_positions(3)[:4].tolist() == [[1, 1], [2, 1], [3, 1], [1, 2]]
    assert P.flux_ids(2, 3, text_len=2)[:3].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    ids = P.flux2_ids(2, 3, text_len=2, t=5)
    assert ids[1].tolist() == [0, 0, 0, 1] and ids[2].tolist() == [5, 0, 0, 0]
    assert P.eva_grid(2, 4, ref_feat_shape=(4, 2))[-1].tolist() == [2.0, 1.5]
    ltx = P.ltx_video_coords(2, 2, 2, base=(2, 2, 2))
    assert ltx[-1].tolist() == [0.0, 0.0, 0.0] and ltx[0].tolist() == [-1.0, -1.0, -1.0]
    cog = P.cogvideox_grid(2, 3, 4)
    assert cog[-1].tolist() == [1.0, 2.0, 3.0]
    dec = P.mrope_decode_positions(torch.tensor([-3.0, 2.0]), 10, 2)
    assert dec.shape == (2, 2, 3) and dec[1, 1].tolist() == [13.0, 13.0, 13.0]


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "build, needle",
    [
        (lambda: AxesConfig(axis=(0, 2), freq=(1.0, 1.0), n_axes=2), r"axis=.*\[0, n_axes=2\)"),
        (lambda: AxesConfig(axis=(0,), freq=(1.0, 2.0), n_axes=1), "one frequency per band"),
        (lambda: AxesConfig(axis=(0,), freq=(math.nan,), n_axes=1), r"freq\[0\]=nan"),
        (lambda: AxesConfig(axis=(0,), freq=(1.0,), n_axes=1, pairing="pairs"), "pairing='pairs'"),
        (lambda: AxesConfig(axis=(0, 0), freq=(1.0, 1.0), n_axes=1, pairing="blocks",
                            block_pairs=(1, 2)), "summing to the 2 bands"),
        (lambda: AxesConfig(axis=(0,), freq=(1.0,), n_axes=1, head_dim=1), "head_dim=1"),
        (lambda: AxesConfig(axis=(True,), freq=(1.0,), n_axes=1), r"axis\[0\]=True"),
        (lambda: AxesConfig.sections(128, 1e6, (16, 24, 20)), r"mrope_section=\[16, 24, 20\].*64"),
        (lambda: AxesConfig.sections(16, 1e4, (2, 4, 2), interleaved_sections=True), "interleave"),
        (lambda: AxesConfig.blocked((3, 4), 1e4), r"axis_dims\[0\]=3"),
        (lambda: AxesConfig.blocked((4, 4), (1e4,)), "one value per axis"),
        (lambda: preset("qwen4_vl"), "preset 'qwen4_vl'"),
        (lambda: preset("wan", theta_typo=1.0), "theta_typo"),
        (lambda: cos_sin(preset("flux"), torch.zeros(4, 2)), r"positions.shape=\(4, 2\).*\[\*P, 3\]"),
        (lambda: cos_sin(preset("flux"), torch.full((1, 3), math.inf)), "NaN or inf"),
        (lambda: AxisRotaryEmbedding(preset("flux"))(torch.zeros(1, 1, 2, 128)), "positions=None"),
        (lambda: AxisRotaryEmbedding(preset("flux"))(torch.zeros(1, 1, 2, 128), positions=torch.zeros(3, 3)),
         r"positions.shape=\(3, 3\)"),
        (lambda: AxisRotaryEmbedding(preset("flux"))(torch.zeros(1, 1, 2, 64), positions=torch.zeros(2, 3)),
         "head_dim=128"),
        (lambda: P.mrope_positions(torch.tensor([[0, 1, 1]]), [[1, 2, 2]]), "needs 1 tokens|more image"),
        (lambda: P.mrope_positions(torch.tensor([[0, 1]]), [[1, 3, 2]]), "multiples"),
        (lambda: P.mrope_positions(torch.tensor([[0, 2, 2]]), None, [[2, 2, 2]], second_per_grid_ts=[1, 2]),
         "one per video"),
        (lambda: P.mrope_positions(torch.tensor([[0, 0]]), [[1, 2, 2]]), "the tokens use 0"),
        (lambda: P.mrope_positions(torch.tensor([[0]]), time_rounding="round"), "time_rounding"),
        (lambda: P.dinov3_augment(torch.zeros(3, 2), jitter=0.5), "jitter=0.5"),
        (lambda: init_mixed_frequencies(6, 2), "multiple of 4"),
    ],
)
def test_bad_arguments_are_rope_value_errors_naming_the_value(build, needle) -> None:
    with pytest.raises(RopeValueError, match=needle):
        build()
