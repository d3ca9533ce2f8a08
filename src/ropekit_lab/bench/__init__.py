"""Benchmarks of ropekit: the method (:mod:`.harness`), the peers (:mod:`.peers`) and the
CPU benchmark (:mod:`.cpu`). ``benchmarks/bench_rope.py`` (CPU) and
``benchmarks/bench_triton.py`` (GPU) are thin scripts over these."""

__all__ = ["cpu", "harness", "peers"]
