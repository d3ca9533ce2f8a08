"""The CPU benchmark: ropekit's backends against ``copy_``/``clone`` and the peers.

What ``ropekit-lab bench`` (5 rounds, no compiled rows) and ``benchmarks/bench_rope.py``
(21 rounds, compiled rows, first calls in a fresh process) run. The method is
:mod:`ropekit_lab.bench.harness`'s; the peers are :data:`ropekit_lab.bench.peers.PEERS`.

Gradients are measured as forward + backward with the gradients already allocated
(``torch.autograd.backward``), and ``.grad`` reset between calls. ropekit's rows use
precomputed float32 ``[s, n]`` tables, except the ``RotaryEmbedding`` row, which builds
them from the positions in every call. Missing peers are listed as unavailable, with
the reason.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ropekit.apply.api import apply_rope_qk
from ropekit.config import RopeConfig
from ropekit.frequencies.base import inv_freq
from ropekit.modules.rotary import RotaryEmbedding
from ropekit.tables.cos_sin import cos_sin

from .harness import (
    Step,
    calibrate,
    interleaved_ratios,
    keep_allocations_on_heap,
    machine_load,
    no_gc,
    time_block,
)
from .peers import Peer, Tables, peers_for

__all__ = [
    "BASELINE",
    "CASES",
    "IMPLEMENTATIONS",
    "Case",
    "CaseResult",
    "format_report",
    "measure_case",
    "run_benchmark",
]


@dataclass(frozen=True)
class Case:
    """One measured situation: ``q``/``k`` ``[b, h, s, d]`` at positions ``offset + arange(s)``."""

    shape: str  # prefill / training / decode
    b: int
    h: int
    s: int
    d: int
    dtype: torch.dtype
    backward: bool
    offset: int = 0

    @property
    def label(self) -> str:
        kind = "fwd+bwd" if self.backward else "fwd"
        return f"{_DTYPE_NAMES[self.dtype]} {kind}"

    @property
    def dims(self) -> str:
        return f"{self.b}×{self.h}×{self.s}×{self.d}"


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

CASES: tuple[Case, ...] = tuple(
    Case(shape, b, h, s, d, dtype, backward, offset)
    for shape, (b, h, s, d, offset), modes in (
        ("prefill", (1, 32, 4096, 128, 0), (False, True)),
        ("training", (8, 16, 1024, 64, 0), (False, True)),
        ("decode", (32, 32, 1, 128, 1000), (False,)),
    )
    for backward in modes
    for dtype in (torch.float32, torch.bfloat16)
)


@dataclass
class _Inputs:
    case: Case
    q: torch.Tensor
    k: torch.Tensor
    cos: torch.Tensor  # [s, n] float32 (ropekit, peers)
    sin: torch.Tensor
    grads: tuple[torch.Tensor, torch.Tensor] | None
    buffers: tuple[torch.Tensor, torch.Tensor]
    extra: dict[str, object] = field(default_factory=dict)

    def tables(self) -> Tables:
        c = self.case
        return Tables(c.d, c.s, c.offset, c.dtype, self.cos, self.sin)


def _make_inputs(case: Case) -> _Inputs:
    g = torch.Generator().manual_seed(0)
    shape = (case.b, case.h, case.s, case.d)
    q = torch.randn(shape, generator=g).to(case.dtype).requires_grad_(case.backward)
    k = torch.randn(shape, generator=g).to(case.dtype).requires_grad_(case.backward)
    positions = torch.arange(case.offset, case.offset + case.s)
    c, s = cos_sin(inv_freq(case.d), positions, dtype=torch.float32)
    grads = (
        torch.randn(shape, generator=g).to(case.dtype),
        torch.randn(shape, generator=g).to(case.dtype),
    )
    buffers = (torch.empty_like(q, requires_grad=False), torch.empty_like(k, requires_grad=False))
    return _Inputs(case, q, k, c, s, grads if case.backward else None, buffers)


def _wrap(inp: _Inputs, fn: Callable[[torch.Tensor, torch.Tensor], object]) -> Step:
    """A step: forward, plus backward into freshly reset ``.grad`` for backward cases."""
    q, k = inp.q, inp.k
    if inp.grads is None:
        return lambda: fn(q, k)
    grads = inp.grads

    def step() -> None:
        outs = fn(q, k)
        torch.autograd.backward(outs, grads)  # type: ignore[arg-type]
        q.grad = k.grad = None

    return step


Factory = Callable[[_Inputs], "Step | str"]


def _copy(inp: _Inputs) -> Step | str:
    qb, kb = inp.buffers
    q, k = inp.q.detach(), inp.k.detach()
    return lambda: (qb.copy_(q), kb.copy_(k))


def _clone(inp: _Inputs) -> Step | str:
    return _wrap(inp, lambda q, k: (q.clone(), k.clone()))


def _ropekit(backend: str, interleaved: bool = False) -> Factory:
    def make(inp: _Inputs) -> Step | str:
        c, s = inp.cos, inp.sin
        return _wrap(
            inp,
            lambda q, k: apply_rope_qk(q, k, c, s, interleaved=interleaved, backend=backend),
        )

    return make


def _ropekit_out(inp: _Inputs) -> Step | str:
    if inp.case.backward:
        return "out= is not differentiable"
    c, s, out = inp.cos, inp.sin, inp.buffers
    return lambda: apply_rope_qk(inp.q, inp.k, c, s, out=out)


def _ropekit_inplace(inp: _Inputs) -> Step | str:
    if inp.case.backward:
        return "leaves that require grad cannot be rotated in place"
    qb, kb = inp.buffers
    qb.copy_(inp.q)
    kb.copy_(inp.k)
    c, s = inp.cos, inp.sin
    return lambda: apply_rope_qk(qb, kb, c, s, inplace=True)


def _ropekit_module(inp: _Inputs) -> Step | str:
    rope = RotaryEmbedding(RopeConfig(head_dim=inp.case.d))
    offset = inp.case.offset
    return _wrap(inp, lambda q, k: rope(q, k, offset=offset))


def _peer(peer: Peer) -> Factory:
    def make(inp: _Inputs) -> Step | str:
        rotation = peer.make(inp.tables())
        return rotation if isinstance(rotation, str) else _wrap(inp, rotation)

    return make


BASELINE = "copy_ (baseline)"

#: (row name, factory, needs torch.compile), in report order: the baseline, clone,
#: ropekit's rows, then the peers that run on a CPU.
IMPLEMENTATIONS: tuple[tuple[str, Factory, bool], ...] = (
    (BASELINE, _copy, False),
    ("clone", _clone, False),
    ("ropekit auto", _ropekit("auto"), False),
    ("ropekit auto, interleaved", _ropekit("auto", interleaved=True), False),
    ("ropekit auto, out=", _ropekit_out, False),
    ("ropekit auto, in place", _ropekit_inplace, False),
    ("ropekit RotaryEmbedding (+tables)", _ropekit_module, False),
    ("ropekit backend=cpu", _ropekit("cpu"), False),
    ("ropekit backend=torch", _ropekit("torch"), False),
    ("ropekit backend=reference", _ropekit("reference"), False),
    ("ropekit backend=compiled", _ropekit("compiled"), True),
    *((p.name, _peer(p), p.compiles) for p in peers_for("cpu")),
)


@dataclass
class CaseResult:
    case: Case
    copy_seconds: float
    ratios: dict[str, float]  # median of per-round ratios to copy_
    first_call: dict[str, float]  # seconds of the first call (compilation, kernel load)
    unavailable: dict[str, str]


def measure_case(
    case: Case, rounds: int, with_compile: bool, log: Callable[[str], None]
) -> CaseResult:
    # Dynamo caches per code object: the ten cases (shape x dtype x grad mode) recompile the
    # same peer function ten times, and past the default limit of 8 it would silently fall
    # back to eager, timing the peer uncompiled.
    with (
        torch._dynamo.config.patch(recompile_limit=64),
        torch.set_grad_enabled(case.backward),  # the mode the steps are timed in
    ):
        return _measure_case(case, rounds, with_compile, log)


def _measure_case(
    case: Case, rounds: int, with_compile: bool, log: Callable[[str], None]
) -> CaseResult:
    inp = _make_inputs(case)
    steps: dict[str, Step] = {}
    first: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    for name, factory, compiles in IMPLEMENTATIONS:
        if compiles and not with_compile:
            continue
        made = factory(inp)
        if isinstance(made, str):
            unavailable[name] = made
            continue
        t0 = time.perf_counter()
        made()  # first call: compilation, kernel build/load, caches
        first[name] = time.perf_counter() - t0
        made()
        steps[name] = made
    inner = calibrate(steps[BASELINE])
    ratios, copies = interleaved_ratios(steps, BASELINE, rounds, inner)
    log(f"  {case.shape} {case.dims} {case.label}: copy_ {statistics.median(copies) * 1e3:.3f} ms")
    return CaseResult(case, statistics.median(copies), ratios, first, unavailable)


def measure_tables(rounds: int, positions: int = 131072, head_dim: int = 128) -> dict[str, float]:
    """Median time ratios of building ``[positions, head_dim // 2]`` cos+sin tables."""
    freqs = inv_freq(head_dim, 500000.0)
    pos = torch.arange(positions)
    f32 = freqs.float()

    def fp32() -> object:  # the common recipe: float32 angle, float32 trig
        angle = torch.outer(pos.float(), f32)
        return angle.cos(), angle.sin()

    def exact() -> object:  # ropekit: float64 angle and trig, one rounding
        return cos_sin(freqs, pos, dtype=torch.float32)

    def exact_bf16() -> object:
        return cos_sin(freqs, pos, dtype=torch.bfloat16)

    base = "fp32 angle + fp32 trig (common)"
    fns = {base: fp32, "ropekit.cos_sin → fp32": exact, "ropekit.cos_sin → bf16": exact_bf16}
    for fn in fns.values():
        fn()
    # Fixed order here (not rotated): as these figures were first measured.
    per: dict[str, list[float]] = {k: [] for k in fns}
    with no_gc():
        for _ in range(rounds):
            t = {k: time_block(fn, 1) for k, fn in fns.items()}
            for k in fns:
                per[k].append(t[k] / t[base])
    base_time = statistics.median(time_block(fp32, 1) for _ in range(3))
    out = {k: statistics.median(v) for k, v in per.items()}
    out["_fp32_seconds"] = base_time
    return out


_FIRST_CALL_SCRIPT = """
import time, torch
t0 = time.perf_counter()
import ropekit
from ropekit.apply import apply_rope_qk
t1 = time.perf_counter()
q = torch.randn(1, 8, 16, 64); k = torch.randn(1, 8, 16, 64)
c, s = ropekit.cos_sin(ropekit.inv_freq(64), torch.arange(16))
t2 = time.perf_counter()
apply_rope_qk(q, k, c, s)
t3 = time.perf_counter()
apply_rope_qk(q, k, c, s)
t4 = time.perf_counter()
print(t1 - t0, t3 - t2, t4 - t3)
"""


def measure_first_call() -> dict[str, tuple[float, float, float]]:
    """Fresh-process costs: (import ropekit, first apply, second apply) in seconds,
    with an empty kernel cache (build) and then a warm one (load)."""
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "ROPEKIT_CACHE_DIR": cache}
        for label in ("cold cache (compiles the CPU kernel)", "warm cache (loads it)"):
            done = subprocess.run(
                [sys.executable, "-c", _FIRST_CALL_SCRIPT], env=env, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(f"first-call probe failed: {done.stderr.strip()[-300:]}")
            imp, first, second = (float(v) for v in done.stdout.split())
            results[label] = (imp, first, second)
    return results


def _fmt(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def format_report(results: list[CaseResult]) -> str:
    """The per-shape markdown tables of ``results`` (one column per dtype and mode)."""
    lines: list[str] = []
    shapes: dict[str, list[CaseResult]] = {}
    for res in results:
        shapes.setdefault(res.case.shape, []).append(res)
    for shape, group in shapes.items():
        case0 = group[0].case
        where = f" at offset {case0.offset}" if case0.offset else ""
        lines.append(f"\n### {shape}: q and k {case0.dims}{where} (time / copy_ of q and k)\n")
        header = "| implementation | " + " | ".join(r.case.label for r in group) + " |"
        lines += [header, "|---|" + "---:|" * len(group)]
        copy_row = " | ".join(
            f"{r.copy_seconds * 1e3:.3f} ms"
            if r.copy_seconds >= 1e-3
            else f"{r.copy_seconds * 1e6:.1f} µs"
            for r in group
        )
        lines.append(f"| copy_ of q and k (absolute) | {copy_row} |")
        names = [name for name, _, _ in IMPLEMENTATIONS if name != BASELINE]
        for name in names:
            cells = []
            seen = False
            for r in group:
                if name in r.ratios:
                    cells.append(_fmt(r.ratios[name]))
                    seen = True
                else:
                    cells.append("n/a")
            if seen:
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    unavailable: dict[str, str] = {}
    for res in results:
        for name, why in res.unavailable.items():
            if not why.startswith(("out=", "leaves")):
                unavailable.setdefault(name, why)
    if unavailable:
        lines.append("\nUnavailable: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
    return "\n".join(lines)


def run_benchmark(
    *,
    rounds: int,
    with_compile: bool,
    first_call: bool,
    shapes: tuple[str, ...] | None = None,
    heap: bool = True,
    log: Callable[[str], None] = print,
) -> str:
    """Run the cases (all, or those of ``shapes``) and return the report as markdown.

    The report starts with one header (versions, threads, method, the machine's load and,
    if busy, a warning). ``log`` gets progress only: a warning at the start when the
    machine is busy, then one line per case. ``heap=False`` keeps glibc's default
    allocator settings (fresh large outputs are page-faulted on every call), to measure
    what ``out=``/in-place save.
    """
    from ropekit.apply.cpu import cpu_kernel_status

    load = machine_load()
    heap = heap and keep_allocations_on_heap()
    out = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"{rounds} interleaved rounds, medians of per-round ratios; "
        f"large allocations kept on the heap: {'yes' if heap else 'no'}",
        f"CPU kernel: {cpu_kernel_status()}",
        f"machine before the run: {load.describe()}",
    ]
    warning = load.warning()
    if warning:
        out.append(warning)
        log(warning)
    selected = [c for c in CASES if not shapes or c.shape in shapes]
    log(f"measuring {len(selected)} cases, {rounds} rounds each (the report follows):")
    results = []
    first_calls: dict[str, float] = {}
    for case in selected:
        res = measure_case(case, rounds, with_compile, log)
        results.append(res)
        for name in ("ropekit backend=compiled", "torch.compile fused (fp32 math)"):
            if name in res.first_call:
                first_calls[f"{name}, {case.shape} {case.label}"] = res.first_call[name]
    out.append(format_report(results))
    tables = measure_tables(max(5, rounds))
    out.append(
        f"\n### cos/sin tables for 131072 positions × 64 pairs (time / fp32 recipe, "
        f"which takes {tables.pop('_fp32_seconds') * 1e3:.1f} ms)\n"
    )
    out += ["| tables | ratio |", "|---|---:|"]
    out += [f"| {k} | {v:.2f}× |" for k, v in tables.items()]
    if first_calls:
        out.append("\n### first calls of torch.compile'd functions in this process (seconds)\n")
        out += [f"- {k}: {v:.2f} s" for k, v in first_calls.items()]
    if first_call:
        out.append("\n### a fresh process: import ropekit, first and second apply_rope_qk (auto)\n")
        for label, (imp, first, second) in measure_first_call().items():
            out.append(
                f"- {label}: import {imp:.2f} s, first call {first:.3f} s, second {second * 1e3:.2f} ms"
            )
    out.append(f"\nmachine after the run: {machine_load().describe()} (this run included)")
    return "\n".join(out)
