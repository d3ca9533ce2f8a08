"""``Backend.TRITON``: RoPE in one Triton kernel, table rows read by position inside it.

Notation: ``b`` batch, ``h`` heads, ``s`` sequence length, ``t`` packed tokens, ``d``
head dim, ``n`` rotated pairs.

Modules: :mod:`.kernel` (the ``@triton.jit`` kernel and the formula it computes),
:mod:`.plan` (launch planning: tiles, grid, stride folding, 32/64-bit addressing; plain
integer arithmetic, importable without triton), :mod:`.ops` (the launcher in the kernel
protocol of :mod:`ropekit.apply.dispatch`, and the torch op that ``torch.compile``
traces). Importing this package imports neither triton nor the kernel: :func:`load`
does, when the dispatcher first needs the backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

__all__ = ["load"]


def load() -> Callable[..., tuple[torch.Tensor, ...]] | str:
    """The backend's kernel (:func:`.ops.rotate_triton`), or a sentence saying why it
    cannot run in this process: triton missing, or neither a CUDA device nor Triton's
    CPU interpreter (``TRITON_INTERPRET=1``, read when triton is first imported)."""
    try:
        from . import ops
    except ImportError as err:
        return f"triton cannot be imported ({err})"
    if ops.INTERPRETED or torch.cuda.is_available():
        return ops.rotate_triton
    hint = " (it was set after triton was imported)" if os.environ.get("TRITON_INTERPRET") else ""
    return (
        "no CUDA device, and Triton's CPU interpreter is off: set TRITON_INTERPRET=1 before "
        f"triton is first imported to run the kernel on CPU tensors{hint}"
    )
