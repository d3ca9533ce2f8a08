"""Byte-level data: any text becomes a stream of tokens in ``[0, 256)``, no tokenizer.

The default corpus is the source of the Python standard library of the running
interpreter (``sysconfig.get_paths()["stdlib"]``, every ``*.py`` outside
``site-packages``): about 30 MB of real code on every machine that runs ropekit, with no
download. ``--data PATH`` takes any text file or folder instead.

Split: by file, deterministically. A file goes to validation when
``crc32(relative path) % 1000 < 1000 * val_fraction``, so the split depends only on the
file names (not on the order the file system lists them or on ``PYTHONHASHSEED``) and no
validation file is ever seen in training. A single file is split at
``(1 - val_fraction)`` of its bytes instead.
"""

from __future__ import annotations

import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ropekit.errors import RopeValueError, check_float, check_int

__all__ = [
    "Corpus",
    "is_text",
    "load_corpus",
    "random_batch",
    "stdlib_root",
]

#: Files larger than this are skipped in folders (generated data, not prose or code).
MAX_FILE_BYTES = 2**24


@dataclass(frozen=True)
class Corpus:
    """Token streams (uint8 ``[N]``) for training and validation, and where they came from."""

    train: torch.Tensor
    val: torch.Tensor
    source: str
    train_files: int
    val_files: int

    def describe(self) -> str:
        return (
            f"{self.source}: {self.train.numel() / 1e6:.2f} MB train ({self.train_files} files), "
            f"{self.val.numel() / 1e6:.2f} MB validation ({self.val_files} files)"
        )


def stdlib_root() -> Path:
    """Folder of the running interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_text(data: bytes) -> bool:
    """True for text: no NUL byte and under 1% control bytes (tab, newline, CR, FF, VT allowed).

    NUL never occurs in text files but is common in binary formats (and in UTF-16, which a
    byte-level model would see as noise); the control-byte rule rejects compressed or
    encrypted data while admitting any 8-bit encoding (UTF-8, Latin-1 source files).
    """
    if not data or b"\x00" in data:
        return False
    control = sum(data.count(bytes([c])) for c in _CONTROL)
    return control < 0.01 * len(data)


_CONTROL = (*range(1, 9), *range(14, 32), 127)


def _in_val(rel: str, val_fraction: float) -> bool:
    return zlib.crc32(rel.encode("utf-8", "surrogateescape")) % 1000 < round(1000 * val_fraction)


def _folder_files(root: Path, pattern: str) -> list[Path]:
    files = []
    for p in sorted(root.rglob(pattern)):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") or part in ("site-packages", "dist-packages") for part in rel):
            continue
        if p.is_file() and p.stat().st_size <= MAX_FILE_BYTES:
            files.append(p)
    return files


def _stream(chunks: list[bytes]) -> torch.Tensor:
    # Files are joined by a blank line so a window that spans two files sees a boundary.
    joined = b"\n\n".join(chunks)
    return torch.frombuffer(bytearray(joined), dtype=torch.uint8)


def load_corpus(path: str | Path | None = None, *, val_fraction: float = 0.05) -> Corpus:
    """Read ``path`` (a text file or a folder of them; ``None``: the stdlib) into a :class:`Corpus`.

    Raises:
        RopeValueError: the path is missing, or holds no text (empty or binary files only),
            or too little to give both splits at least one byte.
    """
    val_fraction = check_float("val_fraction", val_fraction, positive=True)
    if val_fraction >= 0.5:
        raise RopeValueError(f"val_fraction={val_fraction} is not allowed: expected 0 < x < 0.5")
    if path is None:
        root, pattern, source = stdlib_root(), "*.py", f"Python stdlib ({stdlib_root()})"
    else:
        root, pattern, source = Path(path), "*", str(path)
    if not root.exists():
        raise RopeValueError(
            f"data path {str(root)!r} does not exist: expected a text file or folder"
        )

    if root.is_file():
        data = root.read_bytes()
        if not data:
            raise RopeValueError(f"data file {str(root)!r} is empty: expected text")
        if not is_text(data):
            raise RopeValueError(
                f"data file {str(root)!r} looks binary (NUL or control bytes): expected a text file"
            )
        cut = int(len(data) * (1 - val_fraction))
        if cut < 1 or cut >= len(data):
            raise RopeValueError(
                f"data file {str(root)!r} has {len(data)} bytes: too few to split into "
                "train and validation"
            )
        return Corpus(_stream([data[:cut]]), _stream([data[cut:]]), source, 1, 1)

    train, val = [], []
    skipped = 0
    for p in _folder_files(root, pattern):
        data = p.read_bytes()
        if not is_text(data):
            skipped += 1
            continue
        (val if _in_val(p.relative_to(root).as_posix(), val_fraction) else train).append(data)
    if not train and not val:
        what = f"{skipped} binary or empty file(s)" if skipped else "no files"
        raise RopeValueError(
            f"data folder {str(root)!r} has no text to train on ({what}): expected text files"
        )
    if not val or not train:
        # Too few files for the hash split to put one on each side: the last file (by
        # name) validates and the rest train; with one file, split it by bytes.
        files = train + val
        if len(files) == 1:
            (data,) = files
            cut = int(len(data) * (1 - val_fraction))
            return Corpus(_stream([data[:cut]]), _stream([data[cut:]]), source, 1, 1)
        train, val = files[:-1], files[-1:]
    return Corpus(_stream(train), _stream(val), source, len(train), len(val))


def random_batch(
    data: torch.Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``data``: inputs and next-token targets, int64 ``[b, s]``.

    Start offsets come from ``generator`` only, so a run is reproducible from its seed and
    every process of a data-parallel job draws the same global batch.
    """
    check_int("batch_size", batch_size, minimum=1)
    check_int("seq_len", seq_len, minimum=1)
    if data.numel() < seq_len + 1:
        raise RopeValueError(
            f"seq_len={seq_len} is not allowed for {data.numel()} tokens of data: expected "
            f"at most {data.numel() - 1}"
        )
    starts = torch.randint(0, data.numel() - seq_len, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)
    window = data[idx].long()
    return window[:, :-1], window[:, 1:]
