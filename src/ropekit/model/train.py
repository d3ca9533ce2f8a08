"""Training loop, checkpoints and data parallelism for :class:`~ropekit.model.Transformer`.

* AdamW (weight decay on matrices only), linear warm-up then cosine decay to
  ``min_lr_ratio * lr``, global-norm gradient clipping.
* Reproducible: batches come from one seeded :class:`torch.Generator`; on CPU two runs
  with the same seed give bit-identical weights, and so does resuming from a checkpoint.
* Data parallel under ``torchrun``: every process draws the same *global* batch and
  trains on its ``1/W`` slice; :class:`~torch.nn.parallel.DistributedDataParallel`
  averages gradients, which equals the gradient of the global batch's mean loss, so
  ``W`` processes follow a single process with the same global batch (up to the order of
  floating-point sums). gloo on CPU, NCCL on CUDA.
* Checkpoints are folders: ``model.safetensors`` (weights), ``optimizer.safetensors``
  (AdamW moments and the data generator state) and ``config.json`` (model config,
  training config, step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import distributed
from ..errors import RopeValueError, check_float, check_int
from .data import random_batch
from .model import ModelConfig, Transformer

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "lr_at",
    "make_optimizer",
    "resolve_device",
    "save_checkpoint",
    "train",
]

CHECKPOINT_FORMAT = "ropekit.model/1"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; ``batch_size`` is the *global* batch (all processes)."""

    steps: int = 1000
    batch_size: int = 32
    seq_len: int | None = None  # None: the model's max_seq_len
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("steps", self.steps, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        if self.seq_len is not None:
            check_int("seq_len", self.seq_len, minimum=1)
        check_float("lr", self.lr, positive=True)
        check_float("min_lr_ratio", self.min_lr_ratio, minimum=0.0)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        check_float("grad_clip", self.grad_clip, positive=True)
        check_int("seed", self.seed, minimum=0)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What a :func:`train` call did: per-step global mean losses and throughput."""

    losses: list[float] = field(default_factory=list)
    start_step: int = 0
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    ``lr * (step + 1) / warmup`` during warm-up, then
    ``lr * (r + (1 - r) * (1 + cos(pi * p)) / 2)`` with ``p`` the fraction of the decay
    phase done and ``r = min_lr_ratio``.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay = max(1, config.steps - config.warmup_steps)
    p = min(1.0, (step - config.warmup_steps) / decay)
    r = config.min_lr_ratio
    return config.lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p)))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (``ndim >= 2``) only: decaying norm gains
    towards 0 only fights the normalisation."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA if available else CPU; otherwise ``torch.device(device)``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise RopeValueError(f"device={device!r} is not allowed: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RopeValueError(f"device={device!r} is not allowed: CUDA is not available here")
    return dev


# --------------------------------------------------------------------------- checkpoints


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise RopeValueError(
            "checkpoints need the 'safetensors' package: pip install safetensors"
        ) from None
    return safetensors.torch


def _replace_write(path: Path, write: Any) -> None:
    # Write then rename, so an interrupted save never leaves a half-written file in place.
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(
    path: str | Path,
    model: Transformer,
    *,
    step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    train_config: TrainConfig | None = None,
) -> Path:
    """Write a checkpoint folder ``path`` (created if needed); returns it.

    ``config.json`` is written last: a folder with a ``config.json`` is complete.
    """
    st = _safetensors()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _replace_write(path / "model.safetensors", lambda p: st.save_file(weights, str(p)))
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "model": model.config.to_dict(),
        "step": step,
        "train": None if train_config is None else train_config.to_dict(),
    }
    if optimizer is not None:
        state = optimizer.state_dict()
        tensors = {
            f"state.{i}.{key}": torch.as_tensor(value).detach().cpu().contiguous()
            for i, slots in state["state"].items()
            for key, value in slots.items()
        }
        if generator is not None:
            tensors["rng.data"] = generator.get_state()
        _replace_write(path / "optimizer.safetensors", lambda p: st.save_file(tensors, str(p)))
        meta["param_groups"] = state["param_groups"]
    _replace_write(path / "config.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    return path


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise RopeValueError(f"checkpoint file {str(file)!r} is missing")
    try:
        return _safetensors().load_file(str(file))
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise RopeValueError(
            f"checkpoint file {str(file)!r} is corrupted or not a safetensors file ({err})"
        ) from None


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of checkpoint folder ``path``, validated."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise RopeValueError(
            f"{str(path)!r} is not a ropekit checkpoint: expected a folder with config.json"
        )
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RopeValueError(f"checkpoint file {str(file)!r} is corrupted ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise RopeValueError(
            f"checkpoint file {str(file)!r} is not allowed: expected format {CHECKPOINT_FORMAT!r}"
        )
    return meta


def _load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [
        f"{k}: {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise RopeValueError(
            f"checkpoint {where!r} does not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(weights)


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[Transformer, dict[str, Any]]:
    """Rebuild the model saved in checkpoint folder ``path``; returns ``(model, meta)``."""
    meta = read_checkpoint_meta(path)
    try:
        config = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError) as err:
        raise RopeValueError(
            f"checkpoint {str(path)!r} has no valid model config ({err})"
        ) from None
    model = Transformer(config)
    _load_weights(model, _load_tensors(Path(path) / "model.safetensors"), str(path))
    return model.to(device), meta


def _resume(
    path: Path,
    model: Transformer,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    meta = read_checkpoint_meta(path)
    saved = meta.get("model")
    if saved != model.config.to_dict():
        diff = {
            k: (saved.get(k), v)
            for k, v in model.config.to_dict().items()
            if not isinstance(saved, dict) or saved.get(k) != v
        }
        raise RopeValueError(
            f"checkpoint {str(path)!r} was saved for a different model: (saved, requested) = {diff}"
        )
    # Resuming promises the run that training straight through would have given, so the
    # settings must be those of the saved run; only ``steps`` may grow (or shrink).
    saved_train = meta.get("train")
    if isinstance(saved_train, dict):
        requested = json.loads(json.dumps(config.to_dict()))  # tuples as the JSON lists saved
        diff = {
            k: (saved_train.get(k), v)
            for k, v in requested.items()
            if k != "steps" and saved_train.get(k) != v
        }
        if diff:
            raise RopeValueError(
                f"checkpoint {str(path)!r} was saved with other training settings: "
                f"(saved, requested) = {diff}; expected the same settings (only steps may "
                "change), or start a new run from its weights (load_checkpoint)"
            )
    _load_weights(model, _load_tensors(path / "model.safetensors"), str(path))
    tensors = _load_tensors(path / "optimizer.safetensors")
    if "rng.data" not in tensors or "param_groups" not in meta:
        raise RopeValueError(f"checkpoint {str(path)!r} has no optimizer state to resume from")
    generator.set_state(tensors.pop("rng.data"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, i, slot = key.split(".", 2)
        state.setdefault(int(i), {})[slot] = value
    try:
        groups = [{**g, "betas": tuple(g["betas"])} for g in meta["param_groups"]]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as err:
        raise RopeValueError(
            f"checkpoint {str(path)!r} optimizer state does not fit: {err}"
        ) from None
    return int(meta["step"])


# --------------------------------------------------------------------------- training


@contextlib.contextmanager
def _progress(total: int, initial: int, desc: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        yield None
        return
    # In a log file (not a terminal) every refresh is a new chunk of text: refresh rarely.
    interactive = sys.stderr.isatty()
    bar = tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.1 if interactive else 30.0,
    )
    try:
        yield bar
    finally:
        bar.close()


def train(
    model: Transformer,
    data: torch.Tensor,
    config: TrainConfig,
    *,
    device: str | torch.device | None = "cpu",
    out_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 0,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place on random windows of ``data`` (uint8 ``[N]``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is joined from the
    environment, the model is wrapped in DistributedDataParallel and each process trains
    on its slice of every global batch; only rank 0 writes checkpoints and shows progress.

    Args:
        model: the model (moved to ``device``).
        data: token stream.
        config: optimisation settings.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` ...; under torchrun with CUDA each
            process uses ``cuda:LOCAL_RANK``.
        out_dir: checkpoint folder, written every ``checkpoint_every`` steps (0: only at
            the end).
        resume: continue from the checkpoint in ``out_dir`` if there is one.
        progress: show a progress bar (loss, tokens/s) on rank 0.

    Returns:
        A :class:`TrainResult`; ``losses`` are global-batch means, equal on every rank.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dev = resolve_device(device)
    rank, local_rank, world = distributed.init_from_env(dev.type)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    seq_len = config.seq_len or model.config.max_seq_len
    if config.batch_size % world:
        raise RopeValueError(
            f"batch_size={config.batch_size} is not allowed with {world} processes: expected "
            "a multiple of the world size (it is the global batch)"
        )
    check_int("checkpoint_every", checkpoint_every, minimum=0)
    local = config.batch_size // world

    model.to(dev)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    start = 0
    out = None if out_dir is None else Path(out_dir)
    if resume and out is not None and (out / "config.json").exists():
        start = _resume(out, model, config, optimizer, generator)
    net: torch.nn.Module = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dev.type == "cuda"
        else contextlib.nullcontext()
    )

    def save(step: int) -> None:
        if out is not None and rank == 0:
            save_checkpoint(
                out,
                model,
                step=step,
                optimizer=optimizer,
                generator=generator,
                train_config=config,
            )

    result = TrainResult(start_step=start)
    model.train()
    t0 = time.perf_counter()
    with _progress(config.steps, start, desc, progress and rank == 0) as bar:
        for step in range(start, config.steps):
            x, y = random_batch(data, config.batch_size, seq_len, generator)
            x, y = x[rank * local : (rank + 1) * local], y[rank * local : (rank + 1) * local]
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            with autocast:
                logits = net(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()

            global_loss = loss.detach()
            if world > 1:  # SUM then divide: gloo has no AVG on every torch version
                dist.all_reduce(global_loss)
                global_loss = global_loss / world
            result.losses.append(float(global_loss))
            result.steps += 1
            result.tokens += config.batch_size * seq_len
            if bar is not None:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{result.losses[-1]:.3f}",
                    tok_s=f"{result.tokens / max(elapsed, 1e-9):,.0f}",
                    refresh=False,
                )
                bar.update(1)
            if checkpoint_every and (step + 1) % checkpoint_every == 0:
                save(step + 1)
    result.seconds = time.perf_counter() - t0
    model.eval()
    save(start + result.steps)
    return result
