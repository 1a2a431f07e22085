"""Compositing inpainted frames back into the original video.

Three modes, all of which return the original pixels *exactly* outside a band around the hole:

``"gaussian"`` - DiffuEraser's blend (reference/diffueraser.md §1.9): ``blur = GaussianBlur(m,
    21x21, sigma 0 -> 3.5)`` of the 0/255 mask, ``alpha = 1 - (1 - m)(1 - blur)`` quantised to
    uint8, ``out = gen * alpha + orig * (1 - alpha)``. The hole keeps the generated pixels, the
    feather reaches 9 pixels *outward*. In the feather band the result is the release's exactly:
    both frames as 8-bit values (the generated one rounded, as its PIL output is), blended in
    float32 and *truncated* to uint8. In the hole the generated frame is kept as it is (the
    release rounds it to 8 bit there, which writing the video does too).

``"seamless"`` - ours, for the two ways that fixed feather fails (seed §2.6):
    1. *Colour drift.* A diffusion model's output (through the VAE) is often slightly off in
       colour or brightness, so the hole shows as a patch. We measure ``orig - gen`` where both
       are real - around the hole - low-pass it, and carry it into the hole as a smooth membrane
       (the harmonic interpolation of gradient-domain "seamless cloning"). Added to ``gen``, the
       generated texture is kept but its low frequencies now meet the frame. When ``gen`` equals
       the frame around the hole (e.g. the flow prior), the correction is zero.
    2. *Halos.* One fixed feather width doubles texture (foliage, hair) next to the hole and
       is too narrow to hide a seam on flat areas (sky, walls). The feather here follows the
       Gaussian-edge profile of DiffuEraser's, but its width falls with the local texture
       strength of the original frame: wide on flat surroundings, narrow on textured ones.

``"hard"`` - no feather: ``out = gen`` in the hole, ``orig`` elsewhere.

Frames are ``(T, H, W, 3)`` float in [0, 1] (torch or numpy, uint8 accepted); masks ``(T, H, W)``
with 1 = hole. The result is a float32 CPU tensor.
"""
from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np
import torch

from .errors import Cancelled, RrdpoInputError
from .membrane import harmonic_fill
from .video_io import as_frames, as_masks, resize_frames, to_tensor

__all__ = ["BLEND_MODES", "blend_into_video", "gaussian_feather_alpha", "adaptive_feather_alpha",
           "colour_correction"]

BLEND_MODES = ("gaussian", "seamless", "hard")

# DiffuEraser's feather: 21x21 kernel, sigma 0 -> OpenCV's 0.3 * ((21 - 1) / 2 - 1) + 0.8 = 3.5.
_GAUSS_KSIZE = 21
# Seamless mode: feather sigma between these (pixels), chosen by the local texture strength.
_SIGMA_FLAT = 4.0
_SIGMA_TEXTURED = 1.2
# Mean gradient magnitude (intensity per pixel, 0..1 scale) at which the width is halfway.
_TEXTURE_SCALE = 0.04
# Scale (pixels) of the low-pass on the colour mismatch measured around the hole.
_DRIFT_SIGMA = 6.0


def gaussian_feather_alpha(mask: np.ndarray) -> np.ndarray:
    """DiffuEraser's compositing weight for one (H, W) bool mask, float32 multiples of 1/255.

    Follows the released code's arithmetic exactly: OpenCV blur of the uint8 0/255 mask (uint8
    result), ``1 - (1 - m/255) * (1 - blur/255)`` in float64, then ``* 255`` truncated to uint8.
    For a straight edge the uint8 weights 1..10 px outside the hole are 113, 84, 60, 40, 24, 14,
    8, 3, 1, 0.
    """
    m = mask.astype(np.uint8) * 255
    blur = cv2.GaussianBlur(m, (_GAUSS_KSIZE, _GAUSS_KSIZE), 0).astype(np.float64) / 255.0
    alpha = 1.0 - (1.0 - m.astype(np.float64) / 255.0) * (1.0 - blur)
    return ((alpha * 255.0).astype(np.uint8).astype(np.float32)) / np.float32(255.0)


def _released_feather(gen: np.ndarray, orig: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The release's composite of 8-bit pixels, in its float32 arithmetic, truncated (reference §1.9).

    ``uint8(gen8 * a + orig8 * (1 - a))`` with ``gen8``/``orig8`` the frames rounded to 8 bit; the
    float32 cast of the result truncates towards zero, so it can be one level below the rounded
    value (e.g. when ``gen == orig``). Returned as float32 in [0, 1].
    """
    gen8 = np.rint(np.clip(gen, 0.0, 1.0) * 255.0).astype(np.uint8)
    orig8 = np.rint(np.clip(orig, 0.0, 1.0) * 255.0).astype(np.uint8)
    a = alpha.astype(np.float32)
    blended = gen8 * a + orig8 * (np.float32(1.0) - a)
    return blended.astype(np.uint8).astype(np.float32) / np.float32(255.0)


def _texture_strength(frame: np.ndarray, hole: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """Local mean gradient magnitude of ``frame`` measured on known pixels only (H, W)."""
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    mag = np.sqrt(gx * gx + gy * gy)
    # Gradients next to the hole see the hole's content: leave a 1-px margin out.
    known = (cv2.dilate(hole.astype(np.uint8), np.ones((3, 3), np.uint8)) == 0).astype(np.float32)
    num = cv2.GaussianBlur(mag * known, (0, 0), sigma)
    den = cv2.GaussianBlur(known, (0, 0), sigma)
    return num / np.maximum(den, 1e-6)


def adaptive_feather_alpha(mask: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Outward feather whose width follows the texture of ``frame`` around the hole (H, W) float32.

    The profile is that of a Gaussian-blurred straight edge, ``0.5 * erfc((d - 0.5) / (sqrt(2) s))``
    at distance ``d`` from the hole - with ``s = 3.5`` it is DiffuEraser's feather - and the
    width ``s`` goes from ``_SIGMA_FLAT`` on flat surroundings to ``_SIGMA_TEXTURED`` on strong
    texture. 1 in the hole, exactly 0 from ``3 * _SIGMA_FLAT`` pixels out.
    """
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    strength = _texture_strength(frame, mask)
    sigma = _SIGMA_TEXTURED + (_SIGMA_FLAT - _SIGMA_TEXTURED) / (1.0 + (strength / _TEXTURE_SCALE) ** 2)
    # The width must vary slowly along the edge, or the band itself would show.
    sigma = cv2.GaussianBlur(sigma, (0, 0), 4.0)
    reach = 3.0 * _SIGMA_FLAT
    band = (dist > 0) & (dist < reach)
    alpha = np.zeros(mask.shape, np.float32)
    d, s = dist[band], sigma[band]
    alpha[band] = 0.5 * _erfc((d - 0.5) / (math.sqrt(2.0) * s))
    alpha[mask] = 1.0
    return alpha


def _erfc(x: np.ndarray) -> np.ndarray:
    return torch.special.erfc(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()


def colour_correction(original: np.ndarray, generated: np.ndarray, mask: np.ndarray,
                      reach: float = 3.0 * _SIGMA_FLAT) -> np.ndarray:
    """Smooth field (H, W, 3) that brings ``generated``'s low frequencies to ``original``'s.

    Outside the hole (up to ``reach`` + a margin) it is ``orig - gen`` low-passed over known
    pixels; inside the hole, a membrane interpolation of that. Zero where ``gen == orig``.
    """
    if not mask.any():
        return np.zeros_like(original)
    pad = int(math.ceil(reach + 3 * _DRIFT_SIGMA))
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + 1 + pad)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + 1 + pad)
    hole = mask[y0:y1, x0:x1]
    diff = original[y0:y1, x0:x1] - generated[y0:y1, x0:x1]
    known = (~hole).astype(np.float32)
    num = cv2.GaussianBlur(diff * known[..., None], (0, 0), _DRIFT_SIGMA)
    den = cv2.GaussianBlur(known, (0, 0), _DRIFT_SIGMA)[..., None]
    smooth = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0).astype(np.float32)
    filled = harmonic_fill(smooth, hole, smooth_iterations=20)
    out = np.zeros_like(original)
    out[y0:y1, x0:x1] = filled
    return out


def blend_into_video(
    original: torch.Tensor | np.ndarray,
    generated: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    mode: str = "gaussian",
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Composite ``generated`` into ``original`` inside (and around) the holes.

    Args:
        original: the input video ``(T, H, W, 3)``.
        generated: the inpainted video, same frame count; a different frame size (e.g. the
            model's multiple-of-8 processing size) is resized to the original's first.
        masks: ``(T, H, W)`` holes at the original size (1 = hole), or one mask for all frames.
        mode: ``"gaussian"`` (DiffuEraser), ``"seamless"`` (colour-matched, texture-adaptive
            feather) or ``"hard"``.

    Returns:
        float32 ``(T, H, W, 3)`` tensor. Outside the feather band (9 px for "gaussian", 12 px for
        "seamless", none for "hard") every pixel equals ``original`` exactly. An all-zero mask
        returns ``original`` unchanged.
    """
    if mode not in BLEND_MODES:
        raise RrdpoInputError(f"mode must be one of {BLEND_MODES}, got {mode!r}")
    orig = as_frames(original, "original")
    length, height, width = orig.shape[:3]
    holes = as_masks(masks, length, height, width)
    if not holes.any():
        return to_tensor(orig)
    gen = as_frames(generated, "generated")
    if gen.shape[0] != length:
        raise RrdpoInputError(f"generated has {gen.shape[0]} frames but original has {length}; "
                              "pass the inpainted result of this very video")
    gen = resize_frames(gen, height, width)
    out = orig  # as_frames gave us our own array
    for t in range(length):
        if cancel is not None and cancel():
            raise Cancelled("blend cancelled")
        hole = holes[t]
        if hole.any():
            if mode == "gaussian":
                alpha = gaussian_feather_alpha(hole)
                g = gen[t]
            elif mode == "seamless":
                alpha = adaptive_feather_alpha(hole, orig[t])
                g = np.clip(gen[t] + colour_correction(orig[t], gen[t], hole), 0.0, 1.0)
            else:
                alpha = hole.astype(np.float32)
                g = gen[t]
            band = (alpha > 0) & (alpha < 1)
            a = alpha[band][:, None]
            o = out[t][band]
            if mode == "gaussian":
                out[t][band] = _released_feather(g[band], o, a)
            else:
                # orig + a (gen - orig): exactly orig wherever gen equals it (e.g. the flow prior).
                out[t][band] = o + a * (g[band] - o)
            full = alpha >= 1
            out[t][full] = g[full]
        if progress is not None:
            progress(t + 1, length)
    return to_tensor(out)
