"""A weight-free video-inpainting prior: known pixels propagated along optical flow, without ghosts.

What DiffuEraser gets from ProPainter - the hole filled with background seen in other frames - made
without any learned weights:

1. **Flow** (:mod:`.motion`): OpenCV DIS flow between neighbouring frames in both directions,
   refined down to the working resolution, completed inside the holes with the affine motion of
   the ring around each hole.
2. **Sources** (:mod:`.sources`): one sweep towards the past and one towards the future give
   every hole pixel up to ``candidates_per_direction`` frames that saw its background, following
   the completed (background) motion and cut at occlusions (forward-backward test) - not just
   the nearest frame, which may show a moving object there. Each source weighs by its temporal
   distance and by how well its own motion (raw DIS) agrees with the background motion there
   (the completed flow, :func:`.motion.motion_agreement`): an object that moves unlike the
   background, or stands still while the camera pans, gets a weight near 0.
3. **Fusion** (:mod:`.fusion`): the candidate colours are fused robustly (weighted medoid and
   the cluster that agrees with it), so an object crossing the source location in some of the
   frames is outvoted, then matched to the frame they land in: each source is first brought to
   the destination's exposure (a per-frame gain curve, :func:`.motion.exposure_curve`), and the
   remaining mismatch on a ring of known pixels around the hole is carried into the hole as a
   membrane (a gradient-domain blend).
4. **Object layer** (:mod:`.objects`, video completion): where a hole cuts through a moving object
   that stays visible on the hole's ring (a second motion there, unlike the background's), the
   hole pixels it continues into are filled from the object's own sources, found along the
   object's motion, where past and future sources agree and the object is seen at the hole's
   border. Where they do not agree (the object deforms) but both sides show the object and the
   pixel is nearer the object's part of the border than the background's, it gets the mean of
   the background's colour and Telea's fill from the border (:func:`.objects.uncertain_pixels`).
   In object removal the mask covers the object, its border is background, and nothing changes.
5. **Spatial fill** of never-seen pixels: the mean of Telea and the membrane of the pixels around
   (:func:`.fusion.spatial_fill_frame`), carried from frame to frame along the flow so it does not
   flicker.

The result has a *visibility* map (1 where the pixel is known or was seen in another frame) and a
*source map* saying how each pixel was made (:data:`SOURCE_KNOWN`, :data:`SOURCE_COPIED`,
:data:`SOURCE_FUSED`, :data:`SOURCE_SPATIAL`); :func:`rrdpo_core.prior.source_preview` draws it.

Frame pairs, the two tracking sweeps and the fusion of each frame are independent and run on
``workers`` threads (:mod:`.parallel`); the result does not depend on their number.

``device`` runs steps 2-5 with torch (and kornia) on that device (:mod:`.torch_path`), the same
algorithm; the flow (step 1) is computed by OpenCV on the CPU in both paths.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..errors import RrdpoInputError
from ..progress import CancelFn, Progress, ProgressFn
from ..video_io import as_frames, as_masks, to_tensor
from .fusion import (KnownSampler, colour_offset, fuse_candidates, ring_of, ring_samples, spatial_fill,
                     spatial_fill_step)
from .motion import (DIS_PRESETS, completed_flows, exposure_curve, motion_agreement, motion_check_stack,
                     scatter_rows)
from .objects import object_pixels, object_sources, telea_at, uncertain_pixels
from .parallel import default_workers, opencv_serial_while, ordered_map
from .preview import SOURCE_COPIED, SOURCE_FUSED, SOURCE_KNOWN, SOURCE_SPATIAL
from .sources import track_sources

__all__ = ["PriorResult", "PriorSettings", "flow_propagation_prior", "DIS_PRESETS"]



@dataclass
class PriorResult:
    """A filled video and where its hole content came from.

    Attributes:
        frames: ``(T, H, W, 3)`` float32 in [0, 1]; pixels outside the hole are the input's exactly.
        visibility: ``(T, H, W)`` float32: 1 where the pixel is known or was seen in another frame,
            0 where no frame saw it and it was filled spatially.
        stats: numbers about the run (hole pixels, fraction seen, mean source distance, timings).
        source_map: ``(T, H, W)`` uint8: 0 known, 1 copied from a single frame, 2 fused from several
            frames, 3 filled spatially (``rrdpo_core.prior.SOURCE_*``); None from priors that do not
            make one.
    """

    frames: torch.Tensor
    visibility: torch.Tensor
    stats: dict = field(default_factory=dict)
    source_map: torch.Tensor | None = None


@dataclass(frozen=True)
class PriorSettings:
    """The algorithm's constants after validation (shared by the NumPy and the torch paths)."""

    slots: int
    gap: int
    sigma: float
    tolerance: float
    ring: int
    radius: int = 5


def flow_propagation_prior(
    frames: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    *,
    flow_downscale: float = 2.0,
    preset: str = "medium",
    flow_mask_dilation: int = 16,
    fusion_sigma: float = 8.0,
    spatial_fill_radius: int = 5,
    candidates_per_direction: int = 4,
    candidate_gap: int = 3,
    fusion_tolerance: float = 0.06,
    colour_ring: int = 4,
    device: str | torch.device | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> PriorResult:
    """Fill the holes of a video with pixels propagated from other frames along optical flow.

    Args:
        frames: ``(T, H, W, 3)`` RGB, float in [0, 1] or uint8 (torch or numpy). Any size.
        masks: ``(T, H, W)`` hole masks (> 0.5 = hole), or one ``(H, W)`` mask for all frames.
        flow_downscale: flow is computed on frames shrunk by this factor (>= 1), and DIS refines it
            down to that resolution (OpenCV's medium preset alone stops at half of it: with that,
            the flow's finest level was a quarter of the frame at the default 2, and long tracks
            lost sub-pixel accuracy on fine texture). On 40 frames of bmx-trees and synthetic-0
            (squares, removal) 1 scored 0.08-0.54 dB higher hole PSNR than 2 for about 4x the flow time.
        preset: DIS preset, ``"ultrafast"``, ``"fast"`` or ``"medium"``.
        flow_mask_dilation: pixels (of the input frames) by which holes grow before the flow
            inside them is replaced by the completed flow. DIS flow is biased for about a patch
            width around a hole (the filled-in hole looks static to it), hence the default 16.
        fusion_sigma: temporal distance (frames) over which a candidate's weight falls by 1/e.
        spatial_fill_radius: radius of the Telea half of the spatial fill of never-seen pixels
            (the mean of Telea and the membrane, :func:`.fusion.spatial_fill_frame`).
        candidates_per_direction: sources kept per hole pixel in the past and in the future (>= 2).
        candidate_gap: least frame distance between a pixel's sources below the nearest one, so
            that an object covering a location for a few frames cannot fill every slot.
        fusion_tolerance: mean absolute RGB difference (in [0, 1]) within which candidates agree
            with the medoid and are averaged.
        colour_ring: width (pixels) of the ring of known pixels whose mismatch is carried into the
            hole (colour matching); 0 switches colour matching off.
        device: None for the NumPy/OpenCV path; a torch device (``"cuda"``, ``"cpu"``) runs
            tracking, fusion, matching and spatial fill with torch/kornia there.
        workers: threads for the per-frame work of the NumPy path and for the flow (frame pairs,
            the two tracking sweeps and the fusion of each frame are independent). None: OpenCV's
            thread count (``cv2.setNumThreads``; all cores by default), at most 8. The result does not
            depend on it. With more than one, OpenCV runs single-threaded while the prior's threads
            run (:func:`.parallel.opencv_serial_while`) and gets its thread count back afterwards.
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
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise RrdpoInputError(f"workers must be >= 1 (or None for OpenCV's thread count), got {workers}")
    if flow_mask_dilation < 0 or spatial_fill_radius < 1 or not fusion_sigma > 0:
        raise RrdpoInputError("flow_mask_dilation >= 0, spatial_fill_radius >= 1 and fusion_sigma > 0 are required")
    if int(candidates_per_direction) < 2 or int(candidate_gap) < 1:
        raise RrdpoInputError(f"candidates_per_direction must be >= 2 and candidate_gap >= 1, got "
                              f"{candidates_per_direction} and {candidate_gap}")
    if not 0 < fusion_tolerance <= 1 or colour_ring < 0:
        raise RrdpoInputError(f"fusion_tolerance must lie in (0, 1] and colour_ring be >= 0, got "
                              f"{fusion_tolerance} and {colour_ring}")
    settings = PriorSettings(slots=int(candidates_per_direction), gap=int(candidate_gap), sigma=float(fusion_sigma),
                             tolerance=float(fusion_tolerance), ring=int(colour_ring), radius=int(spatial_fill_radius))

    hole_count = int(holes.sum())
    if hole_count == 0:
        return PriorResult(frames=to_tensor(video), visibility=torch.ones(length, height, width),
                           stats={"hole_pixels": 0, "seen_fraction": 1.0, "seconds": time.perf_counter() - t_start},
                           source_map=torch.zeros(length, height, width, dtype=torch.uint8))
    if hole_count == holes.size:
        raise RrdpoInputError("masks: every pixel of every frame is hole, so nothing is known to propagate or "
                              "fill from; the mask must leave some background visible")

    steps = Progress(4 * length - 1, progress, cancel, "flow prior cancelled")
    steps.check()

    if length == 1:
        source = np.where(holes, np.uint8(SOURCE_SPATIAL), np.uint8(SOURCE_KNOWN))
        if device is not None:
            from .torch_path import propagate_torch
            out, source = propagate_torch(video, holes, [], [], settings, torch.device(device), steps.step)
        else:
            out = video
            spatial_fill(out, holes.copy(), None, radius=settings.radius)
        return _result(out, source, hole_count, 0.0, t_start, {})

    # 1. Flow at working resolution, both directions, completed inside the holes.
    t_flow = time.perf_counter()
    dilation = int(round(flow_mask_dilation / flow_downscale))
    with opencv_serial_while(workers > 1):
        fwd, bwd = completed_flows(video, holes, flow_downscale, preset, dilation, steps.step, workers)
    t_flow = time.perf_counter() - t_flow

    if device is not None:
        from .torch_path import propagate_torch
        out, source = propagate_torch(video, holes, fwd, bwd, settings, torch.device(device), steps.step)
        return _result(out, source, hole_count, None, t_start,
                       {"flow_seconds": t_flow, "flow_downscale": float(flow_downscale)})

    with opencv_serial_while(workers > 1):
        out, source, distance = _propagate_numpy(video, holes, fwd, bwd, settings, steps.step, workers)
    return _result(out, source, hole_count, distance, t_start,
                   {"flow_seconds": t_flow, "flow_downscale": float(flow_downscale), "workers": workers})


def _result(out: np.ndarray, source: np.ndarray, hole_count: int, distance: float | None, t_start: float,
            extra: dict) -> PriorResult:
    seen = source != SOURCE_SPATIAL
    counts = {name: int((source == code).sum()) for name, code in
              (("copied", SOURCE_COPIED), ("fused", SOURCE_FUSED), ("spatial", SOURCE_SPATIAL))}
    stats = {
        "hole_pixels": hole_count,
        "seen_fraction": float(1.0 - counts["spatial"] / hole_count),
        "copied_fraction": counts["copied"] / hole_count,
        "fused_fraction": counts["fused"] / hole_count,
        "spatial_fraction": counts["spatial"] / hole_count,
    }
    if distance is not None:
        stats["mean_source_distance"] = distance
    stats.update(extra)
    stats["seconds"] = time.perf_counter() - t_start
    return PriorResult(frames=to_tensor(out), visibility=to_tensor(seen.astype(np.float32)), stats=stats,
                       source_map=torch.from_numpy(source))


def targets_of(holes: np.ndarray, ring: int, workers: int = 1
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int]]:
    """Per frame the pixels whose sources are tracked: the hole, then half the ring (colour matching)."""

    def one(hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = np.nonzero(hole)
        if ring > 0 and len(ys):
            rys, rxs = np.nonzero(ring_samples(ring_of(hole, ring)))
            ys, xs = np.concatenate([ys, rys]), np.concatenate([xs, rxs])
        return ys, xs

    targets = list(ordered_map(one, holes, workers))
    return targets, [int(np.count_nonzero(hole)) for hole in holes]


def candidate_table(sampler: KnownSampler, curve: np.ndarray, t: int, sigma: float, shape: tuple[int, ...],
                    at: np.ndarray, f: np.ndarray, x: np.ndarray, y: np.ndarray, agree: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The colours ``shape + (3,)`` and weights ``shape`` of a candidate table for frame ``t``.

    The sources ``(f, x, y)`` go to the entries ``at`` (an index or mask into ``shape``); the other
    entries stay empty (weight 0). Each source is read from the known pixels of its frame, brought
    to frame ``t``'s exposure (``curve``, :func:`.motion.exposure_curve`) and weighs by its temporal
    distance (1/e at ``sigma`` frames) times ``agree``, its motion check; a source on no known
    pixel weighs 0. Also returns the sampler's ``ok`` per source.
    """
    sampled, ok = sampler.sample(f, x, y)
    colours = np.zeros(shape + (3,), np.float32)
    weights = np.zeros(shape, np.float32)
    # The gain of every frame relative to frame t, then one gather (not one exp per source).
    scatter_rows(colours, at, sampled * np.exp(curve[t] - curve).take(f, axis=0))
    weights[at] = np.where(ok, np.exp(-np.abs(f - t) / sigma) * agree, 0.0)
    return colours, weights, ok


def _propagate_numpy(video: np.ndarray, holes: np.ndarray, fwd, bwd, cfg: PriorSettings,
                     step: Callable[[], None], workers: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
    """Steps 2-5 with NumPy and OpenCV; writes into ``video`` inside the holes only.

    The two tracking sweeps run side by side, then the frames are fused on ``workers`` threads:
    frame ``t`` writes only its own hole pixels and reads only known pixels (and its own), and the
    spatial fill of frame ``t`` follows as soon as frames ``t - 1`` and ``t`` are fused.
    """
    length, height, width = holes.shape
    targets, hole_counts = targets_of(holes, cfg.ring, workers)
    sweep = dict(slots=cfg.slots, gap=cfg.gap, step=step)
    # Five independent jobs, the two sweeps (the longest) first.
    jobs = [lambda: track_sources(holes, fwd, bwd, targets, forward=True, **sweep),
            lambda: track_sources(holes, fwd, bwd, targets, forward=False, **sweep),
            lambda: motion_check_stack(fwd, bwd, towards_past=True),
            lambda: motion_check_stack(fwd, bwd, towards_past=False),
            lambda: exposure_curve(video, holes, fwd)]
    past, future, check_past, check_future, curve = ordered_map(lambda job: job(), jobs, workers)
    checks = (check_past, check_future)
    # ``video`` is read only outside the holes and written only inside them, so one array
    # serves as both the source of propagation and the output.
    out = video
    source = np.where(holes, np.uint8(SOURCE_SPATIAL), np.uint8(SOURCE_KNOWN))  # uint8 at once
    unseen = holes.copy()
    sampler = KnownSampler(video, holes)  # shared by the threads (its frame cache is locked)
    later: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # uncertain never-seen pixels, Telea's fill

    def fill(t: int) -> tuple[float, int]:
        ys, xs = targets[t]
        n_hole = hole_counts[t]
        if not n_hole:
            return 0.0, 0
        src_frame = np.concatenate([past[t].frame, future[t].frame])
        n_all = src_frame.shape[1]
        # The candidates as flat indices into (2 * slots, N): one ``take`` per array instead of
        # several boolean selections of the whole candidate table.
        flat_f = src_frame.ravel()
        idx = np.flatnonzero((flat_f >= 0) & (flat_f != t))  # a ring pixel's own frame is not a source
        f_v = flat_f.take(idx)
        x_v = np.concatenate([past[t].x, future[t].x]).ravel().take(idx)
        y_v = np.concatenate([past[t].y, future[t].y]).ravel().take(idx)
        # Each source weighs by how well its motion is the background's (past sources on the
        # motion towards the past, future ones towards the future).
        cut = int(np.searchsorted(idx, cfg.slots * n_all))
        agree = np.concatenate([
            motion_agreement(checks[0], (height, width), f_v[:cut], x_v[:cut], y_v[:cut]),
            motion_agreement(checks[1], (height, width), f_v[cut:], x_v[cut:], y_v[cut:])])
        colours, weights, ok = candidate_table(sampler, curve, t, cfg.sigma, (src_frame.size,), idx, f_v, x_v, y_v,
                                               agree)
        colours = colours.reshape(src_frame.shape + (3,))
        weights = weights.reshape(src_frame.shape)
        fused, count = fuse_candidates(colours, weights, cfg.tolerance)
        hole_fused, hole_count_ = fused[:n_hole], count[:n_hole]
        got = hole_count_ > 0
        if cfg.ring > 0:
            offset = colour_offset(video[t], holes[t], ys[n_hole:], xs[n_hole:], fused[n_hole:],
                                   count[n_hole:] > 0)
            if offset is not None:
                hole_fused = hole_fused + offset[ys[:n_hole], xs[:n_hole]]
        # The object's tracks reach as far as a background list does at its sparsest (slots entries
        # gap frames apart).
        obj = object_sources(holes, fwd, bwd, checks, t, ys, xs, cfg.slots, cfg.slots * cfg.gap)
        if obj is not None:
            # Where a moving object straddles the hole's border, the hole pixels it continues into
            # are filled from the object's own sources (it is in front of the background).
            has = obj.frame >= 0
            o_colours, o_weights, _ = candidate_table(sampler, curve, t, cfg.sigma, obj.frame.shape, has,
                                                      obj.frame[has], obj.x[has], obj.y[has], obj.agree[has])
            o_fused, o_count = fuse_candidates(o_colours, o_weights, cfg.tolerance)
            zy, zx = ys[obj.index], xs[obj.index]
            own, background, background_ok = video[t, zy, zx], fused[obj.index], count[obj.index] > 0
            is_ring = obj.index >= n_hole
            on = object_pixels(o_colours, o_weights, o_fused, own, background, background_ok, is_ring, zy, zx,
                               holes[t], cfg.slots, cfg.tolerance)
            unsure = uncertain_pixels(o_colours, o_weights, own, background, background_ok, is_ring, zy, zx, holes[t],
                                      on, cfg.slots)
            if unsure.any():
                # The object may or may not continue there: the mean of the background's colour (or
                # of the spatial fill, below, where no frame saw the pixel) and the border's (Telea),
                # whose errors are independent, errs less than either alone.
                at = obj.index[unsure]
                telea = telea_at(video[t], holes[t], zy[unsure], zx[unsure], cfg.radius)
                seen = background_ok[unsure]
                hole_fused[at[seen]] = 0.5 * (hole_fused[at[seen]] + telea[seen])
                if not seen.all():
                    later[t] = (zy[unsure][~seen], zx[unsure][~seen], telea[~seen])
            hole_fused[obj.index[on]] = o_fused[on]
            hole_count_[obj.index[on]] = o_count[on]
            got[obj.index[on]] = True
        hy, hx = ys[:n_hole][got], xs[:n_hole][got]
        out[t, hy, hx] = np.clip(hole_fused[got], 0.0, 1.0)
        source[t, hy, hx] = np.where(hole_count_[got] > 1, SOURCE_FUSED, SOURCE_COPIED)
        unseen[t, hy, hx] = False
        col = idx % n_all
        used = ok & (col < n_hole)
        used[used] = got[col[used]]
        return float(np.abs(f_v[used] - t).sum()), int(used.sum())

    distance_sum, distance_count = 0.0, 0
    # Frames come back in order, so each one's spatial fill (which needs the frame before it
    # final) runs here while the threads fuse the frames after it.
    for t, (frame_sum, frame_count) in enumerate(ordered_map(fill, range(length), workers)):
        distance_sum += frame_sum
        distance_count += frame_count
        spatial_fill_step(out, unseen, bwd, t, radius=cfg.radius)
        step()
    # Uncertain object pixels that no frame saw: the mean of their spatial fill and Telea's. After
    # every frame's spatial fill, which carries the frame before along the flow without this mean.
    for t, (hy, hx, telea) in later.items():
        out[t, hy, hx] = 0.5 * (out[t, hy, hx] + telea)
    return out, source, distance_sum / max(1, distance_count)
