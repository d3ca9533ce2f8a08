"""``ropekit inspect``: what a RoPE configuration does, pair by pair.

For each rotated pair ``i``: the inverse frequency ``theta_i``, its wavelength
``2π / theta_i`` in tokens, and how many full turns it makes within the context ``L``
(``L / wavelength``). Pairs whose wavelength exceeds ``L`` never complete a turn in
training: their angles at longer positions were never seen, which is what the scaling
methods address.

The precision summary compares, at the last position of the context, tables built the
common way (float32 angle ``pos * inv_freq``, then cos) and ropekit's (float64 angle,
float64 trig, one rounding) against float64 math.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch

from ..config import RopeConfig
from ..errors import RopeValueError
from ..presets import PRESETS, preset
from ..tables.cos_sin import cos_sin

__all__ = ["PairRow", "pair_rows", "register", "run", "table_error"]

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
        wavelength = 2 * math.pi / f
        rows.append(PairRow(i, f, wavelength, context / wavelength))
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


def _config_from_args(args: argparse.Namespace) -> RopeConfig:
    if args.preset is not None:
        if args.head_dim is not None:
            raise RopeValueError("--preset and --head-dim are exclusive: give one of them")
        return preset(args.preset)
    if args.head_dim is None:
        raise RopeValueError("no configuration given: expected --preset NAME or --head-dim D")
    return RopeConfig(head_dim=args.head_dim, theta=args.theta, rotary_dim=args.rotary_dim)


def _plot(rows: list[PairRow], context: int, title: str, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # optional extra
        raise RopeValueError(
            "--plot needs matplotlib: pip install 'ropekit[plot]'"
        ) from err
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy([r.index for r in rows], [r.wavelength for r in rows], "o-", ms=3, label="wavelength")
    ax.axhline(context, color="tab:red", ls="--", label=f"context L = {context}")
    ax.set_xlabel("pair index i")
    ax.set_ylabel("wavelength 2π/θ_i (tokens)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    context = args.context if args.context is not None else (config.max_position or DEFAULT_CONTEXT)
    if context < 1:
        raise RopeValueError(f"--context={context} is not allowed: expected a positive int")
    freqs = config.inv_freq()
    rows = pair_rows(freqs, context)
    name = args.preset or f"head_dim={config.head_dim}"
    print(
        f"{name}: head_dim={config.head_dim} rotary_dim={config.rotary_dim or config.head_dim} "
        f"theta={config.theta:g} pairs={config.n_pairs} "
        f"layout={'interleaved' if config.interleaved else 'half'} context={context}"
    )
    print(f"{'pair':>4} {'inv_freq':>12} {'wavelength':>13} {'turns in L':>12}")
    for r in rows:
        print(f"{r.index:>4} {r.inv_freq:>12.6e} {r.wavelength:>13.1f} {r.rotations:>12.3f}")
    slow = [r for r in rows if r.rotations < 1]
    print(
        f"\n{len(slow)} of {len(rows)} pairs never complete one turn within {context} tokens"
        + (f" (pairs {slow[0].index}..{slow[-1].index})" if slow else "")
    )
    for position in (context - 1, *args.far):
        e = table_error(freqs, position)
        print(
            f"max cos/sin error at position {position}: fp32 angles {e['fp32_angle']:.2e}, "
            f"ropekit {e['ropekit']:.2e}"
        )
    if args.plot:
        _plot(rows, context, name, args.plot)
        print(f"wrote {args.plot}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="per-pair frequencies, wavelengths and table precision of a RoPE config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("configuration (a preset, or explicit values)")
    src.add_argument("--preset", choices=sorted(PRESETS), help="a named model family")
    src.add_argument("--head-dim", type=int, help="lanes per head d")
    src.add_argument("--theta", type=float, default=10000.0, help="frequency base (default 1e4)")
    src.add_argument("--rotary-dim", type=int, help="rotate only this many leading lanes")
    p.add_argument("--context", type=int, help="context length L (default: the config's, else 4096)")
    p.add_argument(
        "--far",
        type=int,
        nargs="*",
        default=[1_000_000],
        metavar="POS",
        help="further positions for the precision summary (default 1000000)",
    )
    p.add_argument("--plot", metavar="FILE.png", help="write a wavelength-per-pair figure")
    p.set_defaults(func=run)
