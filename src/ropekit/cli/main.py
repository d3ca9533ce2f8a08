"""``ropekit`` entry point: one argparse parser, one module per subcommand.

Each subcommand module defines ``register(subparsers)``, which adds its parser and sets
``func`` (taking the parsed ``argparse.Namespace`` and returning an exit code). Parsers
are built without importing torch, so ``ropekit --help`` is fast; the work (and torch)
is imported by ``func``.

The library's command line has the library's own tool, ``inspect``. The demo model, its
trainer, the length-extrapolation experiment and the benchmarks are the lab's:
``ropekit-lab train|extrapolate|bench`` (package ``ropekit_lab``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import inspect

SUBCOMMANDS = (inspect,)
#: Former subcommands, now in the lab: named in the error instead of "invalid choice".
MOVED_TO_LAB = ("bench", "extrapolate", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ropekit",
        description="Exact, fast, verified Rotary Position Embedding.",
        epilog="The demo model, trainer, length-extrapolation experiment and benchmarks are "
        "in the lab: ropekit-lab train | extrapolate | bench (or python -m ropekit_lab).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in MOVED_TO_LAB:
        print(
            f"ropekit: error: '{argv[0]}' moved to the lab: run "
            f"ropekit-lab {argv[0]} (or python -m ropekit_lab {argv[0]})",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(argv)
    # After parsing: importing ropekit.errors imports torch.
    from ..errors import RopeValueError

    try:
        return int(args.func(args) or 0)
    except RopeValueError as err:
        print(f"ropekit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
