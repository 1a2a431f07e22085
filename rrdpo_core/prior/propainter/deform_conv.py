"""Modulated deformable convolution (DCNv2) without compiled extensions.

ProPainter's two propagation modules align neighbouring features with a modulated deformable
convolution (Zhu et al., "Deformable ConvNets v2", 2019) and call ``torchvision.ops.deform_conv2d``
for it. torchvision's compiled ops often do not match the installed torch (a CPU torch with a CUDA
torchvision wheel, for example), so this module has a pure-torch version: every kernel tap of every
output pixel is sampled with ``grid_sample`` and the taps are contracted with the weight in one
matrix product. When torchvision's operator imports and runs, it is used instead (same result,
less memory).

Tensor layouts are torchvision's, which the official checkpoints were trained with:

* ``offset`` (B, 2 * G * K, Ho, Wo): for offset group ``g`` and kernel tap ``k`` (row-major over
  the kernel window), channel ``2 * (g * K + k)`` is the row (y) shift and the next one the
  column (x) shift, in input pixels;
* ``mask`` (B, G * K, Ho, Wo): channel ``g * K + k`` scales that tap;
* input channels are split into ``G`` contiguous offset groups.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn as nn
from torch.nn.modules.utils import _pair

from .warp import sample_pixels

__all__ = ["ModulatedDeformConv2d", "deform_conv2d", "deform_conv2d_torch", "torchvision_deform_conv2d"]

Backend = Literal["auto", "torch", "torchvision"]

_TORCHVISION_OP: Callable | None = None
_TORCHVISION_TRIED = False


def torchvision_deform_conv2d() -> Callable | None:
    """torchvision's ``deform_conv2d`` if it imports with this torch, else ``None`` (cached)."""
    global _TORCHVISION_OP, _TORCHVISION_TRIED
    if not _TORCHVISION_TRIED:
        _TORCHVISION_TRIED = True
        try:
            from torchvision.ops import deform_conv2d as op  # noqa: PLC0415 - optional accelerator
        except Exception:  # absent, or its C++ ops were built for another torch
            op = None
        _TORCHVISION_OP = op
    return _TORCHVISION_OP


def deform_conv2d_torch(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Modulated deformable convolution in plain torch (torchvision's signature and layouts)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    batch, channels, height, width = x.shape
    out_channels, channels_per_group, kh, kw = weight.shape
    if channels % channels_per_group:
        raise ValueError(f"input has {channels} channels, not a multiple of the weight's {channels_per_group}")
    groups = channels // channels_per_group
    taps = kh * kw
    if offset.shape[1] % (2 * taps):
        raise ValueError(f"offset has {offset.shape[1]} channels; expected a multiple of 2*{taps}")
    offset_groups = offset.shape[1] // (2 * taps)
    if channels % offset_groups:
        raise ValueError(f"{channels} input channels cannot be split into {offset_groups} offset groups")
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if offset.shape[-2:] != (out_h, out_w):
        raise ValueError(f"offset spatial size {tuple(offset.shape[-2:])} != output size {(out_h, out_w)}")

    # Undeformed sampling position of every (tap, output pixel), in input pixels.
    dev, dt = x.device, offset.dtype
    tap_y = (torch.arange(kh, device=dev, dtype=dt) * dh).view(kh, 1, 1, 1)
    tap_x = (torch.arange(kw, device=dev, dtype=dt) * dw).view(1, kw, 1, 1)
    out_y = (torch.arange(out_h, device=dev, dtype=dt) * sh - ph).view(1, 1, out_h, 1)
    out_x = (torch.arange(out_w, device=dev, dtype=dt) * sw - pw).view(1, 1, 1, out_w)
    base_y = (tap_y + out_y).expand(kh, kw, out_h, out_w).reshape(taps, out_h, out_w)
    base_x = (tap_x + out_x).expand(kh, kw, out_h, out_w).reshape(taps, out_h, out_w)

    shift = offset.view(batch, offset_groups, taps, 2, out_h, out_w)
    pos_y = (base_y + shift[:, :, :, 0]).reshape(batch * offset_groups, taps * out_h, out_w)
    pos_x = (base_x + shift[:, :, :, 1]).reshape(batch * offset_groups, taps * out_h, out_w)
    grouped = x.reshape(batch * offset_groups, channels // offset_groups, height, width)
    cols = sample_pixels(grouped, pos_x, pos_y)  # (B*G, C/G, K*Ho, Wo)
    cols = cols.view(batch, offset_groups, channels // offset_groups, taps, out_h * out_w)
    if mask is not None:
        cols = cols * mask.view(batch, offset_groups, 1, taps, out_h * out_w).to(cols.dtype)

    # Channel-major, tap-minor columns match weight.view(out, C/groups * K).
    cols = cols.reshape(batch, groups, channels_per_group * taps, out_h * out_w)
    w = weight.view(groups, out_channels // groups, channels_per_group * taps).to(cols.dtype)
    out = torch.einsum("gok,bgkl->bgol", w, cols).reshape(batch, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1).to(out.dtype)
    return out


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Modulated deformable convolution; ``backend="auto"`` prefers torchvision's compiled op."""
    if backend not in ("auto", "torch", "torchvision"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'torchvision', not {backend!r}")
    op = torchvision_deform_conv2d() if backend != "torch" else None
    if op is None and backend == "torchvision":
        raise RuntimeError("torchvision.ops.deform_conv2d is not importable with this torch; use backend='torch'")
    if op is not None:
        try:
            return op(x, offset, weight, bias, _pair(stride), _pair(padding), _pair(dilation), mask)
        except (RuntimeError, NotImplementedError):
            if backend == "torchvision":
                raise
            # Kernel missing for this device or dtype: the pure-torch path covers every device.
    return deform_conv2d_torch(x, offset, weight, bias, stride, padding, dilation, mask)


class ModulatedDeformConv2d(nn.Module):
    """Parameter holder for a modulated deformable convolution.

    ``weight`` (out, in / groups, kh, kw) and ``bias`` (out) have the names and shapes of the
    original layer, so checkpoint keys match. Subclasses predict ``offset`` and ``mask`` and call
    :meth:`deform`.
    """

    # "auto" uses torchvision's op when it works; set "torch" (class- or instance-wide) to force ours.
    backend: Backend = "auto"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int = 0, dilation: int = 1, groups: int = 1,
                 deform_groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.deform_groups = deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def deform(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask, backend=self.backend)
