"""The peer implementations that ropekit is timed against, one list for every benchmark.

The CPU harness (:mod:`ropekit_lab.bench.cpu`, ``ropekit-lab bench``,
``benchmarks/bench_rope.py``) and the GPU script (``benchmarks/bench_triton.py``) both
take their peers from :data:`PEERS`. Each peer is used as its documentation shows, with
its tables precomputed where the library lets the caller do so:

* Hugging Face ``apply_rotary_pos_emb`` (Llama): ``[1, s, d]`` tables (``cat(freqs,
  freqs)``) in ``x.dtype``, as ``LlamaRotaryEmbedding`` returns them;
* Meta's complex form, written here from Meta's reference ``apply_rotary_emb``
  (benchmark only): float32 angles in polar form;
* torchtune's ``RotaryPositionalEmbeddings`` (its file loaded by itself when ``import
  torchtune`` fails for want of torchao), fed ``[b, s, h, d]`` views as a model would;
* ``rotary-embedding-torch``'s ``rotate_queries_or_keys``;
* a ``torch.compile``'d fused ``cat(x1 c - x2 s, x2 c + x1 s)`` computed in float32;
* Liger-Kernel's ``LigerRopeFunction`` (CUDA only; rotates in place).

A peer's ``make(tables)`` returns a rotation ``f(q, k) -> (q_rot, k_rot)`` for q and k of
shape ``[b, h, s, d]`` at positions ``offset .. offset + s - 1``, or a string saying why
the peer is unavailable (not installed, needs CUDA).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ropekit.frequencies.base import inv_freq

__all__ = ["PEERS", "Peer", "Rotation", "Tables", "fused", "meta_complex", "peers_for"]

Rotation = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Tables:
    """One case as the peers see it: q and k are ``[b, h, s, d]`` of ``dtype`` at positions
    ``offset + arange(s)``; ``cos``/``sin`` are ropekit's float32 ``[s, n]`` tables
    (``n = d // 2``) on the device."""

    d: int
    s: int
    offset: int
    dtype: torch.dtype
    cos: torch.Tensor
    sin: torch.Tensor
    #: torch.compile with ``fullgraph=True, dynamic=False`` (the GPU script's setting; the
    #: CPU harness keeps torch.compile's defaults, as its published figures were measured).
    static_compile: bool = False

    @property
    def device(self) -> torch.device:
        return self.cos.device

    def positions(self) -> torch.Tensor:
        return torch.arange(self.offset, self.offset + self.s, device=self.device)


@dataclass(frozen=True)
class Peer:
    name: str  # the row name in the CPU report
    key: str  # short name: the GPU script's rows and its --impls
    make: Callable[[Tables], Rotation | str]
    compiles: bool = False  # uses torch.compile (seconds per dtype and shape)
    devices: tuple[str, ...] = ("cpu", "cuda")
    interleaved: bool = False  # rotates pairs (2i, 2i+1) (GPT-J/Meta), not halves


def meta_complex(
    q: torch.Tensor, k: torch.Tensor, freqs_cis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's ``apply_rotary_emb`` (llama/model.py) for ``[b, h, s, d]`` tensors;
    ``freqs_cis`` is complex ``[s, n]``."""
    q_ = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2))
    k_ = torch.view_as_complex(k.float().reshape(*k.shape[:-1], -1, 2))
    q_out = torch.view_as_real(q_ * freqs_cis).flatten(-2)
    k_out = torch.view_as_real(k_ * freqs_cis).flatten(-2)
    return q_out.type_as(q), k_out.type_as(k)


def fused(
    q: torch.Tensor, k: torch.Tensor, c: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The half-split formula as plain torch ops in float32, for torch.compile to fuse.

    Each half is cast back before the ``cat``: Inductor then fuses q and k into one loop
    (casting after the ``cat`` is ~3x slower in bf16 on a CPU).
    """

    def one(x: torch.Tensor) -> torch.Tensor:
        n = c.shape[-1]
        a, b = x[..., :n].float(), x[..., n:].float()
        return torch.cat(((a * c - b * s).to(x.dtype), (b * c + a * s).to(x.dtype)), dim=-1)

    return one(q), one(k)


def _hf_tables(t: Tables) -> tuple[torch.Tensor, torch.Tensor]:
    # LlamaRotaryEmbedding returns [b, s, d] tables (cat(freqs, freqs)) cast to x.dtype.
    cos = torch.cat((t.cos, t.cos), -1)[None].to(t.dtype)
    sin = torch.cat((t.sin, t.sin), -1)[None].to(t.dtype)
    return cos, sin


def _hf(t: Tables) -> Rotation | str:
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    except ImportError as err:
        return f"transformers not importable ({err})"
    cos, sin = _hf_tables(t)
    return lambda q, k: apply_rotary_pos_emb(q, k, cos, sin)


def _meta(t: Tables) -> Rotation | str:
    # Meta's precompute_freqs_cis: float32 angles, polar form.
    angle = torch.outer(t.positions().float(), inv_freq(t.d).float().to(t.device))
    freqs_cis = torch.polar(torch.ones_like(angle), angle)
    return lambda q, k: meta_complex(q, k, freqs_cis)


def _torchtune_rope() -> type | str:
    """torchtune's ``RotaryPositionalEmbeddings`` class, or why it is unavailable.

    ``import torchtune`` refuses to run without torchao (not installable here), but the
    class's own file imports only torch: load that file by itself, unmodified.
    """
    try:
        from torchtune.modules import RotaryPositionalEmbeddings

        return RotaryPositionalEmbeddings
    except Exception as err:  # torchtune raises a plain Exception without torchao
        why = str(err).strip().splitlines()[0][:60]
    spec = importlib.util.find_spec("torchtune")
    if spec is None or not spec.submodule_search_locations:
        return f"torchtune not installed ({why})"
    path = os.path.join(spec.submodule_search_locations[0], "modules", "position_embeddings.py")
    file_spec = importlib.util.spec_from_file_location("_torchtune_position_embeddings", path)
    if file_spec is None or file_spec.loader is None or not os.path.isfile(path):
        return f"torchtune not importable ({why})"
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module.RotaryPositionalEmbeddings


def _torchtune(t: Tables) -> Rotation | str:
    rope_class = _torchtune_rope()
    if isinstance(rope_class, str):
        return rope_class
    rope = rope_class(t.d, max_seq_len=t.offset + t.s).to(t.device)
    pos = t.positions()
    # torchtune takes [b, s, h, d]: feed transposed views, as a model would.
    return lambda q, k: (
        rope(q.transpose(1, 2), input_pos=pos).transpose(1, 2),
        rope(k.transpose(1, 2), input_pos=pos).transpose(1, 2),
    )


def _rotary_embedding_torch(t: Tables) -> Rotation | str:
    try:
        from rotary_embedding_torch import RotaryEmbedding as Rot
    except ImportError as err:
        return f"rotary-embedding-torch not importable ({err})"
    rot = Rot(dim=t.d, cache_max_seq_len=max(8192, t.offset + t.s)).to(t.device)
    offset = t.offset
    return lambda q, k: (
        rot.rotate_queries_or_keys(q, offset=offset),
        rot.rotate_queries_or_keys(k, offset=offset),
    )


def _compiled_fused(t: Tables) -> Rotation | str:
    options = {"fullgraph": True, "dynamic": False} if t.static_compile else {}
    compiled = torch.compile(fused, **options)
    c, s = t.cos, t.sin
    return lambda q, k: compiled(q, k, c, s)


def _liger(t: Tables) -> Rotation | str:
    if t.device.type != "cuda":
        return "Liger-Kernel needs CUDA tensors"
    try:
        from liger_kernel.ops.rope import LigerRopeFunction
    except Exception as err:  # its import chain may fail in many ways: report it
        return f"liger-kernel not importable ({type(err).__name__}: {err})"
    cos, sin = _hf_tables(t)
    return lambda q, k: LigerRopeFunction.apply(q, k, cos, sin)


#: Every peer, in report order.
PEERS: tuple[Peer, ...] = (
    Peer("HF apply_rotary_pos_emb", "hf", _hf),
    Peer("Meta complex form", "meta", _meta, interleaved=True),
    Peer("torchtune", "torchtune", _torchtune, interleaved=True),
    Peer("rotary-embedding-torch", "rotary_emb_torch", _rotary_embedding_torch, interleaved=True),
    Peer("torch.compile fused (fp32 math)", "torch.compile", _compiled_fused, compiles=True),
    Peer("Liger-Kernel LigerRopeFunction", "liger", _liger, devices=("cuda",)),
)


def peers_for(device: str) -> tuple[Peer, ...]:
    """The peers that can run on ``device`` (``"cpu"`` or ``"cuda"``)."""
    return tuple(p for p in PEERS if device in p.devices)
