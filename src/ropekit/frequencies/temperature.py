"""Position-dependent attention temperatures: a multiplier on the queries, not on RoPE.

Llama 4 (and, through ``llama_4_scaling_beta`` in their ``rope_parameters``, Mistral 4 and
Ministral 3 in transformers) multiply every query by

    ``s(m) = 1 + beta * ln(1 + floor(m / L))``

at position ``m``, with ``L`` the original context (``original_max_position_embeddings``):
``s = 1`` inside the first ``L`` positions, then a step up every ``L`` positions, growing
like ``beta ln(m / L)``. It sharpens attention at long range, where the softmax would
otherwise flatten over many keys. Keys are not scaled, so it is not part of the rotation
(cos/sin are shared by queries and keys): transformers applies it in the attention module,
after RoPE, and so must anyone who rebuilds these models. ropekit computes it exactly
(integer floor division, then ``log1p`` in float64) in :meth:`Llama4Temperature.scale`;
:class:`ropekit.RopeConfig` carries it as ``temperature`` and exposes it as
:meth:`ropekit.RopeConfig.query_scale`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import RopeValueError, check_float, check_int, check_tensor

__all__ = ["Llama4Temperature"]


@dataclass(frozen=True)
class Llama4Temperature:
    """Llama 4's query temperature ``s(m) = 1 + beta * ln(1 + floor(m / L))``.

    Attributes:
        beta: strength, finite ``>= 0`` (``0`` is no temperature). Negative values are
            refused: ``s`` would fall to 0 and below at long range (inverting attention).
        original_max_position_embeddings: ``L``, the length of each step (``>= 1``).
    """

    beta: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", check_float("beta", self.beta, minimum=0.0))
        object.__setattr__(
            self,
            "original_max_position_embeddings",
            check_int(
                "original_max_position_embeddings",
                self.original_max_position_embeddings,
                minimum=1,
            ),
        )

    def scale(self, positions: torch.Tensor) -> torch.Tensor:
        """The multiplier ``s`` ``[*P]`` (float64) for integer ``positions`` ``[*P]`` (``>= 0``).

        Example:
            >>> Llama4Temperature(0.1, 4).scale(torch.tensor([0, 3, 4, 11, 12]))
            tensor([1.0000, 1.0000, 1.0693, 1.1099, 1.1386], dtype=torch.float64)
        """
        check_tensor("positions", positions)
        if positions.dtype.is_floating_point or positions.dtype.is_complex:
            raise RopeValueError(
                f"positions.dtype={positions.dtype} is not allowed: expected an integer dtype"
            )
        if positions.numel() and int(positions.min()) < 0:
            raise RopeValueError(
                f"positions with minimum {int(positions.min())} are not allowed: expected "
                "positions >= 0 (ln(1 + floor(m / L)) is undefined below -L and < 0 below 0)"
            )
        steps = torch.div(positions.to(torch.int64), self.original_max_position_embeddings,
                          rounding_mode="floor")  # fmt: skip
        return 1.0 + self.beta * torch.log1p(steps.to(torch.float64))
