"""``ropekit-lab train``: train the small Llama-style byte model (:mod:`ropekit_lab.model`).

Checkpoints go into the run folder ``--out``: one directory per saved step
(``step-00000015/``: safetensors weights and optimizer state, meta.json, and MANIFEST.json
with the size and SHA-256 of each file) and a ``LATEST`` pointer, both replaced atomically,
so a run killed at any moment resumes (``--resume``) from its last complete checkpoint bit
for bit; a damaged folder is an error and nothing is overwritten. Runs on one process, or
data-parallel under torchrun (gloo on CPU, NCCL on GPU; ``--batch-size`` is the global
batch)::

    torchrun --nproc_per_node 2 -m ropekit_lab.cli.train --out out/ddp --steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ropekit.cli.common import help_text

__all__ = ["build_parser", "main", "register", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run folder for checkpoints")
    p.add_argument("--data", help="text file or folder (default: the Python stdlib sources)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last complete checkpoint in --out (none yet: start at step 0)",
    )
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (all processes)")
    p.add_argument("--seq-len", type=int, default=128, help="training context L")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps (0: at the end)")
    p.add_argument(
        "--keep-checkpoints",
        type=int,
        default=2,
        help="checkpoints kept in --out: the latest and the ones before it (default 2)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (default cpu)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--theta", type=float, default=10000.0)
    p.add_argument(
        "--rope-scaling",
        type=json.loads,
        metavar="JSON",
        help='a scaling method, e.g. \'{"rope_type": "linear", "factor": 2}\'',
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the small byte-level Llama-style model (CPU, GPU, torchrun)",
        description=help_text(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, after parsing: torch takes seconds to import and --help needs none of it.
    import torch

    from ..data import load_corpus
    from ..model import ModelConfig, Transformer
    from ..train import TrainConfig, train

    model_config = ModelConfig(
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        rope_theta=args.theta,
        max_seq_len=args.seq_len,
        rope_scaling=args.rope_scaling,
    )
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup,
        seed=args.seed,
    )
    corpus = load_corpus(args.data)
    torch.manual_seed(args.seed)
    model = Transformer(model_config)
    result = train(
        model,
        corpus.train,
        config,
        device=args.device,
        out_dir=args.out,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        progress=not args.no_progress,
    )
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a (nothing left to do)"
        print(
            f"steps {result.start_step}..{result.start_step + result.steps}: final loss {last}, "
            f"{result.tokens_per_s:,.0f} tokens/s; checkpoint in {args.out}"
        )
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ropekit-lab train",
        description=help_text(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m ropekit_lab.cli.train`` (and ``torchrun -m``)."""
    from ropekit.errors import RopeValueError  # after parsing: it imports torch

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except RopeValueError as err:
        print(f"ropekit-lab train: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
