"""Patch a diffusers transformer to use ropekit's exact N-axis tables and rotation.

Notation: ``n`` rotated pairs, ``d = 2n`` rotated lanes, ``S`` tokens, ``B`` batch, ``H``
heads, ``D`` head dim (LTX: the hidden size, which it rotates before splitting heads).

How RoPE flows through the supported diffusers transformers (0.42.x): the transformer
owns one rotary module (``pos_embed`` for Flux / Flux 2, ``rope`` for Wan, HunyuanVideo,
LTX-Video; CogVideoX has none: its pipeline builds the tables) that returns ``(cos, sin)``
with each band's value on lanes ``(2j, 2j + 1)``. The tables travel through the blocks as
``image_rotary_emb`` / ``rotary_emb`` to each attention module's *processor* (an object in
``attn.processor``), whose ``__call__`` rotates queries and keys with a rotation function
found in one of three ways:

* ``"global"``: a name of the processor's module (Flux, Flux 2: ``apply_rotary_emb``
  imported from ``diffusers.models.embeddings``; LTX: its own ``apply_rotary_emb``);
* ``"import"``: a ``from ..embeddings import apply_rotary_emb`` statement inside
  ``__call__`` (HunyuanVideo, CogVideoX);
* ``"nested"``: a function ``apply_rotary_emb`` defined inside ``__call__`` (Wan).

What :func:`patch` changes
--------------------------
1. **Tables.** The rotary module is replaced (per transformer instance) by a
   :mod:`ropekit.diffusers.tables` module taking the same arguments and returning the
   same format, from :func:`ropekit.axes.cos_sin`: float64 angles rounded once, float32
   tables (float64 for float64 inputs), no buffers for ``.to(dtype)`` to round.
2. **Rotation, per instance.** Each supported processor is replaced by a copy (same
   instance state) of a subclass of its class whose ``__call__`` is the class's own code
   with a private copy of its module's globals, in which the rotation name calls
   :func:`ropekit.apply_rope` (``interleaved=True``). For ``"import"`` the copy also gets
   private builtins whose ``__import__`` hands that one statement ropekit's function
   (every other import is the real one); for ``"nested"`` the nested function's code
   object is swapped, in the copy's code only, for a two-line one calling ropekit.
   Diffusers' classes and modules, and every other model, are untouched: no global
   change is needed for any supported family.
3. **Checked first, then applied.** :func:`patch` checks the diffusers version, the class
   (:data:`SUPPORTED`), the rotary module's parameters (its own tables on a non-square
   probe grid must match ropekit's within 1e-5, which catches a misread theta, axis
   split or coordinate mapping), every processor (a known class whose code calls the
   rotation as described; an unknown processor that mentions rotary embeddings is
   refused), and, with a float64 probe, that the family's rotation function computes the
   rotation ropekit does (within 1e-5: diffusers' own function rotates in float32). Any
   failure raises :class:`UnsupportedTransformerError` and leaves the transformer
   untouched.

CogVideoX: only the rotation is patched; pass exact tables from
:func:`ropekit.diffusers.cogvideox_rotary_emb` (see ``docs/diffusers.md``).

Patching a patched transformer or unpatching an unpatched one raises
:class:`~ropekit.RopeValueError`. Processors set after :func:`patch` (``set_attn_processor``)
are not patched, and :func:`unpatch` puts the patch-time processors back.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import importlib
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..apply.api import apply_rope
from ..axes.config import AxesConfig
from ..axes.positions import flux2_ids, flux_ids
from ..axes.presets import preset
from ..errors import RopeValueError, in_version_window
from .tables import FluxIdsTables, LTXVideoTables, VideoGridTables, interleave_pairs

__all__ = [
    "DIFFUSERS_VERSIONS",
    "SUPPORTED",
    "UnsupportedTransformerError",
    "check_diffusers_version",
    "is_patched",
    "patch",
    "patched",
    "unpatch",
]

#: ``(minimum, exclusive maximum)`` diffusers versions accepted; tested on 0.42.1.
DIFFUSERS_VERSIONS: tuple[str, str] = ("0.42.0", "0.43.0")

_APPLY = "apply_rotary_emb"
_EMBEDDINGS = "diffusers.models.embeddings"
_RECORD_ATTR = "_ropekit_diffusers_patch"
_TABLE_ATOL = 1e-5  # plus each band's float32 angle error (see _check_tables)
_ROTATION_ATOL = 1e-5  # diffusers' apply_rotary_emb rotates in float32 even for float64


class UnsupportedTransformerError(RopeValueError):
    """The transformer, its configuration, its processors or the installed diffusers
    cannot be patched."""


# ---------------------------------------------------------------------------------------
# ropekit's rotation, in each family's call signature.


def _halves(cos: Any, sin: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One value of each lane pair of ``[*, 2n]`` tables: ``[*, n]`` views."""
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or t.ndim < 1 or t.shape[-1] != 2 * n:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise RopeValueError(
                f"{name} of shape {shape} is not allowed: the patched transformer rotates "
                f"n={n} pairs, expected tables [..., 2n={2 * n}]"
            )
    return cos[..., 0::2], sin[..., 1::2]


def _embeddings_apply(n: int) -> Callable[..., torch.Tensor]:
    """``diffusers.models.embeddings.apply_rotary_emb``'s signature, ``use_real=True`` with
    interleaved pairs (the only form the supported families call)."""

    def apply_rotary_emb(
        x: torch.Tensor,
        freqs_cis: Any,
        use_real: bool = True,
        use_real_unbind_dim: int = -1,
        sequence_dim: int = 2,
    ) -> torch.Tensor:
        if use_real is not True or use_real_unbind_dim != -1 or sequence_dim not in (1, 2):
            raise RopeValueError(
                f"use_real={use_real!r}, use_real_unbind_dim={use_real_unbind_dim!r}, "
                f"sequence_dim={sequence_dim!r} is not allowed: the patch supports "
                "use_real=True, use_real_unbind_dim=-1, sequence_dim 1 or 2"
            )
        if not isinstance(freqs_cis, (tuple, list)) or len(freqs_cis) != 2:
            raise RopeValueError("freqs_cis is not allowed: expected a (cos, sin) pair")
        c, s = _halves(freqs_cis[0], freqs_cis[1], n)
        if sequence_dim == 1:  # x [B, S, H, D]: tables [S, 1, n]
            c, s = c.unsqueeze(-2), s.unsqueeze(-2)
        return apply_rope(x, c.to(x.device), s.to(x.device), interleaved=True)

    return apply_rotary_emb


def _ltx_apply(n: int) -> Callable[..., torch.Tensor]:
    """LTX's ``apply_rotary_emb(x [B, S, D], (cos, sin) [B, S, D])``."""

    def apply_rotary_emb(x: torch.Tensor, freqs: Any) -> torch.Tensor:
        c, s = _halves(freqs[0], freqs[1], n)
        return apply_rope(x, c, s, interleaved=True)

    return apply_rotary_emb


def _wan_apply(n: int) -> Callable[..., torch.Tensor]:
    """Wan's nested ``apply_rotary_emb(x [B, S, H, D], cos, sin [1, S, 1, D])``."""

    def apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor,
                         freqs_sin: torch.Tensor) -> torch.Tensor:  # fmt: skip
        c, s = _halves(freqs_cos, freqs_sin, n)
        return apply_rope(hidden_states, c, s, interleaved=True)

    return apply_rotary_emb


_WAN_ROTATE = "_ropekit_wan_rotate"


def _wan_nested(hidden_states, freqs_cos, freqs_sin):  # type: ignore[no-untyped-def]
    # code template for Wan's nested function: the name resolves in the copied globals
    return _ropekit_wan_rotate(hidden_states, freqs_cos, freqs_sin)  # type: ignore[name-defined] # noqa: F821


_CALL_FORMS = {"embeddings": _embeddings_apply, "ltx": _ltx_apply, "wan": _wan_apply}


# ---------------------------------------------------------------------------------------
# Families.


@dataclasses.dataclass(frozen=True)
class _Family:
    name: str
    class_name: str
    module: str  # the transformer's modeling module
    rotary_attr: str | None  # attribute of the rotary module (None: CogVideoX)
    processor_module: str
    processors: tuple[str, ...]
    how: str  # "global" | "import" | "nested"
    call_form: str  # key of _CALL_FORMS


_T = "diffusers.models.transformers."
_FAMILIES: tuple[_Family, ...] = (
    _Family("flux", "FluxTransformer2DModel", _T + "transformer_flux", "pos_embed",
            _T + "transformer_flux", ("FluxAttnProcessor",), "global", "embeddings"),
    _Family("flux2", "Flux2Transformer2DModel", _T + "transformer_flux2", "pos_embed",
            _T + "transformer_flux2", ("Flux2AttnProcessor", "Flux2ParallelSelfAttnProcessor",
                                       "Flux2KVAttnProcessor", "Flux2KVParallelSelfAttnProcessor"),
            "global", "embeddings"),
    _Family("wan", "WanTransformer3DModel", _T + "transformer_wan", "rope",
            _T + "transformer_wan", ("WanAttnProcessor",), "nested", "wan"),
    _Family("hunyuan_video", "HunyuanVideoTransformer3DModel", _T + "transformer_hunyuan_video",
            "rope", _T + "transformer_hunyuan_video", ("HunyuanVideoAttnProcessor2_0",),
            "import", "embeddings"),
    _Family("cogvideox", "CogVideoXTransformer3DModel", _T + "cogvideox_transformer_3d", None,
            "diffusers.models.attention_processor",
            ("CogVideoXAttnProcessor2_0", "FusedCogVideoXAttnProcessor2_0"), "import", "embeddings"),
    _Family("ltx_video", "LTXVideoTransformer3DModel", _T + "transformer_ltx", "rope",
            _T + "transformer_ltx", ("LTXVideoAttnProcessor",), "global", "ltx"),
)  # fmt: skip

#: The diffusers transformer classes :func:`patch` accepts (each covered by
#: ``tests/test_diffusers_patch.py``).
SUPPORTED: tuple[str, ...] = tuple(f.class_name for f in _FAMILIES)


def _axes_and_tables(family: _Family, transformer: nn.Module) -> tuple[AxesConfig, nn.Module | None]:
    """ropekit's config for the live rotary module, and its replacement module."""
    cfg = transformer.config
    rot = getattr(transformer, family.rotary_attr) if family.rotary_attr else None
    try:
        if family.name in ("flux", "flux2"):
            axes = preset(family.name, axes_dims=tuple(int(a) for a in rot.axes_dim),
                          theta=float(rot.theta))  # fmt: skip
            return axes, FluxIdsTables(axes, use_first_axes=family.name == "flux2")
        if family.name == "wan":
            axes = preset("wan", head_dim=int(rot.attention_head_dim))
            dims = (rot.t_dim, rot.h_dim, rot.w_dim)
            if tuple(axes.axis.count(a) * 2 for a in range(3)) != tuple(dims):
                raise UnsupportedTransformerError(
                    f"Wan rope splits {dims}: expected ropekit's wan preset split"
                )
            return axes, VideoGridTables(axes, tuple(rot.patch_size), wan_shape=True)
        if family.name == "hunyuan_video":
            axes = preset("hunyuan_video", axes_dims=tuple(int(a) for a in rot.rope_dim),
                          theta=float(rot.theta))  # fmt: skip
            p = (rot.patch_size_t, rot.patch_size, rot.patch_size)
            return axes, VideoGridTables(axes, p, wan_shape=False)
        if family.name == "ltx_video":
            axes = preset("ltx_video", dim=int(rot.dim), theta=float(rot.theta))
            base = (rot.base_num_frames, rot.base_height, rot.base_width)
            return axes, LTXVideoTables(axes, base, rot.patch_size, rot.patch_size_t)
        # cogvideox
        if not cfg.use_rotary_positional_embeddings:
            raise UnsupportedTransformerError(
                "CogVideoXTransformer3DModel with use_rotary_positional_embeddings=False "
                "is not allowed: it has no rotary embedding to patch (expected True)"
            )
        return preset("cogvideox", head_dim=int(cfg.attention_head_dim)), None
    except UnsupportedTransformerError:
        raise
    except (RopeValueError, AttributeError, TypeError, ValueError) as e:
        raise UnsupportedTransformerError(
            f"cannot express {type(transformer).__name__}'s rotary embedding with ropekit: {e}"
        ) from e


def _probe_inputs(family: _Family, rot: nn.Module) -> tuple[tuple[Any, ...], dict[str, Any], float]:
    """Arguments for the rotary module on a non-square grid (2 frames, 3 x 5 patches), and
    the largest coordinate magnitude they give."""
    if family.name == "flux":
        return (flux_ids(3, 5, text_len=2).to(torch.float32) + 7,), {}, 11.0
    if family.name == "flux2":
        return (flux2_ids(3, 5, text_len=2, t=1).to(torch.float32),), {}, 4.0
    if family.name == "wan":
        pt, ph, pw = rot.patch_size
        return (torch.zeros(1, 1, 2 * pt, 3 * ph, 5 * pw),), {}, 4.0
    if family.name == "hunyuan_video":
        return (torch.zeros(1, 1, 2 * rot.patch_size_t, 3 * rot.patch_size, 5 * rot.patch_size),), {}, 4.0
    # ltx_video: the pipelines' scale (1 / frame rate * temporal factor, spatial factor);
    # coordinates 2 g - 1 with 0 <= g < 1
    return (torch.zeros(1, 30, 1), 2, 3, 5), {"rope_interpolation_scale": (8 / 25, 32.0, 32.0)}, 1.0


# ---------------------------------------------------------------------------------------
# Checks.


def check_diffusers_version(version: str | None = None) -> str:
    """Return ``version`` (default: the installed one) if :func:`patch` supports it.

    Raises:
        UnsupportedTransformerError: diffusers is missing or outside
            :data:`DIFFUSERS_VERSIONS`.
    """
    low, high = DIFFUSERS_VERSIONS
    if version is None:
        try:
            import diffusers
        except ImportError as e:
            raise UnsupportedTransformerError(
                f"diffusers is not installed: expected diffusers>={low},<{high}"
            ) from e
        version = str(diffusers.__version__)
    if not in_version_window(version, low, high):
        raise UnsupportedTransformerError(
            f"diffusers=={version} is not supported: expected >={low},<{high} (ropekit's "
            "diffusers patch is tested on 0.42.1)"
        )
    return version


def _family(transformer: Any) -> _Family:
    if not isinstance(transformer, nn.Module):
        raise UnsupportedTransformerError(
            f"transformer of type {type(transformer).__name__} is not allowed: expected a "
            f"diffusers transformer, one of {list(SUPPORTED)}"
        )
    cls = type(transformer)
    for family in _FAMILIES:
        if cls.__name__ == family.class_name and cls.__module__ == family.module:
            return family
    raise UnsupportedTransformerError(
        f"{cls.__module__}.{cls.__name__} is not supported: expected one of {list(SUPPORTED)}"
    )


def _check_tables(family: _Family, transformer: nn.Module, ours: nn.Module, axes: AxesConfig) -> None:
    """The live rotary module's own tables on a probe grid must be ropekit's, within the
    peer's rounding: ``eps(table dtype)`` for the values (Wan caches its tables in buffers,
    which ``model.to(bfloat16)`` rounds) plus, per band, the float32 angle error
    ``16 eps32 |freq_j| max|coordinate|`` (LTX's top band turns 15708 rad per unit in
    float32). A misread theta, axis split or coordinate mapping is off by far more."""
    rot = getattr(transformer, family.rotary_attr)
    args, kwargs, coord = _probe_inputs(family, rot)
    with torch.no_grad():
        want = rot(*args, **kwargs)
        got = ours(*args, **kwargs)
    band_tol = axes.frequencies().abs() * (16 * torch.finfo(torch.float32).eps * coord)
    for name, w, g in zip(("cos", "sin"), want, got, strict=True):
        tol = interleave_pairs(band_tol) + max(_TABLE_ATOL, torch.finfo(w.dtype).eps)
        w = w.detach().to("cpu", torch.float64)
        g = g.detach().to("cpu", torch.float64)
        excess = float(((w - g).abs() - tol).max()) if w.shape == g.shape else float("inf")
        if not excess <= 0:
            err = float((w - g).abs().max()) if w.shape == g.shape else float("inf")
            raise UnsupportedTransformerError(
                f"{type(rot).__name__} of {family.class_name} is not reproduced by ropekit: "
                f"{name} tables of shape {tuple(w.shape)} vs {tuple(g.shape)}, max abs "
                f"difference {err:.3g}, beyond the peer's rounding (unknown theta, axis "
                "split or coordinates?)"
            )


def _mentions_rotary(cls: type) -> bool:
    """Whether a processor class's ``__call__`` names a rotary embedding anywhere."""
    call = next((k.__dict__["__call__"] for k in cls.__mro__ if "__call__" in k.__dict__), None)
    code = getattr(call, "__code__", None)
    if code is None:
        return False

    def names(c: types.CodeType) -> Iterator[str]:
        yield from c.co_names + c.co_varnames
        for k in c.co_consts:
            if isinstance(k, types.CodeType):
                yield from names(k)

    return any("rotary" in name for name in names(code))


def _nested_code(code: types.CodeType) -> types.CodeType | None:
    hits = [c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == _APPLY]
    return hits[0] if len(hits) == 1 else None


def _check_call_site(family: _Family, cls: type, modeling: types.ModuleType) -> None:
    call = cls.__dict__.get("__call__")
    code = getattr(call, "__code__", None)
    where = f"{cls.__module__}.{cls.__qualname__}.__call__"
    if not isinstance(call, types.FunctionType) or code is None:
        raise UnsupportedTransformerError(f"{where} is not a plain Python function: cannot re-bind it")
    if family.how == "global":
        ok = _APPLY in code.co_names and callable(getattr(modeling, _APPLY, None))
    elif family.how == "import":
        ok = "embeddings" in code.co_names and _APPLY in code.co_names
    else:
        ok = _nested_code(code) is not None
    if not ok:
        raise UnsupportedTransformerError(
            f"{where} does not call {_APPLY} the way ropekit expects ({family.how!r}): this "
            "diffusers is laid out differently from the versions ropekit supports"
        )


def _family_rotation(family: _Family, modeling: types.ModuleType, cls: type) -> Callable[..., Any]:
    """The function the processor calls today (for the probe)."""
    if family.how == "import":
        return importlib.import_module(_EMBEDDINGS).apply_rotary_emb
    if family.how == "global":
        return getattr(modeling, _APPLY)
    nested = _nested_code(cls.__call__.__code__)
    return types.FunctionType(nested, cls.__call__.__globals__, _APPLY)


def _check_rotation(family: _Family, original: Callable[..., Any], n: int, where: str) -> None:
    """Float64 probe: the family's rotation and ropekit's, on the family's call form."""
    gen = torch.Generator().manual_seed(0)
    angle = torch.randn(1, 3, n, generator=gen, dtype=torch.float64) * 3
    c, s = interleave_pairs(torch.cos(angle)), interleave_pairs(torch.sin(angle))
    ours = _CALL_FORMS[family.call_form](n)
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    if family.call_form == "embeddings":
        x = torch.randn(2, 3, 2, 2 * n, generator=gen, dtype=torch.float64)  # [B, S, H, D]
        cases.append(((x, (c[0], s[0])), {"sequence_dim": 1}))
        cases.append(((x.transpose(1, 2), (c[0], s[0])), {}))  # [B, H, S, D]
    elif family.call_form == "ltx":
        x = torch.randn(2, 3, 2 * n, generator=gen, dtype=torch.float64)
        cases.append(((x, (c.expand(2, -1, -1), s.expand(2, -1, -1))), {}))
    else:
        x = torch.randn(2, 3, 2, 2 * n, generator=gen, dtype=torch.float64)
        cases.append(((x, c[:, :, None], s[:, :, None]), {}))
    for args, kwargs in cases:
        want = original(*args, **kwargs)
        got = ours(*args, **kwargs)
        if want.shape != got.shape or not torch.allclose(want.to(torch.float64), got, rtol=0,
                                                         atol=_ROTATION_ATOL):  # fmt: skip
            raise UnsupportedTransformerError(
                f"{where} does not compute the interleaved rotation ropekit implements "
                "(float64 probe)"
            )


# ---------------------------------------------------------------------------------------
# Re-binding a processor's __call__.


class _ModuleView(types.ModuleType):
    """A module as ``from m import ...`` sees it, with some names overridden."""

    def __init__(self, module: types.ModuleType, overrides: dict[str, Any]) -> None:
        super().__init__(module.__name__)
        self.__dict__.update(overrides)
        self._ropekit_module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_ropekit_module"], name)


def _scoped_import(overrides: dict[str, Any]) -> Callable[..., Any]:
    real = builtins.__import__

    def __import__(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                   level: int = 0) -> Any:  # fmt: skip
        module = real(name, globals, locals, fromlist, level)
        if fromlist and _APPLY in fromlist and getattr(module, "__name__", None) == _EMBEDDINGS:
            return _ModuleView(module, overrides)
        return module

    return __import__


def _rebound_call(family: _Family, cls: type, n: int) -> types.FunctionType:
    """A copy of ``cls.__call__`` whose rotation is ropekit's (same code otherwise)."""
    call = cls.__dict__["__call__"]
    ours = _CALL_FORMS[family.call_form](n)
    namespace = dict(call.__globals__)
    code = call.__code__
    if family.how == "global":
        namespace[_APPLY] = ours
    elif family.how == "import":
        # private builtins: the function-level `from ..embeddings import apply_rotary_emb`
        # of this copy gets ropekit's function; the module itself is not touched
        private = dict(vars(builtins))
        private["__import__"] = _scoped_import({_APPLY: ours})
        namespace["__builtins__"] = private
    else:
        nested = _nested_code(code)
        consts = tuple(_wan_nested.__code__.replace(co_name=_APPLY, co_qualname=nested.co_qualname)
                       if k is nested else k for k in code.co_consts)  # fmt: skip
        code = code.replace(co_consts=consts)
        namespace[_WAN_ROTATE] = ours
    new = types.FunctionType(code, namespace, call.__name__, call.__defaults__, call.__closure__)
    new.__kwdefaults__ = dict(call.__kwdefaults__) if call.__kwdefaults__ else None
    new.__qualname__ = call.__qualname__
    new.__module__ = call.__module__
    new.__doc__ = call.__doc__
    new.__annotations__ = dict(call.__annotations__)
    return new


# ---------------------------------------------------------------------------------------
# Public API.


@dataclasses.dataclass(eq=False)
class _Patch:
    """What :func:`patch` changed on one transformer, to undo it exactly."""

    family: str
    axes: AxesConfig
    rotary: list[tuple[nn.Module, str, nn.Module]]
    processors: list[tuple[nn.Module, Any]]


def is_patched(transformer: nn.Module) -> bool:
    """Whether ``transformer`` is currently patched by :func:`patch`."""
    return isinstance(getattr(transformer, _RECORD_ATTR, None), _Patch)


def patch(transformer: nn.Module) -> nn.Module:
    """Make a diffusers transformer use ropekit's exact tables and rotation, in place.

    Args:
        transformer: an instance of one of :data:`SUPPORTED` (``FluxTransformer2DModel``,
            ``Flux2Transformer2DModel``, ``WanTransformer3DModel``,
            ``HunyuanVideoTransformer3DModel``, ``CogVideoXTransformer3DModel``,
            ``LTXVideoTransformer3DModel``) with its default attention processors.

    Returns:
        ``transformer`` itself (see the module docstring for what changes).

    Raises:
        UnsupportedTransformerError: unsupported diffusers version, class, rotary
            parameters or processors; the transformer is left untouched.
        RopeValueError: ``transformer`` is already patched.
    """
    check_diffusers_version()
    family = _family(transformer)
    if is_patched(transformer):
        raise RopeValueError(
            f"{type(transformer).__name__} is already patched by ropekit: expected an "
            "unpatched transformer (call unpatch(transformer) first)"
        )
    modeling = importlib.import_module(family.processor_module)
    axes, tables = _axes_and_tables(family, transformer)
    if tables is not None:
        _check_tables(family, transformer, tables, axes)
    n = axes.n_pairs

    allowed = {getattr(modeling, name, None): name for name in family.processors}
    attention: list[tuple[nn.Module, Any]] = []
    for name, module in transformer.named_modules():
        proc = module.__dict__.get("processor")
        if proc is None:
            continue
        cls = type(proc)
        if cls in allowed:
            attention.append((module, proc))
        elif _mentions_rotary(cls):
            raise UnsupportedTransformerError(
                f"{name}.processor of class {cls.__qualname__} is not supported: expected "
                f"one of {list(family.processors)} (processors that rotate must be ones "
                "ropekit can re-bind)"
            )
    if not attention:
        raise UnsupportedTransformerError(
            f"{type(transformer).__name__} has no processor of {list(family.processors)}: "
            "expected the default attention processors"
        )
    calls: dict[type, types.FunctionType] = {}
    for cls in {type(p) for _, p in attention}:
        _check_call_site(family, cls, modeling)
        _check_rotation(family, _family_rotation(family, modeling, cls), n,
                        f"{cls.__module__}.{cls.__qualname__}")  # fmt: skip
        calls[cls] = _rebound_call(family, cls, n)
    subclasses = {
        cls: type(cls.__name__, (cls,), {"__call__": call, "__module__": cls.__module__,
                                          "_ropekit_patched": True})
        for cls, call in calls.items()
    }

    # Every check passed: change the transformer. A processor shared by several modules
    # (set_attn_processor with one instance) gets one shared replacement.
    replacements: dict[int, Any] = {}
    for module, proc in attention:
        if id(proc) not in replacements:
            new = object.__new__(subclasses[type(proc)])
            new.__dict__.update(proc.__dict__)
            replacements[id(proc)] = new
        module.processor = replacements[id(proc)]
    rotary: list[tuple[nn.Module, str, nn.Module]] = []
    if tables is not None:
        rotary.append((transformer, family.rotary_attr, getattr(transformer, family.rotary_attr)))
        setattr(transformer, family.rotary_attr, tables)
    setattr(transformer, _RECORD_ATTR, _Patch(family.name, axes, rotary, attention))
    return transformer


def unpatch(transformer: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the original rotary module and processors come back.

    Raises:
        RopeValueError: ``transformer`` is not patched.
    """
    record = getattr(transformer, _RECORD_ATTR, None)
    if not isinstance(record, _Patch):
        raise RopeValueError(
            f"{type(transformer).__name__} is not patched by ropekit: expected a transformer "
            "returned by ropekit.diffusers.patch"
        )
    for parent, name, original in reversed(record.rotary):
        setattr(parent, name, original)
    for module, proc in record.processors:
        module.processor = proc
    delattr(transformer, _RECORD_ATTR)
    return transformer


@contextlib.contextmanager
def patched(transformer: nn.Module) -> Iterator[nn.Module]:
    """``with patched(transformer): ...`` runs the block patched, then unpatches."""
    patch(transformer)
    try:
        yield transformer
    finally:
        unpatch(transformer)
