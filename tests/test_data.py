"""Byte-level data: the stdlib corpus and its split, --data files and folders, bad data."""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

import pytest
import torch

from ropekit import RopeValueError
from ropekit_lab.data import is_text, load_corpus, random_batch, stdlib_root


@pytest.fixture(scope="module")
def stdlib_corpus():
    return load_corpus()


def test_stdlib_corpus_split_by_file_name(stdlib_corpus) -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    assert stdlib_root() == root
    files = sorted(
        p
        for p in root.rglob("*.py")
        if p.is_file()
        and p.stat().st_size > 0  # empty __init__.py files carry no text
        and not ({"site-packages", "dist-packages"} & set(p.relative_to(root).parts))
    )
    val = [p for p in files if zlib.crc32(p.relative_to(root).as_posix().encode()) % 1000 < 50]
    # The split is the crc32 rule, computed independently here.
    assert stdlib_corpus.val_files == len(val) > 0
    assert stdlib_corpus.train_files + stdlib_corpus.val_files <= len(files)
    assert stdlib_corpus.train_files > 10 * stdlib_corpus.val_files
    # A distinctive slice of a validation file occurs in the validation stream, not in training.
    probe = max(val, key=lambda p: p.stat().st_size).read_bytes()
    snippet = probe[len(probe) // 2 : len(probe) // 2 + 200]
    assert snippet in stdlib_corpus.val.numpy().tobytes()
    assert snippet not in stdlib_corpus.train.numpy().tobytes()
    assert stdlib_corpus.train.dtype == torch.uint8


def test_stdlib_corpus_is_deterministic(stdlib_corpus) -> None:
    again = load_corpus()
    assert torch.equal(again.train, stdlib_corpus.train)
    assert torch.equal(again.val, stdlib_corpus.val)


def test_single_file_is_split_at_the_tail(tmp_path: Path) -> None:
    text = "".join(f"line {i}\n" for i in range(1000)).encode()
    f = tmp_path / "a.txt"
    f.write_bytes(text)
    c = load_corpus(f, val_fraction=0.1)
    cut = int(len(text) * 0.9)
    assert c.train.numpy().tobytes() == text[:cut]
    assert c.val.numpy().tobytes() == text[cut:]


def test_folder_skips_binary_and_hidden_files(tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i} " * 20)
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("hidden " * 50)
    c = load_corpus(tmp_path, val_fraction=0.2)
    assert c.train_files + c.val_files == 40
    everything = c.train.numpy().tobytes() + c.val.numpy().tobytes()
    assert b"hidden" not in everything and b"\x00" not in everything
    val_names = {f"doc{i:02d}.txt" for i in range(40)
                 if zlib.crc32(f"doc{i:02d}.txt".encode()) % 1000 < 200}  # fmt: skip
    assert c.val_files == len(val_names)


def test_folder_with_one_text_file_falls_back_to_byte_split(tmp_path: Path) -> None:
    (tmp_path / "only.txt").write_text("hello world\n" * 100)
    c = load_corpus(tmp_path)
    assert c.train.numel() > 0 and c.val.numel() > 0
    assert c.train.numel() + c.val.numel() == 1200


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        (b"", "empty"),
        (b"\x00\x01\x02" * 100, "binary"),
        (bytes(range(1, 32)) * 10, "binary"),
        (b"a", "too few"),
    ],
)
def test_bad_data_file_has_a_clear_error(tmp_path: Path, content, match) -> None:
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RopeValueError, match=match):
        load_corpus(path)


def test_folder_without_text_has_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RopeValueError, match="no text"):
        load_corpus(tmp_path)  # empty folder
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "b.txt").write_bytes(b"")
    with pytest.raises(RopeValueError, match="2 binary or empty"):
        load_corpus(tmp_path)


def test_is_text() -> None:
    assert is_text("def f():\n    return 'é'\n".encode())
    assert is_text("café au lait\n".encode("latin-1"))  # legacy 8-bit text
    assert not is_text("text".encode("utf-16"))  # NUL bytes
    assert not is_text(bytes(range(1, 32)) * 10)
    assert not is_text(b"")


def test_random_batch_windows_and_targets() -> None:
    data = torch.arange(200, dtype=torch.uint8)
    x, y = random_batch(data, 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the next bytes
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 15, dtype=torch.long))  # contiguous
    assert int(y.max()) < 200
    x2, _ = random_batch(data, 8, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    x3, _ = random_batch(data, 8, 16, torch.Generator().manual_seed(1))
    assert not torch.equal(x, x3)
    # Every start offset, including the last valid one, can occur.
    g = torch.Generator().manual_seed(0)
    starts = torch.cat([random_batch(torch.arange(20, dtype=torch.uint8), 64, 16, g)[0][:, 0]
                        for _ in range(20)])  # fmt: skip
    assert set(starts.tolist()) == set(range(4))
    with pytest.raises(RopeValueError, match="seq_len"):
        random_batch(data, 1, 200, g)
