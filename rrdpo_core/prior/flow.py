"""A weight-free video-inpainting prior: optical-flow propagation of known pixels.

What DiffuEraser gets from ProPainter - the hole filled with background seen in other frames - made
without any learned weights, from OpenCV alone:

1. **Flow.** DIS optical flow (OpenCV) between neighbouring frames in both directions, on
   grayscale frames downscaled by ``flow_downscale``. The holes are first filled with a smooth
   membrane (:func:`harmonic_fill`) so the flow does not follow the object being removed.
2. **Flow completion.** DIS flow is unreliable inside a hole and, for about a patch width, around
   it (the filled hole looks static to it, which drags the flow nearby towards zero). So inside
   the holes of both frames of a pair, grown by ``flow_mask_dilation``, the flow is replaced by
   the affine motion fitted robustly (RANSAC) to the flow on a ring around each hole, as wide as
   half the hole. Background motion near a hole is close to affine (pan, zoom, slow rotation);
   the robust fit ignores foreground objects crossing the ring.
3. **Propagation by source tracking.** A forward sweep follows the completed flow from each hole
   pixel of frame ``t`` into frame ``t - 1``: if it lands on a known pixel, that pixel is its
   source; if it lands in frame ``t - 1``'s hole, it inherits that pixel's source (found one step
   earlier). A backward sweep does the same towards the future. So every hole pixel learns the
   nearest past and the nearest future frame that saw it, and the *position* there; the colour is
   then read once, with bilinear weights over known pixels only. Reading once (rather than
   warping an already-warped frame again and again, as a recurrent warp does) keeps propagated
   texture sharp however far it travels. A step that leaves the frame or fails the
   forward-backward consistency test (an occlusion) ends the track.
4. **Fusion.** The past and future colours are averaged with weights that fall with temporal
   distance (``fusion_sigma``). Averaging both, even where they disagree, measured best: it
   halves independent propagation errors, and the diffusion model restores detail afterwards.
5. **Never-seen pixels** get a spatial fill (OpenCV Telea). To keep that fill from flickering, a
   never-seen pixel whose flow leads into the previous frame's never-seen region takes the value
   filled there.

The result comes with a *visibility* map: 1 where the pixel is known or was seen in some other
frame, 0 where it was never seen (spatially invented) - the split between the part of the hole a
flow prior can restore and the part a generative model must invent.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch

from ..errors import Cancelled, RrdpoInputError
from ..video_io import as_frames, as_masks, to_tensor

__all__ = ["PriorResult", "flow_propagation_prior", "harmonic_fill", "DIS_PRESETS"]

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

# Forward-backward consistency (Sundaram et al. 2010): a step is trusted when
# |f + b|^2 <= alpha (|f|^2 + |b|^2) + beta, in full-resolution pixels.
_CONSISTENCY_ALPHA = 0.01
_CONSISTENCY_BETA = 0.5
_MIN_RING_POINTS = 16
_MAX_RING_POINTS = 1500
_MIN_RING_WIDTH = 8
_CROSS = np.array([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]], np.float32)


@dataclass
class PriorResult:
    """A filled video and where its hole content came from.

    Attributes:
        frames: ``(T, H, W, 3)`` float32 in [0, 1]; pixels outside the hole are the input's exactly.
        visibility: ``(T, H, W)`` float32: 1 where the pixel is known or was seen in another frame,
            0 where no frame saw it and it was filled spatially.
        stats: numbers about the run (hole pixels, fraction seen, mean source distance, timings).
    """

    frames: torch.Tensor
    visibility: torch.Tensor
    stats: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# Membrane fill


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
    # Only a window around the holes matters; a margin as wide as the holes gives the coarse
    # levels enough known pixels around them.
    ys, xs = np.nonzero(unknown)
    h, w = unknown.shape
    my = max(8, (ys.max() - ys.min() + 1) // 2)
    mx = max(8, (xs.max() - xs.min() + 1) // 2)
    y0, y1 = max(0, ys.min() - my), min(h, ys.max() + 1 + my)
    x0, x1 = max(0, xs.min() - mx), min(w, xs.max() + 1 + mx)
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
    for _ in range(int(smooth_iterations)):
        avg = as3(cv2.filter2D(filled, -1, _CROSS, borderType=cv2.BORDER_REPLICATE))
        filled[hole] = avg[hole]
    out = v.copy()
    out[y0:y1, x0:x1][hole] = filled[hole]
    return out[..., 0] if squeeze else out


# ------------------------------------------------------------------------------------------
# Helpers on point sets


def _bilinear(field_: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``field_`` (H, W, C) at float positions (border clamped) -> (N, C), with OpenCV.

    ``cv2.remap`` wants a 2-D map under 32767 on each side, so the points go in rows of 1024.
    Its bilinear weights are quantised to 1/32 pixel, plenty for flow and for the fill.
    """
    n = len(x)
    channels = field_.shape[2] if field_.ndim == 3 else 1
    if n == 0:
        return np.zeros((0, channels), np.float32)
    cols = 1024
    rows = -(-n // cols)
    pad = rows * cols - n
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    mx[:n] = x
    my[:n] = y
    mx, my = mx.reshape(rows, cols), my.reshape(rows, cols)
    out = cv2.remap(field_, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * cols, channels)[:n]


class _FlowField:
    """A low-resolution flow field read at full-resolution positions, in full-resolution pixels."""

    def __init__(self, flow: np.ndarray, full_hw: tuple[int, int]):
        self.flow = flow
        h, w = flow.shape[:2]
        self.sx = full_hw[1] / w
        self.sy = full_hw[0] / h

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        f = _bilinear(self.flow, (x + 0.5) / self.sx - 0.5, (y + 0.5) / self.sy - 0.5)
        f[:, 0] *= self.sx
        f[:, 1] *= self.sy
        return f


def _consistent(step: np.ndarray, back: np.ndarray) -> np.ndarray:
    sx, sy, bx, by = step[:, 0], step[:, 1], back[:, 0], back[:, 1]
    err = (sx + bx) ** 2 + (sy + by) ** 2
    bound = _CONSISTENCY_ALPHA * (sx * sx + sy * sy + bx * bx + by * by) + _CONSISTENCY_BETA
    return err <= bound


class _KnownSampler:
    """Bilinear colours of a frame read from its known (non-hole) pixels only.

    Each frame is kept premultiplied, ``(rgb * known, known)``: sampling both with ``cv2.remap``
    and dividing gives bilinear weights renormalised over the known pixels under the footprint.
    Hole pixels therefore never contribute, so what is being removed cannot leak back in.
    A few recently used frames are cached (sources are nearly always close in time).
    """

    def __init__(self, video: np.ndarray, holes: np.ndarray, cache_bytes: int = 512 * 2**20):
        self.video, self.holes = video, holes
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_size = max(8, cache_bytes // (16 * holes[0].size))

    def _premultiplied(self, s: int) -> np.ndarray:
        pm = self.cache.get(s)
        if pm is None:
            known = (~self.holes[s]).astype(np.float32)[..., None]
            pm = np.concatenate([self.video[s] * known, known], axis=-1)
            self.cache[s] = pm
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(s)
        return pm

    def sample(self, s: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colours (N, 3) of frames ``s`` at ``(x, y)``, and ``ok`` (N,): some known pixel was under them."""
        acc = np.zeros((len(s), 4), np.float32)
        order = np.argsort(s, kind="stable")
        frames_used, starts = np.unique(s[order], return_index=True)
        ends = np.append(starts[1:], len(s))
        for frame, a, b in zip(frames_used, starts, ends):
            sel = order[a:b]
            acc[sel] = _bilinear(self._premultiplied(int(frame)), x[sel], y[sel])
        ok = acc[:, 3] > 1e-3
        colour = np.zeros((len(s), 3), np.float32)
        colour[ok] = acc[ok, :3] / acc[ok, 3:]
        return colour, ok


@dataclass
class _Sources:
    """Per hole pixel of one frame: the frame index and position where it is seen (or -1)."""

    idx: np.ndarray  # (N,) int32, -1 = not seen in this direction
    x: np.ndarray    # (N,) float32
    y: np.ndarray    # (N,) float32


# ------------------------------------------------------------------------------------------
# The prior


class _Steps:
    def __init__(self, total: int, progress: ProgressFn | None, cancel: CancelFn | None):
        self.total, self.done = total, 0
        self.progress, self.cancel = progress, cancel

    def check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("flow prior cancelled")

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)
        self.check()


def _working_size(height: int, width: int, downscale: float) -> tuple[int, int]:
    return max(8, int(round(height / downscale))), max(8, int(round(width / downscale)))


def flow_propagation_prior(
    frames: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    *,
    flow_downscale: float = 2.0,
    preset: str = "medium",
    flow_mask_dilation: int = 16,
    fusion_sigma: float = 8.0,
    spatial_fill_radius: int = 5,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> PriorResult:
    """Fill the holes of a video with pixels propagated from other frames along optical flow.

    Args:
        frames: ``(T, H, W, 3)`` RGB, float in [0, 1] or uint8 (torch or numpy). Any size.
        masks: ``(T, H, W)`` hole masks (> 0.5 = hole), or one ``(H, W)`` mask for all frames.
        flow_downscale: flow is computed on frames shrunk by this factor (>= 1); 2 is about 4x
            faster than full resolution and nearly as accurate for background motion.
        preset: DIS preset, ``"ultrafast"``, ``"fast"`` or ``"medium"``.
        flow_mask_dilation: pixels (of the input frames) by which holes grow before the flow
            inside them is replaced by the completed flow. DIS flow is biased for about a patch
            width around a hole (the filled-in hole looks static to it), hence the default 16.
        fusion_sigma: temporal distance (frames) over which a source's weight falls by 1/e when
            a past and a future source are averaged.
        spatial_fill_radius: radius of the Telea fill for never-seen pixels.
        progress: ``progress(done, total)`` after each unit of work.
        cancel: polled regularly; returning True raises :class:`rrdpo_core.errors.Cancelled`.

    Returns:
        :class:`PriorResult`. An all-zero mask returns the input unchanged at once. A single
        frame has nothing to propagate from and is filled spatially (visibility 0 in the hole).

    Raises:
        RrdpoInputError: bad shapes or values, NaN frames, or a mask that covers every pixel
            of every frame (there is nothing to propagate from).
    """
    t_start = time.perf_counter()
    video = as_frames(frames)  # always a fresh array: the fill below writes into it
    length, height, width = video.shape[:3]
    holes = as_masks(masks, length, height, width)
    if preset not in DIS_PRESETS:
        raise RrdpoInputError(f"preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")
    if not (flow_downscale >= 1.0) or not math.isfinite(flow_downscale):
        raise RrdpoInputError(f"flow_downscale must be >= 1, got {flow_downscale}")
    if flow_mask_dilation < 0 or spatial_fill_radius < 1 or not fusion_sigma > 0:
        raise RrdpoInputError("flow_mask_dilation >= 0, spatial_fill_radius >= 1 and fusion_sigma > 0 are required")

    hole_count = int(holes.sum())
    if hole_count == 0:
        return PriorResult(frames=to_tensor(video), visibility=torch.ones(length, height, width),
                           stats={"hole_pixels": 0, "seen_fraction": 1.0, "seconds": time.perf_counter() - t_start})
    if hole_count == holes.size:
        raise RrdpoInputError("masks: every pixel of every frame is hole, so nothing is known to propagate or "
                              "fill from; the mask must leave some background visible")

    steps = _Steps(4 * length - 1, progress, cancel)
    steps.check()
    # ``video`` is read only outside the holes and written only inside them, so one array
    # serves as both the source of propagation and the output.
    out = video
    seen = ~holes

    if length == 1:
        _fill_unseen(out, holes.copy(), None, spatial_fill_radius)
        return PriorResult(frames=to_tensor(out), visibility=to_tensor(seen.astype(np.float32)),
                           stats={"hole_pixels": hole_count, "seen_fraction": 0.0,
                                  "seconds": time.perf_counter() - t_start})

    # 1-2. Flow at working resolution, both directions, completed inside the holes.
    t_flow = time.perf_counter()
    dilation = int(round(flow_mask_dilation / flow_downscale))
    fwd, bwd = _completed_flows(video, holes, flow_downscale, preset, dilation, steps)
    t_flow = time.perf_counter() - t_flow

    # 3. Source tracking, towards the past and towards the future.
    pix = [np.nonzero(h) for h in holes]
    past = _track(holes, pix, fwd, bwd, forward=True, steps=steps)
    future = _track(holes, pix, fwd, bwd, forward=False, steps=steps)

    # 4. Colours of both sources, averaged with weights that fall with temporal distance.
    sampler = _KnownSampler(video, holes)
    unseen = np.zeros_like(holes)
    distance_sum, seen_count = 0.0, 0
    for t in range(length):
        ys, xs = pix[t]
        if len(ys):
            acc = np.zeros((len(ys), 3), np.float32)
            weight = np.zeros(len(ys), np.float32)
            for src in (past[t], future[t]):
                valid = np.flatnonzero(src.idx >= 0)
                if not len(valid):
                    continue
                colour, ok = sampler.sample(src.idx[valid], src.x[valid], src.y[valid])
                valid, colour = valid[ok], colour[ok]
                w = np.exp(-np.abs(src.idx[valid] - t) / fusion_sigma).astype(np.float32)
                acc[valid] += colour * w[:, None]
                weight[valid] += w
                distance_sum += float(np.abs(src.idx[valid] - t).sum())
                seen_count += len(valid)
            got = weight > 0
            out[t, ys[got], xs[got]] = acc[got] / weight[got, None]
            seen[t, ys[got], xs[got]] = True
            unseen[t, ys[~got], xs[~got]] = True
        steps.step()

    # 5. Spatial fill of never-seen pixels, carried along the flow from frame to frame.
    if unseen.any():
        _fill_unseen(out, unseen, bwd, spatial_fill_radius)

    stats = {
        "hole_pixels": hole_count,
        "seen_fraction": float(1.0 - unseen.sum() / hole_count),
        "mean_source_distance": distance_sum / max(1, seen_count),
        "flow_seconds": t_flow,
        "seconds": time.perf_counter() - t_start,
    }
    return PriorResult(frames=to_tensor(out), visibility=to_tensor(seen.astype(np.float32)), stats=stats)


def _completed_flows(video: np.ndarray, holes: np.ndarray, downscale: float, preset: str, dilation: int,
                     steps: _Steps) -> tuple[list[_FlowField], list[_FlowField]]:
    """Forward (t -> t+1) and backward (t+1 -> t) flows, completed inside the holes."""
    length, height, width = holes.shape
    fh, fw = _working_size(height, width, downscale)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation + 1, 2 * dilation + 1)) if dilation else None
    grays, regions = [], []
    for frame, hole in zip(video, holes):
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        small_hole = cv2.resize(hole.astype(np.float32), (fw, fh), interpolation=cv2.INTER_AREA) > 0
        small = cv2.resize(gray, (fw, fh), interpolation=cv2.INTER_AREA) if (fh, fw) != (height, width) else gray
        # The object inside the hole must not steer the flow: hide it under a smooth membrane.
        small = harmonic_fill(small, small_hole, smooth_iterations=2)
        grays.append(np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8))
        region = cv2.dilate(small_hole.astype(np.uint8), kernel) > 0 if kernel is not None else small_hole
        regions.append(region)
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    fwd, bwd = [], []
    for t in range(length - 1):
        region = regions[t] | regions[t + 1]
        f = dis.calc(grays[t], grays[t + 1], None)
        b = dis.calc(grays[t + 1], grays[t], None)
        if region.all():
            f = np.zeros_like(f)  # nothing to measure motion on
            b = np.zeros_like(b)
        elif region.any():
            geometry = _holes_and_rings(region)
            f = _complete_flow(f, region, geometry)
            b = _complete_flow(b, region, geometry)
        fwd.append(_FlowField(f, (height, width)))
        bwd.append(_FlowField(b, (height, width)))
        steps.step()
    return fwd, bwd


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


def _complete_flow(flow: np.ndarray, region: np.ndarray, holes: list[_Hole]) -> np.ndarray:
    """Replace ``flow`` inside ``region`` by the affine motion of the ring around each hole.

    Background motion around a hole is close to affine (camera pan, zoom, slow rotation), and a
    robust fit ignores a foreground object crossing the ring. A hole without a usable ring takes
    the fit over all rings; with none at all, the flow is filled with a smooth membrane.
    """
    out = flow.copy()
    shared: list = []
    for hole in holes:
        model = _fit_affine(flow, hole.ring_ys, hole.ring_xs)
        if model is None:
            if not shared:
                shared.append(_fit_affine(flow, np.concatenate([h.ring_ys for h in holes]),
                                          np.concatenate([h.ring_xs for h in holes])))
            model = shared[0]
        if model is None:
            unknown = np.zeros(region.shape, bool)
            unknown[hole.ys, hole.xs] = True
            out = harmonic_fill(out, unknown)
            continue
        xs, ys = hole.xs.astype(np.float32), hole.ys.astype(np.float32)
        out[hole.ys, hole.xs, 0] = model[0, 0] * xs + model[0, 1] * ys + model[0, 2] - xs
        out[hole.ys, hole.xs, 1] = model[1, 0] * xs + model[1, 1] * ys + model[1, 2] - ys
    return out


def _track(holes: np.ndarray, pix: list[tuple[np.ndarray, np.ndarray]], fwd: list[_FlowField],
           bwd: list[_FlowField], *, forward: bool, steps: _Steps) -> list[_Sources]:
    """For every hole pixel, the nearest frame in one direction that saw it, and where.

    ``forward=True`` sweeps t = 0..T-1 and looks into the past (frame t-1), else the reverse.
    """
    length, height, width = holes.shape
    src_idx = np.full((height, width), -1, np.int32)
    src_x = np.zeros((height, width), np.float32)
    src_y = np.zeros((height, width), np.float32)
    result: list[_Sources] = [None] * length  # type: ignore[list-item]
    order = range(length) if forward else range(length - 1, -1, -1)
    for t in order:
        ys, xs = pix[t]
        n = len(ys)
        sources = _Sources(np.full(n, -1, np.int32), np.zeros(n, np.float32), np.zeros(n, np.float32))
        prev = t - 1 if forward else t + 1
        if n and 0 <= prev < length:
            # step: flow from t into prev; back: flow from prev into t (for the consistency test).
            step_field, back_field = (bwd[prev], fwd[prev]) if forward else (fwd[t], bwd[t])
            px, py = xs.astype(np.float32), ys.astype(np.float32)
            d = step_field.at(px, py)
            qx, qy = px + d[:, 0], py + d[:, 1]
            inside = (qx >= -0.5) & (qx <= width - 0.5) & (qy >= -0.5) & (qy <= height - 0.5)
            rx = np.clip(np.rint(qx), 0, width - 1).astype(np.int32)
            ry = np.clip(np.rint(qy), 0, height - 1).astype(np.int32)
            # Occlusion test: following the reverse flow from where we land must come back.
            ok = inside & _consistent(d, back_field.at(qx, qy))
            lands_known = ok & ~holes[prev, ry, rx]
            sources.idx[lands_known] = prev
            sources.x[lands_known] = qx[lands_known]
            sources.y[lands_known] = qy[lands_known]
            # Landing in prev's hole: inherit prev's source, shifted by the sub-pixel remainder
            # (the flow is locally a translation over less than a pixel).
            inherit = ok & ~lands_known & (src_idx[ry, rx] >= 0)
            ix, iy = rx[inherit], ry[inherit]
            sources.idx[inherit] = src_idx[iy, ix]
            sources.x[inherit] = src_x[iy, ix] + (qx[inherit] - ix)
            sources.y[inherit] = src_y[iy, ix] + (qy[inherit] - iy)
        if n:
            src_idx[ys, xs] = sources.idx
            src_x[ys, xs] = sources.x
            src_y[ys, xs] = sources.y
        result[t] = sources
        steps.step()
    return result


def _fill_unseen(out: np.ndarray, unseen: np.ndarray, bwd: list[_FlowField] | None, radius: int) -> None:
    """Spatially fill never-seen pixels in place, reusing the previous frame's fill along the flow."""
    length, height, width = unseen.shape
    for t in range(length):
        if not unseen[t].any():
            continue
        todo = unseen[t].copy()
        if t > 0 and bwd is not None and unseen[t - 1].any():
            ys, xs = np.nonzero(todo)
            d = bwd[t - 1].at(xs.astype(np.float32), ys.astype(np.float32))
            qx, qy = xs + d[:, 0], ys + d[:, 1]
            rx = np.clip(np.rint(qx), 0, width - 1).astype(np.int32)
            ry = np.clip(np.rint(qy), 0, height - 1).astype(np.int32)
            carry = unseen[t - 1, ry, rx] & (qx >= 0) & (qx <= width - 1) & (qy >= 0) & (qy <= height - 1)
            if carry.any():
                out[t, ys[carry], xs[carry]] = _bilinear(out[t - 1], qx[carry], qy[carry])
                todo[ys[carry], xs[carry]] = False
        if todo.any():
            img = np.clip(out[t] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            filled = cv2.inpaint(img, todo.astype(np.uint8), radius, cv2.INPAINT_TELEA)
            out[t][todo] = filled[todo].astype(np.float32) / 255.0
