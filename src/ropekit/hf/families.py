"""What :func:`ropekit.hf.patch` knows about each multi-axis, vision or per-layer-type family.

Notation: ``n`` rotated pairs, ``d`` head dim, ``A`` position axes, ``N`` vision tokens,
``P`` patches.

A :class:`Family` is a modeling module of transformers 5.x plus one :class:`Part` per
rotary module class in it. A part says:

* ``rotary``: the class name of the family's rotary module, and ``build``: how to turn
  one instance (its own ``.config``: the text, vision or whole config it was built from)
  into a ropekit drop-in (:mod:`ropekit.hf.dropins`) returning the same format;
* ``probes``: arguments to call both with, for the table check of :func:`ropekit.hf.patch`
  (a *fresh* float32 CPU instance of the family's class, built from the same config,
  against the drop-in: ``|cos - cos'| <= 1e-5``, so a swapped axis, section or frequency
  order is refused, while float32 rounding at the small probe positions passes);
* ``apply``: the global name of the rotation function that the family's attention
  ``forward`` calls with those tables, ``dropin``: ropekit's replacement for it (given the
  part's pair count), and ``rotation_probes``: float64 arguments on which the family's
  function and the drop-in must agree (``rotation_atol``: 1e-12, or 1e-5 where the family
  computes in float32 whatever the input dtype, as Qwen-VL's vision rotation does).

Families (transformers 5.24):

=============  =======================================  ==============================
model_type     rotary module -> drop-in                 rotation global -> drop-in
=============  =======================================  ==============================
qwen2_vl,      text ``...RotaryEmbedding`` (M-RoPE,     ``apply_rotary_pos_emb`` ->
qwen2_5_vl,    ``[3, b, s]`` ids) -> ``AxesTables``     ``rotary_pos_emb``
qwen3_vl       vision ``...VisionRotaryEmbedding``      ``apply_rotary_pos_emb_vision``
               (``[N, 2]`` ids) -> ``AxesTables``       -> ``rotary_pos_emb_vision``
pixtral        ``PixtralVisionRotaryEmbedding`` ->      ``apply_rotary_pos_emb``
               ``AxesTables`` (preset ``pixtral``)      (``unsqueeze_dim=0``)
dinov3_vit     ``DINOv3ViTRopePositionEmbedding`` ->    ``apply_rotary_pos_emb`` (prefix
               ``DinoTables`` (preset ``dinov3``)       tokens unrotated)
gemma3_text,   ``Gemma3RotaryEmbedding`` (one RoPE per  ``apply_rotary_pos_emb``
gemma3         layer type) -> ``LayerTables``
llama4,        text ``Llama4TextRotaryEmbedding``       ``apply_rotary_emb`` ->
llama4_text    (complex ``freqs_cis``) ->               ``rotary_emb_complex``
               ``ComplexTables``
llama4, ``*``  vision ``Llama4VisionRotaryEmbedding``   ``vision_apply_rotary_emb`` ->
               (complex, fixed grid) ->                 ``vision_rotary_emb_complex``
               ``VisionComplexTables``
=============  =======================================  ==============================

``*``: ``llama4_vision_model`` (``Llama4VisionModel`` on its own).

=============  =======================================  ==============================
gemma4_text    ``Gemma4TextRotaryEmbedding`` (per layer ``apply_rotary_pos_emb`` (one
               type, different head dims) ->            tensor) -> ``rotary_pos_emb_one``
               ``LayerTables(mixed_pairs=True)``
gemma4_vision  ``Gemma4VisionRotaryEmbedding``          ``apply_multidimensional_rope``
               (``[b, N, 2]`` ids) -> ``AxesTables``    -> ``multidimensional_rope``
               (preset ``gemma4_vision``, blocks)
gemma4         both of the above (``Gemma4ForConditionalGeneration``; the audio tower
               has no RoPE)
=============  =======================================  ==============================

Llama 4 keeps its own NoPE layers (``no_rope_layers``: those attention modules never call
the rotation, patched or not), its chunked attention (a mask, not RoPE) and its query
temperature (``attn_temperature_tuning``: ``1 + attn_scale ln(1 + floor((m + 1) /
floor_scale))`` on the NoPE layers' queries, computed by the attention code the patch
keeps).

Position ids stay the family's own: the drop-ins read the ids (or, for DINOv3, the pixel
grid) the family's code passes them. Qwen-VL's ids come from transformers'
``get_rope_index``, whose two 5.24 bugs (text after a video can reuse the video's time
ids; fractional frame times are floored) are kept, not fixed, by the patch: see
``docs/axes.md`` and :func:`ropekit.axes.positions.mrope_positions` for the correct ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..axes.config import AxesConfig
from ..axes.presets import preset
from ..errors import RopeValueError
from .axes import axes_from_hf
from .config import from_hf
from .dropins import (
    AxesTables,
    ComplexTables,
    DinoTables,
    LayerTables,
    VisionComplexTables,
    multidimensional_rope,
    rotary_emb_complex,
    rotary_pos_emb,
    rotary_pos_emb_one,
    rotary_pos_emb_prefix,
    rotary_pos_emb_vision,
    vision_rotary_emb_complex,
)

__all__ = ["FAMILIES", "Family", "Part", "UnsupportedModelError"]

_Args = tuple[tuple[Any, ...], dict[str, Any]]


class UnsupportedModelError(RopeValueError):
    """The model, its configuration or the installed ``transformers`` cannot be patched."""


@dataclass(frozen=True)
class Part:
    """One rotary module class of a family and the rotation that consumes its tables."""

    rotary: str
    build: Callable[[nn.Module, Any], nn.Module]  # (original module, modeling module) -> drop-in
    probes: Callable[[nn.Module], list[_Args]]
    apply: str
    dropin: Callable[[int], Callable[..., Any]]
    rotation_probes: Callable[[int], list[_Args]]
    rotation_atol: float = 1e-12


@dataclass(frozen=True)
class Family:
    """A transformers modeling module (``transformers.models.<name>.modeling_<name>``) and
    its :class:`Part` s."""

    name: str
    parts: tuple[Part, ...]

    @property
    def modeling(self) -> str:
        return f"transformers.models.{self.name}.modeling_{self.name}"


# ---------------------------------------------------------------------------------------
# Probes: small, non-square, distinct per axis, so that swapped axes cannot pass.


def _mrope_probe(module: nn.Module) -> list[_Args]:
    i = torch.arange(7)
    ids = torch.stack([i, 2 * i + 1, 20 - i]).view(3, 1, 7).expand(3, 2, 7)  # t, h, w differ
    text = torch.arange(5).view(1, 5)  # [b, s]: a text-only call
    x = torch.zeros(1)
    return [((x, ids), {}), ((x, text), {})]


def _grid_probe(module: nn.Module) -> list[_Args]:
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
    ids = torch.stack([rows.flatten(), 2 * cols.flatten() + 1], dim=-1)  # [15, 2], h != w
    return [((torch.zeros(1), ids), {})]


def _dino_probe(module: nn.Module) -> list[_Args]:
    ph, pw = _pair(module.config.patch_size)
    return [((torch.zeros(1, 3, 3 * ph, 5 * pw),), {})]


def _layer_probe(module: nn.Module) -> list[_Args]:
    ids = torch.arange(9).view(1, 9) * 3
    return [((torch.zeros(1), ids, t), {}) for t in sorted(set(module.config.layer_types))]


def _llama4_text_probe(module: nn.Module) -> list[_Args]:
    ids = torch.stack([torch.arange(9) * 3, 20 - torch.arange(9)])  # [2, 9]: rows differ
    return [((torch.zeros(1), ids), {})]


def _batched_grid_probe(module: nn.Module) -> list[_Args]:
    return [((torch.zeros(1), ids.unsqueeze(0)), {}) for ((_, ids), _) in _grid_probe(module)]


def _pixels_probe(module: nn.Module) -> list[_Args]:
    return [((torch.zeros(1),), {})]  # the table is fixed by the config


def _halves(n: int, rows: tuple[int, ...], gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    angle = torch.randn(*rows, n, generator=gen, dtype=torch.float64)
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.cat((c, c), -1), torch.cat((s, s), -1)


def _bhsd_probe(n: int) -> list[_Args]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 3, 2 * n, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 1, 3, 2 * n, generator=gen, dtype=torch.float64)
    return [((q, k, *_halves(n, (1, 3), gen)), {})]


def _pixtral_rotation_probe(n: int) -> list[_Args]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 3, 2 * n, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 3, 2 * n, generator=gen, dtype=torch.float64)
    return [((q, k, *_halves(n, (3,), gen)), {"unsqueeze_dim": 0})]


def _vision_rotation_probe(n: int) -> list[_Args]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(5, 2, 2 * n, generator=gen, dtype=torch.float64)
    k = torch.randn(5, 2, 2 * n, generator=gen, dtype=torch.float64)
    return [((q, k, *_halves(n, (5,), gen)), {})]


def _prefix_rotation_probe(n: int) -> list[_Args]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 6, 2 * n, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 2, 6, 2 * n, generator=gen, dtype=torch.float64)
    return [((q, k, *_halves(n, (4,), gen)), {})]  # 2 prefix tokens


def _complex(n: int, rows: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    angle = torch.randn(*rows, n, generator=gen, dtype=torch.float64)
    return torch.polar(torch.ones_like(angle), angle)


def _llama4_rotation_probe(n: int) -> list[_Args]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 2, 2 * n, generator=gen, dtype=torch.float64)  # [b, s, h, d]
    k = torch.randn(2, 3, 1, 2 * n, generator=gen, dtype=torch.float64)
    return [((q, k, _complex(n, (2, 3), gen)), {})]


def _llama4_vision_rotation_probe(n: int) -> list[_Args]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 2, 2 * n, generator=gen, dtype=torch.float64)  # [b, T, h, d]
    k = torch.randn(2, 5, 2, 2 * n, generator=gen, dtype=torch.float64)
    return [((q, k), {"freqs_ci": _complex(n, (5, 1), gen)})]


def _one_probe(pairs: int | tuple[int, ...]) -> list[_Args]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in (pairs,) if isinstance(pairs, int) else pairs:  # every layer type's count
        x = torch.randn(1, 3, 2, 2 * n, generator=gen, dtype=torch.float64)  # [b, s, h, d]
        out.append(((x, *_halves(n, (1, 3), gen)), {"unsqueeze_dim": 2}))
    return out


def _multidim_probe(n: int) -> list[_Args]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 2, 2 * n, generator=gen, dtype=torch.float64)  # [b, N, h, d]
    angle = torch.randn(1, 5, n, generator=gen, dtype=torch.float64)
    blocks = angle.split(n // 2, -1)  # 2 axes: [h block, w block], each doubled
    doubled = torch.cat([t for b in blocks for t in (b, b)], -1)
    ids = torch.zeros(1, 5, 2, dtype=torch.long)
    return [((x, doubled.cos(), doubled.sin(), ids), {})]


# ---------------------------------------------------------------------------------------
# Builders: the family's config -> the ropekit drop-in (RopeValueError if not expressible).


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _axial_params(config: Any, family: str) -> tuple[int, float]:
    """``(head_dim, theta)`` of a vision config with ``rope_parameters`` of type axial."""
    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type") != "axial":
        raise RopeValueError(
            f"{family} vision rope_type={params.get('rope_type')!r} is not allowed: expected "
            "'axial'"
        )
    heads = getattr(config, "num_attention_heads", None) or config.num_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(head_dim), float(params["rope_theta"])


def _build_mrope(module: nn.Module, modeling: Any) -> nn.Module:
    return AxesTables(axes_from_hf(module.config, part="text"), axes_first=True)


def _build_qwen_vision(module: nn.Module, modeling: Any) -> nn.Module:
    return AxesTables(axes_from_hf(module.config, part="vision"), axes_first=False)


def _build_pixtral(module: nn.Module, modeling: Any) -> nn.Module:
    head_dim, theta = _axial_params(module.config, "pixtral")
    return AxesTables(preset("pixtral", head_dim=head_dim, theta=theta), axes_first=False)


def _build_dinov3(module: nn.Module, modeling: Any) -> nn.Module:
    cfg = module.config
    heads = int(cfg.num_attention_heads)
    if cfg.hidden_size % heads:
        raise RopeValueError(
            f"hidden_size={cfg.hidden_size} is not allowed with {heads} heads: expected a multiple"
        )
    axes: AxesConfig = preset("dinov3", head_dim=cfg.hidden_size // heads, theta=float(cfg.rope_theta))
    augment = (modeling.augment_patches_center_coordinates, cfg.pos_embed_shift,
               cfg.pos_embed_jitter, cfg.pos_embed_rescale)  # fmt: skip
    return DinoTables(axes, _pair(cfg.patch_size), augment, modeling.get_patches_center_coordinates)


def _build_layers(module: nn.Module, modeling: Any) -> nn.Module:
    return LayerTables(_layer_configs(module.config))


def _build_gemma4_layers(module: nn.Module, modeling: Any) -> nn.Module:
    return LayerTables(_layer_configs(module.config), mixed_pairs=True)


def _build_gemma4_vision(module: nn.Module, modeling: Any) -> nn.Module:
    head_dim, theta = _axial_params(module.config, "gemma4")
    return AxesTables(preset("gemma4_vision", head_dim=head_dim, theta=theta), axes_first=False)


def _layer_configs(cfg: Any) -> dict[str, Any]:
    """``{layer_type: from_hf(cfg, layer_type=...)}``, refusing what the drop-in cannot
    express (no RoPE for a type, interleaved pairs, a length-dependent table)."""
    configs = {}
    for layer_type in sorted(set(cfg.layer_types)):
        if cfg.rope_parameters.get(layer_type) is None:
            raise RopeValueError(
                f"rope_parameters[{layer_type!r}]=None is not allowed: expected RoPE for every "
                "layer type (a layer type without RoPE is not supported)"
            )
        rope = from_hf(cfg, layer_type=layer_type)
        if rope.interleaved:
            raise RopeValueError(
                f"layer type {layer_type!r}: interleaved pairs are not allowed, expected the "
                "half-split pairs of rotate_half"
            )
        if rope.scaling.depends_on_seq_len:
            raise RopeValueError(
                f"layer type {layer_type!r}: a length-dependent RoPE ({rope.scaling!r}) is not "
                "supported per layer type: expected a fixed table (default, linear, llama3, "
                "yarn with fixed factor)"
            )
        configs[layer_type] = rope
    return configs


def _build_llama4_text(module: nn.Module, modeling: Any) -> nn.Module:
    rope = from_hf(module.config)
    if not rope.interleaved:
        raise RopeValueError(
            "ropekit.hf.from_hf gave interleaved=False for Llama 4: expected interleaved "
            "pairs, as its complex apply_rotary_emb uses"
        )
    return ComplexTables(rope)


def _build_llama4_vision(module: nn.Module, modeling: Any) -> nn.Module:
    cfg = module.config
    params = getattr(cfg, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise RopeValueError(
            f"llama4 vision rope_type={params.get('rope_type')!r} is not allowed: expected "
            "'default' (the model's table ignores any scaling)"
        )
    heads = int(cfg.num_attention_heads)
    if cfg.hidden_size % heads:
        raise RopeValueError(
            f"hidden_size={cfg.hidden_size} is not allowed with {heads} heads: expected a multiple"
        )
    axes = preset("llama4_vision", head_dim=cfg.hidden_size // heads, theta=float(params["rope_theta"]))
    return VisionComplexTables(axes, int(cfg.image_size) // int(cfg.patch_size))


_TEXT_APPLY = dict(apply="apply_rotary_pos_emb", dropin=rotary_pos_emb, rotation_probes=_bhsd_probe)
_VISION_APPLY = dict(apply="apply_rotary_pos_emb_vision", dropin=rotary_pos_emb_vision,
                     rotation_probes=_vision_rotation_probe, rotation_atol=1e-5)  # fmt: skip


def _qwen(name: str, text: str, vision: str) -> Family:
    return Family(name, (
        Part(text, _build_mrope, _mrope_probe, **_TEXT_APPLY),
        Part(vision, _build_qwen_vision, _grid_probe, **_VISION_APPLY),
    ))  # fmt: skip


_GEMMA3 = Family("gemma3", (Part("Gemma3RotaryEmbedding", _build_layers, _layer_probe, **_TEXT_APPLY),))

# transformers computes Llama 4's rotations in float32 whatever the input dtype: 1e-5.
_LLAMA4_TEXT = Part("Llama4TextRotaryEmbedding", _build_llama4_text, _llama4_text_probe,
                    "apply_rotary_emb", rotary_emb_complex, _llama4_rotation_probe, 1e-5)
_LLAMA4_VISION = Part("Llama4VisionRotaryEmbedding", _build_llama4_vision, _pixels_probe,
                      "vision_apply_rotary_emb", vision_rotary_emb_complex,
                      _llama4_vision_rotation_probe, 1e-5)  # fmt: skip

_GEMMA4_TEXT = Part("Gemma4TextRotaryEmbedding", _build_gemma4_layers, _layer_probe,
                    "apply_rotary_pos_emb", rotary_pos_emb_one, _one_probe)
_GEMMA4_VISION = Part("Gemma4VisionRotaryEmbedding", _build_gemma4_vision, _batched_grid_probe,
                      "apply_multidimensional_rope", multidimensional_rope, _multidim_probe)  # fmt: skip

#: ``config.model_type`` -> :class:`Family`.
FAMILIES: dict[str, Family] = {
    "qwen2_vl": _qwen("qwen2_vl", "Qwen2VLRotaryEmbedding", "Qwen2VLVisionRotaryEmbedding"),
    "qwen2_5_vl": _qwen("qwen2_5_vl", "Qwen2_5_VLRotaryEmbedding", "Qwen2_5_VLVisionRotaryEmbedding"),
    "qwen3_vl": _qwen("qwen3_vl", "Qwen3VLTextRotaryEmbedding", "Qwen3VLVisionRotaryEmbedding"),
    "pixtral": Family("pixtral", (
        Part("PixtralVisionRotaryEmbedding", _build_pixtral, _grid_probe, "apply_rotary_pos_emb",
             rotary_pos_emb, _pixtral_rotation_probe),
    )),
    "dinov3_vit": Family("dinov3_vit", (
        Part("DINOv3ViTRopePositionEmbedding", _build_dinov3, _dino_probe, "apply_rotary_pos_emb",
             rotary_pos_emb_prefix, _prefix_rotation_probe),
    )),
    "gemma3_text": _GEMMA3,
    "gemma3": _GEMMA3,
    "llama4": Family("llama4", (_LLAMA4_TEXT, _LLAMA4_VISION)),
    "llama4_text": Family("llama4", (_LLAMA4_TEXT,)),
    "llama4_vision_model": Family("llama4", (_LLAMA4_VISION,)),
    "gemma4": Family("gemma4", (_GEMMA4_TEXT, _GEMMA4_VISION)),
    "gemma4_text": Family("gemma4", (_GEMMA4_TEXT,)),
    "gemma4_vision": Family("gemma4", (_GEMMA4_VISION,)),
}  # fmt: skip
