"""``RotaryEmbedding``: the ``nn.Module`` that rotates queries and keys.

Notation: ``b`` batch, ``h_q``/``h_k`` query/key heads (GQA allows ``h_k != h_q``),
``s`` sequence length, ``d`` head dim, ``n`` rotated pairs.

Design: the module holds only its :class:`~ropekit.RopeConfig` (plus, for methods whose
frequencies do not depend on the length, those ``[n]`` float64 frequencies, derived from
the config once), no buffers, parameters or tables. Tables are built for the positions of
each call, in float64, and rounded once (see :mod:`ropekit.tables.cos_sin`).
Consequences, all deliberate:

* ``module.to(torch.bfloat16)``/``.half()`` cannot degrade the tables: there is no
  buffer for them to cast.
* meta-device construction followed by ``to_empty`` needs nothing re-initialised.
* results depend only on the arguments of the call, never on earlier calls (no cache
  that grows, shrinks or is keyed by history), so any sequence length works and memory
  is bounded by the call's own ``[s, n]`` (or ``[b, s, n]``) tables.

The price is ``2 * s * n`` float64 cos/sin per call, shared by q and k and by all heads
(about 1% of the rotation work at ``b*h = 32``).

``torch.compile``: ``forward`` traces into one graph (``fullgraph=True``) with symbolic
sequence lengths and offsets. Methods whose tables depend on the length (dynamic NTK,
LongRoPE) need that length as a number, never read from tensor data: it is
``offset + s`` when positions are implicit (an int ``offset``), or the ``seq_len``
argument. Only eager calls with an explicit ``positions`` tensor (or a tensor ``offset``)
and no ``seq_len`` fall back to ``max(positions) + 1`` read from the data, which inside a
compiled graph would be a data-dependent graph break, so there it raises instead.
"""

from __future__ import annotations

import torch
from torch import nn

from ..apply.backends import Backend, parse_backend
from ..apply.rotate import apply_rope_qk, compute_dtype
from ..config import RopeConfig
from ..errors import RopeValueError, check_int, check_tensor
from ..tables.cos_sin import cos_sin

__all__ = ["RotaryEmbedding", "default_positions", "fixed_frequencies"]


def default_positions(
    seq_len: int, offset: int | torch.Tensor = 0, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """``offset + arange(seq_len)``: ``[s]`` for an int offset, ``[b, s]`` for a ``[b]`` tensor.

    Positions are int64 regardless of any floating dtype around them, so they stay exact.
    """
    if isinstance(offset, torch.Tensor):
        if offset.ndim != 1 or offset.is_floating_point() or offset.dtype == torch.bool:
            raise RopeValueError(
                f"offset of shape {tuple(offset.shape)} and dtype {offset.dtype} is not allowed: "
                "expected an int or a 1-D integer tensor [b]"
            )
        steps = torch.arange(seq_len, device=offset.device, dtype=torch.int64)
        return offset.to(torch.int64)[:, None] + steps
    check_int("offset", offset)
    return torch.arange(offset, offset + seq_len, device=device, dtype=torch.int64)


def fixed_frequencies(config: RopeConfig) -> tuple[torch.Tensor, float] | None:
    """``config.frequencies()`` (``inv_freq`` ``[n]`` float64 on the CPU, attention factor)
    when they do not depend on the sequence length, else None.

    For modules to compute once at construction: a pure function of the frozen config,
    and at decode sizes rebuilding it costs ~40% as much as the rotation. Kept as a plain
    attribute, not a buffer, because ``module.to(dtype)`` must not round it and it is no
    state to save. Built on the CPU even inside ``with torch.device("meta")``, so
    ``to_empty`` has nothing to re-initialise.
    """
    if config.method.depends_on_seq_len:
        return None
    with torch.device("cpu"):
        return config.frequencies()


class RotaryEmbedding(nn.Module):
    """Applies RoPE to queries and keys as configured by ``config``.

    Args:
        config: the layer's :class:`~ropekit.RopeConfig`.
        backend: implementation of the rotation, a :class:`ropekit.Backend` or its name
            (see :func:`ropekit.apply_rope`); ``"auto"`` picks the fastest for the
            tensors' device. It changes speed, never the result beyond last-bit rounding.

    Example:
        >>> rope = RotaryEmbedding(RopeConfig(head_dim=64, theta=10000.0))
        >>> q, k = torch.randn(2, 8, 16, 64), torch.randn(2, 2, 16, 64)
        >>> q_rot, k_rot = rope(q, k)                    # positions 0..15
        >>> q_next, k_next = rope(q[:, :, :1], k[:, :, :1], offset=16)  # decoding
    """

    def __init__(self, config: RopeConfig, *, backend: Backend | str = "auto") -> None:
        super().__init__()
        if not isinstance(config, RopeConfig):
            raise RopeValueError(f"config={config!r} is not allowed: expected a ropekit.RopeConfig")
        self._config = config
        self.backend = parse_backend(backend)
        self._frequencies = fixed_frequencies(config)

    @property
    def config(self) -> RopeConfig:
        """The layer's :class:`~ropekit.RopeConfig` (read-only: build a new module to change
        it, so that the frequencies kept from construction always match it)."""
        return self._config

    def extra_repr(self) -> str:
        return f"{self.config!r}, backend={self.backend.value!r}"

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
        inv_freq, factor = self._frequencies
        return cos_sin(inv_freq, positions, attention_factor=factor, dtype=dtype)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor | None = None,
        *,
        offset: int | torch.Tensor = 0,
        seq_len: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate ``q`` ``[b, h_q, s, d]`` and ``k`` ``[b, h_k, s, d]``.

        Args:
            q, k: floating tensors with equal ``b``, ``s`` and ``d == config.head_dim``.
            positions: ``[s]`` (shared by the batch) or ``[b, s]`` (per row, e.g. left
                padding or packed sequences) integer positions. Defaults to
                ``offset + arange(s)``.
            offset: int, or ``[b]`` integer tensor, used when ``positions`` is None
                (the number of tokens already in the KV cache).
            seq_len: the length the tables are for, ``max(position) + 1`` (read only by
                length-dependent scaling: dynamic NTK, LongRoPE). Default: ``offset + s``
                for an int ``offset``; otherwise read from the positions, which
                ``torch.compile`` cannot do, so pass it there.

        Returns:
            ``(q_rot, k_rot)`` with the shapes and dtypes of ``q`` and ``k``.
        """
        check_tensor("q", q)
        check_tensor("k", k)
        if q.ndim != 4 or k.ndim != 4:
            raise RopeValueError(
                f"q.shape={tuple(q.shape)}, k.shape={tuple(k.shape)}: expected 4-D [b, h, s, d]"
            )
        b, _, s, d = q.shape
        if k.shape[0] != b or k.shape[2] != s or k.shape[3] != d:
            raise RopeValueError(
                f"q.shape={tuple(q.shape)} and k.shape={tuple(k.shape)} do not match: expected "
                "equal batch, sequence and head dims ([b, h_q, s, d] and [b, h_k, s, d])"
            )
        if d != self.config.head_dim:
            raise RopeValueError(
                f"q.shape[-1]={d} is not allowed: expected head_dim={self.config.head_dim}"
            )
        implicit = positions is None
        if positions is None:
            positions = default_positions(s, offset, device=q.device)
        else:
            check_tensor("positions", positions)
            if tuple(positions.shape) not in ((s,), (b, s)):
                raise RopeValueError(
                    f"positions.shape={tuple(positions.shape)} is not allowed: expected [s]=({s},) "
                    f"or [b, s]=({b}, {s})"
                )
        seq_len = self._seq_len(positions, implicit, offset, s, seq_len)
        # Tables in float32 for half/float32 inputs (float64 for float64 inputs): the
        # rotation itself runs in that dtype, so rounding them to bf16 first would only
        # add error.
        table_dtype = compute_dtype(torch.promote_types(q.dtype, k.dtype))
        cos, sin = self.cos_sin(positions, dtype=table_dtype, seq_len=seq_len)
        if positions.ndim == 2:  # [b, s, n] -> [b, 1, s, n], shared by all heads
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return apply_rope_qk(
            q, k, cos, sin, interleaved=self.config.interleaved, backend=self.backend
        )

    def _seq_len(
        self,
        positions: torch.Tensor,
        implicit: bool,
        offset: int | torch.Tensor,
        s: int,
        seq_len: int | None,
    ) -> int | None:
        """The length for length-dependent scaling, without reading tensor data if possible."""
        if not self.config.method.depends_on_seq_len:
            return None
        if seq_len is not None:
            return check_int("seq_len", seq_len, minimum=1)
        if implicit and not isinstance(offset, torch.Tensor):
            return offset + s  # positions offset .. offset + s - 1
        if torch.compiler.is_compiling():
            raise RopeValueError(
                f"scaling {self.config.method.name!r} needs the sequence length, which would be "
                "read from the positions tensor (a data-dependent graph break under "
                "torch.compile): pass seq_len=max(position) + 1"
            )
        return int(positions.max()) + 1
