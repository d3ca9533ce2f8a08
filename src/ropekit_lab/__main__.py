"""``python -m ropekit_lab``: the same command line as the ``ropekit-lab`` script."""

from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
