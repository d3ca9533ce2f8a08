"""``RotaryTables``: Hugging Face-format cos/sin tables computed exactly (it rotates nothing).

Notation: ``b`` batch, ``s`` sequence length, ``n`` rotated pairs.

Hugging Face's ``<Family>RotaryEmbedding`` modules return ``cos, sin`` ``[b, s, 2n]`` (both
halves equal) for ``position_ids`` ``[b, s]``; :class:`RotaryTables` returns the
same format from float64 angles rounded once, so it can stand in for them
(:func:`ropekit.hf.patch` installs it).
"""

from __future__ import annotations

import torch

from ..apply import compute_dtype
from ..config import RopeConfig
from ..errors import RopeValueError, check_tensor
from ..modules.rotary import KeptFrequencies
from ..tables.cos_sin import cos_sin, position_tables

__all__ = ["RotaryTables", "doubled"]


def doubled(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., n]`` -> Hugging Face's ``[..., 2n]`` (both halves equal)."""
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


class RotaryTables(KeptFrequencies):
    """Drop-in replacement for a Hugging Face ``<Family>RotaryEmbedding`` module.

    ``forward(x, position_ids)`` returns ``(cos, sin)``, each ``[b, s, 2n]`` for
    ``position_ids`` ``[b, s]``, with both halves equal to::

        cos[..., i] = attention_factor * cos(m * inv_freq[i])      (likewise sin)

    from float64 angles, rounded once to ``compute_dtype(x.dtype)`` (float32 for float16,
    bfloat16 and float32 ``x``; float64 for float64). It holds no buffers (its float64
    frequencies are a plain attribute), so ``model.to(dtype)`` cannot degrade it, and
    the result depends only on the arguments. Its frequencies follow ``model.to(device)``
    (:class:`~ropekit.modules.rotary.KeptFrequencies`).

    Args:
        config: the model's rotary embedding (``ropekit.hf.from_hf(model.config)``);
            half-split (``interleaved=False``) as Hugging Face's ``rotate_half`` is.
        kept_positions: ``L``: the float32 tables ``[L, 2n]`` of positions ``0 .. L - 1``
            are kept (computed once, as any call would compute them), and CPU calls whose
            positions all lie in ``[0, L)`` gather their rows (fresh tensors) instead of
            computing them; 0 keeps none. Default: ``config.max_position``, at least 4096
            and at most 32768. (Positions on an accelerator are not read, so there every
            call computes its tables: checking the bounds would need a host sync.)

    Example:
        >>> rope = RotaryTables(RopeConfig(head_dim=8))
        >>> cos, sin = rope(torch.zeros(1, 3, 32), torch.arange(3)[None])
        >>> cos.shape, bool((cos[..., :4] == cos[..., 4:]).all())
        (torch.Size([1, 3, 8]), True)
    """

    def __init__(self, config: RopeConfig, *, kept_positions: int | None = None) -> None:
        if isinstance(config, RopeConfig) and config.interleaved:
            raise RopeValueError(
                "config.interleaved=True is not allowed: Hugging Face's rotate_half pairs lanes "
                "(i, i + n), expected interleaved=False"
            )
        # kept float64 frequencies [2n] (Hugging Face's format), following the device
        super().__init__(config, duplicated=True, kept_positions=kept_positions)

    def extra_repr(self) -> str:
        return repr(self.config)

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for ``position_ids`` ``[b, s]``; ``x`` only sets the dtype."""
        if layer_type is not None:
            raise RopeValueError(
                f"layer_type={layer_type!r} is not allowed: per-layer RoPE parameters are not "
                "supported, expected None"
            )
        check_tensor("position_ids", position_ids)
        if self._frequencies is None:
            # As Hugging Face: the longest position of the call picks the table set.
            inv_freq, factor = self.config.frequencies(int(position_ids.max()) + 1)
            cos, sin = cos_sin(
                inv_freq, position_ids, attention_factor=factor, dtype=compute_dtype(x.dtype)
            )
            return doubled(cos, sin)
        if compute_dtype(x.dtype) is torch.float32:
            got = self._kept_rows(position_ids)  # CPU positions inside the kept tables
            if got is not None:
                return got
        inv_freq, fine = self._on(position_ids.device)  # [2n]: both halves at once
        return position_tables(
            inv_freq, position_ids, self._frequencies[1], fine, compute_dtype(x.dtype)
        )
