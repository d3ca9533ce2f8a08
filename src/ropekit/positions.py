"""Positions: which table row (angle ``m``) each token is rotated by.

Notation: ``b`` batch, ``s`` sequence length, ``t`` packed tokens (several documents laid
end to end, ``[t, h, d]``), ``R`` rows of a ``[R, n]`` cos/sin table (row ``r`` holds the
angles of position ``r``).

One concept, used by the public functions, :class:`~ropekit.RotaryEmbedding`, the
kernels and context-parallel sharding (:mod:`ropekit.distributed`). A token's position
is ``base + offset`` where

* ``base`` is ``positions[.., j]`` when a ``positions`` tensor is given (``[s]`` shared by
  the batch, ``[b, s]`` per row, ``[t]`` packed); else, for packed sequences with
  ``cu_seqlens``, the token's index inside its own document (positions restart at 0 in
  every document); else the token's index ``j`` in the sequence;
* ``offset`` is an int (tokens already in the KV cache), or an integer tensor with one
  value per batch row (``[b]``) or, with ``cu_seqlens``, per document (``[#docs]``: each
  document's start position, e.g. its cached prefix).

``cu_seqlens`` (flash-attn's name) is the int32/int64 vector ``[0, l_1, l_1 + l_2, ...,
t]`` of document boundaries; it must rise from 0 to ``t`` and may repeat a value (an
empty document), as flash-attn and FlashInfer allow.

Positions are int64 throughout, never in a floating dtype: a bf16 position 300 would
already be 300 ± 2.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import RopeValueError, check_int, check_tensor

__all__ = [
    "Positions",
    "check_cu_seqlens",
    "default_positions",
    "shard_indices",
    "shard_positions",
    "token_positions",
    "unshard",
]

SCHEMES = ("contiguous", "zigzag")


def _is_int_tensor(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _check_int_tensor(name: str, t: object, device: torch.device | None) -> torch.Tensor:
    t = check_tensor(name, t)
    if not _is_int_tensor(t):
        raise RopeValueError(f"{name}.dtype={t.dtype} is not allowed: expected an integer dtype")
    if device is not None and t.device != device:
        raise RopeValueError(f"{name} is on {t.device}, the inputs on {device}: expected one device")
    return t


def check_cu_seqlens(
    cu_seqlens: torch.Tensor | Sequence[int], tokens: int, *, device: torch.device | None = None
) -> torch.Tensor:
    """``cu_seqlens`` as an integer tensor, checked: 1-D, ``[0, ..., tokens]``, non-decreasing.

    The values are checked on the host for CPU tensors. For tensors on an accelerator the
    value check is queued as a device-side assert (no host sync; a failure surfaces at
    the next synchronising call), so that a decode step stays capturable in a CUDA graph.
    """
    cu = cu_seqlens if isinstance(cu_seqlens, torch.Tensor) else torch.tensor(list(cu_seqlens))
    cu = _check_int_tensor("cu_seqlens", cu, device)
    if cu.ndim != 1 or cu.shape[0] < 2:
        raise RopeValueError(
            f"cu_seqlens.shape={tuple(cu.shape)} is not allowed: expected [#docs + 1] with at "
            "least one document"
        )
    if cu.is_cpu and not torch.compiler.is_compiling():
        if int(cu[0]) != 0 or int(cu[-1]) != tokens or bool((cu.diff() < 0).any()):
            raise RopeValueError(
                f"cu_seqlens={cu.tolist()} is not allowed: expected non-decreasing document "
                f"boundaries from 0 to the number of tokens ({tokens})"
            )
    else:
        ok = (cu[0] == 0) & (cu[-1] == tokens) & (cu.diff() >= 0).all()
        torch._assert_async(ok, "ropekit: cu_seqlens must rise from 0 to the token count")
    return cu


def default_positions(
    seq_len: int, offset: int | torch.Tensor = 0, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """``offset + arange(seq_len)``: ``[s]`` for an int offset, ``[b, s]`` for a ``[b]`` tensor."""
    if isinstance(offset, torch.Tensor):
        offset = _check_int_tensor("offset", offset, None)
        if offset.ndim != 1:
            raise RopeValueError(
                f"offset of shape {tuple(offset.shape)} is not allowed: expected an int or a "
                "1-D integer tensor [b]"
            )
        steps = torch.arange(seq_len, device=offset.device, dtype=torch.int64)
        return offset.to(torch.int64)[:, None] + steps
    check_int("offset", offset)
    return torch.arange(offset, offset + seq_len, device=device, dtype=torch.int64)


def token_positions(
    size: int,
    positions: torch.Tensor | None = None,
    *,
    offset: int | torch.Tensor = 0,
    cu_seqlens: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The position of every token (plain torch, int64; arguments not checked).

    ``size`` is ``s`` (``[b, h, s, d]``) or ``t`` (packed). Returns ``[s]``, ``[b, s]``
    or ``[t]``, following the rule in the module docstring.
    """
    for t in (positions, cu_seqlens, offset):
        if isinstance(t, torch.Tensor):
            device = t.device
            break
    if positions is not None:
        base = positions.to(torch.int64)
        doc = None
    elif cu_seqlens is not None:
        cu = cu_seqlens.to(torch.int64)
        idx = torch.arange(size, device=device, dtype=torch.int64)
        # searchsorted, not repeat_interleave: no output size to read from the device
        doc = torch.searchsorted(cu[1:], idx, right=True)
        base = idx - cu[doc]
    else:
        base, doc = torch.arange(size, device=device, dtype=torch.int64), None
    if isinstance(offset, torch.Tensor):
        off = offset.to(torch.int64)
        if doc is not None:
            return base + off[doc]  # one start position per document
        return base + off[:, None]  # one per batch row: [b, s]
    return base + offset


@dataclass(frozen=True, eq=False)
class Positions:
    """Checked positions of one call (see the module docstring for the rule).

    ``offset`` is an int; ``offsets`` the tensor form of the offset (``[b]`` or
    ``[#docs]``), ``positions`` ``[s]``/``[b, s]``/``[t]``, ``cu_seqlens`` ``[#docs + 1]``.
    Build it with :meth:`check`. ``rows()`` gives the int64 position of every token.
    """

    size: int
    offset: int = 0
    offsets: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None

    @property
    def implicit(self) -> bool:
        """Only an int offset: positions ``offset .. offset + size - 1``, no tensor."""
        return self.offsets is None and self.positions is None and self.cu_seqlens is None

    @classmethod
    def check(
        cls,
        size: int,
        batch: int | None,
        *,
        positions: torch.Tensor | None = None,
        offset: int | torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> Positions:
        """Validate positions for ``size`` tokens in ``batch`` rows (None: packed ``[t]``).

        Shapes and dtypes are checked here; values (``cu_seqlens``, and rows against a
        table's length in :meth:`check_rows`) on the host for CPU tensors only.
        """
        if positions is None and cu_seqlens is None and type(offset) is int:
            return cls(size, offset)  # an int offset (decode, prefill): nothing to read
        packed = batch is None
        if cu_seqlens is not None:
            if not packed:
                raise RopeValueError(
                    "cu_seqlens is not allowed with layout 'bhsd'/'bshd': expected packed "
                    "[t, h, d] inputs (layout='thd')"
                )
            if positions is not None:
                raise RopeValueError(
                    "positions and cu_seqlens were both given: expected one (with cu_seqlens "
                    "positions restart at 0 in every document)"
                )
            cu_seqlens = check_cu_seqlens(cu_seqlens, size, device=device)
        if positions is not None:
            positions = _check_int_tensor("positions", positions, device)
            allowed = [(size,)] if packed else [(size,), (batch, size)]
            if tuple(positions.shape) not in allowed:
                raise RopeValueError(
                    f"positions.shape={tuple(positions.shape)} is not allowed: expected one of "
                    f"{allowed}"
                )
        offsets = None
        if isinstance(offset, torch.Tensor):
            offsets = _check_int_tensor("offset", offset, device)
            if cu_seqlens is not None:
                want, per = cu_seqlens.shape[0] - 1, "document"
            elif not packed:
                want, per = batch, "batch row"
            else:
                raise RopeValueError(
                    f"offset of shape {tuple(offsets.shape)} is not allowed for packed inputs "
                    "without cu_seqlens: expected an int"
                )
            if tuple(offsets.shape) != (want,):
                raise RopeValueError(
                    f"offset.shape={tuple(offsets.shape)} is not allowed: expected [{want}] "
                    f"(one per {per}) or an int"
                )
            offset = 0
        elif offset is None:
            offset = 0
        else:
            check_int("offset", offset)
        return cls(size, offset, offsets, positions, cu_seqlens)

    def rows(self, device: torch.device | None = None) -> torch.Tensor:
        """int64 position of every token: ``[s]``, ``[b, s]`` or ``[t]``."""
        return token_positions(
            self.size,
            self.positions,
            offset=self.offset if self.offsets is None else self.offsets,
            cu_seqlens=self.cu_seqlens,
            device=device,
        )

    def check_rows(self, table_rows: int, device: torch.device) -> None:
        """Every position must be a row of a ``[table_rows, n]`` table.

        Free for an int offset. For tensor positions: on the host for CPU tensors; on an
        accelerator a device-side assert (no host sync).
        """
        if self.implicit:
            if self.offset < 0 or self.offset + self.size > table_rows:
                raise RopeValueError(
                    f"offset={self.offset} with {self.size} tokens needs table rows "
                    f"[{self.offset}, {self.offset + self.size}) but cos/sin have {table_rows}: "
                    f"expected 0 <= offset and offset + s <= {table_rows}"
                )
            return
        rows = self.rows(device)
        if rows.numel() == 0:
            return
        lo, hi = torch.aminmax(rows)
        if device.type == "cpu" and not torch.compiler.is_compiling():
            if int(lo) < 0 or int(hi) >= table_rows:
                raise RopeValueError(
                    f"token positions span [{int(lo)}, {int(hi)}] but cos/sin have {table_rows} "
                    f"rows: expected positions (after offset) in [0, {table_rows})"
                )
        else:
            ok = (lo >= 0) & (hi < table_rows)
            torch._assert_async(ok, "ropekit: a token position is outside the cos/sin table")


# ------------------------------------------------------------------ context parallelism
#
# Context parallelism splits one long sequence of S tokens over W ranks; each rank needs
# the *global* position of every token it holds (see ropekit.distributed for the schemes).


def _host_cu(cu_seqlens: torch.Tensor | Sequence[int], seq_len: int) -> list[int]:
    cu = check_cu_seqlens(cu_seqlens, seq_len, device=None)
    return cu.to(device="cpu", dtype=torch.int64).tolist()


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

    Schemes (``W`` ranks): ``contiguous`` cuts the (packed) stream into ``W`` equal pieces;
    ``zigzag`` cuts each document into ``2W`` chunks and gives rank ``r`` chunks ``r`` and
    ``2W - 1 - r`` of every document (balanced causal work).

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
            _host_cu(cu_seqlens, seq_len)  # packing does not move a contiguous cut
        return torch.arange(rank * size, (rank + 1) * size)
    bounds = [0, seq_len] if cu_seqlens is None else _host_cu(cu_seqlens, seq_len)
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

    The positions of the whole stream by :func:`token_positions` (with ``cu_seqlens``:
    restarting in every document), taken at :func:`shard_indices`. Pass the result as
    ``positions`` to :class:`~ropekit.RotaryEmbedding` on that rank.

    Example:
        >>> shard_positions(8, 2, 1, scheme="zigzag")
        tensor([2, 3, 4, 5])
        >>> shard_positions(8, 2, 1, cu_seqlens=[0, 3, 8])
        tensor([1, 2, 3, 4])
    """
    idx = shard_indices(seq_len, world_size, rank, scheme=scheme, cu_seqlens=cu_seqlens)
    cu = None if cu_seqlens is None else torch.tensor(_host_cu(cu_seqlens, seq_len))
    return token_positions(seq_len, cu_seqlens=cu, device="cpu")[idx]


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
