"""What ``ropekit inspect`` computes and prints: the per-pair table of a RoPE
configuration, the scaling summary, the table precision and the optional figure.

The parser lives in :mod:`ropekit.cli.inspect` (no torch import, for a fast ``--help``);
this module is imported once the arguments are parsed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass

import torch

from ..config import RopeConfig
from ..errors import RopeValueError
from ..frequencies.scaling import Plain, Scaling
from ..hf.config import from_hf
from ..presets import preset
from ..tables.cos_sin import cos_sin
from .common import MATPLOTLIB_HINT, require_matplotlib

__all__ = [
    "PairRow",
    "ScaleRow",
    "describe_scaling",
    "pair_rows",
    "plot_title",
    "run",
    "scale_rows",
    "table_error",
]

DEFAULT_CONTEXT = 4096


@dataclass(frozen=True)
class PairRow:
    index: int
    inv_freq: float
    wavelength: float
    rotations: float


def pair_rows(inv_freq: torch.Tensor, context: int) -> list[PairRow]:
    """One row per pair: ``wavelength = 2π / inv_freq``, ``rotations = context / wavelength``."""
    rows = []
    for i, f in enumerate(inv_freq.tolist()):
        # A zero frequency (proportional RoPE's pass-through pairs) never turns.
        wavelength = 2 * math.pi / f if f > 0 else math.inf
        rows.append(PairRow(i, f, wavelength, context / wavelength))
    return rows


@dataclass(frozen=True)
class ScaleRow:
    """What a scaling method did to one pair."""

    original_wavelength: float
    stretch: float  # scaled / original wavelength (inf for a pair that stops rotating)
    ramp: float | None  # interpolation weight of blending methods, else None


def scale_rows(config: RopeConfig, seq_len: int | None) -> list[ScaleRow]:
    """Per pair: the unscaled wavelength, the stretch and (if defined) the ramp."""
    base = Plain().frequencies(config.head_dim, config.theta, config.rotary_dim, None)[0]
    scaled = config.inv_freq(seq_len)
    ramp = config.scaling.ramp(config.head_dim, config.theta, config.rotary_dim)
    rows = []
    for i, (f0, f) in enumerate(zip(base.tolist(), scaled.tolist(), strict=True)):
        stretch = f0 / f if f > 0 else math.inf
        rows.append(ScaleRow(2 * math.pi / f0, stretch, None if ramp is None else float(ramp[i])))
    return rows


def table_error(inv_freq: torch.Tensor, position: int) -> dict[str, float]:
    """Max ``|cos - cos_exact|`` and ``|sin - sin_exact|`` over pairs at ``position``.

    ``fp32_angle`` is the common recipe (``outer(pos.float(), inv_freq.float()).cos()``),
    ``ropekit`` is :func:`ropekit.cos_sin` with float32 output. "Exact" is float64 math
    on the float64 frequencies (its own error, ~1e-16 relative, is far below both).
    """
    pos = torch.tensor([position], dtype=torch.int64)
    f64 = inv_freq.to(torch.float64)
    angle = pos.to(torch.float64)[:, None] * f64
    exact_c, exact_s = angle.cos(), angle.sin()
    naive = pos.to(torch.float32)[:, None] * f64.to(torch.float32)
    ours_c, ours_s = cos_sin(f64, pos, dtype=torch.float32)

    def err(c: torch.Tensor, s: torch.Tensor) -> float:
        c, s = c.to(torch.float64), s.to(torch.float64)
        return max(float((c - exact_c).abs().max()), float((s - exact_s).abs().max()))

    return {"fp32_angle": err(naive.cos(), naive.sin()), "ropekit": err(ours_c, ours_s)}


def _read_hf_config(args: argparse.Namespace) -> RopeConfig:
    try:
        with open(args.hf_config, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise RopeValueError(
            f"--hf-config={args.hf_config!r} is not readable JSON: {err}"
        ) from None
    if not isinstance(data, dict):
        raise RopeValueError(
            f"--hf-config={args.hf_config!r} is not allowed: expected a JSON object"
        )
    return from_hf(data, layer_type=args.layer_type, allow_unknown=args.allow_unknown)


def _config_from_args(args: argparse.Namespace) -> RopeConfig:
    given = [opt for opt, v in (("--preset", args.preset), ("--hf-config", args.hf_config),
                                ("--head-dim", args.head_dim)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise RopeValueError(f"{' and '.join(given)} are exclusive: give one of them")
    if args.preset is not None:
        return preset(args.preset)
    if args.hf_config is not None:
        return _read_hf_config(args)
    if args.head_dim is None:
        raise RopeValueError(
            "no configuration given: expected --preset NAME or --head-dim D (or --hf-config FILE)"
        )
    return RopeConfig(head_dim=args.head_dim, theta=args.theta, rotary_dim=args.rotary_dim)


def _plot(
    rows: list[PairRow],
    context: int,
    title: str,
    path: str,
    scaled: list[ScaleRow] | None = None,
    original_context: int | None = None,
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # optional extra
        raise RopeValueError(f"--plot needs matplotlib ({err}): {MATPLOTLIB_HINT}") from err
    fig, ax = plt.subplots(figsize=(7, 4))
    idx = [r.index for r in rows]
    finite = [(r.index, r.wavelength) for r in rows if math.isfinite(r.wavelength)]
    label = "scaled wavelength" if scaled is not None else "wavelength"
    ax.semilogy([i for i, _ in finite], [w for _, w in finite], "o-", ms=3, label=label)
    if scaled is not None:
        ax.semilogy(idx, [r.original_wavelength for r in scaled], "--", color="tab:gray",
                    label="original wavelength")  # fmt: skip
    ax.axhline(context, color="tab:red", ls="--", label=f"context L = {context}")
    if original_context is not None and original_context != context:
        ax.axhline(original_context, color="tab:orange", ls=":",
                   label=f"original context = {original_context}")  # fmt: skip
    ax.set_xlabel("pair index i")
    ax.set_ylabel("wavelength 2π/θ_i (tokens)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    if scaled is not None and scaled[0].ramp is not None:
        ramp_ax = ax.twinx()
        ramp_ax.plot(idx, [r.ramp for r in scaled], color="tab:green", lw=1, label="ramp r")
        ramp_ax.set_ylim(-0.05, 1.05)
        ramp_ax.set_ylabel("interpolation ramp r (0 kept, 1 ÷ factor)")
        ramp_ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Print the report for parsed ``ropekit inspect`` arguments (and write ``--plot``)."""
    if args.plot:
        require_matplotlib("--plot")  # before any work, with the same hint as the lab's
    config = _config_from_args(args)
    context = args.context if args.context is not None else (config.max_position or DEFAULT_CONTEXT)
    if context < 1:
        raise RopeValueError(f"--context={context} is not allowed: expected a positive int")
    method = config.scaling
    seq_len = context if method.depends_on_seq_len else None
    freqs, attention = config.frequencies(seq_len)
    rows = pair_rows(freqs, context)
    name = args.preset or args.hf_config  # None for explicit --head-dim values
    print(
        ("" if name is None else f"{name}: ") + f"head_dim={config.head_dim} rotary_dim={config.rotary_dim or config.head_dim} "
        f"theta={config.theta:g} pairs={config.n_pairs} "
        f"layout={'interleaved' if config.interleaved else 'half'} context={context}"
    )
    scaled = None if isinstance(method, Plain) else scale_rows(config, seq_len)
    if scaled is None:
        print(f"{'pair':>4} {'inv_freq':>12} {'wavelength':>13} {'turns in L':>12}")
        for r in rows:
            print(f"{r.index:>4} {r.inv_freq:>12.6e} {r.wavelength:>13.1f} {r.rotations:>12.3f}")
    else:
        at = f", tables for a sequence of {seq_len} tokens" if seq_len is not None else ""
        print(f"scaling: {describe_scaling(method)}{at}")
        print(f"attention factor: {attention:.6g} (cos/sin scaled by it, logits by its square)")
        print(
            f"{'pair':>4} {'inv_freq':>12} {'wavelength':>13} {'turns in L':>12} "
            f"{'orig wavelen':>13} {'stretch':>8} {'ramp':>6}"
        )
        for r, x in zip(rows, scaled, strict=True):
            ramp = "-" if x.ramp is None else f"{x.ramp:.3f}"
            print(
                f"{r.index:>4} {r.inv_freq:>12.6e} {r.wavelength:>13.1f} {r.rotations:>12.3f} "
                f"{x.original_wavelength:>13.1f} {x.stretch:>8.3f} {ramp:>6}"
            )
    slow = [r for r in rows if r.rotations < 1]
    print(
        f"\n{len(slow)} of {len(rows)} pairs never complete one turn within {context} tokens"
        + (f" (pairs {slow[0].index}..{slow[-1].index})" if slow else "")
    )
    if scaled is not None:
        _print_scaling_summary(scaled)
    for position in (context - 1, *args.far):
        e = table_error(freqs, position)
        print(
            f"max cos/sin error at position {position}: fp32 angles {e['fp32_angle']:.2e}, "
            f"ropekit {e['ropekit']:.2e}"
        )
    if args.plot:
        title = plot_title(name, config, attention, context)
        original = getattr(method, "original_max_position_embeddings", None)
        _plot(rows, context, title, args.plot, scaled, original)
        print(f"wrote {args.plot}")
    return 0


def plot_title(name: str | None, config: RopeConfig, attention: float, context: int) -> str:
    """The figure's title: what is plotted, for which configuration (two lines when scaled).

    ``name`` is the preset or config file the values came from (None: explicit values).
    """
    what = f"wavelength 2π/θ_i of each rotated pair vs context L = {context}"
    source = f"{name}: " if name is not None else ""
    line = f"{source}head_dim {config.head_dim}, theta {config.theta:g}"
    method = config.scaling
    if isinstance(method, Plain):
        return f"{what}\n{line}, no scaling"
    factor = getattr(method, "factor", None)
    scale = f" (factor {factor:g})" if isinstance(factor, (int, float)) else ""
    return (
        f"{what}\n{line}, {method.name} scaling{scale}, "
        f"attention factor {attention:.4g} (scales cos/sin)"
    )


def describe_scaling(method: Scaling) -> str:
    """``name(key=value, ...)`` with long factor lists summarised."""
    parts = []
    for f in dataclasses.fields(method):
        value = getattr(method, f.name)
        if isinstance(value, tuple):
            value = f"[{len(value)} values {min(value):g}..{max(value):g}]"
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{f.name}={value}")
    return f"{method.name}({', '.join(parts)})"


def _print_scaling_summary(scaled: list[ScaleRow]) -> None:
    stretches = [x.stretch for x in scaled]
    print(f"stretch of the wavelengths: {min(stretches):.4g} .. {max(stretches):.4g}")
    frozen = [i for i, x in enumerate(scaled) if math.isinf(x.stretch)]
    if frozen:
        print(f"{len(frozen)} pairs do not rotate (pairs {frozen[0]}..{frozen[-1]})")
    if scaled[0].ramp is None:
        return
    kept = [i for i, x in enumerate(scaled) if x.ramp == 0.0]
    full = [i for i, x in enumerate(scaled) if x.ramp == 1.0]
    blend = len(scaled) - len(kept) - len(full)

    def span(ix: list[int]) -> str:
        return f" (pairs {ix[0]}..{ix[-1]})" if ix else ""

    print(
        f"ramp: {len(kept)} pairs kept{span(kept)}, {len(full)} fully interpolated"
        f"{span(full)}, {blend} blended"
    )
