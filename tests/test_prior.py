"""The weight-free flow-propagation prior (rrdpo_core.prior.flow)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from rrdpo_core.errors import Cancelled, RrdpoInputError
from rrdpo_core.prior import PriorResult, flow_propagation_prior, harmonic_fill
from rrdpo_core.synthetic import make_synthetic_clip


def hole_psnr(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / ((a - b) ** 2)[m].mean()))


def telea(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = frames.copy()
    for t, (f, m) in enumerate(zip(frames, masks)):
        filled = cv2.inpaint((f * 255 + 0.5).astype(np.uint8), m.astype(np.uint8), 5, cv2.INPAINT_TELEA)
        out[t][m] = filled[m] / 255.0
    return out


@pytest.fixture(scope="module")
def clip():
    c = make_synthetic_clip(12, 64, 96, seed=1)
    return c.frames.numpy(), c.masks.numpy(), c.truth.numpy()


def panning_video(length=10, height=64, width=96, dx=4, dy=1, seed=0):
    """A textured plane seen by a camera moving (dx, dy) pixels per frame; exact crops, no resampling."""
    rng = np.random.default_rng(seed)
    plane = cv2.GaussianBlur(rng.random((height + dy * length + 8, width + dx * length + 8, 3)).astype(np.float32),
                             (0, 0), 2.0)
    plane = (plane - plane.min()) / (plane.max() - plane.min())
    return np.stack([plane[4 + dy * t:4 + dy * t + height, 4 + dx * t:4 + dx * t + width] for t in range(length)])


def test_restores_the_hole_far_better_than_spatial_fill(clip):
    frames, masks, truth = clip
    result = flow_propagation_prior(frames, masks)
    assert isinstance(result, PriorResult)
    out = result.frames.numpy()
    assert out.shape == frames.shape and out.dtype == np.float32
    # The occluder's background is seen in other frames: propagation must beat Telea by a wide margin.
    assert hole_psnr(out, truth, masks) > hole_psnr(telea(frames, masks), truth, masks) + 8.0
    assert result.stats["seen_fraction"] > 0.9


def test_pixels_outside_the_hole_are_the_input_exactly(clip):
    frames, masks, _ = clip
    out = flow_propagation_prior(torch.from_numpy(frames), torch.from_numpy(masks)).frames.numpy()
    np.testing.assert_array_equal(out[~masks], frames[~masks])


def test_hole_content_never_leaks_into_the_result(clip):
    # Whatever is under the mask (the object to remove) must not influence the fill at all.
    frames, masks, _ = clip
    a, b = frames.copy(), frames.copy()
    a[masks] = [1.0, 0.0, 1.0]
    b[masks] = np.random.default_rng(0).random((int(masks.sum()), 3))
    out_a = flow_propagation_prior(a, masks).frames.numpy()
    out_b = flow_propagation_prior(b, masks).frames.numpy()
    np.testing.assert_array_equal(out_a[masks], out_b[masks])


def test_visibility_marks_what_other_frames_saw():
    video = panning_video()
    masks = np.zeros(video.shape[:3], bool)
    masks[:, 24:40, 40:56] = True  # camera moves 4 px/frame: everything is revealed within the clip
    moving = flow_propagation_prior(video, masks)
    vis = moving.visibility.numpy()
    assert vis.shape == masks.shape
    assert np.all(vis[~masks] == 1.0)
    assert vis[masks].mean() > 0.95
    # A static camera over a static hole: nothing is ever seen, all of it is filled spatially.
    still = np.repeat(video[:1], len(video), axis=0)
    static = flow_propagation_prior(still, masks)
    assert static.visibility.numpy()[masks].max() == 0.0
    assert static.stats["seen_fraction"] == 0.0
    assert np.isfinite(static.frames.numpy()).all()


def test_pan_is_recovered_accurately():
    video = panning_video()
    masks = np.zeros(video.shape[:3], bool)
    masks[:, 24:40, 40:56] = True
    out = flow_propagation_prior(video, masks).frames.numpy()
    assert hole_psnr(out, video, masks) > hole_psnr(telea(video, masks), video, masks) + 10.0


def test_empty_mask_returns_input_unchanged():
    frames = np.random.default_rng(0).random((4, 16, 24, 3)).astype(np.float32)
    result = flow_propagation_prior(frames, np.zeros((4, 16, 24)))
    np.testing.assert_array_equal(result.frames.numpy(), frames)
    assert torch.all(result.visibility == 1)


def test_full_mask_is_a_clear_error():
    with pytest.raises(RrdpoInputError, match="every pixel"):
        flow_propagation_prior(np.zeros((3, 16, 16, 3), np.float32), np.ones((3, 16, 16)))


def test_single_frame_is_filled_spatially():
    frame = panning_video(length=1)
    mask = np.zeros((1, 64, 96), bool)
    mask[0, 20:30, 30:40] = True
    result = flow_propagation_prior(frame, mask)
    assert result.visibility.numpy()[mask].max() == 0
    assert np.abs(result.frames.numpy()[mask] - frame[mask]).mean() < 0.2


def test_bad_inputs_are_clear_errors():
    frames = np.zeros((3, 16, 16, 3), np.float32)
    masks = np.zeros((3, 16, 16))
    masks[:, 4:8, 4:8] = 1
    bad = frames.copy()
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(RrdpoInputError, match=r"frame\(s\) \[1\]"):
        flow_propagation_prior(bad, masks)
    with pytest.raises(RrdpoInputError, match="2 masks for 3 frames"):
        flow_propagation_prior(frames, masks[:2])
    with pytest.raises(RrdpoInputError, match="resize the masks"):
        flow_propagation_prior(frames, np.zeros((3, 8, 8)))
    with pytest.raises(RrdpoInputError, match="preset"):
        flow_propagation_prior(frames, masks, preset="slow")
    with pytest.raises(RrdpoInputError, match="flow_downscale"):
        flow_propagation_prior(frames, masks, flow_downscale=0.5)


def test_one_mask_for_all_frames_and_uint8_frames():
    video = (panning_video() * 255).astype(np.uint8)
    mask = np.zeros((64, 96), bool)
    mask[24:40, 40:56] = True
    result = flow_propagation_prior(video, mask)
    assert result.frames.shape == (10, 64, 96, 3)
    np.testing.assert_allclose(result.frames.numpy()[:, ~mask], video[:, ~mask] / 255.0, atol=1e-7)


def test_progress_and_cancel(clip):
    frames, masks, _ = clip
    seen = []
    flow_propagation_prior(frames, masks, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        flow_propagation_prior(frames, masks, cancel=cancel)


def test_harmonic_fill_keeps_known_values_and_is_smooth():
    yy, xx = np.mgrid[0:48, 0:64].astype(np.float32)
    ramp = np.stack([0.01 * xx + 0.02 * yy, 0.5 - 0.01 * xx], -1)
    unknown = np.zeros((48, 64), bool)
    unknown[10:38, 15:50] = True
    filled = harmonic_fill(np.where(unknown[..., None], 0.0, ramp), unknown)
    np.testing.assert_array_equal(filled[~unknown], ramp[~unknown])
    # An affine field is harmonic: the membrane must come close to it.
    assert np.abs(filled - ramp)[unknown].max() < 0.1
    assert np.all(harmonic_fill(np.ones((4, 4)), np.ones((4, 4), bool)) == 0)
