"""``ropekit bench``: how fast RoPE runs here, relative to copying q and k.

RoPE is elementwise and memory-bound: its floor is reading q and k once and writing them
once, i.e. ``copy_`` of q and k into preallocated buffers. Every figure is a ratio to that
copy, measured in the same round, so machine load and clock changes cancel out.

Method (one process):

* rounds are interleaved: each round times every implementation once (in a rotating
  order), and the reported figure is the median over rounds of ``t_impl / t_copy``;
* small cases repeat the call until the copy takes ~2 ms, so timer resolution and
  Python overhead are measured, not rounded away;
* large allocations stay on the heap (``mallopt(M_MMAP_MAX=0)`` and a high
  ``M_TRIM_THRESHOLD``, glibc only): with glibc's defaults every fresh output of
  32 MiB or more is a new ``mmap`` that is page-faulted on every call, which makes even
  ``clone()`` ~5x ``copy_`` and would hide the kernels' own speed;
* gradients are measured as forward + backward with the gradients already allocated
  (``torch.autograd.backward``), and ``.grad`` reset between calls.

Peers (each used as its documentation shows, with tables precomputed where the library
lets the caller do so): Hugging Face ``apply_rotary_pos_emb`` (Llama), Meta's complex
form (written here from Meta's reference ``apply_rotary_emb``: benchmark only),
torchtune's ``RotaryPositionalEmbeddings`` (its file loaded by itself when ``import
torchtune`` fails for want of torchao), ``rotary-embedding-torch``, and a
``torch.compile``'d fused ``cat(x1 c - x2 s, x2 c + x1 s)`` computed in float32 (each half
cast back before the ``cat``, the faster form). Missing peers are listed as unavailable,
with the reason. ropekit's rows use precomputed float32 ``[s, n]`` tables, except the
``RotaryEmbedding`` row, which builds them from the positions in every call.

``benchmarks/bench_rope.py`` runs the full version (more rounds, compiled rows, the cost
of a first call in a fresh process).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..apply.api import apply_rope_qk
from ..config import RopeConfig
from ..frequencies.base import inv_freq
from ..modules.rotary import RotaryEmbedding
from ..tables.cos_sin import cos_sin

__all__ = ["CASES", "Case", "keep_allocations_on_heap", "register", "run", "run_benchmark"]

Step = Callable[[], object]


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


# ----------------------------------------------------------------------------- malloc


def keep_allocations_on_heap() -> bool:
    """Make glibc serve large allocations from the heap and keep freed memory (see module doc).

    Returns False where this is not glibc (nothing changed). Affects this process only.
    """
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1
        return ok and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------- peers


def _meta_complex(q: torch.Tensor, k: torch.Tensor, freqs_cis: torch.Tensor):
    # Meta's apply_rotary_emb (llama/model.py), for [b, h, s, d] tensors: freqs_cis [s, n].
    q_ = torch.view_as_complex(q.float().reshape(*q.shape[:-1], -1, 2))
    k_ = torch.view_as_complex(k.float().reshape(*k.shape[:-1], -1, 2))
    q_out = torch.view_as_real(q_ * freqs_cis).flatten(-2)
    k_out = torch.view_as_real(k_ * freqs_cis).flatten(-2)
    return q_out.type_as(q), k_out.type_as(k)


def _fused(q: torch.Tensor, k: torch.Tensor, c: torch.Tensor, s: torch.Tensor):
    # Each half is cast back before the cat: Inductor then fuses q and k into one loop
    # (casting after the cat is ~3x slower in bf16).
    def one(x: torch.Tensor) -> torch.Tensor:
        n = c.shape[-1]
        a, b = x[..., :n].float(), x[..., n:].float()
        return torch.cat(((a * c - b * s).to(x.dtype), (b * c + a * s).to(x.dtype)), dim=-1)

    return one(q), one(k)


@dataclass
class _Inputs:
    case: Case
    q: torch.Tensor
    k: torch.Tensor
    cos: torch.Tensor  # [s, n] float32 (ropekit, fused peer)
    sin: torch.Tensor
    grads: tuple[torch.Tensor, torch.Tensor] | None
    buffers: tuple[torch.Tensor, torch.Tensor]
    extra: dict[str, object] = field(default_factory=dict)


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


def _hf(inp: _Inputs) -> Step | str:
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    except ImportError as err:
        return f"transformers not importable ({err})"
    # LlamaRotaryEmbedding returns [b, s, d] tables (cat(freqs, freqs)) cast to x.dtype.
    cos = torch.cat((inp.cos, inp.cos), -1)[None].to(inp.case.dtype)
    sin = torch.cat((inp.sin, inp.sin), -1)[None].to(inp.case.dtype)
    return _wrap(inp, lambda q, k: apply_rotary_pos_emb(q, k, cos, sin))


def _meta(inp: _Inputs) -> Step | str:
    # Meta's precompute_freqs_cis: float32 angles, polar form.
    case = inp.case
    angle = torch.outer(
        torch.arange(case.offset, case.offset + case.s).float(), inv_freq(case.d).float()
    )
    freqs_cis = torch.polar(torch.ones_like(angle), angle)
    return _wrap(inp, lambda q, k: _meta_complex(q, k, freqs_cis))


def _torchtune_rope() -> type | str:
    """torchtune's ``RotaryPositionalEmbeddings`` class, or why it is unavailable.

    ``import torchtune`` refuses to run without torchao (not installable here), but the
    class's own file imports only torch: load that file by itself, unmodified.
    """
    import importlib.util

    try:
        from torchtune.modules import RotaryPositionalEmbeddings

        return RotaryPositionalEmbeddings
    except Exception as err:  # torchtune raises a plain Exception without torchao
        why = str(err).strip().splitlines()[0][:60]
    spec = importlib.util.find_spec("torchtune")
    if spec is None or not spec.submodule_search_locations:
        return f"torchtune not installed ({why})"
    path = os.path.join(spec.submodule_search_locations[0], "modules", "position_embeddings.py")
    file_spec = importlib.util.spec_from_file_location("_torchtune_position_embeddings", path)
    if file_spec is None or file_spec.loader is None or not os.path.isfile(path):
        return f"torchtune not importable ({why})"
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module.RotaryPositionalEmbeddings


def _torchtune(inp: _Inputs) -> Step | str:
    RotaryPositionalEmbeddings = _torchtune_rope()
    if isinstance(RotaryPositionalEmbeddings, str):
        return RotaryPositionalEmbeddings
    case = inp.case
    rope = RotaryPositionalEmbeddings(case.d, max_seq_len=case.offset + case.s)
    pos = torch.arange(case.offset, case.offset + case.s)
    # torchtune takes [b, s, h, d]: feed transposed views, as a model would.
    return _wrap(
        inp,
        lambda q, k: (
            rope(q.transpose(1, 2), input_pos=pos).transpose(1, 2),
            rope(k.transpose(1, 2), input_pos=pos).transpose(1, 2),
        ),
    )


def _rotary_embedding_torch(inp: _Inputs) -> Step | str:
    try:
        from rotary_embedding_torch import RotaryEmbedding as Rot
    except ImportError as err:
        return f"rotary-embedding-torch not importable ({err})"
    rot = Rot(dim=inp.case.d, cache_max_seq_len=max(8192, inp.case.offset + inp.case.s))
    offset = inp.case.offset
    return _wrap(
        inp,
        lambda q, k: (
            rot.rotate_queries_or_keys(q, offset=offset),
            rot.rotate_queries_or_keys(k, offset=offset),
        ),
    )


def _compiled_fused(inp: _Inputs) -> Step | str:
    fused = torch.compile(_fused)
    c, s = inp.cos, inp.sin
    return _wrap(inp, lambda q, k: fused(q, k, c, s))


#: (row name, factory, needs torch.compile)
IMPLEMENTATIONS: tuple[tuple[str, Factory, bool], ...] = (
    ("copy_ (baseline)", _copy, False),
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
    ("HF apply_rotary_pos_emb", _hf, False),
    ("Meta complex form", _meta, False),
    ("torchtune", _torchtune, False),
    ("rotary-embedding-torch", _rotary_embedding_torch, False),
    ("torch.compile fused (fp32 math)", _compiled_fused, True),
)


# ----------------------------------------------------------------------------- timing


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _time(step: Step, inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        step()
    return (time.perf_counter() - t0) / inner


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
    base = "copy_ (baseline)"
    single = statistics.median(_time(steps[base], 1) for _ in range(5))
    inner = max(1, min(1000, round(2e-3 / max(single, 1e-9))))
    names = list(steps)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    copies: list[float] = []
    with _no_gc():
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            times = {name: _time(steps[name], inner) for name in order}
            copies.append(times[base])
            for name in names:
                per_round[name].append(times[name] / times[base])
    log(f"  {case.shape} {case.dims} {case.label}: copy_ {statistics.median(copies) * 1e3:.3f} ms")
    ratios = {name: statistics.median(v) for name, v in per_round.items()}
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

    fns = {
        "fp32 angle + fp32 trig (common)": fp32,
        "ropekit.cos_sin → fp32": exact,
        "ropekit.cos_sin → bf16": exact_bf16,
    }
    for fn in fns.values():
        fn()
    per: dict[str, list[float]] = {k: [] for k in fns}
    with _no_gc():
        for _ in range(rounds):
            t = {k: _time(fn, 1) for k, fn in fns.items()}
            for k in fns:
                per[k].append(t[k] / t["fp32 angle + fp32 trig (common)"])
    base_time = statistics.median(_time(fp32, 1) for _ in range(3))
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


# ----------------------------------------------------------------------------- report


def _fmt(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def format_report(results: list[CaseResult]) -> str:
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
        names = [name for name, _, _ in IMPLEMENTATIONS if name != "copy_ (baseline)"]
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

    ``heap=False`` keeps glibc's default allocator settings (fresh large outputs are
    page-faulted on every call), to measure what ``out=``/in-place save.
    """
    from ..apply.cpu import cpu_kernel_status

    heap = heap and keep_allocations_on_heap()
    out = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"{rounds} interleaved rounds, medians of per-round ratios; "
        f"large allocations kept on the heap: {'yes' if heap else 'no'}",
        f"CPU kernel: {cpu_kernel_status()}",
    ]
    log(out[0])
    results = []
    first_calls: dict[str, float] = {}
    for case in CASES:
        if shapes and case.shape not in shapes:
            continue
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
    return "\n".join(out)


# ----------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time RoPE against copy_ and other implementations (quick)",
        description="Time RoPE here against copy_ of q and k (the memory floor), ropekit's "
        "backends and the installed peers; prints medians over interleaved rounds of each "
        "time divided by copy_'s in the same round. benchmarks/bench_rope.py runs the full "
        "version.",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=sorted({c.shape for c in CASES}),
        help="only these shapes (default: all)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="include torch.compile'd rows (seconds of compilation per dtype and shape)",
    )
    parser.add_argument(
        "--first-call", action="store_true", help="also time a fresh process's first call"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        from ..errors import RopeValueError

        raise RopeValueError(f"--rounds={args.rounds} is not allowed: expected an int >= 1")
    report = run_benchmark(
        rounds=args.rounds,
        with_compile=args.compile,
        first_call=args.first_call,
        shapes=tuple(args.shapes) if args.shapes else None,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(report)
    return 0
