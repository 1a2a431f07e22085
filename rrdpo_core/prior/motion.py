"""Optical flow between neighbouring frames, completed inside the holes (OpenCV DIS, no weights).

DIS optical flow in both directions on grayscale frames shrunk by ``downscale``, with each hole
first hidden under a smooth membrane so the flow does not follow the object being removed. DIS is
unreliable inside a hole and, for about a patch width, around it (the filled hole looks static to
it), so inside the holes of both frames of a pair, grown by ``dilation``, the flow is replaced by
the affine motion fitted robustly (RANSAC) to the flow on a ring around each hole, as wide as half
the hole: background motion near a hole is close to affine (pan, zoom, slow rotation), and the
robust fit ignores foreground objects crossing the ring.

The torch path of the prior uses these flows too: DIS runs on the CPU in both paths.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ..membrane import harmonic_fill
from .parallel import ordered_map

__all__ = ["DIS_PRESETS", "FlowField", "ObjectLayers", "completed_flows", "consistent", "bilinear", "working_size",
           "motion_check_stack",
           "MOTION_SIGMA_PX", "MOTION_SIGMA_REL", "motion_sigma", "affine_motion",
           "MOTION_MIN_AGREEMENT", "motion_agreement", "bilinear_frames", "sample_by_frame", "scatter_rows",
           "exposure_curve"]

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

# Forward-backward consistency (Sundaram et al. 2010): a step is trusted when
# |f + b|^2 <= alpha (|f|^2 + |b|^2) + beta, in full-resolution pixels.
CONSISTENCY_ALPHA = 0.01
CONSISTENCY_BETA = 0.5
# Motion check of a source: its own (raw DIS) motion against the background motion there (the
# completed flow), with a tolerance of 1 px plus 10 % of the motion - DIS's sub-pixel accuracy on
# texture and the same relative slack as the forward-backward test (sqrt(alpha) = 0.1).
MOTION_SIGMA_PX = 1.0
MOTION_SIGMA_REL = 0.1
# A source whose motion is more than 2 sigma off the background's is not used at all.
MOTION_MIN_AGREEMENT = math.exp(-2.0)
_MIN_RING_POINTS = 16
# cv2.remap takes maps of less than this many pixels per side (SHRT_MAX).
_REMAP_MAX_SIDE = 32767
# Pixels darker or brighter than this are left out of the exposure estimate (clipped, noisy).
_EXPOSURE_LO = 0.04
_EXPOSURE_HI = 0.96
_MAX_RING_POINTS = 400
_MIN_RING_WIDTH = 8
# RANSAC draws of an object's motion on a hole's ring: log(0.01) / log(1 - 0.3 ** 3) = 168, so an
# object that is 30 % of the ring's outliers is found with 99 % confidence.
_OBJECT_RANSAC_ITERS = 170
# Pixels the dominant (camera) motion of a frame is fitted to.
_DOMINANT_POINTS = 2000


def working_size(height: int, width: int, downscale: float) -> tuple[int, int]:
    return max(8, int(round(height / downscale))), max(8, int(round(width / downscale)))


def bilinear(field_: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``field_`` (H, W, C) at float positions (border clamped) -> (N, C), with OpenCV.

    ``cv2.remap`` wants a 2-D map under 32767 on each side: up to that many points go in as one
    row (no copy), more in rows of 1024. Its bilinear weights are quantised to 1/32 pixel, plenty
    for flow and for the fill; each point is interpolated on its own, so the layout does not
    change the result.
    """
    n = len(x)
    channels = field_.shape[2] if field_.ndim == 3 else 1
    if n == 0:
        return np.zeros((0, channels), np.float32)
    if n < _REMAP_MAX_SIDE:
        mx = np.ascontiguousarray(x, dtype=np.float32).reshape(1, n)
        my = np.ascontiguousarray(y, dtype=np.float32).reshape(1, n)
        out = cv2.remap(field_, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(n, channels)
    cols = 1024
    rows = -(-n // cols)
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    mx[:n] = x
    my[:n] = y
    mx, my = mx.reshape(rows, cols), my.reshape(rows, cols)
    out = cv2.remap(field_, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * cols, channels)[:n]


def sample_by_frame(image: Callable[[int], np.ndarray], f: np.ndarray, x: np.ndarray, y: np.ndarray,
                    channels: int) -> np.ndarray:
    """Bilinear samples ``(N, channels)`` of ``image(s)`` at ``(x, y)`` for the frames ``f``, one frame at a time.

    Points are sorted by frame once (a stable radix sort on 16-bit frame numbers), each frame's run
    is read with one :func:`bilinear` (``cv2.remap``) into a sorted buffer, and the rows go back to
    the points' order with one scatter: several times faster than gathering four corners from a
    frame stack with NumPy indexing, and than selecting each frame's points from the whole list.
    """
    n = len(f)
    if n == 0:
        return np.zeros((0, channels), np.float32)
    order = np.argsort(f.astype(np.int16) if f.max() < 2**15 else f, kind="stable")
    fs = f.take(order)
    starts = np.flatnonzero(fs[1:] != fs[:-1]) + 1
    bounds = [0] + starts.tolist() + [n]
    xs = x.take(order).astype(np.float32, copy=False)
    ys = y.take(order).astype(np.float32, copy=False)
    ordered = np.empty((n, channels), np.float32)
    for a, b in zip(bounds[:-1], bounds[1:]):
        ordered[a:b] = bilinear(image(int(fs[a])), xs[a:b], ys[a:b])
    return unsort_rows(ordered, order)


def unsort_rows(rows: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``out`` with ``out[order] = rows`` (``order`` a permutation), rows moved whole (:func:`scatter_rows`)."""
    out = np.empty_like(rows)
    scatter_rows(out, order, rows)
    return out


def scatter_rows(target: np.ndarray, index: np.ndarray, rows: np.ndarray) -> None:
    """``target[index] = rows`` for float32 rows of 1 to 4 values (the last axis), each row moved as one item.

    A fancy-index scatter of short rows is several times slower than one of single items; the rows
    are viewed as one wider item each (their bytes are moved, not interpreted: the same result).
    """
    c = target.shape[-1]
    if target.dtype != np.float32 or rows.dtype != np.float32 or not 1 <= c <= 4 or not target.flags.c_contiguous:
        target[index] = rows
        return
    item = np.dtype((np.void, 4 * c))
    target.view(item).reshape(target.shape[:-1])[index] = np.ascontiguousarray(rows).view(item).reshape(rows.shape[:-1])


class FlowField:
    """A low-resolution flow field read at full-resolution positions, in full-resolution pixels."""

    def __init__(self, flow: np.ndarray, full_hw: tuple[int, int], raw: np.ndarray | None = None,
                 background: np.ndarray | None = None, objects: "ObjectLayers | None" = None):
        self.flow = flow
        # Objects straddling a hole's border (:func:`_object_layers`): their motion models and the
        # hole pixels next to them; None: no hole has one.
        self.objects = objects
        self.raw = flow if raw is None else raw  # DIS before completion (for the motion check)
        # The background's motion (for the motion check): the completed flow in the holes, the
        # frame's dominant motion elsewhere; None: the completed flow everywhere.
        self.background = background
        self.full_hw = full_hw
        h, w = flow.shape[:2]
        self.sx = full_hw[1] / w
        self.sy = full_hw[0] / h

    def dense(self) -> np.ndarray:
        """The flow at every full-resolution pixel, ``(H, W, 2)`` float32, in full-resolution pixels."""
        h, w = self.full_hw
        if self.flow.shape[:2] == (h, w):
            return self.flow
        out = cv2.resize(self.flow, (w, h), interpolation=cv2.INTER_LINEAR)
        out[..., 0] *= self.sx
        out[..., 1] *= self.sy
        return out

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        f = bilinear(self.flow, (x + 0.5) / self.sx - 0.5, (y + 0.5) / self.sy - 0.5)
        f[:, 0] *= self.sx
        f[:, 1] *= self.sy
        return f


def consistent(step: np.ndarray, back: np.ndarray) -> np.ndarray:
    sx, sy, bx, by = step[:, 0], step[:, 1], back[:, 0], back[:, 1]
    err = (sx + bx) ** 2 + (sy + by) ** 2
    bound = CONSISTENCY_ALPHA * (sx * sx + sy * sy + bx * bx + by * by) + CONSISTENCY_BETA
    return err <= bound


def completed_flows(video: np.ndarray, holes: np.ndarray, downscale: float, preset: str, dilation: int,
                    step: Callable[[], None] = lambda: None, workers: int = 1
                    ) -> tuple[list[FlowField], list[FlowField]]:
    """Forward (t -> t+1) and backward (t+1 -> t) flows, completed inside the holes.

    ``dilation`` is in working-resolution pixels; ``step()`` is called after each frame pair.
    Frame pairs are independent and run on ``workers`` threads (each with its own DIS object,
    which keeps state between calls and is not shared).
    """
    length, height, width = holes.shape
    fh, fw = working_size(height, width, downscale)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation + 1, 2 * dilation + 1)) if dilation else None

    def prepare(t: int) -> tuple[np.ndarray, np.ndarray]:
        hole = holes[t]
        gray = cv2.cvtColor(video[t], cv2.COLOR_RGB2GRAY)
        small_hole = cv2.resize(hole.astype(np.float32), (fw, fh), interpolation=cv2.INTER_AREA) > 0
        small = cv2.resize(gray, (fw, fh), interpolation=cv2.INTER_AREA) if (fh, fw) != (height, width) else gray
        # The object inside the hole must not steer the flow: hide it under a smooth membrane.
        small = harmonic_fill(small, small_hole, smooth_iterations=2)
        region = cv2.dilate(small_hole.astype(np.uint8), kernel) > 0 if kernel is not None else small_hole
        return np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8), region

    grays, regions = zip(*ordered_map(prepare, range(length), workers))
    grid = np.mgrid[0:fh, 0:fw].astype(np.float32)  # (y, x) of every working pixel, read by every pair
    scale = 0.5 * (width / fw + height / fh)  # full-resolution pixels per working pixel
    local = threading.local()

    def pair(t: int) -> tuple[FlowField, FlowField]:
        dis = getattr(local, "dis", None)
        if dis is None:
            dis = local.dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
            # Down to the working resolution itself: the presets stop one to two octaves above it,
            # which costs tracks their sub-pixel accuracy on fine texture.
            dis.setFinestScale(0)
        region = regions[t] | regions[t + 1]
        f = dis.calc(grays[t], grays[t + 1], None)
        b = dis.calc(grays[t + 1], grays[t], None)
        raw_f, raw_b = f, b
        if region.all():
            f = np.zeros_like(f)  # nothing to measure motion on
            b = np.zeros_like(b)
        elif region.any():
            # Fixed holes give every pair the same region: its holes and rings are reused
            # (read only) while it stays the same.
            cached = getattr(local, "geometry", None)
            if cached is not None and np.array_equal(cached[0], region):
                geometry = cached[1]
            else:
                geometry = _holes_and_rings(region)
                local.geometry = (region, geometry)
            # Each direction gets its own fit: taking the inverse of the forward fit for the backward
            # flow halves the RANSAC work but scored 0.4 dB lower hole PSNR on
            # diffueraser-example1 squares (30 frames), so it is not done.
            f, models_f = _complete_flow(f, region, geometry)
            b, models_b = _complete_flow(b, region, geometry)
            objects_f = _object_layers(raw_f, region, geometry, models_f, scale)
            objects_b = _object_layers(raw_b, region, geometry, models_b, scale)
            return (FlowField(f, (height, width), raw_f, _background_motion(raw_f, f, region, grid), objects_f),
                    FlowField(b, (height, width), raw_b, _background_motion(raw_b, b, region, grid), objects_b))
        return (FlowField(f, (height, width), raw_f, _background_motion(raw_f, f, region, grid)),
                FlowField(b, (height, width), raw_b, _background_motion(raw_b, b, region, grid)))

    fwd, bwd = [], []
    for f, b in ordered_map(pair, range(length - 1), workers):
        fwd.append(f)
        bwd.append(b)
        step()
    return fwd, bwd


def _background_motion(raw: np.ndarray, completed: np.ndarray, region: np.ndarray, grid: np.ndarray
                       ) -> np.ndarray | None:
    """The background's motion everywhere: the completed flow inside ``region``, the frame's dominant motion outside.

    The dominant motion is an affine fit (RANSAC) to the raw flow at up to about
    ``_DOMINANT_POINTS`` pixels outside the region: the camera's motion, which objects moving on
    their own do not follow. None when it cannot be fitted (then only the holes are checked).
    ``grid`` is ``np.mgrid`` over the flow's pixels, ``(2, h, w)`` float32.
    """
    h, w = region.shape
    step = max(1, int(math.sqrt(h * w / _DOMINANT_POINTS)))
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    keep = ~region[ys, xs]
    ys, xs = ys[keep], xs[keep]
    if len(ys) < _MIN_RING_POINTS:
        return None
    model = _fit_affine(raw, ys, xs)
    if model is None:
        return None
    out = np.empty_like(raw)
    out[..., 0], out[..., 1] = affine_motion(model, grid[1], grid[0])
    # One masked pass, not a gather and a scatter (the mask per channel: broadcast along the last
    # axis, it is several times slower).
    np.copyto(out, completed, where=np.repeat(region[..., None], out.shape[-1], axis=-1))
    return out


@dataclass
class _Hole:
    """One connected hole of a flow region: its pixels and the ring of pixels around it."""

    ys: np.ndarray
    xs: np.ndarray
    ring_ys: np.ndarray
    ring_xs: np.ndarray


def _holes_and_rings(region: np.ndarray) -> list[_Hole]:
    """Connected holes of a flow region and a ring around each, as wide as half the hole's size.

    The ring reaches past the band where the flow is biased by the hole's edge; pixels of other
    holes are never part of a ring. Work is done in each hole's bounding box.
    """
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    h, w = region.shape
    holes = []
    for k in range(1, count):
        x, y, bw, bh, area = (int(v) for v in boxes[k])
        r = max(_MIN_RING_WIDTH, int(0.5 * math.sqrt(area)))
        y0, y1, x0, x1 = max(0, y - r), min(h, y + bh + r), max(0, x - r), min(w, x + bw + r)
        inside = labels[y0:y1, x0:x1] == k
        grown = cv2.dilate(inside.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
        ring = grown & ~region[y0:y1, x0:x1]
        ys, xs = np.nonzero(inside)
        rys, rxs = np.nonzero(ring)
        if len(rys) > _MAX_RING_POINTS:  # an even subset: RANSAC cost grows with points, accuracy hardly
            keep = np.linspace(0, len(rys) - 1, _MAX_RING_POINTS).astype(np.int64)
            rys, rxs = rys[keep], rxs[keep]
        holes.append(_Hole(ys + y0, xs + x0, rys + y0, rxs + x0))
    return holes


def _fit_affine(flow: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray | None:
    """Affine motion (2x3) that best explains ``flow`` at the given pixels (RANSAC), or None."""
    if len(ys) < _MIN_RING_POINTS:
        return None
    src = np.stack([xs, ys], 1).astype(np.float32)
    dst = src + flow[ys, xs]
    model, _ = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.0)
    return model


def affine_motion(model: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The displacement ``(dx, dy)`` the affine ``model`` (2x3) gives the points ``(xs, ys)``."""
    return (model[0, 0] * xs + model[0, 1] * ys + model[0, 2] - xs,
            model[1, 0] * xs + model[1, 1] * ys + model[1, 2] - ys)


def motion_sigma(dx: np.ndarray, dy: np.ndarray, floor: float = MOTION_SIGMA_PX) -> np.ndarray:
    """The motion check's tolerance for an expected motion ``(dx, dy)``: ``floor`` (flow noise,
    :data:`MOTION_SIGMA_PX` full-resolution pixels) plus :data:`MOTION_SIGMA_REL` of its length."""
    return floor + MOTION_SIGMA_REL * np.sqrt(dx * dx + dy * dy)


def _complete_flow(flow: np.ndarray, region: np.ndarray, holes: list[_Hole]
                   ) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Replace ``flow`` inside ``region`` by the affine motion of the ring around each hole.

    Background motion around a hole is close to affine (camera pan, zoom, slow rotation), and a
    robust fit ignores a foreground object crossing the ring. A hole without a usable ring takes
    the fit over all rings; with none at all, the flow is filled with a smooth membrane.
    Returns the completed flow and each hole's background model (None where it had none).
    """
    out = flow.copy()
    shared: list = []
    models: list[np.ndarray | None] = []
    for hole in holes:
        model = _fit_affine(flow, hole.ring_ys, hole.ring_xs)
        if model is None:
            if not shared:
                shared.append(_fit_affine(flow, np.concatenate([h.ring_ys for h in holes]),
                                          np.concatenate([h.ring_xs for h in holes])))
            model = shared[0]
        models.append(model)
        if model is None:
            unknown = np.zeros(region.shape, bool)
            unknown[hole.ys, hole.xs] = True
            out = harmonic_fill(out, unknown)
            continue
        out[hole.ys, hole.xs, 0], out[hole.ys, hole.xs, 1] = affine_motion(
            model, hole.xs.astype(np.float32), hole.ys.astype(np.float32))
    return out, models


@dataclass
class ObjectLayers:
    """Objects straddling hole borders in one flow field (working resolution).

    ``models[k]`` is the affine motion (2x3) of the k-th object; ``label`` ``(h, w)`` int16 is k at
    the hole pixels next to it (closer to its part of the ring than to the background's), -1
    elsewhere.
    """

    models: list[np.ndarray]
    label: np.ndarray


def _object_layers(raw: np.ndarray, region: np.ndarray, holes: list[_Hole], models: list[np.ndarray | None],
                   scale: float) -> ObjectLayers | None:
    """Find objects that a hole cuts through: a second motion on the hole's ring, unlike the background's.

    Ring pixels whose raw flow is more than ``2 sigma`` off the hole's background model (the motion
    check's tolerance, :data:`MOTION_SIGMA_PX` + :data:`MOTION_SIGMA_REL` of the motion) move on
    their own. If at least ``_MIN_RING_POINTS`` of them follow one affine motion (RANSAC) that is
    itself beyond ``2 sigma`` of the background's, an object straddles the border: the hole pixels
    nearer to its part of the ring than to the background's part get its label. In object removal
    the mask covers the object, whose ring is then background; an object that only passes beside a
    hole may still be found here, and :func:`.objects.object_pixels` keeps it out (it must be seen
    on the hole's own border).
    """
    found: list[np.ndarray] = []
    label = None
    for hole, model in zip(holes, models):
        if model is None or len(hole.ring_ys) < 2 * _MIN_RING_POINTS:
            continue
        rys, rxs = hole.ring_ys, hole.ring_xs
        fx, fy = affine_motion(model, rxs.astype(np.float32), rys.astype(np.float32))
        vx, vy = raw[rys, rxs, 0], raw[rys, rxs, 1]
        sigma = motion_sigma(fx, fy, MOTION_SIGMA_PX / scale)
        off = (vx - fx) ** 2 + (vy - fy) ** 2 > (2 * sigma) ** 2
        if off.sum() < _MIN_RING_POINTS:
            continue
        oys, oxs = rys[off], rxs[off]
        src = np.stack([oxs, oys], 1).astype(np.float32)
        # At most _OBJECT_RANSAC_ITERS draws: an object making up 30 % or more of the outliers is
        # found with 99 % confidence; scattered outliers (noise) do not cost RANSAC's 2000.
        obj, inl = cv2.estimateAffine2D(src, src + raw[oys, oxs], method=cv2.RANSAC, ransacReprojThreshold=1.0,
                                        maxIters=_OBJECT_RANSAC_ITERS)
        if obj is None or inl is None or int(inl.sum()) < _MIN_RING_POINTS:
            continue
        inl = inl.ravel() > 0
        oys, oxs = oys[inl], oxs[inl]
        # The object's model must itself move unlike the background where it was fitted.
        ox, oy = affine_motion(obj, oxs.astype(np.float32), oys.astype(np.float32))
        bx, by = affine_motion(model, oxs.astype(np.float32), oys.astype(np.float32))
        sig = motion_sigma(bx, by, MOTION_SIGMA_PX / scale)
        if np.median(((ox - bx) ** 2 + (oy - by) ** 2) / sig ** 2) <= 4.0:
            continue
        bys, bxs = rys[~off], rxs[~off]
        # Hole pixels nearer to the object's ring pixels than to the background's (in the hole's box).
        y0 = int(min(hole.ys.min(), rys.min()))
        x0 = int(min(hole.xs.min(), rxs.min()))
        y1 = int(max(hole.ys.max(), rys.max())) + 1
        x1 = int(max(hole.xs.max(), rxs.max())) + 1
        d_obj = _distance_to(oys - y0, oxs - x0, (y1 - y0, x1 - x0))
        d_bg = _distance_to(bys - y0, bxs - x0, (y1 - y0, x1 - x0))
        near = d_obj[hole.ys - y0, hole.xs - x0] < d_bg[hole.ys - y0, hole.xs - x0]
        if not near.any():
            continue
        if label is None:
            label = np.full(region.shape, -1, np.int16)
        label[hole.ys[near], hole.xs[near]] = len(found)
        found.append(obj)
    return ObjectLayers(found, label) if found else None


def _distance_to(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Euclidean distance of every pixel of a box of ``shape`` to the nearest of the points ``(ys, xs)``."""
    if len(ys) == 0:
        return np.full(shape, np.inf, np.float32)
    seeds = np.ones(shape, np.uint8)
    seeds[ys, xs] = 0
    return cv2.distanceTransform(seeds, cv2.DIST_L2, 3)


def motion_check_stack(fwd: list[FlowField], bwd: list[FlowField], towards_past: bool) -> np.ndarray:
    """Per frame ``s``, low-resolution ``(raw - completed, completed)`` flow ``(T, h, w, 4)``.

    A source in frame ``s`` found towards the past is checked on the motion ``s -> s - 1`` (the
    point keeps moving away from the hole it was tracked out of; ``s -> s + 1`` would measure
    it against the filled hole), a source towards the future on ``s -> s + 1``. At the clip's end
    the other neighbour is used. The background motion is the completed flow near holes and the
    frame's dominant motion elsewhere (:attr:`FlowField.background`): a source far from any hole
    that shows an object moving on its own (a player who crossed the location a few frames ago)
    is rejected as well as one beside a hole.
    """
    length = len(fwd) + 1
    out = []
    for s in range(length):
        if towards_past:
            field = bwd[s - 1] if s >= 1 else fwd[0]
        else:
            field = fwd[s] if s < length - 1 else bwd[length - 2]
        bg = field.flow if field.background is None else field.background
        raw = field.raw
        # cv2.merge of the planes: a NumPy concatenation along a last axis of 2 is 4x slower.
        out.append(cv2.merge([raw[..., 0] - bg[..., 0], raw[..., 1] - bg[..., 1], bg[..., 0], bg[..., 1]]))
    return np.stack(out).astype(np.float32, copy=False)


def bilinear_frames(stack: np.ndarray, f: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``stack`` ``(T, h, w, C)`` at frames ``f`` and positions ``(x, y)`` (border clamped) -> ``(N, C)``."""
    _, h, w, c = stack.shape
    x = np.clip(x, 0, w - 1).astype(np.float32)
    y = np.clip(y, 0, h - 1).astype(np.float32)
    x0 = x.astype(np.int32)  # floor: x >= 0
    y0 = y.astype(np.int32)
    wx = (x - x0)[:, None]
    wy = (y - y0)[:, None]
    # One flat index per corner: ``take`` on a (T*h*w, C) view is several times faster than
    # indexing with three arrays.
    flat = stack.reshape(-1, c)
    i00 = (f.astype(np.int64) * h + y0) * w + x0
    dx = (x0 < w - 1).astype(np.int64)
    dy = np.where(y0 < h - 1, w, 0).astype(np.int64)
    top = flat.take(i00, axis=0) * (1 - wx) + flat.take(i00 + dx, axis=0) * wx
    bottom = flat.take(i00 + dy, axis=0) * (1 - wx) + flat.take(i00 + dy + dx, axis=0) * wx
    return top * (1 - wy) + bottom * wy


def motion_agreement(stack: np.ndarray, full_hw: tuple[int, int], f: np.ndarray, x: np.ndarray,
                     y: np.ndarray) -> np.ndarray:
    """Weight in (0, 1] of each source: how well its own motion agrees with the background's there.

    A source showing an object that moves unlike the background (or stands still while the
    camera pans) gets a weight near 0 and is outvoted by the other frames; beyond 2 sigma
    (``MOTION_MIN_AGREEMENT``) it gets 0 and is not used.
    """
    _, h, w, _ = stack.shape
    sx, sy = full_hw[1] / w, full_hw[0] / h
    v = sample_by_frame(stack.__getitem__, f, (x + 0.5) / sx - 0.5, (y + 0.5) / sy - 0.5, stack.shape[-1])
    ex, ey, bx, by = v[:, 0] * sx, v[:, 1] * sy, v[:, 2] * sx, v[:, 3] * sy
    sigma = motion_sigma(bx, by)
    agree = np.exp(-(ex * ex + ey * ey) / (2 * sigma * sigma)).astype(np.float32)
    return np.where(agree >= MOTION_MIN_AGREEMENT, agree, 0.0).astype(np.float32)


def _per_channel(plane: np.ndarray, channels: int) -> np.ndarray:
    """``plane`` ``(H, W)`` repeated into ``(H, W, channels)``: a product with it is several times faster than
    one broadcast along the last axis, and the same."""
    return cv2.merge([plane] * channels)


def exposure_curve(video: np.ndarray, holes: np.ndarray, fwd: list[FlowField]) -> np.ndarray:
    """Per frame and channel, the log gain of the frame relative to frame 0: ``(T, 3)`` float32.

    Between neighbouring frames the gain is the median, over pixels known in both (aligned by the
    flow, at the flow's resolution; nearly black or white pixels left out), of the log ratio of
    their colours: the median ignores moving objects and new content, a change of exposure or
    white balance moves every pixel alike. A source in frame ``s`` copied into frame ``t`` is
    multiplied by ``exp(curve[t] - curve[s])`` before fusion.
    """
    length, height, width = holes.shape
    curve = np.zeros((length, 3), np.float32)
    if length < 2:
        return curve
    fh, fw = fwd[0].flow.shape[:2]
    # Hole content is zeroed first and any low-resolution pixel touching a hole is left out, so
    # what is being removed cannot steer the estimate.
    small = [cv2.resize(f * _per_channel((~h).astype(np.float32), 3), (fw, fh), interpolation=cv2.INTER_AREA)
             for f, h in zip(video, holes)]
    cover = [cv2.resize((~h).astype(np.float32), (fw, fh), interpolation=cv2.INTER_AREA) for h in holes]
    known = [c >= 1.0 for c in cover]
    # A median over every second pixel of every second row: a gain moves all pixels alike, so a
    # quarter of them give the same median at a quarter of the work.
    gy, gx = np.mgrid[0:fh:2, 0:fw:2].astype(np.float32)
    for t in range(length - 1):
        flow = fwd[t].flow[::2, ::2]
        mx, my = gx + flow[..., 0], gy + flow[..., 1]
        nxt = cv2.remap(small[t + 1], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(-1, -1, -1))
        nxt_known = cv2.remap(known[t + 1].astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0) >= 1.0 - 1e-6
        a, b = small[t][::2, ::2], nxt
        sel = known[t][::2, ::2] & nxt_known & np.all((a > _EXPOSURE_LO) & (a < _EXPOSURE_HI) & (b > _EXPOSURE_LO) & (b < _EXPOSURE_HI), -1)
        step = np.zeros(3, np.float32)
        if sel.sum() >= _MIN_RING_POINTS:
            step = np.median(np.log(b[sel]) - np.log(a[sel]), axis=0).astype(np.float32)
        curve[t + 1] = curve[t] + step
    return curve
