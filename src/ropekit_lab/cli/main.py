"""``ropekit-lab`` entry point: ``train``, ``extrapolate``, ``bench``.

One argparse parser, one module per subcommand; each defines ``register(subparsers)``,
which adds its parser and sets ``func`` (taking the parsed ``argparse.Namespace`` and
returning an exit code). Building the parsers imports neither torch nor the library's
heavy parts, so ``--help`` is fast; ``func`` imports what the work needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import bench, extrapolate, train

SUBCOMMANDS = (train, extrapolate, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ropekit-lab",
        description="ropekit's lab: a small Llama-style byte model on ropekit, its trainer, "
        "the length-extrapolation experiment and the benchmarks.",
        epilog="The library's own tool is `ropekit inspect`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # After parsing: importing ropekit.errors imports torch.
    from ropekit.errors import RopeValueError

    try:
        return int(args.func(args) or 0)
    except RopeValueError as err:
        print(f"ropekit-lab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
