"""Positions for context parallelism, and process-group set-up for data parallelism.

Context parallelism splits one long sequence of ``S`` tokens over ``W`` ranks. Each rank
rotates its own queries and keys, so it needs the *global* position of every token it
holds; RoPE then makes ``q_m . k_n`` depend on ``m - n`` exactly as on one device (the
rotation is elementwise per token, so sharding commutes with it).

Schemes (``C`` = number of chunks, rank ``r``)::

    contiguous  C = W      rank r holds chunk r
    zigzag      C = 2W     rank r holds chunks r and 2W - 1 - r

With a causal mask, the contiguous scheme gives the last rank ``W`` times the attention
work of the first; zigzag pairs an early chunk with a late one so every rank does the
same work (the load balancing of ring/zigzag attention).

Packed sequences: ``cu_seqlens = [0, l_1, l_1 + l_2, ..., S]`` marks documents laid end to
end; positions restart at 0 in each document. ``contiguous`` cuts the packed stream into
``W`` equal pieces (documents may straddle ranks, as in Llama 3's context parallelism);
``zigzag`` splits *each document* into ``2W`` chunks and gives rank ``r`` chunks ``r``
and ``2W - 1 - r`` of every document (the varlen zigzag layout of ring-flash-attention),
because the causal mask is per document, so balancing must be too.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import torch

from .errors import RopeValueError, check_int, check_tensor

__all__ = ["init_from_env", "shard_indices", "shard_positions", "unshard"]

SCHEMES = ("contiguous", "zigzag")


def _check_cu_seqlens(cu_seqlens: torch.Tensor | Sequence[int], seq_len: int) -> torch.Tensor:
    cu = cu_seqlens if isinstance(cu_seqlens, torch.Tensor) else torch.tensor(list(cu_seqlens))
    check_tensor("cu_seqlens", cu)
    if cu.ndim != 1 or cu.numel() < 2 or cu.is_floating_point() or cu.dtype == torch.bool:
        raise RopeValueError(
            f"cu_seqlens of shape {tuple(cu.shape)} and dtype {cu.dtype} is not allowed: "
            "expected a 1-D integer tensor [0, l_1, l_1 + l_2, ..., seq_len]"
        )
    cu = cu.to(device="cpu", dtype=torch.int64)
    if int(cu[0]) != 0 or int(cu[-1]) != seq_len or bool((cu[1:] <= cu[:-1]).any()):
        raise RopeValueError(
            f"cu_seqlens={cu.tolist()} is not allowed: expected strictly increasing offsets "
            f"from 0 to seq_len={seq_len}"
        )
    return cu


def _chunks_of(length: int, n_chunks: int, what: str) -> int:
    if length % n_chunks:
        raise RopeValueError(f"{what}={length} is not allowed: expected a multiple of {n_chunks}")
    return length // n_chunks


def shard_indices(
    seq_len: int,
    world_size: int,
    rank: int,
    *,
    scheme: str = "contiguous",
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Indices into the global sequence ``[S]`` of the tokens rank ``rank`` holds, int64 ``[S / W]``.

    Shard any per-token tensor with them (``tokens[..., idx]``); :func:`shard_positions`
    gives the matching RoPE positions. See the module docstring for the schemes.

    Example:
        >>> shard_indices(8, 2, 0, scheme="zigzag")
        tensor([0, 1, 6, 7])
    """
    check_int("seq_len", seq_len, minimum=1)
    check_int("world_size", world_size, minimum=1)
    check_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise RopeValueError(f"rank={rank} is not allowed: expected 0 <= rank < {world_size}")
    if scheme not in SCHEMES:
        raise RopeValueError(f"scheme={scheme!r} is not allowed: expected one of {SCHEMES}")
    if scheme == "contiguous":
        size = _chunks_of(seq_len, world_size, "seq_len")
        if cu_seqlens is not None:
            _check_cu_seqlens(cu_seqlens, seq_len)  # packing does not move a contiguous cut
        return torch.arange(rank * size, (rank + 1) * size)
    bounds = [0, seq_len] if cu_seqlens is None else _check_cu_seqlens(cu_seqlens, seq_len).tolist()
    pieces = []
    for doc, (start, end) in enumerate(itertools.pairwise(bounds)):
        what = "seq_len" if cu_seqlens is None else f"length of document {doc}"
        c = _chunks_of(end - start, 2 * world_size, what)
        for chunk in (rank, 2 * world_size - 1 - rank):
            pieces.append(torch.arange(start + chunk * c, start + (chunk + 1) * c))
    return torch.cat(pieces)


def shard_positions(
    seq_len: int,
    world_size: int,
    rank: int,
    *,
    scheme: str = "contiguous",
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Global RoPE positions (int64 ``[S / W]``) of the tokens rank ``rank`` holds.

    Without ``cu_seqlens`` the position of a token is its index in the sequence; with
    it, its index minus the start of its document. Pass the result as ``positions`` to
    :class:`~ropekit.RotaryEmbedding` on that rank.

    Example:
        >>> shard_positions(8, 2, 1, scheme="zigzag")
        tensor([2, 3, 4, 5])
        >>> shard_positions(8, 2, 1, cu_seqlens=[0, 3, 8])
        tensor([1, 2, 3, 4])
    """
    idx = shard_indices(seq_len, world_size, rank, scheme=scheme, cu_seqlens=cu_seqlens)
    if cu_seqlens is None:
        return idx
    cu = _check_cu_seqlens(cu_seqlens, seq_len)
    doc = torch.searchsorted(cu, idx, right=True) - 1  # document of each token
    return idx - cu[doc]


def unshard(
    shards: Sequence[torch.Tensor],
    *,
    dim: int = -1,
    scheme: str = "contiguous",
    cu_seqlens: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Reassemble the global sequence from every rank's shard (``shards[r]`` from rank ``r``),
    e.g. the output of ``torch.distributed.all_gather``; the inverse of sharding with
    :func:`shard_indices` along ``dim``."""
    world_size = len(shards)
    if world_size == 0:
        raise RopeValueError("shards is empty: expected one tensor per rank")
    dim = dim % shards[0].ndim
    seq_len = sum(s.shape[dim] for s in shards)
    order = torch.cat(
        [
            shard_indices(seq_len, world_size, r, scheme=scheme, cu_seqlens=cu_seqlens)
            for r in range(world_size)
        ]
    )
    gathered = torch.cat(list(shards), dim=dim)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(seq_len)
    return gathered.index_select(dim, inverse.to(gathered.device))


def init_from_env(device_type: str) -> tuple[int, int, int]:
    """Join the process group a launcher such as ``torchrun`` describes in the environment.

    Returns ``(rank, local_rank, world_size)``; ``(0, 0, 1)`` when not launched with more
    than one process. Backend: NCCL for CUDA, gloo otherwise.
    """
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not dist.is_initialized():
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return dist.get_rank(), local_rank, dist.get_world_size()
