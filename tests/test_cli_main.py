"""``python -m ropekit`` runs the same command line as the ``ropekit`` script."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_ropekit() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ropekit", "inspect", "--head-dim", "8"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "head_dim" in done.stdout or "8" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "ropekit", "no-such-command"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
