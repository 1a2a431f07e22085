"""Source tracking: for every hole pixel, several frames (and positions) that saw its background.

One sweep per direction follows the completed flow from frame ``t`` into frame ``t - 1`` (or
``t + 1``) for *every* pixel and keeps, per pixel, a short list of ``slots`` sources - (frame,
x, y) where the point followed is visible - newest first:

* a pixel landing on frame ``t - 1`` inherits the list of the pixel it lands on (nearest pixel,
  positions shifted by the sub-pixel remainder; the flow is locally a translation over less than
  a pixel). Reading colours once at the end, rather than warping warped frames again and again,
  keeps propagated texture sharp however far it travels;
* a known pixel then puts itself at the head of its list: it is its own newest source;
* a step that leaves the frame or fails the forward-backward test (an occlusion) empties the list.

Why several sources, not the nearest one: the nearest frame that saw a location may show a
*moving object* there (a player crossing the background a hole hides now). Near the holes the
completed flow is the background's motion (the affine fit of the ring), so a list follows the
*background* from frame to frame; an object crossing it covers only some of the frames in the
list and a robust fusion (:mod:`.fusion`) outvotes it. For that the sources of a list must not be
consecutive frames, which an object covers alike: below the head, entries are kept at least
``gap`` frames apart (the head's predecessor is dropped while it is closer than ``gap`` to the
entry after it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from .motion import CONSISTENCY_ALPHA, CONSISTENCY_BETA, FlowField

__all__ = ["Candidates", "track_sources"]


@dataclass
class Candidates:
    """Sources of the target pixels of one frame in one direction, newest first.

    ``frame`` is ``(slots, N)`` int32 with -1 for an empty slot; ``x``, ``y`` ``(slots, N)``
    float32 positions in that frame.
    """

    frame: np.ndarray
    x: np.ndarray
    y: np.ndarray


def step_maps(step_flow: np.ndarray, back_flow: np.ndarray, gx: np.ndarray, gy: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landing positions of every pixel along ``step_flow`` and whether the step is trusted.

    Trusted: it stays in the frame and the reverse flow at the landing point comes back
    (forward-backward consistency, the occlusion test).
    """
    h, w = gx.shape
    fx, fy = step_flow[..., 0], step_flow[..., 1]
    qx = gx + fx
    qy = gy + fy
    back = cv2.remap(back_flow, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    bx, by = back[..., 0], back[..., 1]
    # Channel by channel: a reduction over a trailing axis of length 2 is several times slower.
    ex, ey = fx + bx, fy + by
    err = ex * ex + ey * ey
    bound = CONSISTENCY_ALPHA * (fx * fx + fy * fy + bx * bx + by * by) + CONSISTENCY_BETA
    inside = (qx >= -0.5) & (qx <= w - 0.5) & (qy >= -0.5) & (qy <= h - 0.5)
    return qx, qy, inside & (err <= bound)


def push_own(frame: np.ndarray, x: np.ndarray, y: np.ndarray, known: np.ndarray, t: int, gap: int,
             gx: np.ndarray, gy: np.ndarray) -> None:
    """Put the known pixels of frame ``t`` at the head of their lists (in place), entries ``gap`` apart.

    Where the current head is far enough from the entry below it, the list shifts down one slot
    (the last entry falls off); otherwise the head is replaced.
    """
    shift = known & (frame[0] >= 0) & ((frame[1] < 0) | (np.abs(frame[0] - frame[1]) >= gap))
    for a, own in ((frame, t), (x, gx), (y, gy)):
        for k in range(a.shape[0] - 1, 0, -1):  # bottom up, so each slot is read before it is overwritten
            np.copyto(a[k], a[k - 1], where=shift)
        np.copyto(a[0], own, where=known)


def track_sources(holes: np.ndarray, fwd: list[FlowField], bwd: list[FlowField],
                  targets: list[tuple[np.ndarray, np.ndarray]], *, forward: bool, slots: int, gap: int,
                  step: Callable[[], None] = lambda: None) -> list[Candidates]:
    """Sources of the ``targets`` pixels of every frame, in the past (``forward=True``) or the future.

    Args:
        holes: ``(T, H, W)`` bool.
        fwd, bwd: completed flows t -> t+1 and t+1 -> t.
        targets: per frame, ``(ys, xs)`` of the pixels whose sources are wanted.
        slots: sources kept per pixel (>= 2).
        gap: least frame distance between entries below the head.
    """
    length, height, width = holes.shape
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    # Frame indices are kept as float32 (exact up to 2**24) so that one OpenCV remap moves them.
    # The lists live in one (3 * slots, H, W) array - frames, then x, then y - so that one gather
    # moves them all.
    lists = np.zeros((3 * slots, height, width), np.float32)
    frame, x, y = lists[:slots], lists[slots:2 * slots], lists[2 * slots:]
    frame.fill(-1)
    gathered = np.empty_like(lists)
    result: list[Candidates] = [None] * length  # type: ignore[list-item]
    order = range(length) if forward else range(length - 1, -1, -1)
    for t in order:
        prev = t - 1 if forward else t + 1
        if 0 <= prev < length:
            step_field, back_field = (bwd[prev], fwd[prev]) if forward else (fwd[t], bwd[t])
            qx, qy, ok = step_maps(step_field.dense(), back_field.dense(), gx, gy)
            rx = np.clip(np.rint(qx), 0, width - 1)
            ry = np.clip(np.rint(qy), 0, height - 1)
            dx, dy = qx - rx, qy - ry
            # Inherit the list of the nearest pixel: one flat gather of every plane. The indices are
            # in range (clipped above): mode="clip" spares NumPy the buffered copy it makes of
            # ``out`` under the default mode="raise" (about 2x faster).
            flat = (ry.astype(np.int64) * width + rx.astype(np.int64)).ravel()
            lists.reshape(3 * slots, -1).take(flat, axis=1, out=gathered.reshape(3 * slots, -1), mode="clip")
            lists, gathered = gathered, lists
            frame, x, y = lists[:slots], lists[slots:2 * slots], lists[2 * slots:]
            x += dx
            y += dy
            np.copyto(frame, np.float32(-1), where=~ok[None])
        else:
            frame.fill(-1)
        push_own(frame, x, y, ~holes[t], t, gap, gx, gy)
        ys, xs = targets[t]
        picked = lists.reshape(3 * slots, -1).take(ys.astype(np.int64) * width + xs, axis=1)
        result[t] = Candidates(picked[:slots].astype(np.int32), picked[slots:2 * slots], picked[2 * slots:])
        step()
    return result
