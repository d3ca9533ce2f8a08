"""``ropekit`` entry point: one argparse parser, one module per subcommand.

Each subcommand module defines ``register(subparsers)``, which adds its parser and sets
``func`` (taking the parsed ``argparse.Namespace`` and returning an exit code).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import RopeValueError
from . import bench, extrapolate, inspect, train

SUBCOMMANDS = (inspect, extrapolate, train, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ropekit", description="Exact, fast, verified Rotary Position Embedding."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RopeValueError as err:
        print(f"ropekit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
