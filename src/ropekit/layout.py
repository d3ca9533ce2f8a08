"""Converting q/k projection weights between the two pair layouts.

Meta's Llama checkpoints rotate interleaved pairs ``(2i, 2i+1)``; Hugging Face's
``rotate_half`` rotates half-split pairs ``(i, i + n)``. RoPE is the same rotation in
both; only the order of the lanes within each head differs. Permuting the output rows of
``W_q`` and ``W_k`` head by head (the same permutation for both) therefore turns one
checkpoint into the other with *identical* attention scores: ``q·k`` is a sum over lanes
and is unchanged when both vectors' lanes are permuted alike.

Within a head of ``d`` rows (``n = rotary_dim // 2`` pairs), half layout row ``i`` is
interleaved row ``2i`` and half row ``i + n`` is interleaved row ``2i + 1``; rows past
``rotary_dim`` stay where they are.
"""

from __future__ import annotations

import torch

from .errors import RopeValueError, check_int, check_tensor

__all__ = ["half_from_interleaved_order", "to_half_layout", "to_interleaved_layout"]


def half_from_interleaved_order(head_dim: int, rotary_dim: int | None = None) -> torch.Tensor:
    """Index ``[head_dim]``: half-layout lane ``j`` reads interleaved lane ``order[j]``."""
    check_int("head_dim", head_dim, minimum=2)
    r = head_dim if rotary_dim is None else check_int("rotary_dim", rotary_dim, minimum=2)
    if r % 2 or r > head_dim:
        raise RopeValueError(
            f"rotary_dim={r} is not allowed: expected an even int <= head_dim={head_dim}"
        )
    n = r // 2
    pairs = torch.arange(r).view(n, 2)
    return torch.cat((pairs[:, 0], pairs[:, 1], torch.arange(r, head_dim)))


def _permute_heads(
    weight: torch.Tensor, n_heads: int, rotary_dim: int | None, inverse: bool
) -> torch.Tensor:
    check_tensor("weight", weight)
    check_int("n_heads", n_heads, minimum=1)
    if weight.ndim not in (1, 2):
        raise RopeValueError(
            f"weight.shape={tuple(weight.shape)} is not allowed: expected [n_heads * head_dim, in] "
            "or a bias [n_heads * head_dim]"
        )
    rows = weight.shape[0]
    if rows % n_heads:
        raise RopeValueError(
            f"weight has {rows} rows, not divisible by n_heads={n_heads}: expected n_heads * head_dim rows"
        )
    head_dim = rows // n_heads
    if rotary_dim is None and head_dim % 2:
        raise RopeValueError(
            f"head_dim={head_dim} is odd: pass rotary_dim (the even number of rotated lanes)"
        )
    order = half_from_interleaved_order(head_dim, rotary_dim)
    if inverse:
        order = torch.argsort(order)
    idx = (torch.arange(n_heads)[:, None] * head_dim + order).reshape(-1).to(weight.device)
    return weight.index_select(0, idx)


def to_half_layout(
    weight: torch.Tensor, n_heads: int, *, rotary_dim: int | None = None
) -> torch.Tensor:
    """Permute rows of a q/k projection (or bias) from interleaved (Meta) to half (HF) layout.

    Args:
        weight: ``[n_heads * head_dim, in]`` weight or ``[n_heads * head_dim]`` bias.
        n_heads: heads in this projection (``n_kv_heads`` for ``W_k`` under GQA).
        rotary_dim: rotated lanes per head if only a prefix is rotated.

    Returns:
        A new tensor of the same shape; ``to_interleaved_layout`` undoes it exactly.
    """
    return _permute_heads(weight, n_heads, rotary_dim, inverse=False)


def to_interleaved_layout(
    weight: torch.Tensor, n_heads: int, *, rotary_dim: int | None = None
) -> torch.Tensor:
    """Inverse of :func:`to_half_layout`: half (HF) rows to interleaved (Meta) rows."""
    return _permute_heads(weight, n_heads, rotary_dim, inverse=True)
