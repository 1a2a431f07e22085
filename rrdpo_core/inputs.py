"""The sampler's inputs: checked frames, holes and prior, and padding to the VAE's 8-pixel grid.

Conventions: frames ``(T, H, W, 3)`` float in [0, 1] (or uint8), torch or numpy; masks
``(T, H, W)`` with 1 = hole (one ``(H, W)`` mask may serve all frames).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from .errors import RrdpoInputError
from .video_io import as_frames, as_masks

__all__ = ["LATENT_SCALE", "VideoInputs", "check_inputs", "pad_to_multiple"]

logger = logging.getLogger(__name__)

LATENT_SCALE = 8  # SD1.5 VAE: one latent cell per 8x8 pixels


@dataclass
class VideoInputs:
    """Checked inputs on the CPU: ``frames`` float32 (T, H, W, 3) in [0, 1], ``holes`` bool (T, H, W),
    ``prior`` like ``frames`` or None."""

    frames: torch.Tensor
    holes: torch.Tensor
    prior: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def check_inputs(frames: Any, masks: Any, prior_frames: Any = None, multiple: int | None = LATENT_SCALE) -> VideoInputs:
    """Validate frames, masks and prior; raise :class:`RrdpoInputError` (a ValueError) saying how to fix them.

    Frames and masks must agree in count and size (one mask may serve all frames). A prior of
    another size is resized to the frames (bilinear, antialiased): a ProPainter prior often comes
    at a reduced size. With ``multiple`` set, H and W must be multiples of it.
    """
    video = torch.from_numpy(as_frames(frames, "frames"))
    length, height, width = video.shape[:3]
    holes = torch.from_numpy(as_masks(masks, length, height, width, "masks"))
    prior = None
    if prior_frames is not None:
        prior = torch.from_numpy(as_frames(prior_frames, "prior_frames"))
        if prior.shape[0] != length:
            raise RrdpoInputError(f"prior_frames: got {prior.shape[0]} prior frames for {length} frames; "
                                  "make the prior from the same frames")
        if tuple(prior.shape[1:3]) != (height, width):
            logger.info("resizing the prior from %sx%s to the frame size %sx%s",
                        prior.shape[2], prior.shape[1], width, height)
            resized = F.interpolate(rearrange(prior, "t h w c -> t c h w"), size=(height, width), mode="bilinear",
                                    align_corners=False, antialias=True).clamp(0, 1)
            prior = rearrange(resized, "t c h w -> t h w c").contiguous()
    if multiple and (height % multiple or width % multiple):
        raise RrdpoInputError(
            f"frames are {width}x{height} (WxH); DiffuEraser needs both sides to be multiples of {multiple} (the VAE "
            f"works on {multiple}x{multiple} cells). Pad them with rrdpo_core.inputs.pad_to_multiple (remove_objects "
            f"does this and crops back), or resize/crop to {width - width % multiple}x{height - height % multiple}")
    return VideoInputs(video, holes, prior)


def pad_to_multiple(inputs: VideoInputs, multiple: int = LATENT_SCALE) -> tuple[VideoInputs, tuple[int, int]]:
    """Pad frames (reflected), prior and masks (as known) at the bottom/right to multiples of ``multiple``.

    Returns the padded inputs and the original ``(H, W)``; crop results with ``[:, :H, :W]``.
    Padding keeps every input pixel as it is, unlike the released code's resize.
    """
    height, width = inputs.size
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return inputs, (height, width)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"

    def pad_video(video: torch.Tensor) -> torch.Tensor:
        padded = F.pad(rearrange(video, "t h w c -> t c h w"), (0, pad_w, 0, pad_h), mode=mode)
        return rearrange(padded, "t c h w -> t h w c").contiguous()

    holes = F.pad(inputs.holes, (0, pad_w, 0, pad_h), value=False)
    prior = pad_video(inputs.prior) if inputs.prior is not None else None
    return VideoInputs(pad_video(inputs.frames), holes, prior), (height, width)
