"""Backends: which implementation rotates a call, and the autograd shared by the kernels.

Every backend computes the same thing (:mod:`ropekit.apply.eager`); they differ in speed,
in the devices they run on and in what they cost to start:

============  ==========================================================================
``reference`` the formula in torch ops (cat/stack); differentiable in ``x`` and the tables.
``torch``     torch ops writing into slices of the output, no ``cat`` or temporaries
              (~0.6x the time of ``reference``); any device.
``cpu``       one-pass C kernel (:mod:`ropekit.apply.cpu`), q and k in one call; CPU only;
              compiled once per machine (~1-3 s), then loaded from a disk cache (~3 ms).
``compiled``  ``torch.compile`` of the formula (:mod:`ropekit.apply.compiled`); seconds of
              compilation per process and dtype.
``triton``    the Triton kernel (:mod:`ropekit.apply.triton_kernel`); CUDA.
``auto``      ``cpu`` on CPU tensors (``torch`` if no C compiler works), ``triton`` on CUDA
              tensors (``torch`` if Triton is missing), ``torch`` elsewhere, and
              ``reference`` when the tables require grad.
============  ==========================================================================

Inside ``torch.compile`` every backend but ``triton`` (a registered custom op) traces
``reference``, which Inductor fuses into a single kernel; an opaque call would only stop
that fusion.

Gradients: a rotation's Jacobian is the rotation itself, ``dy/dx = R(θ)``, so the gradient
is ``R(θ)ᵀ g = R(-θ) g``: the same kernel with ``sin`` negated. :class:`_Rotate` wraps every
kernel that way: it saves only the tables (no activations), and its backward is again a
``_Rotate``, so double backward works too. Table gradients need ``reference``.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import RopeValueError
from .eager import rope_reference, rotate_torch

__all__ = ["Backend", "parse_backend", "resolve_backend", "rotate"]

#: ``kernel(xs, outs, cos, sin, *, interleaved, inverse) -> outs``: writes the rotation of
#: each ``xs[i]`` into ``outs[i]`` (which may be ``xs[i]``), or into new tensors that it
#: allocates when ``outs`` is None (the compiled backend lets its graph allocate them).
Kernel = Callable[..., tuple[torch.Tensor, ...]]


class Backend(str, enum.Enum):
    """Implementation choices for :func:`ropekit.apply_rope` (plain strings work too)."""

    AUTO = "auto"
    REFERENCE = "reference"
    TORCH = "torch"
    CPU = "cpu"
    COMPILED = "compiled"
    TRITON = "triton"

    def __str__(self) -> str:
        return self.value


_BY_NAME = {b.value: b for b in Backend}


def parse_backend(backend: Backend | str) -> Backend:
    """``backend`` as a :class:`Backend`; strings are matched to the values."""
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, str) and backend in _BY_NAME:
        return _BY_NAME[backend]
    raise RopeValueError(
        f"backend={backend!r} is not allowed: expected one of {sorted(_BY_NAME)} or a ropekit.Backend"
    )


@functools.cache
def _triton_importable() -> bool:
    try:
        from . import triton_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_apply() -> Callable[..., torch.Tensor]:
    try:
        from .triton_kernel import triton_apply_rope
    except ImportError as err:
        raise RopeValueError(
            f"backend='triton' is not available: importing ropekit.apply.triton_kernel failed ({err})"
        ) from err
    return triton_apply_rope


def resolve_backend(
    backend: Backend | str, device: torch.device, *, tables_need_grad: bool = False
) -> Backend:
    """The concrete backend that ``backend`` means for tensors on ``device`` (never AUTO).

    Explicit choices are returned as given (after checking they can run there).
    """
    choice = parse_backend(backend)
    if choice is Backend.AUTO:
        if tables_need_grad:
            return Backend.REFERENCE
        if device.type == "cpu":
            return Backend.CPU if _kernel(Backend.CPU) is not None else Backend.TORCH
        if device.type == "cuda" and _triton_importable():
            return Backend.TRITON
        return Backend.TORCH
    if choice is Backend.CPU and device.type != "cpu":
        raise RopeValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
    if tables_need_grad and choice is not Backend.REFERENCE:
        raise RopeValueError(
            f"cos/sin require grad, which backend={choice.value!r} does not compute: use "
            "backend='reference' (or 'auto') to differentiate the tables"
        )
    return choice


@functools.cache
def _kernel(choice: Backend) -> Kernel | None:
    """The kernel of a kernel backend (imported on first use); None if it cannot run here."""
    if choice is Backend.CPU:
        from .cpu import cpu_kernel_available, rotate_cpu

        return rotate_cpu if cpu_kernel_available() else None
    if choice is Backend.COMPILED:
        from .compiled import rotate_compiled

        return rotate_compiled
    return rotate_torch


class _Rotate(torch.autograd.Function):
    """``ys = R(±θ) xs`` by ``kernel``; backward: ``R(∓θ)`` by the same kernel."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        kernel: Kernel,
        cos: torch.Tensor,
        sin: torch.Tensor,
        interleaved: bool,
        inverse: bool,
        inplace: bool,
        *xs: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        outs = kernel(
            xs, xs if inplace else None, cos, sin, interleaved=interleaved, inverse=inverse
        )
        if inplace:
            ctx.mark_dirty(*xs)
        ctx.save_for_backward(cos, sin)
        ctx.kernel, ctx.interleaved, ctx.inverse = kernel, interleaved, inverse
        ctx.set_materialize_grads(False)
        return outs

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        cos, sin = ctx.saved_tensors
        present = [i for i, g in enumerate(grads) if g is not None]
        result: list[torch.Tensor | None] = [None] * len(grads)
        if present:
            rotated = _Rotate.apply(
                ctx.kernel,
                cos,
                sin,
                ctx.interleaved,
                not ctx.inverse,
                False,
                *(grads[i] for i in present),
            )
            for i, g in zip(present, rotated, strict=True):
                result[i] = g
        return (None, None, None, None, None, None, *result)


def _deliver(
    ys: Sequence[torch.Tensor],
    xs: Sequence[torch.Tensor],
    outs: Sequence[torch.Tensor] | None,
    inplace: bool,
) -> tuple[torch.Tensor, ...]:
    """Copy results computed out of place into ``xs`` (in place) or ``outs``."""
    targets = xs if inplace else outs
    if targets is None:
        return tuple(ys)
    for target, y in zip(targets, ys, strict=True):
        target.copy_(y)
    return tuple(targets)


def rotate(
    xs: Sequence[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool,
    backend: Backend | str,
    outs: Sequence[torch.Tensor] | None = None,
    inplace: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Rotate every tensor of ``xs`` by the same tables with ``backend`` (arguments checked).

    Results are new tensors, ``outs`` (written) or ``xs`` themselves (``inplace``).
    """
    choice = backend if isinstance(backend, Backend) else parse_backend(backend)
    if torch.compiler.is_compiling():
        if choice is Backend.TRITON:
            fn = _triton_apply()
            ys = [fn(x, cos, sin, interleaved=interleaved) for x in xs]
        else:
            ys = [rope_reference(x, cos, sin, interleaved=interleaved) for x in xs]
        return _deliver(ys, xs, outs, inplace)

    tables_need_grad = needs_grad = False
    if torch.is_grad_enabled():
        tables_need_grad = cos.requires_grad or sin.requires_grad
        needs_grad = tables_need_grad or any(x.requires_grad for x in xs)
        if outs is not None and (needs_grad or any(o.requires_grad for o in outs)):
            raise RopeValueError(
                "out= does not support autograd (an input requires grad): call without out=, "
                "or under torch.no_grad()"
            )
        if inplace and needs_grad and any(x.is_leaf and x.requires_grad for x in xs):
            raise RopeValueError(
                "in-place rotation of a leaf tensor that requires grad is not allowed "
                "(autograd needs its original value): rotate a copy or use the out-of-place "
                "function"
            )
    if choice is Backend.AUTO and not tables_need_grad and xs[0].is_cpu:
        kernel = _cpu_auto()  # the common case, without the general resolution below
    else:
        choice = resolve_backend(choice, xs[0].device, tables_need_grad=tables_need_grad)
        if choice is Backend.REFERENCE:
            # Copy first when rotating in place under autograd: the graph may save x's lanes.
            srcs = [x.clone() for x in xs] if inplace and needs_grad else xs
            ys = [rope_reference(x, cos, sin, interleaved=interleaved) for x in srcs]
            return _deliver(ys, xs, outs, inplace)
        if choice is Backend.TRITON:
            fn = _triton_apply()
            ys = [fn(x, cos, sin, interleaved=interleaved) for x in xs]
            return _deliver(ys, xs, outs, inplace)
        kernel = _available_kernel(choice)

    if needs_grad:
        return _Rotate.apply(kernel, cos, sin, interleaved, False, inplace, *xs)
    targets = xs if inplace else outs
    return kernel(xs, targets, cos, sin, interleaved=interleaved, inverse=False)


@functools.cache
def _cpu_auto() -> Kernel:
    """``auto``'s kernel for CPU tensors: the C kernel, or the torch one without a build."""
    return _kernel(Backend.CPU) or rotate_torch


def _available_kernel(choice: Backend) -> Kernel:
    kernel = _kernel(choice)
    if kernel is None:  # backend="cpu" without a working build
        from .cpu import cpu_kernel_status

        raise RopeValueError(f"backend='cpu' is not available here: {cpu_kernel_status()}")
    return kernel
