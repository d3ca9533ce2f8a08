"""Max |cos/sin - exact| of N-axis RoPE tables: ropekit vs the peers' own rotary code.

"Exact" is 40-digit mpmath: each band's angle ``coordinate * freq`` from the family's
formula (the frequencies' own formula in mpmath too, not ropekit's float64 values), with
the coordinate as the family defines it (fractional for DINOv3 and LTX). ropekit's
tables are float32 (``ropekit.axes.cos_sin``); the peers' are what their rotary modules
return (float32; Flux builds float64 angles). Run:

    PYTHONPATH=src .venv/bin/python benchmarks/precision_axes.py

Needs transformers 5.24 and diffusers 0.42.1 (the pinned test extras).
"""

from __future__ import annotations

import math

import mpmath
import torch

from ropekit.axes import cos_sin, preset
from ropekit.axes import positions as P

mpmath.mp.dps = 40
F64 = torch.float64


def mp_spectrum(dim: int, theta: float) -> list[mpmath.mpf]:
    return [mpmath.power(mpmath.mpf(theta), mpmath.mpf(-2 * k) / dim) for k in range(dim // 2)]


def exact(coords: list[list[mpmath.mpf]], axis: list[int], freq: list[mpmath.mpf]):
    cs, ss = [], []
    for row in coords:
        angles = [row[a] * f for a, f in zip(axis, freq, strict=True)]
        cs.append([float(mpmath.cos(x)) for x in angles])
        ss.append([float(mpmath.sin(x)) for x in angles])
    return torch.tensor(cs, dtype=F64), torch.tensor(ss, dtype=F64)


def err(c: torch.Tensor, s: torch.Tensor, ec: torch.Tensor, es: torch.Tensor) -> float:
    return max(float((c.to(F64) - ec).abs().max()), float((s.to(F64) - es).abs().max()))


def qwen2_vl_text(offset: int):
    from transformers import Qwen2VLTextConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding

    cfg = preset("qwen2_vl")
    hf = Qwen2VLRotaryEmbedding(Qwen2VLTextConfig(hidden_size=3584, num_attention_heads=28,
                                                  rope_parameters={"rope_type": "default",
                                                                   "rope_theta": 1e6}))  # fmt: skip
    pos = torch.tensor([[offset + 7, offset + 3, offset + 11], [offset + 1000, offset + 5, offset]])
    hc, hs = hf(torch.zeros(1), pos.T[:, None, :])
    axis = list(cfg.axis)
    freq = mp_spectrum(128, 1e6)
    ec, es = exact([[mpmath.mpf(int(v)) for v in r] for r in pos.tolist()], axis, freq)
    c, s = cos_sin(cfg, pos)
    return err(c, s, ec, es), err(hc[0, :, :64], hs[0, :, :64], ec, es)


def dinov3(side: int):
    from transformers import DINOv3ViTConfig
    from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTRopePositionEmbedding

    cfg = preset("dinov3")
    hf = DINOv3ViTRopePositionEmbedding(DINOv3ViTConfig(hidden_size=384, num_attention_heads=6,
                                                        patch_size=16)).eval()  # fmt: skip
    hc, hs = hf(torch.zeros(1, 3, 16 * side, 16 * (side + 3)))
    coords = P.patch_centers(side, side + 3)
    sel = torch.linspace(0, coords.shape[0] - 1, 64).long()
    two_pi = 2 * mpmath.pi
    freq = [two_pi * f for f in mp_spectrum(32, 100.0)] * 2
    mp_coords = [[2 * (mpmath.mpf(i) + mpmath.mpf(1) / 2) / side - 1,
                  2 * (mpmath.mpf(j) + mpmath.mpf(1) / 2) / (side + 3) - 1]
                 for i in range(side) for j in range(side + 3)]  # fmt: skip
    ec, es = exact([mp_coords[k] for k in sel.tolist()], list(cfg.axis), freq)
    c, s = cos_sin(cfg, coords[sel])
    return err(c, s, ec, es), err(hc[sel, :32], hs[sel, :32], ec, es)


def flux(offset: int):
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    cfg = preset("flux")
    ids = P.flux_ids(4, 6, text_len=2)[::3] + offset
    pc, ps = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(ids)
    freq = mp_spectrum(16, 1e4) + mp_spectrum(56, 1e4) * 2
    ec, es = exact([[mpmath.mpf(int(v)) for v in r] for r in ids.tolist()], list(cfg.axis), freq)
    c, s = cos_sin(cfg, ids)
    return err(c, s, ec, es), err(pc[:, 0::2], ps[:, 0::2], ec, es)


def hunyuan(frames: int):
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed

    cfg = preset("hunyuan_video")
    pc, ps = HunyuanVideoRotaryPosEmbed(2, 1, [16, 56, 56], 256.0)(torch.zeros(1, 1, frames, 8, 8))
    pos = P.grid(frames, 4, 4)
    sel = torch.linspace(0, pos.shape[0] - 1, 64).long()
    freq = mp_spectrum(16, 256.0) + mp_spectrum(56, 256.0) * 2
    ec, es = exact([[mpmath.mpf(int(v)) for v in r] for r in pos[sel].tolist()], list(cfg.axis), freq)
    c, s = cos_sin(cfg, pos[sel])
    return err(c, s, ec, es), err(pc[sel, 0::2], ps[sel, 0::2], ec, es)


def ltx(frames: int):
    from diffusers.models.transformers.transformer_ltx import LTXVideoRotaryPosEmbed

    dim = 2048
    cfg = preset("ltx_video", dim=dim)
    scale = (1 / 25 * 8, 32.0, 32.0)
    peer = LTXVideoRotaryPosEmbed(dim, base_num_frames=20, base_height=2048, base_width=2048)
    pc, ps = peer(torch.zeros(1, frames * 16, dim), frames, 4, 4, rope_interpolation_scale=scale)
    coords = P.ltx_video_coords(frames, 4, 4, base=(20, 2048, 2048), rope_interpolation_scale=scale)
    sel = torch.linspace(0, coords.shape[0] - 1, 16).long()
    kk = dim // 6
    f = [mpmath.pi / 2 * mpmath.power(10000, mpmath.mpf(k) / (kk - 1)) for k in range(kk)]
    freq = [mpmath.mpf(0)] + [x for x in f for _ in range(3)]
    ms = [mpmath.mpf(1) / 25 * 8, mpmath.mpf(32), mpmath.mpf(32)]
    bases = [20, 2048, 2048]
    idx = [(t, i, j) for t in range(frames) for i in range(4) for j in range(4)]
    mp_coords = [[2 * mpmath.mpf(v) * ms[a] / bases[a] - 1 for a, v in enumerate(idx[k])] for k in sel.tolist()]
    ec, es = exact(mp_coords, list(cfg.axis), freq)
    c, s = cos_sin(cfg, coords[sel])
    return err(c, s, ec, es), err(pc[0, sel, 0::2], ps[0, sel, 0::2], ec, es)


def main() -> None:
    rows = [
        ("Qwen2-VL text M-RoPE", "offset 1e4", lambda: qwen2_vl_text(10_000)),
        ("Qwen2-VL text M-RoPE", "offset 1e6", lambda: qwen2_vl_text(1_000_000)),
        ("Qwen2-VL text M-RoPE", "offset 2**24", lambda: qwen2_vl_text(2**24)),
        ("DINOv3 (coords in [-1, 1])", "16 x 19 patches", lambda: dinov3(16)),
        ("DINOv3 (coords in [-1, 1])", "256 x 259 patches", lambda: dinov3(256)),
        ("Flux.1 ids", "offset 0", lambda: flux(0)),
        ("Flux.1 ids", "offset 1e5", lambda: flux(100_000)),
        ("HunyuanVideo (t, h, w)", "129 frames", lambda: hunyuan(129)),
        ("LTX-Video (dim 2048)", "121 frames", lambda: ltx(121)),
    ]
    print(f"{'family':<28} {'positions':<18} {'ropekit fp32':>13} {'peer':>13}")
    for name, where, fn in rows:
        ours, peer = fn()
        print(f"{name:<28} {where:<18} {ours:>13.2e} {peer:>13.2e}")
    print("float32 rounding step near 1: 2**-24 =", f"{2**-24:.2e}", "| pi =", math.pi)


if __name__ == "__main__":
    main()
