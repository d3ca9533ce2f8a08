"""``ropekit-lab bench``: how fast RoPE runs here, relative to copying q and k.

A quick version (5 rounds, no torch.compile'd rows) of ``benchmarks/bench_rope.py``.
Prints medians over interleaved rounds of each implementation's time divided by the
time of ``copy_`` of q and k in the same round (the memory floor), for ropekit's backends
and the installed peers, with the machine's load (a busy machine is named: its figures
are unreliable). The method: :mod:`ropekit_lab.bench.harness`.
"""

from __future__ import annotations

import argparse
import sys

from ropekit.cli.common import help_text

__all__ = ["SHAPES", "register", "run"]

#: The shapes of :data:`ropekit_lab.bench.cpu.CASES` (a test checks they agree), here so
#: that building the parser does not import torch.
SHAPES = ("decode", "prefill", "training")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time RoPE against copy_ and other implementations (quick)",
        description=help_text(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--shapes", nargs="+", choices=SHAPES, help="only these shapes (default: all)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="include torch.compile'd rows (seconds of compilation per dtype and shape)",
    )
    parser.add_argument(
        "--first-call", action="store_true", help="also time a fresh process's first call"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported after parsing: torch takes seconds to import and --help needs none of it.
    from ropekit.errors import RopeValueError

    from ..bench.cpu import run_benchmark

    if args.rounds < 1:
        raise RopeValueError(f"--rounds={args.rounds} is not allowed: expected an int >= 1")
    report = run_benchmark(
        rounds=args.rounds,
        with_compile=args.compile,
        first_call=args.first_call,
        shapes=tuple(args.shapes) if args.shapes else None,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(report)
    return 0
