"""BrushNet's conditioning, built one way for sampling and for training.

DiffuEraser's BrushNet sees 5 channels per frame (reference §1.8): the VAE latents of the masked
frame ``frame·(1−hole)`` (black in the hole) and the known-mask (1 = known, 0 = hole) at latent
size, taken by nearest-neighbour sampling as the release does. The sampler
(:class:`rrdpo_core.pipeline.DiffuEraserPipeline`), the pair builder (stored ``masked_latents``)
and the trainer (pairs without stored latents, and every batch's known-mask) all call these
functions, so training sees exactly what sampling sees (``tests/test_conditioning.py``).

Conventions: frames ``(T, H, W, 3)`` in [0, 1]; holes ``(..., H, W)``, nonzero = hole (bool or
0/1 floats); latents scaled, ``(T, 4, H/8, W/8)`` float32.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from .progress import CancelFn, check_cancel
from .vae import codec_encode

__all__ = ["masked_image", "known_mask_latent", "encode_frames", "encode_condition", "condition_channels"]

VAE_BATCH = 4  # frames handed to the codec at once (the released pipeline's chunk)


def _known(holes: torch.Tensor) -> torch.Tensor:
    """1 = known, 0 = hole, float32."""
    return (~holes.bool()).float()


def masked_image(frames: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """DiffuEraser's masked frame ``frame·(1−hole)``: black in the hole. ``(T, H, W, 3)``."""
    return frames * _known(holes).to(frames.device)[..., None]


def known_mask_latent(holes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """BrushNet's mask channel at latent ``size``: 1 = known, nearest resize (reference §1.8).

    ``holes``: ``(..., H, W)``. Returns ``(..., 1, h, w)`` float32 on the holes' device.
    """
    lead = holes.shape[:-2]
    known = rearrange(_known(holes), "... h w -> (...) 1 h w")
    small = F.interpolate(known, size=tuple(int(s) for s in size), mode="nearest")
    return small.reshape(*lead, 1, *small.shape[-2:])


@torch.no_grad()
def encode_frames(vae: Any, frames: torch.Tensor, generator: torch.Generator | None = None, *,
                  batch: int = VAE_BATCH, device: torch.device | str | None = None, cancel: CancelFn | None = None,
                  tick: Callable[[], None] | None = None) -> torch.Tensor:
    """Scaled latents ``(T, 4, h, w)`` float32 of frames ``(T, H, W, 3)`` in [0, 1], ``batch`` frames at a time.

    ``generator`` fixes the codec's posterior sample (drawn batch after batch, so the result does
    not depend on anything but the generator's state). ``device``: where the frames go for the
    codec and the latents stay (None: the frames stay where they are, the latents go to the CPU).
    ``cancel`` is polled before each batch, ``tick()`` called after it.
    """
    out = []
    for start in range(0, frames.shape[0], batch):
        check_cancel(cancel)
        chunk = frames[start:start + batch]
        chunk = chunk.to(device, torch.float32) if device is not None else chunk.float()
        images = rearrange(chunk, "t h w c -> t c h w") * 2 - 1
        out.append(torch.as_tensor(codec_encode(vae, images, generator)).to(device or "cpu", torch.float32))
        if tick is not None:
            tick()
    return torch.cat(out)


def condition_channels(masked_latents: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """BrushNet's input: masked-frame latents ``(..., 4, h, w)`` and known-mask ``(..., 1, h, w)`` ->
    ``(..., 5, h, w)`` (the order the released BrushNet was trained with)."""
    return torch.cat([masked_latents, known.to(masked_latents.device)], dim=-3)


def encode_condition(vae: Any, frames: torch.Tensor, holes: torch.Tensor, generator: torch.Generator | None = None,
                     *, batch: int = VAE_BATCH, device: torch.device | str | None = None,
                     cancel: CancelFn | None = None, tick: Callable[[], None] | None = None) -> torch.Tensor:
    """BrushNet's condition ``(T, 5, h, w)`` of frames ``(T, H, W, 3)`` and holes ``(T, H, W)``."""
    latents = encode_frames(vae, masked_image(frames, holes), generator, batch=batch, device=device, cancel=cancel,
                            tick=tick)
    return condition_channels(latents, known_mask_latent(holes, tuple(latents.shape[-2:])))
