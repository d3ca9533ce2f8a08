"""Backends: the kernel protocol, the registry, and which backend rotates a call.

The protocol, implemented by every backend::

    kernel(xs, outs, cos, sin, rows, *, interleaved, inverse) -> outs

* ``xs``: tensors to rotate (canonical views, :mod:`ropekit.apply.checks`), one dtype
  each, any strides; ``outs``: where to write (``outs[i]`` may be ``xs[i]``: in place),
  or None to allocate;
* ``cos``/``sin``: tables broadcast to each ``x[..., :n]`` (``rows`` None), or, for a
  backend registered with ``gathers=True``, ``[R, n]`` tables read at ``rows``
  (a :class:`~ropekit.positions.Positions`); other backends get the rows gathered
  here first (an int offset is a free slice of the table);
* ``inverse``: rotate by ``-θ`` (the gradient).

============  ==========================================================================
``reference`` the formula in torch ops (:mod:`ropekit.apply.formula`); torch's own
              autograd, so the only backend that differentiates the tables.
``torch``     torch ops writing into slices of the output, no temporaries; any device.
``cpu``       one-pass C kernel (:mod:`ropekit.apply.cpu`), q and k in one call; CPU.
``compiled``  ``torch.compile`` of the formula (:mod:`ropekit.apply.compiled`).
``triton``    the Triton kernel (:mod:`ropekit.apply.triton`), q and k in one launch,
              table rows read by position inside the kernel; CUDA (or Triton's
              interpreter on CPU tensors with ``TRITON_INTERPRET=1``).
``auto``      ``reference`` when the tables require grad; else ``cpu`` on CPU tensors
              (``torch`` if no C compiler works), ``triton`` on CUDA tensors (``torch``
              if Triton is missing), ``torch`` elsewhere.
============  ==========================================================================

Backends are registered by module name and imported on first use, so ``import ropekit``
loads neither the C compiler nor Triton. Every kernel backend shares one autograd
Function (:mod:`ropekit.apply.autograd`).

Inside ``torch.compile`` every backend but ``triton`` (a registered custom op) traces the
formula, which Inductor fuses into one kernel; an opaque call would only stop that fusion.
"""

from __future__ import annotations

import enum
import importlib
from typing import NamedTuple

import torch

from ..errors import RopeValueError
from .autograd import Job, Kernel, Rotate
from .checks import Call
from .formula import rotate_reference

__all__ = ["REGISTRY", "Backend", "BackendInfo", "load_kernel", "parse_backend", "resolve_backend", "rotate"]


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


class BackendInfo(NamedTuple):
    """A registry entry: ``module.load()`` returns the kernel, or a string saying why not."""

    module: str
    gathers: bool = False  # reads [R, n] table rows by position itself


REGISTRY: dict[Backend, BackendInfo] = {
    Backend.REFERENCE: BackendInfo("ropekit.apply.formula"),
    Backend.TORCH: BackendInfo("ropekit.apply.formula"),
    Backend.CPU: BackendInfo("ropekit.apply.cpu"),
    Backend.COMPILED: BackendInfo("ropekit.apply.compiled"),
    Backend.TRITON: BackendInfo("ropekit.apply.triton", gathers=True),
}

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


# What each backend's load() gave: a plain dict rather than functools.cache, which
# torch.compile would trace through with a warning. Its contents are facts about the
# process (is there a C compiler, does Triton import), never about earlier calls.
_LOADED: dict[Backend, Kernel | str] = {Backend.REFERENCE: rotate_reference}


def _loaded(choice: Backend) -> Kernel | str:
    """The kernel of ``choice``, or why it cannot run in this process (never changes)."""
    if choice in _LOADED:
        return _LOADED[choice]
    info = REGISTRY[choice]
    found: Kernel | str
    if choice is Backend.TRITON:
        # An import statement, not importlib: the first use of this backend may be inside
        # torch.compile, which traces an import but refuses importlib. The package only
        # imports triton inside its load().
        from . import triton as module

        found = module.load()
    else:
        try:
            module = importlib.import_module(info.module)
        except ImportError as err:
            found = f"importing {info.module} failed ({err})"
        else:
            found = module.rotate_torch if choice is Backend.TORCH else module.load()
    _LOADED[choice] = found
    return found


def load_kernel(choice: Backend) -> Kernel:
    """The kernel of a concrete backend; :class:`RopeValueError` saying why if unavailable."""
    kernel = _loaded(choice)
    if isinstance(kernel, str):
        raise RopeValueError(f"backend={choice.value!r} is not available here: {kernel}")
    return kernel


def resolve_backend(
    backend: Backend | str, device: torch.device, *, tables_need_grad: bool = False
) -> Backend:
    """The concrete backend that ``backend`` means for tensors on ``device`` (never AUTO).

    Explicit choices are returned as given, after checking that they can run there.
    """
    choice = parse_backend(backend)
    if choice is Backend.AUTO:
        if tables_need_grad:
            return Backend.REFERENCE
        if device.type == "cpu":
            return Backend.CPU if not isinstance(_loaded(Backend.CPU), str) else Backend.TORCH
        if device.type == "cuda" and not isinstance(_loaded(Backend.TRITON), str):
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


_CPU_AUTO: list[Kernel] = []  # filled on first use (a fact about the process)
# The members the hot path compares with, as plain globals (an Enum member's lookup
# through its class costs ~50 ns, a few percent of a decode-size call's host time).
_AUTO, _CPU = Backend.AUTO, Backend.CPU


def _cpu_auto() -> Kernel:
    """``auto``'s kernel for CPU tensors: the C kernel, or the torch one without a build.

    (Both rotate identically, so a process that has no C compiler only runs slower.)
    """
    if not _CPU_AUTO:
        choice = resolve_backend(Backend.AUTO, torch.device("cpu"))
        if choice is Backend.TORCH:  # said once per process: _CPU_AUTO is filled once
            import warnings  # only on this path, once

            warnings.warn(
                f"ropekit: backend='auto' falls back to the torch backend on CPU (same results, "
                f"slower): the C kernel is unavailable: {_loaded(Backend.CPU)}",
                RuntimeWarning,
                stacklevel=2,
            )
        _CPU_AUTO.append(load_kernel(choice))
    return _CPU_AUTO[0]


def gather(call: Call) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables broadcastable to the canonical ``xs`` for the rows of an indexed call."""
    rows, cos, sin = call.rows, call.cos, call.sin
    if rows.implicit:  # positions offset .. offset + s - 1: a slice, no copy
        return cos.narrow(0, rows.offset, rows.size), sin.narrow(0, rows.offset, rows.size)
    r = rows.rows(cos.device)  # [s], [t] or [b, s]
    c, s = cos[r], sin[r]
    if r.ndim == 2:  # [b, s, n] -> [b, 1, s, n]: shared by the heads
        c, s = c.unsqueeze(1), s.unsqueeze(1)
    return c, s


def rotate(call: Call, backend: Backend | str) -> tuple[torch.Tensor, ...]:
    """Rotate a checked :class:`Call` with ``backend``; canonical results (new tensors,
    ``call.outs`` written, or ``call.xs`` themselves in place)."""
    choice = backend if isinstance(backend, Backend) else parse_backend(backend)
    xs, outs, inplace = call.xs, call.outs, call.inplace
    if torch.compiler.is_compiling():
        # The formula (Inductor fuses it), read directly: a lookup in _LOADED would make
        # Dynamo guard on that dict, which grows as eager calls load kernels.
        if choice is not Backend.TRITON:
            return _run_plain(call, rotate_reference, Backend.REFERENCE, functional=True)
        return _run_plain(call, load_kernel(choice), choice, functional=True)

    tables_need_grad = needs_grad = False
    if torch.is_grad_enabled():
        tables_need_grad = call.cos.requires_grad or call.sin.requires_grad
        needs_grad = tables_need_grad
        for x in xs:  # (a loop, not any(): at decode sizes a generator costs ~0.5 us)
            needs_grad = needs_grad or x.requires_grad
        if outs is not None and (needs_grad or any(o.requires_grad for o in outs)):
            raise RopeValueError(
                "out= does not support autograd (an input requires grad): call without out=, "
                "or under torch.no_grad()"
            )
        if inplace and needs_grad:
            for x in xs:
                base = x._base if x._base is not None else x
                if x.requires_grad and base.is_leaf:
                    raise RopeValueError(
                        "in-place rotation of a leaf tensor that requires grad (or of a view of "
                        "one) is not allowed: autograd needs its original value; rotate a copy "
                        "or use the out-of-place function"
                    )
    if choice is _AUTO and not tables_need_grad and xs[0].is_cpu:
        # cpu or, without a C compiler, torch: neither gathers rows itself (_job)
        kernel, choice = _CPU_AUTO[0] if _CPU_AUTO else _cpu_auto(), _CPU
        if not needs_grad and call.rows is None:  # the hot path (decode): straight in
            return kernel(
                xs, xs if inplace else outs, call.cos, call.sin, None,
                interleaved=call.interleaved, inverse=call.inverse,
            )  # fmt: skip
    else:
        choice = resolve_backend(choice, xs[0].device, tables_need_grad=tables_need_grad)
        kernel = load_kernel(choice)
    if choice is Backend.REFERENCE or not needs_grad:
        return _run_plain(call, kernel, choice, clone=inplace and needs_grad)

    job = _job(call, kernel, choice)
    if inplace and len(xs) > 1:
        with torch.no_grad():
            job.run(xs, xs)  # one kernel call for all; then one node per tensor
        return tuple(Rotate.apply(x, job, True, True)[0] for x in xs)
    return Rotate.apply(*xs, job, inplace, False)


def _job(call: Call, kernel: Kernel, choice: Backend) -> Job:
    if call.rows is None or REGISTRY[choice].gathers:
        cos, sin, rows = call.cos, call.sin, call.rows
    else:
        (cos, sin), rows = gather(call), None
    return Job(kernel, cos, sin, rows, call.interleaved, call.inverse)


def _run_plain(
    call: Call,
    kernel: Kernel,
    choice: Backend,
    *,
    clone: bool = False,
    functional: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Without the autograd Function: no gradient needed, or torch's own (``reference``,
    and everything traced by ``torch.compile``, where ``functional`` is set)."""
    job = _job(call, kernel, choice)
    targets = call.xs if call.inplace else call.outs
    if targets is not None and (functional or choice is Backend.REFERENCE):
        # Computed out of place, then copied in (copy_ into a view is autograd-safe, and
        # traceable); under autograd from a copy, since the graph may save x's lanes.
        srcs = tuple(x.clone() for x in call.xs) if clone else call.xs
        ys = job.run(srcs, None)
        for t, y in zip(targets, ys, strict=True):
            t.copy_(y)
        return tuple(targets)
    return job.run(call.xs, targets)
