"""Nodes take any frame size and one mask for a whole clip, and say what they adjusted."""
from __future__ import annotations

import pytest
import torch

from pack import node
from test_nodes_pipeline import FakeComfyVAE, _cond

T, H, W = 5, 60, 84  # neither side a multiple of 8 (like 854x480)


def _clip():
    g = torch.Generator().manual_seed(2)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    frames = torch.stack([torch.stack([(xx + 0.05 * t) % 1, yy, 0.5 * (xx + yy)], -1) for t in range(T)])
    frames = (frames + 0.02 * torch.rand(frames.shape, generator=g)).clamp(0, 1)
    mask = torch.zeros(T, H, W)
    mask[:, 20:44, 30:58] = 1  # the same hole in every frame, so one mask can stand for all
    return frames, mask


@pytest.fixture
def handle(comfy_stubs):
    from rrdpo_core.models.testing import write_tiny_diffueraser

    write_tiny_diffueraser(comfy_stubs.models_dir / "diffueraser" / "tiny", seed=0)
    return node("RRDPOLoadDiffuEraser").load("tiny", "auto", "none")[0]


def test_sampler_and_prior_latents_pad_by_reflection_and_crop_back(handle):
    from rrdpo_core.inputs import check_inputs, pad_to_multiple
    from rrdpo_core.pipeline import DiffuEraserPipeline
    from test_nodes_pipeline import ComfyVAECodecFor

    frames, mask = _clip()
    vae = FakeComfyVAE()
    out, report = node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, mask, 2, "ddim", 3, 0.0,
                                                          prior=frames)
    assert out.shape == frames.shape and torch.isfinite(out).all()
    assert "padded (reflected) to 88x64" in report and "cropped back" in report
    # the same as padding by hand the way remove_objects does, running the pipeline, and cropping
    padded, _ = pad_to_multiple(check_inputs(frames, mask, frames, multiple=None))
    ref = DiffuEraserPipeline(handle.model, ComfyVAECodecFor(vae))(
        padded.frames, padded.holes, padded.prior, _cond()[0][0], num_inference_steps=2, scheduler="ddim", seed=3)
    torch.testing.assert_close(out, ref.frames[:, :H, :W], rtol=0, atol=1e-6)

    latent, report = node("RRDPOPriorLatents").prepare(handle, vae, _cond(), frames, mask, frames, "noise", 999, 2,
                                                        "ddim", 3)
    assert latent.latents.shape == (T, 4, 8, 11) and "padded" in report
    out2, _ = node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, mask, 2, "ddim", 3, 0.0,
                                                      prior_latents=latent)
    torch.testing.assert_close(out2, out, rtol=1e-4, atol=1e-4)  # same seed, same start, same padding

    aligned = frames[:, :56, :80]
    _, report = node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), aligned, mask[:, :56, :80], 1, "ddim",
                                                        3, 0.0)
    assert "padded" not in report


def test_one_mask_for_all_frames_and_resized_masks_in_the_model_nodes(handle):
    frames, mask = _clip()
    vae = FakeComfyVAE()
    args = (2, "ddim", 3, 0.0)
    full, _ = node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, mask, *args)
    one, report = node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, mask[:1], *args)
    assert torch.equal(one, full) and f"one mask used for all {T} frames" in report
    big = mask[:1].repeat_interleave(2, 1).repeat_interleave(2, 2)  # a mask image at twice the size
    resized, report = node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, big, *args)
    assert torch.equal(resized, full) and "resized from 168x120 to the frame size 84x60" in report
    latent, report = node("RRDPOPriorLatents").prepare(handle, vae, _cond(), frames, big, frames, "noise", 999, 2,
                                                        "ddim", 3)
    assert "resized" in report and "one mask" in report
    with pytest.raises(ValueError, match="mask"):
        node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, mask[:3], *args)


def test_one_mask_for_all_frames_in_the_mask_prior_blend_and_metrics_nodes(comfy_stubs):
    frames, mask = _clip()
    single = mask[:1]
    half = mask[:1, ::2, ::2]  # 42x30: resized up to 84x60 (nearest)

    # Zone Masks: one mask under many frames (was refused), and a mask of another size
    hole, band, ctx, overlay, report = node("RRDPOZoneMasks").split(single, 4, images=frames)
    ref = node("RRDPOZoneMasks").split(mask, 4, images=frames)
    assert hole.shape == (T, H, W) and torch.equal(hole, ref[0]) and torch.equal(overlay, ref[3])
    assert "one mask used for all" in report
    hole, *_, report = node("RRDPOZoneMasks").split(half, 4, images=frames)
    assert hole.shape == (T, H, W) and "resized from 42x30" in report
    assert node("RRDPOZoneMasks").split(mask, 4, images=frames)[4] == "mask used as given"

    # Prepare Video Mask: resizing to the frames is reported; one mask is repeated for every frame
    prepared, report = node("RRDPOPrepareVideoMask").prepare(half, 2, True, images=frames)
    assert prepared.shape == (T, H, W) and "resized from 42x30" in report and "one mask" in report

    # Flow prior
    p1, v1, _, report = node("RRDPOFlowPrior").run(frames, single, 2.0, "fast")
    p2, v2, _, _ = node("RRDPOFlowPrior").run(frames, mask, 2.0, "fast")
    assert torch.equal(p1, p2) and torch.equal(v1, v2) and "one mask" in report
    _, _, _, report = node("RRDPOFlowPrior").run(frames, half, 2.0, "fast")
    assert "resized" in report

    # Blend and metrics
    gen = torch.rand(frames.shape, generator=torch.Generator().manual_seed(0))
    start = len(comfy_stubs.progress)
    b1, report = node("RRDPOBlendIntoVideo").blend(frames, gen, single, "gaussian")
    assert comfy_stubs.progress[start:] == [(t, T) for t in range(1, T + 1)], "one tick per blended frame"
    b2, _ = node("RRDPOBlendIntoVideo").blend(frames, gen, mask, "gaussian")
    assert torch.equal(b1, b2) and "one mask" in report
    _, report = node("RRDPOBlendIntoVideo").blend(frames, gen, half, "gaussian")
    assert "resized" in report
    m1 = node("RRDPOInpaintingMetrics").measure(b1, half, 4, truth=frames)["result"][0]
    m2 = node("RRDPOInpaintingMetrics").measure(b1, mask, 4, truth=frames)["result"][0]
    assert m1.startswith(m2) and "resized" in m1 and "resized" not in m2


def test_flow_prior_preview_tints_each_hole_pixel_by_its_source():
    from rrdpo_core.prior import flow_propagation_prior
    from rrdpo_core.prior.preview import SOURCE_COLOURS

    frames, mask = _clip()
    prior, _, preview, _ = node("RRDPOFlowPrior").run(frames, mask, 2.0, "fast")
    codes = flow_propagation_prior(frames, mask, flow_downscale=2.0, preset="fast").source_map
    outside = mask == 0
    assert torch.equal(preview[outside], prior[outside]), "outside the hole the preview is the prior itself"
    for code, colour in SOURCE_COLOURS.items():
        sel = (codes == code) & (mask > 0.5)
        if sel.any():  # each category present is pulled towards its own tint
            expected = 0.4 * prior[sel] + 0.6 * torch.tensor(colour)
            assert torch.allclose(preview[sel], expected.clamp(0, 1), atol=1e-5), code
    assert ((codes > 0) == (mask > 0.5)).all(), "every hole pixel has a source category, no pixel outside"
