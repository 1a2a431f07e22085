"""DiffuEraser networks: release-compatible structure, strict loading, and the one-window forward."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rrdpo_core.models import (
    BrushNetModel,
    CheckpointError,
    DiffuEraserModel,
    DiffuEraserUNetMotionModel,
    load_diffueraser,
    packaged_config,
)
from rrdpo_core.models.testing import tiny_diffueraser, write_tiny_diffueraser

DATA = Path(__file__).resolve().parent / "data"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _manifest(name: str) -> dict[str, list[int]]:
    return json.loads((DATA / name).read_text())


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Structure: the full configs build exactly the released tensors (no weights needed)


@pytest.mark.parametrize("cls,config,manifest", [
    (BrushNetModel, "brushnet", "diffueraser_brushnet_keys.json"),
    (DiffuEraserUNetMotionModel, "unet_main", "diffueraser_unet_keys.json"),
])
def test_full_config_on_meta_matches_release_manifest(cls, config, manifest):
    with torch.device("meta"):
        model = cls.from_config(packaged_config(config))
    assert _shapes(model) == _manifest(manifest)


def test_release_config_files_are_accepted_quietly(caplog):
    # The released config.json files carry SD1.5 leftovers (attention_head_dim, center_input_sample, ...);
    # they describe the same network and must not trigger "unexpected config" warnings.
    caplog.set_level(logging.WARNING)
    unet_cfg = json.loads((DATA / "diffueraser_unet_main_config.release.json").read_text())
    brush_cfg = json.loads((DATA / "diffueraser_brushnet_config.release.json").read_text())
    with torch.device("meta"):
        unet = DiffuEraserUNetMotionModel.from_config(unet_cfg)
        brushnet = BrushNetModel.from_config(brush_cfg)
    assert _shapes(unet) == _manifest("diffueraser_unet_keys.json")
    assert _shapes(brushnet) == _manifest("diffueraser_brushnet_keys.json")
    assert not [r for r in caplog.records if "not expected" in r.getMessage()]
    assert unet.config.time_cond_proj_dim is None  # pipelines read this key


@pytest.mark.parametrize("key,value", [("num_attention_heads", 16), ("motion_num_attention_heads", 4),
                                       ("norm_eps", 1e-6), ("use_motion_mid_block", False)])
def test_release_config_changing_the_network_invisibly_is_refused(key, value):
    # These change what the network computes but no weight's shape: the weights cannot catch them.
    cfg = json.loads((DATA / "diffueraser_unet_main_config.release.json").read_text())
    cfg[key] = value
    with pytest.raises(ValueError, match=key), torch.device("meta"):
        DiffuEraserUNetMotionModel.from_config(cfg)


@pytest.mark.parametrize("key,value", [("attention_head_dim", 16), ("center_input_sample", True),
                                       ("time_embedding_type", "fourier"), ("flip_sin_to_cos", False),
                                       ("mid_block_type", "UNetMidBlock2D"), ("conditioning_channels", 5),
                                       ("transformer_layers_per_block", 2), ("time_cond_proj_dim", 256)])
def test_release_config_keys_the_original_never_reads_are_ignored(key, value):
    # The original UNetMotionModel (reference §2.6) takes none of these, so any value builds the released network.
    cfg = json.loads((DATA / "diffueraser_unet_main_config.release.json").read_text())
    cfg[key] = value
    with torch.device("meta"):
        unet = DiffuEraserUNetMotionModel.from_config(cfg)
    assert _shapes(unet) == _manifest("diffueraser_unet_keys.json")
    assert unet.config.time_cond_proj_dim is None


def test_brushnet_refuses_unimplemented_config():
    cfg = packaged_config("brushnet_tiny")
    cfg["class_embed_type"] = "timestep"
    with pytest.raises(ValueError, match="class_embed_type"):
        BrushNetModel.from_config(cfg)


def test_residual_counts_and_mismatched_pair():
    with torch.device("meta"):
        full_unet = DiffuEraserUNetMotionModel.from_config(packaged_config("unet_main"))
        full_brush = BrushNetModel.from_config(packaged_config("brushnet"))
        tiny_brush = BrushNetModel.from_config(packaged_config("brushnet_tiny"))
    assert full_unet.num_residuals == full_brush.num_residuals == (12, 1, 15)
    assert tiny_brush.num_residuals == (12, 1, 15)
    with pytest.raises(ValueError, match="block_out_channels"):
        DiffuEraserModel(tiny_brush, full_unet)


# ---------------------------------------------------------------------------------------------
# Loading the released layout


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_diffueraser(tmp_path_factory.mktemp("diffueraser") / "diffuEraser", seed=3)


@pytest.fixture
def tiny_copy(tiny_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_dir, tmp_path / "diffuEraser"))


def _inputs(frames=4, batch=1, h=8, w=8, dim=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n = frames * batch
    latents = torch.randn(n, 4, h, w, generator=g, dtype=dtype)
    masked = torch.randn(n, 4, h, w, generator=g, dtype=dtype)
    mask = (torch.rand(n, 1, h, w, generator=g) > 0.5).to(dtype)
    text = torch.randn(1, 77, dim, generator=g, dtype=dtype)
    return latents, torch.cat([masked, mask], dim=1), text


def test_tiny_layout_round_trip(tiny_dir):
    assert sorted(p.relative_to(tiny_dir).as_posix() for p in tiny_dir.rglob("*") if p.is_file()) == [
        "brushnet/config.json", f"brushnet/{WEIGHTS}", "unet_main/config.json", f"unet_main/{WEIGHTS}"]
    assert json.loads((tiny_dir / "unet_main" / "config.json").read_text())["_class_name"] == "UNetMotionModel"
    model = load_diffueraser(tiny_dir)
    ref = tiny_diffueraser(seed=3).requires_grad_(False)
    loaded, expected = model.state_dict(), ref.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.cross_attention_dim == 32 and model.dtype == torch.float32

    latents, cond, text = _inputs()
    with torch.no_grad():
        eps = model.predict_eps(latents, 999, text, cond, num_frames=4)
        assert torch.equal(eps, ref.predict_eps(latents, 999, text, cond, num_frames=4))
    assert eps.shape == latents.shape and eps.dtype == torch.float32 and torch.isfinite(eps).all()


def test_load_in_bfloat16(tiny_dir):
    model = load_diffueraser(tiny_dir, dtype="bf16")
    assert all(t.dtype == torch.bfloat16 for t in model.state_dict().values())
    latents, cond, text = _inputs(frames=2)
    with torch.no_grad():
        eps = model.predict_eps(latents, torch.tensor(499), text, cond, num_frames=2)
        ref = load_diffueraser(tiny_dir).predict_eps(latents, 499, text, cond, num_frames=2)
    assert eps.dtype == torch.bfloat16 and eps.shape == latents.shape
    assert (eps.float() - ref).abs().mean() < 0.05 * ref.abs().mean()


def test_fp16_variant(tmp_path):
    root = write_tiny_diffueraser(tmp_path / "w", seed=3, dtype=torch.float16, variant="fp16")
    assert (root / "unet_main" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    explicit = load_diffueraser(root, variant="fp16")
    implicit = load_diffueraser(root)  # the only file present is the fp16 one
    ref, got, got_implicit = (m.state_dict() for m in (tiny_diffueraser(seed=3), explicit, implicit))
    for k, v in ref.items():
        assert torch.equal(got[k], v.half().float())
        assert torch.equal(got_implicit[k], got[k])
    with pytest.raises(FileNotFoundError, match="bf16"):
        load_diffueraser(root, variant="bf16")


def test_pos_embed_buffers_may_be_absent(tiny_copy):
    file = tiny_copy / "unet_main" / WEIGHTS
    with safe_open(file, "pt") as f:
        state = {k: f.get_tensor(k).clone() for k in f.keys()}
    pe = [k for k in state if k.endswith("pos_embed.pe")]
    assert len(pe) == 21
    full = load_diffueraser(tiny_copy)
    save_file({k: v for k, v in state.items() if k not in pe}, file)
    stripped = load_diffueraser(tiny_copy)
    for k in pe:
        assert torch.equal(stripped.unet.state_dict()[k], full.unet.state_dict()[k])
    latents, cond, text = _inputs()
    with torch.no_grad():
        assert torch.allclose(stripped.predict_eps(latents, 999, text, cond, 4),
                              full.predict_eps(latents, 999, text, cond, 4), atol=1e-6)


def test_missing_folders_and_files(tiny_copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface.co/lixiaowen/diffuEraser"):
        load_diffueraser(tmp_path / "nowhere")
    shutil.rmtree(tiny_copy / "unet_main")
    with pytest.raises(FileNotFoundError, match=r"unet_main/"):
        load_diffueraser(tiny_copy)


def test_missing_config_json(tiny_copy):
    (tiny_copy / "brushnet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"brushnet.config\.json is missing.*configs/brushnet\.json"):
        load_diffueraser(tiny_copy)


def test_broken_config_json(tiny_copy):
    (tiny_copy / "unet_main" / "config.json").write_text('{"_class_name": "UNetMo')
    with pytest.raises(CheckpointError, match=r"unet_main.config\.json is not valid JSON.*download"):
        load_diffueraser(tiny_copy)


def test_missing_weights_with_pickle_hint(tiny_copy):
    weights = tiny_copy / "brushnet" / WEIGHTS
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(FileNotFoundError, match=r"safetensors.*is missing.*\.bin"):
        load_diffueraser(tiny_copy)


def test_partial_download(tiny_copy):
    weights = tiny_copy / "unet_main" / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"unet_main.diffusion_pytorch_model\.safetensors is not a complete "
                                              r"safetensors file.*interrupted download.*download"):
        load_diffueraser(tiny_copy)


def test_git_lfs_pointer(tiny_copy):
    (tiny_copy / "brushnet" / WEIGHTS).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 3\n")
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        load_diffueraser(tiny_copy)


def test_renamed_key_is_reported(tiny_copy):
    file = tiny_copy / "brushnet" / WEIGHTS
    with safe_open(file, "pt") as f:
        state = {k: f.get_tensor(k).clone() for k in f.keys()}
    state["brushnet_mid_block.weight_renamed"] = state.pop("brushnet_mid_block.weight")
    save_file(state, file)
    with pytest.raises(CheckpointError) as err:
        load_diffueraser(tiny_copy)
    msg = str(err.value)
    assert str(file) in msg and "1 missing" in msg and "brushnet_mid_block.weight," not in msg.split("unexpected")[1]
    assert "brushnet_mid_block.weight_renamed" in msg and "brushnet/ folder" in msg


def test_wrong_shape_is_reported(tiny_copy):
    cfg_file = tiny_copy / "unet_main" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["cross_attention_dim"] = 64  # the weights were made for 32
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape.*attn2\.to_k\.weight: file \[\d+, 32\] vs config \[\d+, 64\]"):
        load_diffueraser(tiny_copy)


def _edit_unet_config(folder: Path, **changes) -> Path:
    cfg_file = folder / "unet_main" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(changes)
    cfg_file.write_text(json.dumps(cfg))
    return cfg_file


def test_config_keys_the_original_ignores_load_at_any_value(tiny_dir, tiny_copy):
    # A unet_main/config.json the original code wrote from another 2D UNet: attention_head_dim is an SD1.5
    # leftover the original UNetMotionModel never reads (it uses num_attention_heads), so it must load and
    # compute exactly what the untouched folder computes.
    _edit_unet_config(tiny_copy, attention_head_dim=16, center_input_sample=True, flip_sin_to_cos=False)
    edited, reference = load_diffueraser(tiny_copy), load_diffueraser(tiny_dir)
    latents, cond, text = _inputs(frames=3)
    torch.testing.assert_close(edited.predict_eps(latents, 499, text, cond, 3),
                               reference.predict_eps(latents, 499, text, cond, 3), rtol=0, atol=0)


@pytest.mark.parametrize("changes,pattern", [
    (dict(num_attention_heads=4), r"unet_main.config\.json.*num_attention_heads=4.*trained with num_attention_heads=8"),
    (dict(motion_num_attention_heads=16), r"unet_main.config\.json.*motion_num_attention_heads=16"),
    (dict(block_out_channels=[32, 64, 96, 128]), r"unet_main.*does not hold DiffuEraser's unet_main weights for its config\.json: \d+ missing"),
])
def test_config_keys_that_change_the_network_are_refused(tiny_copy, changes, pattern):
    _edit_unet_config(tiny_copy, **changes)
    with pytest.raises(CheckpointError, match=pattern):
        load_diffueraser(tiny_copy)


def test_swapped_folders_are_recognised(tiny_copy):
    b, u = tiny_copy / "brushnet", tiny_copy / "unet_main"
    (b / WEIGHTS).rename(tiny_copy / "tmp")
    (u / WEIGHTS).rename(b / WEIGHTS)
    (tiny_copy / "tmp").rename(u / WEIGHTS)
    with pytest.raises(CheckpointError, match="swapped"):
        load_diffueraser(tiny_copy)


def test_swapped_configs_are_recognised(tiny_copy):
    b, u = tiny_copy / "brushnet" / "config.json", tiny_copy / "unet_main" / "config.json"
    text = b.read_text()
    b.write_text(u.read_text())
    u.write_text(text)
    with pytest.raises(CheckpointError, match=r"brushnet.config\.json describes a UNetMotionModel.*swapped"):
        load_diffueraser(tiny_copy)


def test_diffusers_from_pretrained_reads_the_released_layout_too(tiny_dir):
    ours = load_diffueraser(tiny_dir)
    brushnet = BrushNetModel.from_pretrained(tiny_dir, subfolder="brushnet")
    unet = DiffuEraserUNetMotionModel.from_pretrained(tiny_dir, subfolder="unet_main")
    for theirs, mine in ((brushnet, ours.brushnet), (unet, ours.unet)):
        a, b = theirs.state_dict(), mine.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# predict_eps


@pytest.fixture(scope="module")
def tiny_model() -> DiffuEraserModel:
    return tiny_diffueraser(seed=1).requires_grad_(False)


@pytest.mark.parametrize("frames", [1, 32])
def test_frame_counts(tiny_model, frames):
    latents, cond, text = _inputs(frames=frames, h=8, w=8)
    with torch.no_grad():
        eps = tiny_model.predict_eps(latents, 999, text, cond, num_frames=frames)
    assert eps.shape == latents.shape and torch.isfinite(eps).all()


def test_too_many_frames_is_a_clear_error(tiny_model):
    latents, cond, text = _inputs(frames=33, h=8, w=8)
    with pytest.raises(ValueError, match="between 1 and 32"):
        tiny_model.predict_eps(latents, 999, text, cond, num_frames=33)


def test_batch_of_clips_equals_clips_one_by_one(tiny_model):
    # Per-clip timesteps and texts must reach the right frames in both networks.
    latents, cond, _ = _inputs(frames=3, batch=2, h=8, w=8, seed=5)
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([999, 499])
    with torch.no_grad():
        both = tiny_model.predict_eps(latents, t, text, cond, num_frames=3)
        first = tiny_model.predict_eps(latents[:3], 999, text[:1], cond[:3], num_frames=3)
        second = tiny_model.predict_eps(latents[3:], 499, text[1:], cond[3:], num_frames=3)
        shared = tiny_model.predict_eps(latents, 999, text[:1], cond, num_frames=3)
        shared_repeated = tiny_model.predict_eps(latents, torch.tensor([999, 999]), text[:1].repeat(2, 1, 1),
                                                 cond, num_frames=3)
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared, shared_repeated, atol=1e-6, rtol=1e-6)
    assert (both[3:] - shared[3:]).abs().max() > 1e-3  # the timestep does matter


def test_brushnet_and_mask_change_eps(tiny_model):
    latents, cond, text = _inputs(seed=2)
    flipped = cond.clone()
    flipped[:, 4] = 1 - flipped[:, 4]
    with torch.no_grad():
        eps = tiny_model.predict_eps(latents, 999, text, cond, 4)
        eps_flipped = tiny_model.predict_eps(latents, 999, text, flipped, 4)
        eps_off = tiny_model.predict_eps(latents, 999, text, cond, 4, brushnet_scale=0.0)
        eps_unet = tiny_model.unet(latents, torch.tensor([999]), text, num_frames=4).sample
    assert (eps - eps_flipped).abs().mean() > 0.01 * eps.abs().mean()
    assert torch.equal(eps_off, eps_unet)
    assert (eps - eps_off).abs().mean() > 0.01 * eps.abs().mean()


def test_odd_latent_sizes(tiny_model):
    # 960x540 video floors to 536 px -> 67 latent rows: sizes need not halve evenly.
    latents, cond, text = _inputs(frames=2, h=9, w=7)
    with torch.no_grad():
        eps = tiny_model.predict_eps(latents, 999, text, cond, num_frames=2)
    assert eps.shape == (2, 4, 9, 7)


@pytest.mark.parametrize("bad", ["cond_channels", "text_width", "frames_split"])
def test_bad_inputs_are_explained(tiny_model, bad):
    latents, cond, text = _inputs(frames=4)
    frames = 4
    if bad == "cond_channels":
        cond = cond[:, :4]
    elif bad == "text_width":
        text = torch.randn(1, 77, 768)
    else:
        frames = 3
    with pytest.raises(ValueError, match={"cond_channels": "cond_latents", "text_width": "text_embeds",
                                          "frames_split": "split"}[bad]):
        tiny_model.predict_eps(latents, 999, text, cond, num_frames=frames)
