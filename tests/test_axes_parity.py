"""N-axis RoPE against the peers' own code and independent float64 oracles.

For each family: ropekit's tables (``ropekit.axes.cos_sin`` of the family's preset and
position builder) and rotated q/k against

* an oracle written here in float64 from the family's formula (plain loops over bands,
  never ropekit code), at ~1e-12;
* the peer's rotary module and apply function (transformers 5.24, diffusers 0.42.1),
  which build their angles in float32 (or float64 for Flux/Wan), so within the peer's
  own angle error: ``|angle| * 2**-23`` plus a rounding step.

Shapes are non-square (and a video) so that swapped axes cannot pass. timm's EVA-02 and
RoPE-Mixed are not installed (timm needs torchvision): their oracles are written from
timm's formulas (``timm/layers/pos_embed_sincos.py``: ``freq_bands``,
``build_rotary_pos_embed``, ``init_random_2d_freqs``, ``get_mixed_freqs``).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import ropekit
from ropekit.axes import AxisRotaryEmbedding, MixedRotaryEmbedding, cos_sin, preset
from ropekit.axes import positions as P

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

F64 = torch.float64


def inv(dim: int, theta: float) -> list[float]:
    """theta ** (-2k / dim), k < dim / 2, in float64 (the oracle's own spectrum)."""
    return [1.0 / theta ** (2 * k / dim) for k in range(dim // 2)]


def tables64(angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cos(angle), torch.sin(angle)


def close_to_oracle(got: torch.Tensor, angle: torch.Tensor, which: str = "cos") -> None:
    want = torch.cos(angle) if which == "cos" else torch.sin(angle)
    err = (got.to(F64) - want).abs().max().item()
    assert err < 1e-12, err


def peer_tol(angle: torch.Tensor) -> float:
    """A float32 peer's error bound: its float32 angle and trig, a few rounding steps."""
    return float(angle.abs().max()) * 2**-22 + 4e-7


def rotate_half_oracle(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """float64 rotation of pairs (j, j + n) by angle [..., n]."""
    n = angle.shape[-1]
    x = x.to(F64)
    x1, x2 = x[..., :n], x[..., n : 2 * n]
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, x[..., 2 * n :]], dim=-1)


def rotate_pairs_oracle(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """float64 rotation of pairs (2j, 2j + 1)."""
    n = angle.shape[-1]
    x = x.to(F64)
    a, b = x[..., 0 : 2 * n : 2], x[..., 1 : 2 * n : 2]
    c, s = torch.cos(angle), torch.sin(angle)
    out = x.clone()
    out[..., 0 : 2 * n : 2] = a * c - b * s
    out[..., 1 : 2 * n : 2] = a * s + b * c
    return out


# ------------------------------------------------------------------- Qwen-VL text


def qwen_text_config(cls_name: str, section: list[int], theta: float = 1e4):
    cls = getattr(transformers, cls_name)
    return cls(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               rope_parameters={"rope_type": "default", "rope_theta": theta,
                                "mrope_section": section})  # fmt: skip


def mrope_oracle(pos: torch.Tensor, d: int, theta: float, section: list[int], interleaved: bool):
    """angles [*, d/2]: band j of the 1-D spectrum at the coordinate of its axis."""
    n = d // 2
    f = inv(d, theta)
    if interleaved:  # Qwen3-VL: h at 1, 4, ... (< 3 sec_h), w at 2, 5, ... (< 3 sec_w)
        axis = [1 if j % 3 == 1 and j < 3 * section[1] else 2 if j % 3 == 2 and j < 3 * section[2]
                else 0 for j in range(n)]  # fmt: skip
    else:
        axis = []
        for i, c in enumerate(section):
            axis += [i % 3] * c
    out = torch.empty(*pos.shape[:-1], n, dtype=F64)
    for j in range(n):
        out[..., j] = pos[..., axis[j]].to(F64) * f[j]
    return out


@pytest.mark.parametrize(
    "model, cls_name, section, interleaved",
    [
        ("qwen2_vl", "Qwen2VLTextConfig", [2, 3, 3], False),
        ("qwen2_5_vl", "Qwen2_5_VLTextConfig", [4, 2, 2], False),
        ("qwen3_vl", "Qwen3VLTextConfig", [4, 2, 2], True),
    ],
)
def test_mrope_text_tables_and_rotation_match_transformers(model, cls_name, section, interleaved):
    from importlib import import_module

    mod = import_module(f"transformers.models.{model}.modeling_{model}")
    rotary_cls = {"qwen2_vl": "Qwen2VLRotaryEmbedding", "qwen2_5_vl": "Qwen2_5_VLRotaryEmbedding",
                  "qwen3_vl": "Qwen3VLTextRotaryEmbedding"}[model]  # fmt: skip
    cfg = qwen_text_config(cls_name, section)
    hf = getattr(mod, rotary_cls)(cfg)
    # a text run, a 2x3 image, a 2-frame video with fractional time, text
    tt = torch.tensor([[0, 0] + [1] * 6 + [0] + [2] * 8 + [0, 0]])
    pos, _ = P.mrope_positions(tt, [[1, 4, 6]], [[2, 4, 4]], tokens_per_second=2.0,
                               second_per_grid_ts=[0.5], time_rounding="floor")  # fmt: skip
    pos = pos + 900  # larger angles: float32 peers lose digits, ropekit does not
    ours = preset(model, head_dim=16, theta=1e4, section=tuple(section))
    c, s = cos_sin(ours, pos, dtype=F64)
    angle = mrope_oracle(pos, 16, 1e4, section, interleaved)
    close_to_oracle(c, angle)
    close_to_oracle(s, angle, "sin")
    hc, hs = hf(torch.zeros(1, dtype=torch.float32), pos.permute(2, 0, 1).long())
    assert torch.equal(hc[..., :8], hc[..., 8:])
    tol = peer_tol(angle)
    assert (hc[..., :8].to(F64) - torch.cos(angle)).abs().max() < tol
    assert (hs[..., :8].to(F64) - torch.sin(angle)).abs().max() < tol
    # rotated q/k: transformers' apply_rotary_pos_emb vs the module, both vs the oracle
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, pos.shape[1], 16, generator=g), torch.randn(1, 2, pos.shape[1], 16, generator=g)
    hq, hk = mod.apply_rotary_pos_emb(q, k, hc, hs)
    rq, rk = AxisRotaryEmbedding(ours)(q, k, pos)
    want_q = rotate_half_oracle(q, angle.unsqueeze(1))
    assert (rq.to(F64) - want_q).abs().max() < 4e-6
    assert (rk.to(F64) - rotate_half_oracle(k, angle.unsqueeze(1))).abs().max() < 4e-6
    assert (hq.to(F64) - want_q).abs().max() < 4 * tol
    torch.testing.assert_close(rq, hq, rtol=0, atol=4 * tol)
    torch.testing.assert_close(rk, hk, rtol=0, atol=4 * tol)


# ------------------------------------------------------------------ M-RoPE position ids


def hf_rope_index(model: str, tt, images, videos, *, tps=None, spg=None, merge=2, mask=None):
    from importlib import import_module

    mod = import_module(f"transformers.models.{model}.modeling_{model}")
    cls = {"qwen2_vl": "Qwen2VLModel", "qwen2_5_vl": "Qwen2_5_VLModel", "qwen3_vl": "Qwen3VLModel"}[model]
    model_cls = getattr(mod, cls)
    vision = SimpleNamespace(spatial_merge_size=merge, tokens_per_second=tps)
    fake = SimpleNamespace(config=SimpleNamespace(vision_config=vision),
                           get_vision_position_ids=model_cls.get_vision_position_ids.__get__(object()))  # fmt: skip
    kwargs = {}
    if model == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = spg
    ids = torch.zeros_like(tt)
    image = None if images is None else torch.tensor(images)
    video = None if videos is None else torch.tensor(videos)
    pos, deltas = model_cls.get_rope_index(fake, ids, tt, image, video, attention_mask=mask, **kwargs)
    return pos.permute(1, 2, 0), deltas.reshape(-1)


def mrope_ids_oracle(types: list[int], images, videos, *, merge, dt_video):
    """Per-token loop of the M-RoPE id rule (text: running index on all axes; a grid:
    start + (k dt, row, col); next text after the maximum of all axes, floored)."""
    grids = {1: list(images or []), 2: list(videos or [])}
    out, p, i, v = [], 0, 0, 0
    while i < len(types):
        if types[i] == 0:
            out.append([p, p, p])
            p += 1
            i += 1
            continue
        kind = types[i]
        t, h, w = grids[kind].pop(0)
        dt = dt_video[v] if kind == 2 else 1.0
        v += kind == 2
        top = p
        for fr in range(t):
            for r in range(h // merge):
                for c in range(w // merge):
                    ids = [p + fr * dt, p + r, p + c]
                    out.append(ids)
                    top = max(top, *ids)
        i += t * (h // merge) * (w // merge)
        p = math.floor(top) + 1
    return torch.tensor(out, dtype=F64), p - len(types)


SEQ = [0, 0, 0] + [1] * 6 + [0, 0] + [2] * 8 + [0, 0, 0]  # text, 4x6 image, 2x4x4 video, text


def test_mrope_positions_match_get_rope_index_qwen2_vl() -> None:
    tt = torch.tensor([SEQ])
    # (T - 1) dt = 1 < max(H, W) / m: transformers' next-text rule agrees here
    hf_pos, hf_d = hf_rope_index("qwen2_vl", tt, [[1, 4, 6]], [[2, 4, 4]])
    ours, d = P.mrope_positions(tt, [[1, 4, 6]], [[2, 4, 4]])
    assert torch.equal(ours, hf_pos.to(F64))
    assert torch.equal(d, hf_d.to(F64))
    want, delta = mrope_ids_oracle(SEQ, [[1, 4, 6]], [[2, 4, 4]], merge=2, dt_video=[1.0])
    assert torch.equal(ours[0], want) and d.item() == delta


def test_mrope_positions_match_get_rope_index_qwen3_vl_frames_split() -> None:
    # Qwen3-VL: one (1, H, W) grid per frame, timestamp text between the frames
    seq = [0, 0, 0] + [1] * 6 + [0, 0] + [2] * 4 + [0] + [2] * 4 + [0, 0, 0]
    tt = torch.tensor([seq])
    hf_pos, hf_d = hf_rope_index("qwen3_vl", tt, [[1, 4, 6]], [[2, 4, 4]])
    ours, d = P.mrope_positions(tt, [[1, 4, 6]], [[2, 4, 4]], split_video_frames=True)
    assert torch.equal(ours, hf_pos.to(F64))
    assert torch.equal(d, hf_d.to(F64))
    want, delta = mrope_ids_oracle(seq, [[1, 4, 6]], [[1, 4, 4], [1, 4, 4]], merge=2, dt_video=[1.0, 1.0])
    assert torch.equal(ours[0], want) and d.item() == delta


def test_mrope_positions_qwen2_5_vl_integer_time_and_padding_match_transformers() -> None:
    # tokens_per_second 2, 1 s per grid: dt = 2 < max(H, W) / m = 4 (no collision, see
    # below); a 4x6 image, a 2-frame 8x8 video; row 1 left-padded
    seq = [0, 0, 0] + [1] * 6 + [0, 0] + [2] * 32 + [0, 0, 0]
    tt = torch.tensor([[0, *seq], [0, 0, *seq[:-1]]])
    mask = torch.tensor([[1] * (len(seq) + 1), [0] + [1] * len(seq)])
    images, videos = [[1, 4, 6], [1, 4, 6]], [[2, 8, 8], [2, 8, 8]]
    hf_pos, hf_d = hf_rope_index("qwen2_5_vl", tt, images, videos, tps=2, spg=torch.tensor([1.0, 1.0]),
                                 mask=mask)  # fmt: skip
    ours, d = P.mrope_positions(tt, images, videos, tokens_per_second=2, second_per_grid_ts=[1.0, 1.0],
                                attention_mask=mask)  # fmt: skip
    assert torch.equal(ours, hf_pos.to(F64))
    assert torch.equal(d, hf_d.to(F64))
    assert ours[0, 4:10, 0].unique().tolist() == [4.0]  # the still image: one time id
    assert ours[1, 0].tolist() == [0.0, 0.0, 0.0]  # padding
    want, delta = mrope_ids_oracle(tt[0].tolist(), images[:1], videos[:1], merge=2, dt_video=[2.0])
    assert torch.equal(ours[0], want) and d[0].item() == delta


def test_mrope_positions_keep_fractional_time_where_transformers_floors() -> None:
    # dt = 4 tokens/s * 0.125 s = 0.5: transformers floors k * dt (0, 0, 1, 1, ...)
    tt = torch.tensor([[0, 0] + [2] * 16 + [0]])
    hf_pos, _ = hf_rope_index("qwen2_5_vl", tt, None, [[4, 4, 4]], tps=4, spg=torch.tensor([0.125]))
    floor, _ = P.mrope_positions(tt, None, [[4, 4, 4]], tokens_per_second=4, second_per_grid_ts=[0.125],
                                 time_rounding="floor")  # fmt: skip
    assert torch.equal(floor[..., :-1, :], hf_pos[..., :-1, :].to(F64))
    exact, d = P.mrope_positions(tt, None, [[4, 4, 4]], tokens_per_second=4, second_per_grid_ts=[0.125])
    want, delta = mrope_ids_oracle(tt[0].tolist(), None, [[4, 4, 4]], merge=2, dt_video=[0.5])
    assert torch.equal(exact[0], want) and d.item() == delta
    assert exact[0, 2:18, 0].unique().tolist() == [2.0, 2.5, 3.0, 3.5]


def test_mrope_positions_next_text_after_time_axis_where_transformers_collides() -> None:
    # an 8-frame video of 2x2 merged tokens at dt = 2: times reach p + 14 while h, w
    # reach p + 1. transformers 5.24 restarts text at p + max(H, W) / m = p + 2, inside
    # the video's times, while its rope_deltas use the true maximum: inconsistent.
    tt = torch.tensor([[0] + [2] * 32 + [0, 0]])
    hf_pos, hf_d = hf_rope_index("qwen2_5_vl", tt, None, [[8, 4, 4]], tps=2, spg=torch.tensor([1.0]))
    assert hf_pos[0, 33, 0].item() == 3  # the collision (documented peer bug)
    assert hf_d.item() == 16 - 35  # its deltas: decoding resumes at 16, text sat at 3, 4
    ours, d = P.mrope_positions(tt, None, [[8, 4, 4]], tokens_per_second=2, second_per_grid_ts=[1.0])
    want, delta = mrope_ids_oracle(tt[0].tolist(), None, [[8, 4, 4]], merge=2, dt_video=[2.0])
    assert torch.equal(ours[0], want) and d.item() == delta
    assert ours[0, 33].tolist() == [16.0, 16.0, 16.0]  # after the last time id 15
    assert torch.equal(ours[0, :33], hf_pos[0, :33].to(F64))  # the video itself agrees
    # decoding continues from the prompt's last position + 1
    nxt = P.mrope_decode_positions(d, start=tt.shape[1], length=2)
    assert nxt[0, :, 0].tolist() == [ours[0, -1, 0].item() + 1, ours[0, -1, 0].item() + 2]


# -------------------------------------------------------------------- Qwen-VL ViT


def test_qwen_vl_vision_positions_and_tables_match_transformers() -> None:
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLVisionRotaryEmbedding
    from transformers.vision_utils import get_vision_position_ids

    grid_thw = torch.tensor([[1, 4, 6], [2, 6, 2]])
    ours = P.qwen_vl_vision_positions(grid_thw, 2)
    assert torch.equal(ours, get_vision_position_ids(grid_thw, 2))
    cfg = transformers.Qwen2VLVisionConfig(embed_dim=64, num_heads=4)  # head_dim 16
    hf = Qwen2VLVisionRotaryEmbedding(cfg)
    pos = ours + 300
    hc, hs = hf(torch.zeros(1), pos)
    c, s = cos_sin(preset("qwen_vl_vision", head_dim=16), pos, dtype=F64)
    f = inv(8, 10000.0)  # per-axis spectrum of d/2 lanes: theta ** (-4k / d)
    angle = torch.cat([pos[:, :1].to(F64) * torch.tensor(f, dtype=F64),
                       pos[:, 1:].to(F64) * torch.tensor(f, dtype=F64)], dim=-1)  # fmt: skip
    close_to_oracle(c, angle)
    close_to_oracle(s, angle, "sin")
    assert (hc[:, :8].to(F64) - torch.cos(angle)).abs().max() < peer_tol(angle)
    assert (hs[:, 8:].to(F64) - torch.sin(angle)).abs().max() < peer_tol(angle)


# ------------------------------------------------------------------------- Pixtral


def test_pixtral_tables_and_rotation_match_transformers() -> None:
    from transformers.models.pixtral import modeling_pixtral as mp

    cfg = transformers.PixtralVisionConfig(hidden_size=64, num_attention_heads=4, head_dim=16)
    hf = mp.PixtralVisionRotaryEmbedding(cfg)
    pos = P.grid(3, 5)  # non-square patch grid
    hc, hs = hf(torch.zeros(1), pos)
    f = inv(16, 10000.0)
    angle = torch.tensor([[r * f[2 * k] for k in range(4)] + [c * f[2 * k + 1] for k in range(4)]
                          for r, c in pos.tolist()], dtype=F64)  # fmt: skip
    ours = preset("pixtral", head_dim=16)
    c, s = cos_sin(ours, pos, dtype=F64)
    close_to_oracle(c, angle)
    close_to_oracle(s, angle, "sin")
    assert (hc[:, :8].to(F64) - torch.cos(angle)).abs().max() < peer_tol(angle)
    q, k = torch.randn(1, 4, 15, 16), torch.randn(1, 4, 15, 16)
    hq, hk = mp.apply_rotary_pos_emb(q, k, hc, hs, unsqueeze_dim=0)
    rq, rk = AxisRotaryEmbedding(ours)(q, k, pos)
    torch.testing.assert_close(rq, hq, rtol=0, atol=1e-5)
    torch.testing.assert_close(rk, hk, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------- Llama 4


def test_llama4_vision_tables_match_transformers() -> None:
    from transformers.models.llama4.modeling_llama4 import Llama4VisionRotaryEmbedding

    side = 4
    cfg = transformers.Llama4VisionConfig(hidden_size=64, num_attention_heads=4, image_size=side * 14,
                                         patch_size=14)  # fmt: skip
    freqs_ci = Llama4VisionRotaryEmbedding(cfg).freqs_ci  # [side**2 + 1, 1, n] complex
    pos = P.llama4_vision_positions(side)
    c, s = cos_sin(preset("llama4_vision", head_dim=16), pos, dtype=F64)
    f = inv(8, 10000.0)
    angle = torch.zeros(side * side + 1, 8, dtype=F64)
    for r in range(side * side):
        x, y = r % side + 1, r // side + 1
        angle[r] = torch.tensor([x * fk for fk in f] + [y * fk for fk in f], dtype=F64)
    close_to_oracle(c, angle)
    close_to_oracle(s, angle, "sin")
    assert c[-1].eq(1).all() and s[-1].eq(0).all()  # the CLS token: angle 0
    assert (freqs_ci[:, 0].real.to(F64) - torch.cos(angle)).abs().max() < peer_tol(angle)
    assert (freqs_ci[:, 0].imag.to(F64) - torch.sin(angle)).abs().max() < peer_tol(angle)
    # the interleaved complex rotation of transformers vs the module ([b, s, h, d])
    from transformers.models.llama4.modeling_llama4 import vision_apply_rotary_emb

    q, k = torch.randn(2, side * side + 1, 4, 16), torch.randn(2, side * side + 1, 4, 16)
    hq, hk = vision_apply_rotary_emb(q, k, freqs_ci)
    rq, rk = AxisRotaryEmbedding(preset("llama4_vision", head_dim=16), layout="bshd")(q, k, pos)
    torch.testing.assert_close(rq, hq, rtol=0, atol=2e-6)
    torch.testing.assert_close(rk, hk, rtol=0, atol=2e-6)


# ----------------------------------------------------------------------- Gemma 4


def test_gemma4_vision_blocks_match_transformers() -> None:
    from transformers.models.gemma4 import modeling_gemma4 as mg

    cfg = transformers.Gemma4VisionConfig(hidden_size=64, num_attention_heads=4, head_dim=16)
    hf = mg.Gemma4VisionRotaryEmbedding(cfg)
    pos = P.grid(3, 5).unsqueeze(0)  # [1, 15, 2]
    hc, hs = hf(torch.zeros(1), pos)  # [1, 15, 16] as h, h, w, w
    ours = preset("gemma4_vision", head_dim=16)
    c, _ = cos_sin(ours, pos, dtype=F64)
    f = inv(8, 100.0)
    angle = torch.cat([pos[..., :1].to(F64) * torch.tensor(f, dtype=F64),
                       pos[..., 1:].to(F64) * torch.tensor(f, dtype=F64)], dim=-1)  # fmt: skip
    close_to_oracle(c, angle)
    q = torch.randn(1, 15, 4, 16)
    k = torch.randn(1, 15, 4, 16)
    hq = mg.apply_multidimensional_rope(q, hc, hs, pos, unsqueeze_dim=2)
    rq, rk = AxisRotaryEmbedding(ours, layout="bshd")(q, k, pos)
    torch.testing.assert_close(rq, hq, rtol=0, atol=1e-6)
    # oracle: each 8-lane block rotated half-split by its own axis
    want = torch.cat([rotate_half_oracle(q[..., :8], angle[..., :4].unsqueeze(2)),
                      rotate_half_oracle(q[..., 8:], angle[..., 4:].unsqueeze(2))], dim=-1)  # fmt: skip
    assert (rq.to(F64) - want).abs().max() < 2e-6
    assert (rk.to(F64) - torch.cat([rotate_half_oracle(k[..., :8], angle[..., :4].unsqueeze(2)),
            rotate_half_oracle(k[..., 8:], angle[..., 4:].unsqueeze(2))], -1)).abs().max() < 2e-6  # fmt: skip


# ------------------------------------------------------------------------ DINOv3


def test_dinov3_tables_and_prefix_rotation_match_transformers() -> None:
    from transformers.models.dinov3_vit import modeling_dinov3_vit as md

    cfg = transformers.DINOv3ViTConfig(hidden_size=64, num_attention_heads=4, patch_size=4,
                                       num_register_tokens=2)  # fmt: skip
    hf = md.DINOv3ViTRopePositionEmbedding(cfg).eval()
    hc, hs = hf(torch.zeros(1, 3, 12, 20))  # 3 x 5 patches
    coords = P.patch_centers(3, 5)
    ours = preset("dinov3", head_dim=16)
    c, s = cos_sin(ours, coords, dtype=F64)
    f = [2 * math.pi / 100.0 ** (4 * k / 16) for k in range(4)]
    angle = torch.tensor([[y * fk for fk in f] + [x * fk for fk in f] for y, x in coords.tolist()], dtype=F64)
    close_to_oracle(c, angle)
    close_to_oracle(s, angle, "sin")
    assert (hc[:, :8].to(F64) - torch.cos(angle)).abs().max() < 1e-6
    # 1 CLS + 2 registers, unrotated: positions 0 give angle 0
    q, k = torch.randn(2, 4, 18, 16), torch.randn(2, 4, 18, 16)
    hq, hk = md.apply_rotary_pos_emb(q, k, hc, hs)
    rq, rk = AxisRotaryEmbedding(ours)(q, k, P.with_prefix(coords, 3))
    assert torch.equal(rq[:, :, :3], q[:, :, :3])
    torch.testing.assert_close(rq, hq, rtol=0, atol=2e-6)
    torch.testing.assert_close(rk, hk, rtol=0, atol=2e-6)


def test_dinov3_augmentation_is_the_peer_formula_with_an_explicit_generator() -> None:
    coords = P.patch_centers(3, 5)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = P.dinov3_augment(coords, shift=0.1, jitter=2.0, rescale=1.5, generator=g1)
    b = P.dinov3_augment(coords, shift=0.1, jitter=2.0, rescale=1.5, generator=g2)
    assert torch.equal(a, b) and a.dtype == F64
    # the same draws, by the formula: (c + u_shift) * exp(u_jitter) * exp(u_rescale)
    g = torch.Generator().manual_seed(3)
    u = [(2 * torch.rand(n, generator=g, dtype=F64) - 1) for n in (2, 2, 1)]
    want = (coords + u[0] * 0.1) * (u[1] * math.log(2.0)).exp() * (u[2] * math.log(1.5)).exp()
    torch.testing.assert_close(a, want, rtol=1e-15, atol=1e-15)


# ----------------------------------------------------------------- timm (oracles)


def test_eva02_grid_rescaling_matches_timm_formula() -> None:
    # timm: bands = 1 / theta ** (arange(d/4) / (d/4)); t = arange(s) / feat * ref;
    # sin/cos of [h bands, w bands], repeat_interleave(2): interleaved pairs
    d, feat, ref = 16, (3, 5), (6, 4)
    bands = [1.0 / 10000.0 ** (k / (d // 4)) for k in range(d // 4)]
    coords = P.eva_grid(*feat, ref_feat_shape=ref)
    angle = torch.tensor([[i / feat[0] * ref[0] * b for b in bands] + [j / feat[1] * ref[1] * b for b in bands]
                          for i in range(feat[0]) for j in range(feat[1])], dtype=F64)  # fmt: skip
    ours = preset("eva02", head_dim=d)
    c, s = cos_sin(ours, coords, dtype=F64)
    close_to_oracle(c, angle)
    close_to_oracle(s, angle, "sin")
    x = torch.randn(2, 3, 15, d, dtype=F64)
    got = AxisRotaryEmbedding(ours)(x, positions=coords)
    assert (got - rotate_pairs_oracle(x, angle)).abs().max() < 1e-13


def test_rope_mixed_matches_timm_formula_and_learns() -> None:
    d, heads = 16, 3
    g = torch.Generator().manual_seed(1)
    freqs = ropekit.axes.init_mixed_frequencies(d, heads, theta=10.0, generator=g)
    # timm init_random_2d_freqs: mag = 1 / t ** (arange(0, d, 4) / d), one angle per head
    g = torch.Generator().manual_seed(1)
    phi = torch.rand(heads, 1, generator=g, dtype=F64) * 2 * math.pi
    mag = torch.tensor([1 / 10.0 ** (k / d) for k in range(0, d, 4)], dtype=F64)
    fx = torch.cat([mag * torch.cos(phi), mag * torch.cos(phi + math.pi / 2)], -1)
    fy = torch.cat([mag * torch.sin(phi), mag * torch.sin(phi + math.pi / 2)], -1)
    torch.testing.assert_close(freqs, torch.stack([fx, fy]), rtol=1e-15, atol=1e-15)
    pos = P.grid(3, 5)
    rope = MixedRotaryEmbedding(freqs, layout="bhsd", backend="reference")
    x = torch.randn(2, heads, 15, d, dtype=F64)
    # get_mixed_freqs: angle[h, N, j] = x * fx[h, j] + y * fy[h, j], interleaved pairs
    angle = pos[:, 0, None, None].to(F64) * fx + pos[:, 1, None, None].to(F64) * fy  # [N, h, n]
    want = rotate_pairs_oracle(x, angle.movedim(1, 0))
    got = rope(x, positions=pos)
    assert (got - want).abs().max() < 1e-13
    # trainable: gradients reach the float64 frequencies, and survive .to(bfloat16)
    got.square().sum().backward()
    assert rope.freqs.grad is not None and rope.freqs.grad.abs().sum() > 0
    rope.to(torch.bfloat16)
    assert rope.freqs.dtype == F64


# --------------------------------------------------------------------- diffusers


def interleaved_halves(t: torch.Tensor) -> torch.Tensor:
    """The n values of a repeat_interleave(2) table [*, 2n]."""
    assert torch.equal(t[..., 0::2], t[..., 1::2])
    return t[..., 0::2]


def blocked_oracle(pos: torch.Tensor, dims, theta) -> torch.Tensor:
    cols = []
    for a, dim in enumerate(dims):
        for fk in inv(dim, theta):
            cols.append(pos[:, a].to(F64) * fk)
    return torch.stack(cols, dim=-1)


@pytest.mark.parametrize("which", ["flux", "flux2"])
def test_flux_tables_and_rotation_match_diffusers(which) -> None:
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers import transformer_flux, transformer_flux2

    if which == "flux":
        ids = P.flux_ids(3, 5, text_len=4)
        peer = transformer_flux.FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])
        dims, theta = (16, 56, 56), 10000.0
    else:
        ids = P.flux2_ids(3, 5, text_len=4)
        peer = transformer_flux2.Flux2PosEmbed(theta=2000, axes_dim=[32, 32, 32, 32])
        dims, theta = (32, 32, 32, 32), 2000.0
    ids = ids + 700  # large ids: Flux builds float64 angles, agreeing to ~1e-13
    pc, ps = peer(ids)
    ours = preset(which)
    c, s = cos_sin(ours, ids, dtype=F64)
    angle = blocked_oracle(ids, dims, theta)
    close_to_oracle(c, angle)
    close_to_oracle(s, angle, "sin")
    # the peer's float64 tables, rounded to float32 at the end
    torch.testing.assert_close(interleaved_halves(pc).to(F64), torch.cos(angle), rtol=0, atol=1e-7)
    x = torch.randn(1, 2, ids.shape[0], 128)
    want = apply_rotary_emb(x, (pc, ps), use_real=True, use_real_unbind_dim=-1)
    got = AxisRotaryEmbedding(ours)(x, positions=ids)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_wan_tables_match_diffusers() -> None:
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    peer = WanRotaryPosEmbed(attention_head_dim=128, patch_size=(1, 2, 2), max_seq_len=64)
    pc, ps = peer(torch.zeros(1, 4, 3, 8, 10))  # 3 frames, 4 x 5 patches
    pos = P.grid(3, 4, 5)
    ours = preset("wan")
    c, s = cos_sin(ours, pos, dtype=F64)
    angle = blocked_oracle(pos, (44, 42, 42), 10000.0)
    close_to_oracle(c, angle)
    close_to_oracle(s, angle, "sin")
    torch.testing.assert_close(interleaved_halves(pc[0, :, 0]).to(F64), torch.cos(angle), rtol=0, atol=1e-7)
    torch.testing.assert_close(interleaved_halves(ps[0, :, 0]).to(F64), torch.sin(angle), rtol=0, atol=1e-7)


def test_hunyuan_video_tables_match_diffusers() -> None:
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed

    peer = HunyuanVideoRotaryPosEmbed(patch_size=2, patch_size_t=1, rope_dim=[16, 56, 56], theta=256.0)
    pc, ps = peer(torch.zeros(1, 4, 3, 8, 10))
    pos = P.grid(3, 4, 5)
    c, s = cos_sin(preset("hunyuan_video"), pos, dtype=F64)
    angle = blocked_oracle(pos, (16, 56, 56), 256.0)
    close_to_oracle(c, angle)
    close_to_oracle(s, angle, "sin")
    assert (interleaved_halves(pc).to(F64) - torch.cos(angle)).abs().max() < peer_tol(angle)
    assert (interleaved_halves(ps).to(F64) - torch.sin(angle)).abs().max() < peer_tol(angle)


@pytest.mark.parametrize("grid_type", ["linspace", "slice"])
def test_cogvideox_tables_match_diffusers(grid_type) -> None:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    t, h, w = 3, 4, 6
    crops = ((0, 0), (h, w))
    kw = {"max_size": (h, w)} if grid_type == "slice" else {}
    pc, ps = get_3d_rotary_pos_embed(64, crops, (h, w), t, grid_type=grid_type, **kw)
    pos = P.cogvideox_grid(t, h, w, crops_coords=crops, grid_type=grid_type)
    c, s = cos_sin(preset("cogvideox"), pos, dtype=F64)
    angle = blocked_oracle(pos, (16, 24, 24), 10000.0)
    close_to_oracle(c, angle)
    close_to_oracle(s, angle, "sin")
    # CogVideoX's linspace in float32 differs from the exact grid by a float32 rounding
    assert (interleaved_halves(pc).to(F64) - torch.cos(angle)).abs().max() < 1e-6
    assert (interleaved_halves(ps).to(F64) - torch.sin(angle)).abs().max() < 1e-6


def test_ltx_video_tables_and_rotation_match_diffusers() -> None:
    from diffusers.models.transformers.transformer_ltx import (
        LTXVideoRotaryPosEmbed,
        apply_rotary_emb,
    )

    dim = 128  # 128 % 6 = 2: one unrotated pair first, as LTX pads
    peer = LTXVideoRotaryPosEmbed(dim, base_num_frames=20, base_height=64, base_width=64,
                                  patch_size=1, patch_size_t=1, theta=10000.0)  # fmt: skip
    scale = (0.5, 8.0, 8.0)
    pc, ps = peer(torch.zeros(1, 60, dim), 3, 4, 5, rope_interpolation_scale=scale)
    coords = P.ltx_video_coords(3, 4, 5, base=(20, 64, 64), rope_interpolation_scale=scale)
    ours = preset("ltx_video", dim=dim)
    c, s = cos_sin(ours, coords, dtype=F64)
    kk = dim // 6
    f = [math.pi / 2 * 10000.0 ** (k / (kk - 1)) for k in range(kk)]
    angle = torch.zeros(60, dim // 2, dtype=F64)
    for k in range(kk):
        for a in range(3):
            angle[:, 1 + 3 * k + a] = coords[:, a] * f[k]
    close_to_oracle(c, angle)
    close_to_oracle(s, angle, "sin")
    tol = peer_tol(angle) * 4  # LTX builds the spectrum and coordinates in float32
    assert (interleaved_halves(pc[0]).to(F64) - torch.cos(angle)).abs().max() < tol
    x = torch.randn(1, 60, dim)
    want = apply_rotary_emb(x, (pc, ps))
    got = ropekit.axes.apply_axes_rope(ours, x, *cos_sin(ours, coords))
    torch.testing.assert_close(got, want, rtol=0, atol=8 * tol)


def test_presets_are_the_peers_defaults() -> None:
    """The presets' defaults are the pinned peers' own: transformers' config classes (read
    through axes_from_hf) and diffusers' constructor defaults (axis dims and theta)."""
    import inspect as _inspect

    import transformers
    from diffusers import FluxTransformer2DModel, HunyuanVideoTransformer3DModel

    from ropekit.hf import axes_from_hf

    for name, cls in (
        ("qwen2_vl", transformers.Qwen2VLConfig),
        ("qwen2_5_vl", transformers.Qwen2_5_VLConfig),
        ("qwen3_vl", transformers.Qwen3VLConfig),
    ):
        assert axes_from_hf(cls()) == preset(name), name

    def defaults(cls: type) -> dict:
        return {k: p.default for k, p in _inspect.signature(cls.__init__).parameters.items()}

    for name, cls, dims_key, theta in (
        ("flux", FluxTransformer2DModel, "axes_dims_rope", 10000.0),
        ("hunyuan_video", HunyuanVideoTransformer3DModel, "rope_axes_dim", None),
    ):
        got = preset(name)
        want = defaults(cls)
        dims = tuple(want[dims_key])
        theta = theta if theta is not None else float(want["rope_theta"])
        assert tuple(2 * len(got.bands(a)) for a in range(got.n_axes)) == dims, name
        for a, dim in enumerate(dims):  # band k of axis a: theta ** (-2k / dim)
            bands = got.bands(a)
            assert got.freq[bands[1]] == pytest.approx(theta ** (-2 / dim), rel=1e-15), name
