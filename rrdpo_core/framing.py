"""Fitting clips and masks to each other before the model sees them.

Nodes get frames and masks from many sources (a video loader, a single mask image, a mask video
at another size). These helpers make them agree and say, in words, what they changed, so a node
can show the user that a mask was stretched or a clip was shortened instead of doing it silently:

* :func:`fit_mask` - one mask for all frames or one per frame, resized to the frame size.
* :func:`trim_resize_clip` - a frame range and a size cap (never upscaling), with the mask along.
* :func:`pad_for_model` / :meth:`PaddedClip.crop` - reflect-pad to multiples of 8 for the VAE and
  crop the result back, as :func:`rrdpo_core.api.remove_objects` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import RrdpoInputError

__all__ = ["MaskFit", "fit_mask", "ClipResult", "trim_resize_clip", "PaddedClip", "pad_for_model", "resize_mask"]


def _as_mask_stack(mask: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise RrdpoInputError(f"{name}: expected a MASK tensor [frames, H, W], got {type(mask).__name__}")
    m = mask.detach()
    if m.ndim == 4 and m.shape[-1] in (1, 3, 4):  # an IMAGE wired where a MASK was meant
        m = m.amax(dim=-1)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[0] == 0:
        raise RrdpoInputError(f"{name}: expected a mask [frames, H, W] (or one [H, W]), got shape {tuple(mask.shape)}")
    return m.float().cpu()


def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Binary ``(T, h, w)`` -> binary ``(T, height, width)``.

    Shrinking uses area averaging then > 0.5 (thin parts survive in proportion to their coverage);
    enlarging uses nearest neighbour, which keeps the edges hard.
    """
    if tuple(mask.shape[1:]) == (height, width):
        return (mask > 0.5).float()
    src = (mask > 0.5).float()[:, None]
    shrinking = height * width < mask.shape[1] * mask.shape[2]
    out = F.interpolate(src, size=(height, width), mode="area" if shrinking else "nearest")
    return (out[:, 0] > 0.5).float()


@dataclass
class MaskFit:
    """A mask made to fit a clip: ``mask`` float (T, H, W) of 0/1, and what was done to it."""

    mask: torch.Tensor
    notes: list[str] = field(default_factory=list)

    @property
    def report(self) -> str:
        return "; ".join(self.notes)


def fit_mask(mask: torch.Tensor, length: int, height: int, width: int, name: str = "mask") -> MaskFit:
    """Make ``mask`` one binary mask per frame at ``height`` x ``width``.

    One mask (``(H, W)`` or ``(1, H, W)``) serves every frame; otherwise the count must equal
    ``length``. A mask at another size is resized (see :func:`resize_mask`) and the note says so.
    """
    m = _as_mask_stack(mask, name)
    if not torch.isfinite(m).all():
        raise RrdpoInputError(f"{name}: contains NaN or infinite values; pass a 0/1 hole mask")
    notes = []
    count = m.shape[0]
    if count not in (1, length):
        raise RrdpoInputError(f"{name}: got {count} mask frames for {length} frames; pass one mask per frame or a "
                              "single mask for all frames (trim both with the same Trim & Resize Clip node)")
    if (m.shape[1], m.shape[2]) != (height, width):
        notes.append(f"{name} resized from {m.shape[2]}x{m.shape[1]} to the frame size {width}x{height}")
        m = resize_mask(m, height, width)
    else:
        m = (m > 0.5).float()
    if count == 1 and length > 1:
        notes.append(f"one {name} used for all {length} frames")
        m = m.expand(length, -1, -1).contiguous()
    return MaskFit(m, notes)


@dataclass
class ClipResult:
    """Output of :func:`trim_resize_clip`: frames (T, H, W, C), mask (T, H, W) and a report line."""

    images: torch.Tensor
    mask: torch.Tensor
    report: str


_RESIZE_CHUNK = 8


def _check_int(value: int, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise RrdpoInputError(f"{name}: must be an integer >= {low}, got {value!r}")
    return int(value)


def _target_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    if max_side == 0 or max(height, width) <= max_side:
        return height, width  # never upscale
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def trim_resize_clip(images: torch.Tensor, start_frame: int = 0, max_frames: int = 150, max_side: int = 960,
                     mask: torch.Tensor | None = None) -> ClipResult:
    """Keep frames ``start_frame .. start_frame + max_frames`` (0 = to the end) and shrink so the longer
    side is at most ``max_side`` (0 = keep size), keeping the aspect ratio and never upscaling.

    ``mask`` (one for all frames, or one per input frame) follows: the same frames, resized to the
    output size (area then > 0.5 when shrinking, nearest when enlarging). Without a mask the output
    mask is all zeros.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        raise RrdpoInputError(f"images: expected an IMAGE [frames, H, W, C], got "
                              f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    start_frame = _check_int(start_frame, "start_frame")
    max_frames = _check_int(max_frames, "max_frames")
    max_side = _check_int(max_side, "max_side")
    total, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    if start_frame >= total:
        raise RrdpoInputError(f"start_frame: {start_frame} is past the end of the clip ({total} frames, 0-based); "
                              f"choose a start below {total}")
    stop = total if max_frames == 0 else min(total, start_frame + max_frames)
    frames = images[start_frame:stop]
    new_h, new_w = _target_size(height, width, max_side)

    notes = [f"frames {start_frame}-{stop - 1} of {total} ({stop - start_frame} kept)"]
    if (new_h, new_w) != (height, width):
        out = torch.empty(frames.shape[0], new_h, new_w, frames.shape[3], dtype=torch.float32)
        for i in range(0, frames.shape[0], _RESIZE_CHUNK):  # in chunks: a long full-HD clip is GBs as float
            pixels = frames[i:i + _RESIZE_CHUNK].float().movedim(-1, 1)
            pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
            out[i:i + _RESIZE_CHUNK] = pixels.clamp(0, 1).movedim(1, -1)
        frames = out
        notes.append(f"resized {width}x{height} -> {new_w}x{new_h}")
    else:
        notes.append(f"size kept {width}x{height}")

    if mask is None:
        out_mask = torch.zeros(frames.shape[0], new_h, new_w)
        notes.append("no mask given (mask output is empty)")
    else:
        m = _as_mask_stack(mask, "mask")
        if m.shape[0] == 1:
            m = m.expand(frames.shape[0], -1, -1)
            notes.append("one mask used for all frames")
        elif m.shape[0] == total:
            m = m[start_frame:stop]
        else:
            raise RrdpoInputError(f"mask: got {m.shape[0]} mask frames for a clip of {total}; pass one mask per "
                                  "input frame (before trimming) or a single mask for all frames")
        if tuple(m.shape[1:]) != (new_h, new_w):
            notes.append(f"mask resized {m.shape[2]}x{m.shape[1]} -> {new_w}x{new_h}")
        out_mask = resize_mask(m, new_h, new_w).contiguous()
    return ClipResult(frames, out_mask, "; ".join(notes))


@dataclass
class PaddedClip:
    """Frames, mask and prior padded for the model; :meth:`crop` undoes the padding on a result."""

    frames: torch.Tensor  # (T, H8, W8, 3) float in [0, 1]
    mask: torch.Tensor  # (T, H8, W8) float 0/1
    prior: torch.Tensor | None
    size: tuple[int, int]  # the original (H, W)
    notes: list[str] = field(default_factory=list)

    @property
    def padded(self) -> bool:
        return tuple(self.frames.shape[1:3]) != self.size

    def crop(self, video: torch.Tensor) -> torch.Tensor:
        """``video[:, :H, :W]`` for results at the padded size."""
        height, width = self.size
        return video[:, :height, :width]

    @property
    def report(self) -> str:
        return "; ".join(self.notes) if self.notes else "nothing to adjust"


def pad_for_model(frames: torch.Tensor, mask: torch.Tensor, prior: torch.Tensor | None = None,
                  multiple: int = 8) -> PaddedClip:
    """Check and fit the inputs of the sampler, then pad them like :func:`rrdpo_core.api.remove_objects`.

    The mask is fitted with :func:`fit_mask` (one for all frames; resized if its size differs);
    sides that are not multiples of ``multiple`` are reflect-padded at the bottom/right (the hole
    mask with zeros), so every input pixel stays as it is. Crop results with :meth:`PaddedClip.crop`.
    """
    from .inputs import check_inputs, pad_to_multiple

    if not isinstance(frames, torch.Tensor) or frames.ndim != 4:
        raise RrdpoInputError("images: expected an IMAGE [frames, H, W, C]")
    length, height, width = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    fit = fit_mask(mask, length, height, width)
    inputs = check_inputs(frames[..., :3], fit.mask, prior[..., :3] if prior is not None else None, multiple=None)
    padded, _ = pad_to_multiple(inputs, multiple)
    notes = list(fit.notes)
    if padded.size != (height, width):
        notes.append(f"frames {width}x{height} padded (reflected) to {padded.size[1]}x{padded.size[0]} for the model "
                     f"(multiples of {multiple}) and cropped back")
    return PaddedClip(padded.frames, padded.holes.float(), padded.prior, (height, width), notes)
