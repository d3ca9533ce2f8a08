"""``ropekit.hf.from_hf`` / ``to_hf`` and parity with transformers on real model configs.

The oracle is the installed ``transformers``: its ``ROPE_INIT_FUNCTIONS`` and the model
rotary modules (``LlamaRotaryEmbedding``, ``Phi3RotaryEmbedding``, ...), fed with the
RoPE-relevant keys of published ``config.json`` files (transformers 4.x style, as on the
Hub). For every config we check:

* the same ``RopeConfig`` from the 4.x dict, from the transformers config object, and
  from that object's 5.x ``to_dict()``;
* inverse frequencies: relative difference <= 1e-6 (transformers computes them in
  float32; ropekit in float64);
* attention factor: exactly equal;
* cos/sin of the transformers module at positions through the end of the context,
  within the error transformers' own float32 arithmetic makes (see ``_cos_sin_bound``).

Run ``python tests/test_hf_config.py`` to print the largest differences per config
(the table in docs/scaling.md).
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import math
import re
from typing import Any

import pytest
import torch
import transformers  # a pinned test dependency: missing means a broken set-up, not a skip
from hypothesis import given
from hypothesis import strategies as st

from ropekit import RopeConfig, RopeValueError
from ropekit.hf import from_hf, to_hf
from ropekit.scaling import Dynamic, LongRope, Ntk, Plain, Proportional, Yarn

# LongRoPE factors of microsoft/Phi-3.5-mini-instruct (config.json, 48 = 96 / 2 each).
PHI35_LONG = [
    1.0800000429153442, 1.1100000143051147, 1.1399999856948853, 1.340000033378601,
    1.5899999141693115, 1.600000023841858, 1.6200000047683716, 2.620000123977661,
    3.2300000190734863, 3.2300000190734863, 4.789999961853027, 7.400000095367432,
    7.700000286102295, 9.09000015258789, 12.199999809265137, 17.670000076293945,
    24.46000099182129, 28.57000160217285, 30.420001983642578, 30.840002059936523,
    32.590003967285156, 32.93000411987305, 42.320003509521484, 44.96000289916992,
    50.340003967285156, 50.45000457763672, 57.55000305175781, 57.93000411987305,
    58.21000289916992, 60.1400032043457, 62.61000442504883, 62.62000274658203,
    62.71000289916992, 63.1400032043457, 63.1400032043457, 63.77000427246094,
    63.93000411987305, 63.96000289916992, 63.970001220703125, 64.02999877929688,
    64.06999969482422, 64.08000183105469, 64.12000274658203, 64.41000366210938,
    64.4800033569336, 64.51000213623047, 64.52999877929688, 64.83999633789062,
]  # fmt: skip
PHI35_SHORT = [
    1.0, 1.0199999809265137, 1.0299999713897705, 1.0299999713897705, 1.0499999523162842,
    1.0499999523162842, 1.0499999523162842, 1.0499999523162842, 1.0499999523162842,
    1.0699999332427979, 1.0999999046325684, 1.1099998950958252, 1.1599998474121094,
    1.1599998474121094, 1.1699998378753662, 1.2899998426437378, 1.339999794960022,
    1.679999828338623, 1.7899998426437378, 1.8199998140335083, 1.8499997854232788,
    1.8799997568130493, 1.9099997282028198, 1.9399996995925903, 1.9899996519088745,
    2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346,
    2.0199997425079346, 2.0199997425079346, 2.0299997329711914, 2.0299997329711914,
    2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914,
    2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0799996852874756,
    2.0899996757507324, 2.189999580383301, 2.2199995517730713, 2.5899994373321533,
    2.729999542236328, 2.749999523162842, 2.8399994373321533,
]  # fmt: skip

_LLAMA = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32}
_LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192, "rope_type": "llama3"}  # fmt: skip
_DEEPSEEK = {
    "model_type": "deepseek_v3", "hidden_size": 7168, "num_attention_heads": 128,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "kv_lora_rank": 512, "q_lora_rank": 1536,
}  # fmt: skip

#: RoPE-relevant keys of published config.json files (4.x convention), by model.
#: ``*-shape`` entries combine a real architecture with factors from a sibling model.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "llama-2-7b": {**_LLAMA, "max_position_embeddings": 4096, "rope_theta": 10000.0,
                   "rope_scaling": None},
    "vicuna-7b-v1.5-16k": {**_LLAMA, "max_position_embeddings": 4096, "rope_theta": 10000.0,
                           "rope_scaling": {"factor": 4.0, "type": "linear"}},
    # transformers' documented recipe for dynamic NTK on Llama 2.
    "llama-2-7b-dynamic-x2": {**_LLAMA, "max_position_embeddings": 4096, "rope_theta": 10000.0,
                              "rope_scaling": {"factor": 2.0, "type": "dynamic"}},
    "llama-3-8b": {**_LLAMA, "max_position_embeddings": 8192, "rope_theta": 500000.0},
    "llama-3.1-8b": {**_LLAMA, "max_position_embeddings": 131072, "rope_theta": 500000.0,
                     "rope_scaling": _LLAMA3},
    "llama-3.2-1b": {"model_type": "llama", "hidden_size": 2048, "num_attention_heads": 32,
                     "head_dim": 64, "max_position_embeddings": 131072, "rope_theta": 500000.0,
                     "rope_scaling": {**_LLAMA3, "factor": 32.0}},
    "llama-3.2-3b": {"model_type": "llama", "hidden_size": 3072, "num_attention_heads": 24,
                     "head_dim": 128, "max_position_embeddings": 131072, "rope_theta": 500000.0,
                     "rope_scaling": {**_LLAMA3, "factor": 32.0}},
    # Llama 4 Scout's text RoPE (low_freq_factor == high_freq_factor), on Llama's module.
    "llama-4-scout-text": {"model_type": "llama", "hidden_size": 5120, "num_attention_heads": 40,
                           "head_dim": 128, "max_position_embeddings": 10485760,
                           "rope_theta": 500000.0,
                           "rope_scaling": {**_LLAMA3, "factor": 16.0, "high_freq_factor": 1.0}},
    "mistral-7b-v0.1": {"model_type": "mistral", "hidden_size": 4096, "num_attention_heads": 32,
                        "max_position_embeddings": 32768, "rope_theta": 10000.0},
    "mistral-7b-v0.3": {"model_type": "mistral", "hidden_size": 4096, "num_attention_heads": 32,
                        "max_position_embeddings": 32768, "rope_theta": 1000000.0},
    "qwen2.5-7b": {"model_type": "qwen2", "hidden_size": 3584, "num_attention_heads": 28,
                   "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                   "rope_scaling": None},
    # Qwen's documented YaRN block for 128k context.
    "qwen2.5-7b-yarn": {"model_type": "qwen2", "hidden_size": 3584, "num_attention_heads": 28,
                        "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                        "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768,
                                         "type": "yarn"}},
    "deepseek-v3": {**_DEEPSEEK, "max_position_embeddings": 163840, "rope_theta": 10000,
                    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40,
                                     "mscale": 1.0, "mscale_all_dim": 1.0,
                                     "original_max_position_embeddings": 4096,
                                     "type": "yarn"}},
    "deepseek-v2": {**_DEEPSEEK, "model_type": "deepseek_v2", "max_position_embeddings": 163840,
                    "rope_theta": 10000,
                    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40,
                                     "mscale": 0.707, "mscale_all_dim": 0.707,
                                     "original_max_position_embeddings": 4096,
                                     "type": "yarn"}},
    # Kimi K2 (DeepSeek-V3 architecture): beta_fast == beta_slow.
    "kimi-k2": {**_DEEPSEEK, "hidden_size": 7168, "num_attention_heads": 64,
                "max_position_embeddings": 131072, "rope_theta": 50000.0,
                "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0,
                                 "mscale": 1.0, "mscale_all_dim": 1.0,
                                 "original_max_position_embeddings": 4096, "type": "yarn"}},
    "gpt-oss-20b": {"model_type": "gpt_oss", "hidden_size": 2880, "num_attention_heads": 64,
                    "head_dim": 64, "max_position_embeddings": 131072, "rope_theta": 150000,
                    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                                     "original_max_position_embeddings": 4096,
                                     "rope_type": "yarn", "truncate": False}},
    "phi-3.5-mini": {"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32,
                     "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                     "rope_theta": 10000.0,
                     "rope_scaling": {"long_factor": PHI35_LONG, "short_factor": PHI35_SHORT,
                                      "type": "longrope"}},
    # Phi-4-mini's shape (head 128, partial rotary 0.75 -> 96 lanes) with Phi-3.5's factors.
    "phi-4-mini-shape": {"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 24,
                         "partial_rotary_factor": 0.75, "max_position_embeddings": 131072,
                         "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
                         "rope_scaling": {"long_factor": PHI35_LONG, "short_factor": PHI35_SHORT,
                                          "type": "longrope"}},
    "phi-2": {"model_type": "phi", "hidden_size": 2560, "num_attention_heads": 32,
              "partial_rotary_factor": 0.4, "max_position_embeddings": 2048, "rope_theta": 10000.0},
    "pythia-6.9b": {"model_type": "gpt_neox", "hidden_size": 4096, "num_attention_heads": 32,
                    "rotary_pct": 0.25, "rotary_emb_base": 10000, "max_position_embeddings": 2048},
    "gpt-neox-20b": {"model_type": "gpt_neox", "hidden_size": 6144, "num_attention_heads": 64,
                     "rotary_pct": 0.25, "rotary_emb_base": 10000,
                     "max_position_embeddings": 2048},
    "gemma-7b": {"model_type": "gemma", "hidden_size": 3072, "num_attention_heads": 16,
                 "head_dim": 256, "max_position_embeddings": 8192, "rope_theta": 10000.0},
    "gemma-3-4b": {"model_type": "gemma3_text", "hidden_size": 2560, "num_attention_heads": 8,
                   "head_dim": 256, "max_position_embeddings": 131072, "rope_theta": 1000000.0,
                   "rope_local_base_freq": 10000.0,
                   "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
    # HunYuan dense with static NTK (``dynamic`` + ``alpha``), alpha as in Hunyuan-7B.
    "hunyuan-7b-shape": {"model_type": "hunyuan_v1_dense", "hidden_size": 4096,
                         "num_attention_heads": 32, "head_dim": 128,
                         "max_position_embeddings": 32768, "rope_theta": 10000.0,
                         "rope_scaling": {"alpha": 1000.0, "factor": 1.0, "type": "dynamic"}},
    # transformers 5.x only (proportional RoPE is new there): Gemma4TextConfig's defaults.
    "gemma-4-text": {"model_type": "gemma4_text", "hidden_size": 2304, "num_attention_heads": 8,
                     "head_dim": 256, "global_head_dim": 512, "max_position_embeddings": 131072,
                     "rope_parameters": {
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "proportional",
                                            "partial_rotary_factor": 0.25,
                                            "rope_theta": 1000000.0}}},
}  # fmt: skip

#: (model, layer_type) pairs checked; layer_type only for per-layer-type RoPE.
CASES: list[tuple[str, str | None]] = [
    *[(name, None) for name in MODEL_CONFIGS if not name.startswith("gemma-")],
    ("gemma-7b", None),
    ("gemma-3-4b", "full_attention"),
    ("gemma-3-4b", "sliding_attention"),
    ("gemma-4-text", "full_attention"),
    ("gemma-4-text", "sliding_attention"),
]

#: model_type -> rotary module of transformers.
ROTARY_MODULES = {
    "llama": "llama.modeling_llama.LlamaRotaryEmbedding",
    "mistral": "mistral.modeling_mistral.MistralRotaryEmbedding",
    "qwen2": "qwen2.modeling_qwen2.Qwen2RotaryEmbedding",
    "deepseek_v3": "deepseek_v3.modeling_deepseek_v3.DeepseekV3RotaryEmbedding",
    "deepseek_v2": "deepseek_v2.modeling_deepseek_v2.DeepseekV2RotaryEmbedding",
    "gpt_oss": "gpt_oss.modeling_gpt_oss.GptOssRotaryEmbedding",
    "phi3": "phi3.modeling_phi3.Phi3RotaryEmbedding",
    "phi": "phi.modeling_phi.PhiRotaryEmbedding",
    "gpt_neox": "gpt_neox.modeling_gpt_neox.GPTNeoXRotaryEmbedding",
    "gemma": "gemma.modeling_gemma.GemmaRotaryEmbedding",
    "gemma3_text": "gemma3.modeling_gemma3.Gemma3RotaryEmbedding",
    "gemma4_text": "gemma4.modeling_gemma4.Gemma4TextRotaryEmbedding",
    "hunyuan_v1_dense": "hunyuan_v1_dense.modeling_hunyuan_v1_dense.HunYuanDenseV1RotaryEmbedding",
}


def _case_id(case: tuple[str, str | None]) -> str:
    return case[0] if case[1] is None else f"{case[0]}:{case[1]}"


@functools.cache
def hf_config(name: str) -> Any:
    """The transformers config object built from the published dict (read-only use)."""
    params = copy.deepcopy(MODEL_CONFIGS[name])
    return transformers.AutoConfig.for_model(params.pop("model_type"), **params)


def rotary_class(model_type: str) -> type:
    """transformers' rotary module class for ``model_type``."""
    path, cls_name = ROTARY_MODULES[model_type].rsplit(".", 1)
    return getattr(importlib.import_module(f"transformers.models.{path}"), cls_name)


def hf_rotary(name: str) -> torch.nn.Module:
    """A fresh transformers rotary module (fresh: dynamic/longrope modules keep state)."""
    return rotary_class(MODEL_CONFIGS[name]["model_type"])(hf_config(name))


def ours(name: str, layer_type: str | None) -> RopeConfig:
    return from_hf(copy.deepcopy(MODEL_CONFIGS[name]), layer_type=layer_type)


def hf_rope_type(name: str, layer_type: str | None) -> str:
    params = hf_config(name).rope_parameters
    return (params[layer_type] if layer_type else params)["rope_type"]


def seq_lens(config: RopeConfig) -> list[int | None]:
    """Lengths at which the tables are compared: the method's interesting ones."""
    top = config.max_position
    assert top is not None
    method = config.scaling
    if isinstance(method, Dynamic):
        return [None, top // 2, top, top + 1, 2 * top, 5 * top + 3]
    if isinstance(method, LongRope):
        omp = method.original_max_position_embeddings
        return [None, omp, omp + 1, top]
    return [None, top]


def _hf_init(name: str, layer_type: str | None, seq_len: int | None) -> tuple[torch.Tensor, float]:
    """transformers' ``(inv_freq, attention_factor)`` from its init function."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = hf_rope_type(name, layer_type)
    cfg = hf_config(name)
    kwargs = {"layer_type": layer_type} if layer_type else {}
    if rope_type == "dynamic" and cfg.rope_parameters.get("alpha"):
        # HunYuan's static NTK lives on its rotary module, not in ROPE_INIT_FUNCTIONS.
        return type(hf_rotary(name)).compute_ntk_alpha_rope_parameters(cfg)
    if rope_type == "default":
        # Per-layer configs (Gemma 4) resolve the layer's head_dim, as the module does.
        layer_cfg = cfg.per_layer_config[layer_type] if layer_type else cfg
        return type(hf_rotary(name)).compute_default_rope_parameters(layer_cfg, **kwargs)
    return ROPE_INIT_FUNCTIONS[rope_type](copy.deepcopy(cfg), None, seq_len, **kwargs)


def _hf_module_tables(
    name: str, layer_type: str | None, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``(cos [s, n], sin [s, n], inv_freq [n], attention_factor)`` of a fresh module."""
    rotary = hf_rotary(name)
    x = torch.zeros(1, dtype=torch.float32)
    args = (layer_type,) if layer_type else ()
    out = rotary(x, positions[None], *args)
    prefix = f"{layer_type}_" if layer_type else ""
    inv = getattr(rotary, f"{prefix}inv_freq")
    factor = getattr(rotary, f"{prefix}attention_scaling", None)
    if factor is None:
        factor = rotary.attention_scaling
    n = inv.numel()
    if isinstance(out, torch.Tensor) and out.is_complex():  # DeepSeek-V2: freqs_cis
        cos, sin = out.real[0], out.imag[0]
    else:
        cos, sin = out[0][0], out[1][0]
        if cos.shape[-1] == 2 * n:  # cat((freqs, freqs)): both halves must be equal
            assert torch.equal(cos[:, :n], cos[:, n:]) and torch.equal(sin[:, :n], sin[:, n:])
    return cos[:, :n].double(), sin[:, :n].double(), inv.double(), float(factor)


def positions_through(end: int) -> torch.Tensor:
    """Positions ``0 .. end - 1``: the first and last 64, and 512 spread in between."""
    spread = torch.linspace(0, end - 1, 512, dtype=torch.float64).round().long()
    edges = torch.cat([torch.arange(min(64, end)), torch.arange(max(0, end - 64), end)])
    return torch.unique(torch.cat([edges, spread]))


def _cos_sin_bound(
    positions: torch.Tensor, inv_ours: torch.Tensor, inv_hf: torch.Tensor, factor: float
) -> torch.Tensor:
    """Largest ``|hf - exact|`` transformers' float32 arithmetic can make, ``[s, n]``.

    transformers forms ``fl32(m * inv_hf)``: its angle is off by ``|m| |inv_hf - inv|``
    (frequency difference, checked separately to be <= 1e-6 relative) plus one float32
    rounding of the product (``2**-24 |m inv|``, doubled for slack); cos/sin are
    1-Lipschitz in the angle, and float32 cos, sin and the attention-factor product add
    a few ``2**-24``.
    """
    m = positions.double().abs()[:, None]
    angle_error = m * (inv_hf - inv_ours).abs() + 2**-23 * m * inv_ours
    return factor * (angle_error + 2**-21)


def parity(name: str, layer_type: str | None) -> dict[str, float]:
    """Largest differences against transformers for one case (also used by ``__main__``)."""
    config = ours(name, layer_type)
    keys = [
        "inv_freq_rel",
        "attention_abs",
        "cos_sin_abs",
        "cos_sin_abs_first64",
        "cos_sin_rel_bound",
    ]
    worst = dict.fromkeys(keys, 0.0)
    for seq_len in seq_lens(config):
        inv, factor = config.frequencies(seq_len)
        inv_hf, factor_hf = _hf_init(name, layer_type, seq_len)
        rel = ((inv - inv_hf.double()).abs() / inv.abs().clamp_min(1e-300)).max()
        worst["inv_freq_rel"] = max(worst["inv_freq_rel"], float(rel))
        worst["attention_abs"] = max(worst["attention_abs"], abs(factor - factor_hf))
        if seq_len is None:
            continue
        positions = positions_through(seq_len)
        cos_hf, sin_hf, inv_mod, factor_mod = _hf_module_tables(name, layer_type, positions)
        inv_len, factor_len = config.frequencies(seq_len)
        rel = ((inv_len - inv_mod).abs() / inv_len.abs().clamp_min(1e-300)).max()
        worst["inv_freq_rel"] = max(worst["inv_freq_rel"], float(rel))
        worst["attention_abs"] = max(worst["attention_abs"], abs(factor_len - factor_mod))
        cos, sin = config.cos_sin(positions, seq_len=seq_len, dtype=torch.float64)
        bound = _cos_sin_bound(positions, inv_len, inv_mod, factor_len)
        diff = torch.maximum((cos - cos_hf).abs(), (sin - sin_hf).abs())
        worst["cos_sin_abs"] = max(worst["cos_sin_abs"], float(diff.max()))
        first = float(diff[positions < 64].max())
        worst["cos_sin_abs_first64"] = max(worst["cos_sin_abs_first64"], first)
        worst["cos_sin_rel_bound"] = max(worst["cos_sin_rel_bound"], float((diff / bound).max()))
    return worst


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_dict_object_and_5x_dict_agree(case: tuple[str, str | None]) -> None:
    name, layer_type = case
    from_dict = ours(name, layer_type)
    from_object = from_hf(hf_config(name), layer_type=layer_type)
    from_5x = from_hf(hf_config(name).to_dict(), layer_type=layer_type)
    assert from_dict == from_object == from_5x


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_parity_with_transformers(case: tuple[str, str | None]) -> None:
    name, layer_type = case
    config = ours(name, layer_type)
    expected = hf_rope_type(name, layer_type)
    if expected == "dynamic" and hf_config(name).rope_parameters.get("alpha"):
        expected = "ntk"
    assert config.scaling.name == expected
    for seq_len in seq_lens(config):
        inv, factor = config.frequencies(seq_len)
        inv_hf, factor_hf = _hf_init(name, layer_type, seq_len)
        assert factor == factor_hf, f"attention factor at seq_len={seq_len}"
        torch.testing.assert_close(inv, inv_hf.double(), rtol=1e-6, atol=0.0)
        if seq_len is None:
            continue
        positions = positions_through(seq_len)
        cos_hf, sin_hf, inv_mod, factor_mod = _hf_module_tables(name, layer_type, positions)
        assert factor == factor_mod
        torch.testing.assert_close(inv, inv_mod, rtol=1e-6, atol=0.0)
        cos, sin = config.cos_sin(positions, seq_len=seq_len, dtype=torch.float64)
        bound = _cos_sin_bound(positions, inv, inv_mod, factor)
        assert bool(((cos - cos_hf).abs() <= bound).all()), f"cos at seq_len={seq_len}"
        assert bool(((sin - sin_hf).abs() <= bound).all()), f"sin at seq_len={seq_len}"


def test_every_method_is_covered_by_a_real_config() -> None:
    methods = {ours(name, layer_type).scaling.name for name, layer_type in CASES}
    assert methods == {"default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope",
                       "proportional"}  # fmt: skip


def test_cos_sin_bound_is_tight_enough_to_catch_a_wrong_table() -> None:
    # Phi-3.5 with the short factors where transformers uses the long ones (the classic
    # off-by-one at the switch) must fail the bound by a wide margin.
    config = ours("phi-3.5-mini", None)
    omp = config.scaling.original_max_position_embeddings
    positions = positions_through(omp + 1)
    cos_hf, _, inv_mod, factor = _hf_module_tables("phi-3.5-mini", None, positions)
    wrong_cos, _ = config.cos_sin(positions, seq_len=omp, dtype=torch.float64)
    bound = _cos_sin_bound(positions, config.inv_freq(omp + 1), inv_mod, factor)
    assert float(((wrong_cos - cos_hf).abs() / bound).max()) > 100


# ------------------------------------------------------------ parity on random parameters

_HEADS = st.sampled_from([(64, 1.0), (96, 1.0), (128, 1.0), (80, 0.4), (256, 0.25), (128, 0.75)])
_THETAS = st.sampled_from([2.5, 100.0, 10000.0, 500000.0, 1e6])


def _llama_object(head_dim: int, partial: float, theta: float, max_pos: int, rope: dict) -> Any:
    params = {"rope_theta": theta, **({"partial_rotary_factor": partial} if partial < 1 else {})}
    return transformers.LlamaConfig(
        hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
        max_position_embeddings=max_pos, rope_parameters={**rope, **params},
    )  # fmt: skip


def _check_init_parity(
    hf: Any, rope_type: str, seq_len: int | None, amplification: float = 1.0
) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = from_hf(hf)
    inv_hf, factor_hf = ROPE_INIT_FUNCTIONS[rope_type](hf, None, seq_len)
    inv, factor = config.frequencies(seq_len)
    assert factor == factor_hf
    # transformers evaluates theta ** fl32(2i / d) in float32: the rounded exponent and the
    # float32 pow (exp(e ln theta)) are each worth up to ln(theta) * 2**-24 relative (over
    # 1e-6 together when d is not a power of two, e.g. d = 96 at theta = 5e5), plus a few
    # float32 roundings of the division and the blend.
    rtol = 2**-24 * (8 + 2 * math.log(config.theta)) * amplification
    torch.testing.assert_close(inv, inv_hf.double(), rtol=rtol, atol=0.0)


@given(
    head=_HEADS, theta=_THETAS, factor=st.floats(1.0, 64.0), omp=st.sampled_from([256, 4096, 32768]),
    betas=st.sampled_from([(32.0, 1.0), (1.0, 1.0), (64.0, 0.5), (4.0, 2.0)]),
    mscale=st.sampled_from([(None, None), (1.0, 1.0), (0.707, 1.0), (1.0, None), (0.0, 1.0)]),
    attention=st.sampled_from([None, 0.8]), truncate=st.booleans(),
)  # fmt: skip
def test_yarn_parity_on_random_parameters(
    head: tuple[int, float], theta: float, factor: float, omp: int,
    betas: tuple[float, float], mscale: tuple[Any, Any], attention: Any, truncate: bool,
) -> None:  # fmt: skip
    rope = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": omp,
            "beta_fast": betas[0], "beta_slow": betas[1], "mscale": mscale[0],
            "mscale_all_dim": mscale[1], "attention_factor": attention, "truncate": truncate}  # fmt: skip
    _check_init_parity(_llama_object(*head, theta, 4 * omp, rope), "yarn", None)


@given(
    head=_HEADS, theta=_THETAS, factor=st.floats(1.0, 64.0),
    bands=st.sampled_from([(1.0, 4.0), (1.0, 1.0), (0.5, 2.0), (2.0, 8.0)]),
    omp=st.sampled_from([256, 2048, 8192]),
)  # fmt: skip
def test_llama3_parity_on_random_parameters(
    head: tuple[int, float], theta: float, factor: float, bands: tuple[float, float], omp: int
) -> None:
    rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": bands[0],
            "high_freq_factor": bands[1], "original_max_position_embeddings": omp}  # fmt: skip
    # In the blend band the weight g = (L0 / λ - low) / (high - low) comes from transformers'
    # float32 wavelength; near the low-frequency edge, where the result is ~θ / factor, an
    # error ε in g moves it by up to factor * ε relative.
    _check_init_parity(_llama_object(*head, theta, 16 * omp, rope), "llama3", None, factor)


@given(
    head=_HEADS, theta=_THETAS, factor=st.floats(1.0, 16.0), max_pos=st.sampled_from([64, 4096]),
    scale=st.floats(0.0, 20.0),
)  # fmt: skip
def test_dynamic_parity_on_random_lengths(
    head: tuple[int, float], theta: float, factor: float, max_pos: int, scale: float
) -> None:
    rope = {"rope_type": "dynamic", "factor": factor}
    hf = _llama_object(*head, theta, max_pos, rope)
    _check_init_parity(hf, "dynamic", max(1, int(scale * max_pos)))


@given(
    head=_HEADS, theta=_THETAS, omp=st.sampled_from([256, 4096]),
    factor=st.sampled_from([None, 1.0, 2.5]), offset=st.integers(-2, 2),
    data=st.data(),
)  # fmt: skip
def test_longrope_parity_around_the_switch(
    head: tuple[int, float], theta: float, omp: int, factor: Any, offset: int, data: Any
) -> None:
    n = int(head[0] * head[1]) // 2
    lists = st.lists(st.floats(0.5, 64.0), min_size=n, max_size=n)
    rope = {"rope_type": "longrope", "short_factor": data.draw(lists),
            "long_factor": data.draw(lists), "original_max_position_embeddings": omp,
            "factor": factor}  # fmt: skip
    _check_init_parity(_llama_object(*head, theta, 32 * omp, rope), "longrope", omp + offset)


# --------------------------------------------------------------------------- from_hf


def test_gpt_neox_partial_rotary_from_rotary_pct() -> None:
    config = ours("pythia-6.9b", None)
    assert (config.head_dim, config.rotary_dim, config.theta) == (128, 32, 10000.0)
    # GPTNeoXConfig's default rotary_pct is 0.25 when the key is absent.
    d = {k: v for k, v in MODEL_CONFIGS["pythia-6.9b"].items() if k != "rotary_pct"}
    assert from_hf(d).rotary_dim == 32


def test_partial_rotary_truncates_and_rotary_emb_base_is_theta() -> None:
    # 128 * 0.38 = 48.64: transformers rotates int(...) = 48 lanes; GPT-NeoX's base key.
    d = {**MODEL_CONFIGS["pythia-6.9b"], "rotary_pct": 0.38, "rotary_emb_base": 20000}
    config = from_hf(d)
    assert (config.rotary_dim, config.theta) == (48, 20000.0)
    hf = transformers.AutoConfig.for_model(**d)
    assert from_hf(hf) == config
    inv_hf, _ = rotary_class("gpt_neox").compute_default_rope_parameters(hf)
    torch.testing.assert_close(config.inv_freq(), inv_hf.double(), rtol=1e-6, atol=0.0)


def test_phi3_top_level_original_context_wins() -> None:
    d = copy.deepcopy(MODEL_CONFIGS["phi-3.5-mini"])
    d["rope_scaling"]["original_max_position_embeddings"] = 8192  # transformers ignores it
    method = from_hf(d).scaling
    assert isinstance(method, LongRope)
    assert method.original_max_position_embeddings == 4096
    assert method.factor == 131072 / 4096  # Phi-3 has no explicit factor


def test_legacy_su_and_phi3_yarn_mean_longrope(monkeypatch: pytest.MonkeyPatch) -> None:
    d = copy.deepcopy(MODEL_CONFIGS["phi-3.5-mini"])
    d["rope_scaling"]["type"] = "yarn"
    assert from_hf(d) == ours("phi-3.5-mini", None)
    # transformers 5.24's Phi3Config converts "su" but then refuses the file (it looks for
    # original_max_position_embeddings inside rope_parameters): ropekit reports that
    # rather than reading what transformers would not build.
    d["rope_scaling"]["type"] = "su"
    with pytest.raises(RopeValueError, match=r"Phi3Config.*refused it"):
        from_hf(d)
    # Without transformers both legacy names are read as transformers 4.x did.
    from ropekit.hf import models

    monkeypatch.setattr(models, "transformers_config_class", lambda model_type: None)
    for legacy in ("su", "yarn"):
        d["rope_scaling"]["type"] = legacy
        assert from_hf(d) == ours("phi-3.5-mini", None)


def test_rope_type_key_and_type_key_are_equivalent() -> None:
    d = copy.deepcopy(MODEL_CONFIGS["qwen2.5-7b-yarn"])
    d["rope_scaling"]["rope_type"] = d["rope_scaling"].pop("type")
    assert from_hf(d) == ours("qwen2.5-7b-yarn", None)


def test_multimodal_config_reads_text_config() -> None:
    d = {"model_type": "gemma3", "text_config": MODEL_CONFIGS["gemma-3-4b"], "vision_config": {}}
    got = from_hf(d, layer_type="full_attention")
    assert got == ours("gemma-3-4b", "full_attention")


def test_gemma3_layer_types() -> None:
    full, sliding = ours("gemma-3-4b", "full_attention"), ours("gemma-3-4b", "sliding_attention")
    assert (full.theta, full.scaling.name, full.scaling.factor) == (1e6, "linear", 8.0)
    assert (sliding.theta, sliding.scaling) == (10000.0, Plain())


def test_nested_rope_parameters_need_a_layer_type() -> None:
    with pytest.raises(RopeValueError, match="layer_type"):
        from_hf(MODEL_CONFIGS["gemma-4-text"])
    with pytest.raises(RopeValueError, match="layer_type"):
        from_hf(MODEL_CONFIGS["gemma-4-text"], layer_type="chunked_attention")


def test_gemma4_global_layers_are_proportional_on_the_global_head() -> None:
    config = ours("gemma-4-text", "full_attention")
    assert config.head_dim == 512 and config.rotary_dim is None
    assert config.scaling == Proportional(partial_rotary_factor=0.25)
    inv = config.inv_freq()
    assert int((inv > 0).sum()) == 64 and bool((inv[64:] == 0).all())


def test_deepseek_reads_rope_head_dim_and_interleave() -> None:
    config = ours("deepseek-v3", None)
    assert (config.head_dim, config.interleaved) == (64, True)
    assert config.scaling == Yarn(40.0, 4096, mscale=1.0, mscale_all_dim=1.0)
    d = {**MODEL_CONFIGS["deepseek-v3"], "rope_interleave": False}
    assert from_hf(d).interleaved is False


def test_hunyuan_dynamic_with_alpha_is_static_ntk() -> None:
    assert ours("hunyuan-7b-shape", None).scaling == Ntk(alpha=1000.0)
    d = copy.deepcopy(MODEL_CONFIGS["hunyuan-7b-shape"])
    d["rope_scaling"]["factor"] = 2.0  # transformers would silently ignore it
    with pytest.raises(RopeValueError, match="factor"):
        from_hf(d)


def test_dynamic_takes_its_threshold_from_max_position_embeddings() -> None:
    method = ours("llama-2-7b-dynamic-x2", None).scaling
    assert method == Dynamic(factor=2.0, max_position=4096)
    d = {k: v for k, v in MODEL_CONFIGS["llama-2-7b-dynamic-x2"].items()
         if k != "max_position_embeddings"}  # fmt: skip
    # Left out, it is LlamaConfig's default (2048), as transformers reads the file...
    assert from_hf(d).scaling == Dynamic(factor=2.0, max_position=2048)
    # ...and without a model type there is no default to take.
    del d["model_type"]
    with pytest.raises(RopeValueError, match="max_position_embeddings"):
        from_hf(d)


def test_unknown_keys_raise_unless_allowed() -> None:
    d = copy.deepcopy(MODEL_CONFIGS["llama-3.1-8b"])
    d["rope_scaling"]["llama_4_scaling_beta"] = 0.1
    with pytest.raises(RopeValueError, match="llama_4_scaling_beta"):
        from_hf(d)
    assert from_hf(d, allow_unknown=True) == ours("llama-3.1-8b", None)
    d = {**MODEL_CONFIGS["llama-2-7b"], "rope_scaling": {"type": "default", "factor": 2.0}}
    with pytest.raises(RopeValueError, match="factor"):
        from_hf(d)


def test_missing_keys_unknown_method_and_bad_values_raise() -> None:
    d = copy.deepcopy(MODEL_CONFIGS["llama-3.1-8b"])
    del d["rope_scaling"]["low_freq_factor"]
    with pytest.raises(RopeValueError, match="low_freq_factor"):
        from_hf(d)
    d = {**MODEL_CONFIGS["llama-2-7b"], "rope_scaling": {"type": "xpos", "factor": 2.0}}
    with pytest.raises(RopeValueError, match="xpos"):
        from_hf(d)
    d = {**MODEL_CONFIGS["llama-2-7b"], "rope_scaling": {"type": "linear", "factor": 0.5}}
    with pytest.raises(RopeValueError, match="factor"):
        from_hf(d)
    with pytest.raises(RopeValueError, match="head_dim"):
        from_hf({"rope_theta": 10000.0})
    # Phi-3.5's lists on a head with a different number of pairs.
    d = {**MODEL_CONFIGS["phi-3.5-mini"], "hidden_size": 4096}
    with pytest.raises(RopeValueError, match="short_factor"):
        from_hf(d)


def test_original_context_longer_than_max_position_is_rejected() -> None:
    d = copy.deepcopy(MODEL_CONFIGS["llama-3.1-8b"])
    d["max_position_embeddings"] = 4096  # original 8192 > "extended" 4096
    with pytest.raises(RopeValueError, match="original_max_position_embeddings"):
        from_hf(d)


def test_from_hf_does_not_modify_its_input() -> None:
    for name, layer_type in CASES:
        d = copy.deepcopy(MODEL_CONFIGS[name])
        from_hf(d, layer_type=layer_type)
        assert d == MODEL_CONFIGS[name]


# --------------------------------------------------------------------------- to_hf


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_to_hf_round_trips(case: tuple[str, str | None], version: int) -> None:
    config = ours(*case)
    assert from_hf(to_hf(config, version=version)) == config


@pytest.mark.parametrize("name", [name for name, layer_type in CASES if layer_type is None])
def test_to_hf_is_read_identically_by_transformers(name: str) -> None:
    # The written dict, merged into the model's config, gives transformers the same RoPE.
    # (Per-layer-type configs are excluded: to_hf writes one layer type's RoPE.)
    config = ours(name, None)
    params = {k: v for k, v in MODEL_CONFIGS[name].items() if not k.startswith("rope")}
    params = {
        k: v
        for k, v in params.items()
        if k not in ("rotary_pct", "partial_rotary_factor", "original_max_position_embeddings")
    }
    params.update(to_hf(config, version=4))
    hf = transformers.AutoConfig.for_model(params.pop("model_type"), **params)
    assert from_hf(hf) == config


def test_to_hf_refuses_what_transformers_cannot_express() -> None:
    fixed = RopeConfig(64, scaling=Dynamic(2.0, 4096, fixed_length=16384), max_position=4096)
    with pytest.raises(RopeValueError, match="fixed_length"):
        to_hf(fixed)
    mismatch = RopeConfig(64, scaling=Dynamic(2.0, 4096), max_position=8192)
    with pytest.raises(RopeValueError, match="max_position"):
        to_hf(mismatch)
    with pytest.raises(RopeValueError, match="version"):
        to_hf(RopeConfig(64), version=3)


def test_interleaved_is_written_as_rope_interleave() -> None:
    config = RopeConfig(64, interleaved=True, max_position=4096)
    assert to_hf(config)["rope_interleave"] is True
    assert from_hf(to_hf(config)) == config


def test_object_is_read_without_transformers_import_at_ropekit_import() -> None:
    import subprocess
    import sys

    code = "import sys, ropekit; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_scaling_to_hf_4x_writes_null_rope_scaling() -> None:
    hf = to_hf(RopeConfig(128, theta=500000.0, max_position=8192), version=4)
    assert hf == {"head_dim": 128, "max_position_embeddings": 8192, "rope_theta": 500000.0,
                  "rope_scaling": None}  # fmt: skip
    assert type(from_hf(hf).scaling) is Plain


# --------------------------------------------------------------------------- CLI

#: a per-pair row of `ropekit inspect`: index, then inv_freq in scientific notation
ROW = re.compile(r"^\s*\d+\s+\d\.\d+e[+-]\d+ ")


def _inspect(capsys: Any, *argv: str) -> tuple[int, str, str]:
    from ropekit.cli.main import main

    code = main(["inspect", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_inspect_hf_config_shows_the_scaling_per_pair(tmp_path: Any, capsys: Any) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(MODEL_CONFIGS["qwen2.5-7b-yarn"]))
    code, out, _ = _inspect(capsys, "--hf-config", str(path), "--plot", str(tmp_path / "y.png"))
    assert code == 0
    assert f"attention factor: {0.1 * math.log(4) + 1:.6g}" in out
    rows = [line.split() for line in out.splitlines() if ROW.match(line)]
    assert len(rows) == 64
    # Independent oracle: the paper's spectrum and YaRN's ramp bounds (Qwen: d 128, 1e6).
    low = math.floor(128 * math.log(32768 / (2 * math.pi * 32)) / (2 * math.log(1e6)))
    high = math.ceil(128 * math.log(32768 / (2 * math.pi)) / (2 * math.log(1e6)))
    for i, (_, inv, wavelen, _, orig, stretch, ramp) in enumerate(rows):
        theta_i = 1e6 ** (-2 * i / 128)
        r = min(1.0, max(0.0, (i - low) / (high - low)))
        assert math.isclose(float(orig), 2 * math.pi / theta_i, rel_tol=1e-3, abs_tol=0.06)
        assert math.isclose(float(ramp), r, abs_tol=6e-4)
        assert math.isclose(float(stretch), 1 / ((1 - r) + r / 4), abs_tol=6e-4)
        assert math.isclose(float(inv), theta_i * ((1 - r) + r / 4), rel_tol=1e-6)
        assert math.isclose(float(wavelen), float(orig) * float(stretch), rel_tol=1e-3, abs_tol=0.1)
    assert f"pairs kept (pairs 0..{low})" in out
    assert (tmp_path / "y.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_inspect_hf_config_length_dependent_and_layer_types(tmp_path: Any, capsys: Any) -> None:
    path = tmp_path / "phi.json"
    path.write_text(json.dumps(MODEL_CONFIGS["phi-3.5-mini"]))
    for context, factors in ((4096, PHI35_SHORT), (4097, PHI35_LONG)):
        code, out, _ = _inspect(capsys, "--hf-config", str(path), "--context", str(context))
        assert code == 0 and f"sequence of {context} tokens" in out
        stretch = [float(line.split()[5]) for line in out.splitlines() if ROW.match(line)]
        assert stretch == pytest.approx(factors, rel=1e-3)
    gemma = tmp_path / "gemma.json"
    gemma.write_text(json.dumps(MODEL_CONFIGS["gemma-4-text"]))
    code, _, err = _inspect(capsys, "--hf-config", str(gemma))
    assert code == 2 and "layer_type" in err
    code, out, _ = _inspect(capsys, "--hf-config", str(gemma), "--layer-type", "full_attention")
    assert code == 0 and "192 pairs do not rotate (pairs 64..255)" in out


def test_cli_inspect_hf_config_errors(tmp_path: Any, capsys: Any) -> None:
    path = tmp_path / "odd.json"
    d = copy.deepcopy(MODEL_CONFIGS["llama-3.1-8b"])
    d["rope_scaling"]["llama_4_scaling_beta"] = 0.1
    path.write_text(json.dumps(d))
    code, _, err = _inspect(capsys, "--hf-config", str(path))
    assert code == 2 and "llama_4_scaling_beta" in err
    code, _, _ = _inspect(capsys, "--hf-config", str(path), "--allow-unknown")
    assert code == 0
    code, _, err = _inspect(capsys, "--hf-config", str(tmp_path / "missing.json"))
    assert code == 2 and "--hf-config" in err
    code, _, err = _inspect(capsys, "--hf-config", str(path), "--preset", "llama-2-7b")
    assert code == 2 and "exclusive" in err


if __name__ == "__main__":
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(
        f"{'config':<31} {'method':<12} {'inv_freq rel':>12} {'attn':>7} {'cos/sin abs':>11} "
        f"{'m < 64':>8} {'/ bound':>7}"
    )
    by_method: dict[str, dict[str, float]] = {}
    for case in CASES:
        method = ours(*case).scaling.name
        w = parity(*case)
        m = by_method.setdefault(method, dict.fromkeys(w, 0.0))
        for k, v in w.items():
            m[k] = max(m[k], v)
        print(
            f"{_case_id(case):<31} {method:<12} {w['inv_freq_rel']:>12.2e} "
            f"{w['attention_abs']:>7.0e} {w['cos_sin_abs']:>11.2e} "
            f"{w['cos_sin_abs_first64']:>8.1e} {w['cos_sin_rel_bound']:>7.3f}"
        )
    print("\nlargest per method:")
    for method, w in by_method.items():
        print(
            f"{method:<13} inv_freq rel {w['inv_freq_rel']:.2e}  attention abs "
            f"{w['attention_abs']:.0e}  cos/sin abs {w['cos_sin_abs']:.2e} "
            f"(positions < 64: {w['cos_sin_abs_first64']:.1e}; "
            f"{w['cos_sin_rel_bound']:.3f} of the float32 bound)"
        )
