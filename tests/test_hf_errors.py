"""Malformed Hugging Face configs and scaling parameters: always a ``RopeValueError``.

Every malformed value of a ``config.json`` (wrong type, out of range, a number spelled as
a string, a bool where a number belongs) raises :class:`ropekit.RopeValueError` naming
the key, the value and what is allowed, with and without transformers installed; never
a raw ``ZeroDivisionError`` / ``TypeError`` / ``OverflowError``, never silent acceptance.
Scaling configs whose frequencies or attention factor would be non-finite, zero,
negative or undefined are refused when they are built. numpy scalars are numbers.

Also here: ``allow_unknown`` (which keys it may ignore) and the Llama 4 temperature
(``llama_4_scaling_beta``), against transformers' own ``get_llama_4_attn_scale``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ropekit import RopeConfig, RopeValueError
from ropekit.frequencies import Llama4Temperature
from ropekit.hf import from_hf, models, to_hf
from ropekit.scaling import Linear, Llama3, LongRope, Ntk, Yarn, scaling_from_dict

transformers.logging.set_verbosity_error()

NAN, INF = float("nan"), float("inf")
LLAMA31 = {
    "model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
    "max_position_embeddings": 131072, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}  # fmt: skip
QWEN_YARN = {
    "model_type": "qwen2", "hidden_size": 3584, "num_attention_heads": 28,
    "max_position_embeddings": 32768, "rope_theta": 1000000.0,
    "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
}  # fmt: skip
PHI35 = {
    "model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32,
    "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48},
}  # fmt: skip

#: (base config, key path, malformed value). A path is a key, or (dict key, key).
MALFORMED: list[tuple[dict[str, Any], Any, Any]] = [
    *[(LLAMA31, "num_attention_heads", v) for v in (0, -1, "32", 32.0, True, [32])],
    *[(LLAMA31, "hidden_size", v) for v in ("4096", 0, 4096.5, True, NAN)],
    *[(LLAMA31, "head_dim", v) for v in (0, "128", 128.0, False)],
    *[(LLAMA31, "max_position_embeddings", v) for v in ("131072", 0, -5, 1.5, True)],
    *[(LLAMA31, "rope_theta", v) for v in ("5e5", 0, -1.0, NAN, INF, True, [5e5])],
    *[(LLAMA31, "partial_rotary_factor", v)
      for v in ("0.5", "0.50.50.5", NAN, INF, [0.5], True, 0, 1.5, -0.5)],
    *[(LLAMA31, "rope_interleave", v) for v in ("false", "true", 0, 1)],
    *[(LLAMA31, "rope_scaling", v) for v in ("llama3", [1], 5)],
    *[(LLAMA31, ("rope_scaling", "rope_type"), v) for v in (["linear"], 3, {"a": 1})],
    *[(LLAMA31, ("rope_scaling", "factor"), v) for v in ("8", NAN, INF, True, 0.5, [8])],
    *[(LLAMA31, ("rope_scaling", "low_freq_factor"), v) for v in ("1", -1.0, True)],
    *[(LLAMA31, ("rope_scaling", "original_max_position_embeddings"), v)
      for v in ("8192", 8192.0, 0, True)],
    *[(QWEN_YARN, ("rope_scaling", "original_max_position_embeddings"), v)
      for v in ("2048", 2048.5)],
    *[(QWEN_YARN, ("rope_scaling", "beta_fast"), v) for v in ("32", NAN, True)],
    *[(QWEN_YARN, ("rope_scaling", "mscale"), v) for v in ("1", INF)],
    *[(QWEN_YARN, ("rope_scaling", "truncate"), v) for v in ("false", 1)],
    *[(PHI35, ("rope_scaling", "short_factor"), v)
      for v in ("abc", [1.0] * 47 + ["2"], [NAN] * 48, [True] * 48, 3.0)],
    (PHI35, "original_max_position_embeddings", "4096"),
    (LLAMA31, "model_type", 5),
]  # fmt: skip


def _with(base: dict[str, Any], path: Any, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(base)
    if isinstance(path, tuple):
        d[path[0]][path[1]] = value
    else:
        d[path] = value
    return d


def _id(case: tuple[dict[str, Any], Any, Any]) -> str:
    base, path, value = case
    key = ".".join(path) if isinstance(path, tuple) else path
    return f"{base['model_type']}-{key}={value!r}"[:60]


def test_there_are_many_malformed_cases() -> None:
    assert len(MALFORMED) >= 51  # the count, at least


@pytest.mark.parametrize("transformers_installed", [True, False], ids=["hf", "no-hf"])
@pytest.mark.parametrize("case", MALFORMED, ids=[_id(c) for c in MALFORMED])
def test_malformed_value_is_a_rope_value_error_naming_it(
    case: tuple[dict[str, Any], Any, Any], transformers_installed: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    base, path, value = case
    if not transformers_installed:
        monkeypatch.setattr(models, "transformers_config_class", lambda model_type: None)
    with pytest.raises(RopeValueError) as info:
        from_hf(_with(base, path, value))
    message = str(info.value)
    key = path[-1] if isinstance(path, tuple) else path
    assert key in message, message
    if not (isinstance(value, list) and len(value) > 8):
        assert repr(value) in message, message
    assert "expected" in message, message


def test_numbers_in_strings_and_bools_are_never_numbers() -> None:
    # Silently accepted before: a bool partial_rotary_factor, a string rope_interleave
    # (which read as interleaved=True).
    for key, value in (("partial_rotary_factor", True), ("rope_interleave", "false")):
        with pytest.raises(RopeValueError, match=key):
            from_hf({**LLAMA31, key: value})
    with pytest.raises(RopeValueError, match="rope_type"):
        scaling_from_dict({"rope_type": ["linear"], "factor": 2.0})
    with pytest.raises(RopeValueError, match="head_dim"):
        RopeConfig(True)
    with pytest.raises(RopeValueError, match="theta"):
        RopeConfig(64, theta="1e4")  # type: ignore[arg-type]


def test_numpy_scalars_are_the_numbers_they_are() -> None:
    config = RopeConfig(np.int64(128), theta=np.float32(1e4), rotary_dim=np.int32(64),
                        max_position=np.int64(4096))  # fmt: skip
    assert config == RopeConfig(128, theta=10000.0, rotary_dim=64, max_position=4096)
    assert type(config.head_dim) is int and type(config.theta) is float
    yarn = Yarn(np.float32(4.0), np.int64(4096), beta_fast=np.int16(32))
    assert yarn == Yarn(4.0, 4096) and type(yarn.original_max_position_embeddings) is int
    assert Linear(np.float64(2.0)) == Linear(2.0)
    d = {**LLAMA31, "num_attention_heads": np.int64(32), "rope_theta": np.float64(5e5)}
    assert from_hf(d) == from_hf(LLAMA31)
    with pytest.raises(RopeValueError, match="head_dim"):
        RopeConfig(np.bool_(True))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        # validated, then ZeroDivisionError in .inv_freq(): YaRN's bounds divide by ln theta
        (lambda: RopeConfig(64, theta=1.0, scaling=Yarn(4.0, 4096)), "theta=1.0"),
        (lambda: RopeConfig(64, theta=0.5, scaling=Yarn(4.0, 4096)), "theta=0.5"),
        # mscale_all_dim making the attention factor's denominator 0.1 k ln(s) + 1 zero
        (lambda: Yarn(math.e, 4096, mscale=1.0, mscale_all_dim=-10.0), "mscale_all_dim"),
        # accepted before with attention factor -5.55, failing only at forward
        (lambda: Yarn(2.0, 4096, mscale=-100.0, mscale_all_dim=1.0), "mscale=-100.0"),
        # OverflowError at head_dim 4 before
        (lambda: RopeConfig(4, scaling=Ntk(1e300)), "alpha=1e+300"),
        (lambda: Ntk(1e300).frequencies(4, 1e4, None, None), "alpha=1e+300"),
        # validated, then inf frequencies and NaN tables
        (lambda: RopeConfig(64, theta=5e-324), "theta=5e-324"),
        (lambda: RopeConfig(64, theta=1e308, scaling=Linear(1e308)), "inverse frequencies"),
        (lambda: Llama3(8.0, 1.0, 4.0, 8192).check_config(64, None, 4096),
         "original_max_position_embeddings"),
        (lambda: LongRope([1.0] * 32, [1e-320] * 32, 4096, 2.0).check_config(64, None, 8192),
         "inverse frequencies"),
        (lambda: Llama4Temperature(-0.1, 8192), "beta"),
        (lambda: Llama4Temperature(0.1, 0), "original_max_position_embeddings"),
    ],
)  # fmt: skip
def test_scaling_that_would_fail_later_is_refused_at_construction(build: Any, needle: str) -> None:
    with pytest.raises(RopeValueError, match=needle.replace("+", r"\+").replace(".", r"\.")):
        build()


def test_a_valid_config_has_finite_tables() -> None:
    # The checks above do not refuse legitimate extremes.
    for config in (RopeConfig(4, scaling=Ntk(1e100)), RopeConfig(128, theta=1e-200),
                   RopeConfig(128, theta=1.0001, scaling=Yarn(4.0, 4096))):  # fmt: skip
        inv, factor = config.frequencies()
        assert bool(torch.isfinite(inv).all()) and bool((inv > 0).all())
        assert math.isfinite(factor) and factor > 0


# --------------------------------------------------------------------------- allow_unknown


def test_allow_unknown_ignores_only_keys_known_not_to_affect_rope() -> None:
    # A parameter of another rope type: transformers' llama3 code never reads beta_fast.
    d = copy.deepcopy(LLAMA31)
    d["rope_scaling"]["beta_fast"] = 32.0
    with pytest.raises(RopeValueError, match="beta_fast"):
        from_hf(d)
    assert from_hf(d, allow_unknown=True) == from_hf(LLAMA31)
    # A key nobody knows may change the rotation somewhere: never ignored.
    d = copy.deepcopy(LLAMA31)
    d["rope_scaling"]["my_rotation_knob"] = 3
    for allow_unknown in (False, True):
        with pytest.raises(RopeValueError, match=r"my_rotation_knob.*cannot tell"):
            from_hf(d, allow_unknown=allow_unknown)
    # M-RoPE keys change the rotation: "not supported yet", whatever allow_unknown says.
    d = copy.deepcopy(LLAMA31)
    d["rope_scaling"]["mrope_section"] = [16, 24, 24]
    for allow_unknown in (False, True):
        with pytest.raises(RopeValueError, match="not supported yet"):
            from_hf(d, allow_unknown=allow_unknown)
        with pytest.raises(RopeValueError, match="not supported yet"):
            scaling_from_dict({"rope_type": "linear", "factor": 2.0, "mrope_section": [1]},
                              allow_unknown=allow_unknown)  # fmt: skip


# --------------------------------------------------------------------------- Llama 4 temperature


@pytest.mark.parametrize("model_type", sorted(models.LLAMA4_TEMPERATURE_MODEL_TYPES))
def test_llama4_temperature_matches_transformers(model_type: str) -> None:
    config = CONFIG_MAPPING[model_type]()
    rope = from_hf(config.to_diff_dict())
    params = config.rope_parameters
    assert rope.temperature == Llama4Temperature(
        params["llama_4_scaling_beta"], params["original_max_position_embeddings"]
    )
    # The oracle: the function the model's attention multiplies its queries by.
    modeling = __import__(
        f"transformers.models.{model_type}.modeling_{model_type}", fromlist=["_"]
    )
    omp = params["original_max_position_embeddings"]
    positions = torch.tensor([[0, 1, omp - 1, omp, 2 * omp - 1, 2 * omp, 7 * omp + 3, 10**6]])
    want = modeling.get_llama_4_attn_scale(
        positions, params["llama_4_scaling_beta"], omp
    ).flatten().double()
    got = rope.query_scale(positions[0])
    torch.testing.assert_close(got, want, rtol=2e-7, atol=0)  # transformers: float32
    assert float(got[0]) == 1.0 and float(got[3]) > 1.0


def test_llama4_temperature_round_trips_and_is_refused_where_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rope = from_hf(CONFIG_MAPPING["ministral3"]().to_diff_dict())
    for version in (4, 5):
        assert from_hf(to_hf(rope, version=version)) == rope
    assert RopeConfig(64).query_scale(torch.arange(3)).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(RopeValueError, match="positions"):
        rope.query_scale(torch.tensor([-1]))
    # Llama ignores the key in transformers: refused unless allow_unknown.
    d = copy.deepcopy(LLAMA31)
    d["rope_scaling"]["llama_4_scaling_beta"] = 0.1
    with pytest.raises(RopeValueError, match="llama_4_scaling_beta"):
        from_hf(d)
    assert from_hf(d, allow_unknown=True).temperature is None
    # A model type nobody knows might apply it: never ignored.
    monkeypatch.setattr(models, "transformers_config_class", lambda model_type: None)
    d = {**to_hf(rope), "model_type": "my_model", "rope_interleave": False,
         "partial_rotary_factor": 1.0}  # fmt: skip
    with pytest.raises(RopeValueError, match="cannot tell"):
        from_hf(d, allow_unknown=True)
