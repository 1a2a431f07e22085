"""Pixel-coordinate sampling and backward warping shared by the ProPainter networks.

All three networks sample feature maps at fractional *pixel* positions with bilinear weights and
zeros outside the image. ``grid_sample`` works in normalised coordinates; we map a pixel position
``p`` to ``(2p + 1) / size - 1`` and use ``align_corners=False``, which samples exactly the same
point as the ``2p / (size - 1) - 1`` / ``align_corners=True`` convention of the original code but
stays defined for one-pixel-wide maps (the coarsest RAFT correlation level of a small frame).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pixel_grid", "sample_pixels", "flow_warp", "forward_backward_valid"]


def pixel_grid(height: int, width: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(2, H, W)`` grid of pixel coordinates, channel 0 = x (column), channel 1 = y (row)."""
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    return torch.stack((xs.view(1, -1).expand(height, width), ys.view(-1, 1).expand(height, width)))


def sample_pixels(img: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``img`` (N, C, H, W) at pixel positions ``x``/``y`` (N, Ho, Wo); zeros outside.

    Returns (N, C, Ho, Wo).
    """
    height, width = img.shape[-2:]
    grid = torch.stack(((2.0 * x + 1.0) / width - 1.0, (2.0 * y + 1.0) / height - 1.0), dim=-1)
    return F.grid_sample(img, grid.to(img.dtype), mode=mode, padding_mode="zeros", align_corners=False)


def flow_warp(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Backward-warp ``x`` (N, C, H, W): output pixel p reads ``x`` at ``p + flow(p)``.

    ``flow`` is (N, 2, H, W) in pixels, channel 0 = dx, channel 1 = dy.
    """
    if x.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"flow_warp: image size {tuple(x.shape[-2:])} != flow size {tuple(flow.shape[-2:])}")
    base = pixel_grid(*x.shape[-2:], device=flow.device, dtype=flow.dtype)
    pos = base.unsqueeze(0) + flow
    return sample_pixels(x, pos[:, 0], pos[:, 1], mode)


def forward_backward_valid(flow_fw: torch.Tensor, flow_bw: torch.Tensor,
                           alpha1: float = 0.01, alpha2: float = 0.5) -> torch.Tensor:
    """1 where following ``flow_fw`` and then ``flow_bw`` returns (almost) to the start, else 0.

    The standard forward-backward consistency test (Sundaram et al. 2010) with ProPainter's
    thresholds: ``|fw + bw(p + fw)|^2 < alpha1 * (|fw|^2 + |bw(p + fw)|^2) + alpha2``.
    Returns (N, 1, H, W) in ``flow_fw``'s dtype.
    """
    bw_at_target = flow_warp(flow_bw, flow_fw)
    diff_sq = (flow_fw + bw_at_target).square().sum(1, keepdim=True)
    mag_sq = flow_fw.square().sum(1, keepdim=True) + bw_at_target.square().sum(1, keepdim=True)
    return (diff_sq < alpha1 * mag_sq + alpha2).to(flow_fw.dtype)
