"""The latent codec: images <-> SD1.5 latents, as the sampler and the trainer use them.

The library never talks to a VAE directly; it takes any object with

* ``encode(images) -> latents``: ``images`` ``(N, 3, H, W)`` in [-1, 1]; latents ``(N, 4, H/8, W/8)``
  already multiplied by the VAE scaling factor (0.18215 for SD1.5);
* ``decode(latents) -> images``: the inverse, images in [-1, 1].

``AutoencoderKLCodec`` adapts a diffusers ``AutoencoderKL`` (e.g. ``sd-vae-ft-mse``, what released
DiffuEraser uses, reference §1.2/§2.3); ComfyUI's VAE has its own adapter in ``nodes/_vae.py``.
Encoding and decoding run in chunks so a long video never sits in the VAE at once: the released
code encodes 4 frames at a time and decodes one frame at a time (reference §1.6, §1.8 step 8).
"""
from __future__ import annotations

import inspect
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "SD15_SCALING_FACTOR",
    "SD15_VAE_CONFIG",
    "LatentCodec",
    "AutoencoderKLCodec",
    "load_vae",
    "make_tiny_vae",
    "write_tiny_vae",
    "codec_encode",
]

SD15_SCALING_FACTOR = 0.18215

# The SD1.5 VAE architecture (sd-vae-ft-mse and the VAE inside SD1.5 share it). Used to build the
# model for single-file checkpoints, which carry weights but no config.
SD15_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": SD15_SCALING_FACTOR,
}


@runtime_checkable
class LatentCodec(Protocol):
    """What the sampler needs from a VAE (see the module docstring for the value conventions)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


def codec_encode(codec: LatentCodec, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``codec.encode(images)``, passing ``generator`` when the codec samples (so a seed fixes it)."""
    encode = codec.encode
    try:
        takes_generator = "generator" in inspect.signature(encode).parameters
    except (TypeError, ValueError):  # builtins / C extensions without a signature
        takes_generator = False
    return encode(images, generator=generator) if takes_generator else encode(images)


@dataclass
class AutoencoderKLCodec:
    """A diffusers ``AutoencoderKL`` as a :class:`LatentCodec`.

    Args:
        vae: the autoencoder; its device and dtype are where the work runs.
        sample: draw ``latent_dist.sample()`` as released DiffuEraser does (True, default), or take
            the posterior mean (``mode()``, deterministic, slightly sharper).
        encode_chunk: frames per encoder call (released: 4).
        decode_chunk: frames per decoder call (released: 1; raise it on a big GPU for speed).
        scaling_factor: defaults to ``vae.config.scaling_factor`` (0.18215 for SD1.5).

    Results come back as float32 on the device of the input, whatever the VAE's dtype.
    """

    vae: Any
    sample: bool = True
    encode_chunk: int = 4
    decode_chunk: int = 1
    scaling_factor: float | None = None

    def __post_init__(self) -> None:
        if self.scaling_factor is None:
            self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", SD15_SCALING_FACTOR))
        if self.encode_chunk < 1 or self.decode_chunk < 1:
            raise ValueError("encode_chunk and decode_chunk must be at least 1")
        latent_channels = int(self.vae.config.latent_channels)
        if latent_channels != 4:
            raise ValueError(f"this VAE has {latent_channels} latent channels; DiffuEraser needs the SD1.5 VAE "
                             "(4 channels, e.g. sd-vae-ft-mse)")

    @property
    def downscale(self) -> int:
        """Pixels per latent cell along each side (8 for SD1.5: one per down block but the last)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode expects images (N, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        down = self.downscale
        if images.shape[-2] % down or images.shape[-1] % down:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of {down}; "
                             f"pad or resize the frames to multiples of {down} first")
        out = []
        for start in range(0, images.shape[0], self.encode_chunk):
            chunk = images[start:start + self.encode_chunk].to(self.vae.device, self.vae.dtype)
            dist = self.vae.encode(chunk).latent_dist
            latents = dist.sample(generator=generator) if self.sample else dist.mode()
            out.append((latents.float() * self.scaling_factor).to(images.device))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 4:
            raise ValueError(f"decode expects latents (N, C, h, w), got shape {tuple(latents.shape)}")
        out = []
        for start in range(0, latents.shape[0], self.decode_chunk):
            chunk = latents[start:start + self.decode_chunk].to(self.vae.device, torch.float32) / self.scaling_factor
            images = self.vae.decode(chunk.to(self.vae.dtype)).sample
            out.append(images.float().to(latents.device))
        return torch.cat(out)


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _load_single_file(path: Path, dtype: torch.dtype, device: torch.device, config: dict[str, Any]):
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: only .safetensors single-file VAEs are loaded (no pickled .ckpt/.pt); "
                         "convert it, or pass the diffusers folder (config.json + weights) instead")
    state = _strip_prefix(load_file(str(path)))
    if any(k.startswith("encoder.down_blocks.") for k in state):
        # Already diffusers-named (a lone diffusion_pytorch_model.safetensors): build and load strictly.
        vae = AutoencoderKL.from_config(config)
        missing, unexpected = vae.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: not an SD1.5 VAE ({len(missing)} missing keys, e.g. {missing[:3]}; "
                             f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    elif any(k.startswith("encoder.down.") for k in state):
        # Original (LDM / ComfyUI models/vae) naming: diffusers' converter maps it, given the config
        # as a local folder so nothing is looked up online.
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **config}))
            try:
                vae = AutoencoderKL.from_single_file(state, config=tmp, local_files_only=True)
            except Exception as exc:  # diffusers raises several kinds on a mismatching checkpoint
                raise ValueError(f"{path}: could not read it as an SD1.5 VAE ({exc})") from exc
    else:
        raise ValueError(f"{path}: no VAE encoder/decoder weights found (expected keys like 'encoder.down.0...' "
                         "or 'encoder.down_blocks.0...'); is this a VAE file?")
    return vae.to(device=device, dtype=dtype).eval()


def load_vae(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
             config: dict[str, Any] | None = None, **codec_kwargs: Any) -> AutoencoderKLCodec:
    """Load an SD1.5 VAE from local files and wrap it as a codec. Nothing is downloaded.

    ``path`` is one of: a diffusers VAE folder (``config.json`` + ``diffusion_pytorch_model.*``, e.g.
    ``sd-vae-ft-mse``); an SD1.5 pipeline folder with a ``vae/`` subfolder; or a single
    ``.safetensors`` file in the original or diffusers naming (e.g. ComfyUI's
    ``models/vae/vae-ft-mse-840000-ema-pruned.safetensors``). ``config`` is the architecture of a
    single-file VAE (default :data:`SD15_VAE_CONFIG`). ``codec_kwargs`` go to
    :class:`AutoencoderKLCodec` (``sample``, chunk sizes).
    """
    from diffusers import AutoencoderKL

    p = Path(path).expanduser()
    device = torch.device(device)
    if not p.exists():
        raise FileNotFoundError(f"VAE not found at {p}; pass the sd-vae-ft-mse folder (config.json + weights) or a "
                                "single .safetensors VAE file (e.g. vae-ft-mse-840000-ema-pruned.safetensors)")
    if p.is_file():
        vae = _load_single_file(p, dtype, device, config or SD15_VAE_CONFIG)
    else:
        sub = "vae" if not (p / "config.json").is_file() and (p / "vae" / "config.json").is_file() else None
        if not (p / (sub or "") / "config.json").is_file():
            raise FileNotFoundError(f"{p} has no config.json (nor vae/config.json); pass a diffusers VAE folder "
                                    "or a single .safetensors VAE file")
        try:
            vae = AutoencoderKL.from_pretrained(str(p), subfolder=sub, torch_dtype=dtype, local_files_only=True)
        except (OSError, EnvironmentError) as exc:
            raise FileNotFoundError(f"could not load the VAE weights in {p / (sub or '')}: {exc}") from exc
        vae = vae.to(device).eval()
    return AutoencoderKLCodec(vae, **codec_kwargs)


def make_tiny_vae(seed: int = 0, dtype: torch.dtype = torch.float32, **codec_kwargs: Any) -> AutoencoderKLCodec:
    """A tiny random AutoencoderKL codec for tests: 4 blocks, so the 8x downscale of SD1.5 is kept.

    Weights come from a seeded generator without touching the global RNG.
    """
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64,
            scaling_factor=SD15_SCALING_FACTOR,
        )
    if dtype != torch.float32:
        vae = vae.to(dtype)
    return AutoencoderKLCodec(vae.eval(), **codec_kwargs)


def write_tiny_vae(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save :func:`make_tiny_vae`'s weights as a diffusers VAE folder (for tests that load from disk)."""
    folder = Path(folder)
    make_tiny_vae(seed).vae.save_pretrained(str(folder))
    return folder
