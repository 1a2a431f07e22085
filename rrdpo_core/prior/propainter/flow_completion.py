"""ProPainter's recurrent flow completion network (``recurrent_flow_completion.pth``).

Given the optical flows of a clip with the hole regions zeroed (and the hole masks), it predicts the
flow inside the holes. A pseudo-3D encoder (spatial 3x3 then temporal dilated 3x1x1 convolutions)
reaches 1/8 resolution, a bidirectional recurrent propagation with second-order deformable
alignment mixes information across time, and a decoder with two skip connections returns a flow
at full resolution. Forward and backward flows are completed separately; the backward sequence is
run reversed in time. Module names follow the released checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .deform_conv import ModulatedDeformConv2d

__all__ = ["RecurrentFlowCompletion"]


def _lrelu(slope: float = 0.2) -> nn.LeakyReLU:
    return nn.LeakyReLU(slope, inplace=True)


class SecondOrderDeformableAlignment(ModulatedDeformConv2d):
    """Aligns the two previous propagated features to the current frame (offsets from features only)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 1,
                 deform_groups: int = 16, max_residue_magnitude: float = 5.0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, deform_groups=deform_groups)
        self.max_residue_magnitude = max_residue_magnitude
        c = out_channels
        self.conv_offset = nn.Sequential(
            nn.Conv2d(3 * c, c, 3, 1, 1), _lrelu(0.1),
            nn.Conv2d(c, c, 3, 1, 1), _lrelu(0.1),
            nn.Conv2d(c, c, 3, 1, 1), _lrelu(0.1),
            nn.Conv2d(c, 27 * deform_groups, 3, 1, 1),
        )
        # Zero offsets and a 0.5 modulation at initialisation (as trained from).
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        o1, o2, mask = torch.chunk(self.conv_offset(cond), 3, dim=1)
        offset = self.max_residue_magnitude * torch.tanh(torch.cat((o1, o2), dim=1))
        return self.deform(x, offset, torch.sigmoid(mask))


class FlowFeaturePropagation(nn.Module):
    """Backward then forward recurrent pass over time with second-order deformable alignment."""

    directions = ("backward_", "forward_")

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel
        self.deform_align = nn.ModuleDict()
        self.backbone = nn.ModuleDict()
        for i, name in enumerate(self.directions):
            self.deform_align[name] = SecondOrderDeformableAlignment(
                2 * channel, channel, 3, padding=1, deform_groups=16)
            # The forward pass also sees the backward pass's features, hence (2 + i) inputs.
            self.backbone[name] = nn.Sequential(
                nn.Conv2d((2 + i) * channel, channel, 3, 1, 1), _lrelu(0.1), nn.Conv2d(channel, channel, 3, 1, 1))
        self.fusion = nn.Conv2d(2 * channel, channel, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C, H, W) -> (B, T, C, H, W)."""
        b, t, _, h, w = x.shape
        spatial = list(x.unbind(1))
        done: dict[str, list[torch.Tensor]] = {}
        for name in self.directions:
            order = range(t - 1, -1, -1) if name.startswith("backward") else range(t)
            outs: list[torch.Tensor] = []
            prop = x.new_zeros(b, self.channel, h, w)
            for step, idx in enumerate(order):
                current = spatial[idx]
                if step > 0:
                    # Second-order: the state two steps back (zeros on the second step).
                    prev2 = outs[-2] if step > 1 else torch.zeros_like(prop)
                    cond = torch.cat([prop, current, prev2], dim=1)
                    prop = self.deform_align[name](torch.cat([prop, prev2], dim=1), cond)
                others = [done[k][idx] for k in done]
                prop = prop + self.backbone[name](torch.cat([current, *others, prop], dim=1))
                outs.append(prop)
            if name.startswith("backward"):
                outs.reverse()
            done[name] = outs
        fused = [self.fusion(torch.cat([done[n][i] for n in self.directions], dim=1)) for i in range(t)]
        return torch.stack(fused, dim=1) + x


class Upsample2xConv(nn.Module):
    """Bilinear 2x upsampling (corners aligned) followed by a convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class P3DBlock(nn.Module):
    """Pseudo-3D convolution: spatial k x k (with stride), LeakyReLU, then temporal 3 (dilation 2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, (1, kernel_size, kernel_size), (1, stride, stride),
                      (0, padding, padding)),
            _lrelu())
        self.conv2 = nn.Sequential(
            nn.Conv3d(out_channels, out_channels, (3, 1, 1), (1, 1, 1), (2, 0, 0), dilation=(2, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class EdgeDetection(nn.Module):
    """Flow-edge head used only as a training loss; kept so the checkpoint loads strictly."""

    def __init__(self, in_ch: int = 2, out_ch: int = 1, mid_ch: int = 16) -> None:
        super().__init__()
        self.projection = nn.Sequential(nn.Conv2d(in_ch, mid_ch, 3, 1, 1), _lrelu())
        self.mid_layer_1 = nn.Sequential(nn.Conv2d(mid_ch, mid_ch, 3, 1, 1), _lrelu())
        self.mid_layer_2 = nn.Sequential(nn.Conv2d(mid_ch, mid_ch, 3, 1, 1))
        self.l_relu = nn.LeakyReLU(0.01, inplace=True)
        self.out_layer = nn.Conv2d(mid_ch, out_ch, 1, 1, 0)

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        feat = self.projection(flow)
        edge = self.l_relu(feat + self.mid_layer_2(self.mid_layer_1(feat)))
        return torch.sigmoid(self.out_layer(edge))


class RecurrentFlowCompletion(nn.Module):
    """Completes masked flows. Spatial sizes must be divisible by 8."""

    def __init__(self) -> None:
        super().__init__()
        self.downsample = nn.Sequential(
            nn.Conv3d(3, 32, (1, 5, 5), (1, 2, 2), (0, 2, 2), padding_mode="replicate"), _lrelu())
        self.encoder1 = nn.Sequential(P3DBlock(32, 32, 3, 1, 1), _lrelu(), P3DBlock(32, 64, 3, 2, 1), _lrelu())
        self.encoder2 = nn.Sequential(P3DBlock(64, 64, 3, 1, 1), _lrelu(), P3DBlock(64, 128, 3, 2, 1), _lrelu())
        self.mid_dilation = nn.Sequential(
            nn.Conv3d(128, 128, (1, 3, 3), (1, 1, 1), (0, 3, 3), dilation=(1, 3, 3)), _lrelu(),
            nn.Conv3d(128, 128, (1, 3, 3), (1, 1, 1), (0, 2, 2), dilation=(1, 2, 2)), _lrelu(),
            nn.Conv3d(128, 128, (1, 3, 3), (1, 1, 1), (0, 1, 1), dilation=(1, 1, 1)), _lrelu())
        self.feat_prop_module = FlowFeaturePropagation(128)
        self.decoder2 = nn.Sequential(nn.Conv2d(128, 128, 3, 1, 1), _lrelu(), Upsample2xConv(128, 64, 3, 1), _lrelu())
        self.decoder1 = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1), _lrelu(), Upsample2xConv(64, 32, 3, 1), _lrelu())
        self.upsample = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), _lrelu(), Upsample2xConv(32, 2, 3, 1))
        self.edgeDetector = EdgeDetection(2, 1, 16)

    def forward(self, masked_flows: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """masked_flows (B, T, 2, H, W), masks (B, T, 1, H, W) -> predicted flows (B, T, 2, H, W)."""
        b, t, _, h, w = masked_flows.shape
        x = self.downsample(torch.cat((masked_flows, masks), dim=2).permute(0, 2, 1, 3, 4))
        feat_e1 = self.encoder1(x)
        feat_mid = self.mid_dilation(self.encoder2(feat_e1))  # (B, C, T, H/8, W/8)
        feat_prop = self.feat_prop_module(feat_mid.permute(0, 2, 1, 3, 4))
        feat_prop = feat_prop.reshape(b * t, -1, h // 8, w // 8)
        skip = feat_e1.permute(0, 2, 1, 3, 4).reshape(b * t, -1, h // 4, w // 4)
        flow = self.upsample(self.decoder1(self.decoder2(feat_prop) + skip))
        return flow.view(b, t, 2, h, w)

    def complete(self, flows_fw: torch.Tensor, flows_bw: torch.Tensor, masks: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill the holes of both flow directions and keep the measured flow elsewhere.

        ``flows_fw``/``flows_bw`` (B, T-1, 2, H, W); ``masks`` (B, T, 1, H, W), 1 = hole. A forward
        flow i -> i+1 is unreliable where frame i is masked, a backward flow i+1 -> i where frame
        i+1 is.
        """
        mask_fw, mask_bw = masks[:, :-1], masks[:, 1:]
        pred_fw = self(flows_fw * (1 - mask_fw), mask_fw)
        pred_bw = self((flows_bw * (1 - mask_bw)).flip(1), mask_bw.flip(1)).flip(1)
        return (pred_fw * mask_fw + flows_fw * (1 - mask_fw),
                pred_bw * mask_bw + flows_bw * (1 - mask_bw))
