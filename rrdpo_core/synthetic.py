"""A synthetic object-removal clip with a known ground truth.

The background is a textured plane (smooth colour fields, hard-edged shapes, stripes and grain)
seen by a panning camera that moves at a varying sub-pixel speed; a textured occluder - the
"object to remove" - crosses it on its own path. The truth is the background alone, the mask is
the occluder's silhouette grown by a few pixels (as users' masks are), and outside the mask the
input frames equal the truth exactly, so every error a method makes is its own.

Everything is drawn from one seeded NumPy generator: a seed fixes the clip.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .errors import RrdpoInputError

__all__ = ["SyntheticClip", "make_synthetic_clip"]


@dataclass
class SyntheticClip:
    """``frames`` (T, H, W, 3) float32 with the occluder, ``truth`` without it, ``masks`` (T, H, W) bool."""

    frames: torch.Tensor
    masks: torch.Tensor
    truth: torch.Tensor
    fps: float = 24.0


def _smooth_field(rng: np.random.Generator, h: int, w: int, scale: float, channels: int = 3) -> np.ndarray:
    """Smooth random field in [0, 1] with features about ``scale`` pixels wide."""
    small = rng.random((max(2, int(h / scale) + 2), max(2, int(w / scale) + 2), channels)).astype(np.float32)
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    field = field.reshape(h, w, channels)
    lo, hi = field.min(), field.max()
    return (field - lo) / max(hi - lo, 1e-6)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = 0.25 + 0.5 * _smooth_field(rng, h, w, scale=max(h, w) / 4)
    base = 0.7 * base + 0.3 * _smooth_field(rng, h, w, scale=24)
    canvas = (np.clip(base, 0, 1) * 255).astype(np.uint8)
    area = h * w
    for _ in range(max(8, area // 3000)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 4)
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(6, max(8, min(h, w) // 6)))
        if kind == 0:
            cv2.rectangle(canvas, (cx, cy), (cx + size, cy + int(size * rng.uniform(0.5, 2))), colour, -1)
        elif kind == 1:
            cv2.circle(canvas, (cx, cy), size // 2, colour, -1, lineType=cv2.LINE_AA)
        elif kind == 2:
            end = (cx + int(rng.integers(-3 * size, 3 * size)), cy + int(rng.integers(-3 * size, 3 * size)))
            cv2.line(canvas, (cx, cy), end, colour, int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
        else:
            pts = np.stack([rng.integers(-size, size, 5) + cx, rng.integers(-size, size, 5) + cy], 1)
            cv2.fillPoly(canvas, [pts.astype(np.int32)], colour, lineType=cv2.LINE_AA)
    img = canvas.astype(np.float32) / 255.0
    # Stripes in one band and fine grain everywhere: texture that blur or misalignment would show.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    band = (np.abs(yy - h * rng.uniform(0.3, 0.7)) < h * 0.08)[..., None]
    stripes = 0.15 * np.sin(xx * rng.uniform(0.3, 0.6) + yy * 0.1)[..., None]
    img = img + band * stripes + rng.normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def make_synthetic_clip(num_frames: int = 32, height: int = 240, width: int = 432, seed: int = 0,
                        occluder_scale: float = 0.3, mask_margin: int = 3) -> SyntheticClip:
    """Make a clip of a panning textured background and a moving textured occluder.

    Args:
        num_frames: number of frames (>= 1).
        height, width: frame size (>= 32 each).
        seed: fixes every random choice.
        occluder_scale: occluder height as a fraction of the frame height.
        mask_margin: pixels by which the mask exceeds the occluder's silhouette.
    """
    if int(num_frames) != num_frames or num_frames < 1:
        raise RrdpoInputError(f"num_frames must be a positive integer, got {num_frames!r}")
    if height < 32 or width < 32:
        raise RrdpoInputError(f"frame size must be at least 32x32, got {width}x{height}")
    if not 0.05 <= occluder_scale <= 0.8:
        raise RrdpoInputError(f"occluder_scale must lie in [0.05, 0.8], got {occluder_scale}")
    rng = np.random.default_rng(seed)
    t_idx = np.arange(num_frames, dtype=np.float32)

    # Camera: pans across a wider plane at 1.5-3.5 px/frame with a gentle wobble.
    speed = rng.uniform(1.5, 3.5) * (width / 432)
    wobble = rng.uniform(0.5, 2.0)
    pan_x = speed * t_idx + wobble * np.sin(t_idx / 5.0)
    pan_y = 0.6 * wobble * np.sin(t_idx / 7.0 + 1.0)
    margin = 8
    plane_w = int(width + np.ceil(pan_x.max() - min(0.0, pan_x.min())) + 2 * margin)
    plane_h = int(height + np.ceil(np.abs(pan_y).max()) * 2 + 2 * margin)
    plane = _background(rng, plane_h, plane_w)
    x0 = margin - min(0.0, float(pan_x.min()))
    y0 = (plane_h - height) / 2.0

    # Occluder: a textured ellipse-ish blob crossing the frame, bobbing up and down.
    occ_h = max(8, int(height * occluder_scale))
    occ_w = max(8, int(occ_h * rng.uniform(0.5, 0.9)))
    occ_tex = _smooth_field(rng, occ_h, occ_w, scale=6)
    occ_tex = np.clip(occ_tex * np.array([0.9, 0.4, 0.3], np.float32) + 0.2, 0, 1)  # reddish, unlike the plane
    start = rng.uniform(0.1, 0.3) * width
    end = rng.uniform(0.6, 0.85) * width
    path_x = start + (end - start) * (t_idx / max(1, num_frames - 1))
    path_y = height * rng.uniform(0.4, 0.6) + 0.1 * height * np.sin(t_idx / 4.0)

    frames = np.empty((num_frames, height, width, 3), np.float32)
    truth = np.empty_like(frames)
    masks = np.zeros((num_frames, height, width), bool)
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * mask_margin + 1,) * 2) if mask_margin > 0 else None
    for t in range(num_frames):
        shift = np.float32([[1, 0, x0 + pan_x[t]], [0, 1, y0 + pan_y[t]]])
        bg = cv2.warpAffine(plane, shift, (width, height), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REFLECT)
        bg = np.clip(bg, 0, 1)
        truth[t] = bg
        # Soft-edged silhouette; its footprint (alpha > 0) grown by the margin is the mask.
        alpha = np.zeros((height, width), np.float32)
        centre = (int(round(path_x[t] * 16)), int(round(path_y[t] * 16)))
        axes = (int(occ_w / 2 * 16), int(occ_h / 2 * 16))
        cv2.ellipse(alpha, centre, axes, float(10 * np.sin(t / 6.0)), 0, 360, 1.0, -1, cv2.LINE_AA, shift=4)
        tex = cv2.resize(occ_tex, (2 * axes[0] // 16 + 1, 2 * axes[1] // 16 + 1))
        layer = np.zeros_like(bg)
        ty, tx = int(path_y[t]) - tex.shape[0] // 2, int(path_x[t]) - tex.shape[1] // 2
        ys0, xs0 = max(0, ty), max(0, tx)
        ys1, xs1 = min(height, ty + tex.shape[0]), min(width, tx + tex.shape[1])
        if ys1 > ys0 and xs1 > xs0:
            layer[ys0:ys1, xs0:xs1] = tex[ys0 - ty:ys1 - ty, xs0 - tx:xs1 - tx]
        hole = alpha > 0
        if grow is not None:
            hole = cv2.dilate(hole.astype(np.uint8), grow) > 0
        masks[t] = hole
        a = alpha[..., None]
        frame = bg * (1 - a) + layer * a
        frame[~hole] = bg[~hole]  # outside the mask the input is the truth, exactly
        frames[t] = frame
    return SyntheticClip(frames=torch.from_numpy(frames), masks=torch.from_numpy(masks),
                         truth=torch.from_numpy(truth), fps=24.0)
