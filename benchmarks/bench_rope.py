"""Full RoPE benchmark: ropekit's backends vs copy_/clone and the installed peers.

Usage (from the repository root, with the project's environment)::

    .venv/bin/python benchmarks/bench_rope.py              # ~5 minutes on 2 cores
    .venv/bin/python benchmarks/bench_rope.py --rounds 9 --shapes decode

It runs :mod:`ropekit.cli.bench` (which ``ropekit bench`` runs with fewer rounds and
without the compiled rows) with 21 interleaved rounds, the ``torch.compile`` rows and the
fresh-process first-call timings, and prints a markdown report: medians over rounds of
each implementation's time divided by the time of ``copy_`` of q and k in the same round.
See that module's docstring for the method, and docs/performance.md for results.
"""

from __future__ import annotations

import argparse
import sys

from ropekit.cli.bench import CASES, run_benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--shapes", nargs="+", choices=sorted({c.shape for c in CASES}))
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile'd rows")
    parser.add_argument("--no-first-call", action="store_true", help="skip fresh-process timings")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's allocator defaults (fresh outputs >= 32 MiB are page-faulted)",
    )
    args = parser.parse_args(argv)
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
