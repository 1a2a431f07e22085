"""What each pixel of a prior's result is made of, as codes and as a preview image."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["SOURCE_KNOWN", "SOURCE_COPIED", "SOURCE_FUSED", "SOURCE_SPATIAL", "SOURCE_COLOURS", "source_preview"]

SOURCE_KNOWN = 0    # outside the hole: the input pixel
SOURCE_COPIED = 1   # copied from one other frame (no second frame agreed or was available)
SOURCE_FUSED = 2    # fused from several frames that agree
SOURCE_SPATIAL = 3  # never seen in another frame: filled spatially

# Tints (RGB in [0, 1]): copied green, fused cyan-blue, spatial magenta.
SOURCE_COLOURS = {
    SOURCE_COPIED: (0.1, 0.9, 0.2),
    SOURCE_FUSED: (0.1, 0.5, 1.0),
    SOURCE_SPATIAL: (0.9, 0.1, 0.8),
}


def source_preview(frames: torch.Tensor | np.ndarray, holes: torch.Tensor | np.ndarray,
                   source_map: torch.Tensor | np.ndarray, strength: float = 0.6) -> torch.Tensor:
    """Frames with the hole tinted by how it was filled: copied green, fused blue, spatial magenta.

    Args:
        frames: ``(T, H, W, 3)`` float in [0, 1] (usually the prior's result).
        holes: ``(T, H, W)`` or ``(H, W)`` hole masks (> 0.5 = hole).
        source_map: ``(T, H, W)`` codes from :attr:`PriorResult.source_map`.
        strength: how much of a hole pixel the tint replaces (0..1).

    Returns:
        ``(T, H, W, 3)`` float32 CPU tensor in [0, 1]. Pixels outside the hole are unchanged.
    """
    img = torch.as_tensor(np.asarray(frames) if isinstance(frames, np.ndarray) else frames).float().cpu()
    codes = torch.as_tensor(np.asarray(source_map) if isinstance(source_map, np.ndarray) else source_map).cpu()
    hole = torch.as_tensor(np.asarray(holes) if isinstance(holes, np.ndarray) else holes).float().cpu() > 0.5
    if hole.ndim == 2:
        hole = hole[None].expand(img.shape[0], -1, -1)
    if img.ndim != 4 or img.shape[-1] != 3 or codes.shape != img.shape[:3] or hole.shape != img.shape[:3]:
        raise ValueError(f"source_preview: frames (T, H, W, 3), holes and source_map (T, H, W) must match, got "
                         f"{tuple(img.shape)}, {tuple(hole.shape)} and {tuple(codes.shape)}")
    out = img.clone()
    for code, colour in SOURCE_COLOURS.items():
        sel = (codes == code) & hole
        out[sel] = (1 - strength) * img[sel] + strength * torch.tensor(colour)
    return out.clamp(0, 1)
