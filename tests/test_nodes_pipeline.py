"""Model, prior, sampling, blending and metrics nodes with ComfyUI stubs and tiny random models."""
from __future__ import annotations

import pytest
import torch

from pack import load_pack, node

T, H, W = 6, 64, 64


class FakeComfyVAE:
    """ComfyUI's VAE interface ([B,H,W,C] 0..1 pixels, raw latents) over a tiny diffusers VAE."""

    latent_channels = 4

    def __init__(self):
        from rrdpo_core.vae import make_tiny_vae

        self.codec = make_tiny_vae(seed=0, sample=False)

    def encode(self, pixels):
        return self.codec.encode(pixels.movedim(-1, 1) * 2 - 1) / self.codec.scaling_factor

    def decode(self, latents):
        return ((self.codec.decode(latents * self.codec.scaling_factor) + 1) / 2).clamp(0, 1).movedim(1, -1)


def ComfyVAECodecFor(vae):
    """The pack's adapter from a ComfyUI VAE to the core codec (as the nodes build it)."""
    return load_pack().nodes._vae.ComfyVAECodec(vae)


def _clip():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    frames = torch.stack([torch.stack([(xx + 0.05 * t) % 1, yy, 0.5 * (xx + yy)], -1) for t in range(T)])
    frames = (frames + 0.02 * torch.rand(frames.shape, generator=g)).clamp(0, 1)
    mask = torch.zeros(T, H, W)
    for t in range(T):
        mask[t, 20:40, 10 + 2 * t : 30 + 2 * t] = 1
    return frames, mask


@pytest.fixture
def tiny_model(comfy_stubs):
    from rrdpo_core.models.testing import write_tiny_diffueraser

    write_tiny_diffueraser(comfy_stubs.models_dir / "diffueraser" / "tiny", seed=0)
    return comfy_stubs


def _cond(dim=32, seed=1):
    return [[torch.randn(1, 77, dim, generator=torch.Generator().manual_seed(seed)), {}]]


def test_flow_prior_node(comfy_stubs):
    frames, mask = _clip()
    prior, visibility, preview, _ = node("RRDPOFlowPrior").run(frames, mask, flow_downscale=2.0, preset="fast")
    assert prior.shape == frames.shape and visibility.shape == mask.shape and preview.shape == frames.shape
    keep = mask == 0
    assert torch.equal(prior[keep], frames[keep].float()), "outside the hole the prior is the input"
    assert comfy_stubs.progress, "the node reports progress to ComfyUI's bar"


def test_flow_prior_node_honours_cancel(comfy_stubs):
    frames, mask = _clip()
    comfy_stubs.interrupt()
    with pytest.raises(Exception) as info:
        node("RRDPOFlowPrior").run(frames, mask, flow_downscale=2.0, preset="fast")
    assert type(info.value).__name__ in ("InterruptProcessingException", "Cancelled")


def test_load_lists_models_and_errors_clearly(tiny_model):
    spec = load_pack().NODE_CLASS_MAPPINGS["RRDPOLoadDiffuEraser"].INPUT_TYPES()
    assert spec["required"]["model_name"][0] == ["tiny"]
    (handle,) = node("RRDPOLoadDiffuEraser").load("tiny", "auto", "none")
    assert handle.model.cross_attention_dim == 32 and handle.compute_dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="models/diffueraser|diffueraser"):
        node("RRDPOLoadDiffuEraser").load("missing", "auto", "none")
    with pytest.raises(FileNotFoundError, match="No DiffuEraser model"):
        node("RRDPOLoadDiffuEraser").load("none", "auto", "none")


def test_sampler_prior_latents_and_blend(tiny_model):
    frames, mask = _clip()
    (handle,) = node("RRDPOLoadDiffuEraser").load("tiny", "auto", "none")
    vae = FakeComfyVAE()
    prior, _, _, _ = node("RRDPOFlowPrior").run(frames, mask, flow_downscale=2.0, preset="fast")
    with pytest.raises(ValueError, match="PCM"):
        node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, mask, 2, "tcd", 0, 0.0, prior=prior)
    latent, _ = node("RRDPOPriorLatents").prepare(handle, vae, _cond(), frames, mask, prior, "noise", 999, 2, "ddim", 3)
    assert latent.latents.shape == (T, 4, H // 8, W // 8)
    out1, _ = node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, mask, 2, "ddim", 3, 0.0,
                                                      prior_latents=latent)
    out2, _ = node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, mask, 2, "ddim", 3, 0.0,
                                                      prior=prior)
    assert out1.shape == frames.shape and torch.isfinite(out1).all()
    torch.testing.assert_close(out1, out2, rtol=1e-4, atol=1e-4)  # same seed, same start
    with pytest.raises(ValueError, match="Prior Latents node"):  # a ComfyUI LATENT is not our start latents
        node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, mask, 2, "ddim", 3, 0.0,
                                               prior_latents={"samples": latent.latents})
    with pytest.raises(ValueError, match="conditioning"):
        node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(dim=768), frames, mask, 2, "ddim", 3, 0.0)
    blended, _ = node("RRDPOBlendIntoVideo").blend(frames, out1, mask, "gaussian")
    far = torch.ones_like(mask, dtype=torch.bool)
    far[:, 8:52, :] = False  # well outside the feathered band
    assert torch.equal(blended[far], frames[far])


def test_apply_lora_node_refuses_other_base_and_is_applied_only_while_sampling(tiny_model, tmp_path):
    from rrdpo_core.models.testing import tiny_diffueraser
    from rrdpo_core.region_lora import RegionLoraInfo, add_region_adapter, save_region_lora

    frames, mask = _clip()
    (handle,) = node("RRDPOLoadDiffuEraser").load("tiny", "auto", "none")
    loras = tiny_model.models_dir / "loras" / "rrdpo"
    loras.mkdir(parents=True)
    # a LoRA for this base (random non-zero weights) and one for another base
    for seed, name in ((0, "good.safetensors"), (5, "foreign.safetensors")):
        base = tiny_diffueraser(seed=seed)
        add_region_adapter(base.unet, rank=4, lora_alpha=8)
        with torch.no_grad():
            for n, p in base.unet.named_parameters():
                if "lora_" in n:
                    p.normal_(0, 0.5)
        save_region_lora(loras / name, base.unet, RegionLoraInfo(rank=4, lora_alpha=8))
    with pytest.raises(ValueError, match="different weights|base model"):
        node("RRDPOApplyRegionDPOLoRA").apply(handle, "rrdpo/foreign.safetensors", 1.0)
    (with_lora,) = node("RRDPOApplyRegionDPOLoRA").apply(handle, "rrdpo/good.safetensors", 1.0)
    (zero,) = node("RRDPOApplyRegionDPOLoRA").apply(handle, "rrdpo/good.safetensors", 0.0)
    vae = FakeComfyVAE()
    args = (vae, _cond(), frames, mask, 2, "ddim", 3, 0.0)
    base_out, _ = node("RRDPODiffuEraserSampler").sample(handle, *args)
    lora_out, _ = node("RRDPODiffuEraserSampler").sample(with_lora, *args)
    zero_out, _ = node("RRDPODiffuEraserSampler").sample(zero, *args)
    base_again, _ = node("RRDPODiffuEraserSampler").sample(handle, *args)
    assert not torch.allclose(base_out, lora_out, atol=1e-4), "the LoRA changes the output"
    torch.testing.assert_close(zero_out, base_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(base_again, base_out, rtol=0, atol=0)  # the shared model was left unchanged


def test_metrics_node(comfy_stubs):
    frames, mask = _clip()
    noisy = (frames + 0.1 * mask[..., None]).clamp(0, 1)
    out = node("RRDPOInpaintingMetrics").measure(noisy, mask, 8, truth=frames)
    report, chart = out["result"]
    assert isinstance(report, str) and "hole" in report.lower()
    assert chart.ndim == 4 and chart.shape[0] == 1 and chart.shape[-1] == 3
    out2 = node("RRDPOInpaintingMetrics").measure(noisy, mask, 8)
    assert isinstance(out2["result"][0], str)


def test_model_nodes_tick_through_vae_work_and_pair_building(tiny_model):
    """Prior Latents in noise mode (VAE only) and the sampler's VAE encode/decode move ComfyUI's bar."""
    frames, mask = _clip()
    (handle,) = node("RRDPOLoadDiffuEraser").load("tiny", "auto", "none")
    vae = FakeComfyVAE()
    start = len(tiny_model.progress)
    latent, _ = node("RRDPOPriorLatents").prepare(handle, vae, _cond(), frames, mask, frames, "noise", 999, 2,
                                                   "ddim", 3)
    ticks = tiny_model.progress[start:]
    assert len(ticks) == 2 and ticks[-1] == (2, 2)  # 6 frames = 2 VAE batches of the prior
    start = len(tiny_model.progress)
    node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, mask, 2, "ddim", 3, 0.0,
                                           prior_latents=latent)
    ticks = tiny_model.progress[start:]
    assert ticks[-1] == (6, 6) and [v for v, _ in ticks] == list(range(1, 7))  # encode 2 + 2 windows + decode 2
    start = len(tiny_model.progress)
    node("RRDPOBuildPreferencePairs").build(handle, vae, _cond(), "ticks", 1, 4, True, False, False, 0,
                                            images=frames)
    values = [v for v, _ in tiny_model.progress[start:]]
    assert values[-1] == 100 and len(set(values)) > 5, "the bar moves while the pair is made"
