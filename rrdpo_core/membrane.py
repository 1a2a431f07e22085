"""Smooth membrane fill: the harmonic interpolation of known values into unknown ones.

A base module (NumPy/OpenCV only), so both the flow prior and the blender use it without one
depending on the other. Used to hide a hole from the optical flow, to fill flow where no motion can be measured, to carry
the colour mismatch at a hole's border into the hole (colour matching) and as the spatial fill of
never-seen pixels.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["harmonic_fill", "membrane_window", "window_around"]

_CROSS = np.array([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]], np.float32)


def membrane_window(unknown: np.ndarray) -> tuple[int, int, int, int]:
    """The window ``(y0, y1, x0, x1)`` the membrane is solved in: the holes and a margin as wide as them.

    The coarse pyramid levels need known pixels around the holes; farther pixels hardly matter.
    """
    ys, xs = np.nonzero(unknown)
    return window_around(int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1, unknown.shape)


def window_around(y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """:func:`membrane_window` of holes whose bounding box is ``[y0, y1) x [x0, x1)`` in a frame of ``shape``."""
    h, w = shape[:2]
    my, mx = max(8, (y1 - y0) // 2), max(8, (x1 - x0) // 2)
    return max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)


def harmonic_fill(values: np.ndarray, unknown: np.ndarray, smooth_iterations: int = 6) -> np.ndarray:
    """Fill ``values`` where ``unknown`` with a smooth membrane from the known values around.

    A push-pull pyramid (weighted averages down, coarse-to-fine fill up) gives every unknown
    pixel a smooth interpolation of the known ones in O(pixels); a few Jacobi steps of the
    Laplace equation then take the blockiness out. Known values are returned unchanged. With no
    known value at all the result is zero.

    Args:
        values: ``(H, W)`` or ``(H, W, C)`` float array.
        unknown: ``(H, W)`` bool, True where the value must be filled.
        smooth_iterations: Laplace (Jacobi) steps on the unknown pixels after the push-pull.
    """
    vals = np.asarray(values, dtype=np.float32)
    squeeze = vals.ndim == 2
    v = vals[..., None] if squeeze else vals
    if not unknown.any():
        return vals.copy()
    if unknown.all():
        return np.zeros_like(vals)
    y0, y1, x0, x1 = membrane_window(unknown)
    hole = unknown[y0:y1, x0:x1]
    known = (~hole).astype(np.float32)
    crop = v[y0:y1, x0:x1]
    channels = crop.shape[-1]

    def as3(a: np.ndarray) -> np.ndarray:  # OpenCV drops a trailing axis of length 1
        return a.reshape(a.shape[0], a.shape[1], channels)

    level_v = [crop * known[..., None]]
    level_w = [known]
    while (level_w[-1] <= 0).any() and min(level_w[-1].shape) > 1:
        ph, pw = level_w[-1].shape
        size = ((pw + 1) // 2, (ph + 1) // 2)
        level_v.append(as3(cv2.resize(level_v[-1], size, interpolation=cv2.INTER_AREA)))
        level_w.append(cv2.resize(level_w[-1], size, interpolation=cv2.INTER_AREA))
    wc = level_w[-1][..., None]
    if (wc > 0).any():
        fallback = level_v[-1].sum(axis=(0, 1)) / wc.sum()
    else:
        fallback = (crop * known[..., None]).sum(axis=(0, 1)) / known.sum()
    filled = np.where(wc > 0, level_v[-1] / np.maximum(wc, 1e-12), fallback).astype(np.float32)
    for lv, lw in zip(reversed(level_v[:-1]), reversed(level_w[:-1])):
        up = as3(cv2.resize(filled, (lw.shape[1], lw.shape[0]), interpolation=cv2.INTER_LINEAR))
        wl = np.clip(lw, 0.0, 1.0)[..., None]
        filled = wl * (lv / np.maximum(lw[..., None], 1e-12)) + (1.0 - wl) * up
    filled = filled.astype(np.float32)
    # A masked copy (one pass) rather than a boolean gather and scatter per step, with the mask
    # spelled out per channel: a mask broadcast along the last axis is over 10x slower.
    hole3 = np.repeat(hole[..., None], channels, axis=-1)
    avg = np.empty_like(filled)
    for _ in range(int(smooth_iterations)):
        cv2.filter2D(filled, -1, _CROSS, dst=as3(avg), borderType=cv2.BORDER_REPLICATE)
        np.copyto(filled, avg, where=hole3)
    out = v.copy()
    out[y0:y1, x0:x1][hole] = filled[hole]
    return out[..., 0] if squeeze else out
