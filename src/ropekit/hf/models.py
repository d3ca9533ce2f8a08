"""What ropekit knows about particular Hugging Face model types, and where it looks it up.

A ``config.json`` holds only what differs from the defaults of its model's config class
(``save_pretrained`` writes ``to_diff_dict()``), so reading one means knowing those
defaults. ropekit never guesses them:

1. **transformers installed, model type known to it**: :func:`ropekit.hf.from_hf` builds
   the model's own config object from the dict (``CONFIG_MAPPING[model_type].from_dict``),
   so every default, alias (``n_embd`` for ``hidden_size``) and conversion (Gemma 3's
   ``rope_local_base_freq``) is the one transformers applies, then reads that object.
2. **otherwise** (no transformers, or a model type it does not know): the dict is read
   as is, and a RoPE key it leaves out takes the value of :data:`MODEL_DEFAULTS` for its
   ``model_type`` (the defaults of transformers 5.24's config classes, for the families
   listed there; ``tests/test_hf_models.py`` checks every entry against transformers). A
   model type not in the table gets a :class:`~ropekit.RopeValueError` naming the
   missing key and the model type.
3. **no** ``model_type`` **at all** (a hand-written dict, or ropekit's own
   :func:`~ropekit.hf.to_hf` output): transformers' generic defaults
   (:data:`GENERIC_DEFAULTS`, those of ``PreTrainedConfig``), since no model's class
   could apply.

The tables below also record model-specific behaviour that lives in modeling code
rather than in the config (M-RoPE in Qwen2-VL's rotary module, the Llama 4 temperature
in Ministral 3's attention). They describe transformers 5.24.0.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GENERIC_DEFAULTS",
    "INTERLEAVED_MODEL_TYPES",
    "LLAMA4_TEMPERATURE_MODEL_TYPES",
    "MODEL_DEFAULTS",
    "MULTI_AXIS_MODEL_TYPES",
    "PAIRED_MODEL_TYPES",
    "ROPE_SWITCH_MODEL_TYPES",
    "SINUSOIDAL_MODEL_TYPES",
    "UNSUPPORTED_MODEL_TYPES",
    "transformers_config_class",
]

#: The defaults of transformers' ``PreTrainedConfig`` that matter for RoPE, used for a
#: dict without ``model_type``. The head size has no default (``head_dim``, or
#: ``hidden_size`` and ``num_attention_heads``, must be given).
GENERIC_DEFAULTS: dict[str, Any] = {
    "rope_theta": 10000.0,
    "partial_rotary_factor": 1.0,
    "rope_interleave": False,
    "head_dim": None,
    "max_position_embeddings": None,
}

#: Model types whose rotary embedding is multi-axis (one position per axis: M-RoPE of
#: Qwen2-VL and its descendants, 2-D/3-D RoPE of vision encoders) although their config
#: may not say so (Qwen2-VL's rotary module falls back to ``mrope_section = [16, 24,
#: 24]``; EoMT-DINOv3 uses ``rope_type: default`` for a 2-D patch grid). ropekit refuses
#: them ("not supported yet") rather than returning the 1-D RoPE they are not. With
#: transformers installed, a config class whose ``ignore_keys_at_rope_validation`` holds
#: an M-RoPE key, and ``rope_type: axial``, are recognised as well.
MULTI_AXIS_MODEL_TYPES: frozenset[str] = frozenset(
    {
        # M-RoPE (text decoders fed 3-axis positions)
        "cohere_compass", "cohere_compass_text", "colqwen2", "cosmos3_edge",
        "cosmos3_edge_text", "cosmos3_omni", "ernie4_5_vl_moe", "ernie4_5_vl_moe_text",
        "glm46v", "glm4v", "glm4v_moe", "glm4v_moe_text", "glm4v_text", "glm_image",
        "glm_image_text", "glm_ocr", "glm_ocr_text", "hunyuan_vl", "hunyuan_vl_text",
        "hy_v4_vl", "hy_v4_vl_text", "jev", "minicpm_ocr", "minicpmv4_6", "minicpmv4_7",
        "neomme", "paddleocr_vl", "paddleocr_vl_text", "qwen2_5_omni", "qwen2_5_omni_text",
        "qwen2_5_omni_thinker", "qwen2_5_omni_talker", "qwen2_5_vl", "qwen2_5_vl_text",
        "qwen2_vl", "qwen2_vl_text", "qwen3_5", "qwen3_5_moe", "qwen3_5_moe_text",
        "qwen3_5_text", "qwen3_omni_moe", "qwen3_omni_moe_text", "qwen3_omni_moe_thinker",
        "qwen3_omni_moe_talker_text", "qwen3_vl", "qwen3_vl_moe", "qwen3_vl_moe_text",
        "qwen3_vl_text", "qwen4_exp", "qwen4_exp_text",
        # 2-D / 3-D RoPE of vision and video encoders
        "efficientloftr", "eomt_dinov3", "llama4_vision_model",
    }
)  # fmt: skip

#: Model types that apply Llama 4's query temperature ``1 + beta ln(1 + floor(m / L))``
#: (``rope_parameters["llama_4_scaling_beta"]``) in their attention; for every other
#: model type transformers ignores that key.
LLAMA4_TEMPERATURE_MODEL_TYPES: frozenset[str] = frozenset({"ministral3", "mistral4"})

#: Model types whose config class defaults to ``rope_interleave=True`` (DeepSeek MLA and
#: its descendants rotate pairs ``(2i, 2i + 1)``); an explicit ``rope_interleave`` wins.
INTERLEAVED_MODEL_TYPES: frozenset[str] = frozenset(
    {"axk1", "deepseek_v2", "deepseek_v3", "glm4_moe_lite", "mistral4", "sarvam_mla", "youtu"}
)

#: Model types whose attention always rotates pairs ``(2i, 2i + 1)`` (``interleaved=True``),
#: whatever the config says: their modeling code pairs lanes that way (Cohere's and GLM's
#: ``rotate_half`` on ``x[..., ::2]`` / ``x[..., 1::2]``, Llama 4's complex products, the
#: MLA families that only define ``apply_rotary_pos_emb_interleave``). Found by feeding
#: each model's own tables through its own ``apply_rotary_pos_emb``
#: (``tests/test_hf_models.py``).
PAIRED_MODEL_TYPES: frozenset[str] = frozenset(
    {
        "bailing_hybrid", "blt", "blt_global_transformer", "blt_local_decoder",
        "blt_local_encoder", "blt_patcher", "codegen", "cohere", "cohere2", "cohere2_moe",
        "ernie4_5",
        "ernie4_5_moe", "glm", "glm4", "glm_moe_dsa", "gptj", "helium", "llama4",
        "llama4_text", "longcat_flash", "mistral_large4", "mistral_large4_text", "moonshine",
        "moonshine_streaming", "openai_privacy_filter", "pe_audio_encoder",
        "pe_audio_video_encoder", "pe_video_encoder",
    }
)  # fmt: skip

#: GPT-J and CodeGen: sinusoidal tables with the base fixed at 10000 (no ``rope_theta``
#: is read), over the first ``rotary_dim`` lanes of each head (``rotary_dim`` is a count
#: of lanes, a config key of these models), in pairs ``(2i, 2i + 1)``.
SINUSOIDAL_MODEL_TYPES: frozenset[str] = frozenset({"codegen", "gptj"})

#: Model types that build their rotary module only when a config key has a value:
#: ``model_type -> (key, value)``. Their defaults mean "no RoPE" (ESM: absolute
#: positions; GraniteMoeHybrid: ``None``, NoPE; Zamba2: ``use_mem_rope=False``), so such a
#: config is refused rather than read as the RoPE the model does not build.
ROPE_SWITCH_MODEL_TYPES: dict[str, tuple[str, Any]] = {
    "esm": ("position_embedding_type", "rotary"),
    "granitemoehybrid": ("position_embedding_type", "rope"),
    "zamba2": ("use_mem_rope", True),
}

#: Model types whose rotation ropekit cannot express, with the reason.
UNSUPPORTED_MODEL_TYPES: dict[str, str] = {
    "deepseek_v4": "it rotates the trailing lanes of each head ([nope | rope] layout) with "
    "repeat-interleaved tables, a pairing ropekit does not implement",
    "nanochat": "its attention rotates by -m theta_i (the transpose of RoPE's rotation)",
}

#: Per model type, the defaults of its transformers 5.24 config class that matter for
#: RoPE, for reading a ``config.json`` without transformers. ``head_dim: None`` means
#: "derived": ``hidden_size // num_attention_heads``. ``rope_theta`` is a dict by layer
#: type for models with one RoPE per layer type (``layer_types`` lists them); for those,
#: a 4.x file's ``rope_theta`` is the full-attention base and ``rope_local_base_freq``
#: the sliding one. ``_4x_keys``: the only top-level spellings the class reads for
#: ``rope_theta`` / ``partial_rotary_factor`` (GPT-NeoX).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "deepseek_v3": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "qk_rope_head_dim": 64, "hidden_size": 7168, "num_attention_heads": 128,
        "max_position_embeddings": 4096, "rope_interleave": True, "head_dim": None,
    },
    "gemma": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "head_dim": 256, "hidden_size": 3072, "num_attention_heads": 16,
        "max_position_embeddings": 8192,
    },
    "gemma2": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "head_dim": 256, "hidden_size": 2304, "num_attention_heads": 8,
        "max_position_embeddings": 8192,
    },
    "gemma3_text": {
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        },
        "head_dim": 256, "hidden_size": 2304, "num_attention_heads": 8,
        "max_position_embeddings": 131072,
    },
    "glm": {
        "rope_parameters": {
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "rope_type": "default",
        },
        "head_dim": 128, "hidden_size": 4096, "num_attention_heads": 32,
        "max_position_embeddings": 131072,
    },
    "glm4": {
        "rope_parameters": {
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "rope_type": "default",
        },
        "head_dim": 128, "hidden_size": 4096, "num_attention_heads": 32,
        "max_position_embeddings": 131072,
    },
    "gpt_neox": {
        # GPTNeoXConfig reads only its own 4.x spellings (a top-level rope_theta is ignored).
        "_4x_keys": {"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"},
        "rope_parameters": {
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "rope_type": "default",
        },
        "hidden_size": 6144, "num_attention_heads": 64, "max_position_embeddings": 2048,
        "head_dim": None,
    },
    "gpt_oss": {
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
            "rope_theta": 150000.0,
        },
        "head_dim": 64, "hidden_size": 2880, "num_attention_heads": 64,
        "max_position_embeddings": 131072,
    },
    "granite": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 2048,
        "head_dim": None,
    },
    "llama": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "head_dim": None, "hidden_size": 4096, "num_attention_heads": 32,
        "max_position_embeddings": 2048,
    },
    "ministral": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "head_dim": None, "hidden_size": 4096, "num_attention_heads": 32,
        "max_position_embeddings": 131072,
    },
    "mistral": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "head_dim": None, "hidden_size": 4096, "num_attention_heads": 32,
        "max_position_embeddings": 131072,
    },
    "mixtral": {
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "head_dim": None, "hidden_size": 4096, "num_attention_heads": 32,
        "max_position_embeddings": 131072,
    },
    "olmo": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 2048,
        "head_dim": None,
    },
    "olmo2": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 2048,
        "head_dim": None,
    },
    "persimmon": {
        "rope_parameters": {
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "rope_type": "default",
        },
        "hidden_size": 4096, "num_attention_heads": 64, "max_position_embeddings": 16384,
        "head_dim": None,
    },
    "phi": {
        "rope_parameters": {
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "rope_type": "default",
        },
        "hidden_size": 2048, "num_attention_heads": 32, "max_position_embeddings": 2048,
        "head_dim": None,
    },
    "phi3": {
        "rope_parameters": {
            "rope_theta": 10000.0,
            "partial_rotary_factor": 1.0,
            "rope_type": "default",
        },
        "hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096, "head_dim": None,
    },
    "qwen2": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 32768,
        "head_dim": None,
    },
    "qwen2_moe": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "hidden_size": 2048, "num_attention_heads": 16, "max_position_embeddings": 32768,
        "head_dim": None,
    },
    "qwen3": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "head_dim": 128, "hidden_size": 4096, "num_attention_heads": 32,
        "max_position_embeddings": 32768,
    },
    "qwen3_moe": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "hidden_size": 2048, "num_attention_heads": 32, "max_position_embeddings": 32768,
        "head_dim": None,
    },
    "smollm3": {
        "rope_parameters": {"rope_theta": 2000000.0, "rope_type": "default"},
        "hidden_size": 2048, "num_attention_heads": 16, "max_position_embeddings": 32768,
        "head_dim": None,
    },
    "stablelm": {
        "rope_parameters": {
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "rope_type": "default",
        },
        "hidden_size": 2560, "num_attention_heads": 32, "max_position_embeddings": 4096,
        "head_dim": None,
    },
    "starcoder2": {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "hidden_size": 3072, "num_attention_heads": 24, "max_position_embeddings": 4096,
        "head_dim": None,
    },
}


def transformers_config_class(model_type: Any) -> type | None:
    """transformers' config class for ``model_type``; ``None`` when transformers is not
    installed or does not know the model type (never raises, imports lazily)."""
    if not isinstance(model_type, str):
        return None
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:
        return None
    try:
        return CONFIG_MAPPING[model_type]
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
