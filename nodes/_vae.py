"""ComfyUI's VAE and CONDITIONING as the core library expects them.

The core takes any latent codec with ``encode(images) -> latents`` / ``decode(latents) -> images``
working on ``(N, 3, H, W)`` images in [-1, 1] and latents already multiplied by the SD1.5
scaling factor; ComfyUI's ``VAE`` works on ``[N, H, W, C]`` images in [0, 1] and raw latents.
"""
from __future__ import annotations

import torch

SD15_SCALING_FACTOR = 0.18215


class ComfyVAECodec:
    """Adapter from ComfyUI's ``comfy.sd.VAE`` to the core's latent-codec protocol."""

    scaling_factor = SD15_SCALING_FACTOR
    downscale = 8

    def __init__(self, vae, chunk: int = 8):
        latent_channels = getattr(vae, "latent_channels", 4)
        if latent_channels != 4:
            raise ValueError(
                f"vae: this VAE has {latent_channels} latent channels; DiffuEraser needs the SD1.5 VAE "
                "(4 channels, e.g. sd-vae-ft-mse). Load it with a VAELoader node."
            )
        self.vae = vae
        self.chunk = max(1, int(chunk))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, images.shape[0], self.chunk):
            pixels = ((images[i : i + self.chunk].float() + 1) / 2).clamp(0, 1).movedim(1, -1).cpu()
            out.append(self.vae.encode(pixels).float() * self.scaling_factor)
        return torch.cat(out).to(images.device)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, latents.shape[0], self.chunk):
            pixels = self.vae.decode(latents[i : i + self.chunk].float().cpu() / self.scaling_factor)
            if pixels.ndim == 5:  # some VAEs return [B, T, H, W, C]
                pixels = pixels.reshape(-1, *pixels.shape[-3:])
            out.append(pixels.float().movedim(-1, 1) * 2 - 1)
        return torch.cat(out).to(latents.device)


def text_embeds_from_conditioning(conditioning, expected_dim: int | None = None) -> torch.Tensor:
    """The (1, 77, D) text embedding inside a ComfyUI CONDITIONING list."""
    try:
        cond = conditioning[0][0]
    except (TypeError, IndexError, KeyError):
        raise ValueError(
            "conditioning: expected a CONDITIONING from CLIPTextEncode (DiffuEraser uses the empty prompt)"
        ) from None
    if not isinstance(cond, torch.Tensor) or cond.ndim != 3:
        raise ValueError(f"conditioning: expected a [1, 77, D] tensor, got {getattr(cond, 'shape', type(cond))}")
    if expected_dim is not None and cond.shape[-1] != expected_dim:
        raise ValueError(
            f"conditioning: text embedding width {cond.shape[-1]} does not match the model's cross-attention "
            f"width {expected_dim}; encode the prompt with the SD1.5 CLIP text encoder (CLIPLoader, type "
            "stable_diffusion)"
        )
    return cond[:1].detach().clone()
