"""Prior nodes: the weight-free flow-propagation prior, and ProPainter from its official weights."""
from __future__ import annotations

import torch

from . import _comfy
from ._inputs import HOLE_MASK_INPUT

CATEGORY = "Region-Reg-DPO/prior"
NONE = "none"
PROPAINTER_FILES = ("ProPainter.pth", "recurrent_flow_completion.pth", "raft-things.pth")
_OUTPUTS = dict(
    RETURN_TYPES=("IMAGE", "MASK", "IMAGE", "STRING"),
    RETURN_NAMES=("prior", "visibility", "visibility_preview", "report"),
    OUTPUT_TOOLTIPS=(
        "The frames with the holes filled (outside the holes: the input exactly).",
        "1 where a hole pixel was seen in another frame (high temporal visibility), 0 where it never was.",
        "How each hole pixel was filled: copied from one other frame green, fused from several frames blue, "
        "never seen and filled spatially magenta.",
        "What was adjusted: a mask used for all frames or resized to the frames.",
    ),
)
_COMMON_INPUTS = {
    "images": ("IMAGE", {"tooltip": "The original frames."}),
    "mask": HOLE_MASK_INPUT,
}


def _fit(images, mask):
    """One mask per frame at the frame size (one mask serves all frames; another size is resized)."""
    from ..rrdpo_core.framing import fit_mask

    return fit_mask(mask, *images.shape[:3])


def _outputs(fit, result):
    from ..rrdpo_core.prior import SOURCE_COPIED, SOURCE_SPATIAL, source_preview

    prior = result.frames.float().cpu()
    visibility = result.visibility.float().cpu()
    sources = result.source_map
    if sources is None:  # a prior that only says seen / never seen (ProPainter)
        sources = torch.where(visibility > 0.5, SOURCE_COPIED, SOURCE_SPATIAL).to(torch.uint8)
    preview = source_preview(prior, fit.mask, sources)
    return (prior, visibility, preview, fit.report or "mask used as given")


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
                                          "tooltip": "Compute the flow at 1/x resolution (DIS refines down to that resolution). 2 keeps "
                                                     "sub-pixel tracks on most footage at a quarter of the cost of 1; raise it for large frames."}),
                preset=(["ultrafast", "fast", "medium"], {"default": "medium", "tooltip": "OpenCV DIS flow preset."}),
            ),
        }

    @_comfy.interrupt_aware
    def run(self, images, mask, flow_downscale, preset):
        from ..rrdpo_core.prior import flow_propagation_prior

        fit = _fit(images, mask)
        result = flow_propagation_prior(images, fit.mask, flow_downscale=flow_downscale, preset=preset,
                                        progress=_comfy.Progress(), cancel=_comfy.cancel_requested)
        return _outputs(fit, result)


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
        found = _comfy.list_files("propainter")

        def pick(name):
            hit = [f for f in files if f.lower().endswith(name.lower())]
            return hit[0] if hit else files[0]

        # The three official names stay listed when missing, so a shipped workflow validates and running
        # it says where the weights go (instead of ComfyUI's "Value not in list").
        files = _comfy.with_placeholders(found, *[n for n in PROPAINTER_FILES
                                                  if not any(f.lower().endswith(n.lower()) for f in found)])

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
        from ..rrdpo_core.prior.propainter import propainter_prior
        from ._memory import propainter_models

        source = ("Put ProPainter.pth, recurrent_flow_completion.pth and raft-things.pth in models/propainter "
                  "(github.com/sczhou/ProPainter releases, v0.1.0).")
        if NONE in (propainter, flow_completion, raft):
            raise FileNotFoundError(f"ProPainter weights not found. {source} Then refresh ComfyUI (R).")
        files = {"propainter": _comfy.full_path("propainter", propainter, source),
                 "flow_completion": _comfy.full_path("propainter", flow_completion, source),
                 "raft": _comfy.full_path("propainter", raft, source)}
        device = _comfy.torch_device()
        fit = _fit(images, mask)
        with torch.inference_mode(False), torch.no_grad():
            # Loaded once per set of files and handed to ComfyUI's model management (nodes/_memory.py).
            models = propainter_models(files, device)
            result = propainter_prior(images, fit.mask, models, mask_dilation=mask_dilation, raft_iter=raft_iter,
                                      resize_ratio=resize_ratio, progress=_comfy.Progress(),
                                      cancel=_comfy.cancel_requested)
        return _outputs(fit, result)


NODE_CLASS_MAPPINGS = {
    "RRDPOFlowPrior": RRDPOFlowPrior,
    "RRDPOProPainterPrior": RRDPOProPainterPrior,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RRDPOFlowPrior": "Flow Propagation Prior",
    "RRDPOProPainterPrior": "ProPainter Prior",
}
