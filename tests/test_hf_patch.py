"""``ropekit.hf.patch`` (module ``ropekit.hf.patching``): patched Hugging Face models.

Oracles: the *unpatched* transformers model (its own tables and rotation), and, for long
positions, a float64 copy of it whose rotary module is the 5-line float64 formula below.
Tiny random models are built from config classes (no downloads), seeded, in eval mode.

Tolerance for float32 logits (``ATOL``/``RTOL``): the patched and unpatched models differ
only in the cos/sin tables (the rotation arithmetic ``a*c - b*s`` is the same). At the
positions used here (< 32), transformers' float32 angle ``m * inv_freq`` is off by at most
``m * 2**-23 <= 4e-6`` rad, so q and k move by at most that relative amount; through two
layers of O(1) gain and logits of size ~1 that bounds the logit difference by ~1e-5. The
measured maximum over all families below is 3e-7, while reversing the positions changes
the logits by 8e-4 (Gemma) to 0.27 (OLMo 2); ``test_logits_match_unpatched`` checks that
this change exceeds 10 * ATOL, so the tolerance separates right from wrong positions.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import subprocess
import sys
from typing import Any

import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import ropekit.hf.patching as rt
from ropekit import RopeConfig, RopeValueError
from ropekit.hf import (
    RotaryTables,
    UnsupportedModelError,
    from_hf,
    is_patched,
    patch,
    patched,
    unpatch,
)

transformers.logging.set_verbosity_error()

ATOL = 1e-5
RTOL = 1e-5

TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
N_PAIRS_LONGROPE = 8  # head_dim 16, full rotary


@dataclasses.dataclass(frozen=True)
class Case:
    config: str  # transformers config class name
    model: str  # transformers model class name
    extra: tuple[tuple[str, Any], ...] = ()
    # RoPE methods whose tables depend on the call's length: keep left-padded rows on
    # one side of the switch (both transformers and ropekit pick one table set per call).
    length_dependent: bool = False

    def hf_config(self) -> Any:
        kwargs = {**TINY, **dict(self.extra)}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return getattr(transformers, self.config)(**kwargs)

    def build(self, seed: int = 0) -> nn.Module:
        config = self.hf_config()
        torch.manual_seed(seed)
        return getattr(transformers, self.model)(config).eval()


CASES: dict[str, Case] = {
    "llama": Case("LlamaConfig", "LlamaForCausalLM"),
    "llama-llama3": Case(
        "LlamaConfig",
        "LlamaForCausalLM",
        (
            ("max_position_embeddings", 64),
            (
                "rope_parameters",
                {
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 16,
                },
            ),
        ),
    ),
    "llama-yarn": Case(
        "LlamaConfig",
        "LlamaForCausalLM",
        (
            ("max_position_embeddings", 64),
            (
                "rope_parameters",
                {
                    "rope_type": "yarn",
                    "rope_theta": 10000.0,
                    "factor": 4.0,
                    "original_max_position_embeddings": 16,
                },
            ),
        ),
    ),
    "llama-linear": Case(
        "LlamaConfig",
        "LlamaForCausalLM",
        (("rope_parameters", {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),),
    ),
    # max_position_embeddings 16 < the 20 tokens of the generation test: the tables grow.
    "llama-dynamic": Case(
        "LlamaConfig",
        "LlamaForCausalLM",
        (
            ("max_position_embeddings", 16),
            ("rope_parameters", {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
        ),
        length_dependent=True,
    ),
    "mistral": Case("MistralConfig", "MistralForCausalLM"),
    # Ministral 3: YaRN plus Llama 4's query temperature 1 + beta ln(1 + floor(m / 8)),
    # which transformers' attention applies after the (patched) rotation; positions of
    # these tests reach 20, so it takes three values.
    "ministral3": Case(
        "Ministral3Config",
        "Ministral3ForCausalLM",
        (
            ("head_dim", 16),
            ("max_position_embeddings", 64),
            (
                "rope_parameters",
                {
                    "rope_type": "yarn",
                    "rope_theta": 1000000.0,
                    "factor": 8.0,
                    "original_max_position_embeddings": 8,
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                    "mscale": 1.0,
                    "mscale_all_dim": 1.0,
                    "llama_4_scaling_beta": 0.1,
                },
            ),
        ),
    ),
    "qwen2": Case("Qwen2Config", "Qwen2ForCausalLM"),  # q/k/v biases
    "qwen3": Case("Qwen3Config", "Qwen3ForCausalLM", (("head_dim", 16),)),  # q/k norms
    "phi3": Case("Phi3Config", "Phi3ForCausalLM"),
    # Phi-3 LongRoPE: short factors up to 16 positions, long ones beyond; the generation
    # test crosses over mid-way.
    "phi3-longrope": Case(
        "Phi3Config",
        "Phi3ForCausalLM",
        (
            ("max_position_embeddings", 64),
            ("original_max_position_embeddings", 16),
            (
                "rope_parameters",
                {
                    "rope_type": "longrope",
                    "rope_theta": 10000.0,
                    "short_factor": [1.0 + 0.1 * i for i in range(N_PAIRS_LONGROPE)],
                    "long_factor": [1.0 + 0.5 * i for i in range(N_PAIRS_LONGROPE)],
                },
            ),
        ),
        length_dependent=True,
    ),
    # GPT-NeoX: legacy rotary_pct/rotary_emb_base, a quarter of each head rotated, MHA.
    "gpt_neox": Case(
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        (("num_key_value_heads", None), ("rotary_pct", 0.25), ("rotary_emb_base", 5000.0)),
    ),
    "gemma": Case("GemmaConfig", "GemmaForCausalLM", (("head_dim", 16),)),
    "granite": Case("GraniteConfig", "GraniteForCausalLM"),
    "olmo2": Case("Olmo2Config", "Olmo2ForCausalLM"),
    "starcoder2": Case("Starcoder2Config", "Starcoder2ForCausalLM"),
    "phi": Case("PhiConfig", "PhiForCausalLM"),  # partial rotary 0.5, rotated outside apply
    "stablelm": Case("StableLmConfig", "StableLmForCausalLM"),  # partial rotary 0.25
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tokens(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randint(
        3, TINY["vocab_size"], shape, generator=torch.Generator().manual_seed(seed)
    )


def count_rotations(monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """Record every tensor rotated by ropekit for patched attention layers (q and k of
    each call of the argument checker, which the patch's ``apply_rotary_pos_emb`` calls
    before the backend)."""
    calls: list[torch.Size] = []
    real = rt.check_call

    def counting(xs: Any, names: Any, cos: torch.Tensor, sin: torch.Tensor, **kwargs: Any) -> Any:
        calls.extend(x.shape for x in xs)
        return real(xs, names, cos, sin, **kwargs)

    monkeypatch.setattr(rt, "check_call", counting)
    return calls


def modeling_module(model: nn.Module) -> Any:
    return rt._modeling_module(model.config.model_type)


def greedy(model: nn.Module, ids: torch.Tensor, new: int = 10, **kwargs: Any) -> Any:
    return model.generate(
        ids,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        **kwargs,
    )


def test_importing_does_not_import_transformers() -> None:
    code = (
        "import sys, ropekit, ropekit.hf\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_supported_types_are_all_tested() -> None:
    tested = {case.hf_config().model_type for case in CASES.values()}
    assert tested == set(rt.TEXT_MODEL_TYPES)


# ---------------------------------------------------------------------------------------
# Parity with the unpatched model.


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_unpatched(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = CASES[name].build()
    ids = tokens((2, 20))
    with torch.no_grad():
        want = model(ids).logits
        patch(model)
        calls = count_rotations(monkeypatch)
        got = model(ids).logits
        # q and k of every layer went through ropekit, and the tables are ropekit's.
        assert len(calls) == 2 * model.config.num_hidden_layers
        # RoPE sees only relative positions; reversing them changes every distance.
        reversed_ = model(ids, position_ids=torch.arange(19, -1, -1)[None]).logits
    assert sum(isinstance(m, RotaryTables) for m in model.modules()) == 1
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    assert (reversed_ - want).abs().max() > 10 * ATOL  # the tolerance tells positions apart


@pytest.mark.parametrize("name", list(CASES))
def test_generation_with_kv_cache(name: str) -> None:
    """Greedy decoding, 8 prompt tokens + 10 new ones, with and without the KV cache."""
    model = CASES[name].build()
    prompt = tokens((1, 8))
    with torch.no_grad():
        want = greedy(model, prompt)
        want_no_cache = greedy(model, prompt, use_cache=False)
        patch(model)
        got = greedy(model, prompt)
        got_no_cache = greedy(model, prompt, use_cache=False)
    for ours, theirs in ((got, want), (got_no_cache, want_no_cache)):
        assert torch.equal(ours.sequences, theirs.sequences)
        torch.testing.assert_close(
            torch.stack(ours.logits), torch.stack(theirs.logits), atol=ATOL, rtol=RTOL
        )
    if not CASES[name].length_dependent:
        # Keys rotated once and cached = keys re-rotated at every step. (Not for methods
        # whose frequencies change with the length: there cached keys keep older ones, in
        # transformers and ropekit alike; transformers >= 5.2x re-encodes Phi-3's cache
        # when LongRoPE switches, 5.17 does not.)
        torch.testing.assert_close(
            torch.stack(got.logits), torch.stack(got_no_cache.logits), atol=ATOL, rtol=RTOL
        )


def left_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), TINY["pad_token_id"], dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.length_dependent])
def test_left_padded_batch_matches_single_rows(name: str) -> None:
    model = patch(CASES[name].build())
    rows = [tokens((n,), seed=n) for n in (5, 9, 3)]
    ids, mask = left_padded(rows)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() computes them
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, position_ids=positions).logits
        batch_gen = greedy(model, ids, new=6, attention_mask=mask)
        for i, row in enumerate(rows):
            single = model(row[None]).logits[0]
            torch.testing.assert_close(batch[i, -len(row) :], single, atol=ATOL, rtol=RTOL)
            single_gen = greedy(model, row[None], new=6)
            assert torch.equal(
                batch_gen.sequences[i, ids.shape[1] :], single_gen.sequences[0, len(row) :]
            )
            torch.testing.assert_close(
                torch.stack([step[i] for step in batch_gen.logits]),
                torch.stack([step[0] for step in single_gen.logits]),
                atol=ATOL,
                rtol=RTOL,
            )


def test_length_dependent_tables_have_no_history() -> None:
    """Dynamic NTK: ropekit's tables depend on the call only; transformers' remember."""
    # 16 < 30 < 40: transformers keeps its 40-position tables (it resets below 16 only).
    short, long = tokens((1, 30)), tokens((1, 40), seed=2)
    fresh = CASES["llama-dynamic"].build()
    used = CASES["llama-dynamic"].build()
    with torch.no_grad():
        hf_fresh = fresh(short).logits
        used(long)  # grows transformers' cached tables to 40 positions
        hf_used = used(short).logits
        patch(fresh)
        patch(used)
        ours_fresh, ours_used = fresh(short).logits, used(short).logits
    assert (hf_used - hf_fresh).abs().max() > 10 * ATOL  # transformers' history (5e-4)
    assert torch.equal(ours_used, ours_fresh)
    torch.testing.assert_close(ours_fresh, hf_fresh, atol=ATOL, rtol=RTOL)


# ---------------------------------------------------------------------------------------
# Precision: long positions and low-precision models.


def float64_tables(
    positions: torch.Tensor, rotary_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: the RoPE formula evaluated in float64, in Hugging Face's [..., 2n] layout."""
    inv_freq = torch.tensor(
        [theta ** (-2 * i / rotary_dim) for i in range(rotary_dim // 2)], dtype=torch.float64
    )
    angle = positions.to(torch.float64)[..., None] * inv_freq
    angle = torch.cat((angle, angle), dim=-1)
    return torch.cos(angle), torch.sin(angle)


class Float64Rotary(nn.Module):
    def __init__(self, rotary_dim: int, theta: float) -> None:
        super().__init__()
        self.rotary_dim, self.theta = rotary_dim, theta

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cos, sin = float64_tables(position_ids, self.rotary_dim, self.theta)
        return cos.to(x.dtype), sin.to(x.dtype)


def test_tables_at_long_positions_are_exact() -> None:
    # Llama 3 geometry: head_dim 128, theta 5e5.
    config = transformers.LlamaConfig(
        hidden_size=1024,
        num_attention_heads=8,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )
    hf = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    ours = RotaryTables(from_hf(config))
    positions = torch.tensor([[100_000, 123_457, 500_001, 999_999, 1_000_000]])
    x = torch.zeros(1, dtype=torch.float32)
    want_cos, want_sin = float64_tables(positions, 128, 500000.0)
    hf_cos, hf_sin = hf(x, positions)
    cos, sin = ours(x, positions)
    assert cos.dtype == sin.dtype == torch.float32
    ours_err = max(float((cos - want_cos).abs().max()), float((sin - want_sin).abs().max()))
    hf_err = max(float((hf_cos - want_cos).abs().max()), float((hf_sin - want_sin).abs().max()))
    assert ours_err <= 2**-24  # one float32 rounding of a value in [-1, 1]
    assert hf_err > 1e-3  # measured 0.031: float32 angles of ~1e6 rad
    assert hf_err > 1e4 * ours_err


def test_logits_at_long_positions_closer_to_float64() -> None:
    model = CASES["llama"].build()
    truth_model = copy.deepcopy(model).double()
    truth_model.model.rotary_emb = Float64Rotary(16, 10000.0)
    ids = tokens((1, 16))
    positions = 999_000 + torch.arange(16)[None]
    with torch.no_grad():
        truth = truth_model(ids, position_ids=positions).logits
        hf = model(ids, position_ids=positions).logits
        with patched(model):
            ours = model(ids, position_ids=positions).logits
    hf_err = float((hf.double() - truth).abs().max())
    ours_err = float((ours.double() - truth).abs().max())
    assert ours_err < ATOL  # as good as at short positions (measured 1.6e-7)
    assert hf_err > 10 * ours_err  # measured 1.4e-4 vs 1.6e-7


def test_bfloat16_model_keeps_exact_tables_and_dtype() -> None:
    model = CASES["llama"].build().to(torch.bfloat16)
    # model.to(bfloat16) rounded transformers' inv_freq buffer to 8 significant bits.
    assert model.model.rotary_emb.inv_freq.dtype == torch.bfloat16
    patch(model)
    positions = torch.arange(4000, 4008)[None]
    cos, _ = model.model.rotary_emb(torch.zeros(1, dtype=torch.bfloat16), positions)
    want, _ = float64_tables(positions, 16, 10000.0)
    assert cos.dtype == torch.float32  # the rotation runs in float32 and rounds once
    assert float((cos - want).abs().max()) <= 2**-24
    ids = tokens((1, 8))
    with torch.no_grad():
        out = model(ids, use_cache=True)
    assert out.logits.dtype == torch.bfloat16
    # q and k leave the rotation in bfloat16: no silent promotion into the cache.
    assert out.past_key_values.layers[0].keys.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------
# Scope, reversibility, copies, compile.


def test_unpatch_restores_objects_and_outputs() -> None:
    model = CASES["phi3-longrope"].build()
    modeling = modeling_module(model)
    apply_before = modeling.apply_rotary_pos_emb
    rotary_before = model.model.rotary_emb
    attn = [layer.self_attn for layer in model.model.layers]
    ids = tokens((2, 24))  # past the 16 short-factor positions
    with torch.no_grad():
        before = model(ids).logits
        patch(model)
        assert is_patched(model)
        assert all("forward" in a.__dict__ for a in attn)
        assert modeling.apply_rotary_pos_emb is apply_before  # nothing global changes
        model(ids)
        unpatch(model)
        after = model(ids).logits
    assert not is_patched(model)
    assert model.model.rotary_emb is rotary_before
    assert all("forward" not in a.__dict__ for a in attn)
    assert modeling.apply_rotary_pos_emb is apply_before
    assert torch.equal(after, before)


def test_unpatched_model_of_same_family_is_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    patched_model, plain = CASES["llama"].build(), CASES["llama"].build(seed=1)
    ids = tokens((1, 10))
    with torch.no_grad():
        before = plain(ids).logits
        patch(patched_model)
        calls = count_rotations(monkeypatch)
        during = plain(ids).logits
        patched_model(ids)
    assert torch.equal(during, before)
    assert len(calls) == 2 * patched_model.config.num_hidden_layers  # only the patched one


def test_deepcopy_of_patched_model_is_patched_and_independent() -> None:
    model = patch(CASES["qwen2"].build())
    twin = copy.deepcopy(model)
    assert is_patched(twin)
    assert isinstance(twin.model.rotary_emb, RotaryTables)
    assert twin.model.layers[0].self_attn.forward.__self__ is twin.model.layers[0].self_attn
    ids = tokens((1, 10))
    with torch.no_grad():
        want = model(ids).logits
        unpatch(model)
        assert is_patched(twin)
        assert torch.equal(twin(ids).logits, want)
        unpatch(twin)
    assert type(twin.model.rotary_emb).__name__ == "Qwen2RotaryEmbedding"
    assert twin.model.rotary_emb is not model.model.rotary_emb


def test_context_manager_unpatches_on_error() -> None:
    model = CASES["mistral"].build()
    with pytest.raises(RuntimeError, match="boom"), patched(model):
        assert is_patched(model)
        raise RuntimeError("boom")
    assert not is_patched(model)


def test_torch_compile_fullgraph_uses_ropekit(monkeypatch: pytest.MonkeyPatch) -> None:
    model = patch(CASES["llama"].build())
    ids = tokens((2, 12))
    calls = count_rotations(monkeypatch)
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, backend="eager", fullgraph=True)(ids).logits
    # eager call + compiled call (dynamo replays the traced side effect)
    assert len(calls) == 2 * (2 * model.config.num_hidden_layers)
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Errors.


def test_patch_twice_and_unpatch_unpatched_raise() -> None:
    model = CASES["llama"].build()
    with pytest.raises(RopeValueError, match="not patched"):
        unpatch(model)
    patch(model)
    with pytest.raises(RopeValueError, match="already patched") as info:
        patch(model)
    assert not isinstance(info.value, UnsupportedModelError)
    assert is_patched(model)


def test_unsupported_model_type() -> None:
    config = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=128)
    with pytest.raises(UnsupportedModelError, match="model_type='gpt2'"):
        patch(transformers.GPT2LMHeadModel(config))
    with pytest.raises(UnsupportedModelError, match="expected a transformers model"):
        patch("llama")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedModelError, match="model_type=None"):
        patch(nn.Linear(2, 2))


@pytest.mark.parametrize("version", ["4.46.0", "6.0.0", "5.0.0.dev0", "not-a-version"])
def test_unsupported_transformers_version(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = CASES["llama"].build()
    monkeypatch.setattr(rt, "_installed_transformers_version", lambda: version)
    with pytest.raises(UnsupportedModelError, match=f"transformers=={version} is not supported"):
        patch(model)
    assert not is_patched(model)


def test_supported_transformers_versions() -> None:
    assert rt.check_transformers_version() == transformers.__version__
    assert rt.check_transformers_version("5.0.0") == "5.0.0"
    assert rt.check_transformers_version("5.99.1") == "5.99.1"


def test_config_that_ropekit_reads_differently_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = CASES["gpt_neox"].build()
    rotary = model.gpt_neox.rotary_emb
    real = rt.from_hf

    def wrong_theta(config: Any, **kwargs: Any) -> RopeConfig:
        rope = real(config, **kwargs)
        return rope.replace(theta=rope.theta * (1 + 1e-4))

    monkeypatch.setattr(rt, "from_hf", wrong_theta)
    with pytest.raises(UnsupportedModelError, match="does not reproduce transformers"):
        patch(model)
    assert not is_patched(model) and model.gpt_neox.rotary_emb is rotary
    assert "forward" not in model.gpt_neox.layers[0].attention.__dict__


def test_unsupported_rope_configuration() -> None:
    model = CASES["phi3-longrope"].build()
    # transformers accepts this (factor = 64 / 4096 < 1) and ignores it; ropekit refuses.
    model.config.original_max_position_embeddings = 4096
    with pytest.raises(UnsupportedModelError, match="cannot express this model's RoPE"):
        patch(model)
    assert not is_patched(model)


def test_foreign_rotation_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformers whose apply_rotary_pos_emb pairs lanes differently is refused."""
    model = CASES["mistral"].build()
    modeling = modeling_module(model)
    original = modeling.apply_rotary_pos_emb

    def interleaved(q, k, cos, sin, unsqueeze_dim=1):  # type: ignore[no-untyped-def]
        perm = torch.arange(q.shape[-1]).view(2, -1).t().reshape(-1)  # (i, i+n) -> (2i, 2i+1)
        q_rot, k_rot = original(q[..., perm], k[..., perm], cos, sin, unsqueeze_dim)
        return q_rot[..., perm], k_rot[..., perm]

    monkeypatch.setattr(modeling, "apply_rotary_pos_emb", interleaved)
    with pytest.raises(UnsupportedModelError, match="half-split rotation"):
        patch(model)
    assert not is_patched(model)


def test_rebinding_needs_functools_wraps_decorators() -> None:
    def inner() -> str:
        return "x"

    def opaque(*args: Any) -> str:  # claims to wrap `inner` but does not hold it
        return "y"

    opaque.__wrapped__ = inner  # type: ignore[attr-defined]
    with pytest.raises(UnsupportedModelError, match="closure"):
        rt._rebind_globals(opaque, {})


def test_exact_rotary_embedding_arguments() -> None:
    with pytest.raises(RopeValueError, match="interleaved=True"):
        RotaryTables(RopeConfig(head_dim=8, interleaved=True))
    with pytest.raises(RopeValueError, match=r"expected a ropekit\.RopeConfig"):
        RotaryTables("llama")  # type: ignore[arg-type]
    rope = RotaryTables(RopeConfig(head_dim=8))
    with pytest.raises(RopeValueError, match="layer_type"):
        rope(torch.zeros(1), torch.arange(3)[None], layer_type="sliding_attention")
    with pytest.raises(RopeValueError, match=r"position_ids must be a torch\.Tensor"):
        rope(torch.zeros(1), [[0, 1, 2]])  # type: ignore[arg-type]
    # [b, s] positions: each row gets its own tables (left padding, packed rows).
    positions = torch.tensor([[0, 1, 2], [7, 8, 9]])
    cos, sin = rope(torch.zeros(1, dtype=torch.float64), positions)
    want_cos, want_sin = float64_tables(positions, 8, 10000.0)
    torch.testing.assert_close(cos, want_cos, atol=1e-15, rtol=0)
    torch.testing.assert_close(sin, want_sin, atol=1e-15, rtol=0)
    assert math.isclose(float(cos[1, 0, 0]), math.cos(7.0), abs_tol=1e-15)


@given(
    n_pairs=st.integers(1, 32),
    theta=st.floats(10.0, 1e6),
    positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
)
def test_exact_rotary_embedding_matches_float64_formula(
    n_pairs: int, theta: float, positions: list[int]
) -> None:
    rope = RotaryTables(RopeConfig(head_dim=2 * n_pairs, theta=theta))
    pos = torch.tensor([positions, positions[::-1]])
    cos, sin = rope(torch.zeros(1, dtype=torch.float64), pos)
    want_cos, want_sin = float64_tables(pos, 2 * n_pairs, theta)
    # The oracle's theta**(-2i/d) and ropekit's 1/theta**(2i/d) may differ by an ulp,
    # which a position of 1e6 turns into <= 1e6 * 2**-52 rad.
    torch.testing.assert_close(cos, want_cos, atol=1e-9, rtol=0)
    torch.testing.assert_close(sin, want_sin, atol=1e-9, rtol=0)
    cos32, _ = rope(torch.zeros(1, dtype=torch.bfloat16), pos)  # float32 for half models
    assert cos32.dtype == torch.float32
    assert float((cos32.double() - want_cos).abs().max()) <= 2**-24 + 1e-9


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_kept_tables_gather_what_every_call_computes(dtype: torch.dtype) -> None:
    """CPU positions inside the kept range gather rows of the kept float32 tables; others
    compute theirs. Same values bit for bit, new tensors each call (writing to one
    changes no later call), and the float64 oracle within one float32 rounding."""
    kept = RotaryTables(RopeConfig(head_dim=16, max_position=100), kept_positions=100)
    built = RotaryTables(RopeConfig(head_dim=16, max_position=100), kept_positions=0)
    assert (kept.kept_positions, built.kept_positions) == (100, 0)
    x = torch.zeros(1, dtype=torch.bfloat16)
    cases = ([[0, 1, 2]], [[99]], [[98, 99, 100]], [[-1, 0]], [[5, 6], [40, 41]],
             [list(range(100))], [[7] * 70])  # fmt: skip
    for rows in cases:
        pos = torch.tensor(rows, dtype=dtype)
        cos, sin = kept(x, pos)
        want_cos, want_sin = built(x, pos)
        assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin), rows
        oracle_cos, oracle_sin = float64_tables(pos.long(), 16, 10000.0)
        assert float((cos.double() - oracle_cos).abs().max()) <= 2**-24 + 1e-12
        assert float((sin.double() - oracle_sin).abs().max()) <= 2**-24 + 1e-12
        cos.fill_(7.0)  # the caller's tensor: the kept tables are untouched
        assert torch.equal(kept(x, pos)[0], want_cos)


def test_kept_tables_default_and_float64_calls() -> None:
    assert RotaryTables(RopeConfig(head_dim=8)).kept_positions == 4096
    assert RotaryTables(RopeConfig(head_dim=8, max_position=131072)).kept_positions == 32768
    rope = RotaryTables(RopeConfig(head_dim=8))
    pos = torch.tensor([[3, 4]])
    cos, _ = rope(torch.zeros(1, dtype=torch.float64), pos)  # float64: computed, not kept
    assert cos.dtype == torch.float64
    torch.testing.assert_close(cos, float64_tables(pos, 8, 10000.0)[0], atol=1e-15, rtol=0)


def test_patched_attention_rejects_foreign_tables() -> None:
    model = patch(CASES["llama"].build())
    attn = model.model.layers[0].self_attn
    hidden = torch.zeros(1, 3, 64)
    bad = torch.ones(1, 3, 8)  # 4 pairs, the model rotates 8
    with pytest.raises(RopeValueError, match="rotates n=8 pairs"):
        attn(hidden, position_embeddings=(bad, bad), attention_mask=None)


def test_patch_overrides_a_kernel_hook_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' hub-kernel hook (``use_kernel_forward_from_hub("rotary_pos_emb")``,
    active only with the optional ``kernels`` package) wraps the module's
    ``apply_rotary_pos_emb``; a patched model calls ropekit's rotation whatever wrapper
    the global holds, and an unpatched model keeps calling the wrapper."""
    import functools

    model, plain = CASES["llama"].build(), CASES["llama"].build()
    modeling = modeling_module(model)
    original = modeling.apply_rotary_pos_emb
    hook_calls: list[int] = []

    @functools.wraps(original)
    def hooked(*args: Any, **kwargs: Any) -> Any:  # what a kernel wrapper looks like
        hook_calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling, "apply_rotary_pos_emb", hooked)
    patch(model)  # probes the (wrapped) family function once: the float64 rotation check
    assert hook_calls == [1]
    hook_calls.clear()
    calls = count_rotations(monkeypatch)
    ids = tokens((1, 6))
    with torch.no_grad():
        model(ids)
        assert hook_calls == [] and len(calls) == 2 * model.config.num_hidden_layers
        plain(ids)
    assert len(hook_calls) == plain.config.num_hidden_layers
