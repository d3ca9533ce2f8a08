"""The ``ropekit`` command line."""
