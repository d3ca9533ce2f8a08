"""RotaryEmbedding: positions, offsets, GQA, dtype changes, meta init, no call history."""

from __future__ import annotations

import pytest
import torch

import ropekit
from ropekit import spec
from tests.conftest import TOL

CFG = ropekit.RopeConfig(head_dim=16, theta=10000.0)


def qk(b=2, hq=4, hk=2, s=6, d=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, hq, s, d, generator=g, dtype=dtype),
        torch.randn(b, hk, s, d, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("interleaved", [False, True])
def test_gqa_default_positions_match_reference(interleaved: bool) -> None:
    rope = ropekit.RotaryEmbedding(CFG.replace(interleaved=interleaved))
    q, k = qk()
    q_rot, k_rot = rope(q, k)
    freqs = ropekit.inv_freq(16)
    pos = torch.arange(6)
    torch.testing.assert_close(q_rot, spec.apply(q, pos, freqs, interleaved=interleaved), **TOL[torch.float64])
    torch.testing.assert_close(k_rot, spec.apply(k, pos, freqs, interleaved=interleaved), **TOL[torch.float64])


def test_offset_decoding_equals_prefill() -> None:
    rope = ropekit.RotaryEmbedding(CFG)
    q, k = qk(s=10)
    full_q, full_k = rope(q, k)
    for t in range(10):
        step_q, step_k = rope(q[:, :, t : t + 1], k[:, :, t : t + 1], offset=t)
        assert torch.equal(step_q, full_q[:, :, t : t + 1])
        assert torch.equal(step_k, full_k[:, :, t : t + 1])


def test_per_row_positions_and_tensor_offsets() -> None:
    rope = ropekit.RotaryEmbedding(CFG)
    q, k = qk(b=3, s=5)
    offsets = torch.tensor([0, 7, 1000])
    by_offset = rope(q, k, offset=offsets)
    positions = offsets[:, None] + torch.arange(5)
    by_positions = rope(q, k, positions)
    for i in range(3):
        row = rope(q[i : i + 1], k[i : i + 1], positions[i])
        assert torch.equal(by_offset[0][i], row[0][0]) and torch.equal(by_positions[1][i], row[1][0])


def test_tables_survive_module_dtype_changes() -> None:
    q, k = qk(dtype=torch.bfloat16)
    positions = torch.tensor([0, 1, 5000, 70_000, 1_000_000, 3])
    fresh = ropekit.RotaryEmbedding(CFG)
    want = fresh(q, k, positions)
    for convert in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double()):
        moved = convert(ropekit.RotaryEmbedding(CFG))
        got = moved(q, k, positions)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # and the result is the exact rotation, rounded once to bf16 (float32 arithmetic)
    exact = spec.apply(q.double(), positions, ropekit.inv_freq(16))
    torch.testing.assert_close(want[0].double(), exact, **TOL[torch.bfloat16])


def test_meta_device_init_then_to_empty() -> None:
    with torch.device("meta"):
        model = torch.nn.ModuleDict({"rope": ropekit.RotaryEmbedding(CFG), "proj": torch.nn.Linear(4, 4)})
    model = model.to_empty(device="cpu")
    q, k = qk()
    got = model["rope"](q, k)
    want = ropekit.RotaryEmbedding(CFG)(q, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_results_do_not_depend_on_call_history() -> None:
    q, k = qk(s=4)
    fresh = ropekit.RotaryEmbedding(CFG)(q, k, torch.tensor([3, 9, 20, 40]))
    used = ropekit.RotaryEmbedding(CFG)
    for length in (1, 4096, 3, 100_000):  # long, short, long: any cache would change state
        used(*qk(b=1, hq=1, hk=1, s=1), offset=length)
    again = used(q, k, torch.tensor([3, 9, 20, 40]))
    assert torch.equal(fresh[0], again[0]) and torch.equal(fresh[1], again[1])
    assert list(used.buffers()) == [] and list(used.parameters()) == []


@pytest.mark.parametrize("name", sorted(ropekit.PRESETS))
def test_module_tables_equal_the_configs_for_every_preset(name: str) -> None:
    # The module keeps length-independent frequencies from construction; the config
    # recomputes them on every call. Both must give the same bits, on both sides of the
    # original context (length-aware methods switch there).
    cfg = ropekit.PRESETS[name]
    rope = ropekit.RotaryEmbedding(cfg)
    positions = torch.tensor([0, 1, 17, 4095, 70_000])
    for seq_len in (None, 16, 70_001, 10**6):
        got = rope.cos_sin(positions, seq_len=seq_len, dtype=torch.float64)
        want = cfg.cos_sin(positions, seq_len=seq_len, dtype=torch.float64)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), seq_len
    with pytest.raises(AttributeError):  # frequencies kept from construction stay its own
        rope.config = ropekit.RopeConfig(head_dim=cfg.head_dim, theta=2.0)  # type: ignore[misc]


def test_odd_and_partial_head_dims() -> None:
    for cfg in (ropekit.RopeConfig(head_dim=9), ropekit.RopeConfig(head_dim=12, rotary_dim=4)):
        q, k = qk(d=cfg.head_dim)
        q_rot, _ = ropekit.RotaryEmbedding(cfg)(q, k)
        want = spec.apply(q, torch.arange(6), cfg.inv_freq())
        torch.testing.assert_close(q_rot, want, **TOL[torch.float64])
        assert torch.equal(q_rot[..., 2 * cfg.n_pairs :], q[..., 2 * cfg.n_pairs :])


def test_gradients_flow_and_match_gradcheck() -> None:
    rope = ropekit.RotaryEmbedding(ropekit.RopeConfig(head_dim=6, interleaved=True))
    q, k = qk(b=1, hq=2, hk=1, s=3, d=6)
    q.requires_grad_(True)
    k.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k: rope(q, k, offset=11), (q, k))


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda r: r(torch.ones(2, 6, 16), torch.ones(2, 6, 16)), "expected [b, h, s, d]"),
        (lambda r: r(torch.ones(1, 2, 6, 16), torch.ones(1, 2, 5, 16)), "do not match"),
        (lambda r: r(torch.ones(1, 2, 6, 16), torch.ones(2, 2, 6, 16)), "do not match"),
        (lambda r: r(torch.ones(1, 2, 6, 8), torch.ones(1, 2, 6, 8)), "head_dim=16"),
        (lambda r: r(torch.ones(1, 2, 6, 16), torch.ones(1, 2, 6, 16), torch.arange(5)), "positions.shape=(5,)"),
        (lambda r: r(torch.ones(1, 2, 6, 16), torch.ones(1, 2, 6, 16), offset=1.5), "offset=1.5"),
        (
            lambda r: r(torch.ones(1, 2, 6, 16), torch.ones(1, 2, 6, 16), offset=torch.tensor([0.5])),
            "offset.dtype",
        ),
        (lambda r: r(torch.ones(1, 2, 6, 16, dtype=torch.int64), torch.ones(1, 2, 6, 16)), "q.dtype=torch.int64"),
    ],
)
def test_bad_input_raises(call, needle: str) -> None:
    with pytest.raises(ropekit.RopeValueError) as info:
        call(ropekit.RotaryEmbedding(CFG))
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"head_dim": 0}, "head_dim=0"),
        ({"head_dim": 8, "theta": float("inf")}, "theta=inf"),
        ({"head_dim": 8, "rotary_dim": 5}, "rotary_dim=5"),
        ({"head_dim": 8, "interleaved": 1}, "interleaved=1"),
        ({"head_dim": 8, "scaling": {"rope_type": "linear"}}, "scaling="),
        ({"head_dim": 8, "max_position": 0}, "max_position=0"),
    ],
)
def test_config_validates_on_construction(kwargs: dict, needle: str) -> None:
    with pytest.raises(ropekit.RopeValueError) as info:
        ropekit.RopeConfig(**kwargs)
    assert needle in str(info.value)
    with pytest.raises(ropekit.RopeValueError):
        ropekit.RotaryEmbedding("not a config")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- layouts


def test_queries_alone() -> None:
    """vLLM's key=None: rope(q) is rope(q, k)[0]."""
    rope = ropekit.RotaryEmbedding(CFG)
    q, k = qk()
    alone = rope(q, offset=3)
    assert isinstance(alone, torch.Tensor)
    assert torch.equal(alone, rope(q, k, offset=3)[0])


@pytest.mark.parametrize("interleaved", [False, True])
def test_packed_sequences_restart_per_document(interleaved: bool) -> None:
    rope = ropekit.RotaryEmbedding(CFG.replace(interleaved=interleaved), layout="thd")
    g = torch.Generator().manual_seed(3)
    q = torch.randn(7, 4, 16, generator=g, dtype=torch.float64)  # [t, h, d]
    k = torch.randn(7, 2, 16, generator=g, dtype=torch.float64)
    cu = torch.tensor([0, 3, 3, 7])  # documents of 3, 0 and 4 tokens
    starts = torch.tensor([10, 0, 100])  # each document's first position (cached prefix)
    got_q, got_k = rope(q, k, cu_seqlens=cu, offset=starts)
    want_pos = torch.tensor([10, 11, 12, 100, 101, 102, 103])  # written out by hand
    freqs = ropekit.inv_freq(16)
    for got, x in ((got_q, q), (got_k, k)):
        want = spec.apply(x.transpose(0, 1), want_pos, freqs, interleaved=interleaved)
        torch.testing.assert_close(got, want.transpose(0, 1), **TOL[torch.float64])


def test_bshd_layout_matches_bhsd() -> None:
    q, k = qk(s=5)
    bhsd = ropekit.RotaryEmbedding(CFG)(q, k, offset=torch.tensor([2, 30]))
    bshd = ropekit.RotaryEmbedding(CFG, layout="bshd")(
        q.transpose(1, 2), k.transpose(1, 2), offset=torch.tensor([2, 30])
    )
    assert torch.equal(bshd[0], bhsd[0].transpose(1, 2))
    assert torch.equal(bshd[1], bhsd[1].transpose(1, 2))
    with pytest.raises(ropekit.RopeValueError, match="layout='bsh' is not allowed"):
        ropekit.RotaryEmbedding(CFG, layout="bsh")


def test_frequencies_follow_the_device_but_keep_float64() -> None:
    """module.to(device) moves the kept float64 frequencies (no per-call host copy);
    module.to(dtype) leaves them float64 (checked on the meta device, which any machine has)."""
    rope = ropekit.RotaryEmbedding(CFG)
    assert rope._inv_freq.dtype == torch.float64 and rope._inv_freq.device.type == "cpu"
    rope.to(torch.bfloat16)
    assert rope._inv_freq.dtype == torch.float64
    rope.to("meta")
    assert rope._inv_freq.device.type == "meta" and rope._inv_freq.dtype == torch.float64
    rope.to_empty(device="cpu")  # values come back from the float64 master, not from meta
    assert torch.equal(rope._inv_freq, ropekit.inv_freq(16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kept_tables_give_the_tables_built_per_call(dtype: torch.dtype) -> None:
    """Calls inside the kept positions slice the kept float32 tables; every other call
    builds its own. Both are the same tables bit for bit, at the edges of [0, L) too."""
    kept = ropekit.RotaryEmbedding(CFG, kept_positions=100)
    built = ropekit.RotaryEmbedding(CFG, kept_positions=0)
    assert (kept.kept_positions, built.kept_positions) == (100, 0)
    for offset, s in ((0, 100), (0, 1), (37, 5), (99, 1), (99, 2), (100, 1), (5000, 3)):
        q, k = qk(s=s, dtype=dtype, seed=offset + s)
        got, want = kept(q, k, offset=offset), built(q, k, offset=offset)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (offset, s)
        # and against the float64 specification (an independent oracle)
        exact = spec.apply(q.double(), torch.arange(offset, offset + s), ropekit.inv_freq(16))
        torch.testing.assert_close(got[0].double(), exact, **TOL[dtype])


def test_kept_tables_are_the_exact_tables_rounded_once() -> None:
    rope = ropekit.RotaryEmbedding(CFG.replace(max_position=5000))
    cos, sin = rope._kept
    assert rope.kept_positions == 5000 and cos.shape == sin.shape == (5000, 8)
    assert cos.dtype == sin.dtype == torch.float32
    # oracle: float64 angles of exact integer positions, cos/sin, one rounding
    angle = torch.arange(5000, dtype=torch.float64)[:, None] * ropekit.inv_freq(16)
    torch.testing.assert_close(cos.double(), torch.cos(angle), atol=2**-25, rtol=0)
    torch.testing.assert_close(sin.double(), torch.sin(angle), atol=2**-25, rtol=0)


def test_kept_tables_follow_the_device_and_never_the_dtype() -> None:
    q, k = qk(s=7, dtype=torch.bfloat16)
    want = ropekit.RotaryEmbedding(CFG)(q, k, offset=3)
    rope = ropekit.RotaryEmbedding(CFG).to(torch.bfloat16).half()
    assert rope._kept[0].dtype == torch.float32
    got = rope(q, k, offset=3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with torch.device("meta"):
        meta = ropekit.RotaryEmbedding(CFG)
    meta.to("meta")
    assert meta._kept[0].device.type == "meta"
    meta.to_empty(device="cpu")  # the values come back from the CPU masters
    got = meta(q, k, offset=3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize(
    ("max_position", "kept"), [(None, 4096), (100, 4096), (8192, 8192), (1_000_000, 32768)]
)
def test_kept_positions_default_follows_max_position(max_position, kept) -> None:
    assert ropekit.RotaryEmbedding(CFG.replace(max_position=max_position)).kept_positions == kept


def test_nothing_kept_for_length_dependent_scaling() -> None:
    cfg = CFG.replace(scaling=ropekit.scaling.Dynamic(2.0, max_position=64), max_position=64)
    rope = ropekit.RotaryEmbedding(cfg)
    assert rope.kept_positions == 0
    q, k = qk(s=100, dtype=torch.float32)  # beyond 64: the NTK frequencies of length 100
    freqs = cfg.scaling.frequencies(16, 10000.0, None, 100)[0]
    exact = spec.apply(q.double(), torch.arange(100), freqs)
    torch.testing.assert_close(rope(q, k)[0].double(), exact, **TOL[torch.float32])


@pytest.mark.parametrize("value", [-1, 1.5, True, "8", 2**24 + 1])
def test_bad_kept_positions_raise(value) -> None:
    with pytest.raises(ropekit.RopeValueError, match="kept_positions"):
        ropekit.RotaryEmbedding(CFG, kept_positions=value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_tables_serve_position_tensors_on_the_cpu(dtype: torch.dtype) -> None:
    """[s], [b, s] and packed positions inside the kept range gather kept rows; outside
    it (or negative) they are built: the same values either way."""
    kept = ropekit.RotaryEmbedding(CFG, kept_positions=50)
    built = ropekit.RotaryEmbedding(CFG, kept_positions=0)
    q, k = qk(s=4, dtype=dtype)
    for positions in (
        torch.tensor([0, 1, 2, 49]),
        torch.tensor([[3, 4, 5, 6], [0, 0, 1, 2]]),
        torch.tensor([47, 48, 49, 50]),  # the last one past the kept rows: built
        torch.tensor([-2, -1, 0, 1]),
        torch.tensor([[5, 6, 7, 8]] * 2, dtype=torch.int32),
    ):
        got, want = kept(q, k, positions), built(q, k, positions)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), positions
        rows = positions.long().expand(2, 4)  # the oracle takes [s]: one batch row at a time
        exact = torch.stack([spec.apply(q[i].double(), rows[i], ropekit.inv_freq(16)) for i in range(2)])
        torch.testing.assert_close(got[0].double(), exact, **TOL[dtype])
    packed = ropekit.RotaryEmbedding(CFG, layout="thd", kept_positions=50)
    packed_built = ropekit.RotaryEmbedding(CFG, layout="thd", kept_positions=0)
    x, y = torch.randn(7, 4, 16, dtype=dtype), torch.randn(7, 2, 16, dtype=dtype)
    cu = torch.tensor([0, 3, 7])
    for offset in (0, torch.tensor([10, 45])):  # the second document runs past 50
        got = packed(x, y, cu_seqlens=cu, offset=offset)
        want = packed_built(x, y, cu_seqlens=cu, offset=offset)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
