"""Greedy decoding with a Hugging Face model, unpatched vs patched by ropekit (CPU).

A randomly initialised Llama (8 layers, hidden 256, 8 query / 4 KV heads, head_dim 32),
prompt of 32 tokens, 64 new tokens, one sequence: small enough that decoding is host-bound,
so what it shows is the per-layer host cost of the rotation path, not arithmetic.

Method: paired decode steps. Three copies of the model share one set of weights (the
same parameter tensors, so the memory they sweep is one model's): one unpatched, one
patched with ``ropekit.hf.patch``, one unpatched again. Each round prefills the prompt
in each copy (its own KV cache), then decodes 64 tokens, alternating the unpatched copy
with one of the others step by step (in turn first). Timing whole ``generate()`` calls
one after the other instead gave per-round ratios spread by +-3-4% even between two runs
of the unpatched model (the machine's speed drifts over a few hundred milliseconds);
adjacent steps, a few ms apart, see the same machine. Reported: the median time per step
of each copy, the median of the per-step ratios and their quartiles, for the patched copy
and for the second unpatched one (an A/A pair: the method's own noise). Finally
``generate()`` of the unpatched and patched copies must give the same tokens.

    .venv/bin/python benchmarks/bench_hf_decode.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

NEW_TOKENS = 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # After parsing (a fast --help): torch and transformers take seconds to import.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from ropekit.hf import patch
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

    def shared_copy() -> torch.nn.Module:
        twin = copy.deepcopy(model)
        for ours, theirs in zip(model.modules(), twin.modules(), strict=True):
            theirs._parameters.update(ours._parameters)  # the same tensors: one model's memory
            theirs._buffers.update(ours._buffers)
        return twin

    copies = {"unpatched": shared_copy(), "patched": patch(shared_copy()), "unpatched again": shared_copy()}

    def generate(m: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return m.generate(
                prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
            )

    def prefill(m: torch.nn.Module) -> list:
        cache = DynamicCache(config=config)
        with torch.no_grad():
            logits = m(input_ids=prompt, cache=cache, use_cache=True).logits
        return [m, cache, logits[:, -1:].argmax(-1)]

    def step(state: list) -> float:
        m, cache, token = state
        start = time.perf_counter()
        with torch.no_grad():
            logits = m(input_ids=token, cache=cache, use_cache=True).logits
        elapsed = time.perf_counter() - start
        state[2] = logits[:, -1:].argmax(-1)
        return elapsed

    times: dict[str, list[float]] = {name: [] for name in copies}
    ratios: dict[str, list[float]] = {"patched": [], "unpatched again": []}
    for r in range(args.rounds):
        for name in ratios:
            base, other = prefill(copies["unpatched"]), prefill(copies[name])
            for t in range(NEW_TOKENS):
                if (t + r) % 2 == 0:
                    b, o = step(base), step(other)
                else:
                    o, b = step(other), step(base)
                if name == "patched":
                    times["unpatched"].append(b)
                times[name].append(o)
                ratios[name].append(o / b)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds "
        f"of {NEW_TOKENS} paired decode steps"
    )
    for name, values in times.items():
        print(f"{name:16s} {statistics.median(values) * 1e3:.3f} ms/step (median)")
    for name, values in ratios.items():
        values = sorted(values)
        q1, q3 = (values[(len(values) - 1) * i // 4] for i in (1, 3))
        print(
            f"{name} / unpatched: {statistics.median(values):.4f} (median of per-step "
            f"ratios; quartiles {q1:.3f}-{q3:.3f})"
        )
    same = torch.equal(generate(copies["patched"]), generate(copies["unpatched"]))
    print(f"same greedy tokens: {same}")

if __name__ == "__main__":
    main()
