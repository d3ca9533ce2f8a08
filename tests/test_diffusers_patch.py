"""ropekit.diffusers.patch on tiny random diffusers transformers (no downloads).

Every family: non-square latents (3 x 5 patches), a few frames for video models;
patched vs unpatched within a per-dtype tolerance; patched float64 vs a float64 oracle
(tables from the written-out formula with Python floats, rotation by complex
multiplication in float64) much tighter; unpatch restores bit for bit; refusals leave the
transformer untouched.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

pytest.importorskip("diffusers")

import diffusers
from diffusers.models import embeddings as emb
from diffusers.models.transformers import (
    transformer_flux,
    transformer_flux2,
    transformer_ltx,
)

import ropekit.diffusers as rd
from ropekit.axes import positions as P

F64 = torch.float64
TEXT = 4  # text tokens
FRAMES, ROWS, COLS = 3, 3, 5  # latent grid after patching (non-square)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------ tiny transformers


def build(name: str):
    torch.manual_seed(0)
    if name == "flux":
        return diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=8, pooled_projection_dim=8,
            axes_dims_rope=(4, 6, 6))  # fmt: skip
    if name == "flux2":
        return diffusers.Flux2Transformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=8, timestep_guidance_channels=8,
            axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)  # fmt: skip
    if name == "wan":
        return diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
            out_channels=4, text_dim=8, freq_dim=8, ffn_dim=16, num_layers=1, rope_max_seq_len=32)  # fmt: skip
    if name == "hunyuan_video":
        return diffusers.HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
            text_embed_dim=8, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6), guidance_embeds=False)  # fmt: skip
    if name == "cogvideox":
        return diffusers.CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
            time_embed_dim=8, text_embed_dim=8, num_layers=1, sample_width=16, sample_height=8,
            sample_frames=9, patch_size=2, max_text_seq_length=TEXT,
            use_rotary_positional_embeddings=True)  # fmt: skip
    assert name == "ltx_video"
    return diffusers.LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, num_layers=1, caption_channels=8)  # fmt: skip


LTX_SCALE = (8 / 25, 32.0, 32.0)


def inputs(name: str, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    t = torch.tensor([0.5], dtype=dtype)
    s = ROWS * COLS
    if name == "flux":
        return dict(hidden_states=r(1, s, 4), encoder_hidden_states=r(1, TEXT, 8),
                    pooled_projections=r(1, 8), timestep=t,
                    img_ids=P.flux_ids(ROWS, COLS).to(dtype), txt_ids=torch.zeros(TEXT, 3, dtype=dtype))  # fmt: skip
    if name == "flux2":
        ids = P.flux2_ids(ROWS, COLS, text_len=TEXT).to(dtype)
        return dict(hidden_states=r(1, s, 4), encoder_hidden_states=r(1, TEXT, 8), timestep=t,
                    img_ids=ids[TEXT:], txt_ids=ids[:TEXT])  # fmt: skip
    if name == "wan":
        return dict(hidden_states=r(1, 4, FRAMES, 2 * ROWS, 2 * COLS), timestep=t,
                    encoder_hidden_states=r(1, TEXT, 8))  # fmt: skip
    if name == "hunyuan_video":
        return dict(hidden_states=r(1, 4, FRAMES, 2 * ROWS, 2 * COLS), timestep=t,
                    encoder_hidden_states=r(1, TEXT, 8),
                    encoder_attention_mask=torch.ones(1, TEXT, dtype=torch.bool), pooled_projections=r(1, 8))  # fmt: skip
    if name == "cogvideox":
        # the pipeline's tables (diffusers' float32 ones; the patched run gets ropekit's)
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import CogVideoXPipeline

        class Pipe:
            vae_scale_factor_spatial = 8
            transformer = build("cogvideox")

        cos, sin = CogVideoXPipeline._prepare_rotary_positional_embeddings(
            Pipe(), 16 * ROWS, 16 * COLS, FRAMES, torch.device("cpu"))  # fmt: skip
        return dict(hidden_states=r(1, FRAMES, 4, 2 * ROWS, 2 * COLS), timestep=t,
                    encoder_hidden_states=r(1, TEXT, 8), image_rotary_emb=(cos, sin))  # fmt: skip
    return dict(hidden_states=r(1, FRAMES * s, 4), encoder_hidden_states=r(1, TEXT, 8), timestep=t,
                encoder_attention_mask=torch.ones(1, TEXT), num_frames=FRAMES, height=ROWS,
                width=COLS, rope_interpolation_scale=LTX_SCALE)  # fmt: skip


def ropekit_inputs(name: str, model, kw: dict) -> dict:
    """The patched run's inputs: CogVideoX gets ropekit's pipeline tables."""
    if name != "cogvideox":
        return kw
    dtype = kw["hidden_states"].dtype
    tables = rd.cogvideox_rotary_emb(model.config, 16 * ROWS, 16 * COLS, FRAMES,
                                     dtype=F64 if dtype == F64 else torch.float32)  # fmt: skip
    return {**kw, "image_rotary_emb": tables}


def run(model, kw: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**kw, return_dict=False)[0]


NAMES = ["flux", "flux2", "wan", "hunyuan_video", "cogvideox", "ltx_video"]
ROTARY_ATTR = {"flux": "pos_embed", "flux2": "pos_embed", "wan": "rope", "hunyuan_video": "rope",
               "cogvideox": None, "ltx_video": "rope"}  # fmt: skip
# max |patched - unpatched| is printed by each run; the bounds are ~3x the largest measured:
# 7.1e-6 (LTX, float32) and 7.8e-3 (Wan, bfloat16: one bf16 step of its outputs, from the
# table buffers diffusers rounds to bf16 under .to(bfloat16))
TOL = {torch.float32: 2e-5, torch.bfloat16: 0.03}


def processors(model) -> list:
    return [m.__dict__["processor"] for m in model.modules() if "processor" in m.__dict__]


# ----------------------------------------------------------------------- oracles


def _spectrum(dim: int, theta: float) -> list[float]:
    return [theta ** (-2.0 * k / dim) for k in range(dim // 2)]


def _blocked(coords: list[list[float]], dims, theta) -> torch.Tensor:
    """angle[r, j] for axis-concatenated bands, with Python floats."""
    rows = []
    for c in coords:
        row = []
        for a, dim in enumerate(dims):
            row += [c[a] * f for f in _spectrum(dim, theta)]
        rows.append(row)
    return torch.tensor(rows, dtype=F64)


def _tables(angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cos(angle).repeat_interleave(2, -1), torch.sin(angle).repeat_interleave(2, -1)


def _video_grid(t: int, h: int, w: int) -> list[list[float]]:
    return [[float(i), float(j), float(k)] for i in range(t) for j in range(h) for k in range(w)]


class OracleTables(torch.nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x, *args, **kw):
        name = self.name
        if name in ("flux", "flux2"):
            dims, theta = ((4, 6, 6), 10000.0) if name == "flux" else ((4, 4, 4, 4), 2000.0)
            return _tables(_blocked(x.tolist(), dims, theta))
        if name == "wan":
            c, s = _tables(_blocked(_video_grid(x.shape[2], x.shape[3] // 2, x.shape[4] // 2), (4, 4, 4), 1e4))
            return c[None, :, None], s[None, :, None]
        if name == "hunyuan_video":
            return _tables(_blocked(_video_grid(x.shape[2], x.shape[3] // 2, x.shape[4] // 2), (4, 6, 6), 256.0))
        # ltx_video: dim 16 -> K = 2 frequencies (pi/2) theta ** (k / (K - 1)), 2 pad bands
        nf, h, w = args[:3]
        scale = args[3]
        base = (20.0, 2048.0, 2048.0)
        freqs = [math.pi / 2 * 10000.0 ** (k / 1) for k in range(2)]
        rows = []
        for c in _video_grid(nf, h, w):
            g = [2.0 * c[a] * scale[a] / base[a] - 1.0 for a in range(3)]
            rows.append([0.0, 0.0] + [g[a] * f for f in freqs for a in range(3)])
        c, s = _tables(torch.tensor(rows, dtype=F64))
        return c[None], s[None]


def oracle_cogvideox_tables() -> tuple[torch.Tensor, torch.Tensor]:
    # base grid 4 x 8 (sample 8 x 16, patch 2); the 3 x 5 grid resized to 4 x 7, crop (0, 0)
    # .. (4, 7); coordinates a + i (b - a) / (count - 1) with b = stop (count - 1) / count
    hs = [i * (4 * 2 / 3) / 2 for i in range(ROWS)]
    ws = [i * (7 * 4 / 5) / 4 for i in range(COLS)]
    coords = [[float(t), hv, wv] for t in range(FRAMES) for hv in hs for wv in ws]
    return _tables(_blocked(coords, (4, 6, 6), 10000.0))


def oracle_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(x0 + i x1) (cos + i sin) in float64 on lane pairs (2j, 2j + 1)."""
    z = torch.view_as_complex(x.to(F64).reshape(*x.shape[:-1], -1, 2).contiguous())
    rot = torch.complex(cos[..., 0::2].to(F64), sin[..., 0::2].to(F64))
    return torch.view_as_real(z * rot).flatten(-2).to(x.dtype)


def oracle_embeddings_apply(x, freqs_cis, use_real=True, use_real_unbind_dim=-1, sequence_dim=2):
    cos, sin = freqs_cis
    if sequence_dim == 1:
        cos, sin = cos[:, None], sin[:, None]
    return oracle_rotate(x, cos, sin)


def oracle_run(name: str, model, kw: dict, monkeypatch) -> torch.Tensor:
    """The unpatched float64 model with oracle tables and an oracle float64 rotation
    (Wan's own nested rotation already runs in the activations' dtype)."""
    oracle = copy.deepcopy(model)
    attr = ROTARY_ATTR[name]
    if attr is not None:
        setattr(oracle, attr, OracleTables(name))
    else:
        kw = {**kw, "image_rotary_emb": oracle_cogvideox_tables()}
    with monkeypatch.context() as m:
        m.setattr(emb, "apply_rotary_emb", oracle_embeddings_apply)  # Hunyuan, CogVideoX import it
        m.setattr(transformer_flux, "apply_rotary_emb", oracle_embeddings_apply)
        m.setattr(transformer_flux2, "apply_rotary_emb", oracle_embeddings_apply)
        m.setattr(transformer_ltx, "apply_rotary_emb", lambda x, f: oracle_rotate(x, *f))
        return run(oracle, kw)


# -------------------------------------------------------------------------- tests


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_patched_matches_unpatched_and_unpatch_restores(name, dtype) -> None:
    model = build(name).to(dtype)
    other = copy.deepcopy(model)  # an unpatched model of the same family, side by side
    kw = inputs(name, dtype)
    attr = ROTARY_ATTR[name]
    rotary = getattr(model, attr) if attr else None
    procs = processors(model)
    before = run(model, kw)

    assert rd.patch(model) is model and rd.is_patched(model)
    if attr:
        assert type(getattr(model, attr)).__module__ == "ropekit.diffusers.tables"
    got = run(model, ropekit_inputs(name, model, kw))
    err = float((got.float() - before.float()).abs().max())
    print(f"{name} {dtype}: max |patched - unpatched| = {err:.3g}")
    assert err < TOL[dtype]
    assert torch.equal(run(other, kw), before)  # other instances are untouched

    assert rd.unpatch(model) is model and not rd.is_patched(model)
    assert (getattr(model, attr) is rotary) if attr else True
    assert all(a is b for a, b in zip(processors(model), procs, strict=True))
    assert torch.equal(run(model, kw), before)  # bit for bit


@pytest.mark.parametrize("name", NAMES)
def test_patched_float64_matches_float64_oracle(name, monkeypatch) -> None:
    model = build(name).to(F64)
    kw = inputs(name, F64)
    want = oracle_run(name, model, kw, monkeypatch)
    unpatched = float((run(model, kw) - want).abs().max())
    with rd.patched(model):
        got = run(model, ropekit_inputs(name, model, kw))
    err = float((got - want).abs().max())
    print(f"{name} float64: max |patched - oracle| = {err:.3g}, |unpatched - oracle| = {unpatched:.3g}")
    assert err < 1e-12
    assert err < unpatched  # diffusers rounds tables (and mostly the rotation) to float32
    assert not rd.is_patched(model)


@pytest.mark.parametrize("name", ["flux", "wan", "ltx_video"])
def test_table_dtype_follows_the_input(name) -> None:
    model = build(name)
    rd.patch(model)
    rot = getattr(model, ROTARY_ATTR[name])
    kw = inputs(name, torch.bfloat16)
    arg = kw["img_ids"] if name == "flux" else kw["hidden_states"]
    args = (arg, FRAMES, ROWS, COLS, LTX_SCALE) if name == "ltx_video" else (arg,)
    assert rot(*args)[0].dtype == torch.float32
    args = (arg.double(), *args[1:])
    assert rot(*args)[0].dtype == F64
    assert not list(rot.buffers())  # nothing for model.to(dtype) to round
    rd.unpatch(model)


@pytest.mark.parametrize("p_t", [None, 2])
def test_cogvideox_tables_match_the_pipeline(p_t) -> None:
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import CogVideoXPipeline

    torch.manual_seed(0)

    class Pipe:
        vae_scale_factor_spatial = 8
        transformer = diffusers.CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, time_embed_dim=8,
            text_embed_dim=8, num_layers=1, sample_width=16, sample_height=8, patch_size=2,
            patch_size_t=p_t, use_rotary_positional_embeddings=True)  # fmt: skip

    h, w, f = 16 * ROWS, 16 * COLS, 5
    pc, ps = CogVideoXPipeline._prepare_rotary_positional_embeddings(Pipe(), h, w, f, torch.device("cpu"))
    c, s = rd.cogvideox_rotary_emb(Pipe.transformer.config, h, w, f)
    assert c.shape == pc.shape and c.dtype == pc.dtype == torch.float32
    torch.testing.assert_close(c, pc, rtol=0, atol=1e-6)
    torch.testing.assert_close(s, ps, rtol=0, atol=1e-6)
    if p_t is None:
        oc, osin = oracle_cogvideox_tables()
        c64, s64 = rd.cogvideox_rotary_emb(Pipe.transformer.config, h, w, FRAMES, dtype=F64)
        assert (c64 - oc).abs().max() < 1e-15 and (s64 - osin).abs().max() < 1e-15
    else:  # 1.5: integer grid, ceil(5 / 2) = 3 frames
        assert c.shape[0] == 3 * ROWS * COLS


# ------------------------------------------------------------------------ refusals


def _state(model) -> tuple:
    return tuple(id(m) for m in model.modules()), tuple(id(p) for p in processors(model))


def test_double_patch_and_unpatch_of_unpatched_are_refused() -> None:
    model = build("flux")
    with pytest.raises(ropekit_error(), match="not patched"):
        rd.unpatch(model)
    rd.patch(model)
    state = _state(model)
    with pytest.raises(ropekit_error(), match="already patched"):
        rd.patch(model)
    assert _state(model) == state
    rd.unpatch(model)


def ropekit_error():
    from ropekit import RopeValueError

    return RopeValueError


def test_unsupported_class_is_refused() -> None:
    torch.manual_seed(0)
    model = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=8, caption_projection_dim=16,
        pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16)  # fmt: skip
    with pytest.raises(rd.UnsupportedTransformerError, match="SD3Transformer2DModel is not supported"):
        rd.patch(model)
    with pytest.raises(rd.UnsupportedTransformerError, match="expected a diffusers transformer"):
        rd.patch("a transformer")


def test_unknown_rotary_processor_is_refused_before_any_change() -> None:
    model = build("flux")

    class MyProcessor(transformer_flux.FluxAttnProcessor.__base__):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                     image_rotary_emb=None):  # fmt: skip
            return hidden_states

    model.single_transformer_blocks[0].attn.processor = MyProcessor()
    state, rotary = _state(model), model.pos_embed
    with pytest.raises(rd.UnsupportedTransformerError, match="MyProcessor is not supported"):
        rd.patch(model)
    assert _state(model) == state and model.pos_embed is rotary and not rd.is_patched(model)


def test_rotary_module_that_ropekit_does_not_reproduce_is_refused(monkeypatch) -> None:
    model = build("flux")
    original = transformer_flux.FluxPosEmbed.forward
    # a changed diffusers: ids scaled by 2 before the tables
    monkeypatch.setattr(transformer_flux.FluxPosEmbed, "forward", lambda self, ids: original(self, 2 * ids))
    state = _state(model)
    with pytest.raises(rd.UnsupportedTransformerError, match="not reproduced by ropekit"):
        rd.patch(model)
    assert _state(model) == state


def test_rotation_that_is_not_ropekits_is_refused(monkeypatch) -> None:
    model = build("flux")
    original = transformer_flux.apply_rotary_emb
    # a changed diffusers: half-split pairs instead of (2j, 2j + 1)
    monkeypatch.setattr(transformer_flux, "apply_rotary_emb",
                        lambda x, f, sequence_dim=2: original(x, f, use_real_unbind_dim=-2,
                                                              sequence_dim=sequence_dim))  # fmt: skip
    state = _state(model)
    with pytest.raises(rd.UnsupportedTransformerError, match="float64 probe"):
        rd.patch(model)
    assert _state(model) == state


def test_cogvideox_without_rope_and_wrong_version_are_refused(monkeypatch) -> None:
    torch.manual_seed(0)
    model = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, time_embed_dim=8,
        text_embed_dim=8, num_layers=1, sample_width=16, sample_height=8, sample_frames=9)  # fmt: skip
    with pytest.raises(rd.UnsupportedTransformerError, match="use_rotary_positional_embeddings=False"):
        rd.patch(model)
    monkeypatch.setattr(diffusers, "__version__", "0.30.0")
    with pytest.raises(rd.UnsupportedTransformerError, match=r"diffusers==0.30.0 is not supported"):
        rd.patch(build("flux"))
    with pytest.raises(rd.UnsupportedTransformerError, match="is not supported"):
        rd.check_diffusers_version("not a version")


def test_import_does_not_import_diffusers() -> None:
    import subprocess
    import sys

    code = "import sys, ropekit, ropekit.diffusers; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", NAMES)
def test_patched_processors_call_ropekits_rotation(name, monkeypatch) -> None:
    """Each q and k rotation of every attention goes through ropekit (Wan's nested
    function and the function-level imports of HunyuanVideo and CogVideoX included)."""
    import ropekit.diffusers.patching as patching

    calls = []
    real = patching.apply_rope
    monkeypatch.setattr(patching, "apply_rope", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = build(name)
    kw = inputs(name, torch.float32)
    with rd.patched(model):
        calls.clear()  # the patch-time float64 probe calls it too
        run(model, ropekit_inputs(name, model, kw))
        rotating = sum(1 for p in processors(model) if getattr(p, "_ropekit_patched", False))
    # one layer: q and k of each rotating attention (Wan, LTX: self-attention only, the
    # cross-attention processors get no tables)
    assert len(calls) >= 2 and len(calls) % 2 == 0 and rotating >= 1, (name, len(calls))
    calls.clear()
    run(model, kw)
    assert not calls  # unpatched: diffusers' own rotation
