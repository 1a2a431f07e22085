"""Video nodes: cut a clip to a frame range and a size the model can afford."""
from __future__ import annotations

import torch

CATEGORY = "Region-Reg-DPO/video"


class RRDPOTrimResizeClip:
    DESCRIPTION = (
        "Keep a range of frames and cap the size (longer side at most max_side, aspect ratio kept, never "
        "upscaled), with an optional mask cut and resized the same way. Put it after Load Video so a long "
        "1080p clip is not pushed through the model at full size by default."
    )
    CATEGORY = CATEGORY
    FUNCTION = "trim"
    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("images", "mask", "report")
    OUTPUT_TOOLTIPS = (
        "The kept frames at the new size.",
        "The mask for exactly those frames at the same size (all zeros if no mask was given).",
        "What was kept and resized, in words.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The frames of the clip (e.g. from Load Video)."}),
                "start_frame": ("INT", {"default": 0, "min": 0, "max": 1000000, "step": 1,
                                        "tooltip": "First frame to keep (0 = the first frame of the clip)."}),
                "max_frames": ("INT", {"default": 150, "min": 0, "max": 1000000, "step": 1,
                                       "tooltip": "How many frames to keep from start_frame (0 = all the rest)."}),
                "max_side": ("INT", {"default": 960, "min": 0, "max": 16384, "step": 8,
                                     "tooltip": "Longest side in pixels after resizing (0 = keep the size; a smaller "
                                                "clip is never enlarged). Aspect ratio is kept."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Hole mask: one for all frames, or one per input frame. It is cut to "
                                             "the same frames and resized to the output size."}),
            },
        }

    def trim(self, images: torch.Tensor, start_frame: int, max_frames: int, max_side: int,
             mask: torch.Tensor | None = None):
        from ..rrdpo_core.framing import trim_resize_clip

        out = trim_resize_clip(images, start_frame=start_frame, max_frames=max_frames, max_side=max_side, mask=mask)
        return (out.images, out.mask, out.report)


NODE_CLASS_MAPPINGS = {"RRDPOTrimResizeClip": RRDPOTrimResizeClip}
NODE_DISPLAY_NAME_MAPPINGS = {"RRDPOTrimResizeClip": "Trim & Resize Clip"}
