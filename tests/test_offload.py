"""Low-memory sampling (rrdpo_core.offload) gives the resident run's result, and leaves no trace."""
from __future__ import annotations

import pytest
import torch

from rrdpo_core.models.testing import tiny_diffueraser
from rrdpo_core.offload import OffloadedDenoiser, low_memory, plan_offload, remove_group_offload
from rrdpo_core.pipeline import DiffuEraserPipeline
from rrdpo_core.vae import make_tiny_vae, write_tiny_vae


def _video(n: int, size: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, size, size, 3, generator=gen)
    masks = torch.zeros(n, size, size)
    masks[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return frames, masks


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def model():
    return tiny_diffueraser(seed=0)


@pytest.fixture(scope="module")
def run_video():
    frames, masks = _video(26)  # two windows of 22 overlapping by 5... plus a third
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    return frames, masks, frames.flip(0), text


def _sample(model, codec, video, **kw):
    frames, masks, prior, text = video
    pipe = DiffuEraserPipeline(model, codec)
    return pipe(frames, masks, prior, text, num_inference_steps=2, scheduler="ddim", seed=3, **kw)


@pytest.mark.parametrize("level", ["windows", "blocks"])
def test_low_memory_levels_match_the_resident_run(model, run_video, level):
    codec = make_tiny_vae(seed=0, encode_chunk=4, decode_chunk=4)
    before = _state(model)
    ref = _sample(model, codec, run_video)
    with low_memory(model, codec, level, compute_device="cpu") as (denoiser, low_codec):
        assert isinstance(denoiser, OffloadedDenoiser)
        assert low_codec.encode_chunk == 1 and low_codec.decode_chunk == 1  # the VAE works in slices
        if level == "blocks":  # diffusers' group-offloading hooks are in place while sampling
            assert hasattr(model.unet.down_blocks[0], "_diffusers_hook")
            assert hasattr(model.brushnet.down_blocks[0], "_diffusers_hook")
        out = _sample(denoiser, low_codec, run_video)
    torch.testing.assert_close(out.latents, ref.latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.frames, ref.frames, rtol=1e-5, atol=1e-5)
    # No hook, no changed weight and no changed codec setting is left behind.
    assert not any(hasattr(m, "_diffusers_hook") for m in model.modules())
    after = _state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert codec.encode_chunk == 4 and not codec.vae.use_tiling


def test_ddim_inversion_under_block_offload_matches(model, run_video):
    codec = make_tiny_vae(seed=0)
    frames, masks, prior, text = run_video
    kw = dict(init_mode="ddim_inversion", num_inference_steps=2, scheduler="ddim", seed=5)
    ref = DiffuEraserPipeline(model, codec).prepare_latents(frames[:8], masks[:8], prior[:8], text, **kw)
    with low_memory(model, codec, "blocks", compute_device="cpu") as (denoiser, low_codec):
        out = DiffuEraserPipeline(denoiser, low_codec).prepare_latents(frames[:8], masks[:8], prior[:8], text, **kw)
    torch.testing.assert_close(out.latents, ref.latents, rtol=1e-5, atol=1e-5)


def test_hooks_are_removed_when_sampling_fails(model, run_video):
    codec = make_tiny_vae(seed=0)
    with pytest.raises(RuntimeError, match="boom"):
        with low_memory(model, codec, "blocks", compute_device="cpu"):
            assert any(hasattr(m, "_diffusers_hook") for m in model.modules())
            raise RuntimeError("boom")
    assert not any(hasattr(m, "_diffusers_hook") for m in model.modules())
    remove_group_offload(model)  # idempotent on a clean model


def test_tiled_vae_is_opt_in_and_switched_off_after():
    # 96x96 frames exceed the tiny VAE's 64-pixel tile: with tiling on, the decoder really tiles.
    codec = make_tiny_vae(seed=0)
    latents = torch.randn(2, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    ref = codec.decode(latents)
    model = tiny_diffueraser(seed=1)
    with low_memory(model, codec, "blocks", compute_device="cpu") as (_, low_codec):
        assert not codec.vae.use_tiling
        torch.testing.assert_close(low_codec.decode(latents), ref, rtol=1e-5, atol=1e-5)
    with low_memory(model, codec, "blocks", compute_device="cpu", vae_tiling=True) as (_, low_codec):
        assert codec.vae.use_tiling
        tiled = low_codec.decode(latents)
    assert not codec.vae.use_tiling
    assert tiled.shape == ref.shape and torch.isfinite(tiled).all()
    assert not torch.allclose(tiled, ref)  # tiles blended over their overlap: another result


def test_plan_offload_auto_follows_free_memory(model):
    gib = 1024 ** 3
    cpu = plan_offload("auto", model, 64, 64, 22, compute_device="cpu")
    assert cpu.level == "none"  # nothing to offload to on the CPU
    plenty = plan_offload("auto", model, 720, 1280, 22, compute_device="cuda", free_bytes=1000 * gib)
    assert plenty.level == "none"
    # Tiny weights: little memory forces offloading of the video's latents first, then blocks.
    levels = [plan_offload("auto", model, 720, 1280, 22, compute_device="cuda", free_bytes=int(g * gib)).level
              for g in (1000, 0.01, 0.0001)]
    order = ["none", "windows", "blocks"]
    assert [order.index(x) for x in levels] == sorted(order.index(x) for x in levels)
    assert levels[-1] == "blocks"
    with pytest.raises(ValueError, match="offload must be one of"):
        plan_offload("sometimes", model, 64, 64, 22, compute_device="cpu")


def test_remove_objects_offload_option_gives_the_same_frames(tmp_path):
    from rrdpo_core.models.testing import write_tiny_diffueraser
    from rrdpo_core.api import remove_objects

    model_dir = write_tiny_diffueraser(tmp_path / "tiny")
    frames, masks = _video(6)
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    kw = dict(model_dir=model_dir, vae_path=write_tiny_vae(tmp_path / "vae", seed=0), prior_frames=frames.flip(0), steps=2,
              scheduler="ddim", seed=4, text_embeds=text, pcm_lora=None, device="cpu")
    ref = remove_objects(frames, masks, **kw)
    low = remove_objects(frames, masks, offload="blocks", **kw)
    torch.testing.assert_close(low, ref, rtol=1e-5, atol=1e-5)
    # "stream" loads the networks with their block weights left in the files: the very same frames.
    assert torch.equal(remove_objects(frames, masks, offload="stream", **kw), ref)
    with pytest.raises(ValueError, match="offload must be one of"):
        remove_objects(frames, masks, offload="maybe", **kw)
