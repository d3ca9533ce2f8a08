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

The position rule itself (and ``cu_seqlens``) lives in :mod:`ropekit.positions`, shared
with the kernels and :class:`~ropekit.RotaryEmbedding`; this module re-exports the
sharding functions and sets up process groups.
"""

from __future__ import annotations

import os

from .positions import SCHEMES, shard_indices, shard_positions, unshard

__all__ = ["SCHEMES", "init_from_env", "shard_indices", "shard_positions", "unshard"]


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
