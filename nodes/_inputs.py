"""Input declarations that several nodes share: the same wire, meaning and tooltip in one place.

Each helper returns ComfyUI's ``(type, options)`` tuple (or a dict of them, in widget order), so a
node's ``INPUT_TYPES`` still reads as a plain declaration.
"""
from __future__ import annotations

# rrdpo_core.offload also has "stream" (block weights re-read from their file while sampling): not offered here,
# since ComfyUI merges LoRA patches (PCM, Region-DPO) into the weights and a re-read would drop them; the
# library and the command line offer it. A literal list keeps listing the nodes free of the core's imports.
OFFLOAD_CHOICES = ("auto", "none", "windows", "blocks")
SEED_OPTS = {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}

VAE_INPUT = ("VAE", {"tooltip": "The SD1.5 VAE (sd-vae-ft-mse), from a VAELoader."})
CONDITIONING_INPUT = ("CONDITIONING", {"tooltip": "CLIPTextEncode of the empty prompt (SD1.5 CLIP)."})
HOLE_MASK_INPUT = ("MASK", {"tooltip": "Hole mask (prepared), 1 = remove: one per frame or one for all frames; "
                                       "resized to the frames if its size differs."})
FRAMES_ANY_SIZE_INPUT = ("IMAGE", {"tooltip": "The original frames, any size (padded to multiples of 8 for the "
                                              "model and cropped back)."})
OFFLOAD_INPUT = (list(OFFLOAD_CHOICES), {"default": "auto", "tooltip": (
    "Where the networks live while this runs. auto: from the free GPU memory and the memory model; "
    "none: fully loaded; windows: the video's latents stay off the GPU; blocks: BrushNet and the "
    "motion UNet streamed block by block (least memory, slower). Same result at every level.")})


def model_inputs(diffueraser_tooltip: str) -> dict:
    """``diffueraser``, ``vae`` and ``conditioning``: what every DiffuEraser node takes first."""
    return {"diffueraser": ("DIFFUERASER", {"tooltip": diffueraser_tooltip}),
            "vae": VAE_INPUT,
            "conditioning": CONDITIONING_INPUT}


def seed_input(tooltip: str) -> tuple:
    """A 64-bit seed widget with ComfyUI's control-after-generate."""
    return ("INT", dict(SEED_OPTS, tooltip=tooltip))
