"""The Hugging Face codec for RoPE configs: every Hugging Face key is read and written here.

:func:`from_hf` reads a ``transformers`` config object or a ``config.json`` dict in
either convention and returns a :class:`~ropekit.RopeConfig`; :func:`to_hf` writes one
back. Nothing else in ropekit knows Hugging Face key names (``rope_scaling``,
``rope_type: dynamic`` for static NTK, ``max_position_embeddings`` as dynamic NTK's
threshold, ...).

Conventions read:

* transformers 4.x: ``rope_theta`` and ``rope_scaling`` (``{"type" | "rope_type": ...}``)
  at the top level, ``partial_rotary_factor`` (Phi, StableLM), GPT-NeoX's ``rotary_pct``
  / ``rotary_emb_base``, Gemma 3's ``rope_local_base_freq``;
* transformers 5.x: ``rope_parameters`` (``{"rope_type", "rope_theta",
  "partial_rotary_factor", ...}``), possibly nested by layer type
  (``{"full_attention": {...}, "sliding_attention": {...}}``), ``per_layer_config``.

Defaults: a ``config.json`` leaves out whatever equals its model's defaults, so they are
resolved, never guessed (:mod:`ropekit.hf.models`): with transformers installed, from the
model type's own config class (the dict becomes that class's object, then the object is
read); without it, from a documented table, or a :class:`~ropekit.RopeValueError` naming
the missing key and the model type.

The rules follow transformers' own (``modeling_rope_utils``):

* head size: ``global_head_dim`` for full-attention layers (Gemma 4 dicts), else
  ``head_dim``, else ``qk_rope_head_dim`` (DeepSeek MLA), else ``hidden_size //
  num_attention_heads``; ``rotary_dim = int(head_dim * partial_rotary_factor)``;
* for ``llama3`` / ``yarn`` / ``longrope``, a top-level ``original_max_position_embeddings``
  (Phi-3) wins over the one in the RoPE dict, which defaults to ``max_position_embeddings``;
  a missing YaRN / LongRoPE ``factor`` is ``max_position_embeddings /
  original_max_position_embeddings``;
* legacy names: ``su`` (early Phi-3) and Phi-3's ``yarn`` mean ``longrope``; ``dynamic``
  with an ``alpha`` is static NTK (:class:`~ropekit.scaling.Ntk`);
* ``llama_4_scaling_beta`` (Mistral 4, Ministral 3): Llama 4's query temperature
  (:class:`~ropekit.frequencies.Llama4Temperature`, ``RopeConfig.temperature``).

Where ropekit is stricter than transformers, on purpose (transformers logs a warning, or
nothing, and computes something): every malformed value is a ``RopeValueError`` naming
the key, the value and what is allowed (bools and strings are not numbers); keys that
change the rotation are never ignored; multi-axis RoPE (M-RoPE, 2-D/3-D vision RoPE) is
refused by from_hf as not supported yet (``ropekit.hf.axes_from_hf`` reads the Qwen-VL ones); a config with one RoPE per layer type needs
``layer_type``; a ``factor`` other than 1 next to ``alpha`` is refused; an odd rotated
dimension is refused.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import RopeConfig
from ..errors import RopeValueError, check_bool, check_float, check_int, is_int, is_real
from ..frequencies.scaling import (
    MULTI_AXIS_KEYS,
    SCALINGS,
    Dynamic,
    Ntk,
    Plain,
    Proportional,
    Scaling,
)
from ..frequencies.temperature import Llama4Temperature
from . import models

__all__ = ["from_hf", "to_hf"]

#: ``rope_type`` as Hugging Face writes it, per ropekit method (identical unless listed).
_HF_NAMES: dict[str, str] = {"ntk": "dynamic"}

#: Hugging Face ``rope_parameters`` keys each method reads (besides the model-level
#: ``rope_type``, ``rope_theta`` and ``partial_rotary_factor``).
_METHOD_KEYS: dict[str, frozenset[str]] = {
    "default": frozenset(),
    "linear": frozenset({"factor"}),
    "dynamic": frozenset({"factor"}),
    "ntk": frozenset({"alpha", "factor"}),
    "yarn": frozenset(
        {
            "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
            "mscale_all_dim", "attention_factor", "truncate",
        }
    ),
    "llama3": frozenset(
        {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    ),
    "longrope": frozenset(
        {
            "short_factor", "long_factor", "original_max_position_embeddings", "factor",
            "attention_factor",
        }
    ),
    "proportional": frozenset({"factor"}),
}

#: Every parameter of transformers' RoPE types (its ``RopeParameters``), plus HunYuan's
#: ``alpha``. Under a rope type that does not read one of them, transformers ignores it:
#: these are the keys "known not to affect RoPE" that ``allow_unknown=True`` may drop.
_KNOWN_PARAMETERS: frozenset[str] = frozenset().union(*_METHOD_KEYS.values())

#: Model-level keys that live inside ``rope_parameters`` in transformers 5.x.
_MODEL_LEVEL = ("rope_type", "type", "rope_theta", "partial_rotary_factor")

#: Methods whose ``original_max_position_embeddings`` transformers fills in.
_WITH_ORIGINAL_CONTEXT = ("llama3", "yarn", "longrope")

#: Top-level integer keys (``>= 1``), real keys (``> 0``), fractions in ``(0, 1]`` and
#: bools: checked before anything else reads them (transformers' own config classes
#: divide by ``num_attention_heads`` and hash ``rope_type`` while building).
_INT_KEYS = ("hidden_size", "num_attention_heads", "head_dim", "qk_rope_head_dim",
             "global_head_dim", "max_position_embeddings", "original_max_position_embeddings")  # fmt: skip
_POSITIVE_KEYS = ("rope_theta", "rotary_emb_base", "rope_local_base_freq")
_FRACTION_KEYS = ("partial_rotary_factor", "rotary_pct")
_BOOL_KEYS = ("rope_interleave",)
#: The same inside a RoPE dict.
_ROPE_REAL_KEYS = ("factor", "alpha", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
                   "attention_factor", "low_freq_factor", "high_freq_factor",
                   "llama_4_scaling_beta")  # fmt: skip
_ROPE_INT_KEYS = ("original_max_position_embeddings", "max_position_embeddings")
_ROPE_LIST_KEYS = ("short_factor", "long_factor")


# --------------------------------------------------------------------------- values


def _check_fraction(name: str, value: Any) -> float:
    """``partial_rotary_factor``: a real number in ``(0, 1]``."""
    v = check_float(name, value, positive=True)
    if v > 1:
        raise RopeValueError(
            f"{name}={value!r} is not allowed: expected a fraction of the head in (0, 1]"
        )
    return v


def _check_name(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RopeValueError(
            f"{name}={value!r} is not allowed: expected a string, one of "
            f"{sorted({*SCALINGS, *_HF_NAMES.values()} - {'ntk'})}"
        )
    return value


def _check_rope_dict(params: Any, where: str) -> None:
    """Types of the values of one RoPE dict (ranges are the scaling classes' business)."""
    if not isinstance(params, Mapping):
        raise RopeValueError(f"{where}={params!r} is not allowed: expected a dict or null")
    for key, value in params.items():
        name = f"{where}[{key!r}]"
        if value is None:
            continue
        if key in ("rope_type", "type"):
            _check_name(name, value)
        elif key == "rope_theta":
            check_float(name, value, positive=True)
        elif key == "partial_rotary_factor":
            _check_fraction(name, value)
        elif key in _ROPE_REAL_KEYS:
            check_float(name, value)
        elif key in _ROPE_INT_KEYS:
            check_int(name, value, minimum=1)
        elif key == "truncate":
            check_bool(name, value)
        elif key in _ROPE_LIST_KEYS:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise RopeValueError(
                    f"{name}={value!r} is not allowed: expected a list of numbers"
                )
            for i, v in enumerate(value):
                check_float(f"{name}[{i}]", v, positive=True)


def _is_nested(params: Mapping[str, Any]) -> bool:
    return bool(params) and all(isinstance(v, Mapping) or v is None for v in params.values())


def _check_values(config: Mapping[str, Any], where: str = "") -> None:
    """Every RoPE-relevant value of a ``config.json`` dict (and of its ``text_config``)."""
    for key in _INT_KEYS:
        if config.get(key) is not None:
            check_int(where + key, config[key], minimum=1)
    for key in _POSITIVE_KEYS:
        if config.get(key) is not None:
            check_float(where + key, config[key], positive=True)
    for key in _FRACTION_KEYS:
        if config.get(key) is not None:
            _check_fraction(where + key, config[key])
    for key in _BOOL_KEYS:
        if config.get(key) is not None:
            check_bool(where + key, config[key])
    if config.get("model_type") is not None and not isinstance(config["model_type"], str):
        raise RopeValueError(
            f"{where}model_type={config['model_type']!r} is not allowed: expected a string"
        )
    for key in ("rope_parameters", "rope_scaling"):
        params = config.get(key)
        if params is None:
            continue
        if not isinstance(params, Mapping):
            raise RopeValueError(
                f"{where}{key}={params!r} is not allowed: expected a dict or null"
            )
        if _is_nested(params):
            for layer, sub in params.items():
                if sub is not None:
                    _check_rope_dict(sub, f"{where}{key}[{layer!r}]")
        else:
            _check_rope_dict(params, where + key)
    text = config.get("text_config")
    if isinstance(text, Mapping):
        _check_values(text, where + "text_config.")


# --------------------------------------------------------------------------- sources


class _Source:
    """Uniform ``get(key)`` over a config object or a ``config.json`` dict.

    For dicts, a key the file leaves out takes its model type's default (``defaults``,
    from :data:`ropekit.hf.models.MODEL_DEFAULTS`), the generic one when the dict names
    no model type, or raises :meth:`missing` when the model type is unknown.
    """

    def __init__(self, config: Any, *, defaults: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.is_dict = isinstance(config, Mapping)
        self.model_type = self.raw("model_type")
        if defaults is None and self.is_dict and self.model_type is None:
            defaults = models.GENERIC_DEFAULTS
        # None: a dict of a model type whose defaults ropekit does not know.
        self.defaults = defaults if self.is_dict else {}

    def raw(self, key: str) -> Any:
        """The value as written (``None`` when absent or null)."""
        if self.is_dict:
            return self.config.get(key)
        try:
            return getattr(self.config, key, None)
        except (AttributeError, RuntimeError, ValueError):
            # transformers 5.x raises for attributes that differ per layer (Gemma 4's
            # head_dim) when read from the global config.
            return None

    def default(self, key: str) -> Any:
        return None if not self.is_dict or self.defaults is None else self.defaults.get(key)

    def get(self, key: str) -> Any:
        value = self.raw(key)
        return self.default(key) if value is None else value

    def top(self, key: str) -> Any:
        """A top-level 4.x RoPE key (``rope_theta``, ``partial_rotary_factor``) as the
        model's class reads it: some read only their own spelling (GPT-NeoX reads
        ``rotary_emb_base`` / ``rotary_pct`` and ignores ``rope_theta``); generically,
        the standard name, else GPT-NeoX's."""
        own = (self.defaults or {}).get("_4x_keys", {}).get(key) if self.is_dict else None
        if own is not None:
            return self.raw(own)
        value = self.raw(key)
        if value is None:
            value = self.raw({"rope_theta": "rotary_emb_base", "partial_rotary_factor":
                              "rotary_pct"}[key])  # fmt: skip
        return value

    def missing(self, key: str, why: str) -> RopeValueError:
        return RopeValueError(
            f"missing required config key {key!r} for model_type={self.model_type!r} ({why}): "
            "its default is that of the model's config class, which neither transformers "
            "(not installed, or not knowing this model type) nor ropekit's table "
            "(ropekit.hf.models.MODEL_DEFAULTS) provides; expected the key in the config"
        )

    def view(self, config: Any) -> _Source:
        """The same kind of source over another config (a per-layer view)."""
        out = _Source(config, defaults=self.defaults if self.is_dict else None)
        out.model_type = self.model_type
        return out


def _text_part(config: Any) -> Any:
    """The language-model part of a (possibly multimodal) config."""
    if isinstance(config, Mapping):
        has_rope = any(
            k in config for k in ("rope_parameters", "rope_scaling", "rope_theta", "hidden_size")
        )
        text = config.get("text_config")
        return text if not has_rope and isinstance(text, Mapping) else config
    get_text_config = getattr(config, "get_text_config", None)
    if callable(get_text_config):
        try:
            return get_text_config()
        except (ValueError, AttributeError):  # several text configs (MusicGen): the config
            return config
    return config


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into the Python numbers they are (transformers'
    strict config classes refuse ``np.int64(32)`` where they expect an int)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if is_int(value):
        return int(value)
    if is_real(value):
        return float(value)
    return value


def _object_from_dict(cls: type, config: Mapping[str, Any]) -> Any:
    """transformers' own config object for a ``config.json`` dict (what from_pretrained
    builds), so that every per-model default and conversion is transformers' own."""
    try:
        return cls.from_dict(_plain(copy.deepcopy(dict(config))))
    except Exception as e:  # transformers' classes raise many types (strict dataclasses)
        raise RopeValueError(
            f"this config is not allowed: transformers' {cls.__name__} (model_type="
            f"{config.get('model_type')!r}) refused it: {type(e).__name__}: {e}"
        ) from None


# --------------------------------------------------------------------------- layers


def _multi_axis_error(what: str) -> RopeValueError:
    return RopeValueError(
        f"{what} is not supported yet by from_hf: this model's rotary embedding is "
        "multi-axis (M-RoPE or 2-D/3-D RoPE, one position per axis), which a 1-D RopeConfig "
        "cannot describe (reading it as 1-D RoPE would give wrong rotations for image and "
        "video tokens); Qwen2-VL, Qwen2.5-VL and Qwen3-VL are read by "
        "ropekit.hf.axes_from_hf as a ropekit.axes.AxesConfig"
    )


def _refuse_multi_axis(source: _Source, top: Any) -> None:
    """Refuse what ropekit cannot express: multi-axis RoPE, and the rotations listed in
    :data:`ropekit.hf.models.UNSUPPORTED_MODEL_TYPES`."""
    for model_type in {source.model_type, _Source(top).model_type} - {None}:
        if model_type in models.MULTI_AXIS_MODEL_TYPES:
            raise _multi_axis_error(f"model_type={model_type!r}")
        if model_type in models.UNSUPPORTED_MODEL_TYPES:
            raise RopeValueError(
                f"model_type={model_type!r} is not supported: "
                f"{models.UNSUPPORTED_MODEL_TYPES[model_type]}"
            )
    if not source.is_dict:
        ignored = set(getattr(type(source.config), "ignore_keys_at_rope_validation", None) or ())
        if ignored & MULTI_AXIS_KEYS:
            raise _multi_axis_error(
                f"model_type={source.model_type!r} (its config class reads "
                f"{sorted(ignored & MULTI_AXIS_KEYS)})"
            )


def _layer_view(source: _Source, layer_type: str) -> _Source:
    """The config as seen by layers of ``layer_type`` (transformers 5.x ``per_layer_config``).

    Objects resolve it themselves (``config.per_layer_config[layer_type]``); their
    ``to_dict()`` writes per-layer overrides keyed by layer index (Gemma 4:
    ``{"05": {"head_dim": 512}, ...}``), which must agree for all layers of the type.
    """
    per_layer = source.raw("per_layer_config")
    if per_layer is None:
        return source
    if not source.is_dict:
        try:
            return source.view(per_layer[layer_type])
        except (KeyError, ValueError, TypeError, IndexError):
            return source
    layer_types = source.raw("layer_types")
    if not isinstance(per_layer, Mapping) or not layer_types:
        return source
    by_index = {int(k): v for k, v in per_layer.items() if str(k).isdigit()}
    overrides = [by_index.get(i) or {} for i, t in enumerate(layer_types) if t == layer_type]
    if any(o != overrides[0] for o in overrides):
        raise RopeValueError(
            f"layer_type={layer_type!r} is not allowed: its layers have different "
            "per_layer_config overrides (one RoPE per layer type is expected)"
        )
    return source.view({**source.config, **overrides[0]}) if overrides else source


def _declared_layer_types(source: _Source) -> list[str]:
    declared = source.raw("layer_types")
    if isinstance(declared, (list, tuple)):
        return sorted({t for t in declared if isinstance(t, str)})
    return []


def _select(
    source: _Source, raw: Mapping[str, Any], layer_type: str | None
) -> tuple[dict[str, Any], str | None, bool]:
    """``(params, layer_type, nested)``: one layer type's RoPE dict.

    A config with one RoPE per layer type (nested ``rope_parameters``, or a 4.x Gemma 3
    file with ``rope_local_base_freq``) needs ``layer_type``: picking one silently would
    give the other layers' RoPE to whoever asked for "the" RoPE.
    """
    if _is_nested(raw):
        choices = sorted(raw)
        if layer_type is None:
            if len(choices) != 1:
                raise RopeValueError(
                    "layer_type=None is not allowed: this config has one RoPE per layer type, "
                    f"expected one of {choices}"
                )
            layer_type = choices[0]
        if layer_type not in raw:
            raise RopeValueError(
                f"layer_type={layer_type!r} is not allowed: expected one of {choices}"
            )
        chosen = raw[layer_type]
        if chosen is None:
            raise RopeValueError(
                f"layer_type={layer_type!r} has no RoPE (its rope_parameters is null)"
            )
        return dict(chosen), layer_type, True
    declared = _declared_layer_types(source)
    if layer_type is not None and declared and layer_type not in declared:
        raise RopeValueError(f"layer_type={layer_type!r} is not allowed: expected one of {declared}")
    if _has_local_base(source) and layer_type is None:
        raise RopeValueError(
            "layer_type=None is not allowed: this config has one RoPE per layer type "
            "(rope_local_base_freq for sliding-window layers), expected one of "
            f"{declared or ['full_attention', 'sliding_attention']}"
        )
    return dict(raw), layer_type, False


def _has_local_base(source: _Source) -> bool:
    """A flat 4.x config with Gemma 3's separate base for its sliding-window layers."""
    if source.raw("rope_local_base_freq") is not None:
        return True
    default = source.default("rope_parameters") if source.is_dict else None
    return (
        isinstance(default, Mapping)
        and _is_nested(default)
        and source.raw("rope_parameters") is None
    )


# --------------------------------------------------------------------------- reading


def _head_dim(source: _Source, layer_type: str | None) -> int:
    """The head size transformers' rotary modules use for this layer type."""
    if layer_type == "full_attention" and source.raw("global_head_dim") is not None:
        return check_int("global_head_dim", source.raw("global_head_dim"), minimum=2)
    for key in ("head_dim", "qk_rope_head_dim"):
        value = source.raw(key)
        if value is not None:
            return check_int(key, value, minimum=2)
    for key in ("head_dim", "qk_rope_head_dim"):
        if source.default(key) is not None:
            return check_int(key, source.default(key), minimum=2)
    if source.is_dict and source.defaults is None:
        # A model's class may fix head_dim (Qwen3: 128) or derive it from other keys
        # (JetMoE: kv_channels); hidden_size // num_attention_heads would be a guess.
        raise source.missing("head_dim", "the head size")
    hidden, heads = source.get("hidden_size"), source.get("num_attention_heads")
    if hidden is None or heads is None:
        raise RopeValueError(
            "missing required config key(s): expected 'head_dim', or 'hidden_size' and "
            "'num_attention_heads'"
        )
    hidden = check_int("hidden_size", hidden, minimum=1)
    heads = check_int("num_attention_heads", heads, minimum=1)
    return check_int("hidden_size // num_attention_heads", hidden // heads, minimum=2)


def _theta(
    source: _Source, params: dict[str, Any], layer_type: str | None, local: bool
) -> float:
    """The base: the RoPE dict's, else the top-level 4.x keys, else the model's default.

    ``local``: a 4.x Gemma 3 sliding-window layer, whose base is ``rope_local_base_freq``
    (or the model's default sliding-window base), never the global ``rope_theta``.
    """
    theta = params.pop("rope_theta", None)
    if theta is None and local:
        theta = source.raw("rope_local_base_freq")  # Gemma 3, transformers 4.x
    if theta is None and not local:
        theta = source.top("rope_theta")  # 4.x; GPT-NeoX: rotary_emb_base
    if theta is None:
        default = source.default("rope_parameters")
        if isinstance(default, Mapping) and _is_nested(default) and layer_type in default:
            default = default[layer_type]
        if isinstance(default, Mapping) and default.get("rope_theta") is not None:
            theta = default["rope_theta"]
        elif source.default("rope_theta") is not None:
            theta = source.default("rope_theta")
    if theta is None and not source.is_dict:
        default = source.raw("default_theta")
        theta = default if is_real(default) else models.GENERIC_DEFAULTS["rope_theta"]
    if theta is None:
        raise source.missing("rope_theta", "the RoPE base")
    return check_float("rope_theta", theta, positive=True)


def _partial(source: _Source, params: dict[str, Any]) -> float | None:
    partial = params.pop("partial_rotary_factor", None)
    if partial is None:
        partial = source.top("partial_rotary_factor")  # 4.x; GPT-NeoX: rotary_pct
    if partial is None and source.is_dict:
        default = source.default("rope_parameters")
        if isinstance(default, Mapping) and not _is_nested(default):
            partial = default.get("partial_rotary_factor", 1.0)
        elif source.defaults is not None:
            partial = source.defaults.get("partial_rotary_factor", 1.0)
        else:
            raise source.missing("partial_rotary_factor", "the rotated fraction of the head")
    return None if partial is None else _check_fraction("partial_rotary_factor", partial)


def _method_name(params: dict[str, Any], model_type: Any) -> str:
    # ``type`` is the 4.x spelling; with both, transformers reads ``rope_type`` (its
    # standardisation keeps a stale ``type`` after converting Phi-3's legacy names).
    names = [_check_name(k, params.pop(k)) for k in ("rope_type", "type") if params.get(k)]
    params.pop("rope_type", None)
    params.pop("type", None)
    name = names[0] if names else "default"
    if name == "su" or (model_type == "phi3" and name == "yarn"):
        return "longrope"  # Phi-3's pre-release names (transformers converts them too)
    if name == "dynamic" and params.get("alpha") is not None:
        return "ntk"
    if name in ("axial", "mrope"):
        raise _multi_axis_error(f"rope_type={name!r}")
    if name not in SCALINGS or name == "ntk":
        raise RopeValueError(
            f"rope_type={name!r} is not allowed: expected one of "
            f"{sorted({*SCALINGS, *_HF_NAMES.values()} - {'ntk'})}"
        )
    return name


def _sinusoidal(
    source: _Source, theta: float, head_dim: int, name: str
) -> tuple[float, int | None]:
    """GPT-J / CodeGen: ``(theta, rotary_dim)`` from their own keys.

    Their tables are ``create_sinusoidal_positions(max_positions, rotary_dim)`` with the
    base fixed at 10000, and their attention rotates the first ``rotary_dim`` lanes.
    """
    mt = source.model_type
    if name != "default" or theta != 10000.0:
        raise RopeValueError(
            f"model_type={mt!r} is not allowed with rope_theta={theta!r} or rope_type="
            f"{name!r}: its sinusoidal tables always use base 10000 without scaling "
            "(transformers ignores these keys), expected neither"
        )
    rotary = source.get("rotary_dim")
    if rotary is None:
        raise RopeValueError(
            f"rotary_dim=None is not supported for model_type={mt!r}: transformers then "
            "builds tables over hidden_size lanes for heads of head_dim lanes; expected "
            "an int rotary_dim"
        )
    rotary = check_int("rotary_dim", rotary, minimum=2)
    if rotary > head_dim:
        raise RopeValueError(
            f"rotary_dim={rotary} is not allowed with head_dim={head_dim}: expected "
            "rotary_dim <= head_dim"
        )
    return 10000.0, None if rotary == head_dim else rotary


def _model_type_known(source: _Source) -> bool:
    """Whether the model type's modeling code is known (to transformers or ropekit)."""
    mt = source.model_type
    return (
        mt in models.MODEL_DEFAULTS
        or mt in models.MULTI_AXIS_MODEL_TYPES
        or models.transformers_config_class(mt) is not None
    )


def _temperature(
    source: _Source, params: dict[str, Any], allow_unknown: bool
) -> Llama4Temperature | None:
    """``llama_4_scaling_beta``: Llama 4's query temperature, for the models that apply it.

    Mistral 4 and Ministral 3 multiply queries by ``1 + beta ln(1 + floor(m / L))`` with
    ``L = rope_parameters["original_max_position_embeddings"]``; a dict without
    ``model_type`` (ropekit's own output) is read the same way. For any other model type
    transformers never reads the key.
    """
    beta = params.pop("llama_4_scaling_beta", None)
    if beta is None:
        return None
    mt = source.model_type
    if mt is None or mt in models.LLAMA4_TEMPERATURE_MODEL_TYPES:
        omp = params.get("original_max_position_embeddings")
        if omp is None:
            raise RopeValueError(
                f"llama_4_scaling_beta={beta!r} needs rope_parameters"
                "['original_max_position_embeddings'] (the length L of the temperature's "
                "steps 1 + beta ln(1 + floor(m / L))): expected it in the RoPE dict"
            )
        return Llama4Temperature(beta, omp)
    if not _model_type_known(source):
        raise RopeValueError(
            f"rope_parameters key 'llama_4_scaling_beta' is not allowed for model_type={mt!r}: "
            "ropekit cannot tell whether this model applies Llama 4's attention temperature "
            f"(known to: {sorted(models.LLAMA4_TEMPERATURE_MODEL_TYPES)}), so it never "
            "ignores it; expected a known model type, or the key removed"
        )
    if not allow_unknown:
        raise RopeValueError(
            f"rope_parameters key 'llama_4_scaling_beta' is not allowed for model_type={mt!r}: "
            f"transformers applies it only for {sorted(models.LLAMA4_TEMPERATURE_MODEL_TYPES)} "
            "and ignores it here (pass allow_unknown=True to ignore it as well)"
        )
    return None


def _check_keys(name: str, params: dict[str, Any], allow_unknown: bool) -> None:
    """Refuse keys the method does not read: always those that may change the rotation,
    and those transformers ignores unless ``allow_unknown``."""
    extra = set(params) - _METHOD_KEYS[name]
    multi_axis = sorted(extra & MULTI_AXIS_KEYS)
    if multi_axis:
        raise _multi_axis_error(f"rope_parameters key(s) {multi_axis}")
    unknowable = sorted(extra - _KNOWN_PARAMETERS)
    if unknowable:
        raise RopeValueError(
            f"unknown rope_parameters key(s) {unknowable} for rope_type="
            f"{_HF_NAMES.get(name, name)!r}: ropekit cannot tell whether they change the "
            "rotation, so it never ignores them (allow_unknown=True ignores only keys known "
            "not to affect RoPE: parameters of other rope types); expected some of "
            f"{sorted(_METHOD_KEYS[name])}"
        )
    inert = sorted(extra)
    if inert and not allow_unknown:
        raise RopeValueError(
            f"rope_parameters key(s) {inert} are not allowed for rope_type="
            f"{_HF_NAMES.get(name, name)!r}: transformers does not read them for this type "
            f"(expected some of {sorted(_METHOD_KEYS[name])}; pass allow_unknown=True to "
            "ignore keys that do not affect RoPE)"
        )
    for key in inert:
        del params[key]


def _build(cls: type[Scaling], fields: dict[str, Any]) -> Scaling:
    """``cls(**fields)`` with ropekit's error for missing required keys."""
    fields = {k: v for k, v in fields.items() if v is not None}
    required = sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in fields
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if required:
        raise RopeValueError(
            f"missing required rope_parameters key(s) {required} for rope_type="
            f"{_HF_NAMES.get(cls.name, cls.name)!r}"
        )
    return cls(**fields)


def _method(
    name: str, params: dict[str, Any], max_position: int | None, partial: float | None
) -> Scaling:
    """The scaling method for Hugging Face ``params`` (the method's keys only)."""
    if name == "default":
        return Plain()
    if name in ("yarn", "longrope") and params.get("factor") is None:
        # transformers' default (YaRN as in DeepSeek-V3, LongRoPE as in Phi-3): the ratio
        # of the extended to the original context.
        omp = params.get("original_max_position_embeddings")
        if max_position is not None and omp:
            params["factor"] = max_position / check_int(
                "original_max_position_embeddings", omp, minimum=1
            )
    if name == "ntk":
        # HunYuan configs carry ``factor: 1.0`` next to ``alpha``; transformers ignores any
        # factor there, so accept only the value that means "no effect".
        factor = params.pop("factor", None)
        if factor is not None and factor != 1:
            raise RopeValueError(
                f"factor={factor!r} is not allowed next to alpha: expected 1.0 or no factor "
                "(static NTK scaling is set by alpha alone; transformers ignores factor here)"
            )
    if name == "dynamic":
        # transformers reads the threshold from the model's max_position_embeddings.
        if max_position is None:
            raise RopeValueError(
                "missing required config key 'max_position_embeddings' for rope_type='dynamic' "
                "(the length up to which dynamic NTK is plain RoPE)"
            )
        params["max_position"] = max_position
    if name == "proportional" and partial is not None:
        params["partial_rotary_factor"] = partial
    return _build(SCALINGS[name], params)


def _default_rope(source: _Source, default: Mapping[str, Any]) -> dict[str, Any]:
    """The model's default ``rope_parameters`` for a file that has none, with the file's
    own 4.x keys winning over the defaults' (as transformers sets them: a top-level
    ``rope_theta`` replaces the default base; for one-RoPE-per-layer-type models it is the
    full-attention base and ``rope_local_base_freq`` the sliding-window one)."""
    raw = copy.deepcopy(dict(default))
    theta = source.top("rope_theta")
    if _is_nested(raw):
        for layer, key in (("full_attention", theta), ("sliding_attention", None)):
            value = key if layer == "full_attention" else source.raw("rope_local_base_freq")
            if value is not None and isinstance(raw.get(layer), dict):
                raw[layer]["rope_theta"] = value
        return raw
    if theta is not None:
        raw.pop("rope_theta", None)
    if source.top("partial_rotary_factor") is not None:
        raw.pop("partial_rotary_factor", None)
    return raw


#: Attributes of a transformers config object that say it has a rotary embedding.
_ROPE_ATTRIBUTES = ("rope_parameters", "rope_scaling", "rope_theta", "rotary_emb_base")


def _refuse_without_rope(source: _Source) -> None:
    """A config object with none of the RoPE attributes belongs to a model without RoPE
    (vision towers with learned positions, audio encoders, mask decoders): reading
    generic defaults from it would invent a RoPE the model does not have."""
    # Models with a switch build their rotary module only for one value of it (ESM's
    # position_embedding_type "rotary", default "absolute"; Zamba2's use_mem_rope).
    switch = models.ROPE_SWITCH_MODEL_TYPES.get(source.model_type)
    if switch is not None and source.raw(switch[0]) != switch[1]:
        raise RopeValueError(
            f"{switch[0]}={source.raw(switch[0])!r} is not allowed for model_type="
            f"{source.model_type!r}: the model then builds no rotary embedding (expected "
            f"{switch[0]}={switch[1]!r})"
        )
    kind = source.raw("position_embedding_type")
    if switch is None and kind is not None and kind not in ("rotary", "rope"):
        raise RopeValueError(
            f"position_embedding_type={kind!r} is not allowed: the model then uses no RoPE "
            "(expected 'rotary' or 'rope')"
        )
    if source.is_dict or source.model_type in models.SINUSOIDAL_MODEL_TYPES:
        return
    if not any(source.raw(key) for key in _ROPE_ATTRIBUTES):
        raise RopeValueError(
            f"config of model_type={source.model_type!r} ({type(source.config).__name__}) is "
            "not allowed: it has no RoPE parameters (no rope_parameters, rope_scaling or "
            "rope_theta), expected the config of a model with a rotary embedding"
        )


def _read(source: _Source, top: Any, layer_type: str | None, allow_unknown: bool) -> RopeConfig:
    _refuse_multi_axis(source, top)
    _refuse_without_rope(source)
    if layer_type is not None:
        source = _layer_view(source, layer_type)
    model_type = source.model_type

    raw = source.raw("rope_parameters")
    scaling_4x = source.raw("rope_scaling") if source.is_dict else None
    if raw is not None and scaling_4x is not None:
        raise RopeValueError(
            "rope_parameters and rope_scaling are not allowed together: expected one of them "
            "(rope_scaling is the transformers 4.x name)"
        )
    if raw is None:
        raw = scaling_4x if source.is_dict else source.raw("rope_scaling")
    if raw is None and source.is_dict:
        default = source.default("rope_parameters")
        if isinstance(default, Mapping):
            raw = _default_rope(source, default)  # the model's default RoPE (gpt-oss: YaRN)
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise RopeValueError(f"rope_parameters={raw!r} is not allowed: expected a dict or null")
    if _is_nested(raw):
        for key, sub in raw.items():
            if sub is not None:
                _check_rope_dict(sub, f"rope_parameters[{key!r}]")
    else:
        _check_rope_dict(raw, "rope_parameters")
    params, layer_type, nested = _select(source, raw, layer_type)
    local = not nested and layer_type == "sliding_attention" and _has_local_base(source)
    if local:
        params = {}  # 4.x Gemma 3 applies rope_scaling to its global layers only
    params = {k: v for k, v in params.items() if v is not None}  # null means "not set"

    theta = _theta(source, params, layer_type, local)
    partial = _partial(source, params)
    name = _method_name(params, model_type)
    head_dim = _head_dim(source, layer_type)

    max_position = source.get("max_position_embeddings")
    if max_position is not None:
        max_position = check_int("max_position_embeddings", max_position, minimum=1)
    inner = params.pop("max_position_embeddings", None)
    if inner is not None and max_position is not None and inner != max_position:
        # Mistral 4 / Ministral 3 copy the context into rope_parameters; transformers never
        # reads that copy, so two different values mean a broken file.
        raise RopeValueError(
            f"rope_parameters['max_position_embeddings']={inner!r} is not allowed with "
            f"max_position_embeddings={max_position!r}: expected equal values (transformers "
            "reads only the top-level one)"
        )
    if max_position is None and inner is not None:
        max_position = check_int("rope_parameters['max_position_embeddings']", inner, minimum=1)

    if name in _WITH_ORIGINAL_CONTEXT:
        top_omp = source.get("original_max_position_embeddings")
        if top_omp is not None:
            params["original_max_position_embeddings"] = top_omp
        elif params.get("original_max_position_embeddings") is None and max_position is not None:
            params["original_max_position_embeddings"] = max_position

    temperature = _temperature(source, params, allow_unknown)
    _check_keys(name, params, allow_unknown)

    rotary_dim = None
    if model_type in models.SINUSOIDAL_MODEL_TYPES:
        theta, rotary_dim = _sinusoidal(source, theta, head_dim, name)
        partial = None
    elif name != "proportional" and partial is not None:
        dim = int(head_dim * partial)  # transformers truncates
        if dim != head_dim:
            if dim < 2 or dim % 2:
                raise RopeValueError(
                    f"partial_rotary_factor={partial!r} is not allowed with head_dim={head_dim}: "
                    f"it rotates int({head_dim} * {partial!r}) = {dim} lanes, expected an even "
                    "number >= 2 (lanes rotate in pairs)"
                )
            rotary_dim = dim
    if rotary_dim is None and head_dim % 2 and head_dim > 4:
        raise RopeValueError(
            f"head_dim={head_dim} is not allowed for a fully rotated Hugging Face model: "
            "expected an even rotary dimension (transformers rejects it as well)"
        )
    scaling = _method(name, params, max_position, partial)

    interleaved = source.raw("rope_interleave")
    if model_type in models.PAIRED_MODEL_TYPES:
        # The modeling code pairs (2i, 2i + 1) whatever the config says.
        if interleaved is False:
            raise RopeValueError(
                f"rope_interleave=False is not allowed for model_type={model_type!r}: its "
                "attention always rotates pairs (2i, 2i + 1) (transformers ignores the key)"
            )
        interleaved = True
    if interleaved is None and source.is_dict:
        if source.defaults is None:
            raise source.missing("rope_interleave", "whether pairs are (2i, 2i + 1)")
        interleaved = source.defaults.get("rope_interleave")
    if interleaved is None:
        interleaved = model_type in models.INTERLEAVED_MODEL_TYPES
    return RopeConfig(
        head_dim=head_dim,
        theta=theta,
        rotary_dim=rotary_dim,
        interleaved=check_bool("rope_interleave", interleaved),
        scaling=scaling,
        max_position=max_position,
        temperature=temperature,
    )


def from_hf(
    config: Any, *, layer_type: str | None = None, allow_unknown: bool = False
) -> RopeConfig:
    """A :class:`~ropekit.RopeConfig` from a Hugging Face config object or ``config.json`` dict.

    Args:
        config: a ``transformers`` ``PretrainedConfig`` (4.x or 5.x) or the dict of a
            ``config.json`` (either convention). A dict whose ``model_type`` transformers
            knows is turned into that model's config object first (so per-model defaults
            are transformers' own); see :mod:`ropekit.hf.models`.
        layer_type: for configs with one RoPE per layer type (Gemma 3:
            ``"full_attention"`` / ``"sliding_attention"``), which one to read; required
            for them, dict or object alike.
        allow_unknown: ignore RoPE keys known not to affect RoPE (parameters of other
            rope types, which transformers ignores; ``llama_4_scaling_beta`` on a model
            that does not apply it). Keys that may change the rotation are never ignored.

    Raises:
        RopeValueError: unknown method or keys, missing required keys, malformed values
            (naming the key, the value and what is allowed), multi-axis RoPE ("not
            supported yet").
    """
    if not isinstance(allow_unknown, bool):
        raise RopeValueError(f"allow_unknown={allow_unknown!r} is not allowed: expected a bool")
    if layer_type is not None and not isinstance(layer_type, str):
        raise RopeValueError(
            f"layer_type={layer_type!r} is not allowed: expected None or a layer type string"
        )
    if isinstance(config, Mapping):
        text = _text_part(config)
        for part in (config, text):
            mt = part.get("model_type")
            if isinstance(mt, str) and mt in models.MULTI_AXIS_MODEL_TYPES:
                raise _multi_axis_error(f"model_type={mt!r}")
        _check_values(config)
        cls = models.transformers_config_class(config.get("model_type"))
        if cls is not None:
            obj = _object_from_dict(cls, config)
            return _read(_Source(_text_part(obj)), obj, layer_type, allow_unknown)
        text_type = text.get("model_type")
        defaults = models.MODEL_DEFAULTS.get(text_type) if isinstance(text_type, str) else None
        return _read(_Source(text, defaults=defaults), config, layer_type, allow_unknown)
    return _read(_Source(_text_part(config)), config, layer_type, allow_unknown)


# --------------------------------------------------------------------------- writing


def _method_to_hf(method: Scaling) -> dict[str, Any]:
    """The method's ``rope_parameters`` entries, ``rope_type`` included."""
    if isinstance(method, Ntk):
        # transformers requires a factor for rope_type "dynamic"; 1.0 is the inert value.
        return {"rope_type": "dynamic", "alpha": method.alpha, "factor": 1.0}
    if isinstance(method, Dynamic) and method.fixed_length is not None:
        raise RopeValueError(
            f"fixed_length={method.fixed_length} has no Hugging Face equivalent: expected "
            "fixed_length=None to export dynamic NTK scaling"
        )
    out: dict[str, Any] = {"rope_type": _HF_NAMES.get(method.name, method.name)}
    for key, value in dataclasses.asdict(method).items():
        if isinstance(method, Dynamic) and key in ("max_position", "fixed_length"):
            continue  # written as the config's max_position_embeddings
        if value is not None:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def to_hf(config: RopeConfig, *, version: int = 5) -> dict[str, Any]:
    """The RoPE keys of a Hugging Face ``config.json`` for ``config``.

    ``version=5`` writes ``rope_parameters`` (transformers 5.x); ``version=4`` writes
    ``rope_theta``, ``partial_rotary_factor`` and ``rope_scaling`` (transformers 4.x).
    ``head_dim`` and ``max_position_embeddings`` are always written, ``rope_interleave``
    when the config is interleaved, ``llama_4_scaling_beta`` (with the
    ``original_max_position_embeddings`` it steps by) when it has a temperature. Every
    key is explicit, so nothing is left to a model's defaults, and the dict names no
    ``model_type``: ``from_hf(to_hf(config)) == config``.

    Raises:
        RopeValueError: for settings Hugging Face configs cannot express.
    """
    if not isinstance(config, RopeConfig):
        raise RopeValueError(f"config={config!r} is not allowed: expected a ropekit.RopeConfig")
    if version not in (4, 5) or isinstance(version, bool):
        raise RopeValueError(f"version={version!r} is not allowed: expected 4 or 5")
    method = config.scaling
    model: dict[str, Any] = {"rope_theta": config.theta}
    if config.rotary_dim is not None:
        fraction = config.rotary_dim / config.head_dim
        if int(config.head_dim * fraction) != config.rotary_dim:
            raise RopeValueError(
                f"rotary_dim={config.rotary_dim} cannot be written as a partial_rotary_factor "
                f"of head_dim={config.head_dim} that transformers reads back exactly"
            )
        model["partial_rotary_factor"] = fraction
    method_params = _method_to_hf(method)
    if isinstance(method, Proportional):
        if config.rotary_dim is not None:
            raise RopeValueError(
                f"rotary_dim={config.rotary_dim} is not allowed with proportional scaling in a "
                "Hugging Face config: expected rotary_dim=None (the method's "
                "partial_rotary_factor is written instead)"
            )
        model["partial_rotary_factor"] = method_params.pop("partial_rotary_factor")
    if config.temperature is not None:
        omp = method_params.get("original_max_position_embeddings")
        steps = config.temperature.original_max_position_embeddings
        if omp is not None and omp != steps:
            raise RopeValueError(
                f"temperature steps of {steps} positions cannot be written with "
                f"original_max_position_embeddings={omp}: transformers reads both from that "
                "one key, expected them equal"
            )
        method_params["original_max_position_embeddings"] = steps
        method_params["llama_4_scaling_beta"] = config.temperature.beta

    out: dict[str, Any] = {"head_dim": config.head_dim}
    max_position = config.max_position
    if isinstance(method, Dynamic):
        if max_position is not None and max_position != method.max_position:
            raise RopeValueError(
                f"max_position={max_position} differs from the dynamic scaling's "
                f"max_position={method.max_position}: transformers reads both from "
                "max_position_embeddings, expected them equal"
            )
        max_position = method.max_position
    if max_position is not None:
        out["max_position_embeddings"] = max_position
    if config.interleaved:
        out["rope_interleave"] = True

    if version == 5:
        rope_type = method_params.pop("rope_type")
        out["rope_parameters"] = {"rope_type": rope_type, **model, **method_params}
    else:
        out.update(model)
        default = isinstance(method, Plain) and config.temperature is None
        out["rope_scaling"] = None if default else method_params
    return out

