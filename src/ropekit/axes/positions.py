"""Position builders for N-axis RoPE: pure functions returning ``[*, A]`` coordinates.

Notation: ``A`` axes (last dim of every result), ``b`` batch, ``s`` sequence length,
``N`` tokens of one image/video, ``T, H, W`` a grid's frames, rows and columns, ``m`` the
spatial merge size. Row-major order everywhere (``t`` slowest, then ``h``, then ``w``),
as every peer flattens its grids. Integer grids are int64; coordinates that can be
fractional are float64 (never the model's dtype, never float32).

Prefix tokens (CLS, registers) that a model does not rotate get coordinate 0 on every
axis (:func:`with_prefix`): angle 0 is ``cos = 1, sin = 0``, which leaves a finite lane
unchanged bit for bit (``x * 1 - y * 0 == x``), as skipping the rotation does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import RopeValueError, check_bool, check_float, check_int, check_tensor

__all__ = [
    "cogvideox_grid",
    "dinov3_augment",
    "eva_grid",
    "flux2_ids",
    "flux_ids",
    "grid",
    "llama4_vision_positions",
    "ltx_video_coords",
    "mrope_decode_positions",
    "mrope_positions",
    "patch_centers",
    "qwen_vl_vision_positions",
    "with_prefix",
]

_F64 = torch.float64


def _sizes(sizes: Sequence[int], minimum: int = 1) -> tuple[int, ...]:
    return tuple(check_int(f"sizes[{i}]", s, minimum=minimum) for i, s in enumerate(sizes))


def _mesh(axes: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[prod(len), A]`` row-major cartesian product of 1-D coordinate tensors."""
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


def grid(*sizes: int, start: int = 0) -> torch.Tensor:
    """The integer grid ``[prod(sizes), A]``: row ``r`` holds the row-major coordinates of
    token ``r`` plus ``start`` (Wan, HunyuanVideo: ``grid(T, H, W)``; Pixtral and unmerged
    ViTs: ``grid(H, W)``).

    Example:
        >>> grid(2, 3)[:4].tolist()
        [[0, 0], [0, 1], [0, 2], [1, 0]]
    """
    dims = _sizes(sizes)
    if not dims:
        raise RopeValueError("grid() needs at least one size")
    start = check_int("start", start)
    return _mesh([torch.arange(start, start + n, dtype=torch.int64) for n in dims])


def with_prefix(positions: torch.Tensor, count: int, *, at: str = "start") -> torch.Tensor:
    """``positions`` ``[N, A]`` with ``count`` rows of zeros (angle 0: unrotated tokens)
    before them (``at="start"``: CLS and registers of DINOv3, EVA-02) or after them
    (``at="end"``: Llama 4 vision's CLS)."""
    check_tensor("positions", positions)
    if positions.ndim != 2:
        raise RopeValueError(f"positions.shape={tuple(positions.shape)}: expected [N, A]")
    count = check_int("count", count, minimum=0)
    if at not in ("start", "end"):
        raise RopeValueError(f"at={at!r} is not allowed: expected 'start' or 'end'")
    zeros = positions.new_zeros(count, positions.shape[1])
    return torch.cat((zeros, positions) if at == "start" else (positions, zeros))


# ----------------------------------------------------------------- vision encoders


def qwen_vl_vision_positions(grid_thw: torch.Tensor | Sequence[Sequence[int]],
                             spatial_merge_size: int = 2) -> torch.Tensor:  # fmt: skip
    """Qwen2-VL / 2.5-VL / 3-VL vision encoder positions ``[sum T H W, 2]`` (h, w), int64.

    Patches are ordered as the encoder sees them: each frame's ``H x W`` grid in blocks of
    ``m x m`` (the patches one merged token is made of), blocks row-major, patches
    row-major inside a block; every frame repeats the frame's coordinates.

    Args:
        grid_thw: ``[images, 3]`` integer ``(T, H, W)`` patch grids, ``H`` and ``W``
            multiples of ``m``.
        spatial_merge_size: ``m``.
    """
    rows = _grids("grid_thw", grid_thw)
    m = check_int("spatial_merge_size", spatial_merge_size, minimum=1)
    out = []
    for i, (t, h, w) in enumerate(rows):
        if h % m or w % m:
            raise RopeValueError(
                f"grid_thw[{i}]={[t, h, w]} is not allowed with spatial_merge_size={m}: "
                "expected H and W multiples of it"
            )
        # [H/m, m, W/m, m] -> blocks (H/m, W/m) outer, (m, m) inner
        hw = grid(h, w).view(h // m, m, w // m, m, 2).permute(0, 2, 1, 3, 4).reshape(-1, 2)
        out.append(hw.repeat(t, 1))
    return torch.cat(out) if out else torch.zeros(0, 2, dtype=torch.int64)


def patch_centers(height: int, width: int) -> torch.Tensor:
    """DINOv3 patch-centre coordinates ``[H W, 2]`` (y, x), float64 in ``(-1, 1)``:
    ``c = 2 (i + 0.5) / H - 1`` (likewise x). Prepend the prefix tokens with
    :func:`with_prefix`."""
    h, w = _sizes((height, width))
    ys = 2.0 * ((torch.arange(h, dtype=_F64) + 0.5) / h) - 1.0
    xs = 2.0 * ((torch.arange(w, dtype=_F64) + 0.5) / w) - 1.0
    return _mesh([ys, xs])


def dinov3_augment(
    coords: torch.Tensor,
    *,
    shift: float | None = None,
    jitter: float | None = None,
    rescale: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DINOv3's training-time augmentation of patch coordinates ``[N, 2]`` (float64).

    In this order, each optional: add one ``U[-shift, shift]`` per axis; multiply by one
    ``exp(U[-ln jitter, ln jitter])`` per axis; multiply both axes by one ``exp(U[-ln
    rescale, ln rescale])``. Draws come from ``generator`` (explicit, so a training step
    is reproducible and nothing global is consumed), in float64.
    """
    check_tensor("coords", coords)
    if coords.ndim != 2 or coords.shape[1] != 2 or not coords.is_floating_point():
        raise RopeValueError(
            f"coords with shape {tuple(coords.shape)} and dtype {coords.dtype} is not "
            "allowed: expected real [N, 2] coordinates"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise RopeValueError(f"generator={generator!r} is not allowed: expected a torch.Generator")
    out = coords.to(_F64)

    def uniform(count: int, bound: float) -> torch.Tensor:
        u = torch.rand(count, generator=generator, dtype=_F64, device=generator.device
                       if generator is not None else out.device)  # fmt: skip
        return (2.0 * u - 1.0).to(out.device) * bound

    if shift is not None:
        out = out + uniform(2, check_float("shift", shift, positive=True))
    if jitter is not None:
        j = check_float("jitter", jitter, minimum=1.0)
        out = out * uniform(2, math.log(j)).exp()
    if rescale is not None:
        r = check_float("rescale", rescale, minimum=1.0)
        out = out * uniform(1, math.log(r)).exp()
    return out


def eva_grid(
    height: int,
    width: int,
    *,
    ref_feat_shape: Sequence[int] | None = None,
    grid_offset: float = 0.0,
) -> torch.Tensor:
    """EVA-02 grid ``[H W, 2]`` (h, w), float64: ``(i + grid_offset) * ref_h / H`` (likewise
    w), which maps a grid of another resolution onto the pretraining one
    (``ref_feat_shape``; ``None``: no rescaling). timm's ``RotaryEmbeddingCat`` with
    ``in_pixels=False``."""
    h, w = _sizes((height, width))
    off = check_float("grid_offset", grid_offset)
    axes = [torch.arange(h, dtype=_F64) + off, torch.arange(w, dtype=_F64) + off]
    if ref_feat_shape is not None:
        ref = _sizes(ref_feat_shape)
        if len(ref) != 2:
            raise RopeValueError(f"ref_feat_shape={ref_feat_shape!r}: expected (H, W)")
        axes = [axes[0] / h * ref[0], axes[1] / w * ref[1]]
    return _mesh(axes)


def llama4_vision_positions(side: int) -> torch.Tensor:
    """Llama 4 vision positions ``[side**2 + 1, 2]`` (x, y), int64: patch ``r`` of the
    ``side x side`` grid at ``(r % side + 1, r // side + 1)``, then the CLS token at
    ``(0, 0)`` (angle 0), last, as the model appends it."""
    n = check_int("side", side, minimum=1)
    yx = grid(n, n, start=1)
    return with_prefix(yx.flip(-1), 1, at="end")


# ------------------------------------------------------------ diffusion transformers


def flux_ids(height: int, width: int, text_len: int = 0) -> torch.Tensor:
    """Flux.1 ids ``[L + H W, 3]``: ``L`` text tokens at ``(0, 0, 0)``, then the packed
    latent ``(0, row, col)``, as the pipeline concatenates ``txt_ids`` and ``img_ids``."""
    h, w = _sizes((height, width))
    text = torch.zeros(check_int("text_len", text_len, minimum=0), 3, dtype=torch.int64)
    return torch.cat((text, grid(1, h, w)))


def flux2_ids(height: int, width: int, text_len: int = 0, *, t: int = 0) -> torch.Tensor:
    """Flux 2 ids ``[L + H W, 4]`` over ``(t, h, w, l)``: text token ``i`` at ``(0, 0, 0, i)``,
    then the latent at ``(t, row, col, 0)`` (text first, as the transformer concatenates)."""
    h, w = _sizes((height, width))
    length = check_int("text_len", text_len, minimum=0)
    text = torch.zeros(length, 4, dtype=torch.int64)
    text[:, 3] = torch.arange(length)
    img = torch.cat((grid(1, h, w), torch.zeros(h * w, 1, dtype=torch.int64)), dim=1)
    img[:, 0] = check_int("t", t)
    return torch.cat((text, img))


def cogvideox_grid(
    frames: int,
    height: int,
    width: int,
    *,
    crops_coords: tuple[Sequence[float], Sequence[float]] | None = None,
    grid_type: str = "linspace",
) -> torch.Tensor:
    """CogVideoX coordinates ``[T H W, 3]`` (t, h, w), float64.

    ``grid_type="linspace"`` (CogVideoX 1.0): h takes ``H`` evenly spaced values from
    ``start_h`` to ``stop_h (H - 1) / H`` (``crops_coords = ((start_h, start_w), (stop_h,
    stop_w))``, default ``((0, 0), (H, W))``), likewise w; t is ``0 .. T - 1``.
    ``grid_type="slice"`` (CogVideoX 1.5): integer ``0 .. H - 1`` (the first rows of a
    ``max_size`` grid).
    """
    t, h, w = _sizes((frames, height, width))
    if grid_type == "slice":
        return grid(t, h, w).to(_F64)
    if grid_type != "linspace":
        raise RopeValueError(f"grid_type={grid_type!r} is not allowed: expected 'linspace' or 'slice'")
    (h0, w0), (h1, w1) = crops_coords if crops_coords is not None else ((0, 0), (h, w))
    h0, w0, h1, w1 = (check_float(n, v) for n, v in zip(("start_h", "start_w", "stop_h", "stop_w"),
                                                       (h0, w0, h1, w1), strict=True))  # fmt: skip

    def linspace(a: float, b: float, count: int) -> torch.Tensor:
        # a + k (b - a) / (count - 1) in float64 (torch.linspace's values, exactly rounded)
        if count == 1:
            return torch.tensor([a], dtype=_F64)
        return a + torch.arange(count, dtype=_F64) * ((b - a) / (count - 1))

    return _mesh([torch.arange(t, dtype=_F64), linspace(h0, h1 * (h - 1) / h, h),
                  linspace(w0, w1 * (w - 1) / w, w)])  # fmt: skip


def ltx_video_coords(
    frames: int,
    height: int,
    width: int,
    *,
    patch_size: int = 1,
    patch_size_t: int = 1,
    base: Sequence[float] = (20, 2048, 2048),
    rope_interpolation_scale: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """LTX-Video coordinates ``[T H W, 3]`` (f, h, w), float64:
    ``2 * i * scale_a * patch_a / base_a - 1`` for latent index ``i`` (``patch_t`` for f),
    LTX's mapping of the latent grid onto ``[-1, 1]`` of the base grid."""
    dims = _sizes((frames, height, width))
    ps = check_int("patch_size", patch_size, minimum=1)
    pt = check_int("patch_size_t", patch_size_t, minimum=1)
    bases = [check_float(f"base[{i}]", b, positive=True) for i, b in enumerate(base)]
    scales = [check_float(f"rope_interpolation_scale[{i}]", v, positive=True)
              for i, v in enumerate(rope_interpolation_scale)]  # fmt: skip
    if len(bases) != 3 or len(scales) != 3:
        raise RopeValueError("base and rope_interpolation_scale need 3 values (f, h, w)")
    patches = (pt, ps, ps)
    axes = [torch.arange(n, dtype=_F64) * scales[a] * patches[a] / bases[a] * 2.0 - 1.0
            for a, n in enumerate(dims)]  # fmt: skip
    return _mesh(axes)


# -------------------------------------------------------------- M-RoPE (Qwen-VL)


def _grids(name: str, value: torch.Tensor | Sequence[Sequence[int]] | None) -> list[list[int]]:
    if value is None:
        return []
    rows = value.tolist() if isinstance(value, torch.Tensor) else [list(r) for r in value]
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, list) or len(r) != 3:
            raise RopeValueError(f"{name}[{i}]={r!r} is not allowed: expected (T, H, W)")
        out.append([check_int(f"{name}[{i}][{j}]", v, minimum=1) for j, v in enumerate(r)])
    return out


def mrope_positions(
    token_types: torch.Tensor,
    image_grid_thw: torch.Tensor | Sequence[Sequence[int]] | None = None,
    video_grid_thw: torch.Tensor | Sequence[Sequence[int]] | None = None,
    *,
    spatial_merge_size: int = 2,
    tokens_per_second: float | None = None,
    second_per_grid_ts: torch.Tensor | Sequence[float] | None = None,
    attention_mask: torch.Tensor | None = None,
    time_rounding: str = "none",
    split_video_frames: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL M-RoPE positions of a mixed sequence.

    Walking the valid tokens of a row with a running start ``p`` (0 at first):

    * a run of ``L`` text tokens (type 0) gets ``t = h = w = p, ..., p + L - 1``; then
      ``p += L``;
    * an image (type 1) or video (type 2) of grid ``(T, H, W)`` is ``T (H/m) (W/m)``
      tokens, row-major over ``(frame k, row i, col j)``: ``t = p + k * dt``, ``h = p +
      i``, ``w = p + j``; then ``p = floor(max(t, h, w)) + 1``. ``dt = tokens_per_second *
      second_per_grid_ts[v]`` for the ``v``-th video when ``tokens_per_second`` is given
      (Qwen2.5-VL), else 1 (Qwen2-VL; Qwen3-VL, whose processor sends each frame as its own
      ``T = 1`` grid between timestamp text); still images always have ``dt = 1``
      (transformers #45325). Consecutive vision tokens may hold several grids in a row.

    Time is kept fractional (``time_rounding="none"``): ``k * dt`` is not rounded, so
    every frame keeps its own exact time (``dt = 0.25`` gives ``0, 0.25, 0.5, ...``; cast
    to int, as in PR #48669's bug, they would all collapse onto 0).
    ``time_rounding="floor"`` floors ``k * dt`` to an integer, which is what the Qwen2.5-VL
    release code and transformers 5.24 compute (``(arange(T) * dt).long()``), for
    matching checkpoints' own numerics.

    Differences from transformers 5.24's ``get_rope_index``, on purpose: after an image or
    video, transformers starts the next text at ``p + max(H, W) / m``, ignoring the time
    axis, so after a video whose last time id ``p + (T - 1) dt`` reaches that value the
    text positions collide with the video's times and disagree with its own
    ``rope_deltas`` (which use the true maximum). ropekit starts it after the maximum of
    all three axes, as the Qwen2-VL release code did (``st_idx = max() + 1``).

    Args:
        token_types: ``[b, s]`` (or ``[s]``) integer: 0 text, 1 image, 2 video tokens
            (transformers' ``mm_token_type_ids``).
        image_grid_thw, video_grid_thw: ``[images, 3]`` / ``[videos, 3]`` patch grids
            ``(T, H, W)`` in order of appearance (before the merge).
        spatial_merge_size: ``m``.
        tokens_per_second: Qwen2.5-VL's ``vision_config.tokens_per_second``; None for
            Qwen2-VL and Qwen3-VL.
        second_per_grid_ts: seconds per temporal grid step, one per video (default 1.0).
        attention_mask: ``[b, s]`` (or ``[s]``); tokens where it is 0 (padding) are
            skipped and get position 0.
        time_rounding: ``"none"`` (exact, float64) or ``"floor"``.
        split_video_frames: Qwen3-VL: each video grid ``(T, H, W)`` is ``T`` grids ``(1,
            H, W)``, one per frame (its processor writes a timestamp between frames).

    Returns:
        ``(positions, rope_deltas)``: float64 ``[b, s, 3]`` (or ``[s, 3]``) coordinates
        ``(t, h, w)``, and ``[b]`` (or ``[]``) float64 ``next_start - valid_tokens``: a
        token decoded after the prompt, at cache index ``c``, has ``t = h = w = c +
        rope_deltas`` (:func:`mrope_decode_positions`).
    """
    check_tensor("token_types", token_types)
    if token_types.ndim not in (1, 2) or token_types.is_floating_point() or token_types.dtype == torch.bool:
        raise RopeValueError(
            f"token_types with shape {tuple(token_types.shape)} and dtype {token_types.dtype} "
            "is not allowed: expected integer [b, s] or [s] (0 text, 1 image, 2 video)"
        )
    single = token_types.ndim == 1
    types = token_types.reshape(1, -1) if single else token_types
    if attention_mask is not None:
        check_tensor("attention_mask", attention_mask)
        mask = attention_mask.reshape(1, -1) if single else attention_mask
        if mask.shape != types.shape:
            raise RopeValueError(
                f"attention_mask.shape={tuple(attention_mask.shape)} is not allowed: expected "
                f"the shape of token_types {tuple(token_types.shape)}"
            )
        mask = mask.bool().cpu()
    else:
        mask = torch.ones(types.shape, dtype=torch.bool)
    m = check_int("spatial_merge_size", spatial_merge_size, minimum=1)
    tps = None if tokens_per_second is None else check_float(
        "tokens_per_second", tokens_per_second, positive=True)  # fmt: skip
    if time_rounding not in ("none", "floor"):
        raise RopeValueError(f"time_rounding={time_rounding!r} is not allowed: expected 'none' or 'floor'")
    grids = {1: _grids("image_grid_thw", image_grid_thw), 2: _grids("video_grid_thw", video_grid_thw)}
    check_bool("split_video_frames", split_video_frames)
    if second_per_grid_ts is None:
        spg = [1.0] * len(grids[2])
    else:
        values = (second_per_grid_ts.tolist() if isinstance(second_per_grid_ts, torch.Tensor)
                  else list(second_per_grid_ts))  # fmt: skip
        spg = [check_float(f"second_per_grid_ts[{i}]", v, minimum=0.0) for i, v in enumerate(values)]
        if len(spg) != len(grids[2]):
            raise RopeValueError(
                f"second_per_grid_ts has {len(spg)} values for {len(grids[2])} videos: "
                "expected one per video"
            )
    if split_video_frames:
        spg = [v for v, (t, _, _) in zip(spg, grids[2], strict=True) for _ in range(t)]
        grids[2] = [[1, h, w] for t, h, w in grids[2] for _ in range(t)]
    used = {1: 0, 2: 0}
    rows = types.cpu().tolist()
    out = torch.zeros(*types.shape, 3, dtype=_F64)
    deltas = []
    for r, (row, keep) in enumerate(zip(rows, mask.tolist(), strict=True)):
        valid = [t for t, k in zip(row, keep, strict=True) if k]
        pieces: list[torch.Tensor] = []
        p = 0
        i = 0
        while i < len(valid):
            kind = valid[i]
            if kind not in (0, 1, 2):
                raise RopeValueError(
                    f"token_types contains {kind!r}: expected 0 (text), 1 (image) or 2 (video)"
                )
            j = i
            while j < len(valid) and valid[j] == kind:
                j += 1
            run = j - i
            if kind == 0:
                pieces.append((p + torch.arange(run, dtype=_F64)).unsqueeze(-1).expand(run, 3))
                p += run
            while kind != 0 and run > 0:
                which = "image" if kind == 1 else "video"
                if used[kind] >= len(grids[kind]):
                    raise RopeValueError(
                        f"row {r} has more {which} tokens than {which}_grid_thw describes: "
                        f"expected one (T, H, W) grid per {which}"
                    )
                t_, h_, w_ = grids[kind][used[kind]]
                if h_ % m or w_ % m:
                    raise RopeValueError(
                        f"{which}_grid_thw[{used[kind]}]={[t_, h_, w_]} is not allowed with "
                        f"spatial_merge_size={m}: expected H and W multiples of it"
                    )
                gh, gw = h_ // m, w_ // m
                count = t_ * gh * gw
                if count > run:
                    raise RopeValueError(
                        f"{which}_grid_thw[{used[kind]}]={[t_, h_, w_]} needs {count} tokens, "
                        f"row {r} has a run of {run}: expected the grids to match the tokens"
                    )
                dt = tps * spg[used[kind]] if (kind == 2 and tps is not None) else 1.0
                frames = torch.arange(t_, dtype=_F64) * dt
                if time_rounding == "floor":
                    frames = frames.floor()
                block = _mesh([frames, torch.arange(gh, dtype=_F64), torch.arange(gw, dtype=_F64)]) + p
                pieces.append(block)
                p = math.floor(float(block.max())) + 1
                used[kind] += 1
                run -= count
            i = j
        ids = torch.cat(pieces) if pieces else torch.zeros(0, 3, dtype=_F64)
        out[r, mask[r]] = ids
        deltas.append(float(p - len(valid)))
    for kind, which in ((1, "image"), (2, "video")):
        if used[kind] != len(grids[kind]):
            raise RopeValueError(
                f"{which}_grid_thw has {len(grids[kind])} grids, the tokens use {used[kind]}: "
                "expected one grid per image/video in the sequence"
            )
    rope_deltas = torch.tensor(deltas, dtype=_F64)
    out = out.to(token_types.device)
    rope_deltas = rope_deltas.to(token_types.device)
    return (out[0], rope_deltas[0]) if single else (out, rope_deltas)


def mrope_decode_positions(rope_deltas: torch.Tensor, start: int, length: int = 1) -> torch.Tensor:
    """M-RoPE positions ``[b, length, 3]`` of tokens decoded after a prompt: cache index
    ``c = start .. start + length - 1`` gets ``t = h = w = c + rope_deltas`` (float64)."""
    check_tensor("rope_deltas", rope_deltas)
    start = check_int("start", start, minimum=0)
    length = check_int("length", length, minimum=0)
    c = torch.arange(start, start + length, dtype=_F64, device=rope_deltas.device)
    pos = c + rope_deltas.to(_F64).reshape(-1, 1)  # [b, length]
    return pos.unsqueeze(-1).expand(*pos.shape, 3).contiguous()

