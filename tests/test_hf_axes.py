"""``ropekit.hf.axes_from_hf``: Qwen-VL configs read as N-axis RoPE, against the rotary
modules transformers builds from the same configs; malformed values refused."""

from __future__ import annotations

import copy
from importlib import import_module

import pytest
import torch

from ropekit import RopeValueError
from ropekit.axes import cos_sin
from ropekit.hf import axes_from_hf, from_hf, mrope_settings

transformers = pytest.importorskip("transformers")
from transformers import CONFIG_MAPPING  # noqa: E402

F64 = torch.float64
TEXT_ROTARY = {
    "qwen2_vl": ("qwen2_vl", "Qwen2VLRotaryEmbedding"),
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen2_5_VLRotaryEmbedding"),
    "qwen3_vl": ("qwen3_vl", "Qwen3VLTextRotaryEmbedding"),
}
VISION_ROTARY = {
    "qwen2_vl": ("qwen2_vl", "Qwen2VLVisionRotaryEmbedding"),
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen2_5_VLVisionRotaryEmbedding"),
    "qwen3_vl": ("qwen3_vl", "Qwen3VLVisionRotaryEmbedding"),
}


def small(model_type: str, section: list[int] | None):
    cfg = CONFIG_MAPPING[model_type]().to_dict()
    text = cfg["text_config"]
    text.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    if section is not None:
        text["rope_parameters"]["mrope_section"] = section
    vision = cfg["vision_config"]
    vision.update(hidden_size=64, embed_dim=64, num_heads=4)
    return cfg


@pytest.mark.parametrize("model_type, section", [("qwen2_vl", [2, 3, 3]), ("qwen2_5_vl", [4, 2, 2]),
                                                 ("qwen3_vl", [4, 2, 2])])  # fmt: skip
def test_text_and_vision_tables_equal_transformers_modules(model_type, section) -> None:
    d = small(model_type, section)
    obj = CONFIG_MAPPING[model_type].from_dict(copy.deepcopy(d))
    for source in (d, obj, obj.text_config):
        cfg = axes_from_hf(source)
        pos = torch.randint(0, 300, (1, 9, 3))
        c, s = cos_sin(cfg, pos, dtype=F64)
        mod, name = TEXT_ROTARY[model_type]
        hf = getattr(import_module(f"transformers.models.{mod}.modeling_{mod}"), name)(obj.text_config)
        hc, hs = hf(torch.zeros(1), pos.permute(2, 0, 1))
        assert (hc[..., :8].to(F64) - c).abs().max() < 1e-4
        assert (hs[..., :8].to(F64) - s).abs().max() < 1e-4
    vcfg = axes_from_hf(d, part="vision")
    pos = torch.randint(0, 40, (11, 2))
    mod, name = VISION_ROTARY[model_type]
    vision_cls = getattr(import_module(f"transformers.models.{mod}.modeling_{mod}"), name)
    hc, _ = vision_cls(obj.vision_config)(torch.zeros(1), pos)
    c, _ = cos_sin(vcfg, pos, dtype=F64)
    assert (hc[:, :8].to(F64) - c).abs().max() < 1e-5
    assert vcfg == axes_from_hf(obj.vision_config, part="vision")


def test_defaults_follow_the_modeling_code() -> None:
    # no mrope_section in the config: the rotary modules' fallbacks
    q2 = axes_from_hf(CONFIG_MAPPING["qwen2_vl"]())
    assert [q2.axis.count(a) for a in range(3)] == [16, 24, 24] and q2.pairing == "half"
    q3 = axes_from_hf(CONFIG_MAPPING["qwen3_vl"]())
    assert [q3.axis.count(a) for a in range(3)] == [24, 20, 20] and q3.axis[1:3] == (1, 2)
    assert mrope_settings(CONFIG_MAPPING["qwen2_5_vl"]()) == {
        "spatial_merge_size": 2, "tokens_per_second": 4.0, "split_video_frames": False}
    assert mrope_settings(CONFIG_MAPPING["qwen3_vl"]())["split_video_frames"] is True
    # from_hf stays 1-D and says where to go
    with pytest.raises(RopeValueError, match="axes_from_hf"):
        from_hf(CONFIG_MAPPING["qwen2_vl"]().to_diff_dict())


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda t: t["rope_parameters"].update(mrope_section=[2, 3, 4]), r"mrope_section=\[2, 3, 4\].*8"),
        (lambda t: t["rope_parameters"].update(mrope_section="16,24,24"), "mrope_section='16,24,24'"),
        (lambda t: t["rope_parameters"].update(mrope_section=[2.0, 3, 3]), r"mrope_section=\[2.0"),
        (lambda t: t["rope_parameters"].update(mrope_interleaved=True), "mrope_interleaved=True"),
        (lambda t: t["rope_parameters"].update(mrope_interleaved="yes"), "mrope_interleaved='yes'"),
        (lambda t: t["rope_parameters"].update(rope_type="yarn", factor=2.0), "not supported yet"),
    ],
)
def test_malformed_text_values_are_refused(change, needle) -> None:
    d = small("qwen2_vl", [2, 3, 3])
    change(d["text_config"])
    with pytest.raises(RopeValueError, match=needle):
        axes_from_hf(d)


def test_other_refusals() -> None:
    with pytest.raises(RopeValueError, match="model_type='llama'"):
        axes_from_hf({"model_type": "llama"})
    with pytest.raises(RopeValueError, match="part='audio'"):
        axes_from_hf(CONFIG_MAPPING["qwen2_vl"](), part="audio")
    d = small("qwen3_vl", [4, 2, 2])
    d["text_config"]["rope_parameters"]["mrope_interleaved"] = False
    with pytest.raises(RopeValueError, match="always"):
        axes_from_hf(d)
