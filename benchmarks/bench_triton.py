"""Benchmark of ropekit's Triton backend against copy bandwidth and other RoPE implementations.

Shapes (q and k alike, ``[b, h, s, d]`` views of ``[b, s, h, d]`` projections):

* prefill  ``1 x 32 x 4096 x 128``
* training ``8 x 16 x 1024 x 64``
* decode   ``32 x 32 x 1 x 128`` (position 4095)

Cases are ``shape:dtype`` pairs (default: the three shapes in bf16, then prefill in fp32). For
each case and mode (``fwd``; ``fwd+bwd``: forward, then ``torch.autograd.grad`` of q and k)
it times:

* ``copy``: ``copy_`` of q and k into preallocated outputs (same bytes as a rotation);
* ``ropekit.qk_rows``: ``ropekit.apply_rope_qk(..., offset=, backend="triton")``: fp32
  ``[R, n]`` tables read at row ``offset + j`` inside the kernel, one launch;
* ``ropekit.qk_table``: ``ropekit.apply_rope_qk(..., backend="triton")`` with fp32 ``[s, n]``
  tables broadcast over the heads, one launch;
* ``ropekit.qk_`` (fwd only): ``ropekit.apply_rope_qk(..., inplace=True)``, ``[R, n]`` tables + offset;
* ``ropekit.module``: ``ropekit.RotaryEmbedding(config, backend="triton")(q, k, offset=)``:
  builds its fp32 tables for the call's positions, then the same kernel;
* the peers of ``ropekit_lab.bench.peers.PEERS`` (the same list as the CPU benchmark,
  ``bench_rope.py``) that run on the device, by key: ``hf`` (transformers'
  ``apply_rotary_pos_emb``, eager, ``[1, s, d]`` tables in x.dtype), ``meta`` (Meta's
  complex form), ``torchtune``, ``rotary_emb_torch`` (rotary-embedding-torch),
  ``torch.compile`` (the fp32 fused formula, ``fullgraph=True, dynamic=False``, fp32
  ``[s, n]`` tables) and ``liger`` (Liger-Kernel's ``LigerRopeFunction``, in place,
  same tables as ``hf``); those not installed are reported as unavailable.

Columns:

* ``us``: median of ``triton.testing.do_bench`` (L2 flushed before every call). The
  flush (a 256 MB memset) runs on the GPU while the host prepares the call, so host
  overhead below roughly the flush time is hidden and above it leaks into ``us``;
* ``graph_us`` (fwd): median of ``do_bench_cudagraph``: the calls replayed from a CUDA
  graph, i.e. GPU time alone (no host overhead; L2 not flushed between calls);
* ``host_us`` (fwd): wall clock per call of 200 back-to-back calls (what a Python loop
  pays: the larger of host and GPU time);
* ``GB/s``, ``%copy`` from ``us``; bytes = q and k read once and written once (twice that
  for fwd+bwd); tables are not counted. ``%copy`` = copy time / time on the same bytes.

``--sweep`` times ``ropekit.apply_rope_qk`` (CUDA graph) over the kernel's tile sizes and
warps on bf16 prefill (the launch planner patched to each). Usage: ``python
benchmarks/bench_triton.py --out bench.json`` (CUDA). ``--smoke`` runs tiny shapes on the
CPU through Triton's interpreter to check the script itself. ``--host-overhead`` (CPU)
times the public calls (argument checks, dispatch, launch planning, allocation) with the
kernel launch replaced by a no-op: what a call costs the host before Triton's own
launcher.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

SHAPES = {"prefill": (1, 32, 4096, 128), "training": (8, 16, 1024, 64), "decode": (32, 32, 1, 128)}
SMOKE_SHAPES = {"prefill": (1, 2, 64, 16), "training": (2, 2, 16, 8), "decode": (2, 2, 1, 16)}
DECODE_POSITION = 4095
SWEEP = [(1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8)]
IN_PLACE = {"ropekit.qk_"}  # timed in the forward only
INTERLEAVED: set[str] = set()  # implementations that rotate neighbouring lanes (GPT-J/Meta)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write results as JSON here")
    ap.add_argument(
        "--cases",
        default="prefill:bf16,decode:bf16,training:bf16,prefill:fp32",
        help="comma-separated shape:dtype (shapes: prefill, training, decode; bf16/fp16/fp32)",
    )
    ap.add_argument("--impls", default="", help="comma-separated subset of implementations")
    ap.add_argument("--budget-s", type=float, default=200.0, help="skip what would start later")
    ap.add_argument("--sweep", action="store_true", help="tile/warps sweep on bf16 prefill")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (interpreter)")
    ap.add_argument(
        "--host-overhead", action="store_true", help="CPU: wrapper cost, kernel launch stubbed"
    )
    return ap


# Parsed before torch and triton are imported: --help answers at once, and --smoke must
# set TRITON_INTERPRET before triton is imported. Imported as a module (by the tests),
# the script sees no arguments: the defaults.
ARGS = build_parser().parse_args(None if __name__ == "__main__" else [])
ARGS.smoke = ARGS.smoke or ARGS.host_overhead
if ARGS.smoke:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import ropekit  # noqa: E402
from ropekit.apply.triton import ops, plan  # noqa: E402
from ropekit.frequencies.base import inv_freq  # noqa: E402
from ropekit.tables.cos_sin import cos_sin  # noqa: E402
from ropekit_lab.bench.peers import Tables, peers_for  # noqa: E402

DEVICE = "cpu" if ARGS.smoke else "cuda"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def bench_us(fn: Callable[[], object]) -> float:
    """Median microseconds per call, L2 flushed before each."""
    if ARGS.smoke:
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e6
    return 1e3 * triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def graph_us(fn: Callable[[], object]) -> float:
    """Median microseconds per call replayed from a CUDA graph: GPU time, no host work."""
    if ARGS.smoke:
        return math.nan
    fn()  # compile / autotune outside the capture
    sync()
    return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median")


def host_us(fn: Callable[[], object], calls: int = 200) -> float:
    """Wall-clock microseconds per call of back-to-back calls."""
    if ARGS.smoke:
        calls = 2
    for _ in range(5):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t) / calls * 1e6


def environment() -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "device": DEVICE,
        "smoke": ARGS.smoke,
    }
    if DEVICE == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, sms=p.multi_processor_count, memory_gib=p.total_memory / 2**30)
        env["l2_mib"] = getattr(p, "L2_cache_size", 0) / 2**20
    from importlib import metadata

    for dist in ("transformers", "liger-kernel"):
        try:
            env[dist] = metadata.version(dist)
        except Exception as err:  # report, don't fail: these are optional comparisons
            env[dist] = f"unavailable: {type(err).__name__}: {err}"
    return env


def peak_copy_gbps() -> float:
    """Device-to-device copy of 1 GiB, counting bytes read plus written."""
    n = (2**20 if ARGS.smoke else 2**30) // 4
    src = torch.randn(n, device=DEVICE)
    dst = torch.empty_like(src)
    us = bench_us(lambda: dst.copy_(src))
    return 2 * n * 4 / (us * 1e-6) / 1e9


# ------------------------------------------------------------------ implementations


class Case:
    """Inputs of one (shape, dtype): q, k, tables in the forms each implementation wants."""

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
        b, h, s, d = shape
        n = d // 2
        g = torch.Generator(device=DEVICE).manual_seed(0)
        # [b, s, h, d] storage viewed as [b, h, s, d], as a q/k projection gives it
        self.q = torch.randn(b, s, h, d, device=DEVICE, generator=g).to(dtype).transpose(1, 2)
        self.k = torch.randn(b, s, h, d, device=DEVICE, generator=g).to(dtype).transpose(1, 2)
        self.offset = DECODE_POSITION if s == 1 else 0
        rows = self.offset + s
        self.cos_t, self.sin_t = cos_sin(
            inv_freq(d, 10000.0), torch.arange(rows, device=DEVICE), dtype=torch.float32
        )
        self.cos_s = self.cos_t[self.offset :].contiguous()
        self.sin_s = self.sin_t[self.offset :].contiguous()
        # what the peers get (each builds its own form from these [s, n] tables)
        self.tables = Tables(d, s, self.offset, dtype, self.cos_s, self.sin_s, static_compile=True)
        self.bytes = 2 * (self.q.numel() + self.k.numel()) * self.q.element_size()
        self.n = n
        self.rope = ropekit.RotaryEmbedding(
            ropekit.RopeConfig(head_dim=d, theta=10000.0), backend="triton"
        ).to(DEVICE)

    def reference64(self, interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k rotated in float64, pairs as halves or (``interleaved``) neighbours."""
        c, s = self.cos_s.double(), self.sin_s.double()
        out = []
        for x in (self.q, self.k):
            if interleaved:
                x1, x2 = x[..., 0::2].double(), x[..., 1::2].double()
                out.append(torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), -1).flatten(-2))
            else:
                x1, x2 = x[..., : self.n].double(), x[..., self.n :].double()
                out.append(torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1))
        return out[0], out[1]


def implementations(case: Case) -> dict[str, Callable]:
    """name -> f(q, k) returning (q_rot, k_rot)."""
    impls: dict[str, Callable] = {
        "ropekit.qk_rows": lambda q, k: ropekit.apply_rope_qk(
            q, k, case.cos_t, case.sin_t, offset=case.offset, backend="triton"
        ),
        "ropekit.qk_table": lambda q, k: ropekit.apply_rope_qk(
            q, k, case.cos_s, case.sin_s, backend="triton"
        ),
        "ropekit.qk_": lambda q, k: ropekit.apply_rope_qk(
            q, k, case.cos_t, case.sin_t, offset=case.offset, backend="triton", inplace=True
        ),
        "ropekit.module": lambda q, k: case.rope(q, k, offset=case.offset),
    }
    torch._dynamo.reset()
    for peer in peers_for(DEVICE):
        made = peer.make(case.tables)
        if isinstance(made, str):
            print(f"  {peer.key} unavailable: {made}")
        else:
            impls[peer.key] = made
            if peer.interleaved:
                INTERLEAVED.add(peer.key)
    if ARGS.impls:
        keep = set(ARGS.impls.split(","))
        impls = {name: f for name, f in impls.items() if name in keep}
    return impls


def max_rel_err(impl: Callable, case: Case, interleaved: bool = False) -> float:
    """max |out - exact| / max |exact| over q and k, on copies (liger works in place);
    ``interleaved``: against the neighbouring-lanes layout (Meta, torchtune, ...)."""
    q = case.q.transpose(1, 2).clone().transpose(1, 2)
    k = case.k.transpose(1, 2).clone().transpose(1, 2)
    with torch.no_grad():
        out = impl(q, k)
    errs = []
    for o, r in zip(out, case.reference64(interleaved), strict=True):
        errs.append(float((o.double() - r).abs().max() / r.abs().max()))
    return max(errs)


def timed(impl: Callable, case: Case, mode: str) -> Callable[[], object]:
    if mode == "fwd":

        def fwd():
            with torch.no_grad():
                return impl(case.q, case.k)

        return fwd
    # Non-leaf inputs (liger rotates in place, which autograd forbids on leaves).
    q0 = case.q.detach().clone().requires_grad_()
    k0 = case.k.detach().clone().requires_grad_()
    q, k = q0 * 1, k0 * 1
    gq, gk = torch.randn_like(q), torch.randn_like(k)

    def fwd_bwd():
        yq, yk = impl(q, k)
        return torch.autograd.grad((yq, yk), (q, k), (gq, gk))

    return fwd_bwd


# ------------------------------------------------------------------ main


def run_case(name: str, dtype_name: str, results: list[dict]) -> None:
    shapes = SMOKE_SHAPES if ARGS.smoke else SHAPES
    base = dict(shape=name, dims=list(shapes[name]), dtype=dtype_name)
    if elapsed() > ARGS.budget_s:
        results.append(dict(base, mode="all", impl="all", skipped="time budget"))
        return
    case = Case(shapes[name], DTYPES[dtype_name])
    oq, ok = torch.empty_like(case.q), torch.empty_like(case.k)

    def copy():
        oq.copy_(case.q)
        ok.copy_(case.k)

    copy_us = bench_us(copy)
    copy_graph_us = graph_us(copy)
    impls = implementations(case)
    errors = {}
    for impl_name, impl in impls.items():
        try:
            errors[impl_name] = max_rel_err(impl, case, impl_name in INTERLEAVED)
        except Exception as err:
            errors[impl_name] = f"{type(err).__name__}: {str(err)[:300]}"
    for mode in ("fwd", "fwd+bwd"):
        factor = 1 if mode == "fwd" else 2
        rec = dict(base, mode=mode, impl="copy", us=copy_us * factor)
        rec.update(gbps=case.bytes / (copy_us * 1e-6) / 1e9, pct_copy=100.0)
        if mode == "fwd":
            rec["graph_us"] = copy_graph_us
        results.append(rec)
        print_row(rec)
        for impl_name, impl in impls.items():
            rec = dict(base, mode=mode, impl=impl_name)
            if elapsed() > ARGS.budget_s:
                results.append(dict(rec, skipped="time budget"))
                continue
            if mode != "fwd" and impl_name in IN_PLACE:
                # autograd would chain one in-place node per timed call onto the same tensor
                results.append(dict(rec, skipped="in place: forward only"))
                continue
            try:
                fn = timed(impl, case, mode)
                us = bench_us(fn)
                rec.update(
                    us=us,
                    gbps=factor * case.bytes / (us * 1e-6) / 1e9,
                    pct_copy=100 * copy_us * factor / us,
                    max_rel_err=errors.get(impl_name),
                )
                if mode == "fwd":
                    rec["host_us"] = host_us(fn)
                    try:
                        rec["graph_us"] = graph_us(fn)
                    except Exception as err:  # not capturable: report, go on
                        rec["graph_error"] = f"{type(err).__name__}: {str(err)[:200]}"
            except Exception as err:
                rec["error"] = f"{type(err).__name__}: {str(err)[:500]}"
            results.append(rec)
            print_row(rec)


def sweep(results: list[dict]) -> None:
    """Tile size x warps of apply_rope_qk (CUDA graph), bf16 prefill forward: the launch
    planner is patched to each setting (unmemoised; plans are host work, not replayed)."""
    shapes = SMOKE_SHAPES if ARGS.smoke else SHAPES
    case = Case(shapes["prefill"], torch.float32 if ARGS.smoke else torch.bfloat16)
    planner = ops._plan_indexed
    for block_elems, num_warps in SWEEP:
        if elapsed() > ARGS.budget_s:
            return
        rec: dict = dict(shape="prefill", block_elems=block_elems, num_warps=num_warps)
        ops._plan_indexed = functools.partial(
            plan.plan_indexed, block_elems=block_elems, num_warps=num_warps
        )

        def fn(c=case):
            return ropekit.apply_rope_qk(
                c.q, c.k, c.cos_t, c.sin_t, offset=c.offset, backend="triton"
            )

        try:
            us = graph_us(fn) if not ARGS.smoke else bench_us(fn)
            rec.update(graph_us=us, gbps=case.bytes / (us * 1e-6) / 1e9)
        except Exception as err:
            rec["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        finally:
            ops._plan_indexed = planner
        results.append(rec)
        print(f"sweep prefill bf16 block_elems={block_elems:5d} warps={num_warps}: "
              f"{rec.get('graph_us', math.nan):8.1f} us {rec.get('gbps', math.nan):6.0f} GB/s "
              f"{rec.get('error', '')}")  # fmt: skip


HEADER = (
    f"{'shape':9s} {'dtype':5s} {'mode':8s} {'impl':17s} {'us':>8s} {'GB/s':>6s} {'%copy':>6s} "
    f"{'graph_us':>8s} {'host_us':>8s} {'rel_err':>9s}"
)


def print_row(r: dict) -> None:
    if "us" not in r:
        print(f"{r['shape']:9s} {r['dtype']:5s} {r['mode']:8s} {r['impl']:17s} "
              f"{r.get('skipped') or r.get('error')}")  # fmt: skip
        return

    def num(key: str, width: int = 8) -> str:
        v = r.get(key)
        return f"{v:{width}.1f}" if isinstance(v, float) and not math.isnan(v) else " " * width

    err = r.get("max_rel_err")
    err_s = f"{err:9.2e}" if isinstance(err, float) else f"{'-' if err is None else 'ERR':>9s}"
    print(
        f"{r['shape']:9s} {r['dtype']:5s} {r['mode']:8s} {r['impl']:17s} {r['us']:8.1f} "
        f"{r['gbps']:6.0f} {r['pct_copy']:6.1f} {num('graph_us')} {num('host_us')} {err_s}"
    )


def per_call_us(fn: Callable[[], object], n: int = 2000) -> float:
    """Best of 7 loops of ``n`` calls: microseconds per call (CPU)."""
    for _ in range(50):
        fn()
    best = math.inf
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def host_overhead_rows(name: str) -> dict[str, float]:
    """Cost per public call on one shape (fp32 CPU tensors; the launch is a no-op)."""
    case = Case(SHAPES[name], torch.float32)
    q, k, c, s, off = case.q, case.k, case.cos_t, case.sin_t, case.offset
    qk = ropekit.apply_rope_qk
    rows = {}
    rows["2x empty_like (allocation floor)"] = per_call_us(
        lambda: (torch.empty_like(q), torch.empty_like(k))
    )
    with torch.no_grad():
        rows["apply_rope_qk offset fwd, no_grad"] = per_call_us(
            lambda: qk(q, k, c, s, offset=off, backend="triton")
        )
        rows["apply_rope_qk [s, n] fwd, no_grad"] = per_call_us(
            lambda: qk(q, k, case.cos_s, case.sin_s, backend="triton")
        )
        rows["apply_rope_qk inplace offset, no_grad"] = per_call_us(
            lambda: qk(q, k, c, s, offset=off, backend="triton", inplace=True)
        )
        rows["apply_rope [s, n] fwd, no_grad"] = per_call_us(
            lambda: ropekit.apply_rope(q, case.cos_s, case.sin_s, backend="triton")
        )
        rows["RotaryEmbedding fwd, no_grad"] = per_call_us(lambda: case.rope(q, k, offset=off))
    qg, kg = q.detach().requires_grad_(), k.detach().requires_grad_()
    rows["apply_rope_qk offset fwd, grad mode"] = per_call_us(
        lambda: qk(qg, kg, c, s, offset=off, backend="triton")
    )
    gq, gk = torch.ones_like(q), torch.ones_like(k)

    def fwd_bwd():
        yq, yk = qk(qg, kg, c, s, offset=off, backend="triton")
        return torch.autograd.grad((yq, yk), (qg, kg), (gq, gk))

    rows["apply_rope_qk fwd+bwd (autograd.grad)"] = per_call_us(fwd_bwd, n=500)
    return rows


def host_overhead() -> None:
    """Microseconds per public call, the kernel launch replaced by a no-op."""

    class NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    ops.rope_kernel = NoLaunch()  # the eager path looks it up at every call
    for name in ("decode", "training"):
        for row, us in host_overhead_rows(name).items():
            print(f"{name} {'x'.join(map(str, SHAPES[name]))}: {row:40s} {us:7.1f} us")


def main() -> int:
    if ARGS.host_overhead:
        host_overhead()
        return 0
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU, or with --smoke on the CPU")
        return 2
    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    # A `timeout` kill (SIGTERM) still writes the JSON and the summary (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = environment()
    print(json.dumps(env))
    peak = peak_copy_gbps()
    print(f"1 GiB device copy: {peak:.0f} GB/s (read + write)")
    print(HEADER)
    results: list[dict] = []
    sweep_results: list[dict] = []
    try:
        for spec in ARGS.cases.split(","):
            name, dtype_name = spec.split(":")
            run_case(name, dtype_name, results)
        if ARGS.sweep:  # last: the comparison rows matter more when time is short
            sweep(sweep_results)
    finally:
        payload = dict(
            env=env,
            peak_copy_gbps=peak,
            results=results,
            sweep=sweep_results,
            block_elems=plan.BLOCK_ELEMS,
            elapsed_s=elapsed(),
        )
        if ARGS.out:
            ARGS.out.write_text(json.dumps(payload, indent=1))
        print(f"\n== summary: 1 GiB copy {peak:.0f} GB/s; us = do_bench median (L2 flushed);"
              " graph_us = CUDA-graph replay (GPU time only);"
              " host_us = back-to-back wall clock")  # fmt: skip
        print(HEADER)
        for r in results:
            print_row(r)
        for r in sweep_results:
            if "graph_us" in r:
                print(f"sweep prefill bf16 block_elems={r['block_elems']} warps={r['num_warps']}: "
                      f"{r['graph_us']:.1f} us {r['gbps']:.0f} GB/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
