"""cos/sin tables: ``cos(m * theta_i)``, ``sin(m * theta_i)`` for positions ``m``.

Notation: ``n`` pairs (length of ``inv_freq``), ``*P`` the shape of ``positions``,
``B = BLOCK = 64``, ``f`` the attention factor.

Precision
---------
The angle ``m * theta_i`` grows with the position: at ``m = 1e6`` a float32 angle has
a rounding step of 0.0625 rad, so ``cos`` computed from a float32 angle is wrong in the
second decimal. ropekit works in float64 (positions are exact integers up to 2**53) and
rounds once, at the end, to the requested dtype.

Method: angle addition. Each position is split as ``m = hi + lo`` with ``lo = fmod(m, B)``
(``|lo| < B``, the sign of ``m``) and ``hi = m - lo`` (a multiple of ``B``); both parts
are exact in float64 for ``|m| <= 2**53``, integer or not. With float64 ``C, S = cos,
sin(hi * theta_i)`` and ``c, s = cos, sin(lo * theta_i)``, the tables are::

    cos = C * (f * c) + S * (f * -s)        sin = C * (f * s) + S * (f * c)

in float64, in this order, rounded once to ``dtype`` (to float16/bfloat16 through
float32, as torch converts). Every entry is this one function of ``(m, theta_i, f)``,
however it is computed (whole ranges, gathered rows, token by token, the graph that
``torch.compile`` traces; Inductor's own kernels matched bit for bit in our checks but
are not promised to): a position's row never depends on the other positions of the
call, a decode step at ``m`` is row ``m`` of a prefill bit for bit, and
:func:`cos_sin_range` equals :func:`cos_sin` of the same ``arange``. (For ``|m| < B``,
``hi = 0`` and this is exactly ``f * cos(m * theta_i)`` rounded once.) The saving: the
tables of ``s`` consecutive positions need trig only for the ``~s / B`` distinct ``hi``
and ``B`` values of ``lo``, then four float64 passes, instead of ``2 * s * n`` float64
``cos``/``sin``.

Error, measured against 50-digit mpmath (theta 1e4, 5e5 and 1e7, all 64 pairs of
head_dim 128, 150 random positions per range; the bounds are asserted in
``tests/test_tables.py``):

* the method's own error, trig and combination, is ~2 float64 ulps (max ``2.3e-16``;
  the direct ``cos(m * theta_i)`` it replaces: ``5.6e-17``);
* the whole error is dominated, as it was for the direct formula, by the float64
  rounding of the angles, ``|m * theta_i| * 2**-53`` at most: max ``2.3e-13`` for
  ``|m| < 4096``, ``5.8e-11`` at ``1e6``, ``9.3e-10`` at ``2**24``, ``6e-5`` at
  ``2**40`` (at ``2**53`` a float64 angle is off by up to half a radian: positions are
  exact up to ``2**53``, angles of them are not);
* float32 tables are therefore within one rounding step of the exact value: < 1e-7
  absolute (max ``3.05e-8``, i.e. ``2**-25`` plus the angle's ``9.3e-10``) at
  ``|m| <= 2**24`` and any ``theta <= 1e7``. They are the correctly rounded float32 of
  the exact value except at near-ties within the float64 error: measured none of 57,600
  entries at ``m < 4096``, 8 of 57,600 at ``1e6``, 0.15-0.4% at ``2**24``, the same
  rates as the direct formula (which could not do better either: its angle has the same
  rounding).
"""

from __future__ import annotations

import math

import torch

from ..errors import RopeValueError, check_float, check_float_dtype, check_int, check_tensor
from ..frequencies.base import MAX_EXACT_POSITION

__all__ = ["BLOCK", "check_positions", "cos_sin", "cos_sin_range", "fine_table", "position_tables", "range_tables"]

#: Block size of the angle-addition split ``m = hi + lo`` (``hi`` a multiple of it).
#: Part of the definition of the tables' values: changing it changes their last bits.
BLOCK = 64

# Float64 bytes of the [2, blocks, BLOCK, n] grid up to which it is combined in one go;
# longer tables go chunk by chunk through buffers of _CHUNK_BYTES, so that the four
# passes run in cache (2**17 rows: 2-3x faster than one pass over the whole grid).
_WHOLE_GRID_BYTES = 2**23
_CHUNK_BYTES = 2**21
# CPU positions (outside torch.compile) with at least this many entries are scanned for
# structure (rows that are aranges: the grid; other integers: gathered rows); fewer are
# read as a list (one arange row: the grid; else token by token).
_MIN_GRID_ROW = 2 * BLOCK


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def _check_positions_dtype(positions: torch.Tensor) -> None:
    check_tensor("positions", positions)
    if positions.dtype == torch.bool or positions.is_complex():
        raise RopeValueError(
            f"positions.dtype={positions.dtype} is not allowed: expected an integer or real floating dtype"
        )


def _check_biggest(biggest: float) -> None:
    if biggest > MAX_EXACT_POSITION:
        raise RopeValueError(
            f"positions has |value| up to {biggest}: expected |position| <= 2**53, "
            "beyond which float64 cannot represent every position"
        )


def check_positions(positions: torch.Tensor) -> torch.Tensor:
    """Reject positions that cannot be turned into exact float64 angles.

    Integer and floating tensors are accepted; bool and complex are not. Value checks
    (|m| <= 2**53, finite) need the data, so they run only on CPU tensors outside of
    ``torch.compile``: on an accelerator they would force a device sync on every call.
    """
    _check_positions_dtype(positions)
    if positions.device.type != "cpu" or _is_compiling() or positions.numel() == 0:
        return positions
    if positions.is_floating_point():
        if not bool(torch.isfinite(positions).all()):
            raise RopeValueError("positions contains NaN or inf: expected finite positions")
    elif positions.dtype not in (torch.int64, torch.uint64):
        return positions  # 8/16/32-bit integers always fit in float64 exactly
    # max/min as Python numbers rather than abs() on the tensor: abs() of the most
    # negative int64 wraps around, and float() would round 2**53 + 1 down to 2**53.
    item = float if positions.is_floating_point() else int
    _check_biggest(max(abs(item(positions.max())), abs(item(positions.min()))))
    return positions


def _check_position_list(values: list, floating: bool) -> None:
    """:func:`check_positions` for positions already read into a list (small CPU tensors)."""
    if floating and not all(math.isfinite(v) for v in values):
        raise RopeValueError("positions contains NaN or inf: expected finite positions")
    _check_biggest(max(abs(v) for v in values))


# ----------------------------------------------------------------------------- helpers


def _check_inv_freq(inv_freq: torch.Tensor) -> torch.Tensor:
    check_tensor("inv_freq", inv_freq)
    if inv_freq.ndim != 1 or not inv_freq.is_floating_point():
        raise RopeValueError(
            f"inv_freq with shape {tuple(inv_freq.shape)} and dtype {inv_freq.dtype} is not "
            "allowed: expected a 1-D real floating tensor [n]"
        )
    return inv_freq


def _f64(inv_freq: torch.Tensor, device: torch.device) -> torch.Tensor:
    if inv_freq.dtype == torch.float64 and inv_freq.device == device:
        return inv_freq  # (a no-op .to() still costs a microsecond at decode)
    return inv_freq.to(device=device, dtype=torch.float64)


def _needs_grad(freqs: torch.Tensor) -> bool:
    # The grid and gathered paths write into buffers (out=), which autograd refuses: a
    # differentiable inv_freq goes token by token (same values).
    return freqs.requires_grad and torch.is_grad_enabled()


def _check_fine_table(
    table: torch.Tensor | None, n: int, device: torch.device
) -> torch.Tensor | None:
    if table is None:
        return None
    check_tensor("fine_table", table)
    if table.shape != (2, 2, 2 * BLOCK - 1, n) or table.dtype != torch.float64:
        raise RopeValueError(
            f"fine_table with shape {tuple(table.shape)} and dtype {table.dtype} is not "
            f"allowed: expected fine_table(inv_freq, attention_factor=...), float64 "
            f"[2, 2, {2 * BLOCK - 1}, {n}]"
        )
    return table if table.device == device else table.to(device)


def _fine_rows(c: torch.Tensor, s: torch.Tensor, factor: float) -> torch.Tensor:
    """``factor * [[cos, sin], [-sin, cos]]`` of the ``lo`` angles: ``[2, 2, *c.shape]``."""
    rows = torch.stack((c, s, -s, c)).view(2, 2, *c.shape)
    return rows * factor if factor != 1.0 else rows


def _combine(c_hi: torch.Tensor, s_hi: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """``[cos, sin]`` of ``hi + lo`` from ``cos``/``sin`` of ``hi`` and the fine rows of ``lo``.

    ``fine[0]`` is ``f * (cos, sin)(lo)``, ``fine[1]`` is ``f * (-sin, cos)(lo)``: two
    products and a sum per entry, the same in every caller (see the module docstring).
    """
    p, q = fine.unbind(0)
    out = c_hi * p
    out += s_hi * q
    return out


def _per_token(
    freqs: torch.Tensor, positions: torch.Tensor, factor: float, table: torch.Tensor | None
) -> torch.Tensor:
    """``[2, *P, n]`` float64 ``[cos, sin]`` for ``positions`` ``[*P]``, branch-free.

    ``table`` (``fine_table``) replaces the trig of ``lo``; for integer positions only.
    """
    if table is not None and not positions.is_floating_point():
        pos = positions if positions.dtype == torch.int64 else positions.to(torch.int64)
        lo = torch.fmod(pos, BLOCK)  # as torch.fmod of the float64 value: exact, sign of pos
        angle = (pos - lo).to(torch.float64).unsqueeze(-1) * freqs
        fine = table.index_select(2, (lo + (BLOCK - 1)).reshape(-1))
        fine = fine.view(2, 2, *positions.shape, freqs.shape[0])
        return _combine(torch.cos(angle), torch.sin(angle), fine)
    p = positions.to(torch.float64)
    lo = torch.fmod(p, BLOCK)
    hi = p - lo
    angle = torch.stack((hi, lo)).unsqueeze(-1) * freqs  # [2, *P, n]
    c, s = torch.cos(angle), torch.sin(angle)
    return _combine(c[0], s[0], _fine_rows(c[1], s[1], factor))


def _lo_fine(freqs: torch.Tensor, j_lo: int, j_hi: int, factor: float) -> torch.Tensor:
    """Fine rows ``[2, 2, j_hi - j_lo, n]`` for ``lo = j_lo .. j_hi - 1``, computed."""
    angle = torch.arange(j_lo, j_hi, dtype=torch.float64, device=freqs.device).unsqueeze(-1) * freqs
    return _fine_rows(torch.cos(angle), torch.sin(angle), factor)


def _range_grid(
    freqs: torch.Tensor,
    start: int,
    length: int,
    factor: float,
    table: torch.Tensor | None,
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[2, length, n]`` tables of ``dtype`` for positions ``start ..`` (``start >= 0``).

    Block ``k`` of the grid holds positions ``(k0 + k) * B + j``, ``j < B``: ``hi`` trig
    once per block, ``lo`` trig once per ``j``. Written into ``out`` when given.
    """
    n = freqs.shape[0]
    k0, j0 = divmod(start, BLOCK)
    blocks = (j0 + length - 1) // BLOCK + 1
    if blocks == 1:  # decode and short tables: one hi, no grid
        if table is None:
            p, q = _lo_fine(freqs, j0, j0 + length, factor)
        else:
            p, q = table[:, :, BLOCK - 1 + j0 : BLOCK - 1 + j0 + length]
        angle = freqs * float(k0 * BLOCK)
        c_hi, s_hi = torch.cos(angle), torch.sin(angle)
        # _combine, with the sum rounded straight into the result (float64 sum, then one
        # rounding to dtype, as .to(dtype) would): at decode sizes every op is ~1 us
        x = c_hi * p
        y = s_hi * q
        if out is None:
            out = torch.empty(2, length, n, dtype=dtype, device=freqs.device)
        return torch.add(x, y, out=out)
    f64 = dict(dtype=torch.float64, device=freqs.device)
    angle = (torch.arange(k0, k0 + blocks, **f64) * BLOCK).unsqueeze(-1) * freqs
    c_hi, s_hi = torch.cos(angle).unsqueeze(1), torch.sin(angle).unsqueeze(1)  # [blocks, 1, n]
    fine = _lo_fine(freqs, 0, BLOCK, factor) if table is None else table[:, :, BLOCK - 1 :]
    fine = fine.unsqueeze(2)  # [2, 2, 1, B, n]
    if blocks * BLOCK * n * 16 <= _WHOLE_GRID_BYTES:  # one pass over the whole grid
        got = _combine(c_hi, s_hi, fine).view(2, blocks * BLOCK, n)[:, j0 : j0 + length]
        return got.to(dtype).contiguous() if out is None else out.copy_(got)
    per_chunk = max(1, _CHUNK_BYTES // (2 * BLOCK * max(n, 1) * 8))
    if out is None:
        out = torch.empty(2, length, n, dtype=dtype, device=freqs.device)
    buf = torch.empty(2, 2, per_chunk, BLOCK, n, **f64)
    for a in range(0, blocks, per_chunk):
        b = min(blocks, a + per_chunk)
        x, y = buf[0, :, : b - a], buf[1, :, : b - a]
        torch.mul(c_hi[a:b], fine[0], out=x)  # _combine, in the chunk's buffers
        torch.mul(s_hi[a:b], fine[1], out=y)
        x += y
        r0, r1 = max(0, a * BLOCK - j0), min(length, b * BLOCK - j0)
        g0 = r0 + j0 - a * BLOCK
        out[:, r0:r1].copy_(x.view(2, (b - a) * BLOCK, n)[:, g0 : g0 + r1 - r0])
    return out


def _trunc_div(a: int, b: int) -> int:
    return a // b if a >= 0 else -(-a // b)


def _gathered(
    freqs: torch.Tensor,
    pos: torch.Tensor,
    factor: float,
    table: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``[2, N, n]`` tables for int64 positions ``pos`` ``[N]`` (CPU): trig once per
    distinct ``hi`` (the blocks between min and max, when fewer than ``N``) and per
    ``lo``, then gathered rows combined chunk by chunk."""
    n, count = freqs.shape[0], pos.shape[0]
    if table is None:
        table = fine_table(freqs, attention_factor=factor)
    # token-major (rows gathered along dim 0), and only f * (cos, sin)(lo): the
    # (-sin, cos) half is the same numbers, used through a subtraction below
    fine_rows = table[0].transpose(0, 1).contiguous()  # [2B - 1, 2, n]
    lo = torch.fmod(pos, BLOCK)  # the sign of pos, as torch.fmod of the float64 value
    first, last = (int(v) for v in torch.aminmax(pos))
    k_min, k_max = _trunc_div(first, BLOCK), _trunc_div(last, BLOCK)
    f64 = dict(dtype=torch.float64, device=freqs.device)
    if k_max - k_min < count:
        angle = (torch.arange(k_min, k_max + 1, **f64) * BLOCK).unsqueeze(-1) * freqs
        hi_index = torch.div(pos - lo, BLOCK, rounding_mode="trunc") - k_min
    else:  # sparse positions: trig of each token's hi
        angle = (pos - lo).to(torch.float64).unsqueeze(-1) * freqs
        hi_index = None
    hi_rows = torch.stack((torch.cos(angle), torch.sin(angle)), dim=1)  # [rows, 2, n]
    lo_index = lo + (BLOCK - 1)
    out = torch.empty(2, count, n, dtype=dtype, device=freqs.device)
    per_chunk = max(1, 2 * _CHUNK_BYTES // (4 * max(n, 1) * 8))
    hb = torch.empty(min(per_chunk, count), 2, n, **f64)
    fb = torch.empty(min(per_chunk, count), 2, n, **f64)
    xb, yb = (
        torch.empty(2, min(per_chunk, count), n, **f64),
        torch.empty(2, min(per_chunk, count), n, **f64),
    )
    for a in range(0, count, per_chunk):
        b = min(count, a + per_chunk)
        h, fine, x, y = hb[: b - a], fb[: b - a], xb[:, : b - a], yb[:, : b - a]
        if hi_index is None:
            h = hi_rows[a:b]
        else:
            torch.index_select(hi_rows, 0, hi_index[a:b], out=h)
        torch.index_select(fine_rows, 0, lo_index[a:b], out=fine)
        # _combine in the chunk's buffers: x = c_hi * (C, S), y = s_hi * (C, S), then
        # cos = x0 - y1 (= c_hi C + s_hi (-S), bit for bit) and sin = x1 + y0
        fine = fine.transpose(0, 1)  # [2, c, n]
        torch.mul(h[:, 0], fine, out=x)
        torch.mul(h[:, 1], fine, out=y)
        x[0].sub_(y[1])
        x[1].add_(y[0])
        out[:, a:b].copy_(x)
    return out


def _arange_starts(rows: torch.Tensor) -> list[int] | None:
    """First positions of int64 ``rows`` ``[R, s]`` if each is ``start + arange(s)`` with
    ``start >= 0``, else None. Reads the data: CPU only."""
    if not bool((rows.diff(dim=-1) == 1).all()):
        return None
    starts = rows[:, 0].tolist()
    return starts if min(starts) >= 0 else None


def _cpu_tables(
    freqs: torch.Tensor,
    positions: torch.Tensor,
    factor: float,
    table: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """``[2, *P, n]`` tables for CPU positions outside torch.compile, structure read from
    the data (aranges: the grid; other integers: gathered rows); None for small or
    non-integer positions (token by token)."""
    n = freqs.shape[0]
    if positions.numel() < _MIN_GRID_ROW:  # decode sizes: read as a list, one row only
        values = positions.reshape(-1).tolist()
        _check_position_list(values, positions.is_floating_point())
        if len(values) != positions.shape[-1:].numel():
            return None
        if positions.is_floating_point() and not all(v.is_integer() for v in values):
            return None
        first = int(values[0])
        if first < 0 or values != list(range(first, first + len(values))):
            return None
        got = _range_grid(freqs, first, len(values), factor, table, dtype)
        return got if positions.ndim == 1 else got.view(2, *positions.shape, n)
    check_positions(positions)
    if positions.is_floating_point() and not bool((positions == positions.trunc()).all()):
        return None
    pos = positions.to(torch.int64)  # exact: |positions| <= 2**53 was checked
    s = positions.shape[-1]
    shape = (2, *positions.shape, n)
    if s >= _MIN_GRID_ROW:
        grid_rows = pos.reshape(-1, s)
        starts = _arange_starts(grid_rows)
        if starts is not None:
            out = torch.empty(2, len(starts), s, n, dtype=dtype)
            done: dict[int, int] = {}
            for r, start in enumerate(starts):
                if start in done:
                    out[:, r].copy_(out[:, done[start]])
                else:
                    _range_grid(freqs, start, s, factor, table, dtype, out[:, r])
                    done[start] = r
            return out.view(shape)
    return _gathered(freqs, pos.reshape(-1), factor, table, dtype).view(shape)


# --------------------------------------------------------------------------------- API


def fine_table(inv_freq: torch.Tensor, *, attention_factor: float = 1.0) -> torch.Tensor:
    """The ``lo`` part of the tables, for callers that build many tables of one ``inv_freq``.

    ``attention_factor * [[cos, sin], [-sin, cos]](j * inv_freq)`` for ``j = -(B - 1) ..
    B - 1``: ``[2, 2, 2B - 1, n]`` float64 on ``inv_freq``'s device. Passed as
    ``fine_table=`` to :func:`cos_sin` / :func:`cos_sin_range` with the same ``inv_freq``
    and ``attention_factor`` (which is not checked), it saves the trig of ``lo`` on every
    call and changes no value.
    """
    freqs = _f64(_check_inv_freq(inv_freq), inv_freq.device)
    attention_factor = check_float("attention_factor", attention_factor, positive=True)
    j = torch.arange(-(BLOCK - 1), BLOCK, dtype=torch.float64, device=freqs.device)
    angle = j.unsqueeze(-1) * freqs
    return _fine_rows(torch.cos(angle), torch.sin(angle), attention_factor)


def cos_sin(
    inv_freq: torch.Tensor,
    positions: torch.Tensor,
    *,
    attention_factor: float = 1.0,
    dtype: torch.dtype = torch.float32,
    fine_table: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for ``positions``.

    ``cos[..., i] = attention_factor * cos(m * inv_freq[i])`` (and likewise ``sin``),
    where ``m = positions[...]``, computed in float64 by angle addition and rounded once
    (see the module docstring: each entry depends on its own ``m`` only).

    Args:
        inv_freq: ``[n]`` real tensor of inverse frequencies (any float dtype; used in float64).
        positions: ``[*P]`` integer or real tensor, negative allowed; its device is the
            output device.
        attention_factor: finite ``> 0`` multiplier folded into both tables (YaRN's
            attention temperature, LongRoPE's scale; 1 for plain RoPE).
        dtype: floating dtype of the returned tables.
        fine_table: optional ``fine_table(inv_freq, attention_factor=attention_factor)``,
            precomputed: changes the speed, never the values.

    Returns:
        ``(cos, sin)``, each ``[*P, n]`` of ``dtype`` (two halves of one buffer).

    Speed: on CPU outside ``torch.compile`` the positions are read (as the value checks
    read them already): rows that are aranges (``torch.arange(4096)``, ``offsets[:, None]
    + arange(s)``) are built like :func:`cos_sin_range`, other integer positions with the
    trig of each distinct ``hi`` and ``lo`` only. Elsewhere (accelerators, where reading
    would sync, and ``torch.compile``) each token costs the trig of its ``hi`` (and of its
    ``lo`` without ``fine_table``): when the positions are a range, use
    :func:`cos_sin_range`.

    Example:
        >>> import math
        >>> c, s = cos_sin(torch.tensor([1.0]), torch.tensor([0, 1]))
        >>> torch.allclose(c[:, 0], torch.tensor([1.0, math.cos(1.0)]))
        True
    """
    _check_inv_freq(inv_freq)
    _check_positions_dtype(positions)
    attention_factor = check_float("attention_factor", attention_factor, positive=True)
    check_float_dtype("dtype", dtype)
    freqs = _f64(inv_freq, positions.device)
    table = _check_fine_table(fine_table, freqs.shape[0], positions.device)
    return position_tables(freqs, positions, attention_factor, table, dtype)


def position_tables(
    freqs: torch.Tensor,
    positions: torch.Tensor,
    factor: float,
    table: torch.Tensor | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cos_sin` for callers that hold checked frequencies: float64 ``freqs``
    ``[n]`` and ``table`` (:func:`fine_table` of them, or None) on ``positions``' device,
    a floating ``dtype``. The
    positions are checked here (dtype, and values where they can be read). For modules,
    which validate their frequencies once at construction."""
    _check_positions_dtype(positions)
    both = None
    if (
        positions.is_cpu
        and not _is_compiling()
        and positions.numel()
        and not _needs_grad(freqs)
    ):
        both = _cpu_tables(freqs, positions, factor, table, dtype)  # checks values
    else:
        check_positions(positions)
    if both is None:
        both = _per_token(freqs, positions, factor, table).to(dtype)
    return both.unbind(0)


def cos_sin_range(
    inv_freq: torch.Tensor,
    start: int,
    length: int,
    *,
    attention_factor: float = 1.0,
    dtype: torch.dtype = torch.float32,
    fine_table: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables for the positions ``start, start + 1, ..., start + length - 1``.

    Bit for bit ``cos_sin(inv_freq, torch.arange(start, start + length,
    device=inv_freq.device), ...)``, without a positions tensor, its checks or reading
    any tensor data (no host sync): trig only for the ``~length / B`` distinct ``hi`` and
    the ``lo`` of one block (no ``lo`` trig with ``fine_table``), then four float64
    passes. For the tables of ``offset + arange(s)`` (prefill and decode with an int
    offset).

    Args:
        inv_freq: ``[n]`` real tensor; its device is the output device.
        start: int (a symbolic int under ``torch.compile``), ``|start| <= 2**53``.
        length: int ``>= 0``, with ``|start + length - 1| <= 2**53``.
        attention_factor, dtype, fine_table: as in :func:`cos_sin`.

    Returns:
        ``(cos, sin)``, each ``[length, n]`` of ``dtype`` (two halves of one buffer).

    Under ``torch.compile`` (no branching on the symbolic ``start`` and ``length``) and
    for ``start < 0`` the tables are built token by token, with the same values.

    Example:
        >>> c, s = cos_sin_range(torch.tensor([1.0]), 5, 3)
        >>> torch.equal(c, cos_sin(torch.tensor([1.0]), torch.arange(5, 8))[0])
        True
    """
    _check_inv_freq(inv_freq)
    compiling = _is_compiling()
    if not compiling:  # (symbolic ints must not be turned into Python ints)
        start = check_int("start", start)
        length = check_int("length", length, minimum=0)
    attention_factor = check_float("attention_factor", attention_factor, positive=True)
    check_float_dtype("dtype", dtype)
    freqs = _f64(inv_freq, inv_freq.device)
    table = _check_fine_table(fine_table, freqs.shape[0], freqs.device)
    if compiling or _needs_grad(freqs):
        p = torch.arange(start, start + length, device=freqs.device)  # int64
        both = _per_token(freqs, p, attention_factor, table).to(dtype)
        return both[0], both[1]
    return range_tables(freqs, start, length, attention_factor, table, dtype)


def range_tables(
    freqs: torch.Tensor,
    start: int,
    length: int,
    factor: float,
    table: torch.Tensor | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cos_sin_range` for callers that hold checked arguments (eager, no grad):
    float64 ``freqs`` ``[n]``, ``table`` from :func:`fine_table` of them (or None) on
    their device, a floating ``dtype``, ``length >= 0``. Only the positions' range is
    checked here. For modules, which validate their frequencies once at construction:
    at decode sizes the argument checks of the public function cost a third of the tables.
    """
    last = start + length - 1
    if (start < 0 or last > MAX_EXACT_POSITION) and max(abs(start), abs(last)) > MAX_EXACT_POSITION:
        raise RopeValueError(
            f"start={start} with length={length} reaches |position| "
            f"{max(abs(start), abs(last))}: expected |position| <= 2**53"
        )
    if length == 0:
        both = torch.empty(2, 0, freqs.shape[0], dtype=dtype, device=freqs.device)
    elif start < 0:
        p = torch.arange(start, start + length, device=freqs.device)  # int64
        both = _per_token(freqs, p, factor, table).to(dtype)
    else:
        both = _range_grid(freqs, start, length, factor, table, dtype)
    return both.unbind(0)
