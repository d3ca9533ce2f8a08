"""Context-parallel positions (shard_positions) and data-parallel training, on CPU/gloo.

The two-process checks run one ``torchrun`` job (2 processes, gloo on 127.0.0.1) whose
worker script is written below; each rank writes what it computed and the tests compare.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ropekit import RopeValueError
from ropekit.distributed import shard_indices, shard_positions, unshard
from ropekit_lab.model import ModelConfig, Transformer
from ropekit_lab.train import TrainConfig, train

# --------------------------------------------------------------------------- one process


@pytest.mark.parametrize(
    ("seq_len", "world", "scheme", "cu", "expected_idx", "expected_pos"),
    [
        (8, 2, "contiguous", None, [[0, 1, 2, 3], [4, 5, 6, 7]], None),
        (8, 2, "zigzag", None, [[0, 1, 6, 7], [2, 3, 4, 5]], None),
        (16, 4, "zigzag", None,
         [[0, 1, 14, 15], [2, 3, 12, 13], [4, 5, 10, 11], [6, 7, 8, 9]], None),
        (8, 2, "contiguous", [0, 3, 8], [[0, 1, 2, 3], [4, 5, 6, 7]],
         [[0, 1, 2, 0], [1, 2, 3, 4]]),
        (12, 2, "zigzag", [0, 4, 12], [[0, 3, 4, 5, 10, 11], [1, 2, 6, 7, 8, 9]],
         [[0, 3, 0, 1, 6, 7], [1, 2, 2, 3, 4, 5]]),
        (6, 1, "zigzag", [0, 2, 6], [[0, 1, 2, 3, 4, 5]], [[0, 1, 0, 1, 2, 3]]),
    ],
)  # fmt: skip
def test_shards_by_hand(seq_len, world, scheme, cu, expected_idx, expected_pos) -> None:
    expected_pos = expected_pos or expected_idx
    for rank in range(world):
        idx = shard_indices(seq_len, world, rank, scheme=scheme, cu_seqlens=cu)
        pos = shard_positions(seq_len, world, rank, scheme=scheme, cu_seqlens=cu)
        assert idx.tolist() == expected_idx[rank]
        assert pos.tolist() == expected_pos[rank]
        assert idx.dtype == pos.dtype == torch.int64


@st.composite
def layouts(draw):
    world = draw(st.integers(1, 4))
    scheme = draw(st.sampled_from(["contiguous", "zigzag"]))
    unit = 2 * world if scheme == "zigzag" else 1
    docs = draw(st.lists(st.integers(1, 5), min_size=1, max_size=5))
    lengths = [unit * n for n in docs]
    seq_len = sum(lengths)
    if scheme == "contiguous":  # the packed stream must split evenly
        pad = (-seq_len) % world
        lengths[-1] += pad
        seq_len += pad
    packed = draw(st.booleans())
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return seq_len, world, scheme, (cu if packed else None)


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_shards_partition_the_sequence_and_positions_restart(layout) -> None:
    seq_len, world, scheme, cu = layout
    starts = [0] if cu is None else cu[:-1]
    # Oracle: position of token t = t - (start of the last document starting at or before t).
    oracle = [t - max(s for s in starts if s <= t) for t in range(seq_len)]
    shards = [shard_indices(seq_len, world, r, scheme=scheme, cu_seqlens=cu) for r in range(world)]
    assert sorted(torch.cat(shards).tolist()) == list(range(seq_len))
    assert {len(s) for s in shards} == {seq_len // world}
    for r, idx in enumerate(shards):
        pos = shard_positions(seq_len, world, r, scheme=scheme, cu_seqlens=cu)
        assert pos.tolist() == [oracle[t] for t in idx.tolist()]
    if scheme == "zigzag":
        # Causal work of a token ~ its position + 1; zigzag gives every rank the same.
        work = {sum(oracle[t] + 1 for t in idx.tolist()) for idx in shards}
        assert len(work) == 1
    x = torch.randn(2, seq_len, 3, dtype=torch.float64)
    assert torch.equal(unshard([x[:, s] for s in shards], dim=1, scheme=scheme, cu_seqlens=cu), x)


def test_contiguous_causal_work_is_unbalanced() -> None:
    # The reason zigzag exists: the last contiguous shard does the most attention work.
    work = [int((shard_positions(64, 4, r) + 1).sum()) for r in range(4)]
    assert work == sorted(work) and work[-1] > 3 * work[0]


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((10, 4, 0), {}, "multiple of 4"),
        ((12, 4, 0), {"scheme": "zigzag"}, "multiple of 8"),
        ((8, 2, 2), {}, "rank"),
        ((8, 0, 0), {}, "world_size"),
        ((8, 2, 0), {"scheme": "ring"}, "scheme"),
        ((8, 2, 0), {"cu_seqlens": [1, 8]}, "from 0 to the number of tokens"),
        ((8, 2, 0), {"cu_seqlens": [0, 6]}, "from 0 to the number of tokens"),
        # one rule for cu_seqlens everywhere (ropekit.positions): empty documents are
        # allowed, as in flash-attn; a boundary that goes back is not
        ((8, 2, 0), {"cu_seqlens": [0, 5, 4, 8]}, "non-decreasing"),
        ((8, 2, 0), {"cu_seqlens": torch.tensor([0.0, 8.0])}, "integer"),
        ((12, 2, 0), {"scheme": "zigzag", "cu_seqlens": [0, 6, 12]}, "document 0"),
    ],
)
def test_bad_shard_arguments(args, kwargs, match) -> None:
    with pytest.raises(RopeValueError, match=match):
        shard_positions(*args, **kwargs)


# --------------------------------------------------------------------------- two processes

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    from ropekit import RopeConfig, RotaryEmbedding
    from ropekit.scaling import SCALINGS
    from ropekit.distributed import shard_indices, shard_positions
    from ropekit_lab.model import ModelConfig, Transformer
    from ropekit_lab.train import TrainConfig, train

    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    # 1. Context parallelism: rotate shards at their global positions, gather, compare.
    S, d = 48, 16
    yarn = SCALINGS["yarn"](factor=4.0, original_max_position_embeddings=16)
    rope = RotaryEmbedding(RopeConfig(head_dim=d, scaling=yarn, max_position=64))
    g = torch.Generator().manual_seed(0)  # the same full tensors on every rank
    q = torch.randn(2, 4, S, d, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, S, d, generator=g, dtype=torch.float64)
    diffs = {}
    for scheme in ("contiguous", "zigzag"):
        for cu in (None, [0, 8, 20, 48]):
            if scheme == "zigzag" and cu is not None:
                cu = [0, 8, 24, 48]  # zigzag packs documents of multiples of 2W
            # Oracle positions of the whole sequence, written out directly.
            starts = [0] if cu is None else cu[:-1]
            full_pos = torch.tensor([t - max(s for s in starts if s <= t) for t in range(S)])
            q_ref, k_ref = rope(q, k, positions=full_pos)
            idx = shard_indices(S, world, rank, scheme=scheme, cu_seqlens=cu)
            pos = shard_positions(S, world, rank, scheme=scheme, cu_seqlens=cu)
            q_loc, k_loc = rope(q[:, :, idx].contiguous(), k[:, :, idx].contiguous(), positions=pos)
            parts = {}
            for name, t in (("idx", idx), ("q", q_loc), ("k", k_loc)):
                bucket = [torch.empty_like(t) for _ in range(world)]
                dist.all_gather(bucket, t.contiguous())
                parts[name] = bucket
            q_cat, k_cat = torch.empty_like(q), torch.empty_like(k)
            for r in range(world):
                q_cat[:, :, parts["idx"][r]] = parts["q"][r]
                k_cat[:, :, parts["idx"][r]] = parts["k"][r]
            diffs[f"{scheme}/{'packed' if cu else 'plain'}"] = max(
                float((q_cat - q_ref).abs().max()), float((k_cat - k_ref).abs().max())
            )

    # 2. Data parallelism: the trainer under torchrun, global batch 8 split 4 + 4.
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16))
    data = torch.frombuffer(bytearray(open(sys.argv[2], "rb").read()), dtype=torch.uint8)
    result = train(model, data, TrainConfig(steps=5, batch_size=8, warmup_steps=1), progress=False)
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"world": world, "diffs": diffs, "losses": result.losses}, f)
    dist.destroy_process_group()
    """
)

TEXT = b"def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    (out / "worker.py").write_text(WORKER)
    (out / "data.txt").write_bytes(TEXT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(out / "worker.py"), str(out), str(out / "data.txt"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_context_parallel_rotation_equals_whole_sequence(two_ranks: Path) -> None:
    for rank in (0, 1):
        report = json.loads((two_ranks / f"rank{rank}.json").read_text())
        assert report["world"] == 2
        assert set(report["diffs"]) == {
            "contiguous/plain", "contiguous/packed", "zigzag/plain", "zigzag/packed"
        }  # fmt: skip
        for case, diff in report["diffs"].items():
            assert diff <= 1e-12, (rank, case, diff)


def test_data_parallel_ranks_in_sync_and_match_one_process(two_ranks: Path) -> None:
    w0 = torch.load(two_ranks / "rank0.pt")
    w1 = torch.load(two_ranks / "rank1.pt")
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key  # replicas never diverge
    l0 = json.loads((two_ranks / "rank0.json").read_text())["losses"]
    l1 = json.loads((two_ranks / "rank1.json").read_text())["losses"]
    assert l0 == l1 and len(l0) == 5
    # One process, the same global batch of 8: the same trajectory up to float sums.
    torch.manual_seed(0)
    single = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16))
    data = torch.frombuffer(bytearray(TEXT), dtype=torch.uint8)
    result = train(single, data, TrainConfig(steps=5, batch_size=8, warmup_steps=1), progress=False)
    assert result.losses == pytest.approx(l0, rel=1e-5)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(w0[key], value, rtol=1e-4, atol=1e-5)
    # ... and a different global batch (another seed) would not match: the test can fail.
    torch.manual_seed(0)
    other = Transformer(single.config)
    train(other, data, TrainConfig(steps=5, batch_size=8, warmup_steps=1, seed=1), progress=False)
    assert max(float((other.state_dict()[k] - w0[k]).abs().max()) for k in w0) > 1e-3
