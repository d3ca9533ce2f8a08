"""``ropekit inspect --axes``: what an N-axis RoPE layout does, band by band.

Notation: ``A`` position axes, ``n`` bands (rotated pairs), ``j`` a band, ``d`` head dim.

For a preset of :data:`ropekit.axes.PRESETS` (``--axes flux``) or a Qwen-VL
``config.json`` (``--axes config.json --axes-part text|vision``, read by
:func:`ropekit.hf.axes_from_hf`): the pairing, per axis its band count, band indices,
frequency and wavelength range (``2π / freq`` in units of that axis's coordinate; a band of
frequency 0, LTX's padding, never turns), then the band table (axis, frequency,
wavelength, the two lanes it rotates). ``--plot`` draws, per layout, the band → axis map
and the wavelength of every band on a log scale, coloured by axis.
"""

from __future__ import annotations

import argparse
import json
import math
import os

from ..axes.config import AxesConfig
from ..axes.presets import PRESETS, preset
from ..errors import RopeValueError

__all__ = ["axis_summary", "band_lanes", "load", "run"]


def load(spec: str, part: str = "text") -> AxesConfig:
    """An :class:`AxesConfig` from a preset name or a Hugging Face ``config.json`` path."""
    if spec in PRESETS:
        return preset(spec)
    if spec.endswith(".json") or os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise RopeValueError(f"--axes={spec!r} is not readable JSON: {err}") from None
        from ..hf.axes import axes_from_hf  # only for config files: keeps --help light

        return axes_from_hf(data, part=part)
    raise RopeValueError(
        f"--axes={spec!r} is not allowed: expected a preset among {sorted(PRESETS)} or a "
        "config.json path"
    )


def _names(cfg: AxesConfig) -> tuple[str, ...]:
    return cfg.names if cfg.names is not None else tuple(str(a) for a in range(cfg.n_axes))


def band_lanes(cfg: AxesConfig) -> list[tuple[int, int]]:
    """The two lanes band ``j`` rotates, for each ``j < n``."""
    n = cfg.n_pairs
    if cfg.pairing == "interleaved":
        return [(2 * j, 2 * j + 1) for j in range(n)]
    if cfg.pairing == "half":
        return [(j, j + n) for j in range(n)]
    out, start = [], 0
    for count in cfg.block_pairs or ():  # each block half-split on its own lanes
        out += [(2 * start + i, 2 * start + i + count) for i in range(count)]
        start += count
    return out


def _runs(indices: tuple[int, ...]) -> str:
    """Band indices as arithmetic runs: ``0-15`` (consecutive), ``2-1022/3`` (every third
    from 2 to 1022: Qwen3-VL, LTX interleave axes), single values as they are."""
    parts: list[str] = []
    i = 0
    while i < len(indices):
        j = i + 1
        if j < len(indices):
            step = indices[j] - indices[i]
            while j + 1 < len(indices) and indices[j + 1] - indices[j] == step:
                j += 1
            if j - i >= 2 or step == 1:  # three or more in a run (two if consecutive)
                tail = "" if step == 1 else f"/{step}"
                parts.append(f"{indices[i]}-{indices[j]}{tail}")
                i = j + 1
                continue
        parts.append(str(indices[i]))
        i += 1
    return ",".join(parts) or "-"


def _wavelength(f: float) -> float:
    return math.inf if f == 0 else 2 * math.pi / abs(f)


def axis_summary(cfg: AxesConfig) -> list[dict[str, object]]:
    """Per axis: name, band indices, count, frequency and wavelength min/max (zero
    frequencies excluded from the ranges, counted in ``still``)."""
    rows = []
    for a, name in enumerate(_names(cfg)):
        bands = cfg.bands(a)
        freqs = [abs(cfg.freq[j]) for j in bands if cfg.freq[j] != 0]
        rows.append({
            "axis": name, "bands": bands, "count": len(bands), "still": len(bands) - len(freqs),
            "freq_min": min(freqs, default=math.nan), "freq_max": max(freqs, default=math.nan),
            "wavelength_min": _wavelength(max(freqs)) if freqs else math.nan,
            "wavelength_max": _wavelength(min(freqs)) if freqs else math.nan,
        })  # fmt: skip
    return rows


def _print(label: str, cfg: AxesConfig) -> None:
    names = _names(cfg)
    blocks = f" block_pairs={list(cfg.block_pairs)}" if cfg.block_pairs else ""
    print(
        f"{label}: axes={len(names)} ({', '.join(names)}) bands={cfg.n_pairs} head_dim={cfg.lanes} "
        f"pairing={cfg.pairing}{blocks} attention_factor={cfg.attention_factor:g}"
    )
    print(f"{'axis':>5} {'bands':>5} {'freq min':>11} {'freq max':>11} {'wavelen min':>12} "
          f"{'wavelen max':>12}  band indices")  # fmt: skip
    for r in axis_summary(cfg):
        still = f" (+{r['still']} at freq 0)" if r["still"] else ""
        print(f"{r['axis']:>5} {r['count']:>5} {r['freq_min']:>11.4e} {r['freq_max']:>11.4e} "
              f"{r['wavelength_min']:>12.4g} {r['wavelength_max']:>12.4g}  "
              f"{_runs(r['bands'])}{still}")  # fmt: skip
    print("band map: " + "".join(names[a][0] for a in cfg.axis))
    print(f"{'band':>5} {'axis':>5} {'freq':>12} {'wavelength':>12} {'lanes':>9}")
    for j, ((lo, hi), a, f) in enumerate(zip(band_lanes(cfg), cfg.axis, cfg.freq, strict=True)):
        print(f"{j:>5} {names[a]:>5} {f:>12.6e} {_wavelength(f):>12.4g} {f'({lo},{hi})':>9}")


def _plot(layouts: list[tuple[str, AxesConfig]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise RopeValueError("--plot needs matplotlib: pip install 'ropekit[plot]'") from None
    fig, grid = plt.subplots(len(layouts), 2, figsize=(10, 1.9 * len(layouts) + 0.6),
                             squeeze=False, gridspec_kw={"width_ratios": [1, 1.3]})  # fmt: skip
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, cfg), (left, right) in zip(layouts, grid, strict=True):
        names = _names(cfg)
        for a, name in enumerate(names):
            js = list(cfg.bands(a))
            col = colors[a % len(colors)]
            left.scatter(js, [a] * len(js), s=9, marker="s", color=col)
            waves = [_wavelength(cfg.freq[j]) for j in js]
            finite = [(j, w) for j, w in zip(js, waves, strict=True) if math.isfinite(w)]
            if finite:
                right.scatter(*zip(*finite, strict=True), s=9, color=col, label=name)
        left.set_yticks(range(len(names)), names)
        left.set_xlim(-1, cfg.n_pairs)
        left.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        right.set_yscale("log")
        right.set_xlim(-1, cfg.n_pairs)
        right.legend(fontsize=7, loc="best", ncol=len(names), frameon=False)
        right.grid(True, which="major", lw=0.3)
    grid[0][0].set_title("band → axis", fontsize=10)
    grid[0][1].set_title("wavelength 2π/freq per band (axis units, log)", fontsize=10)
    grid[-1][0].set_xlabel("band index j")
    grid[-1][1].set_xlabel("band index j")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """``ropekit inspect --axes SPEC [SPEC ...] [--axes-part text|vision] [--plot FILE]``."""
    others = [opt for opt, v in (("--preset", args.preset), ("--head-dim", args.head_dim),
                                 ("--hf-config", args.hf_config)) if v is not None]  # fmt: skip
    if others:
        raise RopeValueError(
            f"--axes and {' and '.join(others)} are exclusive: --axes takes N-axis presets or "
            "a Qwen-VL config.json"
        )
    part = getattr(args, "axes_part", None) or "text"
    layouts = [(spec if spec in PRESETS else f"{os.path.basename(spec)} ({part})", load(spec, part))
               for spec in args.axes]  # fmt: skip
    for i, (label, cfg) in enumerate(layouts):
        if i:
            print()
        _print(label, cfg)
    if args.plot:
        _plot(layouts, args.plot)
        print(f"wrote {args.plot}")
    return 0
