"""The Llama-style model: against a naive float64 re-implementation, KV-cache decoding
against full forward passes, RoPE's relative-position invariance, config validation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ropekit import RopeValueError, spec
from ropekit.scaling import SCALINGS
from ropekit_lab.model import KVCache, ModelConfig, Transformer, generate

SMALL = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)


def make_model(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**SMALL, **overrides})).to(dtype)
    # Random norm gains too, so a wrong RMSNorm weight handling cannot hide behind ones.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def naive_forward(
    model: Transformer, tokens: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """The model written out from the formulas, loops over heads, float64, no ropekit fast
    paths: rotation by ropekit.spec's explicit matrices."""
    cfg = model.config
    d, hq, hk = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    freqs, factor = cfg.rope_config().frequencies(None)

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * w

    def rot(x: torch.Tensor) -> torch.Tensor:  # [s, d]
        return spec.apply(x, positions, freqs) * factor

    s = tokens.shape[0]
    x = model.tok_embeddings.weight.double()[tokens]
    causal = torch.tril(torch.ones(s, s, dtype=torch.bool))
    for layer in model.layers:
        a = layer.attention
        h = rms(x, layer.attention_norm.weight.double())
        q = h @ a.wq.weight.double().T
        k = h @ a.wk.weight.double().T
        v = h @ a.wv.weight.double().T
        heads = []
        for i in range(hq):
            j = i // (hq // hk)  # the key/value head query head i reads
            qi = rot(q[:, i * d : (i + 1) * d])
            kj = rot(k[:, j * d : (j + 1) * d])
            scores = (qi @ kj.T) / math.sqrt(d)
            scores = scores.masked_fill(~causal, float("-inf"))
            heads.append(torch.softmax(scores, -1) @ v[:, j * d : (j + 1) * d])
        x = x + torch.cat(heads, -1) @ a.wo.weight.double().T
        f = layer.feed_forward
        h = rms(x, layer.ffn_norm.weight.double())
        g = h @ f.w1.weight.double().T
        x = x + ((g * torch.sigmoid(g)) * (h @ f.w3.weight.double().T)) @ f.w2.weight.double().T
    return rms(x, model.norm.weight.double()) @ model.output.weight.double().T


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_forward_matches_naive_formulas(kv_heads: int) -> None:
    model = make_model(n_kv_heads=kv_heads)
    tokens = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    before = tokens.clone()
    logits = model(tokens)
    assert logits.shape == (2, 11, 256)
    assert torch.equal(tokens, before)
    for b in range(2):
        want = naive_forward(model, tokens[b], torch.arange(11))
        torch.testing.assert_close(logits[b], want, rtol=1e-10, atol=1e-10)


def test_forward_with_scaling_matches_naive_formulas() -> None:
    # YaRN has an attention factor != 1 folded into cos/sin: it must scale q and k.
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    model = make_model(rope_scaling=yarn)
    tokens = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(2))
    want = naive_forward(model, tokens[0], torch.arange(40))
    torch.testing.assert_close(model(tokens)[0], want, rtol=1e-10, atol=1e-10)


def test_shifted_positions_change_nothing() -> None:
    # RoPE scores depend on m - n only, and nothing else in the model sees positions.
    model = make_model()
    tokens = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(3))
    plain = model(tokens)
    shifted = model(tokens, positions=torch.arange(9) + 1000)
    torch.testing.assert_close(shifted, plain, rtol=1e-9, atol=1e-9)
    # ... whereas scrambled positions do change the output (the test can fail).
    scrambled = model(tokens, positions=torch.tensor([0, 5, 1, 7, 2, 8, 3, 6, 4]))
    assert (scrambled - plain).abs().max() > 1e-5  # vs 1e-9 above: a real change


@pytest.mark.parametrize(
    "scaling",
    [None, {"rope_type": "linear", "factor": 2.0}, {"rope_type": "llama3", "factor": 4.0,
     "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16}],
)  # fmt: skip
def test_kv_cache_decoding_equals_full_forward(scaling) -> None:
    model = make_model(rope_scaling=scaling)
    tokens = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(4))
    full = model(tokens)
    cache = KVCache(model.config.n_layers)
    # prefill 7, a chunk of 4 (a mask offset by the cache), then one token at a time
    parts = [model(tokens[:, :7], cache=cache), model(tokens[:, 7:11], cache=cache)]
    parts += [model(tokens[:, i : i + 1], cache=cache) for i in range(11, 23)]
    assert cache.length == 23
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-10, atol=1e-10)


def test_kv_cache_decoding_float32() -> None:
    model = make_model(dtype=torch.float32)
    tokens = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(5))
    full = model(tokens)
    cache = KVCache(model.config.n_layers)
    steps = [model(tokens[:, :1], cache=cache)] + [
        model(tokens[:, i : i + 1], cache=cache) for i in range(1, 20)
    ]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_generate_greedy_equals_recomputing_from_scratch() -> None:
    model = make_model()
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(6))
    out = generate(model, prompt, 8)
    assert out.shape == (2, 13) and torch.equal(out[:, :5], prompt)
    seq = prompt
    for _ in range(8):  # no cache: full forward each step
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_generate_sampling_is_seeded_and_respects_top_k() -> None:
    model = make_model()
    prompt = torch.zeros(1, 3, dtype=torch.long)
    a = generate(
        model, prompt, 6, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(a, generate(model, prompt, 6))  # top_k=1 is greedy
    b = generate(model, prompt, 20, temperature=2.0, generator=torch.Generator().manual_seed(7))
    c = generate(model, prompt, 20, temperature=2.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(b, c)


def test_set_rope_scaling_changes_positions_only() -> None:
    model = make_model()
    tokens = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(8))
    params = {k: v.clone() for k, v in model.state_dict().items()}
    plain = model(tokens)
    plain16 = model(tokens[:, :16])
    # Causal: a prefix's outputs do not depend on later tokens. Not bit for bit, though:
    # the matmuls of a 16-token and a 48-token run are blocked differently (it depends on
    # the CPU: equal on Intel Sapphire Rapids, 5.6e-17 apart on AMD EPYC Zen 4).
    torch.testing.assert_close(plain16, plain[:, :16], rtol=1e-12, atol=1e-12)
    # Dynamic NTK is plain RoPE up to max_position (16): the same tables, so a run of the
    # same length (the same matmul shapes) is identical bit for bit.
    model.set_rope_scaling(SCALINGS["dynamic"](factor=1.0, max_position=16))
    torch.testing.assert_close(model(tokens[:, :16]), plain16, rtol=0, atol=0)
    assert (model(tokens) - plain).abs().max() > 1e-4  # beyond 16 it does change
    model.set_rope_scaling(SCALINGS["linear"](factor=2.0))
    assert model.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    # PI with factor 2 at positions 2m equals plain RoPE at positions m.
    torch.testing.assert_close(
        model(tokens[:, :8], positions=2 * torch.arange(8)),
        model.set_rope_scaling(None)(tokens[:, :8]),
        rtol=1e-10,
        atol=1e-10,
    )
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k])
    with pytest.raises(RopeValueError, match="Scaling"):
        model.set_rope_scaling({"rope_type": "linear"})  # type: ignore[arg-type]


def test_gradients_reach_every_parameter() -> None:
    model = make_model(dtype=torch.float32).train()
    tokens = torch.randint(0, 256, (2, 10))
    loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bf16_forward_is_close_to_float32() -> None:
    model = make_model(dtype=torch.float32)
    tokens = torch.randint(0, 256, (1, 12))
    ref = model(tokens)
    low = model.to(torch.bfloat16)(tokens).float()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_config_roundtrip_through_json() -> None:
    cfg = ModelConfig(**SMALL, rope_scaling={"rope_type": "linear", "factor": 3.0})
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.rope_config().inv_freq()[0] == pytest.approx(1 / 3)
    assert ModelConfig(dim=128).hidden_dim == 352  # 8/3 * 128 = 341.3, next multiple of 32


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"dim": 30, "n_heads": 4}, "multiple of n_heads"),
        ({"dim": 12, "n_heads": 4}, "even head dim"),
        ({"n_kv_heads": 3}, "divisor of n_heads"),
        ({"n_layers": 0}, "n_layers"),
        ({"norm_eps": -1.0}, "norm_eps"),
        ({"rope_scaling": {"rope_type": "nope"}}, "rope_type"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 0.5}}, "factor"),
    ],
)
def test_bad_config_is_rejected(overrides, match) -> None:
    with pytest.raises(RopeValueError, match=match):
        ModelConfig(**{**SMALL, **overrides})
    with pytest.raises(RopeValueError, match="unknown model config"):
        ModelConfig.from_dict({**SMALL, "n_experts": 8})


def test_bad_tokens_are_rejected() -> None:
    model = make_model()
    with pytest.raises(RopeValueError, match="int64"):
        model(torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(RopeValueError, match=r"\[b, s\]"):
        model(torch.zeros(3, dtype=torch.long))
