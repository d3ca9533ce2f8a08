"""The one autograd Function of every kernel backend.

A rotation's Jacobian is the rotation itself, ``dy/dx = R(θ)``, so the gradient is
``R(θ)ᵀ g = R(-θ) g``: the same kernel with the inverse flag flipped. :class:`Rotate`
wraps any kernel of the protocol in :mod:`ropekit.apply.dispatch` that way. It saves only
the tables (no activations), and its backward is again a :class:`Rotate`, so double
backward works too. Tables are not differentiated here (the ``reference`` backend, plain
torch ops, does that).

Why the inputs are the first tensor arguments: for an in-place rotation of a *view*
(``apply_rope(qkv[:, :, 0], ..., inplace=True)``) torch treats the first tensor input of a Function
that marks it dirty as the view being modified, and rebases the view's base on the
Function's backward. Tables first made torch rebase the wrong tensor, so the rest of the
base got no gradient. The tables therefore travel inside :class:`Job`, a plain object
that autograd does not inspect.

Why one node per tensor in place: torch lets a Function that modifies a view in place
return only that one tensor. When several tensors are rotated in place (q and k), the
dispatcher runs the kernel once for all of them (one parallel region, one launch) and
then gives each tensor its own ``Rotate`` node with ``done=True``, which only records
the gradient rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

__all__ = ["Job", "Kernel", "Rotate"]

#: ``kernel(xs, outs, cos, sin, rows, *, interleaved, inverse) -> outs``: the protocol of
#: every backend (see :mod:`ropekit.apply.dispatch`).
Kernel = Callable[..., tuple[torch.Tensor, ...]]


class Job(NamedTuple):
    """A kernel with everything but the tensors to rotate: tables, rows and flags."""

    kernel: Kernel
    cos: torch.Tensor
    sin: torch.Tensor
    rows: Any
    interleaved: bool
    inverse: bool

    def run(
        self, xs: Sequence[torch.Tensor], outs: Sequence[torch.Tensor] | None
    ) -> tuple[torch.Tensor, ...]:
        return self.kernel(
            xs, outs, self.cos, self.sin, self.rows,
            interleaved=self.interleaved, inverse=self.inverse,
        )  # fmt: skip

    def inverted(self) -> Job:
        return self._replace(inverse=not self.inverse)


class Rotate(torch.autograd.Function):
    """``ys = R(±θ) xs`` by ``job.kernel`` (in place if ``inplace``); backward ``R(∓θ)``.

    ``done=True``: the kernel has already rotated ``xs`` in place (see module docstring);
    the node only marks them and records the gradient.
    """

    @staticmethod
    def forward(*args: Any) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        *xs, job, inplace, done = args
        if inplace:
            if not done:
                job.run(xs, xs)
            return tuple(xs)
        return tuple(job.run(xs, None))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        # A separate setup_context (not ctx in forward) is what torch.func.grad/vjp need.
        *xs, job, inplace, _ = inputs
        if inplace:
            ctx.mark_dirty(*xs)
        ctx.job = job
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        present = [i for i, g in enumerate(grads) if g is not None]
        result: list[torch.Tensor | None] = [None] * len(grads)
        if present:
            rotated = Rotate.apply(*(grads[i] for i in present), ctx.job.inverted(), False, False)
            for i, g in zip(present, rotated, strict=True):
                result[i] = g
        return (*result, None, None, None)
