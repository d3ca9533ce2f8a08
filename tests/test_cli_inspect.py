"""`ropekit inspect`: the per-pair table, the summary, the plot and errors."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from ropekit.cli.main import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_table_rows_are_the_paper_spectrum(capsys) -> None:
    code, out, _ = run(capsys, "inspect", "--head-dim", "8", "--theta", "10000", "--context", "100")
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    for i, r in enumerate(rows):
        f = 10000.0 ** (-2 * i / 8)
        assert math.isclose(float(r[1]), f, rel_tol=1e-6)
        # printed with 1 and 3 decimals
        assert abs(float(r[2]) - 2 * math.pi / f) <= 0.05
        assert abs(float(r[3]) - 100 * f / (2 * math.pi)) <= 5e-4
    # wavelengths 6.3, 62.8, 628, 6283 tokens: two of them exceed 100
    assert "2 of 4 pairs never complete one turn within 100 tokens (pairs 2..3)" in out


def test_preset_summary_reports_precision(capsys) -> None:
    code, out, _ = run(capsys, "inspect", "--preset", "llama-2-7b")
    assert code == 0
    assert "theta=10000 pairs=64" in out and "context=4096" in out
    line = next(s for s in out.splitlines() if "position 1000000" in s)
    fp32 = float(line.split("fp32 angles ")[1].split(",")[0])
    ours = float(line.split("ropekit ")[1])
    assert fp32 > 1e-2 and ours < 1e-7


def test_plot_writes_png(tmp_path, capsys) -> None:
    path = tmp_path / "w.png"
    code, _out, _ = run(capsys, "inspect", "--head-dim", "64", "--plot", str(path))
    assert code == 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["inspect"], "expected --preset NAME or --head-dim D"),
        (["inspect", "--head-dim", "8", "--rotary-dim", "3"], "rotary_dim=3"),
        (["inspect", "--head-dim", "0"], "head_dim=0"),
        (["inspect", "--head-dim", "8", "--theta", "-1"], "theta=-1.0"),
        (["inspect", "--head-dim", "8", "--context", "0"], "--context=0"),
    ],
)
def test_bad_arguments_exit_2_with_message(capsys, argv, needle) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and needle in err


def test_console_script_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ropekit.cli.main", "inspect", "--head-dim", "4"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pairs=2" in out.stdout
