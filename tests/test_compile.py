"""torch.compile(fullgraph=True) of a module using RotaryEmbedding, for every scaling method.

What is checked: no graph breaks (``fullgraph=True`` raises on any), at most two
compilations over five or more sequence lengths and over decode steps at growing
offsets (``dynamic=True``), and compiled results equal eager ones. Graph structure is
checked with a counting backend that runs the traced graph as is (fast); one test runs
Inductor for real and compares against eager within the dtype's tolerance.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

import ropekit
from ropekit.scaling import SCALINGS
from tests.conftest import TOL

HEAD_DIM = 16
N_PAIRS = HEAD_DIM // 2
CONTEXT = 16  # original context of the length-aware methods: lengths below cross it

# Parameters for each registered method (a new method must add its own here).
EXAMPLES: dict[str, dict[str, Any]] = {
    "default": {},
    "linear": {"factor": 2.0},
    "ntk": {"alpha": 4.0},
    "dynamic": {"factor": 2.0, "max_position": CONTEXT},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": CONTEXT},
    "llama3": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": CONTEXT,
    },
    "longrope": {
        "short_factor": [1.0 + 0.1 * i for i in range(N_PAIRS)],
        "long_factor": [2.0 + 0.5 * i for i in range(N_PAIRS)],
        "original_max_position_embeddings": CONTEXT,
        "factor": 4.0,
    },
    "proportional": {"partial_rotary_factor": 0.5, "factor": 1.0},
}
LENGTHS = (5, 9, 20, 33, 40)  # both sides of CONTEXT


def config(name: str, interleaved: bool = False) -> ropekit.RopeConfig:
    cls = SCALINGS[name]
    assert name in EXAMPLES, f"add example parameters for scaling {name!r} to EXAMPLES"
    scaling = cls(**EXAMPLES[name])
    return ropekit.RopeConfig(
        head_dim=HEAD_DIM, scaling=scaling, interleaved=interleaved, max_position=4 * CONTEXT
    )


class Attention(nn.Module):
    """The part of an attention layer around RoPE: project, rotate, score."""

    def __init__(self, cfg: ropekit.RopeConfig, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        self.q = nn.Linear(32, heads * HEAD_DIM, bias=False)
        self.k = nn.Linear(32, kv_heads * HEAD_DIM, bias=False)
        self.rope = ropekit.RotaryEmbedding(cfg)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, HEAD_DIM).transpose(1, 2)
        k = self.k(x).view(b, s, self.kv_heads, HEAD_DIM).transpose(1, 2)
        q, k = self.rope(q, k, offset=offset)
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
        return q @ k.transpose(-1, -2)


class CountingBackend:
    """A torch.compile backend that counts compilations and runs the traced graph."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.graphs += 1
        return gm.forward


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_fullgraph_at_most_two_compilations_and_equal_to_eager(name: str) -> None:
    torch.manual_seed(0)
    model = Attention(config(name, interleaved=name == "llama3"))
    counter = CountingBackend()
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for s in (*LENGTHS, 7, 50):  # prefill at seven lengths, across the original context
            x = torch.randn(2, s, 32)
            assert torch.equal(compiled(x), model(x)), (name, s)
        assert counter.graphs <= 2, counter.graphs
        prefill_graphs = counter.graphs
        for offset in (20, 21, 22, 40):  # decode: one token at growing offsets
            x = torch.randn(2, 1, 32)
            assert torch.equal(compiled(x, offset), model(x, offset)), (name, offset)
    # torch specialises size 1, so decoding adds one graph, whatever the offset
    assert counter.graphs - prefill_graphs <= 1, counter.graphs


def test_default_dynamic_setting_recompiles_once_for_new_lengths() -> None:
    # torch's default (dynamic=None) specialises the first shape, then goes symbolic.
    model = Attention(config("llama3"))
    counter = CountingBackend()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    with torch.no_grad():
        for s in LENGTHS:
            compiled(torch.randn(1, s, 32))
    assert counter.graphs <= 2, counter.graphs


def test_explicit_positions_need_seq_len_for_length_aware_methods_under_compile() -> None:
    rope = ropekit.RotaryEmbedding(config("dynamic"))
    q, k = torch.randn(1, 2, 6, HEAD_DIM), torch.randn(1, 2, 6, HEAD_DIM)
    positions = torch.arange(30, 36)
    eager = rope(q, k, positions)  # eager: max(positions) + 1 read from the data
    assert all(
        torch.equal(a, b) for a, b in zip(eager, rope(q, k, positions, seq_len=36), strict=True)
    )
    compiled = torch.compile(rope, backend=CountingBackend(), fullgraph=True)
    got = compiled(q, k, positions, seq_len=36)
    assert all(torch.equal(a, b) for a, b in zip(got, eager, strict=True))
    with pytest.raises(Exception, match="pass seq_len"):
        compiled(q, k, positions)


def test_kernel_backends_trace_the_formula() -> None:
    # backend="cpu" is an opaque ctypes call: inside a graph ropekit traces the formula.
    def fn(q, k, cos, sin):
        return ropekit.apply.apply_rope_qk(q, k, cos, sin, backend="cpu")

    q, k = torch.randn(2, 4, 7, 16), torch.randn(2, 2, 7, 16)
    cos, sin = ropekit.cos_sin(ropekit.inv_freq(16), torch.arange(7))
    got = torch.compile(fn, backend=CountingBackend(), fullgraph=True)(q, k, cos, sin)
    want = fn(q, k, cos, sin)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.slow
def test_inductor_matches_eager_within_dtype_tolerance() -> None:
    # One real Inductor compilation (seconds): bf16, llama3 scaling, three lengths.
    torch.manual_seed(1)
    rope = ropekit.RotaryEmbedding(config("llama3"))

    def fn(q: torch.Tensor, k: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        return rope(q, k, offset=offset)

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for s, offset in ((5, 0), (12, 3), (40, 100)):
        q = torch.randn(2, 4, s, HEAD_DIM).bfloat16()
        k = torch.randn(2, 2, s, HEAD_DIM).bfloat16()
        got, want = compiled(q, k, offset), fn(q, k, offset)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == torch.bfloat16
            torch.testing.assert_close(g.float(), w.float(), **TOL[torch.bfloat16])


def test_examples_cover_every_registered_method() -> None:
    assert set(EXAMPLES) >= set(SCALINGS), sorted(set(SCALINGS) - set(EXAMPLES))
    for name in SCALINGS:
        fields = {f.name for f in dataclasses.fields(SCALINGS[name])}
        assert set(EXAMPLES[name]) <= fields, name
