"""RAFT optical flow (Teed & Deng, ECCV 2020), the full-size variant ProPainter ships as ``raft-things.pth``.

Only inference is implemented. Module and attribute names follow the released checkpoint so its
state dict loads key for key (after dropping the ``module.`` prefix that ``nn.DataParallel`` left
in the file). The algorithm:

1. a feature encoder (``fnet``, instance norm) maps both frames to 1/8 resolution, 256 channels;
   a context encoder (``cnet``, batch norm) maps the first frame to a GRU state and an input;
2. an all-pairs correlation volume between the two feature maps is pooled into a 4-level pyramid;
3. ``iters`` times, the correlation around the current match (radius 4 on every level) and the
   current flow feed a separable conv-GRU, which predicts a flow update;
4. the 1/8 flow is upsampled with a learned convex combination of 3x3 neighbours.

Frames enter in [-1, 1] with sizes divisible by 8.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .warp import pixel_grid, sample_pixels

__all__ = ["RAFT"]

CORR_LEVELS = 4
CORR_RADIUS = 4


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)  # no affine parameters, no running statistics
    raise ValueError(f"unknown norm {kind!r}")


class ResidualBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = _norm(norm, planes)
        self.norm2 = _norm(norm, planes)
        self.downsample: nn.Module | None = None
        if stride != 1:
            # The checkpoint stores this norm twice, as ``norm3`` and as ``downsample.1``:
            # registering one module under both names reproduces that.
            self.norm3 = _norm(norm, planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class Encoder(nn.Module):
    """Conv 7x7/2 + three residual stages (64, 96/2, 128/2) + 1x1 projection: 1/8 resolution."""

    def __init__(self, output_dim: int, norm: str) -> None:
        super().__init__()
        self.norm1 = _norm(norm, 64)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(ResidualBlock(64, 64, norm, 1), ResidualBlock(64, 64, norm, 1))
        self.layer2 = nn.Sequential(ResidualBlock(64, 96, norm, 2), ResidualBlock(96, 96, norm, 1))
        self.layer3 = nn.Sequential(ResidualBlock(96, 128, norm, 2), ResidualBlock(128, 128, norm, 1))
        self.conv2 = nn.Conv2d(128, output_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class MotionEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        corr_planes = CORR_LEVELS * (2 * CORR_RADIUS + 1) ** 2
        self.convc1 = nn.Conv2d(corr_planes, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(192 + 64, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([c, f], 1))), flow], 1)


class SepConvGRU(nn.Module):
    """Conv-GRU applied twice: with 1x5 kernels (horizontal), then with 5x1 kernels (vertical)."""

    def __init__(self, hidden_dim: int = 128, input_dim: int = 256) -> None:
        super().__init__()
        cin = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(cin, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(cin, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(cin, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(cin, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(cin, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(cin, hidden_dim, (5, 1), padding=(2, 0))

    @staticmethod
    def _step(h: torch.Tensor, x: torch.Tensor, convz: nn.Conv2d, convr: nn.Conv2d, convq: nn.Conv2d) -> torch.Tensor:
        hx = torch.cat([h, x], 1)
        z = torch.sigmoid(convz(hx))
        r = torch.sigmoid(convr(hx))
        q = torch.tanh(convq(torch.cat([r * h, x], 1)))
        return (1 - z) * h + z * q

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self._step(h, x, self.convz1, self.convr1, self.convq1)
        return self._step(h, x, self.convz2, self.convr2, self.convq2)


class FlowHead(nn.Module):
    def __init__(self, input_dim: int = 128, hidden_dim: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    def __init__(self, hidden_dim: int = 128) -> None:
        super().__init__()
        self.encoder = MotionEncoder()
        self.gru = SepConvGRU(hidden_dim, 128 + hidden_dim)
        self.flow_head = FlowHead(hidden_dim, 256)
        self.mask = nn.Sequential(nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(256, 64 * 9, 1))

    def forward(self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor):
        net = self.gru(net, torch.cat([inp, self.encoder(flow, corr)], 1))
        # The 0.25 factor was part of training (it balances the mask head's gradients).
        return net, 0.25 * self.mask(net), self.flow_head(net)


class CorrelationPyramid:
    """All-pairs feature correlation, average-pooled into ``CORR_LEVELS`` levels."""

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> None:
        batch, dim, h, w = fmap1.shape
        corr = torch.matmul(fmap1.reshape(batch, dim, h * w).transpose(1, 2), fmap2.reshape(batch, dim, h * w))
        corr = (corr / dim ** 0.5).reshape(batch * h * w, 1, h, w)
        self.levels = [corr]
        for _ in range(CORR_LEVELS - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.levels.append(corr)
        r = CORR_RADIUS
        d = torch.arange(-r, r + 1, device=fmap1.device, dtype=fmap1.dtype)
        # Window layout of the released model: the slow (row) axis of the (2r+1)^2 window moves
        # x, the fast axis moves y. The trained motion encoder expects exactly this order.
        self._dx = d.view(-1, 1).expand(2 * r + 1, 2 * r + 1)
        self._dy = d.view(1, -1).expand(2 * r + 1, 2 * r + 1)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        batch, _, h, w = coords.shape
        centre = coords.permute(0, 2, 3, 1).reshape(batch * h * w, 1, 1, 2)
        out = []
        for i, corr in enumerate(self.levels):
            x = centre[..., 0] / 2 ** i + self._dx
            y = centre[..., 1] / 2 ** i + self._dy
            out.append(sample_pixels(corr, x, y).view(batch, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous().float()


class RAFT(nn.Module):
    """RAFT (large). ``forward(image1, image2, iters)`` returns the full-resolution flow 1 -> 2."""

    hidden_dim = 128
    context_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.fnet = Encoder(256, "instance")
        self.cnet = Encoder(self.hidden_dim + self.context_dim, "batch")
        self.update_block = UpdateBlock(self.hidden_dim)

    @staticmethod
    def upsample_flow(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W) flow at 1/8 -> (N, 2, 8H, 8W): per-pixel convex mix of the 3x3 neighbourhood."""
        n, _, h, w = flow.shape
        weights = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
        neighbours = F.unfold(8 * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
        up = (weights * neighbours).sum(dim=2)  # (n, 2, 8, 8, h, w)
        return up.permute(0, 1, 4, 2, 5, 3).reshape(n, 2, 8 * h, 8 * w)

    def context(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net, inp = torch.split(self.cnet(image), [self.hidden_dim, self.context_dim], dim=1)
        return torch.tanh(net), torch.relu(inp)

    def refine(self, fmap1: torch.Tensor, fmap2: torch.Tensor, net: torch.Tensor, inp: torch.Tensor,
               iters: int) -> torch.Tensor:
        """Iterative flow estimation from precomputed features and context; returns the upsampled flow."""
        corr_fn = CorrelationPyramid(fmap1.float(), fmap2.float())
        n, _, h, w = fmap1.shape
        coords0 = pixel_grid(h, w, device=fmap1.device, dtype=torch.float32).unsqueeze(0).expand(n, 2, h, w)
        coords1 = coords0.clone()
        up_mask = None
        for _ in range(max(1, iters)):
            corr = corr_fn(coords1)
            net, up_mask, delta = self.update_block(net, inp, corr, coords1 - coords0)
            coords1 = coords1 + delta
        return self.upsample_flow(coords1 - coords0, up_mask)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = 20) -> torch.Tensor:
        fmap1, fmap2 = self.fnet(torch.cat([image1, image2], 0)).chunk(2, dim=0)
        net, inp = self.context(image1)
        return self.refine(fmap1, fmap2, net, inp, iters)

    def bidirectional(self, frames: torch.Tensor, iters: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
        """Flows between consecutive frames of ``frames`` (T, 3, H, W) in [-1, 1].

        Returns ``(forward, backward)``, each (T-1, 2, H, W): ``forward[i]`` maps frame i to i+1,
        ``backward[i]`` maps frame i+1 to i. Features and context are computed once per frame.
        """
        fmaps = self.fnet(frames)
        net, inp = self.context(frames)
        fwd = self.refine(fmaps[:-1], fmaps[1:], net[:-1], inp[:-1], iters)
        bwd = self.refine(fmaps[1:], fmaps[:-1], net[1:], inp[1:], iters)
        return fwd, bwd
