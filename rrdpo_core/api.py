"""One call from weights on disk to a cleaned video: the convenience layer over the sampler.

:func:`remove_objects` is what the command line runs: it checks and pads the inputs, picks the
device and dtype, loads the model, the PCM LoRA it finds next to it (:func:`find_pcm_lora`), a
Region-DPO LoRA and the VAE, makes the flow prior, samples in the chosen memory mode and blends
the result into the input. ComfyUI's nodes do the same steps with ComfyUI's own loaders.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .inputs import check_inputs, pad_to_multiple
from .precision import resolve_device_dtype
from .pipeline import DiffuEraserPipeline
from .progress import CancelFn, ProgressFn
from .schedulers import needs_pcm_lora
from .text_embeddings import resolve_text_embeds
from .vae import load_vae

__all__ = ["find_pcm_lora", "remove_objects"]


def find_pcm_lora(model_dir: str | os.PathLike, steps: int) -> Path | None:
    """The PCM LoRA for ``steps`` steps next to the model folder, if there is one.

    Looks for ``pcm_sd15_smallcfg_<steps>step_converted.safetensors`` in the model folder, its
    parent, ``<parent>/loras``, ``<parent>/PCM_Weights/sd15`` (released layout) and, for ComfyUI's
    ``models/diffueraser/<name>``, ``models/loras``.
    """
    root = Path(model_dir).expanduser()
    name = f"pcm_sd15_smallcfg_{steps}step_converted.safetensors"
    for folder in (root, root.parent, root.parent / "loras", root.parent / "PCM_Weights" / "sd15",
                   root.parent.parent / "loras"):
        if (folder / name).is_file():
            return folder / name
    return None


def remove_objects(
    frames: Any,
    masks: Any,
    *,
    model_dir: str | os.PathLike,
    vae_path: str | os.PathLike,
    lora_path: str | os.PathLike | None = None,
    lora_strength: float = 1.0,
    prior_frames: Any = None,
    steps: int = 2,
    seed: int | None = None,
    device: Any = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    text_embeds: torch.Tensor | str | os.PathLike | None = None,
    text_encoder: str | os.PathLike | None = None,
    pcm_lora: str | os.PathLike | None = "auto",
    scheduler: str = "tcd",
    dtype: Any = None,
    blend: bool = True,
    init_mode: str = "noise",
    t_start: int = 999,
    offload: str = "none",
) -> torch.Tensor | np.ndarray:
    """Remove the masked objects from a video with DiffuEraser, from weights on disk.

    Args:
        frames: ``(T, H, W, 3)`` float in [0, 1] or uint8, torch or numpy. Any size: sides that are
            not multiples of 8 are padded (reflected) for the model and cropped back.
        masks: ``(T, H, W)``, 1 = hole, used as given (dilate them first as the released code
            does: ``rrdpo_core.masks.prepare_masks``).
        model_dir: folder with ``brushnet/`` and ``unet_main/`` (released layout).
        vae_path: SD1.5 VAE folder or single ``.safetensors`` file (``sd-vae-ft-mse``).
        lora_path, lora_strength: a Region-DPO LoRA to apply to the UNet.
        prior_frames: the prior; None computes the weight-free flow-propagation prior.
        steps: sampling steps (2 with TCD + PCM, as released).
        seed: fixes the result (None: random).
        device: None = CUDA if available, else CPU. fp16 on CUDA (``dtype`` overrides), fp32 on CPU.
        progress, cancel: see :class:`rrdpo_core.pipeline.DiffuEraserPipeline`.
        text_embeds, text_encoder: where the empty-prompt embedding comes from
            (:func:`resolve_text_embeds`).
        pcm_lora: ``"auto"`` finds the PCM LoRA for ``steps`` near ``model_dir``
            (:func:`find_pcm_lora`); a path uses that file; None runs without it.
        blend: composite the result into the input (``rrdpo_core.blend.blend_into_video``, the
            released Gaussian feather), so every pixel away from the holes is the input's exactly;
            False returns the raw generated frames.
        offload: low-memory sampling (:mod:`rrdpo_core.offload`): ``"none"`` (default, all on the
            device), ``"windows"``, ``"blocks"`` or ``"auto"`` (from the GPU's free memory). Every
            level gives the same result.

    Returns:
        ``(T, H, W, 3)`` float32 in [0, 1] at the input size: a torch tensor if ``frames`` was one,
        else numpy. An all-zero mask returns the input at once (no weights are loaded).
    """
    inputs = check_inputs(frames, masks, prior_frames, multiple=None)
    as_numpy = not isinstance(frames, torch.Tensor)

    def result(video: torch.Tensor) -> torch.Tensor | np.ndarray:
        return video.numpy() if as_numpy else video

    if not bool(inputs.holes.any()):
        return result(inputs.frames)
    device, dtype = resolve_device_dtype(device, dtype)

    from .models import load_diffueraser

    # offload "stream": the block weights are never resident (a region LoRA's base-model check reads them, so not then).
    model = load_diffueraser(model_dir, dtype=dtype, device=device, stream=offload == "stream" and lora_path is None)
    text = resolve_text_embeds(text_embeds, text_encoder, model_dir)
    pcm = find_pcm_lora(model_dir, steps) if pcm_lora == "auto" else pcm_lora
    if pcm is not None:
        from .lora import apply_kohya_lora

        pcm = Path(pcm).expanduser()
        if not pcm.is_file():
            raise FileNotFoundError(f"PCM LoRA not found: {pcm}")
        apply_kohya_lora(model.unet, pcm, adapter_name="pcm")
    elif pcm_lora == "auto" and needs_pcm_lora(scheduler, steps):
        warnings.warn(f"no PCM LoRA (pcm_sd15_smallcfg_{steps}step_converted.safetensors) found near {model_dir}: "
                      f"{steps}-step TCD without it gives blurry results. Put the file next to the model folder, "
                      "pass pcm_lora=<file>, or use scheduler='unipc' with about 20 steps", stacklevel=2)
    if lora_path is not None:
        from .region_lora import apply_region_lora

        apply_region_lora(model, lora_path, strength=lora_strength)
    codec = load_vae(vae_path, dtype=dtype, device=device)

    if inputs.prior is None:
        if bool(inputs.holes.all()):
            warnings.warn("the mask covers every pixel of every frame: nothing to propagate, running without a prior",
                          stacklevel=2)
        else:
            from .prior import flow_propagation_prior

            inputs.prior = flow_propagation_prior(inputs.frames, inputs.holes, cancel=cancel).frames
    padded, (height, width) = pad_to_multiple(inputs)
    if (height, width) != padded.size:
        warnings.warn(f"frames are {width}x{height}; padded to {padded.size[1]}x{padded.size[0]} (multiples of 8) "
                      "for the model and cropped back", stacklevel=2)
    # Low-memory sampling (rrdpo_core.offload): same result, less on the GPU; "auto" reads its free memory.
    from .memory import available_ram
    from .offload import low_memory, plan_offload

    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_ram()
    plan = plan_offload(offload, model, *padded.size, padded.num_frames, compute_device=device, free_bytes=free)
    with low_memory(model, codec, plan) as (denoiser, low_codec):
        out = DiffuEraserPipeline(denoiser, low_codec)(
            padded.frames, padded.holes, padded.prior, text, num_inference_steps=steps, scheduler=scheduler,
            seed=seed, progress=progress, cancel=cancel, init_mode=init_mode, t_start=t_start)
    generated = out.frames[:, :height, :width]
    if not blend:
        return result(generated.contiguous())
    from .blend import blend_into_video

    return result(torch.as_tensor(blend_into_video(inputs.frames, generated, inputs.holes)).float().contiguous())

