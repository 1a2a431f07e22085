"""Sampling nodes: prior latents (noise or DDIM inversion), the DiffuEraser sampler, blending."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from . import _comfy
from ._inputs import FRAMES_ANY_SIZE_INPUT, HOLE_MASK_INPUT, OFFLOAD_INPUT, model_inputs, seed_input
from ._vae import ComfyVAECodec, text_embeds_from_conditioning
from .models import DiffuEraserHandle

CATEGORY = "Region-Reg-DPO/sampling"
SCHEDULERS = ("tcd", "ddim", "unipc")
PRIOR_LATENTS = "RRDPO_PRIOR_LATENTS"


@contextlib.contextmanager
def running(handle: DiffuEraserHandle, size: tuple[int, int, int] | None = None, offload: str = "auto",
            guidance: bool = False, placement: list | None = None) -> Iterator[torch.nn.Module]:
    """The handle's networks on the compute device with its LoRAs, through ComfyUI's model management.

    The handle's model patcher (its LoRAs are weight patches of it) is loaded by ComfyUI with the
    memory estimate for ``size`` = (frames, height, width) at the ``offload`` choice
    (``nodes/_memory.py``); ComfyUI unloads it when it needs the room. What was done is appended
    to ``placement``.
    """
    from ._memory import diffueraser_running

    frames, height, width = size if size is not None else (22, 512, 512)
    with diffueraser_running(handle.patcher, height, width, frames, offload if size is not None else "none",
                             guidance) as (model, where):
        if placement is not None:
            placement.append(where.detail)
        yield model


def _size(clip) -> tuple[int, int, int]:
    """(frames, height, width) of a padded clip."""
    frames, height, width = (int(v) for v in clip.frames.shape[:3])
    return frames, height, width


def _report(report: str, placement: list[str]) -> str:
    return "\n".join([r for r in (report, *placement) if r])


def _pipeline(handle: DiffuEraserHandle, model, vae):
    from ..rrdpo_core.pipeline import DiffuEraserPipeline

    return DiffuEraserPipeline(model, ComfyVAECodec(vae))


def _check_scheduler(handle: DiffuEraserHandle, scheduler: str, steps: int) -> None:
    from ..rrdpo_core.schedulers import needs_pcm_lora

    if handle.pcm_lora is None and needs_pcm_lora(scheduler, steps):
        raise ValueError(
            f"scheduler: TCD with {steps} steps needs the PCM LoRA (choose it in Load DiffuEraser), "
            "or use unipc/ddim with about 20 steps"
        )


class RRDPOPriorLatents:
    DESCRIPTION = (
        "Turn a prior video into the sampler's start latents. 'noise' is what released DiffuEraser does "
        "(VAE-encode the prior, noise it to t_start with noise repeating every 22 frames); 'ddim_inversion' "
        "inverts the prior deterministically through the UNet + BrushNet. t_start below 999 keeps more of the prior."
    )
    CATEGORY = CATEGORY
    FUNCTION = "prepare"
    # Our own type, not ComfyUI's LATENT: these latents are scaled, already noised to t_start and carry the
    # prior's clean latents and the noise, so VAE Decode or KSampler would make garbage of them.
    RETURN_TYPES = (PRIOR_LATENTS, "STRING")
    RETURN_NAMES = ("prior_latents", "report")
    OUTPUT_TOOLTIPS = (
        "Start latents for the DiffuEraser Sampler only (use the same steps and scheduler there); not a LATENT "
        "for VAE Decode or KSampler.",
        "What was adjusted: padding to multiples of 8, a mask used for all frames or resized.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **model_inputs("From Load DiffuEraser (with any LoRA)."),
                "images": FRAMES_ANY_SIZE_INPUT,
                "mask": HOLE_MASK_INPUT,
                "prior": ("IMAGE", {"tooltip": "The prior video (Flow Propagation Prior or ProPainter)."}),
                "mode": (["noise", "ddim_inversion"], {"default": "noise",
                                                       "tooltip": "noise = released DiffuEraser; ddim_inversion = deterministic inversion."}),
                "t_start": ("INT", {"default": 999, "min": 1, "max": 999, "step": 1,
                                    "tooltip": "First timestep: 999 = full strength, lower = weaker (SDEdit-style) start."}),
                "steps": ("INT", {"default": 2, "min": 1, "max": 100,
                                  "tooltip": "Sampling steps the latents are prepared for (must match the sampler)."}),
                "scheduler": (list(SCHEDULERS), {"default": "tcd", "tooltip": "Must match the sampler."}),
                "seed": seed_input("Seed of the noise and VAE samples."),
            },
            "optional": {
                "offload": OFFLOAD_INPUT,
            },
        }

    @_comfy.interrupt_aware
    def prepare(self, diffueraser, vae, conditioning, images, mask, prior, mode, t_start, steps, scheduler, seed,
                offload="auto"):
        from ..rrdpo_core.framing import pad_for_model

        _check_scheduler(diffueraser, scheduler, steps)
        clip = pad_for_model(images, mask, prior)  # the sampler pads the same way, so the latents fit it
        placement: list[str] = []
        with torch.inference_mode(False), running(diffueraser, _size(clip), offload, placement=placement) as model:
            text = text_embeds_from_conditioning(conditioning, model.cross_attention_dim)
            pipe = _pipeline(diffueraser, model, vae)
            init = pipe.prepare_latents(
                clip.frames, clip.mask, clip.prior, text, init_mode=mode, num_inference_steps=steps,
                scheduler=scheduler, t_start=t_start, seed=seed, progress=_comfy.Progress(),
                cancel=_comfy.cancel_requested,
            )
        return (init, _report(clip.report, placement))


class RRDPODiffuEraserSampler:
    DESCRIPTION = (
        "DiffuEraser video inpainting: 22-frame windows overlapping by 5 (alternating per step), a keyframe pass "
        "for videos over 44 frames, BrushNet conditioning on the masked frames. Default: 2 steps of TCD with the "
        "PCM LoRA, as released. Gives the generated frames; blend them into the video with Blend Into Video."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "report")
    OUTPUT_TOOLTIPS = (
        "Generated frames (whole frames, not yet blended into the original), at the input size.",
        "What was adjusted: padding to multiples of 8 (cropped back), a mask used for all frames or resized.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **model_inputs("From Load DiffuEraser / Apply Region-DPO LoRA."),
                "images": FRAMES_ANY_SIZE_INPUT,
                "mask": HOLE_MASK_INPUT,
                "steps": ("INT", {"default": 2, "min": 1, "max": 100,
                                  "tooltip": "Denoising steps: 2 with TCD + PCM 2-step (released), ~20 with unipc/ddim."}),
                "scheduler": (list(SCHEDULERS), {"default": "tcd", "tooltip": "tcd (with PCM), ddim or unipc."}),
                "seed": seed_input("Seed of the noise (used when no start latents are given)."),
                "guidance_scale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1,
                                             "tooltip": "Classifier-free guidance; 0 as released (needs a negative above 1)."}),
            },
            "optional": {
                "prior_latents": (PRIOR_LATENTS, {"tooltip": "Start latents from Prior Latents (else made here from "
                                                             "the prior)."}),
                "prior": ("IMAGE", {"tooltip": "Prior video, used when no latent is given (else: no prior)."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt for guidance_scale > 1."}),
                "offload": OFFLOAD_INPUT,
            },
        }

    @_comfy.interrupt_aware
    def sample(self, diffueraser, vae, conditioning, images, mask, steps, scheduler, seed, guidance_scale,
               prior_latents=None, prior=None, negative=None, offload="auto"):
        from ..rrdpo_core.framing import pad_for_model
        from ..rrdpo_core.inversion import InitLatents

        _check_scheduler(diffueraser, scheduler, steps)
        if prior_latents is not None and not isinstance(prior_latents, InitLatents):
            raise ValueError("prior_latents: give the output of the Prior Latents node "
                             f"(got {type(prior_latents).__name__}, which has no prior/noise info)")

        # Any size: reflect-padded to multiples of 8 for the VAE and cropped back, as remove_objects does.
        clip = pad_for_model(images, mask, prior)
        placement: list[str] = []
        with torch.inference_mode(False), running(diffueraser, _size(clip), offload, guidance=guidance_scale > 1.0,
                                                  placement=placement) as model:
            text = text_embeds_from_conditioning(conditioning, model.cross_attention_dim)
            neg = text_embeds_from_conditioning(negative, model.cross_attention_dim) if negative is not None else None
            pipe = _pipeline(diffueraser, model, vae)
            with torch.no_grad():
                out = pipe(
                    clip.frames, clip.mask, clip.prior, text, num_inference_steps=steps, scheduler=scheduler,
                    guidance_scale=guidance_scale, negative_embeds=neg, seed=seed, init=prior_latents,
                    progress=_comfy.Progress(), cancel=_comfy.cancel_requested,
                )
        frames = clip.crop(out.frames).contiguous()
        return (frames.to(_comfy.intermediate_device()), _report(clip.report, placement))


class RRDPOBlendIntoVideo:
    DESCRIPTION = (
        "Composite generated frames into the original video through the hole mask. 'gaussian' is DiffuEraser's "
        "outward 21x21 feather; outside the feathered band the output is the input frame exactly."
    )
    CATEGORY = CATEGORY
    FUNCTION = "blend"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "report")
    OUTPUT_TOOLTIPS = ("The original frames with the holes replaced.",
                       "What was adjusted: a mask used for all frames or resized to the frames.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..rrdpo_core.blend import BLEND_MODES

        return {
            "required": {
                "original": ("IMAGE", {"tooltip": "The original frames."}),
                "generated": ("IMAGE", {"tooltip": "Frames from the sampler or a prior (same count and size)."}),
                "mask": ("MASK", {"tooltip": "Hole mask, 1 = replaced: one per frame or one for all frames (resized "
                                             "to the frames if its size differs)."}),
                "mode": (list(BLEND_MODES), {"default": BLEND_MODES[0],
                                             "tooltip": "gaussian = DiffuEraser's feather; the others are ours (see README)."}),
            },
        }

    @_comfy.interrupt_aware
    def blend(self, original, generated, mask, mode):
        from ..rrdpo_core.blend import blend_into_video
        from ..rrdpo_core.framing import fit_mask

        fit = fit_mask(mask, *original.shape[:3])
        out = blend_into_video(original, generated, fit.mask, mode=mode, progress=_comfy.Progress(),
                               cancel=_comfy.cancel_requested)
        return (torch.as_tensor(out).float(), fit.report or "mask used as given")


NODE_CLASS_MAPPINGS = {
    "RRDPOPriorLatents": RRDPOPriorLatents,
    "RRDPODiffuEraserSampler": RRDPODiffuEraserSampler,
    "RRDPOBlendIntoVideo": RRDPOBlendIntoVideo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RRDPOPriorLatents": "Prior Latents (noise / DDIM inversion)",
    "RRDPODiffuEraserSampler": "DiffuEraser Sampler",
    "RRDPOBlendIntoVideo": "Blend Into Video",
}
