"""``ropekit inspect``: what a RoPE configuration does, pair by pair.

For each rotated pair ``i``: the inverse frequency ``theta_i``, its wavelength
``2π / theta_i`` in tokens, and how many full turns it makes within the context ``L``
(``L / wavelength``). Pairs whose wavelength exceeds ``L`` never complete a turn in
training: their angles at longer positions were never seen, which is what the scaling
methods address.

For a scaled configuration (``--preset`` of a scaled family, or ``--hf-config`` of one)
the table shows the scaled frequencies, and next to them the original wavelength, the
stretch (scaled / original wavelength) and, for blending methods (linear, YaRN, llama3),
the interpolation ramp ``r`` (0: pair kept, 1: pair divided by the factor). Methods whose
tables depend on the length (dynamic NTK, LongRoPE) are shown for a sequence of ``L``
tokens. The attention factor is printed with the header.

The precision summary compares, at the last position of the context, tables built the
common way (float32 angle ``pos * inv_freq``, then cos) and ropekit's (float64 angle,
float64 trig, one rounding) against float64 math.
"""

from __future__ import annotations

import argparse

from .common import help_text

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` parser. Imports nothing heavy (no torch): ``--help`` stays fast,
    so preset names are checked after parsing (:func:`ropekit.preset` lists them)."""
    p = sub.add_parser(
        "inspect",
        help="per-pair frequencies, wavelengths and table precision of a RoPE config",
        description=help_text(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("configuration (a preset, or explicit values)")
    src.add_argument(
        "--preset",
        metavar="NAME",
        help="a named model family, e.g. llama-3.1-8b (an unknown name lists them all)",
    )
    src.add_argument("--head-dim", type=int, help="lanes per head d")
    src.add_argument("--theta", type=float, default=10000.0, help="frequency base (default 1e4)")
    src.add_argument("--rotary-dim", type=int, help="rotate only this many leading lanes")
    src.add_argument(
        "--hf-config",
        metavar="CONFIG.json",
        help="a Hugging Face config.json (transformers 4.x or 5.x keys)",
    )
    src.add_argument(
        "--layer-type",
        help="with --hf-config: which layer type's RoPE (e.g. full_attention, sliding_attention)",
    )
    src.add_argument(
        "--allow-unknown",
        action="store_true",
        help="with --hf-config: ignore the RoPE keys known not to affect RoPE",
    )
    src.add_argument(
        "--axes",
        nargs="+",
        metavar="NAME|CONFIG.json",
        help="N-axis layouts instead: ropekit.axes presets (flux, qwen2_vl, ...) or a Qwen-VL "
        "config.json; band -> axis map, per-axis bands and wavelengths",
    )
    src.add_argument("--axes-part", choices=("text", "vision"),
                     help="with --axes CONFIG.json: the text M-RoPE (default) or the vision RoPE")  # fmt: skip
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


def run(args: argparse.Namespace) -> int:
    # Imported after parsing: the report needs torch (seconds to import), --help does not.
    if getattr(args, "axes", None):
        from . import inspect_axes  # N-axis layouts

        return inspect_axes.run(args)
    from . import pairs

    return pairs.run(args)
