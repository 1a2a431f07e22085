"""Sources for the part of a hole that a moving object continues into (video completion).

The background sources (:mod:`.sources`) follow the background's motion and reject whatever moves
on its own, which keeps removed objects from coming back as ghosts. But a hole may also cut through
an object that stays partly visible on the hole's ring (a square over a walking person): the truth
inside continues that object. :func:`.motion._object_layers` finds such objects - a second,
coherent motion on the ring, unlike the background's - and labels the hole pixels next to them.

For those pixels (and the ring pixels beside them) this module follows the *object's* motion up
to ``reach`` frames into the past and the future - the ring's model to start with and through
holes, the raw flow of a landing once the object is seen there - and takes the first ``slots``
landings on known pixels in each direction as sources. A source counts only where its own raw
motion agrees with the step that led there and not with the background's (the motion check of
:func:`.motion.motion_agreement` with the object in place of the background): where the hole pixel
is not on the object (the object ends inside the hole), the track lands beside the object, on
content that moves with the background, and is rejected. :func:`object_pixels` then decides which
hole pixels show the object: where past and future sources agree in colour, connected to a pixel
of the hole's border that the object explains and the background does not. There the object's
fused colour replaces the background's (the object is in front of the background it crosses).

An object that deforms (a walking person, a swung arm) seldom gives agreeing sources on both
sides in time, so most of its pixels keep the background's colour, which is wrong by the whole
contrast between object and background. :func:`uncertain_pixels` marks the labelled pixels left
to the background whose sources on both sides in time show mostly something other than the
background, and that lie nearer to where something the background does not explain crosses the
hole's border than to where the background does: the object may continue into them or not.
They get the mean of the background's colour (or of the spatial fill, where no frame saw them)
and Telea's fill from the border (:func:`telea_at`), which carries the object's colours in from
where it is seen.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .fusion import RING_OUTLIER, telea_fill
from .motion import MOTION_MIN_AGREEMENT, FlowField, _distance_to, affine_motion, bilinear, motion_sigma

__all__ = ["ObjectSources", "object_sources", "object_pixels", "uncertain_pixels", "telea_at"]


@dataclass
class ObjectSources:
    """Object-layer sources of some hole pixels of one frame.

    ``index`` ``(M,)``: which of the frame's hole pixels (positions in its target list) have them;
    ``frame`` ``(2 * slots, M)`` int32 (-1: none), ``x``, ``y`` float32 positions, ``agree`` the
    motion check's weight in [0, 1]: past sources first, then future ones.
    """

    index: np.ndarray
    frame: np.ndarray
    x: np.ndarray
    y: np.ndarray
    agree: np.ndarray


def _labels_at(field: FlowField | None, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The object label (-1: none) of the field's layers at full-resolution pixels ``(xs, ys)``."""
    if field is None or field.objects is None:
        return np.full(len(xs), -1, np.int16)
    h, w = field.objects.label.shape
    wx = np.clip(np.rint((xs + 0.5) / field.sx - 0.5), 0, w - 1).astype(np.int64)
    wy = np.clip(np.rint((ys + 0.5) / field.sy - 0.5), 0, h - 1).astype(np.int64)
    return field.objects.label[wy, wx]


def _model_step(field: FlowField, model: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The displacement (full-resolution pixels) the object's ``model`` (working resolution) gives ``(x, y)``."""
    dx, dy = affine_motion(model, (x + 0.5) / field.sx - 0.5, (y + 0.5) / field.sy - 0.5)
    return (dx * field.sx).astype(np.float32), (dy * field.sy).astype(np.float32)


def _track(holes: np.ndarray, field: FlowField, labels: np.ndarray, check: np.ndarray, t: int, xs: np.ndarray,
           ys: np.ndarray, direction: int, slots: int, reach: int, other: FlowField | None = None,
           other_labels: np.ndarray | None = None, field_of=None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sources along each labelled pixel's object motion, ``(slots, M)`` each: frame, x, y, agreement.

    The first step is the object's model. A landing on a known pixel whose own motion (raw flow,
    away from frame ``t``) agrees with the step that led there, and not with the background's, is
    a source, and the track goes on along that motion (the object's real one, which may change
    from frame to frame); a landing in a hole beside which an object was found in that frame
    (``field_of(s)``: the flow field away from frame ``t``) goes on along that object's model;
    elsewhere the track goes on at the same velocity. A track ends when it leaves the frame or
    has ``slots`` sources.
    """
    length, height, width = holes.shape
    m = len(xs)
    frame = np.full((slots, m), -1, np.int32)
    sx = np.zeros((slots, m), np.float32)
    sy = np.zeros((slots, m), np.float32)
    agree = np.zeros((slots, m), np.float32)
    steps = min(reach, t if direction < 0 else length - 1 - t)
    dx = np.zeros(m, np.float32)
    dy = np.zeros(m, np.float32)
    px, py = xs.astype(np.float32), ys.astype(np.float32)
    alive = labels >= 0
    for j in np.unique(labels[alive]):
        sel = labels == j
        dx[sel], dy[sel] = _model_step(field, field.objects.models[int(j)], px[sel], py[sel])
    if other is not None and other_labels is not None:
        # Labelled in the other direction's field only: that object's motion reversed (one frame
        # of constant velocity).
        rev = ~alive & (other_labels >= 0)
        for j in np.unique(other_labels[rev]):
            sel = rev & (other_labels == j)
            ox, oy = _model_step(other, other.objects.models[int(j)], px[sel], py[sel])
            dx[sel], dy[sel] = -ox, -oy
        alive |= rev
    if steps <= 0 or not alive.any():
        return frame, sx, sy, agree
    count = np.zeros(m, np.int32)
    since = np.ones(m, np.float32)
    _, h, w, _ = check.shape
    fx, fy = width / w, height / h
    for k in range(1, steps + 1):
        s = t + direction * k
        px, py = px + dx, py + dy
        rx, ry = np.rint(px).astype(np.int64), np.rint(py).astype(np.int64)
        alive &= (rx >= 0) & (rx < width) & (ry >= 0) & (ry < height) & (count < slots)
        idx = np.flatnonzero(alive)
        if len(idx) == 0:
            break
        inhole = holes[s, ry[idx], rx[idx]]
        nxt = field_of(s) if field_of is not None else None
        if nxt is not None and nxt.objects is not None and inhole.any():
            # In a hole of frame s that an object straddles: that object's motion there.
            hid = idx[inhole]
            lab = _labels_at(nxt, px[hid], py[hid])
            for j in np.unique(lab[lab >= 0]):
                sel = hid[lab == j]
                dx[sel], dy[sel] = _model_step(nxt, nxt.objects.models[int(j)], px[sel], py[sel])
                since[sel] = 0
        idx = idx[~inhole]
        if len(idx) == 0:
            since += 1
            continue
        # Motion check: the landing's own motion (away from frame t: the check stack's raw flow,
        # its first two channels plus the last two) against the step that led there; at the clip's
        # end the stack holds the opposite direction, hence the sign.
        v = bilinear(check[s], (px[idx] + 0.5) / fx - 0.5, (py[idx] + 0.5) / fy - 0.5)
        sign = -1.0 if s in (0, length - 1) else 1.0
        ux, uy = sign * (v[:, 0] + v[:, 2]) * fx, sign * (v[:, 1] + v[:, 3]) * fy
        bx, by = sign * v[:, 2] * fx, sign * v[:, 3] * fy
        ex, ey = ux - dx[idx], uy - dy[idx]
        # The velocity was last measured ``since`` frames ago: its uncertainty grows with that
        # (the object may accelerate), so does the tolerance.
        sigma = motion_sigma(dx[idx], dy[idx]) * since[idx]
        a = np.exp(-(ex * ex + ey * ey) / (2 * sigma * sigma))
        # ... and unlike the background's there: a pixel both could explain is no evidence of the object.
        sb = motion_sigma(bx, by)
        own = (ux - bx) ** 2 + (uy - by) ** 2 > (2 * sb) ** 2
        good = (a >= MOTION_MIN_AGREEMENT) & own
        idx, a, ux, uy = idx[good], a[good], ux[good], uy[good]
        slot = count[idx]
        frame[slot, idx] = s
        sx[slot, idx] = px[idx]
        sy[slot, idx] = py[idx]
        agree[slot, idx] = a
        count[idx] += 1
        dx[idx], dy[idx] = ux, uy
        since += 1
        since[idx] = 1
    return frame, sx, sy, agree


def object_sources(holes: np.ndarray, fwd: list[FlowField], bwd: list[FlowField], checks: tuple[np.ndarray, np.ndarray],
                   t: int, ys: np.ndarray, xs: np.ndarray, slots: int, reach: int) -> ObjectSources | None:
    """Object-layer sources of the hole pixels ``(ys, xs)`` of frame ``t``; None where no object straddles a hole.

    ``checks`` are :func:`.motion.motion_check_stack` towards the past and towards the future.
    """
    past_field = bwd[t - 1] if t >= 1 else None  # t -> t - 1
    future_field = fwd[t] if t < len(fwd) else None  # t -> t + 1
    lab_p = _labels_at(past_field, xs, ys)
    lab_f = _labels_at(future_field, xs, ys)
    index = np.flatnonzero((lab_p >= 0) | (lab_f >= 0))
    if len(index) == 0:
        return None
    zx, zy = xs[index], ys[index]
    lab_p, lab_f = lab_p[index], lab_f[index]
    parts = []
    def field_of(s: int, direction: int) -> FlowField | None:
        """The flow away from frame ``t`` out of frame ``s`` (to ``s - 1`` towards the past, else ``s + 1``)."""
        if direction < 0:
            return bwd[s - 1] if s >= 1 else None
        return fwd[s] if s < len(fwd) else None

    for field, other, labels, other_labels, check, direction in (
            (past_field, future_field, lab_p, lab_f, checks[0], -1),
            (future_field, past_field, lab_f, lab_p, checks[1], 1)):
        if field is None:
            empty = np.full((slots, len(index)), -1, np.int32)
            zeros = np.zeros((slots, len(index)), np.float32)
            parts.append((empty, zeros, zeros, zeros))
        else:
            parts.append(_track(holes, field, labels, check, t, zx, zy, direction, slots, reach,
                                other, other_labels, lambda s, d=direction: field_of(s, d)))
    (fp, xp, yp, ap), (ff, xf, yf, af) = parts
    return ObjectSources(index, np.concatenate([fp, ff]), np.concatenate([xp, xf]), np.concatenate([yp, yf]),
                         np.concatenate([ap, af]))


def object_pixels(colours: np.ndarray, weights: np.ndarray, fused: np.ndarray, own: np.ndarray, background: np.ndarray,
                  background_ok: np.ndarray, ring: np.ndarray, ys: np.ndarray, xs: np.ndarray, hole: np.ndarray,
                  slots: int, tolerance: float) -> np.ndarray:
    """Which labelled pixels the object fills, ``(M,)`` bool.

    Args:
        colours, weights: the object sources' colours ``(2 * slots, M, 3)`` and weights (past first).
        fused: their fusion ``(M, 3)`` (:func:`.fusion.fuse_candidates`).
        own: the pixels' own colours ``(M, 3)`` (meaningful for ring pixels, which are known).
        background, background_ok: the background sources' fusion at the pixels and whether it had any.
        ring: ``(M,)`` True for known ring pixels, False for hole pixels.
        ys, xs: the pixels' positions in the frame.
        hole: the frame's hole mask ``(H, W)`` bool.

    A pixel is the object's where sources on both sides in time agree with the fused colour: a
    pixel beside the object whose track drifts onto it (the model's velocity a little off) does
    so on one side only, the drift going the other way on the other side. And the object must be
    seen at the hole's border: only hole pixels connected (8-neighbours, through such pixels) to
    a ring pixel on the hole's border (next to a hole pixel) that the object's sources explain (its
    own colour within ``tolerance`` of their fusion) and the background's do not (beyond
    :data:`.fusion.RING_OUTLIER`, the colour matching's outlier bound) count. When an object is
    removed its mask covers it with a margin: the hole's border is background, which the
    background explains. When a hole cuts through an object, the object is on its border.
    """
    agreeing = (np.abs(colours - fused[None]).mean(-1) <= tolerance) & (weights > 0)
    on = agreeing[:slots].any(0) & agreeing[slots:].any(0)
    (y0, y1, x0, x1), ly, lx, border = _border(ring, ys, xs, hole)
    seen = on & border & background_ok & (np.abs(own - fused).mean(-1) <= tolerance) & \
        (np.abs(own - background).mean(-1) > RING_OUTLIER)
    if not seen.any():
        return np.zeros(len(on), bool)
    grid = np.zeros((y1 - y0, x1 - x0), np.uint8)
    grid[ly[on], lx[on]] = 1
    _, labels = cv2.connectedComponents(grid, connectivity=8)
    keep = np.zeros(labels.max() + 1, bool)
    keep[labels[ly[seen], lx[seen]]] = True
    keep[0] = False
    return on & ~ring & keep[labels[ly, lx]]


def _border(ring: np.ndarray, ys: np.ndarray, xs: np.ndarray, hole: np.ndarray
            ) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray, np.ndarray]:
    """The box ``(y0, y1, x0, x1)`` around the pixels (with a one-pixel margin), their positions in
    it, and which of them lie on the hole's own border (ring pixels with a hole pixel among their 8
    neighbours)."""
    y0, x0 = max(0, int(ys.min()) - 1), max(0, int(xs.min()) - 1)
    y1, x1 = min(hole.shape[0], int(ys.max()) + 2), min(hole.shape[1], int(xs.max()) + 2)
    ly, lx = ys - y0, xs - x0
    near = cv2.dilate(hole[y0:y1, x0:x1].astype(np.uint8), np.ones((3, 3), np.uint8))
    return (y0, y1, x0, x1), ly, lx, ring & (near[ly, lx] > 0)


def uncertain_pixels(colours: np.ndarray, weights: np.ndarray, own: np.ndarray, background: np.ndarray,
                     background_ok: np.ndarray, ring: np.ndarray, ys: np.ndarray, xs: np.ndarray, hole: np.ndarray,
                     on: np.ndarray, slots: int) -> np.ndarray:
    """Hole pixels that the object layer leaves to the background but that may show the object, ``(M,)`` bool.

    Arguments as :func:`object_pixels` (``on`` is its result). Such a pixel lies on the object's
    path in both directions of time: in the past and in the future, most of its sources along the
    object's motion show something the background's fusion at the pixel does not explain (beyond
    :data:`.fusion.RING_OUTLIER`) - but the two sides did not agree on a colour (the object deforms,
    or its texture is misaligned). A pixel ahead of an object that has not reached it yet, or behind
    one that has left, finds mostly background on one side (a source at the object's very edge may
    still show some of it: hence most, not any); an object that never leaves the place the hole
    covers (standing still while the camera pans) is never found. And the
    pixel lies nearer to a pixel of the hole's border that the background does not explain (the
    object, seen there) than to one it does: in object removal the border is background, which the
    background explains, and hardly any pixel is marked. Whether the object reaches into the pixel
    is then as likely as not: the caller fills it with the mean of what it would get otherwise (the
    background's colour, or the spatial fill where no frame saw the background) and
    :func:`telea_at`, which carries the object's colours in from the border. Two estimates with
    independent errors, averaged, err less than either where neither is known to be right.
    """
    (y0, y1, x0, x1), ly, lx, border = _border(ring, ys, xs, hole)
    known = border & background_ok
    mismatch = np.abs(own - background).mean(-1) > RING_OUTLIER
    shown, explained = known & mismatch, known & ~mismatch
    # Per side in time: more sources show something the background does not explain (the object,
    # seen there) than show the background. Where no frame saw the background, every source shows
    # something else: what hid the background in all those frames.
    other = (weights > 0) & ((np.abs(colours - background[None]).mean(-1) > RING_OUTLIER) | ~background_ok[None])
    lead = other.astype(np.int32) - ((weights > 0) & ~other)
    candidates = ~ring & ~on & (lead[:slots].sum(0) > 0) & (lead[slots:].sum(0) > 0)
    if not shown.any() or not candidates.any():
        return np.zeros(len(ys), bool)
    d_object = _distance_to(ly[shown], lx[shown], (y1 - y0, x1 - x0))
    d_background = _distance_to(ly[explained], lx[explained], (y1 - y0, x1 - x0))
    return candidates & (d_object[ly, lx] < d_background[ly, lx])


def telea_at(frame: np.ndarray, hole: np.ndarray, ys: np.ndarray, xs: np.ndarray, radius: int) -> np.ndarray:
    """Telea's fill (:func:`.fusion.telea_fill`) of the hole pixels ``(ys, xs)`` of ``frame``, ``(K, 3)``.

    Only the groups of hole parts that hold the pixels are filled, each in its own box, so the cost
    is theirs, not the frame's (a grid of squares: a few squares). The hole's pixels are zeroed
    first: ``cv2.inpaint`` reads what lies under its mask, and what is being removed must not
    steer the fill.
    """
    zeroed = np.where(hole[..., None], np.float32(0.0), frame)
    return telea_fill(zeroed, hole, radius, needed=(ys, xs))[ys, xs]
