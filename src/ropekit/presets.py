"""Named configurations of well-known model families.

Values are the RoPE keys of the models' published ``config.json`` files (read the way
transformers reads them, see :mod:`ropekit.hf.config`). ``max_position`` is
the context the configuration is meant for: for the scaled presets that is the extended
context (e.g. 131072 for Qwen2.5 + YaRN x4, whose ``config.json`` still says 32768).
``tests/test_presets.py`` checks every preset against the config it came from and
against transformers.
"""

from __future__ import annotations

from .config import RopeConfig
from .errors import RopeValueError
from .frequencies.scaling import Linear, Llama3, LongRope, Proportional, Yarn

__all__ = ["PRESETS", "preset"]

# microsoft/Phi-3.5-mini-instruct, rope_scaling (one factor per pair, 96 / 2 = 48).
_PHI35_SHORT = (
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
)  # fmt: skip
_PHI35_LONG = (
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
)  # fmt: skip

_LLAMA31 = Llama3(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                  original_max_position_embeddings=8192)  # fmt: skip
_LLAMA32 = Llama3(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                  original_max_position_embeddings=8192)  # fmt: skip

#: name -> RopeConfig
PRESETS: dict[str, RopeConfig] = {
    # Llama 2: head_dim 4096/32, theta 1e4, 4k context; Meta's checkpoints are interleaved,
    # the Hugging Face conversion is half-split (see ropekit.layout.to_half_layout).
    "llama-2-7b": RopeConfig(head_dim=128, theta=10000.0, max_position=4096),
    # Vicuna v1.5 16k: Llama 2 with position interpolation x4 (linear).
    "vicuna-7b-v1.5-16k": RopeConfig(
        head_dim=128, theta=10000.0, scaling=Linear(4.0), max_position=16384
    ),
    # Llama 3 (8B): theta 5e5, 8k context.
    "llama-3-8b": RopeConfig(head_dim=128, theta=500000.0, max_position=8192),
    # Llama 3.1 (8B/70B/405B share the RoPE): llama3 scaling x8 to 128k.
    "llama-3.1-8b": RopeConfig(head_dim=128, theta=500000.0, scaling=_LLAMA31, max_position=131072),
    # Llama 3.2 1B/3B: llama3 scaling x32; the 1B has 64-lane heads.
    "llama-3.2-1b": RopeConfig(head_dim=64, theta=500000.0, scaling=_LLAMA32, max_position=131072),
    "llama-3.2-3b": RopeConfig(head_dim=128, theta=500000.0, scaling=_LLAMA32, max_position=131072),
    "mistral-7b-v0.1": RopeConfig(head_dim=128, theta=10000.0, max_position=32768),
    "mistral-7b-v0.3": RopeConfig(head_dim=128, theta=1000000.0, max_position=32768),
    # Qwen2.5-7B: head_dim 3584/28; 32k native, 128k with Qwen's documented YaRN x4.
    "qwen2.5-7b": RopeConfig(head_dim=128, theta=1000000.0, max_position=32768),
    "qwen2.5-7b-yarn": RopeConfig(
        head_dim=128,
        theta=1000000.0,
        scaling=Yarn(factor=4.0, original_max_position_embeddings=32768),
        max_position=131072,
    ),
    # DeepSeek-V3: YaRN x40 on the 64-lane RoPE part of MLA heads, interleaved pairs;
    # mscale == mscale_all_dim makes the cos/sin factor 1 (the model scales its softmax).
    "deepseek-v3": RopeConfig(
        head_dim=64,
        theta=10000.0,
        interleaved=True,
        scaling=Yarn(40.0, 4096, mscale=1.0, mscale_all_dim=1.0),
        max_position=163840,
    ),
    # gpt-oss (20b and 120b): YaRN x32 without truncating the ramp bounds.
    "gpt-oss-20b": RopeConfig(
        head_dim=64,
        theta=150000.0,
        scaling=Yarn(32.0, 4096, truncate=False),
        max_position=131072,
    ),
    # Phi-3.5-mini: LongRoPE, 4k original context, factor 131072 / 4096 = 32.
    "phi-3.5-mini": RopeConfig(
        head_dim=96,
        theta=10000.0,
        scaling=LongRope(_PHI35_SHORT, _PHI35_LONG, 4096, factor=32.0),
        max_position=131072,
    ),
    # Phi-2: partial rotary, 0.4 of an 80-lane head.
    "phi-2": RopeConfig(head_dim=80, theta=10000.0, rotary_dim=32, max_position=2048),
    # GPT-NeoX / Pythia: rotary_pct 0.25.
    "pythia-6.9b": RopeConfig(head_dim=128, theta=10000.0, rotary_dim=32, max_position=2048),
    "gpt-neox-20b": RopeConfig(head_dim=96, theta=10000.0, rotary_dim=24, max_position=2048),
    "gemma-7b": RopeConfig(head_dim=256, theta=10000.0, max_position=8192),
    # Gemma 3 (4B and up): linear x8 on global layers, plain RoPE (1e4) on local ones.
    "gemma-3-4b-global": RopeConfig(
        head_dim=256, theta=1000000.0, scaling=Linear(8.0), max_position=131072
    ),
    "gemma-3-4b-local": RopeConfig(head_dim=256, theta=10000.0, max_position=131072),
    # Gemma 4 (transformers' Gemma4TextConfig defaults): proportional RoPE on 512-lane
    # global heads (a quarter of the pairs rotate), plain RoPE on 256-lane local ones.
    "gemma-4-global": RopeConfig(
        head_dim=512,
        theta=1000000.0,
        scaling=Proportional(partial_rotary_factor=0.25),
        max_position=131072,
    ),
    "gemma-4-local": RopeConfig(head_dim=256, theta=10000.0, max_position=131072),
}


def preset(name: str) -> RopeConfig:
    """The :class:`RopeConfig` registered as ``name`` (see :data:`PRESETS`)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise RopeValueError(
            f"preset={name!r} is not allowed: expected one of {sorted(PRESETS)}"
        ) from None
