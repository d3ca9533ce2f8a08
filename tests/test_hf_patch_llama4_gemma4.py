"""``ropekit.hf.patch`` on Llama 4 (text decoder and vision tower, complex tables) and
Gemma 4 (text decoder with per-layer-type head dims, vision encoder with block RoPE; the
Gemma 4 part is at the end of the file).

Models: tiny random ones built from config classes (no downloads), seeded, in eval mode:
``Llama4ForCausalLM`` (4 layers, the last a NoPE layer with the query temperature,
chunked attention of 4 tokens, llama3-scaled RoPE), ``Llama4VisionModel`` (a 4 x 4 patch
grid: the model's table is square and fixed by ``image_size``, and its pixel shuffle
needs a square grid, so a non-square image is not possible) and
``Llama4ForConditionalGeneration`` (both, with the image's 4 shuffled tokens in the
text). transformers 5.24's ``Llama4ForConditionalGeneration.forward`` fails at its end
(``outputs.image_outputs`` on the text model's output), so the composite is run through
its own pieces: ``get_image_features``, ``multi_modal_projector``, ``language_model``.

Oracles:

* float32: the unpatched model. Only the tables differ (float32 angles in transformers,
  ``|angle| * 2**-24`` at positions < 20), measured maxima in ``MEASURED``, tolerance
  ``ATOL = 1e-5``.
* float64: a float64 copy of the model whose rotary modules are the float64 formulas
  written below (Llama 3 frequency scaling, the vision grid ``(col + 1, row + 1)`` with
  the CLS token at angle 0; plain loops, not ropekit code) and whose rotations are a
  float64 complex product (transformers' cast to float32).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import transformers
from torch import nn
from transformers.models.llama4 import modeling_llama4 as ml

import ropekit.hf.dropins as dropins
import ropekit.hf.patching as rt
from ropekit import RopeValueError
from ropekit.frequencies import Llama4Temperature
from ropekit.hf import is_patched, patch, patched, unpatch
from tests.conftest import (
    assert_float64_exact,
    assert_same_objects,
    assert_untouched,
    count_dropin_rotations,
    module_objects,
)

transformers.logging.set_verbosity_error()

F64 = torch.float64
ATOL = 1e-5
IMG, BOI, EOI = 260, 255, 256
ROPE = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # fmt: skip
TEXT = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, intermediate_size=64, intermediate_size_mlp=128, vocab_size=300,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, num_local_experts=2,
            num_experts_per_tok=1, interleave_moe_layer_step=2, no_rope_layers=[1, 1, 1, 0],
            attention_chunk_size=4, floor_scale=4, attn_scale=0.1, attn_temperature_tuning=True,
            rope_parameters=ROPE, max_position_embeddings=128)  # fmt: skip
VISION = dict(hidden_size=64, num_attention_heads=4, image_size=32, patch_size=8,
              num_hidden_layers=2, intermediate_size=256, vision_output_dim=64,
              projector_input_dim=64, projector_output_dim=64, pixel_shuffle_ratio=0.5)  # fmt: skip
SIDE = 4  # 32 / 8 patches per side
FAMILIES = ("llama4", "llama4_text", "llama4_vision_model")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------------------------------
# Models and inputs.


def build(fam: str, seed: int = 0, **text: Any) -> nn.Module:
    torch.manual_seed(seed)
    if fam == "llama4_text":
        return transformers.Llama4ForCausalLM(transformers.Llama4TextConfig(**{**TEXT, **text})).eval()
    if fam == "llama4_vision_model":
        return transformers.Llama4VisionModel(transformers.Llama4VisionConfig(**VISION)).eval()
    cfg = transformers.Llama4Config(text_config={**TEXT, **text}, vision_config=VISION,
                                    image_token_index=IMG, boi_token_index=BOI,
                                    eoi_token_index=EOI)  # fmt: skip
    return transformers.Llama4ForConditionalGeneration(cfg).eval()


def inputs(fam: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, 3, 32, 32, generator=g, dtype=dtype)
    if fam == "llama4_vision_model":
        return dict(pixel_values=pixels)
    # 14 tokens: past floor_scale=4 three times (the temperature steps) and 3 chunks of 4
    ids = torch.randint(3, 250, (1, 14), generator=g)
    if fam == "llama4":
        ids[0, 2], ids[0, 3:7], ids[0, 7] = BOI, IMG, EOI
        return dict(input_ids=ids, pixel_values=pixels)
    return dict(input_ids=ids)


def output(model: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        if "pixel_values" in x and "input_ids" in x:  # the composite, through its pieces
            feats = model.get_image_features(pixel_values=x["pixel_values"], return_dict=True)
            flat = feats.last_hidden_state.reshape(-1, feats.last_hidden_state.shape[-1])
            emb = model.get_input_embeddings()(x["input_ids"]).clone()
            emb[x["input_ids"] == IMG] = model.multi_modal_projector(flat).to(emb.dtype)
            return model.language_model(inputs_embeds=emb).logits
        out = model(**x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


# Rotations per forward: 3 RoPE text layers (the 4th is NoPE), 2 vision layers.
LAYERS = {"llama4": 5, "llama4_text": 3, "llama4_vision_model": 2}

# Measured max |patched - unpatched| of the float32 outputs (transformers 5.24, CPU).
MEASURED = {"llama4": 4e-7, "llama4_text": 2e-7, "llama4_vision_model": 4e-9}


# ---------------------------------------------------------------------------------------
# float32 parity.


def test_llama4_types_are_registered() -> None:
    tested = {build(f).config.model_type for f in FAMILIES}
    assert tested == {"llama4", "llama4_text", "llama4_vision_model"}
    assert tested <= set(rt.FAMILY_MODEL_TYPES) and tested <= set(rt.SUPPORTED_MODEL_TYPES)


def test_every_family_type_is_tested() -> None:
    from tests.test_hf_patch_vlm import FAMILIES as VLM
    from tests.test_hf_patch_vlm import build as build_vlm

    composite = {"gemma4"}  # test_gemma4_composite_patches_both_towers
    tested = {build_vlm(f).config.model_type for f in VLM} | set(FAMILIES) | set(G4) | composite
    assert tested == set(rt.FAMILY_MODEL_TYPES)


@pytest.mark.parametrize("fam", FAMILIES)
def test_outputs_match_unpatched(fam: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = build(fam), inputs(fam)
    want = output(model, x)
    patch(model)
    calls = count_dropin_rotations(monkeypatch)
    got = output(model, x)
    assert calls == [True] * LAYERS[fam]  # every RoPE layer, once, interleaved pairs
    err = float((got - want).abs().max())
    assert err <= ATOL, err
    assert err <= 10 * MEASURED[fam], err
    unpatch(model)
    assert torch.equal(output(model, x), want)


def test_tables_are_ropekits_in_the_models_format() -> None:
    model = build("llama4")
    hf_text = model.language_model.model.rotary_emb(torch.zeros(1), torch.arange(14)[None])
    hf_vision = model.vision_model.rotary_embedding(torch.zeros(1))
    patch(model)
    text = model.language_model.model.rotary_emb
    vision = model.vision_model.rotary_embedding
    assert isinstance(text, dropins.ComplexTables) and isinstance(vision, dropins.VisionComplexTables)
    ours = text(torch.zeros(1), torch.arange(14)[None])
    assert ours.dtype == hf_text.dtype == torch.complex64 and ours.shape == hf_text.shape
    assert float((ours - hf_text).abs().max()) < 1e-5
    v = vision(torch.zeros(1))
    assert v.dtype == hf_vision.dtype and v.shape == hf_vision.shape == (SIDE * SIDE + 1, 1, 8)
    assert bool((v[-1] == 1).all())  # the CLS token (appended last): angle 0
    assert vision(torch.zeros(1, dtype=F64)).dtype == torch.complex128


def test_nope_layer_is_not_rotated_and_keeps_its_temperature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The NoPE layer (no_rope_layers[3] == 0) is left unrotated by the patched model, and
    its query temperature 1 + attn_scale ln(1 + floor((m + 1) / floor_scale)) stays: it
    is computed by the attention code the patch keeps (checked here against ropekit's
    Llama4Temperature, s(m) = 1 + beta ln(1 + floor(m / L)), at m + 1)."""
    captured: list[torch.Tensor] = []
    real = ml.eager_attention_forward

    def capture(module: nn.Module, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        captured.append(query)
        return real(module, query, *args, **kwargs)

    monkeypatch.setattr(ml, "eager_attention_forward", capture)  # before patch: it copies
    model = build("llama4_text")
    model.config._attn_implementation = "eager"
    patch(model)
    layers = model.model.layers
    assert [bool(layer.self_attn.use_rope) for layer in layers] == [True, True, True, False]
    hidden: list[torch.Tensor] = []
    layers[3].self_attn.register_forward_pre_hook(
        lambda m, a, kw: hidden.append(kw["hidden_states"] if "hidden_states" in kw else a[0]),
        with_kwargs=True)  # fmt: skip
    output(model, inputs("llama4_text"))
    assert len(captured) == 4 and len(hidden) == 1
    with torch.no_grad():
        q = layers[3].self_attn.q_proj(hidden[0]).view(1, 14, -1, 16).transpose(1, 2)
    scale = Llama4Temperature(0.1, 4).scale(torch.arange(14) + 1)  # [s], float64
    want = q.to(F64) * scale.view(1, 1, 14, 1)
    assert float((captured[3].to(F64) - want).abs().max()) < 1e-6
    assert float(scale.max()) > 1.1  # the temperature is active at these positions


def test_greedy_generation_identical() -> None:
    model, x = build("llama4_text"), inputs("llama4_text")
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = model.generate(**x, **kw)
        with patched(model):
            got = model.generate(**x, **kw)
    assert torch.equal(got, want)
    assert got.shape[1] == x["input_ids"].shape[1] + 4


# ---------------------------------------------------------------------------------------
# float64: patched vs an independent float64 oracle.


def llama3_inv(d: int, p: dict[str, Any]) -> list[float]:
    """Llama 3 scaling: long wavelengths divided by factor, short kept, smooth between."""
    out = []
    for k in range(d // 2):
        f = 1.0 / p["rope_theta"] ** (2 * k / d)
        wavelen = 2 * math.pi / f
        low = p["original_max_position_embeddings"] / p["low_freq_factor"]
        high = p["original_max_position_embeddings"] / p["high_freq_factor"]
        if wavelen < high:
            out.append(f)
        elif wavelen > low:
            out.append(f / p["factor"])
        else:
            t = (p["original_max_position_embeddings"] / wavelen - p["low_freq_factor"]) / (
                p["high_freq_factor"] - p["low_freq_factor"])  # fmt: skip
            out.append((1 - t) * f / p["factor"] + t * f)
    return out


class TextOracle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.freq = torch.tensor(llama3_inv(16, ROPE), dtype=F64)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        angle = position_ids.to(F64)[..., None] * self.freq
        return torch.complex(angle.cos(), angle.sin())


class VisionOracle(nn.Module):
    """Patch r at (x, y) = (r % side + 1, r // side + 1): x on pairs [0, n/2), y on the
    rest, each at theta**(-4k/d); the CLS row last, at angle 0."""

    def __init__(self) -> None:
        super().__init__()
        f = [1.0 / 10000.0 ** (4 * k / 16) for k in range(4)]
        rows = [[(r % SIDE + 1) * fk for fk in f] + [(r // SIDE + 1) * fk for fk in f]
                for r in range(SIDE * SIDE)] + [[0.0] * 8]  # fmt: skip
        self.angle = torch.tensor(rows, dtype=F64).unsqueeze(1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.complex(self.angle.cos(), self.angle.sin())


def rotate64(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """float64 interleaved rotation: (x0, x1) -> (x0 c - x1 s, x1 c + x0 s) per pair."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), -1).flatten(-2)


def text_rotation64(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor) -> Any:
    c, s = freqs_cis.real.unsqueeze(2), freqs_cis.imag.unsqueeze(2)
    return rotate64(xq, c, s), rotate64(xk, c, s)


def vision_rotation64(query: torch.Tensor, key: torch.Tensor, freqs_ci: torch.Tensor) -> Any:
    c, s = freqs_ci.real.view(-1, 1, 8), freqs_ci.imag.view(-1, 1, 8)
    return rotate64(query, c, s), rotate64(key, c, s)


def with_oracle(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, ml.Llama4TextRotaryEmbedding):
                setattr(parent, name, TextOracle())
            elif isinstance(child, ml.Llama4VisionRotaryEmbedding):
                setattr(parent, name, VisionOracle())
    return model


@pytest.mark.parametrize("fam", FAMILIES)
def test_float64_patched_matches_float64_oracle(fam: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base = build(fam).double()
    x = inputs(fam, F64)
    oracle = with_oracle(copy.deepcopy(base))
    unpatched_err_model = output(base, x)  # transformers' own float32 tables and rotation
    monkeypatch.setattr(ml, "apply_rotary_emb", text_rotation64)
    monkeypatch.setattr(ml, "vision_apply_rotary_emb", vision_rotation64)
    want = output(oracle, x)
    assert_float64_exact(output(patch(copy.deepcopy(base)), x), want, unpatched_err_model)


# ---------------------------------------------------------------------------------------
# unpatch, refusals.


def test_unpatch_restores_objects_and_forward() -> None:
    model = build("llama4")
    before = module_objects(model)
    patch(model)
    assert is_patched(model)
    assert sum(type(m).__module__ == "ropekit.hf.dropins" for m in model.modules()) == 2
    unpatch(model)
    assert not is_patched(model)
    assert_same_objects(model, before)


def test_patch_twice_refused() -> None:
    model = patch(build("llama4_text"))
    with pytest.raises(RopeValueError, match="already patched"):
        patch(model)
    unpatch(model)
    with pytest.raises(RopeValueError, match="not patched"):
        unpatch(model)


def test_misread_frequencies_refused_before_any_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """If ropekit read the config differently (here: the llama3 scaling dropped), the
    table check refuses before anything changes, also in the composite."""
    import ropekit.hf.families as fams
    from ropekit import RopeConfig

    model = build("llama4")
    monkeypatch.setattr(fams, "from_hf", lambda cfg, **kw: RopeConfig(head_dim=16, theta=5e5,
                                                                      interleaved=True))  # fmt: skip
    assert_untouched(model, lambda: patch(model), "tables differ")


def test_half_split_reading_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import ropekit.hf.families as fams
    from ropekit import RopeConfig

    model = build("llama4_text")
    monkeypatch.setattr(fams, "from_hf", lambda cfg, **kw: RopeConfig(head_dim=16, theta=5e5))
    assert_untouched(model, lambda: patch(model), "interleaved=False")


def test_foreign_rotation_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("llama4")

    def half_split(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor) -> Any:
        n = xq.shape[-1] // 2  # pairs (i, i + n): not Llama 4's (2i, 2i + 1)
        c, s = freqs_cis.real.unsqueeze(2), freqs_cis.imag.unsqueeze(2)

        def rot(x: torch.Tensor) -> torch.Tensor:
            a, b = x[..., :n], x[..., n:]
            return torch.cat((a * c - b * s, b * c + a * s), -1)

        return rot(xq), rot(xk)

    monkeypatch.setattr(ml, "apply_rotary_emb", half_split)
    assert_untouched(model, lambda: patch(model), "apply_rotary_emb differs")


def test_scaled_vision_rope_refused() -> None:
    model = build("llama4_vision_model")
    model.config.rope_parameters = {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
    assert_untouched(model, lambda: patch(model), "rope_type='linear'")


def test_dropins_reject_foreign_tables() -> None:
    model = patch(build("llama4_text"))
    attn = model.model.layers[0].self_attn
    bad = torch.ones(1, 3, 4, dtype=torch.complex64)  # 4 pairs, the model rotates 8
    with pytest.raises(RopeValueError, match="rotates n=8 pairs"):
        attn(torch.zeros(1, 3, 64), position_embeddings=bad, attention_mask=None)
    with pytest.raises(RopeValueError, match="complex table"):
        attn(torch.zeros(1, 3, 64), position_embeddings=torch.ones(1, 3, 8), attention_mask=None)


# =======================================================================================
# Gemma 4: text decoder (per layer type: local head dim 16, global 32 with proportional
# RoPE on a quarter of its lanes) and vision encoder (2-D RoPE as one rotate_half block per
# axis, on a non-square 4 x 6 patch grid, pooled 2 x 2 into 6 soft tokens).

from transformers.models.gemma4 import modeling_gemma4 as mg  # noqa: E402

G4_TEXT = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
               head_dim=16, global_head_dim=32, intermediate_size=128, vocab_size=300,
               vocab_size_per_layer_input=300, hidden_size_per_layer_input=8, sliding_window=4,
               layer_types=["sliding_attention", "sliding_attention", "full_attention"],
               max_position_embeddings=128)  # fmt: skip
G4_VISION = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                 intermediate_size=128, num_hidden_layers=2, patch_size=4, pooling_kernel_size=2)  # fmt: skip
G4 = ("gemma4_text", "gemma4_vision")
G4_LAYERS = {"gemma4_text": 6, "gemma4_vision": 4}  # one call per tensor: q and k per layer
# Measured max |patched - unpatched| / max |unpatched| (float32; the vision pooler scales
# by sqrt(hidden) = 8, so its absolute differences are ~50x the text's).
G4_MEASURED = {"gemma4_text": 1.3e-6, "gemma4_vision": 1.7e-7}


def g4_build(fam: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if fam == "gemma4_text":
        return transformers.Gemma4ForCausalLM(transformers.Gemma4TextConfig(**G4_TEXT)).eval()
    return transformers.Gemma4VisionModel(transformers.Gemma4VisionConfig(**G4_VISION)).eval()


def g4_inputs(fam: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    if fam == "gemma4_text":
        return dict(input_ids=torch.randint(3, 250, (1, 12), generator=g))
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")  # 4 rows, 6 cols
    pos = torch.stack([xs.flatten(), ys.flatten()], -1)[None]  # [1, 24, 2] (x, y)
    return dict(pixel_values=torch.rand(1, 24, 48, generator=g, dtype=dtype), pixel_position_ids=pos)


def g4_output(model: nn.Module, x: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_gemma4_types_are_registered() -> None:
    tested = {g4_build(f).config.model_type for f in G4}
    assert tested == set(G4) and tested <= set(rt.FAMILY_MODEL_TYPES)


@pytest.mark.parametrize("fam", G4)
def test_gemma4_outputs_match_unpatched(fam: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = g4_build(fam), g4_inputs(fam)
    want = g4_output(model, x)
    patch(model)
    calls = count_dropin_rotations(monkeypatch, "apply_rope")
    got = g4_output(model, x)
    assert len(calls) == G4_LAYERS[fam]
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel <= ATOL, rel
    assert rel <= 10 * G4_MEASURED[fam], rel
    unpatch(model)
    assert torch.equal(g4_output(model, x), want)


def test_gemma4_text_tables_per_layer_type() -> None:
    model = patch(g4_build("gemma4_text"))
    tables = model.model.rotary_emb
    assert isinstance(tables, dropins.LayerTables) and tables.n_pairs == (8, 16)
    cos, sin = tables(torch.zeros(1), torch.arange(5)[None], "full_attention")
    assert cos.shape == (1, 5, 32)
    # proportional RoPE: 4 of the 16 pairs rotate (theta**(-2j/32)), the rest have angle 0
    assert bool((cos[..., 4:16] == 1).all()) and bool((sin[..., 4:16] == 0).all())
    assert float(sin[0, 1, 0]) == pytest.approx(math.sin(1.0), abs=1e-7)


def test_gemma4_greedy_generation_identical() -> None:
    model, x = g4_build("gemma4_text"), g4_inputs("gemma4_text")
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = model.generate(**x, **kw)
        with patched(model):
            got = model.generate(**x, **kw)
    assert torch.equal(got, want)
    assert got.shape[1] == x["input_ids"].shape[1] + 4


class G4TextOracle(nn.Module):
    """float64 per layer type: local theta**(-2j/16); global (proportional) the first
    4 of 16 pairs at 1e6**(-2j/32), the other 12 at angle 0."""

    def __init__(self) -> None:
        super().__init__()
        self.freq = {"sliding_attention": [1e4 ** (-2 * j / 16) for j in range(8)],
                     "full_attention": [1e6 ** (-2 * j / 32) if j < 4 else 0.0 for j in range(16)]}  # fmt: skip

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str) -> Any:
        angle = position_ids.to(F64)[..., None] * torch.tensor(self.freq[layer_type], dtype=F64)
        angle = torch.cat((angle, angle), -1)
        return angle.cos(), angle.sin()


class G4VisionOracle(nn.Module):
    """float64: lanes [h block | w block] of 8 each, h block = [cos(y f), cos(y f)] with
    f = 100**(-4k/16) (k < 4), likewise w with x; ids are (x, y)."""

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> Any:
        f = torch.tensor([100.0 ** (-4 * k / 16) for k in range(4)], dtype=F64)
        pos = position_ids.to(F64)
        ax, ay = pos[..., 0:1] * f, pos[..., 1:2] * f
        angle = torch.cat((ax, ax, ay, ay), -1)
        return angle.cos(), angle.sin()


@pytest.mark.parametrize("fam", G4)
def test_gemma4_float64_patched_matches_float64_oracle(fam: str) -> None:
    base = g4_build(fam).double()
    x = g4_inputs(fam, F64)
    oracle = copy.deepcopy(base)
    for parent in list(oracle.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, mg.Gemma4TextRotaryEmbedding):
                setattr(parent, name, G4TextOracle())
            elif isinstance(child, mg.Gemma4VisionRotaryEmbedding):
                setattr(parent, name, G4VisionOracle())
    want = g4_output(oracle, x)
    assert_float64_exact(g4_output(patch(copy.deepcopy(base)), x), want, g4_output(base, x))


def test_gemma4_unpatch_restores_objects() -> None:
    model = g4_build("gemma4_vision")
    before = module_objects(model)
    patch(model)
    assert isinstance(model.encoder.rotary_emb, dropins.AxesTables)
    unpatch(model)
    assert_same_objects(model, before)


def test_gemma4_misread_vision_theta_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misread theta (1e4, the text's, instead of the vision's 100) is caught by the table
    check, before anything changes."""
    import ropekit.hf.families as fams

    model = g4_build("gemma4_vision")
    real = fams.preset
    monkeypatch.setattr(fams, "preset", lambda name, **kw: real(name, **{**kw, "theta": 1e4}))
    assert_untouched(model, lambda: patch(model), "tables differ")


def test_gemma4_foreign_text_rotation_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = g4_build("gemma4_text")
    monkeypatch.setattr(mg, "apply_rotary_pos_emb",
                        lambda x, cos, sin, unsqueeze_dim=1: x * cos.unsqueeze(unsqueeze_dim))  # fmt: skip
    assert_untouched(model, lambda: patch(model), "apply_rotary_pos_emb differs")


def test_gemma4_length_dependent_layer_rope_refused() -> None:
    model = g4_build("gemma4_text")
    model.config.rope_parameters["full_attention"] = {"rope_type": "dynamic", "rope_theta": 1e6,
                                                      "factor": 2.0}  # fmt: skip
    assert_untouched(model, lambda: patch(model), "length-dependent")


def test_gemma4_composite_patches_both_towers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gemma4`` (text + vision, no audio): both rotary modules swapped, every rotation
    ropekit's, outputs as unpatched within the float32 bounds measured per tower."""
    torch.manual_seed(0)
    config = transformers.Gemma4Config(text_config=G4_TEXT, vision_config=G4_VISION, audio_config=None)
    model = transformers.Gemma4ForConditionalGeneration(config).eval()
    assert model.config.model_type in rt.FAMILY_MODEL_TYPES
    ids = g4_inputs("gemma4_text")["input_ids"]
    pixels = g4_inputs("gemma4_vision")

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return model(input_ids=ids).logits, model.model.vision_tower(**pixels).last_hidden_state

    want_text, want_vision = run()
    patch(model)
    swapped = [type(m).__name__ for m in model.modules() if type(m).__module__ == dropins.__name__]
    assert len(swapped) == 2, swapped  # the text tables per layer type, the vision grid tables
    calls = count_dropin_rotations(monkeypatch, "apply_rope")
    got_text, got_vision = run()
    assert len(calls) == G4_LAYERS["gemma4_text"] + G4_LAYERS["gemma4_vision"]
    for got, want, fam in ((got_text, want_text, "gemma4_text"), (got_vision, want_vision, "gemma4_vision")):
        rel = float((got - want).abs().max() / want.abs().max())
        assert rel <= 10 * G4_MEASURED[fam], (fam, rel)
    unpatch(model)
    again = run()
    assert torch.equal(again[0], want_text) and torch.equal(again[1], want_vision)
