"""Tiny random DiffuEraser checkpoints for tests (pipeline, training and node tests use these).

``write_tiny_diffueraser`` writes a folder in the released layout (``brushnet/`` and ``unet_main/``,
each with ``config.json`` and ``diffusion_pytorch_model.safetensors``) that ``load_diffueraser``
reads like the real one. The tiny configs keep the real structure (4 blocks, 2 layers per block,
so 12 + 1 + 15 BrushNet residuals; motion modules with 32 positions) with block channels
32/64/96/96 (multiples of the 32 GroupNorm groups) and a 32-wide text embedding; read it from
``model.cross_attention_dim`` rather than assuming 768.

Every parameter is random and non-zero, BrushNet's zero convs included, so each path of the
network visibly changes epsilon.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch

from .diffueraser import DiffuEraserModel, packaged_config
from .loader import save_diffueraser

__all__ = ["write_tiny_diffueraser", "tiny_diffueraser", "randomize_"]

PathLike = Union[str, os.PathLike]


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter of ``module`` a seeded random, non-zero value, in place.

    Weights keep the scale of their default initialisation and get a small perturbation;
    parameters initialised to constants (zero convs, biases, norm scales) get a spread around
    that constant, so none of them is inert.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            base = p.detach().float().cpu()
            if p.ndim >= 2 and base.abs().max() > 0:
                value = base + noise * base.std() * 0.1
            elif p.ndim >= 2:  # zero convs: scaled like a default init of this fan-in
                fan_in = p[0].numel()
                value = noise / fan_in ** 0.5
            else:  # biases and norm scales
                value = base + 0.05 * noise
            p.copy_(value.to(p.dtype))
    return module


def tiny_diffueraser(seed: int = 0, dtype: torch.dtype = torch.float32,
                     cross_attention_dim: int | None = None) -> DiffuEraserModel:
    """A tiny DiffuEraserModel with random non-zero weights (``seed`` fixes them).

    ``cross_attention_dim=768`` makes it take SD1.5 CLIP text embeddings (e.g. from ComfyUI's
    CLIPTextEncode in integration tests); the default is the tiny configs' 32.
    """
    configs = [packaged_config("brushnet_tiny"), packaged_config("unet_main_tiny")]
    if cross_attention_dim is not None:
        for config in configs:
            config["cross_attention_dim"] = int(cross_attention_dim)
    with torch.random.fork_rng(devices=[]):  # default inits draw from the global RNG; leave the caller's alone
        torch.manual_seed(seed)
        model = DiffuEraserModel.from_configs(*configs)
    randomize_(model, seed)
    return model.to(dtype).eval()


def write_tiny_diffueraser(path: PathLike, seed: int = 0, dtype: torch.dtype = torch.float32,
                           variant: str | None = None, cross_attention_dim: int | None = None) -> Path:
    """Write a tiny random DiffuEraser in the released layout under ``path`` and return ``path``.

    ``variant="fp16"`` names the weight files ``diffusion_pytorch_model.fp16.safetensors`` (pair it
    with ``dtype=torch.float16`` to mimic the released fp16 variant).
    """
    model = tiny_diffueraser(seed=seed, cross_attention_dim=cross_attention_dim)
    return save_diffueraser(model, path, variant=variant, dtype=dtype)
