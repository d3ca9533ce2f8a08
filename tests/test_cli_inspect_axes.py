"""`ropekit inspect --axes`: the band map, per-axis summary, config files and the figure."""

from __future__ import annotations

import json
import math

import pytest

from ropekit.cli.inspect_axes import band_lanes
from ropekit.cli.main import main


def run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def axis_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 7 and not parts[0].isdigit() and parts[1].isdigit():
            rows[parts[0]] = parts
    return rows


def test_qwen2_vl_band_map_and_axis_ranges(capsys) -> None:
    out = run(capsys, "inspect", "--axes", "qwen2_vl")
    assert "band map: " + "t" * 16 + "h" * 24 + "w" * 24 in out
    rows = axis_rows(out)
    assert [rows[a][1] for a in "thw"] == ["16", "24", "24"]
    assert rows["t"][-1] == "0-15" and rows["h"][-1] == "16-39" and rows["w"][-1] == "40-63"
    # oracle: theta 1e6, head 128: freq_j = 1e6 ** (-2j / 128); h spans bands 16..39
    assert math.isclose(float(rows["h"][3]), 1e6 ** (-32 / 128), rel_tol=1e-4)
    assert math.isclose(float(rows["h"][2]), 1e6 ** (-78 / 128), rel_tol=1e-4)
    assert math.isclose(float(rows["w"][5]), 2 * math.pi * 1e6 ** (126 / 128), rel_tol=1e-3)
    # half-split lanes (j, j + 64)
    assert "    0     t 1.000000e+00        6.283    (0,64)" in out


def test_interleaved_sections_and_ltx_padding(capsys) -> None:
    out = run(capsys, "inspect", "--axes", "qwen3_vl", "ltx_video")
    assert "band map: " + "thw" * 20 + "tttt" in out
    assert "1-58/3" in out and "0-60/3,61-63" in out
    # LTX, dim 2048: 2048 % 6 = 2 lanes of padding = one band of frequency 0 on axis f
    assert "0-1,4-1021/3 (+1 at freq 0)" in out
    assert "band map: ffhw" in out


def test_lanes_of_each_pairing() -> None:
    from ropekit.axes import preset

    assert band_lanes(preset("flux"))[:2] == [(0, 1), (2, 3)]
    assert band_lanes(preset("qwen2_vl"))[:2] == [(0, 64), (1, 65)]
    lanes = band_lanes(preset("gemma4_vision", head_dim=16))  # two half-split blocks of 8 lanes
    assert lanes == [(0, 4), (1, 5), (2, 6), (3, 7), (8, 12), (9, 13), (10, 14), (11, 15)]


def test_hf_config_file_and_plot(capsys, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    cfg = {"model_type": "qwen2_vl", "hidden_size": 64, "num_attention_heads": 2,
           "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]}, "rope_theta": 10000.0}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    fig = tmp_path / "axes.png"
    out = run(capsys, "inspect", "--axes", str(path), "flux", "--plot", str(fig))
    assert "band map: " + "t" * 4 + "h" * 6 + "w" * 6 in out
    assert "band map: " + "i" * 8 + "h" * 28 + "w" * 28 in out  # flux: idx, h, w
    assert fig.exists() and fig.stat().st_size > 1000
    assert f"wrote {fig}" in out


def test_refusals(capsys) -> None:
    assert main(["inspect", "--axes", "no_such_layout"]) != 0
    assert "expected a preset among" in capsys.readouterr().err
    assert main(["inspect", "--axes", "flux", "--head-dim", "64"]) != 0
    assert "exclusive" in capsys.readouterr().err
