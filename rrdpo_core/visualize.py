"""Pictures for people: zone overlays and heat maps as (T, H, W, 3) float images in [0, 1]."""
from __future__ import annotations

import torch

from .zones import Zones

__all__ = ["zone_overlay", "ZONE_COLORS"]

# hole red, boundary band yellow; context keeps the frame.
ZONE_COLORS = {"hole": (0.95, 0.15, 0.15), "boundary": (1.0, 0.85, 0.1)}


def zone_overlay(zones: Zones, frames: torch.Tensor | None = None, opacity: float = 0.55) -> torch.Tensor:
    """Tint the hole and boundary zones over the frames (or over mid grey without frames).

    Args:
        zones: pixel-resolution zones with shape ``(T, H, W)``.
        frames: optional ``(T, H, W, 3)`` images in [0, 1] of the same size.
        opacity: tint strength in [0, 1].
    """
    hole, band = zones.hole.float().cpu(), zones.boundary.float().cpu()
    if hole.ndim == 2:
        hole, band = hole[None], band[None]
    if hole.ndim != 3:
        raise ValueError(f"zones: expected (T, H, W) masks for an overlay, got {tuple(hole.shape)}")
    if frames is None:
        base = torch.full((*hole.shape, 3), 0.5)
    else:
        base = frames.detach().float().cpu()
        if base.shape[:3] != hole.shape or base.shape[-1] != 3:
            raise ValueError(
                f"frames: shape {tuple(base.shape)} does not match the zones {tuple(hole.shape)} (+3 channels)"
            )
    out = base.clone()
    for mask, color in ((hole, ZONE_COLORS["hole"]), (band, ZONE_COLORS["boundary"])):
        w = (mask * opacity)[..., None]
        out = out * (1 - w) + torch.tensor(color) * w
    return out.clamp(0, 1)
