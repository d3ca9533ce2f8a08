"""The benchmark method, shared by every ropekit benchmark: ratios to a copy, medians
over interleaved rounds, on a quiet allocator, with the machine's load on record.

RoPE is elementwise and memory-bound: its floor is reading q and k once and writing them
once, i.e. ``copy_`` of q and k into preallocated buffers. Every figure is a ratio to that
copy, measured in the same process and the same round, so machine load and clock changes
cancel out as far as they can:

* rounds are interleaved: each round times every implementation once (in a rotating
  order), and the reported figure is the median over rounds of ``t_impl / t_copy``;
* small cases repeat the call until the copy takes ~2 ms (:func:`calibrate`), so timer
  resolution and Python overhead are measured, not rounded away; each block of calls is
  timed by the standard library's ``timeit.Timer`` (what ``torch.utils.benchmark.Timer``
  runs inside). Not ``torch.utils.benchmark.Timer.timeit`` itself: it first runs
  ``max(n // 100, 2)`` untimed warm-up calls per block, which would triple the time of
  the large cases (one call per block) and hand each implementation caches warmed by
  itself rather than by the rotation before it; nor ``blocked_autorange``, which sizes
  its own blocks (>= 50 ms each) and so cannot interleave implementations round by round;
* large allocations stay on the heap (:func:`keep_allocations_on_heap`);
* the load average before the run is recorded and a busy machine is named in the report
  (:func:`machine_load`): a ratio survives load only when the load is steady, and under
  heavy load even ``clone()`` can read 0.48x ``copy_``.

On a GPU, ``benchmarks/bench_triton.py`` times with ``triton.testing.do_bench`` (it
flushes L2 and synchronises) and reports the same ratio to ``copy_``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import statistics
import sys
import timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = [
    "MachineLoad",
    "Step",
    "calibrate",
    "interleaved_ratios",
    "keep_allocations_on_heap",
    "machine_load",
    "no_gc",
    "time_block",
]

Step = Callable[[], object]

#: Above this fraction of the CPUs busy (1-minute load average before the run), the report
#: warns that its figures are unreliable.
BUSY_FRACTION = 0.5


def keep_allocations_on_heap() -> bool:
    """Make glibc serve large allocations from the heap and keep freed memory.

    With glibc's defaults every fresh output of 32 MiB or more is a new ``mmap`` that is
    page-faulted on every call, which makes even ``clone()`` ~5x ``copy_`` and would hide
    the kernels' own speed: ``mallopt(M_MMAP_MAX=0)`` and a high ``M_TRIM_THRESHOLD``.
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


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Collect once, then keep the garbage collector off while timing."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def time_block(step: Step, inner: int) -> float:
    """Seconds per call of ``inner`` back-to-back calls of ``step`` (one timed block)."""
    # timeit switches the garbage collector off for the block and uses perf_counter.
    return timeit.Timer(step).timeit(inner) / inner


def calibrate(step: Step, target_seconds: float = 2e-3, limit: int = 1000) -> int:
    """Calls per timed block so that a block of ``step`` takes about ``target_seconds``
    (median of 5 single calls; between 1 and ``limit``)."""
    single = statistics.median(time_block(step, 1) for _ in range(5))
    return max(1, min(limit, round(target_seconds / max(single, 1e-9))))


def interleaved_ratios(
    steps: dict[str, Step], baseline: str, rounds: int, inner: int
) -> tuple[dict[str, float], list[float]]:
    """Median over ``rounds`` of each step's time / ``baseline``'s time in the same round.

    Each round times every step once, starting at a different step (rotating order), so
    slow drifts hit every implementation alike. Returns the median ratios (the baseline's
    is 1) and the baseline's seconds per call in each round.
    """
    names = list(steps)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    base_times: list[float] = []
    with no_gc():
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            times = {name: time_block(steps[name], inner) for name in order}
            base_times.append(times[baseline])
            for name in names:
                per_round[name].append(times[name] / times[baseline])
    return {name: statistics.median(v) for name, v in per_round.items()}, base_times


@dataclass(frozen=True)
class MachineLoad:
    """The 1-, 5- and 15-minute load averages (None where the OS has none) and the CPUs."""

    load: tuple[float, float, float] | None
    cpus: int

    @property
    def busy(self) -> bool:
        """More than :data:`BUSY_FRACTION` of the CPUs busy over the last minute."""
        return self.load is not None and self.load[0] > BUSY_FRACTION * self.cpus

    def describe(self) -> str:
        if self.load is None:
            return f"load average unknown on this OS, {self.cpus} CPUs"
        one, five, fifteen = self.load
        return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {self.cpus} CPUs"

    def warning(self) -> str | None:
        """A warning for the report when the machine is busy, else None."""
        if not self.busy:
            return None
        assert self.load is not None
        return (
            f"WARNING: the machine is busy (load {self.load[0]:.2f} on {self.cpus} CPUs, "
            f"more than {BUSY_FRACTION:.0%} of them) before the run: other processes compete "
            "for cores and memory bandwidth, so these ratios are unreliable (a clone can read "
            "below 1x copy_). Re-run on an idle machine before quoting them."
        )


def machine_load() -> MachineLoad:
    """This machine's load now (``os.getloadavg()``) and ``os.cpu_count()``."""
    try:
        load: tuple[float, float, float] | None = os.getloadavg()
    except (AttributeError, OSError):  # not on every OS
        load = None
    return MachineLoad(load, os.cpu_count() or 1)
