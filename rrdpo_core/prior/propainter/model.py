"""ProPainter's inpainting generator (``ProPainter.pth``).

* ``img_prop_module``: weight-free image propagation along completed flows (global, whole clip);
* ``encoder``: frames + masks -> 1/4-resolution features (grouped convolutions with the stage-4
  features re-injected at every later layer);
* ``feat_prop_module``: learned bidirectional feature propagation with flow-guided deformable
  alignment, over the local frames;
* ``ss`` / ``transformers`` / ``sc``: the mask-guided sparse transformer on local + reference
  frames;
* ``decoder``: back to full resolution, ``tanh`` output in [-1, 1].

Attribute names follow the released checkpoint. ``hidden``, ``depths``, ``num_heads``,
``window_size``, ``pool_size`` and ``ffn_hidden`` default to the released architecture; smaller
values only exist for fast tests.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .deform_conv import ModulatedDeformConv2d
from .flow_completion import Upsample2xConv
from .transformer import SoftComp, SoftSplit, TemporalSparseTransformerBlock
from .warp import flow_warp, forward_backward_valid

__all__ = ["ProPainterGenerator", "DualDomainPropagation"]


def _lrelu(slope: float = 0.2) -> nn.LeakyReLU:
    return nn.LeakyReLU(slope, inplace=True)


def _binarize(x: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    return (x > threshold).to(x.dtype)


class FlowGuidedDeformableAlignment(ModulatedDeformConv2d):
    """Deformable alignment whose offsets are a bounded residual on top of the optical flow."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 1,
                 deform_groups: int = 16, max_residue_magnitude: float = 3.0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, deform_groups=deform_groups)
        self.max_residue_magnitude = max_residue_magnitude
        c = out_channels
        # Condition: current + warped features (2c), flow (2), flow validity (1), masks (2).
        self.conv_offset = nn.Sequential(
            nn.Conv2d(2 * c + 2 + 1 + 2, c, 3, 1, 1), _lrelu(0.1),
            nn.Conv2d(c, c, 3, 1, 1), _lrelu(0.1),
            nn.Conv2d(c, c, 3, 1, 1), _lrelu(0.1),
            nn.Conv2d(c, 27 * deform_groups, 3, 1, 1),
        )
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        o1, o2, mask = torch.chunk(self.conv_offset(cond), 3, dim=1)
        offset = self.max_residue_magnitude * torch.tanh(torch.cat((o1, o2), dim=1))
        # Every tap of every offset group starts from the flow, given as (dy, dx) pairs.
        offset = offset + flow.flip(1).repeat(1, offset.shape[1] // 2, 1, 1)
        return self.deform(x, offset, torch.sigmoid(mask))


class DualDomainPropagation(nn.Module):
    """Bidirectional recurrent propagation, in image space (``learnable=False``) or feature space.

    The backward pass runs from the last frame to the first, pulling content from frame i+1 into
    frame i along the forward flow i -> i+1; the forward pass then runs first to last on the
    backward pass's results, pulling from frame i-1 along the backward flow i -> i-1. A pixel only
    takes propagated content where the forward-backward flow check passes.

    * image space: a hole pixel is replaced by the warped pixel when the source pixel was known;
      the returned mask marks the pixels still unknown after both passes;
    * feature space: deformable alignment + a residual conv block per step, then a fusion of both
      passes.
    """

    directions = ("backward_1", "forward_1")

    def __init__(self, channel: int, learnable: bool = True) -> None:
        super().__init__()
        self.channel = channel
        self.learnable = learnable
        self.deform_align = nn.ModuleDict()
        self.backbone = nn.ModuleDict()
        if learnable:
            for name in self.directions:
                self.deform_align[name] = FlowGuidedDeformableAlignment(
                    channel, channel, 3, padding=1, deform_groups=16)
                self.backbone[name] = nn.Sequential(
                    nn.Conv2d(2 * channel + 2, channel, 3, 1, 1), _lrelu(), nn.Conv2d(channel, channel, 3, 1, 1))
            self.fuse = nn.Sequential(
                nn.Conv2d(2 * channel + 2, channel, 3, 1, 1), _lrelu(), nn.Conv2d(channel, channel, 3, 1, 1))

    def forward(self, x: torch.Tensor, flows_forward: torch.Tensor, flows_backward: torch.Tensor,
                mask: torch.Tensor, interpolation: str = "bilinear"
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C, H, W); flows (B, T-1, 2, H, W); mask (B, T, M, H, W), 1 = hole.

        Returns ``(output, updated_mask)``: output (B, T, C, H, W); ``updated_mask`` (B, T, 1, H, W)
        for image propagation, ``None`` for feature propagation.
        """
        b, t, c, h, w = x.shape
        feats = list(x.unbind(1))
        masks = list(mask.unbind(1))
        results: dict[str, list[torch.Tensor]] = {}
        result_masks: dict[str, list[torch.Tensor]] = {}
        for name in self.directions:
            backward = name.startswith("backward")
            order = list(range(t - 1, -1, -1)) if backward else list(range(t))
            # Flow that pulls from the previously visited frame, and its reverse for the check.
            flows_prop, flows_check = (flows_forward, flows_backward) if backward else (flows_backward, flows_forward)
            outs: list[torch.Tensor] = []
            out_masks: list[torch.Tensor] = []
            for step, idx in enumerate(order):
                current, mask_current = feats[idx], masks[idx]
                if step == 0:
                    prop, mask_prop = current, mask_current
                else:
                    flow_idx = idx if backward else idx - 1
                    flow_prop, flow_check = flows_prop[:, flow_idx], flows_check[:, flow_idx]
                    valid = forward_backward_valid(flow_prop, flow_check)
                    warped = flow_warp(prop, flow_prop, interpolation)
                    if self.learnable:
                        cond = torch.cat([current, warped, flow_prop, valid, mask_current], dim=1)
                        prop = self.deform_align[name](prop, cond, flow_prop)
                        mask_prop = mask_current
                    else:
                        source_hole = _binarize(flow_warp(mask_prop, flow_prop))
                        fill = _binarize(mask_current * valid * (1 - source_hole))
                        prop = fill * warped + (1 - fill) * current
                        mask_prop = _binarize(mask_current * (1 - valid * (1 - source_hole)))
                if self.learnable:
                    prop = prop + self.backbone[name](torch.cat([current, prop, mask_current], dim=1))
                outs.append(prop)
                out_masks.append(mask_prop)
            if backward:
                outs.reverse()
                out_masks.reverse()
            results[name], result_masks[name] = outs, out_masks
            # The second pass propagates the first pass's results.
            feats, masks = outs, out_masks

        out_b = torch.stack(results["backward_1"], dim=1)
        out_f = torch.stack(results["forward_1"], dim=1)
        if not self.learnable:
            return out_f, torch.stack(result_masks["forward_1"], dim=1)
        fused = self.fuse(torch.cat([out_b.reshape(-1, c, h, w), out_f.reshape(-1, c, h, w),
                                     mask.reshape(-1, 2, h, w)], dim=1))
        return (fused + x.reshape(-1, c, h, w)).view(b, t, c, h, w), None


class Encoder(nn.Module):
    """Frames + masks (5 channels) -> 128 channels at 1/4 resolution."""

    groups = (1, 2, 4, 8, 1)

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            nn.Conv2d(5, 64, 3, 2, 1), _lrelu(),
            nn.Conv2d(64, 64, 3, 1, 1), _lrelu(),
            nn.Conv2d(64, 128, 3, 2, 1), _lrelu(),
            nn.Conv2d(128, 256, 3, 1, 1), _lrelu(),
            nn.Conv2d(256, 384, 3, 1, 1, groups=1), _lrelu(),
            nn.Conv2d(640, 512, 3, 1, 1, groups=2), _lrelu(),
            nn.Conv2d(768, 384, 3, 1, 1, groups=4), _lrelu(),
            nn.Conv2d(640, 256, 3, 1, 1, groups=8), _lrelu(),
            nn.Conv2d(512, 128, 3, 1, 1, groups=1), _lrelu(),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bt = x.shape[0]
        out = x
        skip = x
        for i, layer in enumerate(self.layers):
            if i == 8:
                skip = out  # 256-channel features re-injected into every later convolution
            elif i > 8 and i % 2 == 0:
                g = self.groups[(i - 8) // 2]
                h, w = out.shape[-2:]
                # Interleave per group so each conv group sees its share of the skip features.
                out = torch.cat([skip.view(bt, g, -1, h, w), out.view(bt, g, -1, h, w)], 2).view(bt, -1, h, w)
            out = layer(out)
        return out


class ProPainterGenerator(nn.Module):
    channel = 128

    def __init__(self, hidden: int = 512, depths: int = 8, num_heads: int = 4,
                 window_size: tuple[int, int] = (5, 9), pool_size: tuple[int, int] = (4, 4),
                 ffn_hidden: int = 1960) -> None:
        super().__init__()
        c = self.channel
        self.encoder = Encoder()
        self.decoder = nn.Sequential(
            Upsample2xConv(c, 128, 3, 1), _lrelu(),
            nn.Conv2d(128, 64, 3, 1, 1), _lrelu(),
            Upsample2xConv(64, 64, 3, 1), _lrelu(),
            nn.Conv2d(64, 3, 3, 1, 1))
        kernel_size, stride, padding = (7, 7), (3, 3), (3, 3)
        t2t = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
        self.ss = SoftSplit(c, hidden, kernel_size, stride, padding)
        self.sc = SoftComp(c, hidden, kernel_size, stride, padding)
        self.max_pool = nn.MaxPool2d(kernel_size, stride, padding)
        self.img_prop_module = DualDomainPropagation(3, learnable=False)
        self.feat_prop_module = DualDomainPropagation(c, learnable=True)
        self.transformers = TemporalSparseTransformerBlock(hidden, num_heads, window_size, pool_size, depths, t2t,
                                                           ffn_hidden)

    def img_propagation(self, masked_frames: torch.Tensor, flows_forward: torch.Tensor,
                        flows_backward: torch.Tensor, masks: torch.Tensor, interpolation: str = "nearest"
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagate known pixels into the holes. Returns (frames, still-unknown mask)."""
        frames, updated = self.img_prop_module(masked_frames, flows_forward, flows_backward, masks, interpolation)
        return frames, updated

    def forward(self, frames: torch.Tensor, flows_forward: torch.Tensor, flows_backward: torch.Tensor,
                masks_in: torch.Tensor, masks_updated: torch.Tensor, num_local_frames: int,
                t_dilation: int = 2) -> torch.Tensor:
        """Inpaint the local frames of a window.

        Args:
            frames: (B, T, 3, H, W) in [-1, 1], image-propagated; the first ``num_local_frames``
                are the consecutive local frames, the rest are reference frames.
            flows_forward, flows_backward: (B, L-1, 2, H, W) completed flows between local frames.
            masks_in: (B, T, 1, H, W) hole masks; masks_updated: holes left after image propagation.
        Returns:
            (B, L, 3, H, W) in [-1, 1].
        """
        lt = num_local_frames
        b, t, _, ori_h, ori_w = frames.shape
        enc = self.encoder(torch.cat([frames.reshape(b * t, 3, ori_h, ori_w),
                                      masks_in.reshape(b * t, 1, ori_h, ori_w),
                                      masks_updated.reshape(b * t, 1, ori_h, ori_w)], dim=1))
        _, c, h, w = enc.shape
        enc = enc.view(b, t, c, h, w)
        fold_size = (h, w)

        def down_flow(f: torch.Tensor) -> torch.Tensor:
            f = F.interpolate(f.reshape(-1, 2, ori_h, ori_w), scale_factor=0.25, mode="bilinear", align_corners=False)
            return f.view(b, lt - 1, 2, h, w) / 4.0

        def down_mask(m: torch.Tensor, n: int) -> torch.Tensor:
            return F.interpolate(m.reshape(-1, 1, ori_h, ori_w), scale_factor=0.25, mode="nearest").view(b, n, 1, h, w)

        ds_mask_local = down_mask(masks_in[:, :lt], lt)
        ds_updated_local = down_mask(masks_updated[:, :lt], lt)
        token_mask = self.max_pool(ds_mask_local.view(-1, 1, h, w))
        token_mask = token_mask.view(b, lt, 1, *token_mask.shape[-2:]).permute(0, 1, 3, 4, 2).contiguous()

        local_feat, _ = self.feat_prop_module(enc[:, :lt], down_flow(flows_forward), down_flow(flows_backward),
                                              torch.cat([ds_mask_local, ds_updated_local], dim=2), "bilinear")
        enc = torch.cat((local_feat, enc[:, lt:]), dim=1)

        tokens = self.ss(enc.view(-1, c, h, w), b, fold_size)
        tokens = self.transformers(tokens, fold_size, token_mask, t_dilation=t_dilation)
        enc = enc + self.sc(tokens, t, fold_size).view(b, t, -1, h, w)

        out = self.decoder(enc[:, :lt].reshape(-1, c, h, w))
        return torch.tanh(out).view(b, lt, 3, ori_h, ori_w)
