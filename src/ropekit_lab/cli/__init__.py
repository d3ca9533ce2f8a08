"""The ``ropekit-lab`` command line: ``train``, ``extrapolate``, ``bench``.

Each subcommand module only builds its parser at import time; torch and ropekit are
imported inside ``run`` (after parsing), so ``--help`` answers without importing torch.
"""
