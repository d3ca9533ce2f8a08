"""What a newcomer meets first: fast and readable ``--help``, the moved lab commands,
one install hint for matplotlib given before any work, and a missing C compiler
reported once."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ropekit.cli import common
from ropekit.cli.main import main as ropekit_main
from ropekit_lab.cli.main import main as lab_main

SRC = str(Path(__file__).resolve().parent.parent / "src")

# Runs a command line's main() with --help and reports whether torch got imported.
HELP_PROBE = textwrap.dedent(
    """
    import contextlib, io, sys
    module, argv = sys.argv[1], sys.argv[2:]
    main = __import__(module, fromlist=["main"]).main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as stop:
            assert stop.code == 0, stop.code
    print("TORCH" if "torch" in sys.modules else "NO-TORCH")
    print(out.getvalue())
    """
)


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": SRC + (os.pathsep + path if path else "")}


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("ropekit.cli.main", ["--help"]),
        ("ropekit.cli.main", ["inspect", "--help"]),
        ("ropekit_lab.cli.main", ["--help"]),
        ("ropekit_lab.cli.main", ["train", "--help"]),
        ("ropekit_lab.cli.main", ["extrapolate", "--help"]),
        ("ropekit_lab.cli.main", ["bench", "--help"]),
    ],
)
def test_help_is_fast_and_plain_text(module: str, argv: list[str]) -> None:
    """--help imports no torch (the seconds a first --help used to take) and shows no reST
    markup (double backticks, :mod: roles, ``::`` blocks)."""
    done = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, module, *argv],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    flag, _, text = done.stdout.partition("\n")
    assert flag == "NO-TORCH"
    assert "usage:" in text
    for markup in ("``", ":mod:", ":class:", ":func:", "::\n"):
        assert markup not in text, (markup, text)


def test_help_text_strips_rest() -> None:
    doc = "Run ``ropekit-lab train`` (:mod:`ropekit_lab.model`, :class:`~a.b.Transformer`)::\n"
    assert common.help_text(doc) == "Run ropekit-lab train (ropekit_lab.model, Transformer):"


@pytest.mark.parametrize("command", ["train", "extrapolate", "bench"])
def test_lab_commands_moved_out_of_ropekit(capsys, command: str) -> None:
    assert ropekit_main([command, "--help"]) == 2
    assert f"'{command}' moved to the lab: run ropekit-lab {command}" in capsys.readouterr().err


def test_python_dash_m_ropekit_lab() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ropekit_lab", "--help"],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert done.returncode == 0 and "train" in done.stdout and "extrapolate" in done.stdout


def test_inspect_head_dim_has_no_duplicated_prefix(capsys) -> None:
    assert ropekit_main(["inspect", "--head-dim", "96"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("head_dim=96 rotary_dim=96") and first.count("head_dim=96") == 1
    assert ropekit_main(["inspect", "--preset", "llama-2-7b"]) == 0
    assert capsys.readouterr().out.startswith("llama-2-7b: head_dim=128")


def test_plot_titles_say_what_is_plotted() -> None:
    from ropekit import RopeConfig, preset
    from ropekit.cli.pairs import plot_title

    title = plot_title("llama-3.1-8b", preset("llama-3.1-8b"), 1.0, 8192)
    assert title.startswith("wavelength 2π/θ_i of each rotated pair vs context L = 8192\n")
    assert "llama3 scaling (factor 8), attention factor 1 (scales cos/sin)" in title
    plain = plot_title(None, RopeConfig(head_dim=64), 1.0, 4096)
    assert plain.endswith("head_dim 64, theta 10000, no scaling")


def _no_matplotlib(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a)
    )


def test_missing_matplotlib_is_reported_before_any_work(monkeypatch, capsys, tmp_path) -> None:
    """Both commands that draw give the same hint, and the experiment does not start."""
    _no_matplotlib(monkeypatch)
    import ropekit_lab.extrapolate as experiment

    def must_not_run(*args, **kwargs):
        raise AssertionError("the experiment ran although its figure cannot be written")

    monkeypatch.setattr(experiment, "run_experiment", must_not_run)
    assert lab_main(["extrapolate", "--quick", "--out", str(tmp_path), "--no-progress"]) == 2
    lab_err = capsys.readouterr().err
    assert ropekit_main(["inspect", "--head-dim", "8", "--plot", str(tmp_path / "w.png")]) == 2
    inspect_err = capsys.readouterr().err
    for err in (lab_err, inspect_err):
        assert "needs matplotlib, which is not installed: " + common.MATPLOTLIB_HINT in err
    assert not list(tmp_path.iterdir())


PROBE = """
    import warnings, torch, ropekit
    from ropekit.apply import cpu
    x = torch.randn(2, 3, 8)
    c, s = ropekit.cos_sin(ropekit.inv_freq(8), torch.arange(3))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            ropekit.apply_rope(x, c, s)
            ropekit.apply_rope_qk(x, x, c, s)
    fallbacks = [w for w in seen if "falls back to the torch backend" in str(w.message)]
    print(len(fallbacks), fallbacks[0].category.__name__ if fallbacks else "-")
    print(cpu.cpu_kernel_status())
"""


@pytest.mark.slow
def test_missing_compiler_reported_once(tmp_path) -> None:
    """No compiler, no cache: the status names the failure once (not once per flag set),
    and backend='auto' says once per process that it uses the torch backend."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE)],
        env={**_env(), "CC": "/nonexistent/cc", "ROPEKIT_CACHE_DIR": str(tmp_path / "empty")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    count, status = done.stdout.splitlines()[:2]
    assert count == "1 RuntimeWarning"
    assert "the same failure for all 4 flag sets" in status
    assert status.count("No such file or directory") == 1 and len(status) < 600
    # with a compiler (the default environment), no warning
    ok = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE)], env=_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == "0 -"
