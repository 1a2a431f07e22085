"""The DiffuEraser denoiser for one window: BrushNet + motion UNet -> epsilon.

``DiffuEraserModel`` only holds the two networks and wires them together the way the released
pipeline does (reference §1.8 step 5, §6.14): BrushNet sees every frame as an image with the text
context repeated per frame; the motion UNet gets the same per-frame context and BrushNet's 28
residuals, and predicts epsilon for the whole clip. Schedulers, windows and VAE stay outside.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .brushnet import BrushNetModel
from .unet_motion import DiffuEraserUNetMotionModel

__all__ = ["DiffuEraserModel", "packaged_config", "CONFIG_NAMES"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_NAMES = ("brushnet", "unet_main", "brushnet_tiny", "unet_main_tiny")


def packaged_config(name: str) -> dict[str, Any]:
    """One of the configs shipped with the package: ``brushnet``, ``unet_main`` (the released
    DiffuEraser architecture) or ``brushnet_tiny``, ``unet_main_tiny`` (for tests)."""
    if name not in CONFIG_NAMES:
        raise ValueError(f"unknown config {name!r}; choose one of {CONFIG_NAMES}")
    return json.loads((CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))


class DiffuEraserModel(nn.Module):
    """BrushNet and the motion UNet of DiffuEraser, as one epsilon predictor.

    ``.brushnet`` and ``.unet`` are plain diffusers models (ModelMixin/ConfigMixin), so LoRA
    adapters, gradient checkpointing, ``save_pretrained`` etc. are applied to them directly.
    """

    def __init__(self, brushnet: BrushNetModel, unet: DiffuEraserUNetMotionModel):
        super().__init__()
        if brushnet.num_residuals != unet.num_residuals:
            raise ValueError(f"BrushNet emits {brushnet.num_residuals} (down, mid, up) residuals but the UNet takes "
                             f"{unet.num_residuals}; the two configs do not belong together")
        for key in ("block_out_channels", "cross_attention_dim"):
            if list(_as_list(brushnet.config[key])) != list(_as_list(unet.config[key])):
                raise ValueError(f"BrushNet and UNet disagree on {key}: {brushnet.config[key]} vs {unet.config[key]}")
        self.brushnet = brushnet
        self.unet = unet

    @classmethod
    def from_configs(cls, brushnet_config: dict[str, Any], unet_config: dict[str, Any]) -> "DiffuEraserModel":
        """Randomly initialised networks (BrushNet's zero convs start at zero, as in training)."""
        return cls(BrushNetModel.from_config(brushnet_config), DiffuEraserUNetMotionModel.from_config(unet_config))

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def cross_attention_dim(self) -> int:
        """Width of the text embedding both networks attend to (768 for the released weights)."""
        return int(_as_list(self.unet.config.cross_attention_dim)[0])

    @property
    def max_frames(self) -> int:
        """Longest window the motion modules accept (32 for the released weights)."""
        return int(self.unet.config.motion_max_seq_length)

    def predict_eps(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | int | float,
        text_embeds: torch.Tensor,
        cond_latents: torch.Tensor,
        num_frames: int,
        brushnet_scale: float = 1.0,
    ) -> torch.Tensor:
        """Epsilon for B clips of ``num_frames`` frames.

        Args:
            latents: ``(B*F, 4, h, w)`` noisy latents, clip after clip.
            timestep: int / float / 0-d tensor, or ``(B,)`` one per clip.
            text_embeds: ``(1 or B, L, cross_attention_dim)`` text context (DiffuEraser: the empty
                prompt's CLIP embedding, ``(1, 77, 768)``).
            cond_latents: ``(B*F, 5, h, w)`` = masked-image latents (4 channels, already scaled by the
                VAE factor 0.18215) then the mask at latent size (1 = known, 0 = hole).
            num_frames: F, 1 to ``max_frames``.
            brushnet_scale: multiplies BrushNet's residuals (1.0 as released; 0 skips BrushNet).

        Returns:
            ``(B*F, 4, h, w)`` epsilon in the model's dtype. Inputs are moved to the model's
            device and dtype.
        """
        if latents.ndim != 4 or cond_latents.ndim != 4:
            raise ValueError(f"latents and cond_latents must be (B*F, C, h, w); got {tuple(latents.shape)} and "
                             f"{tuple(cond_latents.shape)}")
        if not 1 <= num_frames <= self.max_frames:
            raise ValueError(f"num_frames must be between 1 and {self.max_frames}, got {num_frames}")
        n_rows = latents.shape[0]
        if n_rows % num_frames:
            raise ValueError(f"{n_rows} latent frames do not split into clips of {num_frames} frames")
        batch = n_rows // num_frames
        in_ch, cond_ch = self.unet.config.in_channels, self.brushnet.config.conditioning_channels
        if latents.shape[1] != in_ch:
            raise ValueError(f"latents need {in_ch} channels, got {latents.shape[1]}")
        if cond_latents.shape[0] != n_rows or cond_latents.shape[1] != cond_ch or cond_latents.shape[2:] != latents.shape[2:]:
            raise ValueError(f"cond_latents must be ({n_rows}, {cond_ch}, {latents.shape[2]}, {latents.shape[3]}) "
                             f"(masked-image latents + mask), got {tuple(cond_latents.shape)}")
        if text_embeds.ndim != 3 or text_embeds.shape[0] not in (1, batch) \
                or text_embeds.shape[2] != self.cross_attention_dim:
            raise ValueError(f"text_embeds must be (1 or {batch}, L, {self.cross_attention_dim}), "
                             f"got {tuple(text_embeds.shape)}")

        device, dtype = self.device, self.dtype
        latents = latents.to(device=device, dtype=dtype)
        cond_latents = cond_latents.to(device=device, dtype=dtype)
        text = text_embeds.to(device=device, dtype=dtype).expand(batch, *text_embeds.shape[1:])
        text_per_frame = text.repeat_interleave(num_frames, dim=0, output_size=n_rows)
        t = _timesteps_per_clip(timestep, batch, device)

        residuals: dict[str, Any] = {}
        if brushnet_scale != 0:
            out = self.brushnet(latents, t.repeat_interleave(num_frames, output_size=n_rows), text_per_frame,
                                cond_latents, conditioning_scale=brushnet_scale)
            residuals = dict(down_block_add_samples=out.down_block_res_samples,
                             mid_block_add_sample=out.mid_block_res_sample,
                             up_block_add_samples=out.up_block_res_samples)
        return self.unet(latents, t, text_per_frame, num_frames=num_frames, **residuals).sample


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _timesteps_per_clip(timestep: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
    t = timestep if torch.is_tensor(timestep) else torch.tensor(
        timestep, dtype=torch.float64 if isinstance(timestep, float) else torch.int64)
    t = t.to(device).reshape(-1)
    if t.shape[0] not in (1, batch):
        raise ValueError(f"timestep must be a scalar or one value per clip ({batch}), got shape {tuple(t.shape)}")
    return t.expand(batch)
