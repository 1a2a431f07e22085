"""Inpainting metrics (rrdpo_core.metrics)."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from rrdpo_core.errors import RrdpoInputError
from rrdpo_core.metrics import evaluate_inpainting, lpips_status, ssim_map
from rrdpo_core.zones import decompose_zones


def panning(length=6, h=48, w=64, dx=2, seed=0):
    rng = np.random.default_rng(seed)
    plane = cv2.GaussianBlur(rng.random((h, w + dx * length, 3)).astype(np.float32), (0, 0), 2.0)
    plane = (plane - plane.min()) / (plane.max() - plane.min())
    return np.stack([plane[:, dx * t:dx * t + w] for t in range(length)])


def masks_for(video):
    m = np.zeros(video.shape[:3], bool)
    m[:, 14:30, 20:40] = True
    return m


def test_zone_psnr_follows_where_the_error_is():
    truth = panning()
    masks = masks_for(truth)
    result = truth.copy()
    result[masks] = np.clip(result[masks] + 0.1, 0, 1)
    err = (result - truth) ** 2
    rep = evaluate_inpainting(result, truth, masks, temporal=False)
    expected_hole = 10 * math.log10(1 / err[masks].mean())
    assert rep.zones["hole"].psnr == pytest.approx(expected_hole, abs=1e-3)
    assert rep.zones["boundary"].psnr == math.inf and rep.zones["context"].psnr == math.inf
    assert rep.zones["frame"].psnr == pytest.approx(10 * math.log10(1 / err.mean()), abs=1e-3)
    zones = decompose_zones(masks.astype(np.float32), band_px=8)
    assert rep.zones["boundary"].pixels == int(zones.boundary.sum())
    assert rep.zones["hole"].ssim < rep.zones["context"].ssim == pytest.approx(1.0)


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    img = panning(1)[0]
    assert np.allclose(ssim_map(img, img), 1.0, atol=1e-4)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 0.1, img.shape), 0, 1).astype(np.float32)
    assert ssim_map(img, noisy).mean() < 0.9


def test_warping_error_sees_flicker_in_the_hole():
    truth = panning()
    masks = masks_for(truth)
    stable = evaluate_inpainting(truth, truth, masks)
    flicker = truth.copy()
    rng = np.random.default_rng(1)
    for t in range(len(flicker)):
        flicker[t][masks[t]] = np.clip(flicker[t][masks[t]] + rng.uniform(-0.2, 0.2), 0, 1)
    shaky = evaluate_inpainting(flicker, truth, masks)
    assert stable.warp_error == pytest.approx(stable.warp_error_truth)
    assert shaky.warp_error_hole > 5 * stable.warp_error_hole
    assert shaky.warp_error_truth == pytest.approx(stable.warp_error_truth)


def test_seam_measures_detect_a_visible_edge():
    truth = panning()
    masks = masks_for(truth)
    patch = truth.copy()
    patch[masks] = np.clip(patch[masks] * 0.6 + 0.3, 0, 1)  # a contrast/brightness step at the edge
    good = evaluate_inpainting(truth, truth, masks, temporal=False)
    bad = evaluate_inpainting(patch, truth, masks, temporal=False)
    assert good.boundary_gradient_error == 0.0
    assert bad.boundary_gradient_error > 0.005
    assert bad.seam_gradient_ratio > good.seam_gradient_ratio == pytest.approx(good.seam_gradient_ratio_truth)


def test_without_truth_only_reference_free_measures():
    video = panning()
    rep = evaluate_inpainting(video, None, masks_for(video))
    assert rep.zones == {} and rep.boundary_gradient_error is None
    assert rep.warp_error is not None and rep.seam_gradient_ratio is not None
    assert any("no truth" in n for n in rep.notes)


def test_report_serialises_and_prints():
    truth = panning()
    rep = evaluate_inpainting(truth, truth, masks_for(truth), temporal=False)
    d = json.loads(json.dumps(rep.to_dict(), default=float))
    assert set(d["zones"]) == {"hole", "boundary", "context", "frame"}
    table = rep.format_table("title")
    assert table.splitlines()[0] == "title" and "boundary" in table and "inf" in table


def test_lpips_only_from_local_weights():
    truth = panning(2)
    available, why = lpips_status()
    if available:
        pytest.skip("LPIPS weights are present on this machine")
    assert "LPIPS skipped" in why
    rep = evaluate_inpainting(truth, truth, masks_for(truth), temporal=False, lpips="auto")
    assert rep.lpips_hole is None and any("LPIPS" in n for n in rep.notes)
    with pytest.raises(RrdpoInputError, match="LPIPS"):
        evaluate_inpainting(truth, truth, masks_for(truth), temporal=False, lpips=True)


def test_shape_mismatch_is_an_error():
    truth = panning()
    with pytest.raises(RrdpoInputError, match="must match"):
        evaluate_inpainting(truth[:-1], truth, masks_for(truth)[:-1])
