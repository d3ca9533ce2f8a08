"""Greedy decoding with a Hugging Face model, unpatched vs patched by ropekit (CPU).

A randomly initialised Llama (8 layers, hidden 256, 8 query / 4 KV heads, head_dim 32),
prompt of 32 tokens, 64 new tokens, one sequence: small enough that decoding is host-bound,
so what it shows is the per-layer host cost of the rotation path, not arithmetic.
Interleaved rounds (unpatched, patched, ...), median ms per generated token, and the
median of the per-round ratios (the method of ``ropekit_lab.bench.harness``, whose
machine-load report it prints).

    .venv/bin/python benchmarks/bench_hf_decode.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

NEW_TOKENS = 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # After parsing (a fast --help): torch and transformers take seconds to import.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ropekit.hf import patch, unpatch
    from ropekit_lab.bench.harness import machine_load

    load = machine_load()
    print(f"machine before the run: {load.describe()}")
    if load.warning():
        print(load.warning())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    prompt = torch.randint(0, 256, (1, 32))

    def generate() -> torch.Tensor:
        with torch.no_grad():
            return model.generate(
                prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
            )

    ms: dict[str, list[float]] = {"unpatched": [], "patched": []}
    tokens: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name in ms:
            if name == "patched":
                patch(model)
            tokens[name] = generate()  # warm-up, and the tokens to compare
            start = time.perf_counter()
            generate()
            ms[name].append((time.perf_counter() - start) / NEW_TOKENS * 1e3)
            if name == "patched":
                unpatch(model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    for name, values in ms.items():
        print(f"{name:10s} {statistics.median(values):.3f} ms/token (median)")
    ratio = statistics.median(p / u for p, u in zip(ms["patched"], ms["unpatched"], strict=True))
    print(f"patched / unpatched: {ratio:.3f} (median of per-round ratios)")
    print(f"same greedy tokens: {torch.equal(tokens['patched'], tokens['unpatched'])}")


if __name__ == "__main__":
    main()
