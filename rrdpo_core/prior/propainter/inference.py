"""The ProPainter prior: RAFT flow -> flow completion -> image propagation -> sparse transformer.

This is the inference procedure of ProPainter's ``inference_propainter.py`` (and of DiffuEraser's
copy of it, which adds a sparse pre-propagation pass for long clips), reorganised so that memory
stays bounded on long videos: every per-video tensor lives on ``storage_device`` (CPU by default)
and only one chunk at a time is moved to the networks' device:

1. optical flow between consecutive frames, in chunks of 12/8/4/2 frames by frame size (RAFT runs
   in float32, ``raft_iter`` refinement steps);
2. flow completion inside the (dilated) holes, over sub-videos of ``subvideo_length`` flows with 5
   flows of context either side;
3. image propagation of known pixels along the completed flows, over sub-videos of
   ``min(100, subvideo_length)`` frames with 10 frames of context either side;
4. the generator on sliding windows: ``neighbor_length + 1`` local frames every
   ``neighbor_length // 2`` frames, plus every ``ref_stride``-th frame as reference (only the
   ``subvideo_length // ref_stride`` nearest when the clip is longer than ``subvideo_length``);
   frames covered by two windows get 0.5 / 0.5 of both results.

Deviations from the original, all deliberate: the result stays in float (no uint8 rounding per
window, no lossy video file), the composite is done at the input resolution so pixels outside the
hole are returned exactly, and frame sizes that are not multiples of 8 are resized for processing
and back (as the original) but with the hole mask kept at full resolution.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import RrdpoInputError
from ...progress import CancelFn, Progress, ProgressFn
from ...video_io import as_frames, as_masks
from ..flow import PriorResult
from .checkpoints import ProPainterModels

__all__ = ["propainter_prior", "PROPAINTER_DEFAULTS", "DIFFUERASER_SETTINGS", "processing_size",
           "dilate_masks", "reference_indices"]

# inference_propainter.py's command-line defaults.
PROPAINTER_DEFAULTS: dict = {
    "mask_dilation": 4, "neighbor_length": 10, "ref_stride": 10, "subvideo_length": 80, "raft_iter": 20,
    "resize_ratio": 1.0, "max_side": None, "pre_propagation": False,
}
# What DiffuEraser's run_diffueraser.py passes to its ProPainter copy (mask_dilation_iter 8,
# subvideo_length 50, its resize_ratio 0.6 with a 960-pixel cap, and the sparse pre-pass).
DIFFUERASER_SETTINGS: dict = {
    "mask_dilation": 8, "neighbor_length": 10, "ref_stride": 10, "subvideo_length": 50, "raft_iter": 20,
    "resize_ratio": 0.6, "max_side": 960, "pre_propagation": True,
}


MIN_SIDE = 64          # smallest working size RAFT's correlation pyramid supports
_FLOW_CONTEXT = 5      # flows of context around each flow-completion sub-video
_PROPAGATION_CONTEXT = 10  # frames of context around each image-propagation sub-video


def processing_size(height: int, width: int, resize_ratio: float = 1.0, max_side: int | None = None) -> tuple[int, int]:
    """Working size: scaled by ``resize_ratio`` (and down to ``max_side``), floored to multiples of 8."""
    ratio = float(resize_ratio)
    if max_side is not None and max(height, width) > max_side:
        ratio *= max_side / max(height, width)
    h, w = (height, width) if ratio == 1.0 else (int(ratio * height), int(ratio * width))
    return h - h % 8, w - w % 8


def dilate_masks(masks: torch.Tensor, iterations: int) -> torch.Tensor:
    """Binary dilation with the 4-neighbour cross, ``iterations`` times (scipy's default element).

    ``masks`` (N, 1, H, W) in {0, 1}; outside the frame counts as 0.
    """
    m = masks
    for _ in range(int(iterations)):
        p = F.pad(m, (1, 1, 1, 1))
        m = torch.stack([m, p[..., :-2, 1:-1], p[..., 2:, 1:-1], p[..., 1:-1, :-2], p[..., 1:-1, 2:]]).amax(0)
    return m


def reference_indices(mid: int, neighbors: list[int], length: int, ref_stride: int = 10,
                      ref_num: int = -1) -> list[int]:
    """Global reference frames of a window (every ``ref_stride``-th frame outside the window).

    With ``ref_num >= 0`` only frames within ``ref_stride * (ref_num // 2)`` of ``mid`` are taken
    (the original's loop admits up to ``ref_num + 1`` of them; kept for fidelity).
    """
    if ref_num == -1:
        return [i for i in range(0, length, ref_stride) if i not in neighbors]
    refs: list[int] = []
    start = max(0, mid - ref_stride * (ref_num // 2))
    end = min(length, mid + ref_stride * (ref_num // 2))
    for i in range(start, end, ref_stride):
        if i not in neighbors:
            if len(refs) > ref_num:
                break
            refs.append(i)
    return refs


def _chunks_with_context(length: int, size: int, context: int) -> list[tuple[int, int, int, int]]:
    """(start, end, keep_from, keep_to) sub-ranges of ``size`` with ``context`` either side."""
    if length <= size:
        return [(0, length, 0, length)]
    out = []
    for f in range(0, length, size):
        s, e = max(0, f - context), min(length, f + size + context)
        out.append((s, e, f - s, min(length, f + size) - s))
    return out


def _raft_chunk_len(height: int, width: int) -> int:
    longer = max(height, width)
    return 12 if longer <= 640 else 8 if longer <= 720 else 4 if longer <= 1280 else 2


def _raft_ranges(length: int, chunk: int) -> list[tuple[int, int]]:
    """Frame ranges for flow estimation; consecutive ranges share one frame so no pair is lost."""
    if length <= chunk:
        return [(0, length)]
    return [(max(0, f - 1), min(length, f + chunk)) for f in range(0, length, chunk)]


@dataclass
class _Context:
    models: ProPainterModels
    device: torch.device
    dtype: torch.dtype
    storage: torch.device
    raft_iter: int
    raft_chunk: int
    subvideo_length: int
    steps: Progress

    def to_device(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return x.to(self.device, dtype or self.dtype, non_blocking=True)

    def to_storage(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.storage, self.dtype)


def _flows(ctx: _Context, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward / backward flows (T-1, 2, H, W) of frames (T, 3, H, W) in [-1, 1]."""
    fwd, bwd = [], []
    for s, e in _raft_ranges(frames.shape[0], ctx.raft_chunk):
        ctx.steps.check()
        f, b = ctx.models.raft.bidirectional(ctx.to_device(frames[s:e], torch.float32), ctx.raft_iter)
        fwd.append(ctx.to_storage(f))
        bwd.append(ctx.to_storage(b))
        ctx.steps.advance()
    return torch.cat(fwd), torch.cat(bwd)


def _complete(ctx: _Context, fwd: torch.Tensor, bwd: torch.Tensor, masks: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    out_f, out_b = [], []
    for s, e, k0, k1 in _chunks_with_context(fwd.shape[0], ctx.subvideo_length, _FLOW_CONTEXT):
        ctx.steps.check()
        f, b = ctx.models.flow_completion.complete(
            ctx.to_device(fwd[s:e])[None], ctx.to_device(bwd[s:e])[None], ctx.to_device(masks[s:e + 1])[None])
        out_f.append(ctx.to_storage(f[0, k0:k1]))
        out_b.append(ctx.to_storage(b[0, k0:k1]))
        ctx.steps.advance()
    return torch.cat(out_f), torch.cat(out_b)


def _propagate(ctx: _Context, frames: torch.Tensor, masks: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Image propagation: returns (frames with propagated pixels, mask of pixels still unknown)."""
    size = min(100, ctx.subvideo_length)
    out_frames, out_masks = [], []
    for s, e, k0, k1 in _chunks_with_context(frames.shape[0], size, _PROPAGATION_CONTEXT):
        ctx.steps.check()
        x, m = ctx.to_device(frames[s:e]), ctx.to_device(masks[s:e])
        prop, still = ctx.models.generator.img_propagation(
            (x * (1 - m))[None], ctx.to_device(fwd[s:e - 1])[None], ctx.to_device(bwd[s:e - 1])[None], m[None],
            "nearest")
        filled = x * (1 - m) + prop[0] * m
        out_frames.append(ctx.to_storage(filled[k0:k1]))
        out_masks.append(ctx.to_storage(still[0, k0:k1]))
        ctx.steps.advance()
    return torch.cat(out_frames), torch.cat(out_masks)


def _count_steps(length: int, raft_chunk: int, subvideo_length: int) -> int:
    return (len(_raft_ranges(length, raft_chunk))
            + len(_chunks_with_context(length - 1, subvideo_length, _FLOW_CONTEXT))
            + len(_chunks_with_context(length, min(100, subvideo_length), _PROPAGATION_CONTEXT)))


def propainter_prior(
    frames: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    models: ProPainterModels,
    *,
    mask_dilation: int = 4,
    neighbor_length: int = 10,
    ref_stride: int = 10,
    subvideo_length: int = 80,
    raft_iter: int = 20,
    resize_ratio: float = 1.0,
    max_side: int | None = None,
    pre_propagation: bool = False,
    raft_chunk: int | None = None,
    storage_device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> PriorResult:
    """Inpaint ``frames`` inside ``masks`` with ProPainter; the prior for DiffuEraser.

    Args:
        frames: (T, H, W, 3) RGB in [0, 1] (float) or uint8, T >= 2, torch or numpy.
        masks: (T, H, W) or one (H, W) mask for all frames; hole where > 0.5 (uint8: > 127), the
            library's convention (:func:`rrdpo_core.video_io.as_masks`).
        models: from :func:`load_propainter`.
        mask_dilation: cross-shaped dilation steps applied to the holes (flow and pixel masks).
        neighbor_length: local window length; windows start every ``neighbor_length // 2`` frames.
        ref_stride: stride of the global reference frames.
        subvideo_length: sub-video length for flow completion (and, capped at 100, for image
            propagation); also limits the reference frames on clips longer than this.
        raft_iter: RAFT refinement iterations.
        resize_ratio, max_side: optional downscaling for processing (the output is returned at the
            input size); the working size is always floored to multiples of 8.
        pre_propagation: DiffuEraser's extra image-propagation pass over evenly sampled frames
            on clips longer than ``min(100, subvideo_length)`` frames.
        raft_chunk: frames per RAFT call (memory only; default by frame size as the original).
        storage_device: where whole-video intermediates live (CPU keeps accelerator memory bounded).
        progress: called as ``progress(done, total)`` after each chunk / window.
        cancel: polled between chunks; returning True raises ``Cancelled``.
    Raises:
        RrdpoInputError: bad shapes or settings, fewer than 2 frames, a working size under 64 px,
            or a mask that covers everything.
        Cancelled: ``cancel()`` returned True.
    Returns:
        PriorResult with ``frames`` (T, H, W, 3) float32 in [0, 1] (input pixels outside the
        dilated hole) and ``visibility`` (T, H, W) float32: 1 where the pixel is known or was
        propagated from another frame along the flow, 0 where the transformer synthesised it;
        ``stats`` with ``hole_pixels``, ``seen_fraction``, ``working_size`` and ``seconds``.
        An all-zero mask returns the input at once. Presets: ``PROPAINTER_DEFAULTS`` (the
        signature defaults) and ``DIFFUERASER_SETTINGS``.
    """
    t_start = time.perf_counter()
    video = torch.from_numpy(as_frames(frames))
    length, height, width = video.shape[:3]
    holes = torch.from_numpy(as_masks(masks, length, height, width))
    if neighbor_length < 2:
        raise RrdpoInputError(f"neighbor_length must be >= 2, got {neighbor_length}")
    if ref_stride < 1 or subvideo_length < 2 or raft_iter < 1 or mask_dilation < 0:
        raise RrdpoInputError("ref_stride >= 1, subvideo_length >= 2, raft_iter >= 1 and mask_dilation >= 0 "
                              "are required")
    if not resize_ratio > 0 or (max_side is not None and max_side < MIN_SIDE):
        raise RrdpoInputError(f"resize_ratio must be > 0 and max_side >= {MIN_SIDE} (got {resize_ratio}, {max_side})")
    hole_count = int(holes.sum())
    if hole_count == 0:
        return PriorResult(frames=video, visibility=torch.ones(length, height, width),
                           stats={"hole_pixels": 0, "seen_fraction": 1.0, "seconds": time.perf_counter() - t_start})
    if hole_count == holes.numel():
        raise RrdpoInputError("masks: every pixel of every frame is hole, so there is nothing to propagate from; "
                              "the mask must leave some background visible")
    if length < 2:
        raise RrdpoInputError(f"ProPainter needs at least 2 frames (it propagates along optical flow); got {length}. "
                              "Use the flow prior for single images.")
    ph, pw = processing_size(height, width, resize_ratio, max_side)
    if ph < MIN_SIDE or pw < MIN_SIDE:
        # RAFT pools its 1/8-resolution correlation volume three times.
        raise RrdpoInputError(f"working size {ph}x{pw} is too small; ProPainter needs at least {MIN_SIDE}x{MIN_SIDE} "
                              f"(frames are {height}x{width}, resize_ratio {resize_ratio}, max_side {max_side})")

    device, dtype = models.device, models.dtype
    storage = torch.device(storage_device)
    chunk = int(raft_chunk) if raft_chunk else _raft_chunk_len(ph, pw)
    if chunk < 2:
        raise RrdpoInputError(f"raft_chunk must be >= 2, got {raft_chunk}")

    # Working-size frames in [0, 1] and dilated holes.
    rgb = video.permute(0, 3, 1, 2)
    hole = holes[:, None].float()
    resized = (ph, pw) != (height, width)
    if resized:
        rgb = F.interpolate(rgb, size=(ph, pw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        hole = F.interpolate(hole, size=(ph, pw), mode="nearest-exact")
    hole = dilate_masks(hole, mask_dilation)

    neighbor_stride = neighbor_length // 2
    windows = list(range(0, length, neighbor_stride))
    img_chunk = min(100, subvideo_length)
    sampled = list(range(0, length, length // (img_chunk // 2))) if pre_propagation and length > img_chunk else []
    total = _count_steps(length, chunk, subvideo_length) + len(windows)
    if len(sampled) >= 2:
        total += _count_steps(len(sampled), chunk, subvideo_length)
    steps = Progress(max(1, total), progress, cancel, "ProPainter prior cancelled")
    ctx = _Context(models, device, dtype, storage, int(raft_iter), chunk, int(subvideo_length), steps)

    # no_grad rather than inference_mode: callers may feed the prior into autograd code later.
    with torch.no_grad():
        x = ctx.to_storage(rgb * 2 - 1)
        m = ctx.to_storage(hole)
        fwd, bwd = _complete(ctx, *_flows(ctx, x), m)

        masks_for_propagation = m
        if len(sampled) >= 2:
            # DiffuEraser: propagate first among evenly spaced frames, which are far apart in time,
            # so content from distant frames reaches the holes; then the frame-by-frame pass.
            idx = torch.tensor(sampled)
            s_fwd, s_bwd = _complete(ctx, *_flows(ctx, x[idx]), m[idx])
            s_frames, s_masks = _propagate(ctx, x[idx], m[idx], s_fwd, s_bwd)
            x, masks_for_propagation = x.clone(), m.clone()
            x[idx], masks_for_propagation[idx] = s_frames, s_masks
        filled, unknown = _propagate(ctx, x, masks_for_propagation, fwd, bwd)

        ref_num = subvideo_length // ref_stride if length > subvideo_length else -1
        original = rgb.to(storage, torch.float32)
        hole_f = hole.to(storage, torch.float32)
        result = torch.empty(length, 3, ph, pw, device=storage, dtype=torch.float32)
        written = torch.zeros(length, dtype=torch.bool)
        for f in windows:
            steps.check()
            nbr = list(range(max(0, f - neighbor_stride), min(length, f + neighbor_stride + 1)))
            ids = nbr + reference_indices(f, nbr, length, ref_stride, ref_num)
            pred = models.generator(
                ctx.to_device(filled[ids])[None],
                ctx.to_device(fwd[nbr[:-1]])[None], ctx.to_device(bwd[nbr[:-1]])[None],
                ctx.to_device(masks_for_propagation[ids])[None], ctx.to_device(unknown[ids])[None], len(nbr))
            pred = ((pred[0].float() + 1) / 2).to(storage)
            comp = pred * hole_f[nbr] + original[nbr] * (1 - hole_f[nbr])
            for j, i in enumerate(nbr):
                result[i] = 0.5 * result[i] + 0.5 * comp[j] if written[i] else comp[j]
                written[i] = True
            steps.advance()

        unknown = unknown.to(storage, torch.float32)
        if resized:
            # Back to the input size; the composite uses the full-resolution hole so that pixels
            # outside it are the input's exactly.
            result = F.interpolate(result, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)
            unknown = F.interpolate(unknown, size=(height, width), mode="nearest-exact")
            hole_full = torch.maximum(F.interpolate(hole_f, size=(height, width), mode="nearest-exact"),
                                      holes[:, None].to(storage, torch.float32))
            rgb_full = video.permute(0, 3, 1, 2).to(storage)
            result = rgb_full * (1 - hole_full) + result * hole_full
            unknown = unknown * hole_full

    out = result.permute(0, 2, 3, 1).contiguous().cpu()
    visibility = (1 - unknown[:, 0]).contiguous().cpu()
    stats = {
        "hole_pixels": hole_count,
        "seen_fraction": float(visibility[holes].mean()),
        "working_size": (ph, pw),
        "seconds": time.perf_counter() - t_start,
    }
    return PriorResult(frames=out, visibility=visibility, stats=stats)
