"""Reading and writing the RoPE part of Hugging Face model configs.

:func:`from_hf` accepts a ``transformers`` config object (never imported here: it is
read through its attributes) or a plain ``config.json`` dict, in either convention:

* transformers 4.x: ``rope_theta`` and ``rope_scaling`` (``{"type" | "rope_type": ..., ...}``)
  at the top level, ``partial_rotary_factor`` (Phi, StableLM), or GPT-NeoX's
  ``rotary_pct`` / ``rotary_emb_base``;
* transformers 5.x: ``rope_parameters`` (``{"rope_type", "rope_theta",
  "partial_rotary_factor", ...}``), possibly nested by layer type
  (``{"full_attention": {...}, "sliding_attention": {...}}``, Gemma 3/4).

The head size is ``head_dim`` if set, else ``qk_rope_head_dim`` (DeepSeek MLA), else
``hidden_size // num_attention_heads``. Multimodal configs are read from their
``text_config``.

The rules follow transformers' own (``modeling_rope_utils``), in particular:

* ``rotary_dim = int(head_dim * partial_rotary_factor)`` (truncating);
* for ``llama3``/``yarn``/``longrope``, a top-level ``original_max_position_embeddings``
  (Phi-3) takes priority over the one in the RoPE dict, which defaults to
  ``max_position_embeddings``;
* legacy names: ``"su"`` (early Phi-3) and Phi-3's ``"yarn"`` mean ``longrope``;
  ``"dynamic"`` with an ``alpha`` means static NTK (:class:`~ropekit.frequencies.scaling.Ntk`).

Unlike transformers, unknown keys in the RoPE dict are an error (transformers only logs
a warning and ignores them); ``allow_unknown=True`` restores the lenient behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import RopeValueError, check_int
from ..frequencies.scaling import SCALINGS, Dynamic, Proportional, Scaling

if TYPE_CHECKING:
    from ..config import RopeConfig

__all__ = ["from_hf", "to_hf"]

#: transformers' default base when a config has none (``PreTrainedConfig.default_theta``).
DEFAULT_THETA = 10000.0
#: Model-level keys that live inside ``rope_parameters`` in transformers 5.x.
_MODEL_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")
#: Families whose transformers config defaults to ``rope_interleave=True`` (DeepSeek MLA and
#: its descendants rotate pairs ``(2i, 2i + 1)``); ``rope_interleave`` itself wins if set.
_INTERLEAVED_MODEL_TYPES = frozenset(
    {"deepseek_v2", "deepseek_v3", "glm4_moe_lite", "mistral4", "sarvam_mla", "youtu", "axk1"}
)
#: Methods whose ``original_max_position_embeddings`` transformers fills in.
_WITH_ORIGINAL_CONTEXT = ("llama3", "yarn", "longrope")


class _Reader:
    """Uniform ``get(key)`` over a ``config.json`` dict or a transformers config object."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.is_dict = isinstance(config, Mapping)

    def get(self, key: str) -> Any:
        if self.is_dict:
            return self.config.get(key)
        try:
            return getattr(self.config, key, None)
        except (AttributeError, RuntimeError):
            # transformers 5.x raises RuntimeError for attributes that differ per layer
            # (e.g. Gemma 4's head_dim) when read from the global config.
            return None


def _text_config(config: Any) -> Any:
    """The language-model part of a (possibly multimodal) config."""
    if isinstance(config, Mapping):
        has_rope = any(
            k in config for k in ("rope_parameters", "rope_scaling", "rope_theta", "hidden_size")
        )
        text = config.get("text_config")
        return text if not has_rope and isinstance(text, Mapping) else config
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


def _select_layer(
    params: dict[str, Any], reader: _Reader, layer_type: str | None
) -> tuple[dict[str, Any], bool]:
    """Pick one layer type's RoPE dict from a nested ``rope_parameters``.

    Returns ``(params, nested)``.
    """
    nested_keys = [k for k, v in params.items() if isinstance(v, Mapping) or v is None]
    declared = reader.get("layer_types")
    is_nested = bool(params) and len(nested_keys) == len(params)
    if not is_nested:
        if layer_type is not None and declared is not None and layer_type not in declared:
            raise RopeValueError(
                f"layer_type={layer_type!r} is not allowed: expected one of {sorted(set(declared))}"
            )
        return params, False
    if layer_type is None:
        if len(nested_keys) != 1:
            raise RopeValueError(
                f"layer_type=None is not allowed: this config has one RoPE per layer type, "
                f"expected one of {sorted(nested_keys)}"
            )
        layer_type = nested_keys[0]
    if layer_type not in params:
        raise RopeValueError(
            f"layer_type={layer_type!r} is not allowed: expected one of {sorted(nested_keys)}"
        )
    chosen = params[layer_type]
    if chosen is None:
        raise RopeValueError(f"layer_type={layer_type!r} has no RoPE (rope_parameters is null)")
    return dict(chosen), True


def _layer_view(reader: _Reader, layer_type: str) -> _Reader:
    """The config as seen by layers of ``layer_type`` (transformers 5.x ``per_layer_config``).

    Objects resolve it themselves (``config.per_layer_config[layer_type]``); their
    ``to_dict()`` writes per-layer overrides keyed by layer index (Gemma 4:
    ``{"05": {"head_dim": 512}, ...}``), which must agree for all layers of the type.
    """
    per_layer = reader.get("per_layer_config")
    if per_layer is None:
        return reader
    if not reader.is_dict:
        try:
            return _Reader(per_layer[layer_type])
        except (KeyError, ValueError, TypeError):
            return reader
    layer_types = reader.get("layer_types")
    if not isinstance(per_layer, Mapping) or not layer_types:
        return reader
    by_index = {int(k): v for k, v in per_layer.items() if str(k).isdigit()}
    overrides = [by_index.get(i) or {} for i, t in enumerate(layer_types) if t == layer_type]
    if any(o != overrides[0] for o in overrides):
        raise RopeValueError(
            f"layer_type={layer_type!r} is not allowed: its layers have different "
            "per_layer_config overrides"
        )
    return _Reader({**reader.config, **overrides[0]}) if overrides else reader


def _head_dim(reader: _Reader, layer_type: str | None) -> int:
    if layer_type == "full_attention" and reader.get("global_head_dim") is not None:
        return reader.get("global_head_dim")  # Gemma 4 dict: larger heads on global layers
    for key in ("head_dim", "qk_rope_head_dim"):
        value = reader.get(key)
        if value is not None:
            return value
    hidden, heads = reader.get("hidden_size"), reader.get("num_attention_heads")
    if hidden is None or heads is None:
        raise RopeValueError(
            "missing required config key(s): expected 'head_dim', or 'hidden_size' and "
            "'num_attention_heads'"
        )
    return hidden // heads


def _method_name(name: Any, params: Mapping[str, Any], model_type: Any) -> str:
    if name == "su" or (model_type == "phi3" and name == "yarn"):
        return "longrope"  # Phi-3's pre-release names (transformers converts them too)
    if name == "dynamic" and params.get("alpha") is not None:
        return "ntk"
    if name not in SCALINGS:
        raise RopeValueError(
            f"rope_type={name!r} is not allowed: expected one of {sorted(SCALINGS)}"
        )
    return name


def from_hf(
    config: Any, *, layer_type: str | None = None, allow_unknown: bool = False
) -> RopeConfig:
    """A :class:`~ropekit.RopeConfig` from a Hugging Face config object or ``config.json`` dict.

    Args:
        config: a ``transformers`` ``PretrainedConfig`` (4.x or 5.x) or the dict of a
            ``config.json`` (either convention).
        layer_type: for configs with one RoPE per layer type (Gemma 3: ``"full_attention"``
            / ``"sliding_attention"``), which one to read.
        allow_unknown: ignore unknown keys in the RoPE dict instead of raising.

    Raises:
        RopeValueError: unknown method or keys, missing required keys, bad values.
    """
    from ..config import RopeConfig

    if not isinstance(allow_unknown, bool):
        raise RopeValueError(f"allow_unknown={allow_unknown!r} is not allowed: expected a bool")
    reader = _Reader(_text_config(config))
    if layer_type is not None:
        reader = _layer_view(reader, layer_type)
    model_type = reader.get("model_type")

    raw = reader.get("rope_parameters") or reader.get("rope_scaling") or {}
    if not isinstance(raw, Mapping):
        raise RopeValueError(f"rope_parameters={raw!r} is not allowed: expected a dict or null")
    params, nested = _select_layer(dict(raw), reader, layer_type)

    theta = params.pop("rope_theta", None)
    if theta is None and not nested and layer_type == "sliding_attention":
        theta = reader.get("rope_local_base_freq")  # Gemma 3, transformers 4.x
        params = {}  # 4.x Gemma 3 applies rope_scaling to global layers only
    if theta is None:
        theta = reader.get("rope_theta")
    if theta is None:
        theta = reader.get("rotary_emb_base")  # GPT-NeoX
    if theta is None:
        default = reader.get("default_theta")
        theta = default if isinstance(default, (int, float)) else DEFAULT_THETA

    partial = params.pop("partial_rotary_factor", None)
    if partial is None:
        partial = reader.get("partial_rotary_factor")
    if partial is None:
        partial = reader.get("rotary_pct")  # GPT-NeoX
    if partial is None and model_type == "gpt_neox":
        partial = 0.25  # GPTNeoXConfig's default

    name = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    name = _method_name(name, params, model_type)

    head_dim = check_int("head_dim", _head_dim(reader, layer_type), minimum=2)
    max_position = reader.get("max_position_embeddings")
    if max_position is not None:
        max_position = check_int("max_position_embeddings", max_position, minimum=1)

    if name in _WITH_ORIGINAL_CONTEXT:
        top = reader.get("original_max_position_embeddings")
        if top is not None:
            params["original_max_position_embeddings"] = top
        elif params.get("original_max_position_embeddings") is None and max_position is not None:
            params["original_max_position_embeddings"] = max_position

    rotary_dim = None
    cls = SCALINGS[name]
    if cls is Proportional:
        if partial is not None:
            params["partial_rotary_factor"] = partial
    elif partial is not None:
        dim = int(head_dim * partial)  # transformers truncates
        if dim != head_dim:
            rotary_dim = dim
    if rotary_dim is None and head_dim % 2 and head_dim > 4:
        raise RopeValueError(
            f"head_dim={head_dim} is not allowed for a fully rotated Hugging Face model: "
            "expected an even rotary dimension (transformers rejects it as well)"
        )

    scaling: Scaling | None = None
    if name != "default":
        scaling = cls.from_hf(params, max_position=max_position, allow_unknown=allow_unknown)
    elif params and not allow_unknown:
        raise RopeValueError(
            f"unknown rope_parameters key(s) {sorted(params)} for rope_type='default': "
            "expected none besides rope_theta and partial_rotary_factor "
            "(pass allow_unknown=True to ignore them)"
        )

    interleaved = reader.get("rope_interleave")
    if interleaved is None:
        interleaved = model_type in _INTERLEAVED_MODEL_TYPES
    rope = RopeConfig(
        head_dim=head_dim,
        theta=theta,
        rotary_dim=rotary_dim,
        interleaved=bool(interleaved),
        scaling=scaling,
        max_position=max_position,
    )
    rope.method.check_config(head_dim, rotary_dim, max_position)
    return rope


def to_hf(config: RopeConfig, *, version: int = 5) -> dict[str, Any]:
    """The RoPE keys of a Hugging Face ``config.json`` for ``config``.

    ``version=5`` writes ``rope_parameters`` (transformers 5.x); ``version=4`` writes
    ``rope_theta``, ``partial_rotary_factor`` and ``rope_scaling`` (transformers 4.x).
    ``head_dim`` and ``max_position_embeddings`` are always written, ``rope_interleave``
    when the config is interleaved (only DeepSeek-style models read it).
    ``from_hf(to_hf(config)) == config``.

    Raises:
        RopeValueError: for settings Hugging Face configs cannot express.
    """
    if version not in (4, 5):
        raise RopeValueError(f"version={version!r} is not allowed: expected 4 or 5")
    method = config.method
    model: dict[str, Any] = {"rope_theta": config.theta}
    if config.rotary_dim is not None:
        fraction = config.rotary_dim / config.head_dim
        if int(config.head_dim * fraction) != config.rotary_dim:
            raise RopeValueError(
                f"rotary_dim={config.rotary_dim} cannot be written as a partial_rotary_factor "
                f"of head_dim={config.head_dim} that transformers reads back exactly"
            )
        model["partial_rotary_factor"] = fraction
    method_params = method.to_hf()
    if isinstance(method, Proportional):
        if config.rotary_dim is not None:
            raise RopeValueError(
                f"rotary_dim={config.rotary_dim} is not allowed with proportional scaling in a "
                "Hugging Face config: expected rotary_dim=None (the method's "
                "partial_rotary_factor is written instead)"
            )
        model["partial_rotary_factor"] = method_params.pop("partial_rotary_factor")

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
        out["rope_scaling"] = None if type(method) is Scaling else method_params
    return out
