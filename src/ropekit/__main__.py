"""``python -m ropekit``: the same command line as the ``ropekit`` script."""

from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
