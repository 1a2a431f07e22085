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

import json
import os
import struct
from pathlib import Path
from typing import Union

import torch

from .diffueraser import DiffuEraserModel, packaged_config
from .loader import _COMPONENTS, CONFIG_NAME, _atomic_write, save_diffueraser, weights_name

__all__ = ["write_tiny_diffueraser", "tiny_diffueraser", "randomize_", "write_random_diffueraser"]

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


def write_random_diffueraser(path: PathLike, seed: int = 0, brushnet_config: str = "brushnet",
                             unet_config: str = "unet_main") -> Path:
    """Write a DiffuEraser with random, non-zero weights in the released layout, at any size.

    With the default configs this is the released architecture (3.54 + 5.25 GB in fp32), for
    benchmarks that need real network sizes without the real weights. Tensors are generated and
    written one at a time, so memory stays at the largest tensor, not the model. Weights follow
    ``randomize_``'s scales: ``N(0, 1/fan_in)`` for matrices and kernels (BrushNet's zero convs
    included), ``1 + 0.05 N(0, 1)`` for norm scales, ``0.05 N(0, 1)`` for biases; the motion
    modules' ``pos_embed.pe`` buffers are written with their computed values.
    """
    from accelerate import init_empty_weights

    root = Path(path)
    gen = torch.Generator().manual_seed(seed)
    for name, config_name in (("brushnet", brushnet_config), ("unet_main", unet_config)):
        cls, released_name = _COMPONENTS[name]
        with init_empty_weights():  # parameters on "meta", buffers real
            network = cls.from_config(packaged_config(config_name))
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        config = json.loads(network.to_json_string())
        config["_class_name"] = released_name
        _atomic_write(folder / CONFIG_NAME, lambda tmp, c=config: Path(tmp).write_text(
            json.dumps(c, indent=2, sort_keys=True) + "\n", encoding="utf-8"))
        state = network.state_dict()

        def values(key: str, like: torch.Tensor) -> torch.Tensor:
            if not like.is_meta:  # computed buffers (pos_embed.pe)
                return like.detach().float().contiguous()
            noise = torch.randn(like.shape, generator=gen, dtype=torch.float32)
            if like.ndim >= 2:
                return noise / like[0].numel() ** 0.5
            if "norm" in key and key.endswith(".weight"):
                return 1.0 + 0.05 * noise
            return 0.05 * noise

        _atomic_write(folder / weights_name(), lambda tmp, st=state, v=values: _stream_safetensors(tmp, st, v))
    return root


def _stream_safetensors(file: PathLike, shapes: dict[str, torch.Tensor], make) -> None:
    """Write float32 tensors ``make(key, shapes[key])`` in the safetensors format, one at a time."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, like in shapes.items():
        size = like.numel() * 4
        header[key] = {"dtype": "F32", "shape": list(like.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data must start 8-byte aligned
    with open(file, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for key, like in shapes.items():
            fh.write(make(key, like).numpy().tobytes())
