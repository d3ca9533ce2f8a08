"""``Backend.COMPILED``: the torch formula fused by ``torch.compile`` (Inductor), any device.

Inductor turns :func:`~ropekit.apply.formula.rope_reference` of q and k into one loop
(C++ on CPU, Triton on GPU). Costs, measured on a 2-core CPU with torch 2.13
(``docs/performance.md``): ~18 s for the first compilation on a machine (cold Inductor
cache), ~3-4 s for the first call of a process once that cache is warm, ~0.2-0.4 s per
further dtype or pattern of size-1 dims, and ~70 µs of guard and wrapper overhead per
call. ``dynamic=True`` keeps sequence lengths and batch sizes symbolic, so new
lengths do not recompile (torch specialises sizes 0 and 1).

On a CPU ``backend="cpu"`` is as fast at prefill sizes (~1.1-1.2x ``copy_`` both) and
~2.5x faster at decode sizes (host time), without these costs; this backend is for
devices without a dedicated kernel and for comparison.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import torch

from .formula import rope_reference, rotate_reference

__all__ = ["load", "rotate_compiled"]


# One graph per dtype, layout, tensor count and pattern of size-1 dims (torch specialises
# sizes 0 and 1 even with dynamic=True): more than torch's default limit of 8 per function,
# past which Dynamo refuses to compile (with fullgraph=True, an error).
_RECOMPILE_LIMIT = 64


def _rotate(
    xs: list[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> list[torch.Tensor]:
    return [rope_reference(x, cos, sin, interleaved=interleaved) for x in xs]


def _rotate_into(
    xs: list[torch.Tensor],
    outs: list[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
) -> None:
    for x, out in zip(xs, outs, strict=True):
        out.copy_(rope_reference(x, cos, sin, interleaved=interleaved))


@functools.cache
def _compiled(into: bool) -> Callable[..., list[torch.Tensor] | None]:
    # Built on first use, not at import: torch.compile is only set up when asked for.
    return torch.compile(_rotate_into if into else _rotate, dynamic=True, fullgraph=True)


def rotate_compiled(
    xs: Sequence[torch.Tensor],
    outs: Sequence[torch.Tensor] | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: object = None,
    *,
    interleaved: bool,
    inverse: bool,
) -> tuple[torch.Tensor, ...]:
    """Rotate all ``xs`` with one compiled call; return new tensors (``outs`` None) or
    ``outs``, written.

    One call for q and k: one set of guards, and Inductor fuses both into one loop. New
    outputs are allocated by the compiled graph itself: writing into preallocated
    ``outs`` makes them mutated graph inputs, which costs about three times as much host
    time at decode sizes. ``outs[i]`` may be ``xs[i]``: Inductor sees the read and the
    write of the same buffer and orders them safely.
    """
    if inverse:  # R(-θ): negate the [.., n] table here rather than compile a second graph
        sin = -sin
    # The limit is read only when Dynamo compiles; a plain set/restore costs ~5 µs per
    # call where ``config.patch`` costs ~30 µs (more than the decode-size rotation).
    config = torch._dynamo.config
    limit = config.recompile_limit
    config.recompile_limit = max(limit, _RECOMPILE_LIMIT)
    try:
        if outs is None:
            return tuple(_compiled(False)(list(xs), cos, sin, interleaved))
        _compiled(True)(list(xs), list(outs), cos, sin, interleaved)
    except torch._dynamo.exc.FailOnRecompileLimitHit:
        # A long-lived process that has met more than _RECOMPILE_LIMIT patterns: the
        # same formula, uncompiled (same values; slower), said once rather than failing.
        _warn_limit()
        return rotate_reference(xs, outs, cos, sin, interleaved=interleaved, inverse=False)
    finally:
        config.recompile_limit = limit
    return tuple(outs)


@functools.cache
def _warn_limit() -> None:
    warnings.warn(
        f"backend='compiled' met more than {_RECOMPILE_LIMIT} input patterns (dtype, layout, "
        "size-1 dims) in this process, Dynamo's recompile limit: new patterns run the "
        "uncompiled formula (same values, slower)",
        RuntimeWarning,
        stacklevel=4,
    )


def load() -> Callable[..., tuple[torch.Tensor, ...]]:
    """The backend's kernel (torch.compile is always there; it compiles on first use)."""
    return rotate_compiled
