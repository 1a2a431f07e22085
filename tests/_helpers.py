"""Small helpers shared by several test modules (pytest puts tests/ on sys.path, as for conftest)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def drifting_clip(seed: int, frames: int, size: int = 64, width: int | None = None) -> torch.Tensor:
    """A smooth random texture drifting right by one pixel per frame, ``(T, H, W, 3)`` in [0, 1].

    ``size`` is the height (and the width unless ``width`` is given). Deterministic for a seed.
    """
    height, width = size, size if width is None else width
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, max(2, height // 8), max(2, width // 8), generator=g)
    img = F.interpolate(base, size=(height, width), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    return torch.stack([torch.roll(img, shifts=t, dims=2).permute(1, 2, 0) for t in range(frames)]).contiguous()
