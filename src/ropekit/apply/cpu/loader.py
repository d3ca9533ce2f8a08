"""``Backend.CPU``: the C kernel in ``rope_cpu.c``, compiled on first use and cached on disk.

Why a C kernel: on a CPU, RoPE is bound by memory traffic (two multiplies and an add per
lane), and eager torch cannot fuse the products, the sum, the half-precision casts and the
``cat`` into one pass: the plain formula takes 5-13x the time of a copy. ``torch.compile``
can fuse them, but costs seconds per process, dtype and shape, and ~0.1 ms per call.
The kernel reads each lane once and writes it once (q and k together in one parallel
region), so it runs within ~10% of ``copy_`` (``docs/performance.md``).

Cost of the first call: the first process on a machine compiles the file with the system C
compiler (``$CC``, else ``cc``/``gcc``/``clang``; 1-3 s) into ``$ROPEKIT_CACHE_DIR``
(default ``$XDG_CACHE_HOME/ropekit`` or ``~/.cache/ropekit``; a private temporary
directory if that cannot be written), named by a hash of the source, the flags, the
torch version and the CPU's feature flags (the code is built with ``-march=native``).
Later processes only load that file (~3 ms). Without a working compiler
:func:`cpu_kernel_status` says why, ``backend="auto"`` uses the torch backend and
``backend="cpu"`` raises.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ...errors import RopeValueError
from ..formula import rotate_torch

__all__ = ["cpu_kernel_available", "cpu_kernel_status", "load", "rotate_cpu"]

_SOURCE = Path(__file__).with_name("rope_cpu.c")
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
# Tried in order: the first set that compiles is used. All of them forbid FMA: no
# contraction (-ffp-contract=off), and no straight-line SLP vectorisation, which in GCC 12
# turns the interleaved float64 pair into vfmaddsub despite -ffp-contract=off. Every
# product and sum is then rounded on its own, as in torch's separate mul/sub kernels, so
# results equal the torch formula's bit for bit (loops are still vectorised).
_EXACT = ("-O3", "-ffp-contract=off", "-fno-tree-slp-vectorize")
_FLAG_SETS = (
    (*_EXACT, "-march=native", "-fopenmp"),
    (*_EXACT, "-fopenmp"),
    _EXACT,
    (*_EXACT, "-DROPEKIT_NO_FLOAT16"),
)
_MAX_TENSORS = 8  # per call (MAX_TENSORS in rope_cpu.c)
_TOO_MANY_DIMS = 3  # status: more than MAX_DIMS batch dims after merging
# Below this many elements in one call a second thread costs more than it saves.
_PARALLEL_MIN_ELEMENTS = 1 << 15


class _Kernel:
    def __init__(self, path: Path, flags: tuple[str, ...]) -> None:
        self.path, self.flags = path, flags
        self.lib = ctypes.CDLL(str(path))
        fn = self.lib.ropekit_rotate
        fn.restype = ctypes.c_int
        # one int64 array: a header of seven values, then a _record per tensor (pack)
        fn.argtypes = [ctypes.c_void_p]
        self.rotate = fn
        self.float16 = bool(self.lib.ropekit_has_float16())
        self.openmp = bool(self.lib.ropekit_has_openmp())
        # Outputs at least as large as the last-level cache are written with streaming
        # stores (stream_row in rope_cpu.c); the kernel's default is 32 MiB.
        self.lib.ropekit_set_stream_min_bytes.argtypes = [ctypes.c_int64]
        self.lib.ropekit_stream_min_bytes.restype = ctypes.c_int64
        llc = _last_level_cache_bytes()
        if llc is not None:
            self.lib.ropekit_set_stream_min_bytes(llc)
        self.stream_min_bytes = int(self.lib.ropekit_stream_min_bytes())  # INT64_MAX: never


def _last_level_cache_bytes() -> int | None:
    """The last-level cache this process's CPUs have together (Linux sysfs), or None.

    sysfs reports the cache per core complex (32 MiB on a Zen 4/5 EPYC) and which CPUs
    share it; that size is multiplied by the number of such caches the process may run
    on (its CPU affinity), so that on a many-complex machine outputs that still fit the
    caches of all its cores keep plain stores. glibc's ``sysconf(_SC_LEVEL3_CACHE_SIZE)``
    is not used: on EPYC it reports the whole package's L3 (384 MiB) even to a 2-core
    guest that has one 32 MiB slice of it.
    """
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    best: tuple[int, int, str] | None = None  # (level, bytes, shared_cpu_list)
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
            nbytes = int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size)
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        if nbytes > 0 and (best is None or level > best[0]):
            best = (level, nbytes, shared)
    if best is None:
        return None
    try:
        sharing = 0  # CPUs per last-level cache: "0-7,64-71" -> 16
        for part in best[2].split(","):
            lo, _, hi = part.partition("-")
            sharing += int(hi) - int(lo) + 1 if hi else 1
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError, ValueError):
        return best[1]  # one cache's worth: streams a little more often, never wrongly
    return best[1] * max(1, -(-cpus // max(1, sharing)))  # caches used: ceil(cpus / sharing)


def _cache_dir() -> Path:
    if os.environ.get("ROPEKIT_CACHE_DIR"):
        return Path(os.environ["ROPEKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ropekit"


def _cpu_signature() -> str:
    # -march=native code is only valid on CPUs with the same features.
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    if os.environ.get("CC"):
        return os.environ["CC"]
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _build(compiler: str, flags: tuple[str, ...], target: Path) -> str | None:
    """Compile into ``target`` atomically; return an error message or None."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    except OSError as err:
        return f"cannot write to {target.parent}: {err}"
    os.close(fd)
    cmd = [compiler, *flags, "-shared", "-fPIC", "-o", tmp, str(_SOURCE)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}"
        os.replace(tmp, target)  # atomic: concurrent processes never load a partial file
        return None
    except (OSError, subprocess.SubprocessError) as err:
        return f"{' '.join(cmd)} failed: {err}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _load() -> _Kernel | str:
    """The loaded kernel, or why there is none. Cached for the process (it never changes)."""
    if not _SOURCE.is_file():
        return f"kernel source {_SOURCE} is missing from the installation"
    source = _SOURCE.read_bytes()
    signature = f"{platform.machine()}|{_cpu_signature()}|{torch.__version__}"
    errors = []
    compiler = _compiler()
    cache = _cache_dir()
    for flags in _FLAG_SETS:
        key = hashlib.sha256(source + repr(flags).encode() + signature.encode()).hexdigest()
        path = cache / f"rope_cpu_{key[:20]}.so"
        if not path.is_file():
            if compiler is None:
                return "no C compiler found (set $CC or install cc/gcc/clang)"
            error = _build(compiler, flags, path)
            if error is not None and error.startswith("cannot write"):
                # A read-only cache: build in a private directory, for this process only
                # (never a shared one: another user could plant a library there).
                cache = Path(tempfile.mkdtemp(prefix="ropekit-"))
                atexit.register(shutil.rmtree, cache, ignore_errors=True)  # loaded .so stays mapped
                path = cache / path.name
                error = _build(compiler, flags, path)
            if error is not None:
                errors.append(error)
                continue
        try:
            return _Kernel(path, flags)
        except OSError as err:
            errors.append(f"loading {path} failed: {err}")
    # Often every flag set fails the same way (e.g. no such compiler): say it once. The
    # commands differ (flags, temporary file), so compare what follows " failed: ".
    reasons = {e.partition(" failed: ")[2] or e for e in errors}
    if len(errors) > 1 and len(reasons) == 1:
        return (
            f"could not build the CPU kernel, the same failure for all {len(errors)} flag "
            f"sets; the first: {errors[0]}"
        )
    return "could not build the CPU kernel: " + " | ".join(errors)


def load() -> Callable[..., tuple[torch.Tensor, ...]] | str:
    """The backend's kernel (:func:`rotate_cpu`), or why it cannot run here."""
    loaded = _load()
    return rotate_cpu if isinstance(loaded, _Kernel) else loaded


def cpu_kernel_available() -> bool:
    """Whether ``backend="cpu"`` can run (builds the kernel on the first call)."""
    return isinstance(_load(), _Kernel)


def cpu_kernel_status() -> str:
    """Where the compiled kernel lives and its flags, or why it is unavailable."""
    kernel = _load()
    if isinstance(kernel, str):
        return f"unavailable: {kernel}"
    stream = kernel.stream_min_bytes
    streaming = f"; streaming stores from {stream / 2**20:g} MiB" if stream < 2**62 else ""
    return f"{kernel.path} ({' '.join(kernel.flags)}){streaming}"


def kernel() -> _Kernel:
    """The loaded kernel; raises :class:`RopeValueError` with the reason if there is none."""
    loaded = _load()
    if isinstance(loaded, str):
        raise RopeValueError(f"backend='cpu' is not available here: {loaded}")
    return loaded


def _record(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> tuple[int, ...]:
    """What the kernel needs to know about one tensor (``make_plan`` in rope_cpu.c).

    Pointers, then x's sizes and strides, y's strides, and the tables' sizes and strides;
    the kernel broadcasts the tables and merges dims itself, so building this is all the
    Python work per tensor (at decode sizes it costs as much as the rotation).
    """
    return (
        x.data_ptr(),
        y.data_ptr(),
        c.data_ptr(),
        s.data_ptr(),
        x.ndim,
        c.ndim,
        *x.shape,
        *x.stride(),
        *y.stride(),
        *c.shape,
        *c.stride(),
        *s.stride(),
    )


def _dense(
    x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copies the kernel can take, for layouts it cannot: strided lanes, too many dims.

    Everything is made contiguous (tables expanded to ``x``'s batch shape), which always
    merges into one batch dim. Rare, and costs a copy; the arithmetic is still the kernel's.
    """
    batch = x.shape[:-1]
    xc = x.contiguous()
    yc = xc if y.data_ptr() == x.data_ptr() else torch.empty_like(xc)
    return (
        xc,
        yc,
        c.expand(*batch, c.shape[-1]).contiguous(),
        s.expand(*batch, s.shape[-1]).contiguous(),
    )


def rotate_cpu(
    xs: Sequence[torch.Tensor],
    outs: Sequence[torch.Tensor] | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: object = None,
    *,
    interleaved: bool,
    inverse: bool,
) -> tuple[torch.Tensor, ...]:
    """Write the rotation of each CPU tensor ``xs[i]`` into ``outs[i]`` (may be ``xs[i]``)
    and return ``outs`` (new tensors when ``outs`` is None).

    Tensors are read through their strides (``[b, s, h, d]`` transposed views, broadcast
    tables) with no copies, as long as lanes have stride 1 and at most six batch dims
    remain after merging; other layouts (rare) are copied first. All ``xs`` of one dtype
    and head dim run in one kernel call (one parallel region). At decode sizes the
    Python here costs as much as the kernel, hence the plain loops.
    """
    lib = kernel()
    x0 = xs[0]
    dtype, d = x0.dtype, x0.shape[-1]
    code = _DTYPE_CODES.get(dtype)
    if code is None or (code == 3 and not lib.float16):
        return rotate_torch(xs, outs, cos, sin, interleaved=interleaved, inverse=inverse)
    if outs is None:  # (no comprehension: in Python 3.11 that is one more frame)
        if len(xs) == 2:  # q and k: the common case
            outs = (torch.empty_like(x0), torch.empty_like(xs[1]))
        else:
            outs = tuple(torch.empty_like(x) for x in xs)
    work = torch.float64 if code == 1 else torch.float32  # compute_dtype
    c = cos if cos.dtype == work else cos.to(work)
    s = sin if sin.dtype == work else sin.to(work)
    cst, sst = c.stride(), s.stride()
    if cst[-1] != 1:
        c = c.contiguous()
        cst = c.stride()
    if sst[-1] != 1:
        s = s.contiguous()
        sst = s.stride()
    # One loop over the tensors, each attribute read once: at decode sizes building the
    # records is most of the Python work of a call.
    elements = 0
    n = c.shape[-1]
    # ropekit_rotate's header: ntensors, dtype, n, d, interleaved, inverse, threads (the
    # bools pack as 0/1; threads is set below), then the records
    header = [len(xs), code, n, d, interleaved, inverse, 1]
    call = list(header)
    cp, sp, cnd = c.data_ptr(), s.data_ptr(), c.ndim
    ctail = (*c.shape, *cst, *sst)
    split = len(xs) > _MAX_TENSORS
    for x, y in zip(xs, outs, strict=False):  # equal lengths: built from xs, or checked
        shape = x.shape
        if x.dtype != dtype or shape[-1] != d:
            split = True
            break
        xst = x.stride()
        yst = xst if y is x else y.stride()
        if xst[-1] != 1 or yst[-1] != 1:
            call = []  # strided lanes: the copying path below
        elif call:
            elements += x.numel()
            call += (x.data_ptr(), y.data_ptr(), cp, sp, len(shape), cnd, *shape, *xst, *yst, *ctail)
    if split:  # dtypes or head dims differ: one call per tensor
        for x, y in zip(xs, outs, strict=True):
            rotate_cpu((x,), (y,), cos, sin, interleaved=interleaved, inverse=inverse)
        return tuple(outs)
    status = _TOO_MANY_DIMS
    if call:
        if elements >= _PARALLEL_MIN_ELEMENTS:
            call[6] = torch.get_num_threads()
        status = lib.rotate(pack(call))
    if status == _TOO_MANY_DIMS:  # rare layouts: contiguous copies, which always fit
        elements = sum(x.numel() for x in xs)
        dense = [_dense(x, y, c, s) for x, y in zip(xs, outs, strict=True)]
        call = list(header)
        for t in dense:
            call += _record(*t)
        if elements >= _PARALLEL_MIN_ELEMENTS:
            call[6] = torch.get_num_threads()
        status = lib.rotate(pack(call))
        for y, (_, yk, _, _) in zip(outs, dense, strict=True):
            if status == 0:
                y.copy_(yk)
    if status != 0:  # only on a mismatch between this file and rope_cpu.c
        raise RuntimeError(f"ropekit CPU kernel failed with status {status}")
    return tuple(outs)


# struct.Struct(...).pack per length of a call: facts about the format, not about calls
_PACKERS: dict[int, Callable[..., bytes]] = {}


def pack(call: Sequence[int]) -> bytes:
    """``call`` (header and records) as the int64 array ``ropekit_rotate`` reads (bytes,
    which ctypes passes to a ``c_void_p`` as a pointer to their data; ``struct`` is the
    cheapest way there from Python ints)."""
    packer = _PACKERS.get(len(call))
    if packer is None:
        packer = _PACKERS[len(call)] = struct.Struct(f"{len(call)}q").pack
    return packer(*call)
