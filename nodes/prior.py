"""Prior nodes: the weight-free flow-propagation prior, and ProPainter from its official weights."""
from __future__ import annotations

import torch

from . import _comfy

CATEGORY = "Region-Reg-DPO/prior"
NONE = "none"
_OUTPUTS = dict(
    RETURN_TYPES=("IMAGE", "MASK", "IMAGE"),
    RETURN_NAMES=("prior", "visibility", "visibility_preview"),
    OUTPUT_TOOLTIPS=(
        "The frames with the holes filled (outside the holes: the input exactly).",
        "1 where a hole pixel was seen in another frame (high temporal visibility), 0 where it never was.",
        "The visibility over the frames: seen hole pixels green, never-seen ones magenta.",
    ),
)
_COMMON_INPUTS = {
    "images": ("IMAGE", {"tooltip": "The original frames."}),
    "mask": ("MASK", {"tooltip": "Hole mask per frame (prepared), 1 = remove."}),
}


def visibility_preview(frames: torch.Tensor, holes: torch.Tensor, visibility: torch.Tensor) -> torch.Tensor:
    """Frames with seen hole pixels tinted green and never-seen ones magenta."""
    holes = (holes > 0.5).float().cpu()[..., None]
    seen = visibility.float().cpu()[..., None] * holes
    unseen = holes - seen
    out = frames.float().cpu() * (1 - 0.6 * holes)
    out = out + 0.6 * seen * torch.tensor([0.1, 0.9, 0.2]) + 0.6 * unseen * torch.tensor([0.9, 0.1, 0.8])
    return out.clamp(0, 1)


def _outputs(images, mask, result):
    from ..rrdpo_core.video_io import as_masks

    prior = result.frames.float().cpu()
    # The holes exactly as the prior read them (one mask for all frames, (T, H, W, C), 0/1 uint8).
    holes = torch.from_numpy(as_masks(mask, *prior.shape[:3]))
    visibility = result.visibility.float().cpu()
    return (prior, visibility, visibility_preview(prior, holes, visibility))


class RRDPOFlowPrior:
    DESCRIPTION = (
        "Fill the holes with pixels from other frames along optical flow (OpenCV DIS, both directions, flow "
        "completed inside the hole, consistency-checked), then fill never-seen pixels spatially. Needs no weights."
    )
    CATEGORY = CATEGORY
    FUNCTION = "run"
    locals().update(_OUTPUTS)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": dict(
                _COMMON_INPUTS,
                flow_downscale=("FLOAT", {"default": 2.0, "min": 1.0, "max": 8.0, "step": 0.5,
                                          "tooltip": "Compute flow at 1/x resolution: 2 is ~4x faster and as good for smooth motion."}),
                preset=(["ultrafast", "fast", "medium"], {"default": "medium", "tooltip": "OpenCV DIS flow preset."}),
            ),
        }

    @_comfy.interrupt_aware
    def run(self, images, mask, flow_downscale, preset):
        from ..rrdpo_core.prior import flow_propagation_prior

        result = flow_propagation_prior(images, mask, flow_downscale=flow_downscale, preset=preset,
                                        progress=_comfy.Progress(), cancel=_comfy.cancel_requested)
        return _outputs(images, mask, result)


class RRDPOProPainterPrior:
    DESCRIPTION = (
        "ProPainter (RAFT flow, recurrent flow completion, dual-domain propagation, sparse transformer) from its "
        "official weights in models/propainter: ProPainter.pth, recurrent_flow_completion.pth, raft-things.pth. "
        "ProPainter's weights are under the S-Lab non-commercial license."
    )
    CATEGORY = CATEGORY
    FUNCTION = "run"
    locals().update(_OUTPUTS)

    @classmethod
    def INPUT_TYPES(cls):
        files = _comfy.list_files("propainter") or [NONE]

        def pick(name):
            hit = [f for f in files if f.lower().endswith(name.lower())]
            return hit[0] if hit else files[0]

        return {
            "required": dict(
                _COMMON_INPUTS,
                propainter=(files, {"default": pick("ProPainter.pth"), "tooltip": "ProPainter.pth (the generator)."}),
                flow_completion=(files, {"default": pick("recurrent_flow_completion.pth"),
                                         "tooltip": "recurrent_flow_completion.pth."}),
                raft=(files, {"default": pick("raft-things.pth"), "tooltip": "raft-things.pth (optical flow)."}),
                mask_dilation=("INT", {"default": 4, "min": 0, "max": 32,
                                       "tooltip": "Extra dilation of the holes (cross-shaped steps), as ProPainter's default."}),
                raft_iter=("INT", {"default": 20, "min": 1, "max": 50, "tooltip": "RAFT refinement iterations."}),
                resize_ratio=("FLOAT", {"default": 1.0, "min": 0.1, "max": 1.0, "step": 0.05,
                                        "tooltip": "Work at a smaller size (output returned at the input size)."}),
            ),
        }

    @_comfy.interrupt_aware
    def run(self, images, mask, propainter, flow_completion, raft, mask_dilation, raft_iter, resize_ratio):
        from ..rrdpo_core.prior.propainter import load_propainter, propainter_prior

        if NONE in (propainter, flow_completion, raft):
            raise FileNotFoundError(
                "ProPainter weights not found: put ProPainter.pth, recurrent_flow_completion.pth and raft-things.pth "
                "in models/propainter (github.com/sczhou/ProPainter releases) and refresh."
            )
        files = {"propainter": _comfy.full_path("propainter", propainter),
                 "flow_completion": _comfy.full_path("propainter", flow_completion),
                 "raft": _comfy.full_path("propainter", raft)}
        device = _comfy.torch_device()
        with torch.inference_mode(False), torch.no_grad():
            models = load_propainter(files, device=device)
            result = propainter_prior(images, mask, models, mask_dilation=mask_dilation, raft_iter=raft_iter,
                                      resize_ratio=resize_ratio, progress=_comfy.Progress(),
                                      cancel=_comfy.cancel_requested)
        return _outputs(images, mask, result)


NODE_CLASS_MAPPINGS = {
    "RRDPOFlowPrior": RRDPOFlowPrior,
    "RRDPOProPainterPrior": RRDPOProPainterPrior,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RRDPOFlowPrior": "Flow Propagation Prior",
    "RRDPOProPainterPrior": "ProPainter Prior",
}
