"""From candidate sources to hole colours: robust fusion, colour matching, spatial fill.

* **Fusion.** Each hole pixel has up to ``2 * slots`` candidate colours (past and future sources,
  read once with bilinear weights over known pixels only), each weighed by temporal distance and
  motion agreement. The candidate with the most *support* - the summed weight of the candidates
  within ``tolerance`` of it - picks the colour most frames agree on (ties: the weighted medoid);
  the candidates within ``tolerance`` of it (the most consistent cluster) are averaged. Support,
  not the medoid alone, because an object passing over the source location is seen as
  *different* colours frame after frame (the track slides over it), while the background the
  track follows is seen as the same colour. A moving object seen at the source location in a minority of the frames is
  rejected, while agreeing frames still average out independent propagation errors. Where no
  two candidates agree (sources misaligned across an edge) all are averaged.
* **Colour matching.** The same fusion is run for a ring of *known* pixels around each hole
  (excluding the ring's own frame). The difference between the ring's true colour and its
  propagated colour is the mismatch of the copied content at the border (exposure, white
  balance, shading): it is smoothed along the ring and carried into the hole as a membrane
  (harmonic interpolation), which is the gradient-domain (Poisson) blend of the copied content.
* **Spatial fill.** Never-seen pixels get the mean of Telea and the membrane of the pixels around
  them; see :func:`spatial_fill_frame` for why that and not Telea alone.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import cv2
import numpy as np

from ..membrane import harmonic_fill, window_around
from .motion import FlowField, bilinear, sample_by_frame

__all__ = ["KnownSampler", "fuse_candidates", "colour_offset", "spatial_fill", "spatial_fill_step", "spatial_fill_frame",
           "telea_fill", "ring_of", "ring_samples"]



# Tie-break of equal support by the weighted L1 distance to all candidates (support is a sum of
# weights, the distance term stays far below one weight's worth).
_TIE_BREAK = 1e-3
# Block size (pixels) over which the colour mismatch on a hole's ring is averaged: about the ring
# width, so each block on the ring holds a few ring pixels.
OFFSET_SCALE = 4
# A ring pixel whose mismatch differs from its ring's median by more than this (mean absolute RGB)
# shows something the copied content does not (an object at the hole's edge, a misaligned edge),
# not a colour change: twice the fusion tolerance.
RING_OUTLIER = 0.12
# Jacobi steps after the push-pull for the spatial fill: 64 bring the push-pull much closer to the
# harmonic solution for holes a few tens of pixels wide than the 16 used before (a ramp: 7e-3 off
# instead of 2.6e-2, tests/test_prior.py); on the holes of every clip and task of
# bench/bench_prior.py (single-frame fills) that raised the membrane's hole PSNR by 0.06-0.52 dB.
_SPATIAL_SMOOTHING = 64
# Telea's radius in the spatial fill (OpenCV's customary value).
_TELEA_RADIUS = 5
# Pixels beyond Telea's radius that its result can still depend on (gradients of the distance map
# and of the image at the edge of the radius): with 1 the boxed fill matched the whole-frame one on
# 1588 random masks, with 0 it did not (tests/test_prior.py); 3 leaves room.
_TELEA_MARGIN = 3


class KnownSampler:
    """Bilinear colours of a frame read from its known (non-hole) pixels only.

    Each frame is kept premultiplied, ``(rgb * known, known)``: sampling both with ``cv2.remap``
    and dividing gives bilinear weights renormalised over the known pixels under the footprint.
    Hole pixels therefore never contribute, so what is being removed cannot leak back in.
    A few recently used frames are cached (sources are nearly always close in time). One sampler
    serves several threads (the cache is locked; a frame two threads miss at once is made twice,
    the same), so each frame is premultiplied once, not once per thread.
    """

    def __init__(self, video: np.ndarray, holes: np.ndarray, cache_bytes: int = 512 * 2**20):
        self.video, self.holes = video, holes
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_size = max(8, cache_bytes // (16 * holes[0].size))
        self._lock = threading.Lock()

    def _premultiplied(self, s: int) -> np.ndarray:
        with self._lock:
            pm = self.cache.get(s)
            if pm is not None:
                self.cache.move_to_end(s)
                return pm
        known = (~self.holes[s]).astype(np.float32)
        frame = self.video[s]
        # Plane by plane and merged: a product broadcast along the last axis and a concatenation
        # along it are several times slower.
        pm = cv2.merge([frame[..., 0] * known, frame[..., 1] * known, frame[..., 2] * known, known])
        with self._lock:
            self.cache[s] = pm
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return pm

    def sample(self, s: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colours (N, 3) of frames ``s`` at ``(x, y)``, and ``ok`` (N,): some known pixel was under them."""
        acc = sample_by_frame(self._premultiplied, s, x, y, 4)
        ok = acc[:, 3] > 1e-3
        # Divide everywhere (cheaper than selecting the ok rows twice), channel by channel (a
        # broadcast along the last axis is slower), then clear the rest.
        den = np.where(ok, acc[:, 3], np.float32(1.0))
        colour = np.empty((len(s), 3), np.float32)
        for c in range(3):
            np.divide(acc[:, c], den, out=colour[:, c])
        colour[~ok] = 0.0
        return colour, ok


def fuse_candidates(colours: np.ndarray, weights: np.ndarray, tolerance: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Robust fusion of ``colours`` ``(S, N, 3)`` with ``weights`` ``(S, N)`` (0 = no candidate).

    Returns the fused colours ``(N, 3)`` and how many candidates were averaged ``(N,)`` (0 where
    there was none).
    """
    s, n = weights.shape
    if n == 0:
        return np.zeros((0, 3), np.float32), np.zeros(0, np.int32)
    valid = weights > 0
    # For each candidate: the weight of the candidates that agree with it (within ``tolerance``,
    # itself included) - its cluster's support - and its weighted L1 distance to all others (to
    # break ties). One unordered pair at a time: S (S - 1) / 2 passes over (3, N).
    planes = np.ascontiguousarray(colours.transpose(0, 2, 1))  # (S, 3, N): channel sums without a reduce
    support = weights.astype(np.float32).copy()
    score = np.zeros((s, n), np.float32)
    # A slot empty at every pixel (the first frames have no past sources, the last no future
    # ones) only adds zeros to the others and has no key: its pairs are skipped.
    used = [i for i in range(s) if valid[i].any()]
    for k, i in enumerate(used):
        for j in used[k + 1:]:
            a = np.abs(planes[i] - planes[j])
            d = (a[0] + a[1] + a[2]) / 3.0
            near = d <= tolerance
            support[i] += weights[j] * near
            support[j] += weights[i] * near
            score[i] += weights[j] * d
            score[j] += weights[i] * d
    key = np.where(valid, support - _TIE_BREAK * score, -np.inf)
    best = np.argmax(key, axis=0)
    centre = np.take_along_axis(planes, best[None, None, :], axis=0)  # (1, 3, N)
    a = np.abs(planes - centre)
    inlier = ((a[:, 0] + a[:, 1] + a[:, 2]) / 3.0 <= tolerance) & valid
    count = inlier.sum(0)
    # No two candidates agree: not an object seen in some frames (the background frames would
    # agree with each other) but sources misaligned across an edge, typically the past ones on
    # one side and the future ones on the other. Their weighted mean is the least-squares guess.
    w = np.where((count == 1) & (valid.sum(0) > 1), weights, weights * inlier)
    total = w.sum(0)
    # On the (S, 3, N) planes: no broadcast along a last axis of 3 (the same sums, in the same order).
    fused = (planes * w[:, None, :]).sum(0) / np.maximum(total, 1e-12)
    return np.ascontiguousarray(fused.T, dtype=np.float32), (w > 0).sum(0).astype(np.int32)


def ring_of(hole: np.ndarray, width: int) -> np.ndarray:
    """Known pixels within ``width`` of a hole (an elliptic dilation minus the hole)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return (cv2.dilate(hole.astype(np.uint8), kernel) > 0) & ~hole


def ring_samples(ring: np.ndarray) -> np.ndarray:
    """The ring pixels whose sources are fused for colour matching: one in two, on a checkerboard.

    The mismatch they measure is averaged over blocks of ``OFFSET_SCALE`` pixels anyway, so half
    of them give the same correction (within 0.05 dB of hole PSNR on the bench's grids) for half
    the ring's share of the fusion work (a third of all targets for a grid of small squares).
    """
    out = ring.copy()
    out[1::2, ::2] = False
    out[::2, 1::2] = False
    return out


def offset_box(ring_ys: np.ndarray, ring_xs: np.ndarray, h: int, w: int) -> tuple[int, int, int, int]:
    """The box ``(y0, y1, x0, x1)`` around the ring, grown to multiples of the offset scale where it fits."""
    s = OFFSET_SCALE
    boxes = []
    for lo, hi, size in ((int(ring_ys.min()), int(ring_ys.max()) + 1, h), (int(ring_xs.min()), int(ring_xs.max()) + 1, w)):
        length = min(size, -(-(hi - lo) // s) * s)
        lo = max(0, min(lo, size - length))
        boxes += [lo, lo + length]
    return boxes[0], boxes[1], boxes[2], boxes[3]


def ring_inliers(hole: np.ndarray, ring_ys: np.ndarray, ring_xs: np.ndarray, mismatch: np.ndarray,
                 ring_ok: np.ndarray) -> np.ndarray:
    """Ring pixels whose mismatch lies within ``RING_OUTLIER`` of their hole's median mismatch."""
    h, w = hole.shape
    region = hole.copy()
    region[ring_ys, ring_xs] = True
    _, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    keep = np.zeros(len(ring_ys), bool)
    # The usable ring pixels grouped by hole with one stable sort (each group in ascending order,
    # as selecting it from the whole list would give), not one pass over the list per hole.
    usable = np.flatnonzero(ring_ok)
    lab = labels[ring_ys.take(usable), ring_xs.take(usable)]
    order = np.argsort(lab, kind="stable")
    usable, lab = usable.take(order), lab.take(order)
    bounds = [0] + (np.flatnonzero(lab[1:] != lab[:-1]) + 1).tolist() + [len(usable)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        sel = usable[a:b]
        median = np.median(mismatch[sel], axis=0)
        keep[sel] = np.abs(mismatch[sel] - median).mean(-1) <= RING_OUTLIER
    return keep


def colour_offset(frame: np.ndarray, hole: np.ndarray, ring_ys: np.ndarray, ring_xs: np.ndarray,
                  ring_fused: np.ndarray, ring_ok: np.ndarray) -> np.ndarray | None:
    """The correction ``(H, W, 3)`` to add to propagated hole colours, or None without a usable ring.

    Ring pixels whose mismatch is far from the median of their hole's ring are left out
    (:func:`ring_inliers`): an object standing at the hole's edge in this frame only is not a
    colour change to spread into the hole. The remaining mismatch is averaged over blocks of
    ``OFFSET_SCALE`` pixels (texture misalignment is high-frequency, exposure and shading are
    not), interpolated harmonically into the holes at that scale and brought back to full size
    with bilinear interpolation: a smooth correction, and 16 times less work than at full size.
    """
    if not ring_ok.any():
        return None
    h, w = hole.shape
    mismatch = frame[ring_ys, ring_xs] - ring_fused
    keep = ring_ok & ring_inliers(hole, ring_ys, ring_xs, mismatch, ring_ok)
    if not keep.any():
        return None
    ys, xs = ring_ys[keep], ring_xs[keep]
    y0, y1, x0, x1 = offset_box(ring_ys, ring_xs, h, w)
    diff = np.zeros((y1 - y0, x1 - x0, 3), np.float32)
    weight = np.zeros((y1 - y0, x1 - x0), np.float32)
    diff[ys - y0, xs - x0] = mismatch[keep]
    weight[ys - y0, xs - x0] = 1.0
    small = (max(1, (x1 - x0) // OFFSET_SCALE), max(1, (y1 - y0) // OFFSET_SCALE))
    num = cv2.resize(diff, small, interpolation=cv2.INTER_AREA).reshape(small[1], small[0], 3)
    den = cv2.resize(weight, small, interpolation=cv2.INTER_AREA).reshape(small[1], small[0])
    valid = den > 0
    mean = np.where(valid[..., None], num / np.maximum(den, 1e-6)[..., None], 0.0).astype(np.float32)
    filled = harmonic_fill(mean, ~valid)
    out = np.zeros((h, w, 3), np.float32)
    out[y0:y1, x0:x1] = cv2.resize(filled, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR).reshape(
        y1 - y0, x1 - x0, 3)
    return out


def telea_fill(frame: np.ndarray, unknown: np.ndarray, radius: int = _TELEA_RADIUS,
               needed: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """OpenCV's Telea inpainting of ``frame`` ``(H, W, 3)`` float in [0, 1] where ``unknown``: a new array.

    Telea fills a pixel from the pixels within ``radius`` of it (and their neighbours, for the
    gradients), so groups of unknown pixels more than ``radius + _TELEA_MARGIN`` apart do not
    interact: each group is inpainted in its own box grown by that margin, which gives the values a
    whole-frame call gives (frame edges included) for the few scattered never-seen pixels of a
    frame at a fraction of the cost. ``needed`` (pixels ``(ys, xs)`` of ``unknown``): only the
    groups that hold some of them are filled; the other unknown pixels keep ``frame``'s values.
    """
    out = frame.copy()
    margin = int(radius) + _TELEA_MARGIN
    grown = cv2.dilate(unknown.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    groups = range(1, count) if needed is None else np.unique(labels[needed])
    for k in groups:
        x0, y0, bw, bh = (int(v) for v in boxes[k, :4])  # the dilation already holds the margin
        box = (slice(y0, y0 + bh), slice(x0, x0 + bw))
        sub = unknown[box]
        img = np.clip(frame[box] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        filled = cv2.inpaint(img, sub.astype(np.uint8), radius, cv2.INPAINT_TELEA)
        own = sub & (labels[box] == k)  # another group's pixels inside the box are filled in its own
        out[box][own] = filled[own].astype(np.float32) / 255.0
    return out


def membrane_parts(unknown: np.ndarray) -> list[tuple[int, int, int, int, np.ndarray]]:
    """The spatial fill's membrane is solved per connected part of ``unknown``, each in its own window.

    Per part ``(y0, y1, x0, x1, part)``: the part's window (:func:`.membrane.membrane_window` of
    the part: the part and a margin as wide as half of it) and the part's pixels in that window.
    The membrane is solved for every unknown pixel of the window (other parts inside it stay
    unknown) and kept for the part's pixels. Scattered small holes (a grid of squares) then cost
    their own size, not that of a window spanning the frame.
    """
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(unknown.astype(np.uint8), connectivity=8)
    h, w = unknown.shape
    parts = []
    for k in range(1, count):
        bx, by, bw, bh = (int(v) for v in boxes[k, :4])
        # membrane_window of the part, from its bounding box (no pass over the whole frame per part)
        y0, y1, x0, x1 = window_around(by, by + bh, bx, bx + bw, (h, w))
        parts.append((y0, y1, x0, x1, labels[y0:y1, x0:x1] == k))
    return parts


def spatial_fill_frame(frame: np.ndarray, unknown: np.ndarray, method: str = "mean",
                       radius: int = _TELEA_RADIUS) -> np.ndarray:
    """One frame's never-seen pixels filled from the pixels around them (a new array).

    ``"mean"`` (default): the mean of two fills whose errors differ - Telea, which carries the
    border's structure inwards along isophotes, and the membrane (harmonic interpolation), which
    is smooth. Where one overshoots an edge the other tends not to, so the mean has a lower
    squared error than either; alone, on every hole of ``bench/bench_prior.py`` (its last table),
    it scored higher hole PSNR than Telea on every clip and task. ``"membrane"`` and ``"telea"``
    are kept for comparison.
    """
    if method == "telea":
        return telea_fill(frame, unknown, radius)
    membrane = frame.copy()
    for y0, y1, x0, x1, part in membrane_parts(unknown):
        filled = harmonic_fill(frame[y0:y1, x0:x1], unknown[y0:y1, x0:x1], smooth_iterations=_SPATIAL_SMOOTHING)
        membrane[y0:y1, x0:x1][part] = filled[part]
    if method == "membrane":
        return membrane
    if method != "mean":
        raise ValueError(f"spatial fill method must be 'mean', 'membrane' or 'telea', got {method!r}")
    out = membrane
    out[unknown] = 0.5 * (out[unknown] + telea_fill(frame, unknown, radius)[unknown])
    return out


def spatial_fill(out: np.ndarray, unseen: np.ndarray, bwd: list[FlowField] | None, method: str = "mean",
                 radius: int = _TELEA_RADIUS) -> None:
    """Fill never-seen pixels in place, reusing the previous frame's fill along the flow.

    Pixels the previous frame also filled spatially take that fill along the flow (so the fill
    does not flicker); the others get :func:`spatial_fill_frame`. Frame by frame, in order
    (:func:`spatial_fill_step`).
    """
    for t in range(unseen.shape[0]):
        spatial_fill_step(out, unseen, bwd, t, method, radius)


def spatial_fill_step(out: np.ndarray, unseen: np.ndarray, bwd: list[FlowField] | None, t: int,
                      method: str = "mean", radius: int = _TELEA_RADIUS) -> None:
    """The spatial fill of frame ``t`` (:func:`spatial_fill`), in place, once frame ``t - 1`` is final.

    Reads frame ``t - 1`` and frame ``t`` only and writes only the never-seen pixels of frame
    ``t``, so it can run while other frames are still being fused (they read known pixels only).
    """
    _, height, width = unseen.shape
    if not unseen[t].any():
        return
    todo = unseen[t].copy()
    if t > 0 and bwd is not None and unseen[t - 1].any():
        ys, xs = np.nonzero(todo)
        d = bwd[t - 1].at(xs.astype(np.float32), ys.astype(np.float32))
        qx, qy = xs + d[:, 0], ys + d[:, 1]
        rx = np.clip(np.rint(qx), 0, width - 1).astype(np.int32)
        ry = np.clip(np.rint(qy), 0, height - 1).astype(np.int32)
        carry = unseen[t - 1, ry, rx] & (qx >= 0) & (qx <= width - 1) & (qy >= 0) & (qy <= height - 1)
        if carry.any():
            out[t, ys[carry], xs[carry]] = bilinear(out[t - 1], qx[carry], qy[carry])
            todo[ys[carry], xs[carry]] = False
    if todo.any():
        out[t][todo] = spatial_fill_frame(out[t], todo, method, radius)[todo]
