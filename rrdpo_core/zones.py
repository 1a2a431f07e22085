"""Three-zone decomposition of a hole mask: hole, boundary band, context (spec/METHOD.md §1).

The zones are an exact, binary partition of every pixel of every frame::

    hole     = M
    boundary = dilate(M, disk(k)) - M
    context  = 1 - hole - boundary

The gradient derivation of the loss (seed §4.5) relies on ``M_r ** 2 == M_r`` and on the zones
summing to one, so nothing here is soft or resized after the fact. At latent resolution the zones
are *built* there: a latent cell touching any hole pixel is hole (max-pool 8), and the band is
``max(1, round(k / 8))`` latent cells wide.

Morphology uses OpenCV (a disk structuring element, ``cv2.MORPH_ELLIPSE``); masks of any leading
shape are processed frame by frame on the CPU and returned on the input's device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Zones", "decompose_zones", "disk", "ZONE_NAMES", "LATENT_FACTOR"]

ZONE_NAMES = ("hole", "boundary", "context")
LATENT_FACTOR = 8  # SD1.5 VAE downscale


@dataclass(frozen=True)
class Zones:
    """Hole / boundary / context masks, float tensors of one shape, disjoint, summing to 1.

    Built by hand, they are checked to be a partition (values in [0, 1] summing to 1 everywhere,
    within ``rrdpo_core.validate.ZONE_TOLERANCE``); :func:`decompose_zones` builds them exactly
    and skips the check (``checked=True``).
    """

    hole: torch.Tensor
    boundary: torch.Tensor
    context: torch.Tensor
    checked: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.checked:
            from .validate import check_zone_partition

            shapes = {tuple(z.shape) for z in self.as_tuple()}
            if len(shapes) != 1:
                raise ValueError(f"Zones: hole, boundary and context must have one shape, got {sorted(shapes)}")
            check_zone_partition(self.as_tuple(), where="Zones(hole, boundary, context)")
            object.__setattr__(self, "checked", True)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.hole, self.boundary, self.context))

    def __len__(self) -> int:
        return 3

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.hole, self.boundary, self.context)

    def to(self, *args, **kwargs) -> "Zones":
        return Zones(*(z.to(*args, **kwargs) for z in self), checked=self.checked)

    def stack(self, dim: int = 0) -> torch.Tensor:
        """The three masks stacked along ``dim`` (``dim=0`` gives shape ``(3, *mask.shape)``)."""
        return torch.stack(self.as_tuple(), dim=dim)


def disk(radius: int) -> np.ndarray:
    """Disk structuring element of the given radius, ``(2r+1, 2r+1)`` uint8."""
    size = 2 * int(radius) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _dilate_frames(frames: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of each (H, W) frame of ``frames`` (N, H, W) uint8 by a disk."""
    if radius <= 0:
        return frames.copy()
    kernel = disk(radius)
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        # Pixels outside the image never contribute (OpenCV's default border for dilate).
        out[i] = cv2.dilate(frame, kernel)
    return out


def decompose_zones(mask: torch.Tensor | np.ndarray, band_px: int = 8, latent: bool = False) -> Zones:
    """Split a hole mask into hole, boundary and context zones.

    Args:
        mask: hole mask with spatial size in the last two dimensions, any leading shape
            (``(H, W)``, ``(T, H, W)``, ``(B, 1, T, H, W)``, ...); a pixel is hole where ``mask > 0.5``.
        band_px: width ``k`` of the boundary band in *pixels* (seed range 5-15). ``0`` gives an
            empty boundary zone in both resolutions.
        latent: build the zones at latent resolution (``H/8 x W/8``, ceil for sizes that are not
            multiples of 8): hole = 8x8 max-pool of the mask, band ``max(1, round(k/8))`` cells.

    Returns:
        :class:`Zones` of float tensors (the input's float dtype, else float32) on the input's
        device, with the input's leading shape.
    """
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a torch.Tensor or numpy array, got {type(mask).__name__}")
    if mask.ndim < 2:
        raise ValueError(f"mask: needs at least 2 dimensions (..., H, W), got shape {tuple(mask.shape)}")
    if mask.shape[-1] == 0 or mask.shape[-2] == 0:
        raise ValueError(f"mask: spatial size must be non-empty, got shape {tuple(mask.shape)}")
    if isinstance(band_px, bool) or int(band_px) != band_px or band_px < 0:
        raise ValueError(f"band_px: must be a non-negative integer number of pixels, got {band_px!r}")
    band_px = int(band_px)
    if not torch.isfinite(mask.float()).all():
        raise ValueError("mask: contains NaN or infinite values; pass a 0/1 hole mask")

    out_dtype = mask.dtype if mask.is_floating_point() else torch.float32
    device = mask.device
    lead = mask.shape[:-2]
    hole = (mask.detach() > 0.5).reshape(-1, *mask.shape[-2:]).to(torch.float32).cpu()

    if latent:
        # A latent cell that touches any hole pixel is hole (ceil so partial cells count).
        hole = F.max_pool2d(hole[:, None], LATENT_FACTOR, LATENT_FACTOR, ceil_mode=True)[:, 0]
        radius = max(1, round(band_px / LATENT_FACTOR)) if band_px > 0 else 0
    else:
        radius = band_px

    hole_np = hole.numpy().astype(np.uint8)
    grown = _dilate_frames(hole_np, radius)
    boundary_np = grown - hole_np  # dilation contains the hole, so this is 0/1
    context_np = 1 - grown

    def back(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).reshape(*lead, *a.shape[-2:]).to(device=device, dtype=out_dtype)

    # A partition by construction: hole + (grown - hole) + (1 - grown) == 1 exactly.
    return Zones(hole=back(hole_np), boundary=back(boundary_np), context=back(context_np), checked=True)
