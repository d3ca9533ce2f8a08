"""A small Llama-style decoder whose positions come from ropekit.

One file, read top to bottom: config, RMSNorm, attention (grouped-query, RoPE, KV cache),
SwiGLU feed-forward, block, model, generation.

Notation: ``b`` batch, ``s`` new tokens in this call, ``t`` tokens in the KV cache before
this call, ``e`` model width (``dim``), ``h_q``/``h_k`` query/key-value heads, ``d`` head
dim (``e / h_q``), ``f`` feed-forward hidden width, ``V`` vocabulary size.

Per block (pre-norm residual, as in Llama)::

    x = x + Attention(RMSNorm(x))       # q, k rotated by RoPE at their positions
    x = x + SwiGLU(RMSNorm(x))          # W2 (silu(W1 x) * W3 x)

Positions enter only through the shared :class:`~ropekit.RotaryEmbedding`, so changing
the scaling method (:meth:`Transformer.set_rope_scaling`) changes nothing else: that is
what the length-extrapolation experiment (:mod:`ropekit_lab.extrapolate`) relies on.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ropekit.config import RopeConfig
from ropekit.errors import RopeValueError, check_float, check_int, check_tensor
from ropekit.frequencies.scaling import Scaling, scaling_from_dict
from ropekit.modules.rotary import RotaryEmbedding
from ropekit.positions import default_positions

__all__ = ["KVCache", "ModelConfig", "Transformer", "generate"]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a :class:`Transformer`; JSON-serialisable (:meth:`to_dict`/:meth:`from_dict`).

    Attributes:
        vocab_size: ``V`` (256 for byte-level tokens).
        dim: model width ``e``.
        n_layers: number of blocks.
        n_heads: query heads ``h_q``; ``d = dim / n_heads`` must be even.
        n_kv_heads: key/value heads ``h_k`` (grouped-query attention); divides ``n_heads``.
        ffn_hidden: SwiGLU hidden width ``f``; ``None`` gives Llama's ``8/3 * dim``
            rounded up to a multiple of 32.
        norm_eps: RMSNorm epsilon.
        rope_theta: RoPE base.
        max_seq_len: the context the model is trained at (``L``); it is the RoPE config's
            ``max_position``, the "original context" the scaling methods extend.
        rope_scaling: ``{"rope_type": name, **params}`` of a registered scaling method
            (see :data:`ropekit.scaling.SCALINGS`), or ``None`` for plain RoPE.
    """

    vocab_size: int = 256
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 128
    rope_scaling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len"):
            check_int(name, getattr(self, name), minimum=1)
        if self.ffn_hidden is not None:
            check_int("ffn_hidden", self.ffn_hidden, minimum=1)
        check_float("norm_eps", self.norm_eps, positive=True)
        if self.dim % self.n_heads:
            raise RopeValueError(
                f"dim={self.dim} is not allowed: expected a multiple of n_heads={self.n_heads}"
            )
        if self.head_dim % 2:
            raise RopeValueError(
                f"dim / n_heads = {self.head_dim} is not allowed: expected an even head dim"
            )
        if self.n_heads % self.n_kv_heads:
            raise RopeValueError(
                f"n_kv_heads={self.n_kv_heads} is not allowed: expected a divisor of "
                f"n_heads={self.n_heads}"
            )
        self.rope_config()  # validates theta and the scaling parameters once, here

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return 32 * math.ceil(8 * self.dim / 3 / 32)

    def rope_config(self) -> RopeConfig:
        """The :class:`~ropekit.RopeConfig` of every attention layer."""
        scaling = None if self.rope_scaling is None else scaling_from_dict(self.rope_scaling)
        return RopeConfig(
            head_dim=self.head_dim,
            theta=self.rope_theta,
            scaling=scaling,
            max_position=self.max_seq_len,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RopeValueError(
                f"unknown model config field(s) {unknown}: expected some of {sorted(known)}"
            )
        return cls(**data)


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x^2) + eps) * weight`` over the last dim ``[*, e]``.

    Computed in at least float32 (float64 stays float64): the mean of squares of a few
    hundred bf16 values loses about 3 significant bits otherwise.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


class KVCache:
    """Rotated keys and values of the tokens seen so far, one entry per layer.

    Keys are stored *after* rotation, so a cached key keeps the angle of its own position
    and new tokens only need their own rotation. This is exact for every method whose
    frequencies do not depend on the sequence length; for dynamic NTK the cached keys keep
    the frequencies of the length at which they were computed (the usual decoding
    behaviour, which differs from a full forward pass at the final length).
    """

    def __init__(self, n_layers: int) -> None:
        check_int("n_layers", n_layers, minimum=1)
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        """``t``: tokens cached (read from layer 0)."""
        k = self.keys[0]
        return 0 if k is None else k.shape[2]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k``, ``v`` ``[b, h_k, s, d]``; return all ``[b, h_k, t + s, d]``."""
        old_k, old_v = self.keys[layer], self.values[layer]
        if old_k is not None and old_v is not None:
            k, v = torch.cat((old_k, k), dim=2), torch.cat((old_v, v), dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class Attention(nn.Module):
    """Causal grouped-query self-attention with RoPE on queries and keys."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.n_heads,
            config.n_kv_heads,
            config.head_dim,
        )
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryEmbedding,
        positions: torch.Tensor,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        """``x`` ``[b, s, e]``, ``positions`` ``[s]`` or ``[b, s]`` -> ``[b, s, e]``.

        ``softmax(q k^T / sqrt(d) + causal mask) v`` per head, with key/value head
        ``j`` shared by query heads ``j * h_q/h_k ... (j + 1) * h_q/h_k - 1``.
        """
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, k, positions)  # [b, h_q, s, d], [b, h_k, s, d]
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [b, h_k, t + s, d]
        t = k.shape[2] - s
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if t == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # New query i sits at cache index t + i and may see keys 0 .. t + i. (SDPA's
            # is_causal aligns the mask to the top-left corner, which is wrong here.)
            rows = torch.arange(t, t + s, device=x.device)[:, None]
            cols = torch.arange(t + s, device=x.device)[None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=cols <= rows)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """SwiGLU: ``W2 (silu(W1 x) * W3 x)``, ``[*, e] -> [*, f] -> [*, e]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.w2 = nn.Linear(config.hidden_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryEmbedding,
        positions: torch.Tensor,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rope, positions, cache, layer)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    """Token ids ``[b, s]`` -> next-token logits ``[b, s, V]``.

    One :class:`~ropekit.RotaryEmbedding` (``self.rope``) serves every layer; it holds no
    tensors, so swapping it (:meth:`set_rope_scaling`) changes positions only.

    Example:
        >>> model = Transformer(ModelConfig(dim=64, n_layers=2, max_seq_len=32))
        >>> model(torch.randint(0, 256, (2, 10))).shape
        torch.Size([2, 10, 256])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise RopeValueError(f"config={config!r} is not allowed: expected a ModelConfig")
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.rope = RotaryEmbedding(config.rope_config())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) weights; the two projections that write into the residual stream
        get std ``0.02 / sqrt(2 * n_layers)`` so the stream's variance does not grow with
        depth (GPT-2's scheme)."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, std=residual_std)
            else:
                nn.init.normal_(p, std=0.02)

    def set_rope_scaling(self, scaling: Scaling | None) -> Transformer:
        """Use ``scaling`` (any registered method, or ``None`` for plain RoPE) from now on.

        The method is anchored at ``config.max_seq_len`` (its ``max_position``). Returns
        ``self``. Parameters are untouched.
        """
        if scaling is not None and not isinstance(scaling, Scaling):
            raise RopeValueError(
                f"scaling={scaling!r} is not allowed: expected None or a ropekit Scaling instance"
            )
        spec = None if scaling is None else scaling.to_dict()
        self.config = dataclasses.replace(self.config, rope_scaling=spec)
        self.rope = RotaryEmbedding(self.config.rope_config())
        return self

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits ``[b, s, V]`` (float32 or the parameters' dtype) for ``tokens`` ``[b, s]``.

        Args:
            tokens: int64 token ids ``[b, s]``.
            positions: ``[s]`` or ``[b, s]`` positions for RoPE; default
                ``t + arange(s)`` (``t`` = tokens already in ``cache``). They change only
                the rotation; the mask is always causal over the token order.
            cache: a :class:`KVCache` to read from and append to (decoding).
        """
        check_tensor("tokens", tokens)
        if tokens.ndim != 2 or tokens.dtype != torch.int64:
            raise RopeValueError(
                f"tokens of shape {tuple(tokens.shape)} and dtype {tokens.dtype} are not "
                "allowed: expected int64 [b, s]"
            )
        if positions is None:
            offset = 0 if cache is None else cache.length
            positions = default_positions(tokens.shape[1], offset, device=tokens.device)
        x = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rope, positions, cache, i)
        return self.output(self.norm(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@torch.no_grad()
def generate(
    model: Transformer,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue ``prompt`` ``[b, s]`` by ``max_new_tokens`` tokens using a KV cache.

    ``temperature == 0`` is greedy decoding; otherwise tokens are sampled from
    ``softmax(logits / temperature)``, restricted to the ``top_k`` most likely if given.
    Returns ``[b, s + max_new_tokens]``.
    """
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    temperature = check_float("temperature", temperature, minimum=0.0)
    if top_k is not None:
        check_int("top_k", top_k, minimum=1)
    cache = KVCache(model.config.n_layers)
    out = prompt
    logits = model(prompt, cache=cache)[:, -1]
    for _ in range(max_new_tokens):
        if temperature == 0.0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            scaled = logits.float() / temperature
            if top_k is not None:
                kth = torch.topk(scaled, min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(scaled, dim=-1), 1, generator=generator)
        out = torch.cat((out, nxt), dim=1)
        logits = model(nxt, cache=cache)[:, -1]
    return out
