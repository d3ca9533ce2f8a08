"""The benchmarks' interfaces, not their timings (those belong in benchmarks/ runs):
``ropekit-lab bench``, the shared peer list and harness, and the scripts' command lines
(``benchmarks/bench_rope.py``'s flags are quoted by others; ``bench_triton.py`` needs a
GPU to run but must import and parse here)."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ropekit
from ropekit_lab.bench import cpu, harness, peers
from ropekit_lab.cli import bench

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_subcommand_parses_and_formats() -> None:
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--rounds", "2", "--shapes", "decode", "--compile"])
    assert args.func is bench.run and args.rounds == 2 and args.shapes == ["decode"]
    assert args.compile and not args.first_call
    assert tuple(sorted({c.shape for c in cpu.CASES})) == bench.SHAPES
    case = next(c for c in cpu.CASES if c.shape == "decode" and c.dtype == torch.bfloat16)
    result = cpu.CaseResult(case, 1.5e-5, {"ropekit auto": 2.0}, {}, {"torchtune": "missing"})
    text = cpu.format_report([result])
    assert "decode: q and k 32×32×1×128 at offset 1000" in text
    assert "| copy_ of q and k (absolute) | 15.0 µs |" in text
    assert "| ropekit auto | 2.00× |" in text
    assert "torchtune: missing" in text
    with pytest.raises(ropekit.RopeValueError, match="--rounds=0"):
        bench.run(argparse.Namespace(rounds=0, compile=False, first_call=False, shapes=None))


def test_cpu_rows_are_unchanged() -> None:
    """The row names others quote (docs/performance.md), in report order."""
    assert [name for name, _, _ in cpu.IMPLEMENTATIONS] == [
        "copy_ (baseline)", "clone", "ropekit auto", "ropekit auto, interleaved",
        "ropekit auto, out=", "ropekit auto, in place", "ropekit RotaryEmbedding (+tables)",
        "ropekit backend=cpu", "ropekit backend=torch", "ropekit backend=reference",
        "ropekit backend=compiled", "HF apply_rotary_pos_emb", "Meta complex form",
        "torchtune", "rotary-embedding-torch", "torch.compile fused (fp32 math)",
    ]  # fmt: skip
    assert [(c.shape, c.dims, c.label) for c in cpu.CASES][:2] == [
        ("prefill", "1×32×4096×128", "fp32 fwd"), ("prefill", "1×32×4096×128", "bf16 fwd"),
    ]  # fmt: skip


def test_one_peer_list_for_cpu_and_gpu() -> None:
    keys = [p.key for p in peers.PEERS]
    assert len(set(keys)) == len(keys) and len({p.name for p in peers.PEERS}) == len(keys)
    assert [p.key for p in peers.peers_for("cpu")] == [
        "hf", "meta", "torchtune", "rotary_emb_torch", "torch.compile"
    ]  # fmt: skip
    assert [p.key for p in peers.peers_for("cuda")] == [*keys]
    assert all(len(p.key) <= 17 for p in peers.PEERS)  # bench_triton.py's column


@pytest.mark.parametrize("key", ["hf", "meta", "torchtune", "rotary_emb_torch", "liger"])
def test_peers_rotate_like_ropekit_or_say_why_not(key: str) -> None:
    """Every peer computes RoPE (half-split for all but Meta's interleaved complex form)
    at the case's positions, or returns why it cannot run here."""
    b, h, s, d, offset = 2, 3, 5, 16, 7
    c, sn = ropekit.cos_sin(ropekit.inv_freq(d), torch.arange(offset, offset + s))
    tables = peers.Tables(d, s, offset, torch.float32, c, sn)
    peer = next(p for p in peers.PEERS if p.key == key)
    made = peer.make(tables)
    if isinstance(made, str):
        assert key in ("liger", "torchtune", "rotary_emb_torch", "hf") and made
        return
    q, k = torch.randn(b, h, s, d), torch.randn(b, h, s, d)
    got = made(q, k)
    assert peer.interleaved == (key in ("meta", "torchtune", "rotary_emb_torch"))
    want = ropekit.apply_rope_qk(q, k, c, sn, interleaved=peer.interleaved)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_harness_ratios_and_calibration() -> None:
    calls = {"base": 0, "twice": 0}

    def base() -> None:
        calls["base"] += 1

    def twice() -> None:
        calls["twice"] += 1
        sum(range(50))

    inner = harness.calibrate(base, target_seconds=1e-4)
    assert 1 <= inner <= 1000
    ratios, base_times = harness.interleaved_ratios(
        {"base": base, "twice": twice}, "base", rounds=3, inner=inner
    )
    assert ratios["base"] == 1.0 and ratios["twice"] > 0 and len(base_times) == 3
    assert calls["base"] >= 3 * inner  # the timed block runs exactly `inner` calls


def test_machine_load_warns_when_busy() -> None:
    idle = harness.MachineLoad((0.1, 0.2, 0.3), 2)
    busy = harness.MachineLoad((1.66, 1.2, 1.0), 2)
    assert not idle.busy and idle.warning() is None
    assert idle.describe() == "load average 0.10 / 0.20 / 0.30 (1/5/15 min) on 2 CPUs"
    assert busy.busy and "WARNING: the machine is busy (load 1.66 on 2 CPUs" in busy.warning()
    assert "unknown" in harness.MachineLoad(None, 4).describe()
    now = harness.machine_load()
    assert now.cpus >= 1


def test_report_has_one_header_with_the_load(monkeypatch) -> None:
    """The header is in the report once; the log gets progress and, if busy, the warning."""
    busy = harness.MachineLoad((1.9, 1.5, 1.2), 2)
    monkeypatch.setattr(cpu, "machine_load", lambda: busy)
    monkeypatch.setattr(cpu, "CASES", tuple(c for c in cpu.CASES if c.shape == "decode")[:1])
    monkeypatch.setattr(cpu, "measure_tables", lambda rounds: {"_fp32_seconds": 1e-3, "x": 1.0})
    fake = cpu.CaseResult(cpu.CASES[0], 2e-5, {"clone": 1.1}, {}, {})
    monkeypatch.setattr(cpu, "measure_case", lambda *a: fake)
    logged: list[str] = []
    report = cpu.run_benchmark(rounds=1, with_compile=False, first_call=False, log=logged.append)
    assert report.count("interleaved rounds, medians of per-round ratios") == 1
    assert "machine before the run: load average 1.90" in report
    assert report.count("WARNING: the machine is busy") == 1
    assert not any("interleaved rounds" in line for line in logged)
    assert any("WARNING" in line for line in logged)


def test_bench_rope_keeps_its_flags() -> None:
    parser = _script("bench_rope").build_parser()
    args = parser.parse_args(["--rounds", "3", "--no-first-call", "--shapes", "prefill", "decode"])
    assert args.rounds == 3 and args.no_first_call and args.shapes == ["prefill", "decode"]
    assert not args.no_compile and not args.default_malloc
    assert parser.parse_args([]).rounds == 21
    with pytest.raises(SystemExit):
        parser.parse_args(["--shapes", "nope"])


@pytest.mark.parametrize("script", ["bench_rope", "bench_triton", "bench_hf_decode"])
def test_scripts_answer_help_without_a_gpu(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_bench_triton_imports_and_uses_the_shared_peers() -> None:
    pytest.importorskip("triton")
    module = _script("bench_triton")  # no arguments: the defaults (a CUDA run)
    assert module.ARGS.cases.startswith("prefill:bf16") and not module.ARGS.smoke
    assert module.peers_for is peers.peers_for
    assert not hasattr(module, "fused")  # the formula peer is the shared one


@pytest.mark.slow
def test_bench_triton_smoke_runs_on_cpu(tmp_path) -> None:
    """The GPU script's CPU mode (Triton's interpreter, tiny shapes) runs end to end with
    the shared peers, and checks each against the float64 formula in its own layout."""
    pytest.importorskip("triton")
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_triton.py"), "--smoke", "--cases",
         "decode:fp32", "--impls", "ropekit.qk_table,hf,meta", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    rows = {(r["impl"], r["mode"]): r for r in json.loads(out.read_text())["results"]}
    for impl in ("ropekit.qk_table", "hf", "meta"):
        # meta rotates float32 angles: ~1e-5 at position 4095; the others exact tables
        assert rows[(impl, "fwd")]["max_rel_err"] < 1e-4, rows[(impl, "fwd")]
