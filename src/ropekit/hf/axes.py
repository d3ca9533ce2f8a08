"""N-axis RoPE from Hugging Face configs: Qwen2-VL, Qwen2.5-VL and Qwen3-VL.

:func:`axes_from_hf` reads the text decoder's M-RoPE (``rope_parameters`` /
``rope_scaling``: ``rope_theta``, ``mrope_section``, ``mrope_interleaved``; ``head_dim``)
or the vision encoder's axial 2-D RoPE (``vision_config``: ``rope_parameters`` with
``rope_type: axial``, ``embed_dim`` / ``hidden_size`` and ``num_heads``) and returns an
:class:`~ropekit.axes.AxesConfig`; :func:`mrope_settings` returns the keywords of
:func:`ropekit.axes.positions.mrope_positions` for the model (``spatial_merge_size``,
``tokens_per_second``, ``split_video_frames``).

The rules are transformers 5.24's modeling code: the section defaults to ``[16, 24, 24]``
(Qwen2-VL, Qwen2.5-VL) or ``[24, 20, 20]`` (Qwen3-VL) when the config has none; Qwen3-VL
always interleaves and the other two never do, whatever ``mrope_interleaved`` says
(transformers ignores the key), so a contradicting value is refused rather than ignored;
only ``rope_type`` ``"default"`` (``"mrope"``, its old name) is read: a scaled M-RoPE is
refused as not supported yet. Malformed values are :class:`~ropekit.RopeValueError` s
naming the key.

A ``config.json`` dict is turned into transformers' own config object first (its
defaults); without transformers it is read as is, with the defaults above and
transformers' ``rope_theta`` defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..axes.config import AxesConfig
from ..errors import RopeValueError, check_bool, check_float, check_int, is_int
from . import models
from .config import _object_from_dict

__all__ = ["AXES_MODEL_TYPES", "axes_from_hf", "mrope_settings"]

#: family -> (default mrope_section, interleaved, default text theta)
_FAMILIES: dict[str, tuple[tuple[int, ...], bool, float]] = {
    "qwen2_vl": ((16, 24, 24), False, 1e6),
    "qwen2_5_vl": ((16, 24, 24), False, 1e6),
    "qwen3_vl": ((24, 20, 20), True, 5e5),
    "qwen3_vl_moe": ((24, 20, 20), True, 5e5),
}

#: Model types :func:`axes_from_hf` reads (the composite, text and vision types).
AXES_MODEL_TYPES: frozenset[str] = frozenset(
    t for f in _FAMILIES for t in (f, f"{f}_text", f"{f}_vision")
)


def _get(config: Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key)
    try:
        return getattr(config, key, None)
    except (AttributeError, RuntimeError, ValueError):
        return None


def _family(model_type: Any) -> str:
    if isinstance(model_type, str):
        for suffix in ("_text", "_vision", ""):
            base = model_type[: len(model_type) - len(suffix)] if suffix else model_type
            if model_type.endswith(suffix) and base in _FAMILIES:
                return base
    raise RopeValueError(
        f"model_type={model_type!r} is not allowed: expected one of {sorted(AXES_MODEL_TYPES)} "
        "(the multi-axis models ropekit.hf.axes_from_hf reads)"
    )


def _part(config: Any, part: str, family: str) -> Any:
    model_type = _get(config, "model_type")
    key = {"text": "text_config", "vision": "vision_config"}[part]
    sub = _get(config, key)
    if sub is not None:
        return sub
    if model_type in (family, None):  # a composite config without that part
        raise RopeValueError(f"config has no {key}: expected a {family} config with one")
    if not str(model_type).endswith("_" + part):
        raise RopeValueError(
            f"part={part!r} is not allowed for a config of model_type={model_type!r}: expected "
            f"the composite config or the {part} config"
        )
    return config


def _rope_dict(config: Any) -> dict[str, Any]:
    params = _get(config, "rope_parameters")
    legacy = _get(config, "rope_scaling")
    if params is not None and legacy is not None and isinstance(config, Mapping):
        raise RopeValueError(
            "rope_parameters and rope_scaling are not allowed together: expected one of them"
        )
    raw = params if params is not None else legacy
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RopeValueError(f"rope_parameters={raw!r} is not allowed: expected a dict or null")
    return {k: v for k, v in raw.items() if v is not None}


def _theta(config: Any, params: Mapping[str, Any], default: float) -> float:
    theta = params.get("rope_theta", _get(config, "rope_theta"))
    return check_float("rope_theta", default if theta is None else theta, positive=True)


def _int_key(config: Any, key: str) -> int | None:
    v = _get(config, key)
    return None if v is None else check_int(key, v, minimum=1)


def _load(config: Any) -> tuple[Any, str]:
    if isinstance(config, Mapping):
        family = _family(config.get("model_type"))
        cls = models.transformers_config_class(config.get("model_type"))
        if cls is not None:
            config = _object_from_dict(cls, config)
        return config, family
    return config, _family(_get(config, "model_type"))


def axes_from_hf(config: Any, *, part: str = "text") -> AxesConfig:
    """The :class:`~ropekit.axes.AxesConfig` of a Qwen-VL model's text or vision RoPE.

    Args:
        config: a transformers config object or ``config.json`` dict of model type
            ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``, ``qwen3_vl_moe`` (composite), or its
            ``*_text`` / ``*_vision`` part.
        part: ``"text"`` (M-RoPE of the decoder) or ``"vision"`` (axial 2-D RoPE of the
            encoder).

    Raises:
        RopeValueError: another model type, a malformed ``mrope_section`` (not ints
            summing to ``head_dim / 2``), a contradicting ``mrope_interleaved``, a rope
            type other than the default (text) or ``axial`` (vision).

    Example:
        >>> cfg = axes_from_hf({"model_type": "qwen2_vl_text", "hidden_size": 64,
        ...                     "num_attention_heads": 4, "rope_parameters":
        ...                     {"rope_type": "default", "rope_theta": 1e4,
        ...                      "mrope_section": [2, 3, 3]}})
        >>> cfg.axis[:6]
        (0, 0, 1, 1, 1, 2)
    """
    if part not in ("text", "vision"):
        raise RopeValueError(f"part={part!r} is not allowed: expected 'text' or 'vision'")
    obj, family = _load(config)
    section_default, interleaved, theta_default = _FAMILIES[family]
    sub = _part(obj, part, family)
    params = _rope_dict(sub)
    rope_type = params.get("rope_type", params.get("type"))
    heads = _int_key(sub, "num_attention_heads") or _int_key(sub, "num_heads")
    if part == "vision":
        if rope_type not in (None, "axial"):
            raise RopeValueError(
                f"vision rope_type={rope_type!r} is not allowed: expected 'axial' (the "
                "encoder's 2-D RoPE; transformers refuses the rest)"
            )
        width = _int_key(sub, "embed_dim") if family == "qwen2_vl" else _int_key(sub, "hidden_size")
        head_dim = _int_key(sub, "head_dim") or _divide(width, heads, family)
        return _vision(head_dim, _theta(sub, params, 10000.0))
    if rope_type not in (None, "default", "mrope"):
        raise RopeValueError(
            f"rope_type={rope_type!r} is not supported yet for M-RoPE: expected 'default' "
            "(scaled multi-axis RoPE is not implemented)"
        )
    head_dim = _int_key(sub, "head_dim") or _divide(_int_key(sub, "hidden_size"), heads, family)
    section = params.get("mrope_section", section_default)
    if isinstance(section, (str, bytes, Mapping)) or not hasattr(section, "__iter__"):
        raise RopeValueError(f"mrope_section={section!r} is not allowed: expected a list of ints")
    section = list(section)
    if not all(is_int(v) for v in section):
        raise RopeValueError(f"mrope_section={section!r} is not allowed: expected a list of ints")
    said = params.get("mrope_interleaved")
    if said is not None and check_bool("mrope_interleaved", said) != interleaved:
        raise RopeValueError(
            f"mrope_interleaved={said!r} is not allowed for {family}: its modeling code "
            f"{'always' if interleaved else 'never'} interleaves the sections (transformers "
            "ignores the key)"
        )
    return AxesConfig.sections(head_dim, _theta(sub, params, theta_default), section,
                               interleaved_sections=interleaved)  # fmt: skip


def _vision(head_dim: int, theta: float) -> AxesConfig:
    if head_dim % 4:
        raise RopeValueError(
            f"vision head_dim={head_dim} is not allowed: expected a multiple of 4 (two axes "
            "of rotated pairs)"
        )
    return AxesConfig.blocked((head_dim // 2, head_dim // 2), theta, pairing="half",
                              names=("h", "w"))  # fmt: skip


def _divide(width: int | None, heads: int | None, family: str) -> int:
    if width is None or heads is None:
        raise RopeValueError(
            f"missing required config key (head_dim, or the width and num_attention_heads) "
            f"for {family}: expected them in the config"
        )
    if width % heads:
        raise RopeValueError(
            f"hidden size {width} is not allowed with {heads} heads: expected a multiple"
        )
    return width // heads


def mrope_settings(config: Any) -> dict[str, Any]:
    """Keywords of :func:`ropekit.axes.positions.mrope_positions` for a composite Qwen-VL
    config: ``spatial_merge_size`` (vision config, default 2), ``tokens_per_second``
    (Qwen2.5-VL's vision config; None for the others) and ``split_video_frames`` (True
    for Qwen3-VL)."""
    obj, family = _load(config)
    vision = _part(obj, "vision", family)
    merge = _int_key(vision, "spatial_merge_size") or 2
    tps = None
    if family == "qwen2_5_vl":
        raw = _get(vision, "tokens_per_second")
        tps = None if raw is None else check_float("tokens_per_second", raw, positive=True)
    return {"spatial_merge_size": merge, "tokens_per_second": tps,
            "split_video_frames": _FAMILIES[family][1]}  # fmt: skip
