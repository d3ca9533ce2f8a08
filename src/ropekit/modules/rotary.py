"""``RotaryEmbedding``: the ``nn.Module`` that rotates queries and keys.

Notation: ``b`` batch, ``h_q``/``h_k`` query/key heads (GQA allows ``h_k != h_q``),
``s`` sequence length, ``d`` head dim, ``n`` rotated pairs, ``L`` kept positions.

Design: the module holds its :class:`~ropekit.RopeConfig` and, for methods whose
frequencies do not depend on the length, what follows from the config alone, computed
once at construction: the ``[n]`` float64 frequencies, and float32 cos/sin tables
``[L, n]`` of the positions ``0 .. L - 1`` (``kept_positions=``; by default the config's
``max_position``, at least 4096 and at most 32768 positions: 2-16 MiB at 64
pairs). No buffers or parameters; nothing depends on earlier calls. With
float32/float16/bfloat16 inputs, a call whose positions are ``offset + arange(s)`` inside
``[0, L)`` (prefill and decode) rotates with views of the kept tables, building nothing,
and one with a CPU positions tensor inside ``[0, L)`` with their rows gathered; every
other call (and positions on an accelerator, whose bounds only a host sync could read)
builds its tables for its own positions, in float64, rounded once (see
:mod:`ropekit.tables.cos_sin`). Both give the same values bit for bit: the kept tables
*are* the tables of those positions. Consequences, all deliberate:

* ``module.to(torch.bfloat16)``/``.half()`` cannot degrade the tables: nothing kept is
  a buffer for them to cast (``_apply`` moves, never casts).
* meta-device construction followed by ``to_empty`` needs nothing re-initialised.
* results depend only on the arguments of the call, never on earlier calls (no cache
  that grows, shrinks or is keyed by history), so any sequence length works; memory is
  the kept tables plus, beyond them, the call's own ``[s, n]`` (or ``[b, s, n]``) tables.

Devices: the kept frequencies and tables follow the module (``module.to("cuda")``,
``.cuda()``, ``to_empty``) but keep their dtype under ``module.to(torch.bfloat16)``.
A call on tensors of the module's device then does no host↔device copy and no host sync,
so a decode step can be captured in a CUDA graph. (Tensors on another device still
work, at the cost of a copy.)

Layouts: ``layout=`` (``"bhsd"`` default, ``"bshd"``, packed ``"thd"``) says how q and
k are laid out; it is never guessed from the shapes (with equal q and k head counts a
``[b, s, h, d]`` tensor would be silently rotated along the wrong axis).

``torch.compile``: ``forward`` traces into one graph (``fullgraph=True``) with symbolic
sequence lengths and offsets (it builds its tables in the graph rather than slicing the
kept ones, whose bounds would add guards). Methods whose tables depend on the length
(dynamic NTK, LongRoPE) need that length as a number, never read from tensor data: it
is ``offset + s`` when positions are implicit (an int ``offset``), or the ``seq_len``
argument. Only eager calls with an explicit ``positions`` tensor (or a tensor ``offset``)
and no ``seq_len`` fall back to ``max(positions) + 1`` read from the data, which inside a
compiled graph would be a data-dependent graph break, so there it raises instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..apply.checks import LAYOUTS, check_call, from_canonical
from ..apply.dispatch import Backend, parse_backend, rotate
from ..apply.formula import compute_dtype
from ..config import RopeConfig
from ..errors import RopeValueError, check_int, check_tensor
from ..positions import Positions
from ..tables.cos_sin import (
    cos_sin,
    cos_sin_range,
    fine_table,
    range_tables,
)

__all__ = ["KeptFrequencies", "RotaryEmbedding", "fixed_frequencies"]

# Positions whose float32 tables RotaryEmbedding keeps by default: the config's
# max_position, at least 4096 and at most 32768 (2-16 MiB at 64 pairs).
_KEPT_MIN, _KEPT_MAX = 2**12, 2**15
_KEPT_LIMIT = 2**24  # asked for explicitly: 8 GiB at 64 pairs
# Positions tensors up to this size are read as a list (cheaper than aminmax at decode).
_LISTED = 64


def fixed_frequencies(config: RopeConfig) -> tuple[torch.Tensor, float] | None:
    """``config.frequencies()`` (``inv_freq`` ``[n]`` float64 on the CPU, attention factor)
    when they do not depend on the sequence length, else None.

    For modules to compute once at construction: a pure function of the frozen config,
    and at decode sizes rebuilding it costs ~40% as much as the rotation. Kept as a plain
    attribute, not a buffer, because ``module.to(dtype)`` must not round it and it is no
    state to save. Built on the CPU even inside ``with torch.device("meta")``, so
    ``to_empty`` has nothing to re-initialise.
    """
    if config.scaling.depends_on_seq_len:
        return None
    with torch.device("cpu"):
        return config.frequencies()


def _kept_positions(config: RopeConfig, kept_positions: object) -> int:
    """``kept_positions`` checked; None: the config's ``max_position`` in [4096, 32768]."""
    if kept_positions is None:
        return min(max(config.max_position or 0, _KEPT_MIN), _KEPT_MAX)
    kept = check_int("kept_positions", kept_positions, minimum=0)
    if kept > _KEPT_LIMIT:
        raise RopeValueError(
            f"kept_positions={kept} is not allowed: expected at most {_KEPT_LIMIT} (2**24; "
            "beyond the kept positions, tables are built per call)"
        )
    return kept


def _check_layout(layout: object) -> str:
    if layout not in LAYOUTS:
        raise RopeValueError(f"layout={layout!r} is not allowed: expected one of {LAYOUTS}")
    return layout  # type: ignore[return-value]


class KeptFrequencies(nn.Module):
    """Base of the modules that keep what a config's length-independent frequencies give.

    Holds ``inv_freq`` ``[n]`` (``[2n]``, it twice, with ``duplicated=True``), the
    angle-addition fine table (:func:`fine_table`) and, with ``kept_positions=L > 0``
    (None: the config's ``max_position``, at least 4096 and at most 32768), float32
    ``cos``/``sin`` ``[L, n]`` (``[L, 2n]``) of the positions ``0 .. L - 1``: all computed once
    from the frozen config on the CPU (the master copies), with a copy of each on the
    module's device: ``_apply`` moves them with ``module.to(device)``, ``.cuda()`` and
    ``to_empty``, and never casts them (``module.to(torch.bfloat16)`` leaves them as they
    are). Length-dependent methods keep nothing (``_frequencies`` None).
    """

    def __init__(
        self, config: RopeConfig, *, duplicated: bool = False, kept_positions: int | None = 0
    ) -> None:
        super().__init__()
        if not isinstance(config, RopeConfig):
            raise RopeValueError(f"config={config!r} is not allowed: expected a ropekit.RopeConfig")
        kept_positions = _kept_positions(config, kept_positions)
        self._config = config
        self._frequencies = fixed_frequencies(config)  # float64, CPU: the master copy
        self._inv_freq = self._fine = self._fine_master = None
        self._kept_master: tuple[torch.Tensor, torch.Tensor] | None = None
        self._kept = self._kept_master
        if self._frequencies is not None:
            inv, factor = self._frequencies
            if duplicated:
                # [2n]: inv_freq twice, for tables in Hugging Face's format (both halves
                # equal), built directly rather than concatenated per call; every entry
                # is the same function of (m, theta_i) as in the [n] tables.
                inv = torch.cat((inv, inv))
                self._frequencies = inv, factor
            # The angle-addition tables' fine part (cos/sin of lo θ, lo < 64, with the
            # attention factor folded in): a pure function of the config, like inv_freq,
            # so a call does trig only for its own blocks (ropekit.tables).
            self._fine_master = fine_table(inv, attention_factor=factor)
            self._inv_freq, self._fine = inv, self._fine_master
            if kept_positions:
                # The tables of positions 0 .. L-1, as any call would build them (the same
                # function of (m, theta_i), bit for bit): calls inside [0, L) slice them.
                self._kept_master = range_tables(
                    inv, 0, kept_positions, factor, self._fine_master, torch.float32
                )
                self._kept = self._kept_master

    @property
    def config(self) -> RopeConfig:
        """The layer's :class:`~ropekit.RopeConfig` (read-only: build a new module to change
        it, so that the frequencies kept from construction always match it)."""
        return self._config

    @property
    def kept_positions(self) -> int:
        """``L``: positions ``0 .. L - 1`` whose float32 tables the module keeps (0: none)."""
        return 0 if self._kept_master is None else self._kept_master[0].shape[0]

    def _kept_rows(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``cos``/``sin`` ``[*P, n]`` gathered from the kept float32 tables for integer CPU
        ``positions`` ``[*P]`` that all lie in ``[0, L)`` (new tensors: the caller may
        write to them); None if they do not, or cannot be read here (an accelerator,
        whose values only a host sync could tell, or inside ``torch.compile``)."""
        kept = self._kept
        if (
            kept is None or not positions.is_cpu or not kept[0].is_cpu
            or (positions.dtype is not torch.int64 and positions.dtype is not torch.int32)
            or torch.compiler.is_compiling()
        ):  # fmt: skip
            return None
        count = positions.numel()
        if not count:
            return None
        if count <= _LISTED:  # decode sizes: read as a list
            values = positions.reshape(-1).tolist()
            first, last = min(values), max(values)
        else:
            first, last = (int(v) for v in torch.aminmax(positions))
        if first < 0 or last >= kept[0].shape[0]:
            return None
        # the kept rows are the values any call computes for these positions, bit for bit
        return torch.embedding(kept[0], positions), torch.embedding(kept[1], positions)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        # Follow the module's device, never its dtype: the device is read off a probe
        # tensor passed through fn, and the values are copied from the masters.
        super()._apply(fn, recurse)
        if self._frequencies is not None:
            probe = fn(torch.empty(0, dtype=torch.float64, device=self._inv_freq.device))
            if probe.device != self._inv_freq.device:  # (.half(), .float(): nothing to do)
                self._inv_freq = self._frequencies[0].to(probe.device)
                self._fine = self._fine_master.to(probe.device)
                if self._kept_master is not None:
                    cos, sin = self._kept_master
                    self._kept = cos.to(probe.device), sin.to(probe.device)
        return self

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept frequencies and fine table on ``device`` (a copy only if the module
        was not moved with its inputs)."""
        if self._inv_freq.device == device:
            return self._inv_freq, self._fine
        return self._frequencies[0].to(device), self._fine_master.to(device)


class RotaryEmbedding(KeptFrequencies):
    """Applies RoPE to queries (and keys) as configured by ``config``.

    Args:
        config: the layer's :class:`~ropekit.RopeConfig`.
        backend: implementation of the rotation, a :class:`ropekit.Backend` or its name
            (see :func:`ropekit.apply_rope`); ``"auto"`` picks the fastest for the
            tensors' device. It changes speed, never the result beyond last-bit rounding.
        layout: ``"bhsd"`` (``[b, h, s, d]``, default), ``"bshd"`` (``[b, s, h, d]``) or
            ``"thd"`` (packed ``[t, h, d]``, with ``cu_seqlens``).
        kept_positions: ``L``, the positions ``0 .. L - 1`` whose float32 tables the
            module keeps (``2 * L * n`` floats), so that calls inside them build no
            table; 0 keeps none. Default: ``config.max_position``, at least 4096 and at
            most 32768. It changes speed and memory, never a result. (Nothing is kept
            for methods whose tables depend on the length: dynamic NTK, LongRoPE.)

    Example:
        >>> rope = RotaryEmbedding(RopeConfig(head_dim=64, theta=10000.0))
        >>> q, k = torch.randn(2, 8, 16, 64), torch.randn(2, 2, 16, 64)
        >>> q_rot, k_rot = rope(q, k)                    # positions 0..15
        >>> q_next, k_next = rope(q[:, :, :1], k[:, :, :1], offset=16)  # decoding
        >>> q_only = rope(q)                             # queries alone (k=None)
        >>> packed = RotaryEmbedding(RopeConfig(head_dim=64), layout="thd")
        >>> qp, kp = packed(torch.randn(5, 8, 64), torch.randn(5, 2, 64),
        ...                 cu_seqlens=torch.tensor([0, 3, 5]))  # positions 0,1,2,0,1
    """

    def __init__(
        self,
        config: RopeConfig,
        *,
        backend: Backend | str = "auto",
        layout: str = "bhsd",
        kept_positions: int | None = None,
    ) -> None:
        super().__init__(config, kept_positions=kept_positions)
        self.backend = parse_backend(backend)
        self.layout = _check_layout(layout)

    def extra_repr(self) -> str:
        return f"{self.config!r}, backend={self.backend.value!r}, layout={self.layout!r}"

    def cos_sin(
        self,
        positions: torch.Tensor,
        *,
        dtype: torch.dtype = torch.float32,
        seq_len: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables ``[*P, n]`` for ``positions`` ``[*P]``, with the config's scaling.

        Equal to ``self.config.cos_sin(positions, seq_len=seq_len, dtype=dtype)``.
        """
        if self._frequencies is None:
            return self.config.cos_sin(positions, seq_len=seq_len, dtype=dtype)
        if seq_len is not None:
            check_int("seq_len", seq_len, minimum=1)
        inv_freq, fine = self._on(positions.device)
        return cos_sin(
            inv_freq, positions, attention_factor=self._frequencies[1], dtype=dtype,
            fine_table=fine,
        )  # fmt: skip

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        *,
        offset: int | torch.Tensor = 0,
        cu_seqlens: torch.Tensor | None = None,
        seq_len: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Rotate ``q`` and ``k`` (``[b, h_q, s, d]``/``[b, h_k, s, d]`` for ``bhsd``;
        ``[b, s, h, d]`` for ``bshd``; ``[t, h, d]`` for ``thd``).

        Args:
            q, k: floating tensors with equal ``b`` and ``s`` (or ``t``) and
                ``d == config.head_dim``; ``k=None`` rotates the queries alone.
            positions: integer ``[s]`` (shared by the batch), ``[b, s]`` (per row, e.g.
                left padding) or, packed, ``[t]``. Default: see :mod:`ropekit.positions`
                (``offset + arange(s)``; with ``cu_seqlens``, restarting per document).
            offset: int, or integer ``[b]`` tensor (one per batch row) / ``[#docs]``
                (with ``cu_seqlens``, each document's start), added to the positions.
            cu_seqlens: packed (``thd``) only: int ``[#docs + 1]`` document boundaries.
            seq_len: the length the tables are for, ``max(position) + 1`` (read only by
                length-dependent scaling: dynamic NTK, LongRoPE). Default: ``offset + s``
                for implicit positions and an int ``offset``; otherwise read from the
                positions, which ``torch.compile`` cannot do, so pass it there.

        Returns:
            ``(q_rot, k_rot)`` shaped and typed like ``q`` and ``k``; ``q_rot`` alone
            when ``k`` is None.
        """
        # Written for decode sizes, where this Python costs as much as the rotation:
        # each attribute read once, no generators.
        check_tensor("q", q)
        layout = self.layout
        packed = layout == "thd"
        qshape = q.shape
        if k is not None:
            check_tensor("k", k)
            kshape = k.shape
        if len(qshape) != (3 if packed else 4) or (
            k is not None and len(kshape) != len(qshape)
        ):
            want = {"bhsd": "[b, h, s, d]", "bshd": "[b, s, h, d]", "thd": "[t, h, d]"}[layout]
            xs = (q,) if k is None else (q, k)
            shapes = ", ".join(f"{n}.shape={tuple(x.shape)}" for n, x in zip("qk", xs, strict=False))
            raise RopeValueError(
                f"{shapes}: expected {want} for layout={layout!r} (set layout= on the module "
                "to say how q and k are laid out; it is never guessed)"
            )
        seq_dim = 0 if packed else (1 if layout == "bshd" else 2)
        b, s = (None if packed else qshape[0]), qshape[seq_dim]
        d = qshape[-1]
        if k is not None and (
            (not packed and kshape[0] != b) or kshape[seq_dim] != s or kshape[-1] != d
        ):
            raise RopeValueError(
                f"q.shape={tuple(qshape)} and k.shape={tuple(kshape)} do not match: "
                f"expected equal batch, sequence (or token) and head dims for layout={layout!r}"
            )
        if d != self.config.head_dim:
            raise RopeValueError(
                f"q.shape[-1]={d} is not allowed: expected head_dim={self.config.head_dim}"
            )
        where = Positions.check(
            s, b, positions=positions, offset=offset, cu_seqlens=cu_seqlens, device=q.device
        )
        # Tables in float32 for half/float32 inputs (float64 for float64 inputs): the
        # rotation itself runs in that dtype, so rounding them to bf16 first would only
        # add error.
        dtype = compute_dtype(q.dtype if k is None else torch.promote_types(q.dtype, k.dtype))
        if seq_len is not None:
            check_int("seq_len", seq_len, minimum=1)
        kept = self._kept
        compiling = torch.compiler.is_compiling()
        start = where.offset if where.implicit and not compiling else -1
        if (
            kept is not None and dtype is torch.float32 and start >= 0
            and start + s <= kept[0].shape[0] and kept[0].device == q.device
        ):  # fmt: skip
            # offset + arange(s) inside the kept positions (prefill, decode): slices of
            # the kept tables, which are these positions' tables; no op but two views
            cos, sin = kept[0][start : start + s], kept[1][start : start + s]
            rows_ndim = 1
        elif where.implicit and self._frequencies is not None:
            # offset + arange(s): built from Python ints, no positions tensor read (no
            # host sync on an accelerator)
            inv_freq, fine = self._on(q.device)
            if compiling:
                cos, sin = cos_sin_range(
                    inv_freq, where.offset, s, attention_factor=self._frequencies[1],
                    dtype=dtype, fine_table=fine,
                )  # fmt: skip
            else:  # the arguments cos_sin_range would check are the module's own (no grad)
                cos, sin = range_tables(inv_freq, where.offset, s, self._frequencies[1], fine, dtype)
            rows_ndim = 1
        else:
            rows = where.rows(q.device)  # int64 [s], [b, s] or [t]
            got = self._kept_rows(rows) if dtype is torch.float32 else None
            if got is None:
                seq_len = self._seq_len(rows, where, s, seq_len)
                got = self.cos_sin(rows, dtype=dtype, seq_len=seq_len)
            cos, sin = got
            rows_ndim = rows.ndim
        # [*P, n] to broadcast over the heads in the caller's layout
        if layout == "bhsd":
            if rows_ndim == 2:  # [b, s, n] -> [b, 1, s, n]
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        else:  # [s, n] -> [s, 1, n]; [b, s, n] -> [b, s, 1, n]; [t, n] -> [t, 1, n]
            cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        # ropekit.apply_rope(_qk) without its wrapper (no out=, no in place here): the
        # one argument checker, then the backend
        xs, names = ((q,), ("q",)) if k is None else ((q, k), ("q", "k"))
        call = check_call(
            xs, names, cos, sin, layout=layout, interleaved=self.config.interleaved,
            own_tables=True,
        )  # fmt: skip
        ys = rotate(call, self.backend)
        if layout == "bhsd":
            return ys[0] if k is None else ys
        if k is None:
            return from_canonical(ys[0], layout)
        return from_canonical(ys[0], layout), from_canonical(ys[1], layout)

    def _seq_len(
        self, rows: torch.Tensor, where: Positions, s: int, seq_len: int | None
    ) -> int | None:
        """The length for length-dependent scaling, without reading tensor data if possible."""
        if not self.config.scaling.depends_on_seq_len:
            return None
        if seq_len is not None:
            return check_int("seq_len", seq_len, minimum=1)
        if where.implicit:
            return where.offset + s  # positions offset .. offset + s - 1
        if torch.compiler.is_compiling():
            raise RopeValueError(
                f"scaling {self.config.scaling.name!r} needs the sequence length, which would be "
                "read from the positions tensor (a data-dependent graph break under "
                "torch.compile): pass seq_len=max(position) + 1"
            )
        return int(rows.max()) + 1 if rows.numel() else 1
