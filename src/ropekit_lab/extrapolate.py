"""Length extrapolation, measured: train at ``L``, evaluate at ``L, 2L, 4L, 8L`` per method.

The protocol (after the comparisons in the YaRN paper, at toy scale):

1. Train a :class:`~ropekit_lab.model.Transformer` with plain RoPE on windows of ``L`` bytes.
2. Without any further training, swap in each scaling method (the weights are shared,
   only the rotary tables change) and measure validation loss at every length.
3. Optionally (``finetune_steps > 0``) fine-tune copies of the model at ``2L`` with PI and
   with YaRN for a few steps, plus plain RoPE as a control (same steps, same data), and
   measure again.

Every length is evaluated on the *same* validation bytes: ``n`` windows of ``8L + 1``
bytes at evenly spaced offsets of the validation stream; at length ``T`` each window is
cut into ``8L / T`` independent sequences. So the lengths differ only in how much
context each prediction gets, never in what is predicted. Loss is the mean next-byte
cross-entropy in nats (perplexity ``exp(loss)``, bits per byte ``loss / ln 2``).

Method settings (all anchored at the training context ``L``; ``s = factor``, default the
longest evaluation multiple, 8):

* ``rope``: plain RoPE, unchanged.
* ``pi``: position interpolation, ``θ_i / s``.
* ``ntk``: NTK-aware, base ``theta * s ** (d / (d - 2))``.
* ``dynamic``: dynamic NTK with the YaRN paper's rule ``s = max(1, T / L)`` for a
  sequence of ``T`` tokens (ropekit's ``dynamic`` with ``factor = 1``).
* ``yarn``: YaRN with ``beta_fast = 32``, ``beta_slow = 1`` and its attention factor
  ``0.1 ln s + 1``.
* ``llama3``: Llama 3.1's rule with ``low_freq_factor = 1``, ``high_freq_factor = 4``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ropekit.errors import RopeValueError, check_float, check_int
from ropekit.frequencies.scaling import SCALINGS, Scaling

from .data import Corpus
from .model import ModelConfig, Transformer
from .train import TrainConfig, resolve_device, train

__all__ = [
    "ExperimentConfig",
    "coinciding_curves",
    "eval_windows",
    "evaluate",
    "format_table",
    "plot",
    "run_experiment",
    "scaling_methods",
]


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines an extrapolation run (recorded in its JSON)."""

    seq_len: int = 128
    train_steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-3
    finetune_steps: int = 100
    finetune_lr: float = 1e-3
    factor: float = 8.0
    multiples: tuple[int, ...] = (1, 2, 4, 8)
    eval_windows: int = 32
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    rope_theta: float = 10000.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("seq_len", "train_steps", "batch_size", "eval_windows"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("finetune_steps", self.finetune_steps, minimum=0)
        check_float("factor", self.factor, minimum=1.0)
        multiples = tuple(self.multiples)
        if not multiples or any(
            isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in multiples
        ):
            raise RopeValueError(f"multiples={self.multiples!r} is not allowed: expected ints >= 1")
        longest = max(multiples)
        if any(longest % m for m in multiples):
            raise RopeValueError(
                f"multiples={multiples} is not allowed: expected each to divide the largest "
                "(every length is evaluated on the same windows)"
            )
        object.__setattr__(self, "multiples", tuple(sorted(multiples)))
        self.model_config()  # validates the model shape

    @classmethod
    def quick(cls, **overrides: Any) -> ExperimentConfig:
        """A small run (tens of seconds on two cores) that still shows the effect."""
        base: dict[str, Any] = dict(
            seq_len=64, train_steps=150, batch_size=16, finetune_steps=20, eval_windows=8,
            dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
        )  # fmt: skip
        return cls(**{**base, **overrides})

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            rope_theta=self.rope_theta,
            max_seq_len=self.seq_len,
        )

    @property
    def lengths(self) -> list[int]:
        return [m * self.seq_len for m in self.multiples]


def scaling_methods(seq_len: int, factor: float) -> dict[str, Scaling | None]:
    """The training-free methods compared, by label (see the module docstring)."""
    return {
        "rope": None,
        "pi": SCALINGS["linear"](factor=factor),
        "ntk": SCALINGS["ntk"](alpha=factor),
        "dynamic": SCALINGS["dynamic"](factor=1.0, max_position=seq_len),
        "yarn": SCALINGS["yarn"](factor=factor, original_max_position_embeddings=seq_len),
        "llama3": SCALINGS["llama3"](
            factor=factor,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=seq_len,
        ),
    }


#: Methods fine-tuned at 2L when finetune_steps > 0 ("rope" is the control).
FINETUNED = ("rope", "pi", "yarn")


def eval_windows(val: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """``n`` windows of ``length + 1`` tokens at evenly spaced offsets of ``val``: int64 ``[n, length + 1]``."""
    check_int("n", n, minimum=1)
    if val.numel() < length + 1:
        raise RopeValueError(
            f"the validation data has {val.numel()} tokens: expected at least {length + 1} "
            f"to evaluate at length {length} (use more data or a shorter seq_len)"
        )
    last = val.numel() - (length + 1)
    starts = (
        torch.linspace(0, last, n).round().long() if n > 1 else torch.zeros(1, dtype=torch.long)
    )
    return val[starts[:, None] + torch.arange(length + 1)].long()


@torch.no_grad()
def evaluate(
    model: Transformer,
    windows: torch.Tensor,
    length: int,
    *,
    device: torch.device | str = "cpu",
    batch_tokens: int = 16384,
) -> torch.Tensor:
    """Mean next-token loss at each position ``[length]`` over all sequences of ``length``.

    ``windows`` ``[n, W + 1]`` (``W`` a multiple of ``length``) is cut into ``n * W / length``
    sequences ``[length]`` that each start from position 0. Returns float64 ``[length]``.
    """
    w = windows.shape[1] - 1
    if w % length:
        raise RopeValueError(f"length={length} is not allowed: expected a divisor of {w}")
    x = windows[:, :-1].reshape(-1, length)
    y = windows[:, 1:].reshape(-1, length)
    rows = max(1, batch_tokens // length)
    total = torch.zeros(length, dtype=torch.float64)
    model.eval()
    for i in range(0, x.shape[0], rows):
        xb, yb = x[i : i + rows].to(device), y[i : i + rows].to(device)
        logits = model(xb).float()
        loss = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
        total += loss.view(-1, length).double().sum(0).cpu()
    return total / x.shape[0]


def _bucket(curve: torch.Tensor, buckets: int) -> list[float]:
    width = max(1, curve.numel() // buckets)
    usable = curve[: (curve.numel() // width) * width]
    return [round(v, 5) for v in usable.view(-1, width).mean(1).tolist()]


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def run_experiment(
    config: ExperimentConfig,
    corpus: Corpus,
    *,
    device: str | torch.device | None = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the whole protocol; returns the JSON-ready results (see :func:`format_table`)."""
    dev = resolve_device(device)
    t_start = time.perf_counter()
    load_start = _load()
    L = config.seq_len
    longest = max(config.lengths)
    windows = eval_windows(corpus.val, config.eval_windows, longest)
    if corpus.train.numel() < 2 * L + 1:
        raise RopeValueError(
            f"the training data has {corpus.train.numel()} tokens: expected at least {2 * L + 1}"
        )
    log(corpus.describe())

    torch.manual_seed(config.seed)
    base = Transformer(config.model_config())
    log(
        f"model: {base.num_parameters():,} parameters, trained at L={L} with plain RoPE "
        f"(theta={config.rope_theta:g}), then evaluated at {config.lengths}"
    )
    train_cfg = TrainConfig(
        steps=config.train_steps,
        batch_size=config.batch_size,
        lr=config.lr,
        warmup_steps=max(1, config.train_steps // 20),
        seed=config.seed,
    )
    t0 = time.perf_counter()
    base_run = train(
        base, corpus.train, train_cfg, device=dev, progress=progress, desc=f"train L={L}"
    )
    train_seconds = time.perf_counter() - t0
    log(
        f"trained {config.train_steps} steps in {train_seconds:.1f} s "
        f"({base_run.tokens_per_s:,.0f} tokens/s), final train loss {base_run.losses[-1]:.3f}"
    )

    results: list[dict[str, Any]] = []

    def measure(label: str, model: Transformer, scaling: Scaling | None, finetuned: bool) -> None:
        t = time.perf_counter()
        loss, curve = {}, None
        for length in config.lengths:
            per_pos = evaluate(model, windows, length, device=dev)
            loss[length] = float(per_pos.mean())
            if length == longest:
                curve = per_pos
        assert curve is not None
        results.append(
            {
                "method": label,
                "finetuned": finetuned,
                "scaling": None if scaling is None else scaling.to_dict(),
                "loss": {str(k): round(v, 5) for k, v in loss.items()},
                "ppl": {str(k): round(math.exp(v), 4) for k, v in loss.items()},
                "position_loss": _bucket(curve, 64),
            }
        )
        cells = "  ".join(f"{k}:{v:.3f}" for k, v in loss.items())
        log(f"  {label:<14} {cells}   ({time.perf_counter() - t:.1f} s)")

    methods = scaling_methods(L, config.factor)
    log("evaluating (validation loss, nats/byte):")
    t0 = time.perf_counter()
    for label, scaling in methods.items():
        measure(label, base.set_rope_scaling(scaling), scaling, finetuned=False)
    base.set_rope_scaling(None)
    eval_seconds = time.perf_counter() - t0

    ft_seconds = 0.0
    if config.finetune_steps:
        ft_cfg = TrainConfig(
            steps=config.finetune_steps,
            batch_size=max(1, config.batch_size // 2),  # same tokens per step at 2L
            seq_len=2 * L,
            lr=config.finetune_lr,
            warmup_steps=max(1, config.finetune_steps // 10),
            seed=config.seed + 1,
        )
        for label in FINETUNED:
            scaling = methods[label]
            model = copy.deepcopy(base).set_rope_scaling(scaling)
            t0 = time.perf_counter()
            train(
                model,
                corpus.train,
                ft_cfg,
                device=dev,
                progress=progress,
                desc=f"fine-tune {label} at 2L",
            )
            ft_seconds += time.perf_counter() - t0
            measure(f"{label} +ft@2L", model, scaling, finetuned=True)

    wall = time.perf_counter() - t_start
    return {
        "config": {**dataclasses.asdict(config), "multiples": list(config.multiples)},
        "model_config": config.model_config().to_dict(),
        "parameters": base.num_parameters(),
        "data": corpus.describe(),
        "lengths": config.lengths,
        "position_bucket": max(1, longest // 64),
        "train": {
            "final_loss": round(base_run.losses[-1], 5),
            "loss_every_10": [round(v, 4) for v in base_run.losses[::10]],
            "tokens_per_s": round(base_run.tokens_per_s, 1),
        },
        "results": results,
        "seconds": {
            "train": round(train_seconds, 2),
            "evaluate": round(eval_seconds, 2),
            "finetune": round(ft_seconds, 2),
            "total": round(wall, 2),
        },
        "environment": {
            "device": str(dev),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_start": load_start,
            "load_average_end": _load(),
        },
    }


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table: one row per method, ``loss (ppl)`` per evaluation length."""
    lengths = report["lengths"]
    L = lengths[0] // report["config"]["multiples"][0]
    heads = [f"{n // L}L={n}" if n != L else f"L={n}" for n in lengths]
    width = 15
    lines = [f"{'method':<16}" + "".join(f"{h:>{width}}" for h in heads)]
    lines.append("-" * len(lines[0]))
    for row in report["results"]:
        cells = "".join(
            f"{row['loss'][str(n)]:>8.3f} ({row['ppl'][str(n)]:>4.2f})" for n in lengths
        )
        lines.append(f"{row['method']:<16}{cells}")
    lines.append("validation loss in nats/byte (perplexity per byte); lower is better")
    return "\n".join(lines)


#: Per method: line style and marker, so that curves which coincide stay visible (at
#: ``T = 8L`` dynamic NTK *is* NTK with ``s = 8``: the two position curves are identical).
_STYLES: dict[str, tuple[str, str]] = {
    "rope": ("-", "o"),
    "pi": ("-", "s"),
    "ntk": ("-", "^"),
    "dynamic": (":", "v"),
    "yarn": ("-", "D"),
    "llama3": ("-.", "P"),
}


def coinciding_curves(report: dict[str, Any], tol: float = 1e-4) -> list[tuple[str, str]]:
    """Pairs of methods whose loss-vs-position curves at the longest length agree within
    ``tol`` everywhere (drawn on top of each other: the figure says so in a note)."""
    rows = report["results"]
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            xa, xb = a["position_loss"], b["position_loss"]
            if len(xa) == len(xb) and all(abs(u - v) <= tol for u, v in zip(xa, xb, strict=True)):
                pairs.append((a["method"], b["method"]))
    return pairs


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Two panels: loss vs evaluation length per method, and loss vs position at the
    longest length (bucketed means). Needs matplotlib.

    Both x-axes count tokens, which for this byte-level model are bytes.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        from ropekit.cli.common import MATPLOTLIB_HINT

        raise RopeValueError(f"plotting needs matplotlib ({err}): {MATPLOTLIB_HINT}") from None
    path = Path(path)
    lengths = report["lengths"]
    L = report["config"]["seq_len"]
    longest = max(lengths)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.2))
    colors: dict[str, Any] = {}
    for row in report["results"]:
        base = row["method"].split(" ")[0]
        style, marker = _STYLES.get(base, ("-", "o"))
        if row["finetuned"]:
            style = "--"
        ys = [row["loss"][str(n)] for n in lengths]
        (line,) = ax1.plot(
            lengths, ys, style, marker=marker, ms=4, color=colors.get(base), label=row["method"]
        )
        colors.setdefault(base, line.get_color())
        bucket = report["position_bucket"]
        xs = [bucket * (i + 0.5) for i in range(len(row["position_loss"]))]
        ax2.plot(xs, row["position_loss"], style, color=colors[base], lw=1.3,
                 marker=marker, ms=3, markevery=8)  # fmt: skip
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(lengths, [f"{n}\n({n // L}L)" if n != L else f"{n}\n(L)" for n in lengths])
    ax1.set_xlabel("evaluation length T (tokens; a token is one byte)")
    ax1.set_ylabel("validation loss (nats/byte)")
    ax1.set_title(f"trained at L = {L}: mean loss over sequences of T tokens")
    top = max(max(r["loss"].values()) for r in report["results"])
    low = min(min(r["loss"].values()) for r in report["results"])
    ax1.set_ylim(low - 0.05, min(top, low + 3) + 0.05)
    ax2.set_xlabel(f"position in the sequence (tokens; a token is one byte), T = {longest}")
    ax2.set_ylabel(f"mean loss per {report['position_bucket']}-position bucket")
    ax2.set_title(f"loss at each position, sequences of T = {longest} tokens")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    for m in (1, 2):
        ax2.axvline(m * L, color="grey", lw=0.8, ls=":")
        ax2.text(m * L, 0.98, f" {m if m > 1 else ''}L", transform=ax2.get_xaxis_transform(),
                 va="top", ha="left", fontsize=9, color="grey")  # fmt: skip
    same = coinciding_curves(report)
    if same:
        note = "; ".join(f"{a} and {b}" for a, b in same)
        ax2.text(0.99, 0.02, f"identical curves (drawn on top of each other): {note}",
                 transform=ax2.transAxes, ha="right", va="bottom", fontsize=8.5,
                 color="dimgrey", wrap=True)  # fmt: skip
    handles, labels = ax1.get_legend_handles_labels()
    ncol = min(len(labels), 5)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=10, frameon=False)
    rows_of_legend = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, 0.045 * rows_of_legend + 0.01, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``extrapolation.json`` and ``extrapolation.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "extrapolation.json"
    json_path.write_text(json.dumps(report, indent=1))
    return json_path, plot(report, out / "extrapolation.png")
