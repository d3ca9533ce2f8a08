"""Full RoPE benchmark: ropekit's backends vs copy_/clone and the installed peers.

Usage (from the repository root, with the project's environment)::

    .venv/bin/python benchmarks/bench_rope.py              # ~5 minutes on 2 cores
    .venv/bin/python benchmarks/bench_rope.py --rounds 9 --shapes decode

It runs the lab's CPU benchmark, :mod:`ropekit_lab.bench.cpu` (which ``ropekit-lab
bench`` runs with fewer rounds and without the compiled rows), with 21 interleaved
rounds, the ``torch.compile`` rows and the fresh-process first-call timings, and prints a
markdown report: medians over rounds of each implementation's time divided by the time
of ``copy_`` of q and k in the same round. The method is
:mod:`ropekit_lab.bench.harness`'s, the peers :data:`ropekit_lab.bench.peers.PEERS`
(shared with ``bench_triton.py``); docs/performance.md has results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without installing: the packages are in src/ next to this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ropekit_lab.cli.bench import SHAPES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--shapes", nargs="+", choices=SHAPES)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile'd rows")
    parser.add_argument("--no-first-call", action="store_true", help="skip fresh-process timings")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's allocator defaults (fresh outputs >= 32 MiB are page-faulted)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ropekit_lab.bench.cpu import run_benchmark  # imports torch: after parsing

    report = run_benchmark(
        rounds=args.rounds,
        with_compile=not args.no_compile,
        first_call=not args.no_first_call,
        shapes=tuple(args.shapes) if args.shapes else None,
        heap=not args.default_malloc,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
