"""A small Llama-style model on ropekit, its byte-level data, trainer and the
length-extrapolation experiment."""

from .model import KVCache, ModelConfig, Transformer, generate

__all__ = ["KVCache", "ModelConfig", "Transformer", "generate"]
