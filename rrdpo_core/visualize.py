"""Pictures for people: zone overlays and heat maps as (T, H, W, 3) float images in [0, 1]."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .zones import Zones

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure

__all__ = ["zone_overlay", "metrics_chart", "new_figure", "figure_rgb", "ZONE_COLORS"]

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


def new_figure(width: float, height: float, dpi: int = 100) -> "Figure":
    """A matplotlib Figure of ``width x height`` inches on its own Agg canvas.

    Figure objects, not pyplot: no global backend switch and no figure registry, so drawing is
    safe inside a GUI process (ComfyUI) and from its worker threads.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def figure_rgb(fig: "Figure") -> np.ndarray:
    """Draw ``fig`` (made by :func:`new_figure`) and return its pixels, ``(H, W, 3)`` uint8 RGB."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def metrics_chart(metrics: dict, title: str = "", width: int = 900, height: int = 420) -> torch.Tensor:
    """Bar chart of the numeric entries of ``metrics`` (nested dicts are flattened ``a.b``), as
    a ``(1, H, W, 3)`` image in [0, 1]. PSNR-like values and the rest get separate panels so
    their scales do not hide each other."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            flat[prefix] = float(value)

    walk("", metrics)
    big = {k: v for k, v in flat.items() if "psnr" in k.lower()}
    small = {k: v for k, v in flat.items() if k not in big}
    panels = [p for p in (big, small) if p]
    fig = new_figure(width / 100, height / 100, dpi=100)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)
    for ax, panel in zip(axes[0], panels or [{}]):
        names = list(panel)
        ax.barh(range(len(names)), [panel[n] for n in names], color="#4a7bd0")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        for i, n in enumerate(names):
            ax.text(panel[n], i, f" {panel[n]:.4g}", va="center", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return torch.from_numpy(figure_rgb(fig)).float()[None] / 255.0
