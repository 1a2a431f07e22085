"""Mask nodes: the three zones of Region-Reg-DPO, and DiffuEraser's mask preparation."""
from __future__ import annotations

import torch

from ..rrdpo_core.masks import prepare_masks
from ..rrdpo_core.visualize import zone_overlay
from ..rrdpo_core.zones import decompose_zones

CATEGORY = "Region-Reg-DPO/masks"


class RRDPOZoneMasks:
    DESCRIPTION = (
        "Split a hole mask into the three disjoint zones of Region-Reg-DPO: hole, a boundary band of "
        "`band_px` pixels around it (disk), and the untouched context. Every pixel is in exactly one zone."
    )
    CATEGORY = CATEGORY
    FUNCTION = "split"
    RETURN_TYPES = ("MASK", "MASK", "MASK", "IMAGE", "STRING")
    RETURN_NAMES = ("hole", "boundary", "context", "overlay", "report")
    OUTPUT_TOOLTIPS = (
        "The hole itself (1 = pixels to fill).",
        "The band of band_px pixels just outside the hole, where seams show.",
        "Everything else: pixels the result must leave untouched.",
        "The frames (or grey) with the hole tinted red and the boundary band yellow.",
        "What was adjusted: a mask used for all frames or resized to the images.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mask": ("MASK", {"tooltip": "Hole mask, [frames, H, W] or one mask for all frames; hole where > 0.5."}),
                "band_px": ("INT", {"default": 8, "min": 0, "max": 128, "step": 1,
                                    "tooltip": "Width of the boundary band in pixels (design range 5-15)."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Optional frames to draw the overlay on; the mask is fitted to them "
                                                "(one mask for all frames, resized if its size differs)."}),
            },
        }

    def split(self, mask: torch.Tensor, band_px: int, images: torch.Tensor | None = None):
        from ..rrdpo_core.framing import fit_mask

        if mask.ndim == 2:
            mask = mask[None]
        notes = []
        if images is not None:
            if images.shape[0] == 1 and mask.shape[0] > 1:  # one picture under every mask frame
                images = images.expand(mask.shape[0], -1, -1, -1)
            elif mask.shape[0] not in (1, images.shape[0]):
                raise ValueError(f"images: {images.shape[0]} frames but the mask has {mask.shape[0]}; pass one "
                                 "image per mask frame, one mask for all frames, or one image")
            fit = fit_mask(mask, *images.shape[:3])
            mask, notes = fit.mask, fit.notes
        zones = decompose_zones(mask, band_px=band_px)
        overlay = zone_overlay(zones, images[..., :3] if images is not None else None)
        return (zones.hole, zones.boundary, zones.context, overlay, "; ".join(notes) or "mask used as given")


class RRDPOPrepareVideoMask:
    DESCRIPTION = (
        "DiffuEraser's mask preparation: binarise (> 0), erode once (3x3) to drop specks, then dilate "
        "n times (3x3) so the hole safely covers the object's edge and shadow."
    )
    CATEGORY = CATEGORY
    FUNCTION = "prepare"
    RETURN_TYPES = ("MASK", "STRING")
    RETURN_NAMES = ("mask", "report")
    OUTPUT_TOOLTIPS = ("Binary hole mask, 1 = fill (one per frame when images are given).",
                       "What was adjusted: the mask resized to the frames, or one mask used for all frames.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mask": ("MASK", {"tooltip": "Object mask per frame, [frames, H, W], or one mask for all frames."}),
                "dilation_iter": ("INT", {"default": 8, "min": 0, "max": 64, "step": 1,
                                          "tooltip": "3x3 dilations after the erosion (DiffuEraser's default: 8)."}),
                "erode": ("BOOLEAN", {"default": True,
                                      "tooltip": "Erode once first, as DiffuEraser does, to remove 1-px noise."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Frames: if given, the mask is resized (nearest) to their size, and "
                                                "one mask is repeated for all of them; the report says so."}),
            },
        }

    def prepare(self, mask: torch.Tensor, dilation_iter: int, erode: bool, images: torch.Tensor | None = None):
        from ..rrdpo_core.framing import fit_mask

        if mask.ndim == 2:
            mask = mask[None]
        size = tuple(images.shape[1:3]) if images is not None else None
        out = prepare_masks(mask, dilation_iter=dilation_iter, size=size, erode=erode)
        notes = []
        if size is not None and tuple(mask.shape[-2:]) != size:
            notes.append(f"mask resized from {mask.shape[-1]}x{mask.shape[-2]} to the frame size {size[1]}x{size[0]} "
                         "(nearest)")
        if images is not None:
            fit = fit_mask(out, images.shape[0], *size)  # checks the frame count; repeats one mask
            out = fit.mask
            notes += [n for n in fit.notes if "resized" not in n]
        return (out.to(mask.device), "; ".join(notes) or "mask used as given")


NODE_CLASS_MAPPINGS = {
    "RRDPOZoneMasks": RRDPOZoneMasks,
    "RRDPOPrepareVideoMask": RRDPOPrepareVideoMask,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RRDPOZoneMasks": "Zone Masks (hole / boundary / context)",
    "RRDPOPrepareVideoMask": "Prepare Video Mask (DiffuEraser)",
}
