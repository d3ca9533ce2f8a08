"""``ropekit.hf.patch`` on vision-language, vision and per-layer-type RoPE families.

Models: tiny random ones built from config classes (no downloads), seeded, in eval mode:
Qwen2-VL, Qwen2.5-VL, Qwen3-VL (``...ForConditionalGeneration``: text decoder with M-RoPE
and a vision tower with axial 2-D RoPE), Pixtral's vision encoder, DINOv3's ViT and
Gemma 3's text decoder (local/global RoPE per layer type).

Inputs for the Qwen-VL families: text, an image of a non-square ``1 x 4 x 6`` patch grid
(6 merged tokens), text, a video of ``2 x 4 x 4`` patches (8 merged tokens; Qwen3-VL
splits it into frames with a timestamp token between them), text. ``pixel_values`` rows
are ``C * temporal_patch * patch**2 = 24`` features per patch, as the vision towers read
them. The position ids are the models' own (``get_rope_index``).

Oracles:

* float32: the unpatched model (its own float32 tables and rotation). Both compute the
  same rotation, so only the tables differ, by the float32 angle error of transformers
  (``|angle| * 2**-24`` at these positions < 40: a few 1e-6 at most), which two layers of
  O(1) gain turn into logit differences of a few 1e-7 (measured maxima are in
  ``MEASURED``; the tolerance ``ATOL = 1e-5`` is 10-100 times that, while shuffling the
  positions changes the outputs by far more, checked by ``test_positions_matter``).
* float64: a float64 copy of the model whose rotary modules are the float64 formulas
  written below (per band: the axis it reads, ``theta ** (-2j / d)``; plain loops, not
  ropekit code) and whose vision rotation is a float64 ``rotate_half`` (transformers'
  casts to float32). The patched float64 model agrees with it to ~1e-15, the unpatched
  one only to its float32 tables' error (~1e-7).
"""

from __future__ import annotations

import copy
import importlib
import math
from typing import Any

import pytest
import torch
import transformers
from torch import nn

import ropekit.hf.patching as rt
from ropekit import RopeValueError
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
IMG, VID, VSTART = 100, 101, 102
TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=128, pad_token_id=0, bos_token_id=1,
            eos_token_id=2)  # fmt: skip
SECTIONS = {"qwen2_vl": [2, 3, 3], "qwen2_5_vl": [2, 3, 3], "qwen3_vl": [4, 2, 2]}
QWEN = tuple(SECTIONS)
FAMILIES = (*QWEN, "pixtral", "dinov3_vit", "gemma3_text", "gemma3")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------------------------------
# Models and inputs.


def qwen_config(fam: str) -> Any:
    text = dict(TEXT, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                     "mrope_section": SECTIONS[fam]})  # fmt: skip
    common = dict(patch_size=2, temporal_patch_size=2, spatial_merge_size=2, in_channels=3)
    if fam == "qwen2_vl":
        vision = dict(common, embed_dim=32, num_heads=2, depth=2, hidden_size=64, mlp_ratio=2)
        cls = transformers.Qwen2VLConfig
    elif fam == "qwen2_5_vl":
        # window 8 px = 2 merged tokens: the 4x6 image is cut into windows (the tables are
        # permuted with the tokens), block 1 attends fully
        vision = dict(common, hidden_size=32, out_hidden_size=64, num_heads=2, depth=2,
                      intermediate_size=64, window_size=8, fullatt_block_indexes=[1],
                      tokens_per_second=2)  # fmt: skip
        cls = transformers.Qwen2_5_VLConfig
    else:
        vision = dict(common, hidden_size=32, out_hidden_size=64, num_heads=2, depth=2,
                      intermediate_size=64, num_position_embeddings=16,
                      deepstack_visual_indexes=[0])  # fmt: skip
        cls = transformers.Qwen3VLConfig
    return cls(text_config=text, vision_config=vision, image_token_id=IMG, video_token_id=VID,
               vision_start_token_id=VSTART)  # fmt: skip


def build(fam: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if fam in QWEN:
        cls = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
               "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
               "qwen3_vl": transformers.Qwen3VLForConditionalGeneration}[fam]  # fmt: skip
        return cls(qwen_config(fam)).eval()
    if fam == "pixtral":
        cfg = transformers.PixtralVisionConfig(hidden_size=64, num_attention_heads=4, head_dim=16,
                                               intermediate_size=128, num_hidden_layers=2,
                                               image_size=32, patch_size=4)  # fmt: skip
        return transformers.PixtralVisionModel(cfg).eval()
    if fam == "dinov3_vit":
        cfg = transformers.DINOv3ViTConfig(hidden_size=64, num_attention_heads=4,
                                           intermediate_size=128, num_hidden_layers=2,
                                           patch_size=4, num_register_tokens=2, image_size=32)  # fmt: skip
        return transformers.DINOv3ViTModel(cfg).eval()
    if fam == "gemma3_text":
        cfg = transformers.Gemma3TextConfig(
            **dict(TEXT, num_hidden_layers=3), head_dim=16, sliding_window=4,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                             "full_attention": {"rope_type": "linear", "rope_theta": 1e6,
                                                "factor": 8.0}},
        )  # fmt: skip
        return transformers.Gemma3ForCausalLM(cfg).eval()
    if fam == "gemma3":  # the composite: SigLIP vision (no RoPE) + Gemma 3 text
        text = dict(TEXT, vocab_size=300, head_dim=16, sliding_window=4)
        vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, image_size=16, patch_size=4)  # fmt: skip
        cfg = transformers.Gemma3Config(text_config=text, vision_config=vision,
                                        mm_tokens_per_image=4, image_token_index=260,
                                        boi_token_index=255, eoi_token_index=256)  # fmt: skip
        return transformers.Gemma3ForConditionalGeneration(cfg).eval()
    raise AssertionError(fam)


def qwen_inputs(fam: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    video = [2] * 4 + [0] + [2] * 4 if fam == "qwen3_vl" else [2] * 8  # Qwen3: per frame
    types = [0, 0] + [1] * 6 + [0, 0] + video + [0, 0]
    g = torch.Generator().manual_seed(1)
    tt = torch.tensor([types])
    ids = torch.randint(3, 90, tt.shape, generator=g)
    ids[tt == 1], ids[tt == 2] = IMG, VID
    out = dict(input_ids=ids, mm_token_type_ids=tt, attention_mask=torch.ones_like(ids),
               pixel_values=torch.randn(24, 24, generator=g, dtype=dtype),
               image_grid_thw=torch.tensor([[1, 4, 6]]),
               pixel_values_videos=torch.randn(32, 24, generator=g, dtype=dtype),
               video_grid_thw=torch.tensor([[2, 4, 4]]))  # fmt: skip
    if fam == "qwen2_5_vl":
        out["second_per_grid_ts"] = torch.tensor([1.0])
    return out


def inputs(fam: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    if fam in QWEN:
        return qwen_inputs(fam, dtype)
    g = torch.Generator().manual_seed(1)
    if fam in ("pixtral", "dinov3_vit"):  # a 3 x 5 patch grid (12 x 20 pixels)
        return dict(pixel_values=torch.randn(1, 3, 12, 20, generator=g, dtype=dtype))
    if fam == "gemma3":  # text, a 16 x 16 image (4 soft tokens between boi/eoi), text
        ids = torch.tensor([[1, 7, 255] + [260] * 4 + [256, 9, 11, 13]])
        return dict(input_ids=ids, pixel_values=torch.randn(1, 3, 16, 16, generator=g, dtype=dtype),
                    token_type_ids=(ids == 260).long())  # fmt: skip
    return dict(input_ids=torch.randint(3, 128, (1, 12), generator=g))


def output(model: nn.Module, kwargs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**kwargs)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def modeling(fam: str) -> Any:
    name = "gemma3" if fam == "gemma3_text" else fam
    return importlib.import_module(f"transformers.models.{name}.modeling_{name}")


# Rotations per forward: attention layers, the Qwen-VL vision tower (2 blocks) once for
# the images and once for the videos, plus 2 text layers.
LAYERS = {"qwen2_vl": 6, "qwen2_5_vl": 6, "qwen3_vl": 6, "pixtral": 2, "dinov3_vit": 2,
          "gemma3_text": 3, "gemma3": 2}  # fmt: skip

# Measured max |patched - unpatched| of the float32 outputs (transformers 5.24, CPU).
MEASURED = {"qwen2_vl": 2e-7, "qwen2_5_vl": 2e-7, "qwen3_vl": 2e-7, "pixtral": 5e-7,
            "dinov3_vit": 1e-6, "gemma3_text": 5e-7, "gemma3": 5e-7}  # fmt: skip


# ---------------------------------------------------------------------------------------
# float32 parity.


def test_family_types_are_all_tested() -> None:
    """The family types tested here; the Llama 4 ones are in test_hf_patch_llama4_gemma4
    (which checks that both files together cover FAMILY_MODEL_TYPES)."""
    tested = {build(f).config.model_type for f in FAMILIES}
    assert tested <= set(rt.FAMILY_MODEL_TYPES)
    assert set(rt.SUPPORTED_MODEL_TYPES) == set(rt.TEXT_MODEL_TYPES) | set(rt.FAMILY_MODEL_TYPES)


@pytest.mark.parametrize("fam", FAMILIES)
def test_outputs_match_unpatched(fam: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = build(fam), inputs(fam)
    want = output(model, x)
    patch(model)
    calls = count_dropin_rotations(monkeypatch)
    got = output(model, x)
    assert len(calls) == LAYERS[fam]  # every attention layer rotated by ropekit, once
    err = float((got - want).abs().max())
    assert err <= ATOL, err
    assert err <= 10 * MEASURED[fam], err  # a regression of the tables shows here
    unpatch(model)
    assert torch.equal(output(model, x), want)


@pytest.mark.parametrize("fam", FAMILIES)
def test_tables_are_ropekits(fam: str) -> None:
    model = patch(build(fam))
    swapped = [m for m in model.modules() if type(m).__module__ == "ropekit.hf.dropins"]
    assert len(swapped) == (2 if fam in QWEN else 1)
    assert not [m for m in model.modules() if type(m).__name__.endswith(("RotaryEmbedding",
                                                                          "RopePositionEmbedding"))]  # fmt: skip


@pytest.mark.parametrize("fam", QWEN)
def test_positions_matter(fam: str) -> None:
    """The tolerance separates right from wrong positions: the M-RoPE ids of the image
    and video, replaced by plain 1-D ids, move the logits by far more than ATOL."""
    model, x = patch(build(fam)), inputs(fam)
    right = output(model, x)
    seq = x["input_ids"].shape[1]
    plain = torch.arange(seq).view(1, 1, seq).expand(3, 1, seq)
    wrong = output(model, {**x, "position_ids": plain})
    assert float((wrong - right).abs().max()) > 100 * ATOL


@pytest.mark.parametrize("fam", (*QWEN, "gemma3_text", "gemma3"))
def test_greedy_generation_identical(fam: str) -> None:
    model, x = build(fam), inputs(fam)
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = model.generate(**x, **kw)
        with patched(model):
            got = model.generate(**x, **kw)
    assert torch.equal(got, want)
    assert got.shape[1] == x["input_ids"].shape[1] + 4


# ---------------------------------------------------------------------------------------
# float64: patched vs an independent float64 oracle.


def inv(dim: int, theta: float) -> list[float]:
    return [1.0 / theta ** (2 * k / dim) for k in range(dim // 2)]


def mrope_axes(n: int, section: list[int], interleaved: bool) -> list[int]:
    if interleaved:  # Qwen3-VL: h at bands 1, 4, ... (< 3 sec_h), w at 2, 5, ... (< 3 sec_w)
        return [1 if j % 3 == 1 and j < 3 * section[1] else 2 if j % 3 == 2 and j < 3 * section[2]
                else 0 for j in range(n)]  # fmt: skip
    return [i % 3 for i, c in enumerate(section) for _ in range(c)]


class MRopeOracle(nn.Module):
    """float64 M-RoPE tables: band j at the coordinate of its axis times theta**(-2j/d)."""

    def __init__(self, d: int, theta: float, section: list[int], interleaved: bool) -> None:
        super().__init__()
        self.freq, self.axis = inv(d, theta), mrope_axes(d // 2, section, interleaved)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if position_ids.ndim == 2:
            position_ids = position_ids.expand(3, -1, -1)
        pos = position_ids.to(F64)
        angle = torch.stack([pos[a] * f for a, f in zip(self.axis, self.freq, strict=True)], -1)
        angle = torch.cat((angle, angle), -1)
        return angle.cos(), angle.sin()


class AxialOracle(nn.Module):
    """float64 axial 2-D tables [h bands, w bands], each theta**(-4k/d) (Qwen-VL vision);
    Pixtral's order: h takes the even bands of theta**(-2i/d), w the odd ones."""

    def __init__(self, d: int, theta: float, pixtral: bool = False) -> None:
        super().__init__()
        if pixtral:
            f = inv(d, theta)
            self.freq = [(0, x) for x in f[0::2]] + [(1, x) for x in f[1::2]]
        else:
            f = inv(d // 2, theta)
            self.freq = [(0, x) for x in f] + [(1, x) for x in f]

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = position_ids.to(F64)
        angle = torch.stack([pos[:, a] * f for a, f in self.freq], -1)
        angle = torch.cat((angle, angle), -1)
        return angle.cos(), angle.sin()


class DinoOracle(nn.Module):
    """float64 DINOv3 tables: patch centres 2 (i + 0.5) / H - 1, [y bands, x bands] at
    2 pi theta**(-4k/d)."""

    def __init__(self, d: int, theta: float, patch: int) -> None:
        super().__init__()
        self.freq = [2 * math.pi / theta ** (4 * k / d) for k in range(d // 4)]
        self.patch = patch

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = pixel_values.shape[-2] // self.patch, pixel_values.shape[-1] // self.patch
        rows = []
        for i in range(h):
            for j in range(w):
                y, x = 2 * (i + 0.5) / h - 1, 2 * (j + 0.5) / w - 1
                rows.append([y * f for f in self.freq] + [x * f for f in self.freq])
        angle = torch.tensor(rows, dtype=F64)
        angle = torch.cat((angle, angle), -1)
        return angle.cos(), angle.sin()


class LayerOracle(nn.Module):
    """float64 per-layer-type tables: positions / factor times theta**(-2j/d)."""

    def __init__(self, d: int, params: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.freq = {t: [f / p.get("factor", 1.0) for f in inv(d, p["rope_theta"])]
                     for t, p in params.items()}  # fmt: skip

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str) -> Any:
        angle = position_ids.to(F64)[..., None] * torch.tensor(self.freq[layer_type], dtype=F64)
        angle = torch.cat((angle, angle), -1)
        return angle.cos(), angle.sin()


def rotate_half64(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Any:
    """float64 vision rotation (transformers' casts to float32): q [N, h, d], cos [N, d]."""
    def rot(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1] // 2
        return torch.cat((-x[..., n:], x[..., :n]), -1)

    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return q * c + rot(q) * s, k * c + rot(k) * s


def oracle_module(fam: str, module: nn.Module) -> nn.Module:
    name = type(module).__name__
    if fam in QWEN:
        if "Vision" in name:
            return AxialOracle(16, 10000.0)
        return MRopeOracle(16, 1e4, SECTIONS[fam], fam == "qwen3_vl")
    if fam == "pixtral":
        return AxialOracle(16, 10000.0, pixtral=True)
    if fam == "dinov3_vit":
        return DinoOracle(16, 100.0, 4)
    return LayerOracle(16, module.config.rope_parameters)


def test_dinov3_training_mode_keeps_the_models_random_positions() -> None:
    """In training mode DINOv3 augments its patch coordinates at random; the patched model
    draws the same random numbers (the family's own augmentation on its own float32
    coordinates), so with one seed both see the same positions."""
    cfg = dict(pos_embed_shift=0.1, pos_embed_jitter=1.2, pos_embed_rescale=1.5)
    model = build("dinov3_vit")
    for k, v in cfg.items():
        setattr(model.config, k, v)
    model.train()
    model.config.hidden_dropout_prob = model.config.attention_dropout = 0.0
    x = inputs("dinov3_vit")
    torch.manual_seed(5)
    want = output(model, x)
    patch(model)
    torch.manual_seed(5)
    got = output(model, x)
    assert float((got - want).abs().max()) <= ATOL
    torch.manual_seed(6)  # other draws: other positions, a visible change
    assert float((output(model, x) - want).abs().max()) > 100 * ATOL


def with_oracle(model: nn.Module, fam: str) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if type(child).__name__.endswith(("RotaryEmbedding", "RopePositionEmbedding")):
                setattr(parent, name, oracle_module(fam, child))
    return model


@pytest.mark.parametrize("fam", FAMILIES)
def test_float64_patched_matches_float64_oracle(fam: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base = build(fam).double()
    x = inputs(fam, F64)
    oracle = with_oracle(copy.deepcopy(base), fam)
    if fam in QWEN:  # transformers' vision rotation computes in float32: use float64 here
        monkeypatch.setattr(modeling(fam), "apply_rotary_pos_emb_vision", rotate_half64)
    want = output(oracle, x)
    unpatched = output(base, x)
    assert_float64_exact(output(patch(copy.deepcopy(base)), x), want, unpatched, floor=1e-10)


# ---------------------------------------------------------------------------------------
# unpatch, refusals.


@pytest.mark.parametrize("fam", ("qwen2_5_vl", "dinov3_vit"))
def test_unpatch_restores_objects_and_forward(fam: str) -> None:
    model = build(fam)
    before = module_objects(model)
    patch(model)
    assert is_patched(model)
    assert any(type(m).__module__ == "ropekit.hf.dropins" for m in model.modules())
    unpatch(model)
    assert not is_patched(model)
    assert_same_objects(model, before)


@pytest.mark.parametrize("fam", ("qwen3_vl", "pixtral"))
def test_patch_twice_refused(fam: str) -> None:
    model = patch(build(fam))
    with pytest.raises(RopeValueError, match="already patched"):
        patch(model)
    unpatch(model)
    with pytest.raises(RopeValueError, match="not patched"):
        unpatch(model)


def test_unsupported_family_types_refused() -> None:
    """A Qwen-VL text decoder on its own (``qwen2_vl_text``) is not registered."""
    model = transformers.Qwen2VLTextModel(qwen_config("qwen2_vl").text_config)
    assert_untouched(model, lambda: patch(model), "qwen2_vl_text")


def test_bare_qwen_vision_tower_refused_not_half_patched() -> None:
    """A composite family's tower alone is not a model of a supported type: refused."""
    model = build("qwen2_vl")
    tower = model.model.visual
    assert_untouched(tower, lambda: patch(tower), "is not supported")


def test_misread_section_refused_before_any_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """If ropekit read the config differently from the modeling code (here: a section
    swapped), the table check refuses before anything changes."""
    import ropekit.hf.families as fams
    from ropekit.axes import AxesConfig

    model = build("qwen2_vl")
    real = fams.axes_from_hf

    def misread(config: Any, part: str = "text") -> AxesConfig:
        if part == "text":
            return AxesConfig.sections(16, 1e4, (2, 3, 3)[::-1])
        return real(config, part=part)

    monkeypatch.setattr(fams, "axes_from_hf", misread)
    assert_untouched(model, lambda: patch(model), "tables differ")


def test_foreign_vision_rotation_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("qwen2_vl")

    def interleaved(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Any:
        return q * cos.unsqueeze(-2), k * cos.unsqueeze(-2)  # not a rotate_half rotation

    monkeypatch.setattr(modeling("qwen2_vl"), "apply_rotary_pos_emb_vision", interleaved)
    assert_untouched(model, lambda: patch(model), "apply_rotary_pos_emb_vision differs")


def test_scaled_mrope_refused() -> None:
    cfg = qwen_config("qwen2_vl")
    cfg.text_config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4,
                                       "mrope_section": [2, 3, 3]}  # fmt: skip
    model = transformers.Qwen2VLForConditionalGeneration(cfg)
    assert_untouched(model, lambda: patch(model), "not supported yet for M-RoPE")


def test_gemma3_length_dependent_layer_rope_refused() -> None:
    model = build("gemma3_text")
    model.model.rotary_emb.config.rope_parameters["full_attention"] = {
        "rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}  # fmt: skip
    model.config.rope_parameters = model.model.rotary_emb.config.rope_parameters
    assert_untouched(model, lambda: patch(model), "length-dependent")


def test_vision_dropin_rejects_foreign_tables() -> None:
    model = patch(build("qwen2_vl"))
    attn = model.model.visual.blocks[0].attn
    bad = torch.ones(6, 8)  # 4 pairs, the tower rotates 8
    with pytest.raises(RopeValueError, match="rotates n=8 pairs"):
        attn(torch.zeros(6, 32), cu_seqlens=torch.tensor([0, 6]), position_embeddings=(bad, bad))
