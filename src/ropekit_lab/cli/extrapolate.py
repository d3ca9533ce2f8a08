"""``ropekit-lab extrapolate``: train a small byte-level model at a short context ``L`` and
measure validation loss at ``L, 2L, 4L, 8L`` for plain RoPE and every scaling method
(PI, NTK-aware, dynamic NTK, YaRN, Llama 3), then again after a short fine-tune at ``2L``
for PI and YaRN (and plain RoPE as a control).

Writes ``extrapolation.json`` (every number) and ``extrapolation.png`` (loss vs length,
loss vs position) into ``--out`` and prints the table. The default corpus is the running
Python's standard library source; ``--data`` takes any text file or folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ropekit.cli.common import help_text, require_matplotlib

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extrapolate",
        help="train a tiny model at length L, compare scaling methods at L..8L",
        description=help_text(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="out/extrapolate", help="folder for the JSON and PNG")
    p.add_argument("--data", help="text file or folder (default: the Python stdlib sources)")
    p.add_argument("--quick", action="store_true", help="a small run (under a minute)")
    p.add_argument("--seq-len", type=int, help="training context L")
    p.add_argument("--steps", type=int, help="training steps at L")
    p.add_argument("--batch-size", type=int, help="sequences per training step")
    p.add_argument("--finetune-steps", type=int, help="steps of fine-tuning at 2L (0: none)")
    p.add_argument("--factor", type=float, help="scale factor s of the static methods (default 8)")
    p.add_argument("--eval-windows", type=int, help="validation windows of 8L bytes")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


_OVERRIDES = {
    "seq_len": "seq_len",
    "steps": "train_steps",
    "batch_size": "batch_size",
    "finetune_steps": "finetune_steps",
    "factor": "factor",
    "eval_windows": "eval_windows",
    "seed": "seed",
}


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    # The figure is written at the end: say now, not after minutes of training, that it
    # cannot be (the same hint as ``ropekit inspect --plot``).
    require_matplotlib("ropekit-lab extrapolate (it writes extrapolation.png)")
    # Imported after parsing: torch takes seconds to import and --help needs none of it.
    from ..data import load_corpus
    from ..extrapolate import ExperimentConfig, format_table, run_experiment, save_report

    overrides: dict[str, Any] = {
        field: getattr(args, arg)
        for arg, field in _OVERRIDES.items()
        if getattr(args, arg) is not None
    }
    config = ExperimentConfig.quick(**overrides) if args.quick else ExperimentConfig(**overrides)
    corpus = load_corpus(args.data)
    report = run_experiment(config, corpus, device=args.device, progress=not args.no_progress)
    json_path, png_path = save_report(report, args.out)
    print()
    print(format_table(report))
    print(f"\nwrote {json_path} and {png_path} ({time.perf_counter() - t0:.1f} s in total)")
    sys.stdout.flush()
    return 0
