"""Patch a loaded Hugging Face ``transformers`` model to use ropekit's exact RoPE.

Notation: ``b`` batch, ``h`` heads, ``s`` sequence length, ``d`` head dim, ``n`` rotated
pairs (``rotary_dim // 2``).

How RoPE flows through a Hugging Face decoder (transformers 5.x, Llama and the families
that share its code): the model owns one ``<Family>RotaryEmbedding`` module (usually
``model.model.rotary_emb``). Once per forward it turns ``position_ids`` ``[b, s]`` into
``cos, sin`` ``[b, s, 2n]``, both halves equal to ``attention_scaling * cos(m * inv_freq)``
(resp. ``sin``), cast to the hidden dtype. Every attention layer then calls the function
``apply_rotary_pos_emb(q, k, cos, sin)`` that it finds among its modeling file's globals,
with ``q`` ``[b, h, s, d]``::

    q' = q * cos + rotate_half(q) * sin,     rotate_half([x1, x2]) = [-x2, x1]

which is ropekit's half-split pairing of lanes ``(i, i + n)``; lanes past ``2n`` (partial
rotary: GPT-NeoX, Phi) pass through unrotated. Models with Llama 4's query temperature
(Ministral 3) then multiply the rotated queries by it in the same forward; the patch
keeps that code, so they keep their temperature.

What :func:`patch` changes, and why this way
---------------------------------------------
1. **Tables.** Each rotary module is replaced by an :class:`~ropekit.hf.RotaryTables`
   built from ``ropekit.hf.from_hf(model.config)``: angles ``m * inv_freq`` formed in
   float64 and rounded once, instead of Hugging Face's float32 angle (its spacing at
   ``m = 1e6`` is 0.0625 rad) and its ``inv_freq`` buffer (which
   ``model.to(torch.bfloat16)`` rounds to 8 significant bits). The tables keep Hugging
   Face's ``[b, s, 2n]`` format, so anything else reading them still works, but are
   float32 for half-precision models (float64 for float64 ones): the rotation runs in
   that dtype and rounds once.
2. **Rotation, per model.** ``apply_rotary_pos_emb`` is a module global, so swapping it
   would change every model of that family in the process, and scoping such a swap needs
   state (a context variable) that ``torch.compile`` cannot trace. Instead each attention
   module of the patched model gets, as an *instance* attribute, a ``forward`` that runs
   the class's own code (same code object, same decorators) with a private copy of its
   module's globals in which ``apply_rotary_pos_emb`` calls ropekit's rotation
   (``apply_rope_qk``, default backend: ropekit's C kernel on CPU, Triton on CUDA). The
   class, the modeling module and every other model are untouched; patched and unpatched
   models of one family can run side by side (also in threads), and
   ``torch.compile(fullgraph=True)`` traces the patched forward without graph breaks.
   The globals are copied at patch time: later rebinding of other names in the modeling
   module is not seen by a patched model (patch after other monkey-patchers).
3. **Checked first, then applied.** :func:`patch` checks the ``transformers`` version,
   the model type (:data:`SUPPORTED_MODEL_TYPES`, each covered by
   ``tests/test_hf_patch.py``), that the attention ``forward`` really calls the global and
   can be re-bound, that ``ropekit.hf.from_hf`` reproduces transformers' own frequencies
   and attention factor (relative difference <= 1e-5 against its float32 initialisers,
   also for the long-context table set of LongRoPE/dynamic NTK), and that the family's
   ``apply_rotary_pos_emb`` computes the rotation ropekit implements (a float64 probe).
   Any failure raises :class:`UnsupportedModelError` and leaves the model untouched.

Why not transformers' own kernel hooks
--------------------------------------
transformers 5.x marks ``apply_rotary_pos_emb`` with
``@use_kernel_forward_from_hub("rotary_pos_emb")`` and attention classes with
``@use_kernelized_func(apply_rotary_pos_emb)`` (122 of the 204 modeling files that define
the function, in 5.24.0; not GPT-NeoX, Phi-3 or StableLM), so that ``kernelize(model)``
(or ``from_pretrained(..., use_kernels=True)``) can exchange the function for a kernel.
They do not serve this patch better, so it does not use them:

* they do nothing unless the optional ``kernels`` package is installed (without it the
  decorators are the identity and ``kernelize`` raises ``ImportError``), and a third of
  the supported families are not decorated at all;
* ``kernelize`` loads replacements from a kernel *repository* (a Hub repo or a local
  directory built in the ``kernels`` layout) chosen through a process-global mapping
  keyed by the layer name: ``"rotary_pos_emb"`` is one name for every family, so a
  mapping would swap the rotation of every kernelized model in the process, where the
  patch is per model, reversible and leaves other models alone;
* it swaps the rotation only: the exact tables (the main point of the patch) are a
  module replacement either way, and the checks above (frequencies, the float64 rotation
  probe, the pair count of every call) would still be needed.

A patched model calls ropekit's rotation even if it was kernelized before (its copied
globals bind ``apply_rotary_pos_emb`` to ropekit, whatever wrapper the hooks installed).

Multi-axis, vision and per-layer-type families
---------------------------------------------
For the model types of :data:`FAMILY_MODEL_TYPES` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL text
and vision towers, Pixtral's vision encoder, DINOv3, Gemma 3 text, Llama 4 text and
vision in their complex format, Gemma 4 text and vision) the same three steps
run from a family table (:mod:`ropekit.hf.families`): each rotary module class of the
family is swapped for a drop-in of :mod:`ropekit.hf.dropins` returning the same format
(built with :mod:`ropekit.axes` / :class:`RotaryTables`, float64 angles rounded once),
each rotation global the attention calls (``apply_rotary_pos_emb``,
``apply_rotary_pos_emb_vision``; Llama 4's ``apply_rotary_emb``,
``vision_apply_rotary_emb``; Gemma 4's ``apply_multidimensional_rope``) is rebound per attention instance to a ropekit drop-in of
the same signature. The checks, all before any change: the modeling module
has the classes and functions, every part has rotary modules and attention calling
its rotation, ropekit's tables equal a fresh float32 instance of the family's module
at small probe positions (distinct per axis, ``<= 1e-5``), and the family's rotation
equals ropekit's drop-in on a float64 probe. Position ids stay the family's own.

Other choices: patching a patched model, or unpatching an unpatched one, raises
:class:`~ropekit.RopeValueError` (a silent no-op would hide a wrong belief about the
model's state). ``copy.deepcopy`` of a patched model is a patched model that can be
unpatched on its own. Tables are recomputed on every forward (no cache, so results never
depend on earlier calls); for length-dependent methods (dynamic NTK, LongRoPE) the length
is ``max(position_ids) + 1`` of the current call, as in Hugging Face, but without the
``max_seq_len_cached`` history of its dynamic NTK.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..apply.api import hf_halves
from ..apply.checks import check_call
from ..apply.dispatch import Backend, rotate
from ..config import RopeConfig
from ..errors import RopeValueError, in_version_window
from .config import from_hf
from .families import FAMILIES, Family, Part, UnsupportedModelError
from .tables import RotaryTables, doubled

__all__ = [
    "FAMILY_MODEL_TYPES",
    "SUPPORTED_MODEL_TYPES",
    "TEXT_MODEL_TYPES",
    "TRANSFORMERS_VERSIONS",
    "UnsupportedModelError",
    "check_transformers_version",
    "is_patched",
    "patch",
    "patched",
    "unpatch",
]

#: ``config.model_type`` values of the 1-D decoder families whose modeling code is the one
#: described above, each exercised by ``tests/test_hf_patch.py``.
TEXT_MODEL_TYPES: tuple[str, ...] = (
    "gemma",
    "gpt_neox",
    "granite",
    "llama",
    "ministral3",
    "mistral",
    "olmo2",
    "phi",
    "phi3",
    "qwen2",
    "qwen3",
    "stablelm",
    "starcoder2",
)

#: ``config.model_type`` values patched through a family table (:mod:`ropekit.hf.families`:
#: multi-axis, vision and per-layer-type RoPE), each exercised by
#: ``tests/test_hf_patch_vlm.py``.
FAMILY_MODEL_TYPES: tuple[str, ...] = tuple(sorted(FAMILIES))

#: Every ``config.model_type`` :func:`patch` accepts.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(TEXT_MODEL_TYPES + FAMILY_MODEL_TYPES))

#: ``(minimum, exclusive maximum)`` of the transformers versions accepted; tested on
#: 5.24.0. The 5.x series has ``config.rope_parameters`` and the layout described above;
#: the checks of :func:`patch` catch changes of that layout within the series.
TRANSFORMERS_VERSIONS: tuple[str, str] = ("5.0.0", "6.0.0")

_APPLY_NAME = "apply_rotary_pos_emb"
_RECORD_ATTR = "_ropekit_patch"
# ropekit's float64 frequencies vs transformers' float32 ones: float32 rounding of
# ``theta ** (-2i/d)`` and of the scaling formulas is a few 1e-7 relative; misreading a
# config parameter (theta, rotary_dim, a scaling factor) changes them by far more.
_FREQ_RTOL = 1e-5
# ropekit's tables vs a fresh float32 instance of a family's rotary module at the probe
# positions (< 30, angles < 30 rad): float32 angles are off by <= 30 * 2**-24 ~ 2e-6; a
# misread axis, section or frequency moves some entry by O(1).
_TABLE_ATOL = 1e-5
_QK = ("q", "k")


# ---------------------------------------------------------------------------------------
# Rotation.


def _ropekit_apply(n_pairs: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """An ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)`` doing what ropekit's
    drop-in (:func:`ropekit.hf.apply_rotary_pos_emb`) does, one kernel call for q and k,
    after checking that the tables have the patched model's pair count (its pieces
    called directly: this runs once per layer and decoded token)."""

    def apply_rotary_pos_emb(
        q: torch.Tensor,
        k: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        unsqueeze_dim: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c, s = hf_halves(cos, sin, unsqueeze_dim)
        if c.shape[-1] != n_pairs:
            raise RopeValueError(
                f"cos.shape={tuple(cos.shape)} is not allowed: the patched model rotates "
                f"n={n_pairs} pairs, expected Hugging Face tables [..., 2n={2 * n_pairs}]"
            )
        # apply_rope_qk(q, k, c, s) without its wrapper: the checker, then the backend
        return rotate(check_call((q, k), _QK, c, s), Backend.AUTO)

    return apply_rotary_pos_emb


def _rebind_globals(func: Callable[..., Any], overrides: dict[str, Any]) -> Callable[..., Any]:
    """A copy of ``func`` whose global lookups see ``overrides`` (same code, same closure).

    Decorators built with :func:`functools.wraps` (transformers' ``deprecate_kwarg``) keep
    the decorated function in a closure cell and expose it as ``__wrapped__``; the copy is
    made all the way down that chain, so the copied wrapper calls the copied function.

    Raises:
        UnsupportedModelError: a wrapper that does not hold its ``__wrapped__`` in exactly
            one closure cell (we could not re-bind what it calls).
    """
    inner = getattr(func, "__wrapped__", None)
    if not isinstance(func, types.FunctionType) or (
        inner is not None and not isinstance(inner, types.FunctionType)
    ):
        raise UnsupportedModelError(
            f"{getattr(func, '__qualname__', func)!r} is not a plain Python function: "
            "cannot re-bind its globals"
        )
    closure = func.__closure__
    namespace = func.__globals__
    if inner is None:
        namespace = {**func.__globals__, **overrides}
        # Without ``__name__`` torch.compile guards these globals through this dict, not
        # through ``sys.modules[__name__]`` (whose apply_rotary_pos_emb is the original).
        namespace.pop("__name__", None)
    else:
        new_inner = _rebind_globals(inner, overrides)
        cells = list(closure or ())
        hits = [i for i, cell in enumerate(cells) if _cell_holds(cell, inner)]
        if len(hits) != 1:
            raise UnsupportedModelError(
                f"the decorator around {inner.__qualname__} holds it in {len(hits)} closure "
                "cells: expected exactly one (a functools.wraps-style decorator)"
            )
        cells[hits[0]] = types.CellType(new_inner)
        closure = tuple(cells)
    new = types.FunctionType(func.__code__, namespace, func.__name__, func.__defaults__, closure)
    new.__kwdefaults__ = dict(func.__kwdefaults__) if func.__kwdefaults__ else None
    new.__dict__.update(func.__dict__)
    new.__qualname__ = func.__qualname__
    new.__module__ = func.__module__
    new.__doc__ = func.__doc__
    new.__annotations__ = dict(func.__annotations__)
    if inner is not None:
        new.__wrapped__ = new_inner
    return new


def _cell_holds(cell: types.CellType, value: object) -> bool:
    try:
        return cell.cell_contents is value
    except ValueError:  # an empty cell
        return False


# ---------------------------------------------------------------------------------------
# Checks.


def _installed_transformers_version() -> str:
    low, high = TRANSFORMERS_VERSIONS
    try:
        import transformers
    except ImportError as e:
        raise UnsupportedModelError(
            f"transformers is not installed: expected transformers>={low},<{high}"
        ) from e
    return str(transformers.__version__)


def check_transformers_version(version: str | None = None) -> str:
    """Return ``version`` (default: the installed one) if :func:`patch` supports it.

    Raises:
        UnsupportedModelError: transformers is missing or outside
            :data:`TRANSFORMERS_VERSIONS`.
    """
    low, high = TRANSFORMERS_VERSIONS
    if version is None:
        version = _installed_transformers_version()
    if not in_version_window(version, low, high):
        raise UnsupportedModelError(
            f"transformers=={version} is not supported: expected >={low},<{high} "
            "(ropekit's Hugging Face patch is tested on 5.24.0)"
        )
    return version


def _check_model_type(model: Any) -> str:
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"model of type {type(model).__name__} is not allowed: expected a transformers "
            "model (a torch.nn.Module with a .config)"
        )
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{type(model).__name__} with config.model_type={model_type!r} is not supported: "
            f"expected one of {list(SUPPORTED_MODEL_TYPES)}"
        )
    return model_type


def _modeling_module(model_type: str) -> types.ModuleType:
    name = f"transformers.models.{model_type}.modeling_{model_type}"
    module = importlib.import_module(name)
    if not callable(getattr(module, _APPLY_NAME, None)):
        raise UnsupportedModelError(
            f"{name} has no function {_APPLY_NAME}: this transformers is laid out "
            "differently from the versions ropekit supports"
        )
    return module


def _calls_global_apply(cls: type) -> bool:
    forward = inspect.unwrap(cls.forward)
    code = getattr(forward, "__code__", None)
    return code is not None and _APPLY_NAME in code.co_names


def _rope_config(hf_config: Any) -> RopeConfig:
    params = getattr(hf_config, "rope_parameters", None)
    if not isinstance(params, dict) or "rope_theta" not in params:
        raise UnsupportedModelError(
            f"config.rope_parameters={params!r} is not allowed: expected one flat dict with "
            "'rope_theta' (per-layer-type RoPE is not supported)"
        )
    try:
        rope = from_hf(hf_config)
    except RopeValueError as e:
        raise UnsupportedModelError(f"cannot express this model's RoPE with ropekit: {e}") from e
    if rope.interleaved:
        raise UnsupportedModelError(
            "ropekit.hf.from_hf gave interleaved=True: expected half-split pairs, as "
            "rotate_half uses"
        )
    return rope


def _check_frequencies(rope: RopeConfig, hf_config: Any, rotary_cls: type) -> None:
    """``rope`` must reproduce transformers' own initialiser for ``hf_config``."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = hf_config.rope_parameters.get("rope_type", "default")
    if rope_type == "default":
        init = rotary_cls.compute_default_rope_parameters
    elif rope_type in ROPE_INIT_FUNCTIONS:
        init = ROPE_INIT_FUNCTIONS[rope_type]
    else:
        raise UnsupportedModelError(
            f"rope_type={rope_type!r} is not allowed: transformers has no initialiser for it, "
            f"expected 'default' or one of {sorted(ROPE_INIT_FUNCTIONS)}"
        )
    lengths: list[int | None] = [None]
    if rope.scaling.depends_on_seq_len:  # also the long-context table set
        lengths.append(2 * int(hf_config.max_position_embeddings))
    for seq_len in lengths:
        hf_freq, hf_factor = init(hf_config, **({} if seq_len is None else {"seq_len": seq_len}))
        hf_freq = hf_freq.detach().to("cpu", torch.float64)
        ours, factor = rope.frequencies(seq_len)
        if ours.shape != hf_freq.shape:
            raise UnsupportedModelError(
                f"ropekit.hf.from_hf gives {ours.numel()} frequencies, transformers "
                f"{hf_freq.numel()} (seq_len={seq_len}): expected equal counts"
            )
        rel = float(((ours - hf_freq).abs() / hf_freq.abs()).max())
        rel_factor = abs(factor - float(hf_factor)) / abs(float(hf_factor))
        if not (rel <= _FREQ_RTOL and rel_factor <= _FREQ_RTOL):
            raise UnsupportedModelError(
                f"ropekit.hf.from_hf does not reproduce transformers' {rope_type!r} RoPE "
                f"(seq_len={seq_len}): relative difference {rel:.3g} in inv_freq and "
                f"{rel_factor:.3g} in the attention factor, expected <= {_FREQ_RTOL}"
            )


def _check_rotation(original: Callable[..., Any], n: int, where: str) -> None:
    """The family's ``apply_rotary_pos_emb`` must be ropekit's half-split rotation."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 3, 2 * n, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 1, 3, 2 * n, generator=gen, dtype=torch.float64)
    angle = torch.randn(1, 3, n, generator=gen, dtype=torch.float64)
    cos, sin = torch.cos(angle), torch.sin(angle)
    want = original(q, k, *doubled(cos, sin))
    got = _ropekit_apply(n)(q, k, *doubled(cos, sin))
    if not all(torch.allclose(w, g, rtol=0, atol=1e-12) for w, g in zip(want, got, strict=True)):
        raise UnsupportedModelError(
            f"{where}.{_APPLY_NAME} does not compute q*cos + rotate_half(q)*sin, the "
            "half-split rotation ropekit implements"
        )


# ---------------------------------------------------------------------------------------
# Public API.


@dataclasses.dataclass(eq=False)
class _Patch:
    """What :func:`patch` changed on one model, to undo it exactly."""

    rope: RopeConfig | None  # None for a family patch (one config per rotary module)
    # (parent, attribute name, original rotary module) for every reference replaced
    rotary: list[tuple[nn.Module, str, nn.Module]]
    # (attention module, the instance attribute ``forward`` it had before, or None)
    attention: list[tuple[nn.Module, Any]]


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` is currently patched by :func:`patch`."""
    return isinstance(getattr(model, _RECORD_ATTR, None), _Patch)


def patch(model: nn.Module) -> nn.Module:
    """Make ``model`` use ropekit's exact tables and rotation kernel, in place.

    Args:
        model: a transformers model (any head: ``...ForCausalLM``, the bare model, ...)
            whose ``config.model_type`` is in :data:`SUPPORTED_MODEL_TYPES`.

    Returns:
        ``model`` itself (see the module docstring for what changes).

    Raises:
        UnsupportedModelError: unsupported transformers version, model type, RoPE
            configuration or code layout; the model is left untouched.
        RopeValueError: ``model`` is already patched.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=1,
        ...     num_attention_heads=4, intermediate_size=128, vocab_size=128))
        >>> patch(model) is model and is_patched(model)
        True
        >>> type(model.model.rotary_emb).__name__
        'RotaryTables'
        >>> unpatch(model) is model and not is_patched(model)
        True
    """
    check_transformers_version()
    model_type = _check_model_type(model)
    if is_patched(model):
        raise RopeValueError(
            f"{type(model).__name__} is already patched by ropekit: expected an unpatched "
            "model (call unpatch(model) first)"
        )
    if model_type in FAMILIES:
        return _patch_family(model, FAMILIES[model_type])
    modeling = _modeling_module(model_type)
    rope = _rope_config(model.config)

    rotary: list[nn.Module] = []
    attention: list[nn.Module] = []
    for module in model.modules():
        cls = type(module)
        if cls.__module__ != modeling.__name__:
            continue
        if cls.__name__.endswith("RotaryEmbedding"):
            rotary.append(module)
        elif _calls_global_apply(cls):
            attention.append(module)
    if not rotary or not attention:
        raise UnsupportedModelError(
            f"found {len(rotary)} rotary embedding and {len(attention)} attention modules of "
            f"{modeling.__name__} in {type(model).__name__}: expected at least one of each"
        )
    for cls in {type(m) for m in rotary}:
        _check_frequencies(rope, model.config, cls)
    _check_rotation(getattr(modeling, _APPLY_NAME), rope.n_pairs, modeling.__name__)
    overrides = {_APPLY_NAME: _ropekit_apply(rope.n_pairs)}
    forwards = {
        cls: _rebind_globals(cls.forward, overrides) for cls in {type(m) for m in attention}
    }

    # Every check passed: change the model (model.modules() lists each rotary module once).
    return _install(model, rope, {id(m): RotaryTables(rope) for m in rotary}, attention, forwards)


def _install(
    model: nn.Module,
    rope: RopeConfig | None,
    replacements: dict[int, nn.Module],
    attention: list[nn.Module],
    forwards: dict[type, Callable[..., Any]],
) -> nn.Module:
    """Swap every reference to a rotary module for ``replacements[id(module)]`` (a module
    referenced from several places, e.g. a multi-token-prediction head sharing it, gets
    its one replacement everywhere), bind the re-bound ``forwards`` on each attention
    module, and record it all for :func:`unpatch`. Only after every check passed."""
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent._modules.items()
        if id(child) in replacements
    ]
    for parent, name, child in swaps:
        setattr(parent, name, replacements[id(child)])
    scoped: list[tuple[nn.Module, Any]] = []
    for module in attention:
        scoped.append((module, module.__dict__.get("forward")))
        module.forward = types.MethodType(forwards[type(module)], module)
    setattr(model, _RECORD_ATTR, _Patch(rope, swaps, scoped))
    return model


def _check_tables(part: Part, original: nn.Module, ours: nn.Module, where: str) -> None:
    """``ours`` must return what a fresh float32 instance of the family's class returns.

    A fresh instance (CPU, float32, from the same config) rather than ``original``
    itself: ``model.to(torch.bfloat16)`` rounds the original's ``inv_freq`` buffer, which
    would fail an exact-format check for the wrong reason."""
    try:
        peer = type(original)(original.config).eval()
    except Exception as e:  # the class's own constructor: any failure means "not our layout"
        raise UnsupportedModelError(
            f"cannot rebuild {where}.{part.rotary} from its config for the table check: {e}"
        ) from e
    was_training = ours.training
    ours.eval()
    try:
        for args, kwargs in part.probes(original):
            with torch.no_grad():
                want = peer(*args, **kwargs)
                got = ours(*args, **kwargs)
            for name, w, g in zip(("cos", "sin"), _parts(want), _parts(got), strict=True):
                if w.shape != g.shape:
                    raise UnsupportedModelError(
                        f"{where}.{part.rotary} returns {name} of shape {tuple(w.shape)}, "
                        f"ropekit's drop-in {tuple(g.shape)}: expected the same format"
                    )
                err = float((w.to(torch.float64) - g.to(torch.float64)).abs().max())
                if not err <= _TABLE_ATOL:
                    raise UnsupportedModelError(
                        f"ropekit's tables differ from {where}.{part.rotary} by {err:.3g} in "
                        f"{name} at small positions: expected <= {_TABLE_ATOL} (the family's "
                        "config is read differently, or its layout changed)"
                    )
    finally:
        ours.train(was_training)


def _parts(tables: Any) -> tuple[Any, ...]:
    """``(cos, sin)`` of a rotary module's output: the pair itself, or the real and
    imaginary parts of a complex table (Llama 4)."""
    if isinstance(tables, torch.Tensor):
        if not tables.is_complex():
            raise UnsupportedModelError(
                f"a rotary module returned a real {tables.dtype} tensor: expected (cos, sin) "
                "or a complex table"
            )
        return tables.real, tables.imag
    return tuple(tables)


def _check_family_rotation(part: Part, original: Callable[..., Any], n: int, where: str) -> None:
    """The family's rotation global must compute what ropekit's drop-in computes."""
    ours = part.dropin(n)
    for args, kwargs in part.rotation_probes(n):
        want, got = original(*args, **kwargs), ours(*args, **kwargs)
        if isinstance(want, torch.Tensor):  # one tensor per call (Gemma 4)
            want, got = (want,), (got,)
        for w, g in zip(want, got, strict=True):
            err = float((w.to(torch.float64) - g.to(torch.float64)).abs().max())
            if not err <= part.rotation_atol:
                raise UnsupportedModelError(
                    f"{where}.{part.apply} differs from ropekit's rotation by {err:.3g} on a "
                    f"float64 probe: expected <= {part.rotation_atol} (q*cos + rotate_half(q)*sin "
                    "with the family's table format)"
                )


def _patch_family(model: nn.Module, family: Family) -> nn.Module:
    """:func:`patch` for a model of :data:`FAMILY_MODEL_TYPES`: check everything, then
    swap each part's rotary modules and rebind the attention forwards."""
    try:
        modeling = importlib.import_module(family.modeling)
    except ImportError as e:
        raise UnsupportedModelError(f"cannot import {family.modeling}: {e}") from e
    for part in family.parts:
        if not isinstance(getattr(modeling, part.rotary, None), type) or not callable(
            getattr(modeling, part.apply, None)
        ):
            raise UnsupportedModelError(
                f"{family.modeling} has no class {part.rotary} or no function {part.apply}: "
                "this transformers is laid out differently from the versions ropekit supports"
            )
    applies = {part.apply for part in family.parts}
    found: dict[str, list[nn.Module]] = {part.rotary: [] for part in family.parts}
    attention: list[nn.Module] = []
    for module in model.modules():
        cls = type(module)
        if cls.__module__ != family.modeling:
            continue
        if cls.__name__ in found:
            found[cls.__name__].append(module)
            continue
        code = getattr(inspect.unwrap(cls.forward), "__code__", None)
        if code is not None and applies & set(code.co_names):
            attention.append(module)
    missing = [name for name, mods in found.items() if not mods]
    called = {
        name for m in attention for name in inspect.unwrap(type(m).forward).__code__.co_names
    }
    uncalled = sorted(applies - called)
    if missing or uncalled:
        raise UnsupportedModelError(
            f"{type(model).__name__} ({family.modeling}): no {missing} rotary modules or no "
            f"attention calling {uncalled}: expected every part of the family (the composite "
            "model, or a model of its own type)"
        )

    replacements: dict[int, nn.Module] = {}
    pairs: dict[str, int] = {}
    for part in family.parts:
        counts = set()
        for module in found[part.rotary]:
            try:
                ours = part.build(module, modeling)
            except RopeValueError as e:
                raise UnsupportedModelError(
                    f"cannot express {part.rotary} with ropekit: {e}"
                ) from e
            _check_tables(part, module, ours, family.modeling)
            ours.train(module.training)
            replacements[id(module)] = ours
            counts.add(ours.n_pairs)
        if len(counts) != 1:
            raise UnsupportedModelError(
                f"{part.rotary} modules of {sorted(counts)} pairs in one model: expected one "
                f"pair count for {part.apply}"
            )
        pairs[part.apply] = counts.pop()
        _check_family_rotation(part, getattr(modeling, part.apply), pairs[part.apply],
                               family.modeling)  # fmt: skip
    overrides = {part.apply: part.dropin(pairs[part.apply]) for part in family.parts}
    forwards = {
        cls: _rebind_globals(cls.forward, overrides) for cls in {type(m) for m in attention}
    }

    # Every check passed: change the model.
    return _install(model, None, replacements, attention, forwards)


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the original rotary modules and attention ``forward`` come back.

    Afterwards ``model`` holds exactly the objects it held before :func:`patch` and
    computes exactly what it computed then.

    Raises:
        RopeValueError: ``model`` is not patched.
    """
    record = getattr(model, _RECORD_ATTR, None)
    if not isinstance(record, _Patch):
        raise RopeValueError(
            f"{type(model).__name__} is not patched by ropekit: expected a model returned by "
            "ropekit.hf.patch"
        )
    for parent, name, original in reversed(record.rotary):
        setattr(parent, name, original)
    for module, previous in record.attention:
        if previous is None:
            del module.forward
        else:
            module.forward = previous
    delattr(model, _RECORD_ATTR)
    return model


@contextlib.contextmanager
def patched(model: nn.Module) -> Iterator[nn.Module]:
    """``with patched(model): ...`` runs the block on the patched model, then unpatches it."""
    patch(model)
    try:
        yield model
    finally:
        unpatch(model)
