"""Presets: each one equals the published config it names, and transformers agrees."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from ropekit import PRESETS, RopeValueError, preset
from ropekit.hf import from_hf, to_hf
from ropekit.scaling import Plain
from tests.test_hf_config import MODEL_CONFIGS, _hf_init

#: preset -> (published config in MODEL_CONFIGS, layer_type, fields the preset sets itself)
SOURCES: dict[str, tuple[str, str | None, dict[str, int]]] = {
    "llama-2-7b": ("llama-2-7b", None, {}),
    # config.json keeps max_position_embeddings 4096; the preset states the 16k it reaches.
    "vicuna-7b-v1.5-16k": ("vicuna-7b-v1.5-16k", None, {"max_position": 16384}),
    "llama-3-8b": ("llama-3-8b", None, {}),
    "llama-3.1-8b": ("llama-3.1-8b", None, {}),
    "llama-3.2-1b": ("llama-3.2-1b", None, {}),
    "llama-3.2-3b": ("llama-3.2-3b", None, {}),
    "mistral-7b-v0.1": ("mistral-7b-v0.1", None, {}),
    "mistral-7b-v0.3": ("mistral-7b-v0.3", None, {}),
    "qwen2.5-7b": ("qwen2.5-7b", None, {}),
    # Qwen's recipe adds rope_scaling and keeps 32768; the preset states the 128k.
    "qwen2.5-7b-yarn": ("qwen2.5-7b-yarn", None, {"max_position": 131072}),
    "deepseek-v3": ("deepseek-v3", None, {}),
    "gpt-oss-20b": ("gpt-oss-20b", None, {}),
    "phi-3.5-mini": ("phi-3.5-mini", None, {}),
    "phi-2": ("phi-2", None, {}),
    "pythia-6.9b": ("pythia-6.9b", None, {}),
    "gpt-neox-20b": ("gpt-neox-20b", None, {}),
    "gemma-7b": ("gemma-7b", None, {}),
    "gemma-3-4b-global": ("gemma-3-4b", "full_attention", {}),
    "gemma-3-4b-local": ("gemma-3-4b", "sliding_attention", {}),
    "gemma-4-global": ("gemma-4-text", "full_attention", {}),
    "gemma-4-local": ("gemma-4-text", "sliding_attention", {}),
}

#: a per-pair row of `ropekit inspect`: index, then inv_freq in scientific notation
ROW = re.compile(r"^\s*\d+\s+\d\.\d+e[+-]\d+ ")

REQUIRED_FAMILIES = ["llama-2", "llama-3.1", "llama-3.2", "mistral", "qwen2.5-7b",
                     "qwen2.5-7b-yarn", "phi-3", "pythia", "gemma"]  # fmt: skip


def test_every_preset_has_a_published_source() -> None:
    assert set(SOURCES) == set(PRESETS)
    for family in REQUIRED_FAMILIES:
        assert any(name.startswith(family) for name in PRESETS), family


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_equals_its_published_config(name: str) -> None:
    source, layer_type, own = SOURCES[name]
    published = from_hf(copy.deepcopy(MODEL_CONFIGS[source]), layer_type=layer_type)
    assert preset(name) == published.replace(**own)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_frequencies_match_transformers(name: str) -> None:
    source, layer_type, _ = SOURCES[name]
    config = preset(name)
    inv_hf, factor_hf = _hf_init(source, layer_type, None)
    inv, factor = config.frequencies()
    torch.testing.assert_close(inv, inv_hf.double(), rtol=1e-6, atol=0.0)
    assert factor == factor_hf


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trips_through_hf(name: str, version: int) -> None:
    config = preset(name)
    config.scaling.check_config(config.head_dim, config.rotary_dim, config.max_position)
    assert from_hf(to_hf(config, version=version)) == config


def test_required_presets_values() -> None:
    # Spot checks straight from the model cards, independent of from_hf.
    assert preset("llama-3.1-8b").scaling.factor == 8.0
    assert preset("llama-3.2-1b").head_dim == 64 and preset("llama-3.2-1b").scaling.factor == 32.0
    assert preset("pythia-6.9b").rotary_dim == 32
    assert len(preset("phi-3.5-mini").scaling.long_factor) == 48
    assert preset("qwen2.5-7b-yarn").attention_factor == pytest.approx(1.1386294361119891)


def test_unknown_preset_raises() -> None:
    with pytest.raises(RopeValueError, match="preset='llama-5'"):
        preset("llama-5")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_cli_inspect_every_preset(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ropekit.cli.main import main

    assert main(["inspect", "--preset", name]) == 0
    out = capsys.readouterr().out
    config = preset(name)
    assert out.startswith(f"{name}: head_dim={config.head_dim} ")
    rows = [line for line in out.splitlines() if ROW.match(line)]
    assert len(rows) == config.n_pairs
    if not isinstance(config.scaling, Plain):
        assert f"attention factor: {config.attention_factor:.6g}" in out
