"""Every model type of the installed transformers that has a rotary embedding.

For each model type whose modeling file defines a ``*RotaryEmbedding`` class: build its
default config (``config_class()``), take the dict ``save_pretrained`` would write
(``config.to_diff_dict()``: only what differs from the class's defaults), read it with
``ropekit.hf.from_hf`` and compare with the model's *own* rotary module built from the
full config object (the oracle; only configs and rotary modules are built, never models):

* inverse frequencies (``inv_freq``, or the per-layer-type buffers), within the float32
  rounding transformers makes (``_rtol``), and the attention factor, exactly;
* the cos/sin tables of the module's forward at positions up to 1000, within its float32
  angle error;
* the pairing of lanes: the module's tables fed through the modeling file's own
  ``apply_rotary_pos_emb`` rotate the pairs ropekit's ``interleaved`` says.

Or a clear ``RopeValueError`` ("not supported yet" for multi-axis RoPE). Never a silent
difference. Each model type is one case, named after it.

The second half checks ropekit's own tables (``ropekit.hf.models``) against transformers:
the defaults used without transformers, the multi-axis and temperature model types.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import inspect
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

from ropekit import RopeConfig, RopeValueError
from ropekit.hf import from_hf, models
from ropekit.scaling import MULTI_AXIS_KEYS

transformers.logging.set_verbosity_error()

MODELS_DIR = Path(transformers.__file__).parent / "models"
ROTARY_CLASS = re.compile(r"^class (\w+RotaryEmbedding)\(", re.MULTILINE)
POSITIONS = torch.tensor([[0, 1, 2, 7, 100, 999]])


def _modeling_path(model_type: str) -> Path | None:
    """The modeling file of ``model_type`` (found from its config class's module name)."""
    name = CONFIG_MAPPING_NAMES[model_type]
    for folder in MODELS_DIR.iterdir():
        config_file = folder / f"configuration_{folder.name}.py"
        if config_file.is_file() and f"class {name}(" in config_file.read_text():
            path = folder / f"modeling_{folder.name}.py"
            return path if path.is_file() else None
    return None


@functools.cache
def _model_types() -> list[str]:
    """Model types whose modeling file defines a rotary embedding class (read as text, so
    that collecting the tests imports no modeling code)."""
    by_config: dict[str, Path] = {}
    for folder in MODELS_DIR.iterdir():
        config_file = folder / f"configuration_{folder.name}.py"
        modeling = folder / f"modeling_{folder.name}.py"
        if config_file.is_file() and modeling.is_file() and ROTARY_CLASS.search(
            modeling.read_text()
        ):
            for name in re.findall(r"^class (\w+)\(", config_file.read_text(), re.MULTILINE):
                by_config[name] = modeling
    return sorted(mt for mt, name in CONFIG_MAPPING_NAMES.items() if name in by_config)


MODEL_TYPES = _model_types()

#: Model types ropekit must read (not refuse): the patch's families, the presets' and the
#: table's, and those the issue named (JetMoE and Zamba2 heads, Mistral 4 / Ministral 3
#: YaRN with the Llama 4 temperature).
MUST_READ = {
    "deepseek_v3", "gemma", "gemma2", "gemma3_text", "gemma4_text", "glm4", "gpt_neox",
    "gpt_oss", "granite", "jetmoe", "llama", "ministral3", "mistral", "mistral4", "mixtral",
    "olmo2", "phi", "phi3", "qwen2", "qwen3", "stablelm", "starcoder2", "cohere", "gptj",
    "llama4_text",
}  # fmt: skip


@dataclasses.dataclass
class Case:
    model_type: str
    config: Any  # the default config object
    target: Any  # its text part, the config the rotary module is built from
    rotary: torch.nn.Module
    modeling: Any


def _first_param_annotation(cls: type) -> Any:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return params[0].annotation if params else None


def _rotary_modules(modeling: Any, target: Any) -> list[tuple[type, torch.nn.Module]]:
    """The rotary classes of ``modeling`` that accept ``target``, built from it."""
    built = []
    for name, cls in vars(modeling).items():
        if not (inspect.isclass(cls) and name.endswith("RotaryEmbedding")):
            continue
        if cls.__module__ != modeling.__name__:
            continue
        try:
            built.append((cls, cls(target)))
        except Exception:  # not this config's rotary class
            continue
    return built


def _build_case(model_type: str) -> Case | str:
    """The oracle for ``model_type``, or why there is none."""
    cfg_cls = CONFIG_MAPPING[model_type]
    package = cfg_cls.__module__.rsplit(".", 1)[0]
    try:
        modeling = importlib.import_module(f"{package}.modeling_{package.rsplit('.', 1)[1]}")
    except ImportError as e:  # an optional dependency of the modeling file
        pytest.skip(f"modeling module not importable: {e}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = cfg_cls()
    try:
        target = config.get_text_config()
    except ValueError:
        target = config
    built = _rotary_modules(modeling, target)
    if not built and type(target).__module__.rsplit(".", 1)[0] != package:
        # A composite whose text model lives in another package (VideoLLaMA 3: Qwen2).
        text_package = type(target).__module__.rsplit(".", 1)[0]
        modeling = importlib.import_module(
            f"{text_package}.modeling_{text_package.rsplit('.', 1)[1]}"
        )
        built = _rotary_modules(modeling, target)
    if not built:
        return "no rotary class of the modeling file accepts this config (not a RoPE config)"
    # Prefer the class annotated with the config's own class (Qwen2.5-Omni has a text and
    # a DiT rotary class that both accept the text config).
    exact = [(c, m) for c, m in built if _first_param_annotation(c) in type(target).__mro__]
    others = [(c, m) for c, m in built if not re.search(r"Vision|DiT|Audio", c.__name__)]
    _, rotary = (exact or others or built)[0]
    return Case(model_type, config, target, rotary, modeling)


def _layer_types(rotary: torch.nn.Module) -> list[str | None]:
    rope_type = getattr(rotary, "rope_type", None)
    # ESM's module keeps an empty dict for its one RoPE.
    return sorted(rope_type) if isinstance(rope_type, dict) and rope_type else [None]


def _oracle_frequencies(case: Case, layer_type: str | None) -> tuple[torch.Tensor, float]:
    """``(inv_freq, attention_factor)`` of the model's own rotary module."""
    rotary = case.rotary
    prefix = f"{layer_type}_" if layer_type else ""
    inv = getattr(rotary, f"{prefix}inv_freq", None)
    factor = getattr(rotary, f"{prefix}attention_scaling", None)
    if factor is None:
        factor = getattr(rotary, "attention_scaling", 1.0)
    if inv is None:
        # GPT-J / CodeGen keep sinusoidal tables [positions, sin | cos]: at position 1 the
        # angle of pair i is inv_freq[i] (< 1 rad).
        table = rotary.embed_positions[1].double()
        n = table.shape[-1] // 2
        inv = torch.atan2(table[:n], table[n:])
    return inv.detach().double(), float(factor)


def _rtol(theta: float) -> float:
    """transformers evaluates ``theta ** fl32(2i / d)`` in float32: the rounded exponent
    and the float32 pow are each worth up to ``ln(theta) 2**-24`` relative, plus a few
    float32 roundings of the scaling formulas."""
    return 2**-24 * (16 + 2 * abs(math.log(theta)))


def _module_tables(case: Case, layer_type: str | None, n: int) -> tuple[torch.Tensor, str]:
    """``(cos [s, n], layout)`` of the rotary module's forward at :data:`POSITIONS`."""
    x = torch.zeros(1, POSITIONS.shape[1], 8)
    args = (layer_type,) if layer_type else ()
    out = case.rotary(x, POSITIONS, *args)
    if isinstance(out, torch.Tensor) and out.is_complex():  # freqs_cis (Llama 4, DeepSeek-V2)
        return out[0].real.double(), "complex"
    cos = out[1] if case.model_type in models.SINUSOIDAL_MODEL_TYPES else out[0]  # (sin, cos)
    cos = cos[0].double()
    if cos.shape[-1] == n:
        return cos, "pairs"
    assert cos.shape[-1] == 2 * n, f"tables of {cos.shape[-1]} lanes for {n} frequencies"
    if torch.equal(cos[:, :n], cos[:, n:]):
        return cos[:, :n], "half"
    assert torch.equal(cos[:, 0::2], cos[:, 1::2]), "tables neither half-split nor interleaved"
    return cos[:, 0::2], "interleaved"


def _rotate(q: torch.Tensor, rope: RopeConfig, inv: torch.Tensor, factor: float) -> torch.Tensor:
    """The oracle formula: rotate ``q`` ``[b, h, s, d]`` by ``m inv_freq`` on ropekit's
    pairs, cos/sin scaled by ``factor``; lanes past the rotated pairs unchanged."""
    n = inv.numel()
    angle = POSITIONS[0].double()[:, None] * inv
    c, s = torch.cos(angle) * factor, torch.sin(angle) * factor
    if rope.interleaved:
        a, b = torch.arange(n) * 2, torch.arange(n) * 2 + 1
    else:
        a, b = torch.arange(n), torch.arange(n) + n
    out = q.clone()
    out[..., a] = q[..., a] * c - q[..., b] * s
    out[..., b] = q[..., b] * c + q[..., a] * s
    return out


def _check_pairing(case: Case, rope: RopeConfig, layer_type: str | None) -> None:
    """The model's own tables through its own rotation function rotate ropekit's pairs."""
    args = (layer_type,) if layer_type else ()
    out = case.rotary(torch.zeros(1, POSITIONS.shape[1], 8), POSITIONS, *args)
    inv, factor = rope.frequencies()
    if isinstance(out, torch.Tensor):
        # Complex freqs_cis can only be applied as products with complex numbers formed
        # from consecutive lanes (view_as_complex(x.reshape(..., -1, 2))).
        assert rope.interleaved, "complex tables pair lanes (2i, 2i + 1)"
        return
    modeling = case.modeling
    if getattr(case.target, "rope_interleave", False) and hasattr(
        modeling, "apply_rotary_pos_emb_interleave"
    ):
        apply = modeling.apply_rotary_pos_emb_interleave
    else:
        apply = getattr(modeling, "apply_rotary_pos_emb", None) or getattr(
            modeling, "apply_rotary_pos_emb_interleave", None
        )
    if apply is None:
        return  # the rotation lives in a class (checked through the tables only)
    names = list(inspect.signature(apply).parameters)
    q = torch.randn(1, 2, POSITIONS.shape[1], rope.head_dim, generator=torch.Generator().manual_seed(0))
    rotated = 2 * inv.numel()
    want = _rotate(q.double(), rope, inv, factor)

    def call(x: torch.Tensor) -> torch.Tensor:
        if names[:4] == ["q", "k", "cos", "sin"]:
            return apply(x, x, out[0], out[1])[0]
        if names[:3] == ["tensor", "sin", "cos"]:  # GPT-J / CodeGen: [b, s, h, d]
            return apply(x.transpose(1, 2), out[0], out[1]).transpose(1, 2)
        if names[:3] == ["x", "cos", "sin"]:
            return apply(x, out[0], out[1])
        pytest.fail(f"unexpected signature of {apply.__qualname__}: {names}")

    try:
        got = call(q)
    except RuntimeError:  # the model splits off the rotated lanes before calling it
        got = torch.cat((call(q[..., :rotated]), q[..., rotated:]), dim=-1)
    got = got.double()
    if rope.interleaved and not torch.allclose(got, want, atol=2e-3, rtol=0):
        # DeepSeek's apply_rotary_pos_emb_interleave rotates pairs (2i, 2i + 1) and returns
        # them de-interleaved (lane 2i -> i, 2i + 1 -> i + n), for q and k alike: the same
        # attention scores as interleaved RoPE, in a permuted layout.
        head = want[..., :rotated].unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)
        want = torch.cat((head, want[..., rotated:]), dim=-1)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_config_json_reads_as_the_model_rotates(model_type: str) -> None:
    case = _build_case(model_type)
    if isinstance(case, str):
        # No rotary module of transformers accepts this config (a vision tower with learned
        # positions, a mask decoder, ...): there is nothing to agree with, so ropekit must
        # refuse it rather than read generic RoPE defaults out of it.
        with pytest.raises(RopeValueError):
            from_hf(CONFIG_MAPPING[model_type]().to_diff_dict())
        return
    diff = case.config.to_diff_dict()
    for layer_type in _layer_types(case.rotary):
        try:
            rope = from_hf(copy.deepcopy(diff), layer_type=layer_type)
        except RopeValueError as e:
            assert model_type not in MUST_READ, f"{model_type} refused: {e}"
            assert len(str(e)) > 20
            continue
        inv_hf, factor_hf = _oracle_frequencies(case, layer_type)
        inv, factor = rope.frequencies()
        where = f"{model_type} layer_type={layer_type}"
        assert inv.shape == inv_hf.shape, f"{where}: {inv.numel()} vs {inv_hf.numel()} pairs"
        torch.testing.assert_close(inv, inv_hf, rtol=_rtol(rope.theta), atol=0.0, msg=where)
        assert factor == pytest.approx(factor_hf, rel=1e-12, abs=0.0), where
        cos_hf, _ = _module_tables(case, layer_type, inv.numel())
        cos = rope.cos_sin(POSITIONS[0], dtype=torch.float64)[0]
        # float32 angle m * inv_freq: off by <= 1000 * 2**-23 rad, plus float32 cos.
        torch.testing.assert_close(cos, cos_hf, atol=2e-4 * max(1.0, factor), rtol=0, msg=where)
        _check_pairing(case, rope, layer_type)


@pytest.mark.parametrize("model_type", sorted(models.ROPE_SWITCH_MODEL_TYPES))
def test_models_whose_rope_is_switched_on_by_a_key(model_type: str) -> None:
    """Off by default (the model then builds no rotary module): refused. Switched on: read,
    and equal to the rotary module the model then builds (Zamba2: 80 pairs of its
    160-lane heads, where hidden_size // num_attention_heads would give 40)."""
    key, value = models.ROPE_SWITCH_MODEL_TYPES[model_type]
    with pytest.raises(RopeValueError, match=key):
        from_hf(CONFIG_MAPPING[model_type]().to_diff_dict())
    config = CONFIG_MAPPING[model_type](**{key: value})
    case = _build_case(model_type)
    assert not isinstance(case, str)
    rotary = type(case.rotary)(config)
    inv, factor = from_hf(config.to_diff_dict()).frequencies()
    torch.testing.assert_close(inv, rotary.inv_freq.double(), rtol=_rtol(1e4), atol=0.0)
    assert factor == rotary.attention_scaling
    if model_type == "zamba2":
        assert inv.numel() == 80


def test_multi_axis_models_are_refused_as_not_supported_yet() -> None:
    # Qwen2-VL: M-RoPE although its config has no mrope_section (the rotary module falls
    # back to [16, 24, 24]); EoMT-DINOv3 and ERNIE-4.5-VL: 2-D / 3-D RoPE that reads as
    # plain 1-D frequencies.
    for model_type in ("qwen2_vl", "eomt_dinov3", "ernie4_5_vl_moe", "qwen2_vl_vision"):
        diff = CONFIG_MAPPING[model_type]().to_diff_dict()
        with pytest.raises(RopeValueError, match="not supported yet"):
            from_hf(diff)
    qwen = CONFIG_MAPPING["qwen2_vl"]().to_dict()
    qwen["text_config"]["rope_parameters"]["mrope_section"] = [16, 24, 24]
    for allow_unknown in (False, True):
        with pytest.raises(RopeValueError, match="not supported yet"):
            from_hf(qwen, allow_unknown=allow_unknown)


# --------------------------------------------------------------------------- tables


def _without_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "transformers_config_class", lambda model_type: None)


@pytest.mark.parametrize("model_type", sorted(models.MODEL_DEFAULTS))
def test_table_defaults_are_transformers_defaults(model_type: str) -> None:
    cls = CONFIG_MAPPING[model_type]
    config = cls()
    table = models.MODEL_DEFAULTS[model_type]
    assert table["rope_parameters"] == config.rope_parameters
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in table.items():
        if key != "rope_parameters" and not key.startswith("_"):
            assert fields.get(key) == value, key
    assert ("rope_interleave" in table and table["rope_interleave"]) == bool(
        fields.get("rope_interleave", False)
    )


@pytest.mark.parametrize("model_type", sorted(models.MODEL_DEFAULTS))
def test_without_transformers_the_table_gives_the_same_reading(
    model_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config.json of the model's defaults, and one with a 4.x scaling block, read
    through the table equal what transformers' own class gives."""
    config = CONFIG_MAPPING[model_type]()
    diff = config.to_diff_dict()
    layer_types = sorted(config.rope_parameters) if "full_attention" in config.rope_parameters else [None]
    linear = {**diff, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    linear.pop("rope_parameters", None)
    # A 4.x file without a RoPE dict: its top-level base wins over the model's default.
    legacy = {k: v for k, v in diff.items() if k != "rope_parameters"}
    legacy.update(rope_theta=12345.0, rope_local_base_freq=2345.0, rotary_emb_base=3456.0)
    if len(layer_types) == 1:  # Gemma 3's key for its sliding-window base
        del legacy["rope_local_base_freq"]
    variants = {"diff": diff, "linear": linear, "legacy": legacy}
    want = {}
    for name, d in variants.items():
        for lt in layer_types:
            try:
                want[name, lt] = from_hf(copy.deepcopy(d), layer_type=lt)
            except RopeValueError as e:  # Phi-3 accepts longrope only
                assert "refused it" in str(e)
    assert ("diff", layer_types[0]) in want
    _without_transformers(monkeypatch)
    for (name, lt), rope in want.items():
        assert from_hf(copy.deepcopy(variants[name]), layer_type=lt) == rope, (name, lt)


def test_without_transformers_unknown_model_types_name_the_missing_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_transformers(monkeypatch)
    # hidden_size // num_attention_heads would be a guess: the model's class may fix
    # head_dim (Qwen3) or derive it from another key (JetMoE's kv_channels).
    base = {"model_type": "my_model", "hidden_size": 64, "num_attention_heads": 4}
    steps = [("rope_theta", 1e4), ("partial_rotary_factor", 1.0), ("head_dim", 16),
             ("rope_interleave", False)]  # fmt: skip
    d = dict(base)
    for key, value in steps:
        with pytest.raises(RopeValueError, match=f"'{key}'.*model_type='my_model'"):
            from_hf(d)
        d[key] = value
    full = {**base, "head_dim": 16, "rope_theta": 1e4, "partial_rotary_factor": 1.0,
            "rope_interleave": False}  # fmt: skip
    assert from_hf(full) == RopeConfig(16, theta=1e4)
    # No model_type at all: transformers' generic defaults (PreTrainedConfig).
    assert from_hf({"hidden_size": 64, "num_attention_heads": 4}) == RopeConfig(16)


def test_gemma3_config_json_without_rope_theta_gets_gemma3s_default() -> None:
    # The case: a 4.x Gemma-3 config.json that leaves rope_theta at its default.
    d = {"model_type": "gemma3_text", "hidden_size": 2560, "num_attention_heads": 8,
         "head_dim": 256, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}  # fmt: skip
    hf = CONFIG_MAPPING["gemma3_text"].from_dict(copy.deepcopy(d))
    assert hf.rope_parameters["full_attention"]["rope_theta"] == 1e6
    full = from_hf(d, layer_type="full_attention")
    assert full.theta == 1e6 and full.scaling.factor == 8.0
    assert from_hf(d, layer_type="sliding_attention").theta == 1e4
    with pytest.raises(RopeValueError, match="layer_type"):
        from_hf(d)  # two RoPEs: layer_type is required, dict or object alike
    with pytest.raises(RopeValueError, match="layer_type"):
        from_hf(hf)


def test_multi_axis_table_covers_every_mrope_config_class() -> None:
    """Without transformers the table alone must refuse M-RoPE models: every config class
    that declares an M-RoPE key is listed (by its model type)."""
    missing = []
    for model_type in CONFIG_MAPPING_NAMES:
        try:
            cls = CONFIG_MAPPING[model_type]
        except Exception:
            continue
        ignored = set(getattr(cls, "ignore_keys_at_rope_validation", None) or ())
        if ignored & MULTI_AXIS_KEYS and model_type not in models.MULTI_AXIS_MODEL_TYPES:
            missing.append(model_type)
    assert not missing


def test_llama4_temperature_model_types_are_those_whose_modeling_reads_the_key() -> None:
    readers = {
        path.parent.name
        for path in MODELS_DIR.glob("*/modeling_*.py")
        if "llama_4_scaling_beta" in path.read_text()
    }
    assert readers == set(models.LLAMA4_TEMPERATURE_MODEL_TYPES)


def test_every_table_entry_names_a_transformers_model_type() -> None:
    for table in (models.MULTI_AXIS_MODEL_TYPES, models.PAIRED_MODEL_TYPES,
                  models.SINUSOIDAL_MODEL_TYPES, models.LLAMA4_TEMPERATURE_MODEL_TYPES,
                  set(models.UNSUPPORTED_MODEL_TYPES), set(models.MODEL_DEFAULTS)):  # fmt: skip
        unknown = sorted(set(table) - set(CONFIG_MAPPING_NAMES))
        # sarvam_mla: a config without a modeling file in 5.24 (its defaults still apply)
        assert set(unknown) <= {"sarvam_mla"}, unknown
