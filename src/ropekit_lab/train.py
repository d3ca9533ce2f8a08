"""Training loop, checkpoints and data parallelism for :class:`~ropekit_lab.model.Transformer`.

* AdamW (weight decay on matrices only), linear warm-up then cosine decay to
  ``min_lr_ratio * lr``, global-norm gradient clipping.
* Reproducible: batches come from one seeded :class:`torch.Generator`; on CPU two runs
  with the same seed give bit-identical weights, and so does resuming from a checkpoint.
* Data parallel under ``torchrun``: every process draws the same *global* batch and
  trains on its ``1/W`` slice; :class:`~torch.nn.parallel.DistributedDataParallel`
  averages gradients, which equals the gradient of the global batch's mean loss, so
  ``W`` processes follow a single process with the same global batch (up to the order of
  floating-point sums). gloo on CPU, NCCL on CUDA.
* Checkpoints are crash-safe: a run folder holds one directory per saved step
  (``step-00000015/``: ``model.safetensors``, ``optimizer.safetensors`` with the AdamW
  moments and the data generator state, ``meta.json`` and ``MANIFEST.json`` with the size
  and SHA-256 of every file) and a ``LATEST`` pointer, both replaced atomically. Killed at
  any instant, ``resume`` continues from the last complete checkpoint bit for bit; a
  damaged checkpoint is a :class:`~ropekit.RopeValueError` and nothing is overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ropekit import distributed
from ropekit.errors import RopeValueError, check_float, check_int

from .data import random_batch
from .model import ModelConfig, Transformer

__all__ = [
    "CHECKPOINT_FORMAT",
    "KEEP_CHECKPOINTS",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "lr_at",
    "make_optimizer",
    "read_checkpoint_meta",
    "resolve_device",
    "save_checkpoint",
    "train",
]

# The format name keeps the package the trainer lived in when it was written (ropekit.model,
# before the lab moved to ropekit_lab): it names the on-disk layout, so checkpoints written
# before the move still resume.
CHECKPOINT_FORMAT = "ropekit.model/2"


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
#
# Layout of a run folder (see docs/model.md, "Checkpoints"):
#
#     DIR/LATEST                  pointer: which step directory is the checkpoint
#     DIR/step-00000015/          one complete checkpoint per saved step
#         model.safetensors, optimizer.safetensors, meta.json, MANIFEST.json
#     DIR/.tmp-step-.../          a save in progress (or killed): never read
#     DIR/.trash-step-.../        a pruned checkpoint being deleted: never read
#
# A save writes every file of the new step directory under a temporary name, fsyncs them,
# writes MANIFEST.json (size and SHA-256 of every file) last, renames the directory into
# place and fsyncs the run folder, then replaces LATEST atomically (tmp, fsync, rename,
# fsync) and only then prunes checkpoints that LATEST no longer names. Whatever instant a
# save is killed at, LATEST names either the old or the new checkpoint, complete.

POINTER = "LATEST"
MANIFEST = "MANIFEST.json"
META = "meta.json"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
#: Checkpoints kept in a run folder by default: the one ``LATEST`` names and the one before.
KEEP_CHECKPOINTS = 2

_STEP_DIR = re.compile(r"step-(\d{8,})(?:-(\d+))?")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TMP = ".tmp-step-"
_TRASH = ".trash-step-"
_POINTER_TMP = ".LATEST.tmp"
_LEGACY = "config.json"  # ropekit.model/1: one flat folder, no manifest, no pointer


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise RopeValueError(
            "checkpoints need the 'safetensors' package: pip install safetensors"
        ) from None
    return safetensors.torch


def _write_file(path: Path, data: bytes) -> None:
    """Create (or truncate) ``path`` with ``data`` and fsync it before returning."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in folder ``path`` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":  # pragma: no cover - Windows cannot open a directory
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


def _clean_leftovers(run: Path) -> None:
    """Delete what killed saves and prunes left behind (never read by a load)."""
    for entry in run.iterdir():
        if entry.name.startswith((_TMP, _TRASH)) or entry.name == _POINTER_TMP:
            _remove(entry)


def _discard(run: Path, name: str) -> None:
    """Delete step directory ``name``: renamed away first, so a step directory is never
    half deleted."""
    trash = run / f".trash-{name}-{os.getpid()}"
    _remove(trash)
    os.replace(run / name, trash)
    _remove(trash)


def _write_pointer(run: Path, pointer: dict[str, Any]) -> None:
    tmp = run / _POINTER_TMP
    _write_file(tmp, _json_bytes(pointer))
    os.replace(tmp, run / POINTER)
    _fsync_dir(run)


def _read_json(file: Path, what: str) -> Any:
    try:
        return json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RopeValueError(
            f"checkpoint file {str(file)!r} is corrupted: expected {what} as JSON ({err})"
        ) from None


def _read_pointer(run: Path) -> dict[str, Any]:
    """The validated ``LATEST`` of run folder ``run``: ``checkpoint`` is a step directory
    name or None (a run whose first save has not completed)."""
    file = run / POINTER
    if not file.is_file():
        raise RopeValueError(f"checkpoint pointer {str(file)!r} is not a file")
    pointer = _read_json(file, "the checkpoint pointer")
    expected = (
        f'expected {{"format": "{CHECKPOINT_FORMAT}", "checkpoint": "step-<8 digits>" or null, '
        '"step": int >= 0, "manifest_sha256": 64 hex digits, "previous": [names]}'
    )
    if not isinstance(pointer, dict) or pointer.get("format") != CHECKPOINT_FORMAT:
        found = pointer.get("format") if isinstance(pointer, dict) else pointer
        raise RopeValueError(f"checkpoint pointer {str(file)!r} has format {found!r}: {expected}")
    name = pointer.get("checkpoint")
    previous = pointer.get("previous", [])
    if not isinstance(previous, list) or not all(
        isinstance(p, str) and _STEP_DIR.fullmatch(p) for p in previous
    ):
        raise RopeValueError(f"checkpoint pointer {str(file)!r} has a bad 'previous': {expected}")
    if name is None:
        return pointer
    if not isinstance(name, str) or not _STEP_DIR.fullmatch(name):
        raise RopeValueError(f"checkpoint pointer {str(file)!r} names {name!r}: {expected}")
    if not _is_count(pointer.get("step")):
        raise RopeValueError(
            f"checkpoint pointer {str(file)!r} has step {pointer.get('step')!r}: {expected}"
        )
    sha = pointer.get("manifest_sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise RopeValueError(
            f"checkpoint pointer {str(file)!r} has manifest_sha256 {sha!r}: {expected}"
        )
    if not (run / name).is_dir():
        raise RopeValueError(
            f"checkpoint pointer {str(file)!r} names {name!r}, but {str(run / name)!r} is "
            "missing: expected the step directory it points to (the run folder is damaged; "
            "nothing was read or written)"
        )
    return pointer


def _current_pointer(run: Path) -> dict[str, Any] | None:
    """``LATEST`` for a save: None when absent or unreadable (that save replaces it)."""
    try:
        return _read_pointer(run) if (run / POINTER).exists() else None
    except RopeValueError:
        return None


def _kept(pointer: dict[str, Any] | None) -> list[str]:
    if pointer is None:
        return []
    name = pointer.get("checkpoint")
    return ([name] if name else []) + list(pointer.get("previous", []))


def save_checkpoint(
    path: str | Path,
    model: Transformer,
    *,
    step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    train_config: TrainConfig | None = None,
    keep: int = KEEP_CHECKPOINTS,
) -> Path:
    """Save a checkpoint into run folder ``path`` (created if needed) as one atomic unit.

    Writes ``path/step-<step>/`` (weights, optimizer state, ``meta.json`` and a
    ``MANIFEST.json`` with the size and SHA-256 of each file) under a temporary name,
    renames it into place, then points ``path/LATEST`` at it; afterwards only the ``keep``
    newest checkpoints that ``LATEST`` lists are left. Killed at any instant, the folder
    still holds the previous checkpoint (or the new one) complete. Returns the new step
    directory.
    """
    step = check_int("step", step, minimum=0)
    keep = check_int("keep", keep, minimum=1)
    st = _safetensors()
    run = Path(path)
    if (run / MANIFEST).exists():
        raise RopeValueError(
            f"{str(run)!r} is a checkpoint directory: expected a run folder to save into"
        )
    if run.exists() and not run.is_dir():
        raise RopeValueError(f"{str(run)!r} is a file: expected a run folder to save into")
    if not run.is_dir():
        run.mkdir(parents=True)
        _fsync_dir(run.parent)
    _clean_leftovers(run)
    pointer = _current_pointer(run)
    if pointer is None:
        # A run folder always has a LATEST before its first step directory appears: a step
        # directory without LATEST then means a damaged folder, never a save killed early.
        pointer = {"format": CHECKPOINT_FORMAT, "checkpoint": None, "previous": []}
        _write_pointer(run, pointer)
    kept = _kept(pointer)

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    files: dict[str, bytes] = {WEIGHTS: st.save(weights)}
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
        files[OPTIMIZER] = st.save(tensors)
        meta["param_groups"] = state["param_groups"]
    files[META] = _json_bytes(meta)
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "files": {k: {"size": len(v), "sha256": _sha256(v)} for k, v in files.items()},
    }
    manifest_bytes = _json_bytes(manifest)

    # The same step saved twice (the directory LATEST names must not be touched): -2, -3...
    name, n = f"step-{step:08d}", 1
    while name in kept:
        n += 1
        name = f"step-{step:08d}-{n}"
    tmp = run / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    for file, data in files.items():
        _write_file(tmp / file, data)
    _write_file(tmp / MANIFEST, manifest_bytes)  # last: a directory with a manifest is whole
    _fsync_dir(tmp)
    if (run / name).exists():  # left by a killed run before its LATEST moved: unreferenced
        _discard(run, name)
    os.replace(tmp, run / name)
    _fsync_dir(run)
    previous = [k for k in kept if k != name and (run / k).is_dir()][: keep - 1]
    _write_pointer(
        run,
        {
            "format": CHECKPOINT_FORMAT,
            "checkpoint": name,
            "step": step,
            "manifest_sha256": _sha256(manifest_bytes),
            "previous": previous,
        },
    )
    # Prune only now that LATEST no longer names them.
    keep_names = {name, *previous}
    for entry in run.iterdir():
        if _STEP_DIR.fullmatch(entry.name) and entry.name not in keep_names and entry.is_dir():
            _discard(run, entry.name)
    return run / name


@dataclass(frozen=True)
class _Checkpoint:
    """A verified checkpoint: its step directory, its meta and the bytes of its files."""

    path: Path
    meta: dict[str, Any]
    files: dict[str, bytes]


def _artefacts(folder: Path) -> list[str]:
    names = {WEIGHTS, OPTIMIZER, META, MANIFEST, _LEGACY}
    return sorted(
        e.name for e in folder.iterdir() if e.name in names or _STEP_DIR.fullmatch(e.name)
    )


def _locate(path: Path, *, missing_ok: bool) -> tuple[Path, dict[str, Any] | None] | None:
    """The step directory ``path`` stands for and the pointer that names it (None when
    ``path`` is a step directory itself).

    ``path`` is a run folder (``LATEST`` is followed) or a step directory. None (only with
    ``missing_ok``) when there is no checkpoint yet: ``path`` absent or empty, holding only
    leftovers of killed saves, or ``LATEST`` naming no checkpoint.
    """
    expected = f"expected a run folder with {POINTER} or a checkpoint directory with {MANIFEST}"
    if (path / POINTER).exists():
        pointer = _read_pointer(path)
        name = pointer.get("checkpoint")
        if name is not None:
            return path / name, pointer
        if missing_ok:
            return None
        raise RopeValueError(
            f"{str(path)!r} holds no complete checkpoint yet ({POINTER} names none): {expected}"
        )
    if (path / MANIFEST).exists():
        return path, None
    if path.exists() and not path.is_dir():
        raise RopeValueError(f"{str(path)!r} is a file: {expected}")
    found = _artefacts(path) if path.is_dir() else []
    if _LEGACY in found and MANIFEST not in found:
        raise RopeValueError(
            f"{str(path)!r} holds a checkpoint in the old flat layout (config.json, format "
            f"'ropekit.model/1'), which is no longer read: {expected} ({CHECKPOINT_FORMAT})"
        )
    if found:
        raise RopeValueError(
            f"{str(path)!r} holds checkpoint files {found[:6]} but neither {POINTER} nor "
            f"{MANIFEST}: {expected}. The folder is damaged (a deleted pointer or manifest?); "
            "nothing was read or written - restore it, or train into a new folder"
        )
    if missing_ok:
        return None
    raise RopeValueError(f"{str(path)!r} is not a ropekit checkpoint: {expected}")


def _check_meta(meta: Any, file: Path, step: int, has_optimizer: bool) -> dict[str, Any]:
    where = f"checkpoint file {str(file)!r}"
    if not isinstance(meta, dict):
        raise RopeValueError(f"{where} is not allowed: expected a JSON object")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise RopeValueError(
            f"{where} has format {meta.get('format')!r}: expected format {CHECKPOINT_FORMAT!r}"
        )
    if "step" not in meta:
        raise RopeValueError(f"{where} has no 'step': expected an int >= 0")
    if not _is_count(meta["step"]):
        raise RopeValueError(f"{where} has step {meta['step']!r}: expected an int >= 0")
    if meta["step"] != step:
        raise RopeValueError(
            f"{where} has step {meta['step']} but its manifest says {step}: expected the same"
        )
    if not isinstance(meta.get("model"), dict):
        raise RopeValueError(f"{where} has no 'model' config: expected a JSON object")
    if not (meta.get("train") is None or isinstance(meta["train"], dict)):
        raise RopeValueError(f"{where} has 'train' {meta['train']!r}: expected an object or null")
    if has_optimizer and not (
        isinstance(meta.get("param_groups"), list)
        and all(isinstance(g, dict) for g in meta["param_groups"])
    ):
        raise RopeValueError(
            f"{where} has no valid 'param_groups' beside {OPTIMIZER}: expected a list of objects"
        )
    return meta


def _open_checkpoint(path: str | Path, *, missing_ok: bool = False) -> _Checkpoint | None:
    """Find and verify a checkpoint (pointer, manifest, sizes, SHA-256, meta); reads only."""
    located = _locate(Path(path), missing_ok=missing_ok)
    if located is None:
        return None
    folder, pointer = located
    file = folder / MANIFEST
    if not file.is_file():
        raise RopeValueError(
            f"checkpoint manifest {str(file)!r} is missing: expected every step directory to "
            "hold one (the checkpoint is damaged; nothing was read or written)"
        )
    raw = file.read_bytes()
    if pointer is not None and _sha256(raw) != pointer["manifest_sha256"]:
        raise RopeValueError(
            f"checkpoint manifest {str(file)!r} is corrupted: its SHA-256 {_sha256(raw)} is "
            f"not the {pointer['manifest_sha256']} that {POINTER} expects"
        )
    manifest = _read_json(file, "the checkpoint manifest")
    expected = (
        f'expected {{"format": "{CHECKPOINT_FORMAT}", "step": int >= 0, "files": {{name: '
        '{"size": int, "sha256": hex}}} listing model.safetensors and meta.json'
    )
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise RopeValueError(f"checkpoint manifest {str(file)!r} is not allowed: {expected}")
    entries = manifest.get("files")
    step = manifest.get("step")
    if (
        not _is_count(step)
        or not isinstance(entries, dict)
        or not {WEIGHTS, META} <= set(entries)
        or not set(entries) <= {WEIGHTS, OPTIMIZER, META}
        or not all(
            isinstance(e, dict)
            and _is_count(e.get("size"))
            and isinstance(e.get("sha256"), str)
            and _SHA256.fullmatch(e["sha256"])
            for e in entries.values()
        )
    ):
        raise RopeValueError(f"checkpoint manifest {str(file)!r} is not allowed: {expected}")
    if pointer is not None and pointer["step"] != step:
        raise RopeValueError(
            f"checkpoint manifest {str(file)!r} has step {step} but {POINTER} says "
            f"{pointer['step']}: expected the same"
        )
    files: dict[str, bytes] = {}
    for name, entry in entries.items():
        target = folder / name
        if not target.is_file():
            raise RopeValueError(
                f"checkpoint file {str(target)!r} is missing: expected it, as {MANIFEST} lists it"
            )
        data = target.read_bytes()
        if len(data) != entry["size"]:
            raise RopeValueError(
                f"checkpoint file {str(target)!r} is corrupted (truncated or grown): "
                f"{len(data)} bytes, expected {entry['size']} as {MANIFEST} says"
            )
        if _sha256(data) != entry["sha256"]:
            raise RopeValueError(
                f"checkpoint file {str(target)!r} is corrupted: SHA-256 {_sha256(data)}, "
                f"expected {entry['sha256']} as {MANIFEST} says"
            )
        files[name] = data
    meta_file = folder / META
    try:
        meta = json.loads(files[META])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RopeValueError(
            f"checkpoint file {str(meta_file)!r} is corrupted: expected JSON ({err})"
        ) from None
    meta = _check_meta(meta, meta_file, step, OPTIMIZER in files)
    return _Checkpoint(folder, meta, files)


def _load_tensors(checkpoint: _Checkpoint, name: str) -> dict[str, torch.Tensor]:
    file = checkpoint.path / name
    if name not in checkpoint.files:
        raise RopeValueError(f"checkpoint file {str(file)!r} is missing")
    try:
        return _safetensors().load(checkpoint.files[name])
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise RopeValueError(
            f"checkpoint file {str(file)!r} is corrupted or not a safetensors file ({err})"
        ) from None


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The validated ``meta.json`` of the checkpoint ``path`` (a run folder, whose
    ``LATEST`` is followed, or a step directory), after verifying every file."""
    checkpoint = _open_checkpoint(path)
    assert checkpoint is not None
    return checkpoint.meta


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
    """Rebuild the model saved at ``path``; returns ``(model, meta)``.

    ``path`` is a run folder (its ``LATEST`` checkpoint) or one ``step-*`` directory.
    Every file is verified against the manifest first.
    """
    checkpoint = _open_checkpoint(path)
    assert checkpoint is not None
    where = str(checkpoint.path)
    try:
        config = ModelConfig.from_dict(checkpoint.meta["model"])
    except (KeyError, TypeError) as err:
        raise RopeValueError(f"checkpoint {where!r} has no valid model config ({err})") from None
    model = Transformer(config)
    _load_weights(model, _load_tensors(checkpoint, WEIGHTS), where)
    return model.to(device), checkpoint.meta


def _resume(
    checkpoint: _Checkpoint,
    model: Transformer,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    path, meta = checkpoint.path, checkpoint.meta
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
    if OPTIMIZER not in checkpoint.files:
        raise RopeValueError(
            f"checkpoint {str(path)!r} has no {OPTIMIZER} to resume from: expected a checkpoint "
            "written by train() (load_checkpoint still reads its weights)"
        )
    weights = _load_tensors(checkpoint, WEIGHTS)
    tensors = _load_tensors(checkpoint, OPTIMIZER)
    if "rng.data" not in tensors:
        raise RopeValueError(
            f"checkpoint {str(path)!r} has no data generator state (rng.data) to resume from"
        )
    state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for key, value in tensors.items():
            if key != "rng.data":
                _, i, slot = key.split(".", 2)
                state.setdefault(int(i), {})[slot] = value
        groups = [{**g, "betas": tuple(g["betas"])} for g in meta["param_groups"]]
    except (ValueError, KeyError, TypeError) as err:
        raise RopeValueError(
            f"checkpoint {str(path)!r} optimizer state is not allowed: expected "
            f"'state.<i>.<slot>' tensors and param groups with betas ({err})"
        ) from None
    _load_weights(model, weights, str(path))
    generator.set_state(tensors["rng.data"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as err:
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
    keep_checkpoints: int = KEEP_CHECKPOINTS,
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
        out_dir: run folder for checkpoints, written every ``checkpoint_every`` steps and
            at the end (see :func:`save_checkpoint`).
        resume: continue from the checkpoint ``out_dir/LATEST`` names; an absent or empty
            folder (or one whose first save never completed) starts at step 0, a damaged
            one raises :class:`~ropekit.RopeValueError` before anything is written.
        keep_checkpoints: how many checkpoints to keep in ``out_dir`` (>= 1).
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
    check_int("keep_checkpoints", keep_checkpoints, minimum=1)
    local = config.batch_size // world

    model.to(dev)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    start = 0
    saved_step: int | None = None  # the step of the checkpoint in out_dir, if current
    out = None if out_dir is None else Path(out_dir)
    if out is not None and (out / MANIFEST).exists():
        raise RopeValueError(
            f"out_dir={str(out)!r} is a checkpoint directory: expected the run folder that "
            f"holds it ({str(out.parent)!r}) or a new one"
        )
    if resume and out is not None:
        checkpoint = _open_checkpoint(out, missing_ok=True)
        if checkpoint is not None:
            start = saved_step = _resume(checkpoint, model, config, optimizer, generator)
    net: torch.nn.Module = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dev.type == "cuda"
        else contextlib.nullcontext()
    )

    def save(step: int) -> None:
        nonlocal saved_step
        if out is not None and rank == 0 and step != saved_step:
            save_checkpoint(
                out,
                model,
                step=step,
                optimizer=optimizer,
                generator=generator,
                train_config=config,
                keep=keep_checkpoints,
            )
            saved_step = step

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
