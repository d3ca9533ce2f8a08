"""cos_sin / cos_sin_range: exact to 1e-7 at |position| up to 2**24; the angle-addition
method (its definition, its error against mpmath, one value per position whichever path
builds it, the trig it saves); shapes, dtypes, torch.compile and bad input."""

from __future__ import annotations

import math
import random

import mpmath
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import ropekit
from ropekit.tables import BLOCK, cos_sin_range, fine_table

mpmath.mp.dps = 40

FREQS = ropekit.inv_freq(128, 500000.0)


def by_definition(
    freqs: torch.Tensor,
    positions: torch.Tensor,
    factor: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables as the module docstring of ropekit.tables.cos_sin defines them, written
    out token by token: m = hi + lo, lo = fmod(m, 64), float64 trig of each part, then
    cos = C_hi (f C_lo) + S_hi (f (-S_lo)), sin = C_hi (f S_lo) + S_hi (f C_lo)."""
    m = positions.to(torch.float64)
    lo = torch.fmod(m, 64)
    hi = m - lo
    a_hi, a_lo = hi[..., None] * freqs.double(), lo[..., None] * freqs.double()
    c_hi, s_hi = torch.cos(a_hi), torch.sin(a_hi)
    c_lo, s_lo = factor * torch.cos(a_lo), factor * torch.sin(a_lo)
    return (c_hi * c_lo + s_hi * -s_lo).to(dtype), (c_hi * s_lo + s_hi * c_lo).to(dtype)


def assert_same(
    got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]
) -> None:
    assert got[0].dtype == want[0].dtype and got[0].shape == want[0].shape
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


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
def test_shape_dtype_and_attention_factor(
    shape: list[int], n: int, factor: float, dtype: torch.dtype
) -> None:
    positions = torch.randint(-50_000, 50_000, shape)
    freqs = torch.rand(n, dtype=torch.float64) + 1e-3
    cos, sin = ropekit.cos_sin(freqs, positions, attention_factor=factor, dtype=dtype)
    assert cos.shape == sin.shape == (*shape, n)
    assert cos.dtype == sin.dtype == dtype
    assert_same((cos, sin), by_definition(freqs, positions, factor, dtype))
    # and the direct formula, to the float64 rounding of both ways' angles (each up to
    # |m * theta| * 2**-53), a few float64 ulps, and one rounding step of dtype
    angle = positions.double()[..., None] * freqs
    atol = factor * (2 * 50_000 * 1.001 * 2**-53 + 2e-15 + torch.finfo(dtype).eps)
    torch.testing.assert_close(cos.double(), factor * angle.cos(), rtol=0, atol=atol)
    torch.testing.assert_close(sin.double(), factor * angle.sin(), rtol=0, atol=atol)


def test_positions_dtype_never_limits_precision() -> None:
    freqs = ropekit.inv_freq(64, 10000.0)
    ref = ropekit.cos_sin(freqs, torch.arange(0, 40000, 7, dtype=torch.int64))
    for dt in (torch.int32, torch.float64, torch.float32):  # 40000 is exact in all of them
        got = ropekit.cos_sin(freqs, torch.arange(0, 40000, 7).to(dt))
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    # float32 inverse frequencies are used as given (their own rounding), not recomputed
    # in float32 arithmetic: the angle is still formed in float64.
    f32 = freqs.float()
    got = ropekit.cos_sin(f32, torch.tensor([10**6]))
    assert_same(got, ropekit.cos_sin(f32.double(), torch.tensor([10**6])))
    assert_same(got, by_definition(f32, torch.tensor([10**6])))
    want = torch.cos(10**6 * f32.double())
    assert float((got[0][0].double() - want).abs().max()) < 1e-7


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
        (
            lambda f: ropekit.cos_sin(f, torch.arange(3), attention_factor=0.0),
            "attention_factor=0.0",
        ),
        (
            lambda f: ropekit.cos_sin(f, torch.arange(3), attention_factor=math.nan),
            "attention_factor=nan",
        ),
        (lambda f: ropekit.cos_sin(f, torch.arange(3), dtype=torch.int64), "dtype=torch.int64"),
    ],
)
def test_bad_input_raises(call, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        call(ropekit.inv_freq(8))
    assert isinstance(info.value, ropekit.RopeValueError)
    assert needle in str(info.value)


def test_largest_exact_position_is_accepted() -> None:
    cos, _ = ropekit.cos_sin(
        torch.tensor([1.0], dtype=torch.float64), torch.tensor([2**53, -(2**53)])
    )
    assert bool(torch.isfinite(cos).all())


# ---------------------------------------------------------------------------------------
# The angle-addition method: one value per position, whichever path builds it.


REFERENCE_START = -300  # by_definition over [-300, 20000): rows for every check below


@pytest.fixture(scope="module")
def reference() -> dict:
    positions = torch.arange(REFERENCE_START, 20_000)
    return {
        (factor, dtype): by_definition(FREQS, positions, factor, dtype)
        for factor in (1.0, 1.37)
        for dtype in (torch.float64, torch.float32, torch.bfloat16)
    }


def rows(
    ref: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return ref[0][positions - REFERENCE_START], ref[1][positions - REFERENCE_START]


@pytest.mark.parametrize("factor", [1.0, 1.37])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_every_path_gives_the_defined_value(
    reference: dict, factor: float, dtype: torch.dtype
) -> None:
    ref = reference[factor, dtype]
    table = fine_table(FREQS, attention_factor=factor)
    gen = random.Random(0)
    kw = dict(attention_factor=factor, dtype=dtype)
    # ranges: decode steps, block boundaries, several blocks, negative starts, long
    cases = [(0, 1), (63, 1), (64, 1), (1000, 1), (0, 64), (1, 64), (60, 8), (63, 130), (-300, 301)]
    cases += [(-5, 3), (5, 0), (0, 19_999), (127, 9_000), (12_345, 7_000)]
    cases += [
        (gen.randrange(-300, 15_000), gen.choice([1, 2, 17, 64, 65, 200, 3000])) for _ in range(10)
    ]
    for start, length in cases:
        want = rows(ref, torch.arange(start, start + length))
        for fine in (None, table):
            assert_same(cos_sin_range(FREQS, start, length, fine_table=fine, **kw), want)
            assert_same(
                ropekit.cos_sin(FREQS, torch.arange(start, start + length), fine_table=fine, **kw),
                want,
            )
        assert_same(
            ropekit.cos_sin(FREQS, torch.arange(start, start + length).double(), **kw), want
        )
    # [b, s] rows that are aranges (repeated starts too), irregular and shuffled positions
    for positions in (
        torch.tensor([0, 7, 1000, 7])[:, None] + torch.arange(300),
        torch.tensor([5, 2000])[:, None] + torch.arange(3),
        torch.randint(-300, 20_000, (7, 33)),
        torch.randint(-300, 20_000, (32, 1)),
        torch.randperm(20_000)[:4096] - 300,
        torch.tensor(12_345),
    ):
        for fine in (None, table):
            assert_same(
                ropekit.cos_sin(FREQS, positions, fine_table=fine, **kw), rows(ref, positions)
            )


def test_long_tables_in_chunks_equal_the_definition() -> None:
    freqs = ropekit.inv_freq(16, 10000.0)  # n = 8: chunked beyond 2**16 rows
    for start in (0, 33, 64 * 1000 + 5):
        want = by_definition(freqs, torch.arange(start, start + 70_001))
        assert_same(cos_sin_range(freqs, start, 70_001), want)
        assert_same(ropekit.cos_sin(freqs, torch.arange(start, start + 70_001)), want)


def test_decode_steps_equal_rows_of_a_prefill() -> None:
    table = fine_table(FREQS)
    prefill = cos_sin_range(FREQS, 0, 5000)
    for m in (0, 1, 63, 64, 65, 1000, 4095, 4999):
        for step in (
            cos_sin_range(FREQS, m, 1),
            cos_sin_range(FREQS, m, 1, fine_table=table),
            ropekit.cos_sin(FREQS, torch.tensor([m])),
            ropekit.cos_sin(FREQS, torch.tensor([[m]] * 3)),
        ):
            assert torch.equal(step[0].reshape(-1, 64)[0], prefill[0][m])
            assert torch.equal(step[1].reshape(-1, 64)[0], prefill[1][m])


def test_module_and_hf_decode_steps_equal_rows_of_a_prefill() -> None:
    """The modules' fast paths (their own frequencies, fine-table row views, HF's [2n]
    tables built at once) give the public functions' values bit for bit."""
    config = ropekit.RopeConfig(head_dim=128, theta=500000.0)
    freqs = config.inv_freq()
    prefill = cos_sin_range(freqs, 0, 5001)
    rope = ropekit.RotaryEmbedding(config, backend="reference")
    tables = ropekit.hf.RotaryTables(config)
    for m in (0, 1, 63, 64, 65, 1000, 4095, 4999):
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(1, 2, 1, 128, dtype=dtype)
            want = ropekit.apply_rope(x, prefill[0][m : m + 1], prefill[1][m : m + 1])
            if dtype == torch.float64:  # the float64 tables of the same angles
                p64 = cos_sin_range(freqs, m, 1, dtype=torch.float64)
                want = ropekit.apply_rope(x, *p64)
            assert torch.equal(rope(x, offset=m), want)
        cos, sin = tables(torch.zeros(1), torch.tensor([[m, m + 1]]))
        assert cos.shape == (1, 2, 128)
        for half in (cos[..., :64], cos[..., 64:]):
            assert torch.equal(half[0], prefill[0][m : m + 2])
        for half in (sin[..., :64], sin[..., 64:]):
            assert torch.equal(half[0], prefill[1][m : m + 2])


def test_small_positions_equal_the_direct_formula() -> None:
    # |m| < 64: hi = 0, and the formula reduces exactly to f * cos(m * theta)
    positions = torch.arange(-63, 64)
    angle = positions.double()[:, None] * FREQS
    got = ropekit.cos_sin(FREQS, positions, attention_factor=1.25, dtype=torch.float64)
    assert torch.equal(got[0], 1.25 * angle.cos()) and torch.equal(got[1], 1.25 * angle.sin())


def test_non_integer_positions_follow_the_definition() -> None:
    positions = torch.tensor([0.5, -7.25, 12_345.5, 2.0**30 + 0.75, -(2.0**40) - 0.5])
    for dtype in (torch.float64, torch.float32):
        assert_same(
            ropekit.cos_sin(FREQS, positions, dtype=dtype),
            by_definition(FREQS, positions, dtype=dtype),
        )


class CountTrig(TorchDispatchMode):
    """Number of entries passed to cos and sin."""

    def __init__(self) -> None:
        super().__init__()
        self.entries = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (
            torch.ops.aten.cos.default,
            torch.ops.aten.sin.default,
            torch.ops.aten.cos.out,
            torch.ops.aten.sin.out,
        ):
            self.entries += args[0].numel()
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("call", "rows_of_trig"),
    [
        (lambda: cos_sin_range(FREQS, 1000, 4096), 4096 // BLOCK + 1 + BLOCK),
        (
            lambda: cos_sin_range(FREQS, 1000, 4096, fine_table=fine_table(FREQS)),
            4096 // BLOCK + 1 + 2 * BLOCK - 1,
        ),
        (lambda: cos_sin_range(FREQS, 1000, 1), 2),
        (lambda: ropekit.cos_sin(FREQS, torch.arange(4096)), 4096 // BLOCK + BLOCK),
        (
            lambda: ropekit.cos_sin(FREQS, torch.arange(4096)[None] + torch.tensor([[0], [64]])),
            2 * (4096 // BLOCK + BLOCK),
        ),
        (lambda: ropekit.cos_sin(FREQS, torch.randperm(4096)), 4096 // BLOCK + 2 * BLOCK - 1),
    ],
)
def test_trig_only_for_the_distinct_hi_and_lo(call, rows_of_trig: int) -> None:
    # The saving, counted rather than timed: cos and sin of [4096, 64] directly would be
    # 4096 rows each. (The fine_table case counts building the table: 2B - 1 rows.)
    with CountTrig() as count:
        call()
    assert 0 < count.entries <= 2 * rows_of_trig * 64, count.entries / 128


# ---------------------------------------------------------------------------------------
# Error against mpmath: the method's own (trig + combination) and the whole.


def exact_cos_sin_of(angle: mpmath.mpf) -> tuple[mpmath.mpf, mpmath.mpf]:
    return mpmath.cos(angle), mpmath.sin(angle)


@pytest.mark.parametrize(
    "position",
    [
        0,
        1,
        63,
        64,
        4095,
        1_000_000,
        -1_000_000,
        2**24 - 1,
        2**24,
        -(2**24),
        2**40 + 3,
        12_345.5,
        -7.25,
    ],
)
def test_float64_error_is_the_angles_rounding_plus_a_few_ulps(position: float) -> None:
    freqs = ropekit.inv_freq(128, 10000.0)
    pos = torch.tensor(
        [position], dtype=torch.float64 if isinstance(position, float) else torch.int64
    )
    c64, s64 = ropekit.cos_sin(freqs, pos, dtype=torch.float64)
    c32, s32 = ropekit.cos_sin(freqs, pos)
    lo = math.fmod(position, 64)
    hi = position - lo
    with mpmath.workdps(50):
        for i in range(64):
            theta = mpmath.mpf(float(freqs[i]))  # the float64 frequency, exactly
            # the method's own error: exact trig of the float64 angle parts, combined exactly
            parts = mpmath.mpf(float(hi * freqs[i].double())) + mpmath.mpf(
                float(lo * freqs[i].double())
            )
            for got, want in zip((c64[0, i], s64[0, i]), exact_cos_sin_of(parts), strict=True):
                assert abs(mpmath.mpf(float(got)) - want) < 1e-15
            # the whole: plus the rounding of the angles, |m * theta| * 2**-53 at most
            bound = abs(position) * float(freqs[i]) * 2**-53 + 1e-15
            exact = exact_cos_sin_of(mpmath.mpf(position) * theta)
            for got, want in zip((c64[0, i], s64[0, i]), exact, strict=True):
                assert abs(mpmath.mpf(float(got)) - want) < bound
            for got, want in zip((c32[0, i], s32[0, i]), exact, strict=True):
                assert abs(mpmath.mpf(float(got)) - want) < bound + 2**-25


def test_float32_tables_are_correctly_rounded_at_moderate_positions() -> None:
    # For m < 4096 the float64 error (< 5e-13) leaves float32 rounding decided except at
    # near-ties: measured, every entry of the sample is the correctly rounded float32 of
    # cos/sin of the exact angle m * theta (float64 theta).
    freqs = ropekit.inv_freq(128, 500000.0)
    positions = torch.tensor(random.Random(1).sample(range(4096), 40))
    c32, s32 = ropekit.cos_sin(freqs, positions)
    wrong = 0
    for r, m in enumerate(positions.tolist()):
        for i in range(64):
            angle = mpmath.mpf(m) * mpmath.mpf(float(freqs[i]))
            for got, want in zip((c32[r, i], s32[r, i]), exact_cos_sin_of(angle), strict=True):
                with mpmath.workprec(24):
                    wrong += float(got) != float(+want)
    assert wrong <= 3, wrong  # of 5120


# ---------------------------------------------------------------------------------------
# cos_sin_range: torch.compile and bad input.


class CountingBackend:
    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return gm.forward


@pytest.mark.parametrize("with_table", [False, True])
def test_cos_sin_range_traces_into_one_graph(with_table: bool) -> None:
    freqs = ropekit.inv_freq(16)
    table = fine_table(freqs, attention_factor=1.5) if with_table else None

    def fn(x: torch.Tensor, offset: int) -> torch.Tensor:
        cos, sin = cos_sin_range(freqs, offset, x.shape[1], attention_factor=1.5, fine_table=table)
        return x * cos + sin

    torch._dynamo.reset()
    counter = CountingBackend()
    compiled = torch.compile(fn, backend=counter, fullgraph=True, dynamic=True)
    try:
        for s, offset in ((5, 0), (9, 0), (20, 0), (70, 3), (130, 1000)):
            x = torch.randn(2, s, 8)
            assert torch.equal(compiled(x, offset), fn(x, offset)), (s, offset)
        assert counter.graphs == 1
        for offset in (20, 21, 64, 70_000):  # decode: size 1 is specialised, one more graph
            x = torch.randn(2, 1, 8)
            assert torch.equal(compiled(x, offset), fn(x, offset)), offset
        assert counter.graphs <= 2
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda f: cos_sin_range(f, 1.5, 3), "start=1.5"),
        (lambda f: cos_sin_range(f, True, 3), "start=True"),
        (lambda f: cos_sin_range(f, 0, -1), "length=-1"),
        (lambda f: cos_sin_range(f, 2**53, 2), "2**53"),
        (lambda f: cos_sin_range(f, -(2**53) - 1, 1), "2**53"),
        (lambda f: cos_sin_range(f[None], 0, 3), "1-D real floating"),
        (lambda f: cos_sin_range(f, 0, 3, attention_factor=-1.0), "attention_factor=-1.0"),
        (lambda f: cos_sin_range(f, 0, 3, dtype=torch.int32), "dtype=torch.int32"),
        (lambda f: cos_sin_range(f, 0, 3, fine_table=fine_table(f)[:, :, :5]), "fine_table"),
        (lambda f: cos_sin_range(f, 0, 3, fine_table=fine_table(f).float()), "fine_table"),
        (lambda f: ropekit.cos_sin(f, torch.arange(3), fine_table=fine_table(f[:2])), "fine_table"),
        (lambda f: fine_table(f, attention_factor=0.0), "attention_factor=0.0"),
    ],
)
def test_cos_sin_range_bad_input_raises(call, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        call(ropekit.inv_freq(8))
    assert isinstance(info.value, ropekit.RopeValueError)
    assert needle in str(info.value)


def test_cos_sin_range_edges() -> None:
    freqs = ropekit.inv_freq(8)
    cos, sin = cos_sin_range(freqs, 7, 0)
    assert cos.shape == sin.shape == (0, 4) and cos.dtype == torch.float32
    cos, _ = cos_sin_range(freqs, 2**53 - 1, 2)  # the largest exact positions are accepted
    assert bool(torch.isfinite(cos).all())
    cos, _ = cos_sin_range(torch.empty(0, dtype=torch.float64), 0, 500)
    assert cos.shape == (500, 0)
