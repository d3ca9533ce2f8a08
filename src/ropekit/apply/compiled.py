"""``Backend.COMPILED``: the torch formula fused by ``torch.compile`` (Inductor), any device.

Inductor turns :func:`~ropekit.apply.eager.rope_reference` plus the write into ``out``
into a loop over ``x`` (C++ on CPU, Triton on GPU). Costs, measured on a 2-core CPU with
torch 2.13 (``docs/performance.md``): ~18 s for the first compilation on a machine (cold
Inductor cache), ~3-4 s for the first call of a process once that cache is warm, ~0.2-0.4 s
per further dtype or pattern of size-1 dims, and ~0.1 ms of guard and wrapper overhead
per call. ``dynamic=True`` keeps sequence lengths and batch sizes symbolic, so new
lengths do not recompile (torch specialises sizes 0 and 1).

On a CPU ``backend="cpu"`` is about twice as fast (one loop for q and k, no separate
output copy) and has none of these costs; this backend is for devices without a
dedicated kernel and for comparison.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from .eager import rope_reference

__all__ = ["rotate_compiled"]


# One graph per dtype, layout and pattern of size-1 dims (torch specialises sizes 0 and 1
# even with dynamic=True): more than torch's default limit of 8 per function.
_RECOMPILE_LIMIT = 64


def _rotate_into(
    x: torch.Tensor, out: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> None:
    out.copy_(rope_reference(x, cos, sin, interleaved=interleaved))


@functools.cache
def _compiled() -> Callable[..., None]:
    # Built on first use, not at import: torch.compile is only set up when asked for.
    return torch.compile(_rotate_into, dynamic=True, fullgraph=True)


def rotate_compiled(
    xs: Sequence[torch.Tensor],
    outs: Sequence[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool,
    inverse: bool,
) -> None:
    """Write the rotation of each ``xs[i]`` into ``outs[i]`` with the compiled formula.

    ``outs[i]`` may be ``xs[i]``: Inductor sees the read and the write of the same buffer
    and orders them safely.
    """
    fn = _compiled()
    if inverse:  # R(-θ): negate the [.., n] table here rather than compile a second graph
        sin = -sin
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
        for x, out in zip(xs, outs, strict=True):
            fn(x, out, cos, sin, interleaved)
