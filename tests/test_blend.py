"""Compositing into the original frames (rrdpo_core.blend)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from rrdpo_core.blend import BLEND_MODES, adaptive_feather_alpha, blend_into_video, gaussian_feather_alpha
from rrdpo_core.errors import RrdpoInputError

REACH = {"gaussian": 10, "seamless": 13, "hard": 1}  # px beyond which nothing may change


def textured(h=64, w=96, seed=0, sigma=1.5):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), sigma)
    return (img - img.min()) / (img.max() - img.min())


def psnr(a, b, m):
    return float(10 * np.log10(1.0 / ((a - b) ** 2)[m].mean()))


def square_masks(length=2, h=64, w=96):
    m = np.zeros((length, h, w), bool)
    m[:, 20:44, 30:66] = True
    return m


def test_diffueraser_feather_numbers_on_a_straight_edge():
    mask = np.zeros((64, 64), bool)
    mask[:, :32] = True
    alpha = np.rint(gaussian_feather_alpha(mask) * 255).astype(int)
    # reference/diffueraser.md §1.9 [measured]: 1..10 px outside the hole.
    assert alpha[32, 32:42].tolist() == [113, 84, 60, 40, 24, 14, 8, 3, 1, 0]
    assert np.all(alpha[:, :32] == 255)
    assert np.all(alpha[:, 42:] == 0)


@pytest.mark.parametrize("mode", BLEND_MODES)
def test_context_is_preserved_exactly(mode):
    orig = np.stack([textured(seed=1), textured(seed=2)])
    gen = np.stack([textured(seed=3), textured(seed=4)])
    masks = square_masks()
    out = blend_into_video(orig, gen, masks, mode=mode).numpy()
    reach = REACH[mode]
    far = ~(cv2.dilate(masks[0].astype(np.uint8), np.ones((2 * reach + 1,) * 2, np.uint8)) > 0)
    np.testing.assert_array_equal(out[:, far], orig[:, far])
    if mode != "seamless":  # DiffuEraser's composite keeps the generated hole as is
        np.testing.assert_array_equal(out[masks], gen[masks])


def test_empty_mask_returns_the_original():
    orig = textured()[None]
    out = blend_into_video(torch.from_numpy(orig), np.zeros_like(orig), np.zeros((1, 64, 96)), mode="seamless")
    np.testing.assert_array_equal(out.numpy(), orig)


def test_seamless_removes_colour_drift_of_the_generated_frames():
    truth = textured(sigma=2.0)
    masks = square_masks(1)
    yy, xx = np.mgrid[0:64, 0:96]
    drift = (0.08 + 0.03 * np.sin(xx / 15.0))[..., None].astype(np.float32)  # a VAE-like colour shift
    gen = np.clip(truth + drift, 0, 1)
    scores = {m: psnr(blend_into_video(truth[None], gen[None], masks, mode=m).numpy()[0], truth, masks[0])
              for m in ("gaussian", "seamless")}
    assert scores["seamless"] > scores["gaussian"] + 6.0


def test_seamless_is_a_plain_composite_when_generated_matches_around_the_hole():
    # The flow prior returns the input outside the hole: no correction, no visible band.
    orig = textured()[None]
    gen = orig.copy()
    masks = square_masks(1)
    gen[masks] = textured(seed=9)[masks[0]]
    hard = blend_into_video(orig, gen, masks, mode="hard").numpy()
    seamless = blend_into_video(orig, gen, masks, mode="seamless").numpy()
    np.testing.assert_allclose(seamless, hard, atol=1e-6)


def test_adaptive_feather_is_narrower_on_texture():
    frame = np.full((64, 128, 3), 0.5, np.float32)
    frame[:, 64:] = textured(64, 64, seed=5, sigma=0.7)  # flat left half, busy right half
    mask = np.zeros((64, 128), bool)
    mask[24:40, 20:108] = True
    alpha = adaptive_feather_alpha(mask, frame)
    assert np.all(alpha[mask] == 1)
    flat, busy = alpha[44, 30], alpha[44, 98]  # 4 px below the hole on either side
    assert flat > busy + 0.1
    # The flat side is about as wide as DiffuEraser's feather, or wider.
    assert flat >= gaussian_feather_alpha(mask)[44, 30] - 0.02


def test_generated_at_another_size_is_resized():
    orig = textured()[None]
    gen = cv2.resize(textured(seed=3), (88, 56))[None]
    masks = square_masks(1)
    out = blend_into_video(orig, gen, masks).numpy()
    assert out.shape == orig.shape
    far = ~(cv2.dilate(masks[0].astype(np.uint8), np.ones((21, 21), np.uint8)) > 0)
    np.testing.assert_array_equal(out[0][far], orig[0][far])


def test_bad_inputs():
    orig = np.zeros((2, 16, 16, 3), np.float32)
    masks = np.ones((2, 16, 16))
    with pytest.raises(RrdpoInputError, match="mode"):
        blend_into_video(orig, orig, masks, mode="poisson-ish")
    with pytest.raises(RrdpoInputError, match="3 frames but original has 2"):
        blend_into_video(orig, np.zeros((3, 16, 16, 3)), masks)
    with pytest.raises(RrdpoInputError, match="resize the masks"):
        blend_into_video(orig, orig, np.ones((2, 8, 8)))
    nan = orig.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(RrdpoInputError, match="NaN"):
        blend_into_video(orig, nan, masks)


def _released_composite(orig8: np.ndarray, gen8: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """reference/diffueraser.md §1.9, step by step, on 8-bit frames."""
    m = hole.astype(np.uint8) * 255
    blur = cv2.GaussianBlur(m, (21, 21), 0) / 255.0
    alpha8 = ((1 - (1 - m / 255.0) * (1 - blur)) * 255).astype(np.uint8)
    a = np.repeat(alpha8[..., None], 3, axis=2).astype(np.float32) / 255.0
    return (gen8 * a + orig8 * (1 - a)).astype(np.uint8)  # the cast truncates


def test_gaussian_composite_truncates_to_8_bit_like_the_release():
    rng = np.random.default_rng(5)
    orig8 = (textured(seed=6) * 255).round().astype(np.uint8)
    gen8 = rng.integers(0, 256, orig8.shape, dtype=np.uint8)
    hole = square_masks(1)[0]
    out = blend_into_video(orig8[None], gen8[None] / 255.0, hole[None], mode="gaussian").numpy()[0]
    out8 = np.rint(out * 255).astype(np.uint8)
    np.testing.assert_array_equal(out8, _released_composite(orig8, gen8, hole))
    # Rounding instead of truncating would differ in the band: the test can tell them apart.
    alpha = gaussian_feather_alpha(hole)[..., None]
    rounded = np.rint(gen8 * alpha + orig8 * (1 - alpha)).astype(np.uint8)
    assert (rounded != out8).sum() > 100
