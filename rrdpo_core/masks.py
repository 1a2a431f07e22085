"""Video masks: DiffuEraser's mask preparation and the random-shape, random-motion generator.

``prepare_masks`` reproduces what released DiffuEraser does to a user's mask video before
inference (reference/diffueraser.md §1.4): binarise at ``> 0``, erode once with a 3x3 square,
dilate ``dilation_iter`` times with a 3x3 square (8 by default, as its CLI).

``random_mask_sequence`` is the classic STTN / FuseFormer / ProPainter training-mask algorithm
that DiffuEraser trains with (reference §3.5): a closed chain of cubic Bézier curves around a
jittered circle, pasted at a random place and either held still or moved with a randomly
perturbed velocity. Ours draws every random number from one seeded NumPy generator (so a seed
fixes the whole sequence) and rasterises with OpenCV instead of matplotlib.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import torch

__all__ = ["prepare_masks", "random_mask_sequence", "random_shape"]

_SQUARE3 = np.ones((3, 3), np.uint8)


def _as_numpy_stack(masks: torch.Tensor | np.ndarray | Sequence[np.ndarray], name: str) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        arr = masks.detach().float().cpu().numpy()
    elif isinstance(masks, np.ndarray):
        arr = masks
    else:
        arr = np.stack([np.asarray(m) for m in masks]) if len(masks) else np.zeros((0, 1, 1))
    if arr.ndim == 4 and arr.shape[-1] in (1, 3, 4):
        # (T, H, W, C) image-like masks: any channel above zero marks the hole.
        arr = arr.max(axis=-1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected (T, H, W) masks, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: no mask frames given; pass at least one (H, W) mask")
    if not np.isfinite(arr.astype(np.float32)).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def prepare_masks(
    masks: torch.Tensor | np.ndarray | Sequence[np.ndarray],
    dilation_iter: int = 8,
    size: tuple[int, int] | None = None,
    erode: bool = True,
) -> torch.Tensor:
    """DiffuEraser's mask preparation.

    Args:
        masks: ``(T, H, W)`` (or ``(T, H, W, C)``) masks, any numeric type; hole where ``> 0``.
        dilation_iter: number of 3x3 square dilations after the erosion (DiffuEraser CLI: 8).
        size: optional ``(height, width)`` to resize to first (nearest neighbour), e.g. the frame size.
        erode: apply the single 3x3 erosion that removes one-pixel specks (released behaviour).

    Returns:
        float32 tensor ``(T, H, W)`` with 1 = hole, 0 = keep.
    """
    if isinstance(dilation_iter, bool) or int(dilation_iter) != dilation_iter or dilation_iter < 0:
        raise ValueError(f"dilation_iter: must be a non-negative integer, got {dilation_iter!r}")
    arr = _as_numpy_stack(masks, "masks")
    out = np.empty((arr.shape[0], *(size if size else arr.shape[1:])), np.uint8)
    for i, m in enumerate(arr):
        binary = (m > 0).astype(np.uint8)
        if size is not None and binary.shape != tuple(size):
            binary = cv2.resize(binary, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)
        if erode:
            binary = cv2.erode(binary, _SQUARE3, iterations=1)
        if dilation_iter:
            binary = cv2.dilate(binary, _SQUARE3, iterations=int(dilation_iter))
        out[i] = binary
    return torch.from_numpy(out).float()


# --------------------------------------------------------------------------------------------
# Random shape with random motion


def _bezier_chain(vertices: np.ndarray, samples_per_curve: int = 24) -> np.ndarray:
    """Polyline through a chain of cubic Béziers: v0 (v1 v2 v3) (v4 v5 v6) ...

    ``vertices`` has ``3 n + 1`` rows; each curve starts at the previous end point.
    """
    t = np.linspace(0.0, 1.0, samples_per_curve, endpoint=False)[:, None]
    basis = np.concatenate([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], axis=1)
    curves = [basis @ vertices[i : i + 4] for i in range(0, len(vertices) - 1, 3)]
    return np.concatenate(curves + [vertices[-1:]], axis=0)


def random_shape(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One random blob cropped to its bounding box, uint8 0/1, at most ``height x width``.

    Vertices sit on a circle with radius jittered in ``[1 - ratio, 1 + ratio)``, joined by cubic
    Béziers, filled, and stretched to the requested region size (as the classic generator does
    through its figure canvas).
    """
    edge_num = int(rng.integers(6, 9))  # 6..8
    ratio = int(rng.integers(6, 9)) / 10.0  # 0.6, 0.7, 0.8
    points_num = 3 * edge_num + 1
    angles = np.linspace(0.0, 2.0 * np.pi, points_num)
    radius = rng.uniform(1.0 - ratio, 1.0 + ratio, size=points_num)
    verts = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius[:, None]
    verts[-1] = verts[0]
    poly = _bezier_chain(verts)
    # Map the 1.1x-padded bounding square of all coordinates onto the region canvas.
    lo, hi = 1.1 * verts.min(), 1.1 * verts.max()
    scale = np.array([width - 1, height - 1], np.float64) / (hi - lo)
    pts = np.round((poly - lo) * scale).astype(np.int32)
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [pts], 1)
    ys, xs = np.nonzero(canvas)
    if len(ys) == 0:  # degenerate draw: fall back to a filled ellipse
        cv2.ellipse(canvas, (width // 2, height // 2), (max(1, width // 3), max(1, height // 3)), 0, 0, 360, 1, -1)
        ys, xs = np.nonzero(canvas)
    return canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def random_mask_sequence(
    num_frames: int,
    height: int = 240,
    width: int = 432,
    seed: int | None = 0,
    *,
    static_prob: float = 0.5,
    max_speed: float = 3.0,
    accel_sigma: tuple[float, float] = (1.5, 0.25),
) -> torch.Tensor:
    """A random-shape, random-motion mask sequence, deterministic for a given ``seed``.

    Args:
        num_frames: number of frames ``T`` (>= 1).
        height, width: frame size.
        seed: seed of the NumPy generator that draws every random number; ``None`` is random.
        static_prob: probability that the shape stays still for the whole clip (classic: 0.5).
        max_speed: initial speed is drawn from ``(1, max_speed]`` pixels per frame (the classic
            generator's ``uniform(3)`` call, whose low > high, yields exactly this range).
        accel_sigma: std-dev of the per-frame Gaussian perturbation of (speed, angle).

    Returns:
        float32 tensor ``(T, H, W)`` with 1 = hole.
    """
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames: must be a positive integer, got {num_frames!r}")
    if height < 3 or width < 3:
        raise ValueError(f"height/width: the frame must be at least 3x3, got {height}x{width}")
    if not 0.0 <= static_prob <= 1.0:
        raise ValueError(f"static_prob: must lie in [0, 1], got {static_prob}")
    rng = np.random.default_rng(seed)

    region_h = int(rng.integers(height // 3, height))  # inclusive of height - 1
    region_w = int(rng.integers(width // 3, width))
    region = random_shape(rng, region_h, region_w)
    rh, rw = region.shape
    max_y, max_x = height - rh, width - rw
    y = int(rng.integers(0, max_y + 1))
    x = int(rng.integers(0, max_x + 1))
    speed = float(rng.uniform(1.0, max_speed)) if max_speed > 1.0 else float(max_speed)
    angle = float(rng.uniform(0.0, 2.0 * np.pi))
    moving = rng.uniform() >= static_prob

    masks = np.zeros((int(num_frames), height, width), np.uint8)
    masks[0, y : y + rh, x : x + rw] = region
    for t in range(1, int(num_frames)):
        if moving:
            # Truncation toward zero, as the classic generator: sub-pixel speeds do not move.
            y += int(speed * math.sin(angle))
            x += int(speed * math.cos(angle))
            speed += float(rng.normal(0.0, accel_sigma[0]))
            angle += float(rng.normal(0.0, accel_sigma[1]))
            if not (0 <= y <= max_y and 0 <= x <= max_x):
                speed = abs(float(rng.normal(0.0, accel_sigma[0])))
                angle = float(rng.uniform(0.0, 2.0 * np.pi))
            y = min(max(y, 0), max_y)
            x = min(max(x, 0), max_x)
        masks[t, y : y + rh, x : x + rw] = region
    return torch.from_numpy(masks).float()
