"""Evaluation node: per-zone quality, temporal stability and seam continuity of a result."""
from __future__ import annotations

from . import _comfy

CATEGORY = "Region-Reg-DPO/eval"


class RRDPOInpaintingMetrics:
    DESCRIPTION = (
        "Measure an inpainted video: PSNR / SSIM per zone (hole, boundary band, context, full frame) when a ground "
        "truth is given, temporal warping error along optical flow, and gradient continuity across the hole boundary."
    )
    CATEGORY = CATEGORY
    FUNCTION = "measure"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("report", "chart")
    OUTPUT_TOOLTIPS = ("The metrics as a text table.", "The metrics as a bar chart.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "result": ("IMAGE", {"tooltip": "The inpainted frames (after Blend Into Video)."}),
                "mask": ("MASK", {"tooltip": "The hole mask that was filled, 1 = hole (one per frame or one for all "
                                             "frames; resized to the frames if its size differs, as the report says)."}),
                "band_px": ("INT", {"default": 8, "min": 1, "max": 64,
                                    "tooltip": "Width of the boundary band for the zone metrics."}),
            },
            "optional": {
                "truth": ("IMAGE", {"tooltip": "Ground-truth frames (e.g. a synthetic hole over real footage)."}),
            },
        }

    @_comfy.interrupt_aware
    def measure(self, result, mask, band_px, truth=None):
        from ..rrdpo_core.metrics import evaluate_inpainting
        from ..rrdpo_core.visualize import metrics_chart

        from ..rrdpo_core.framing import fit_mask

        fit = fit_mask(mask, *result.shape[:3])
        report = evaluate_inpainting(result, truth, fit.mask, band_px=band_px, cancel=_comfy.cancel_requested)
        text = report.format_table() + (f"\nmask: {fit.report}" if fit.notes else "")
        chart = metrics_chart(report.to_dict(), title="Inpainting metrics")
        return {"ui": {"text": [text]}, "result": (text, chart)}


NODE_CLASS_MAPPINGS = {"RRDPOInpaintingMetrics": RRDPOInpaintingMetrics}
NODE_DISPLAY_NAME_MAPPINGS = {"RRDPOInpaintingMetrics": "Inpainting Metrics"}
