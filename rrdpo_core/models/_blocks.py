"""Layer-by-layer forward passes over diffusers' UNet blocks.

DiffuEraser needs two things diffusers' block ``forward`` methods cannot do:

* the motion UNet adds a BrushNet residual *inside* each layer, after the spatial part
  (resnet, then attention) and before the motion module, and after each down/up-sampler
  (reference §2.1);
* BrushNet reports the output of every up-block layer and up-sampler, not only the block output
  (reference §2.2).

The runners below walk the sub-modules of diffusers' own blocks (``resnets``, ``attentions``,
``motion_modules``, ``downsamplers``/``upsamplers``) in the order diffusers uses, so with no
residuals they compute exactly what the stock block computes; the modules, their names and their
weights stay diffusers'. Each layer runs under the block's gradient-checkpointing function when
``enable_gradient_checkpointing()`` was called and gradients are on.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.utils.checkpoint

__all__ = ["add_residual", "run_down_block", "run_up_block", "run_motion_mid_block", "block_residual_count",
           "timestep_tensor"]


def timestep_tensor(timestep: Any, device: torch.device) -> torch.Tensor:
    """A timestep (Python number, 0-d or 1-d tensor) as a 1-d tensor on ``device``.

    Python floats become float64 and ints int64, as diffusers' UNets do, so the sinusoidal
    embedding sees the same values either way.
    """
    if not torch.is_tensor(timestep):
        return torch.tensor([timestep], dtype=torch.float64 if isinstance(timestep, float) else torch.int64,
                            device=device)
    if timestep.ndim == 0:
        return timestep[None].to(device)
    return timestep


def block_residual_count(block: nn.Module) -> int:
    """How many residuals a down or up block takes: one per layer, plus one for its resampler."""
    sampler = getattr(block, "downsamplers", None) or getattr(block, "upsamplers", None)
    return len(block.resnets) + (sampler is not None)


def add_residual(hidden_states: torch.Tensor, residual: torch.Tensor | None, where: str) -> torch.Tensor:
    """``hidden_states + residual``, refusing broadcasting: a wrongly shaped residual is a bug upstream."""
    if residual is None:
        return hidden_states
    if residual.shape != hidden_states.shape:
        raise ValueError(
            f"BrushNet residual for {where} has shape {tuple(residual.shape)} but the UNet activation there has "
            f"shape {tuple(hidden_states.shape)}; the BrushNet and the UNet must share block_out_channels and "
            "get inputs of the same batch and latent size"
        )
    return hidden_states + residual


def _no_freeu(block: nn.Module) -> None:
    # FreeU rescales skips inside diffusers' up-block forward, which these runners replace.
    if getattr(block, "s1", None) is not None:
        raise NotImplementedError("FreeU is not supported by the DiffuEraser models; call disable_freeu() first")


def _run_layer(block: nn.Module, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    # ``block.gradient_checkpointing`` is the public flag that ``enable_gradient_checkpointing()`` sets;
    # the checkpoint itself is torch's (non-reentrant, as diffusers' default), not diffusers' private
    # ``_gradient_checkpointing_func``.
    if torch.is_grad_enabled() and getattr(block, "gradient_checkpointing", False):
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _next(residuals: Iterator[torch.Tensor] | None) -> torch.Tensor | None:
    return None if residuals is None else next(residuals)


def run_down_block(
    block: nn.Module,
    hidden_states: torch.Tensor,
    temb: torch.Tensor,
    *,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
    num_frames: int = 1,
    residuals: Iterator[torch.Tensor] | None = None,
    name: str = "down block",
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One down block; returns ``(hidden_states, skip_states)`` like diffusers' block.

    Per layer: resnet -> attention (if any) -> ``+ next(residuals)`` -> motion module (if any); the
    layer output is a skip. Then the down-sampler (if any) -> ``+ next(residuals)``, also a skip.
    """
    attentions = getattr(block, "attentions", None)
    motion_modules = getattr(block, "motion_modules", None)
    skips: tuple[torch.Tensor, ...] = ()
    for i, resnet in enumerate(block.resnets):
        attn = attentions[i] if attentions is not None else None
        motion = motion_modules[i] if motion_modules is not None else None

        # Modules are bound as defaults: checkpointing re-runs this function during backward,
        # after the loop variables have moved on.
        def layer(h, temb, ehs, residual, resnet=resnet, attn=attn, motion=motion, where=f"{name} layer {i}"):
            h = resnet(h, temb)
            if attn is not None:
                h = attn(h, encoder_hidden_states=ehs, cross_attention_kwargs=cross_attention_kwargs,
                         attention_mask=attention_mask, return_dict=False)[0]
            h = add_residual(h, residual, where)
            if motion is not None:
                h = motion(h, num_frames=num_frames)
            return h

        hidden_states = _run_layer(block, layer, hidden_states, temb, encoder_hidden_states, _next(residuals))
        skips += (hidden_states,)
    if block.downsamplers is not None:
        for downsampler in block.downsamplers:
            hidden_states = downsampler(hidden_states)
        hidden_states = add_residual(hidden_states, _next(residuals), f"{name} downsampler")
        skips += (hidden_states,)
    return hidden_states, skips


def run_up_block(
    block: nn.Module,
    hidden_states: torch.Tensor,
    skips: tuple[torch.Tensor, ...],
    temb: torch.Tensor,
    *,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
    upsample_size: torch.Size | None = None,
    num_frames: int = 1,
    residuals: Iterator[torch.Tensor] | None = None,
    taps: list[torch.Tensor] | None = None,
    name: str = "up block",
) -> torch.Tensor:
    """One up block, consuming ``skips`` from the end like diffusers.

    Per layer: concat skip -> resnet -> attention (if any) -> ``+ next(residuals)`` -> motion module
    (if any). Then the up-sampler (if any) -> ``+ next(residuals)``. When ``taps`` is a list, every
    layer output and the up-sampler output are appended to it (BrushNet's decoder taps).
    """
    _no_freeu(block)
    attentions = getattr(block, "attentions", None)
    motion_modules = getattr(block, "motion_modules", None)
    for i, resnet in enumerate(block.resnets):
        skip, skips = skips[-1], skips[:-1]
        attn = attentions[i] if attentions is not None else None
        motion = motion_modules[i] if motion_modules is not None else None

        def layer(h, skip, temb, ehs, residual, resnet=resnet, attn=attn, motion=motion, where=f"{name} layer {i}"):
            h = resnet(torch.cat([h, skip], dim=1), temb)
            if attn is not None:
                h = attn(h, encoder_hidden_states=ehs, cross_attention_kwargs=cross_attention_kwargs,
                         attention_mask=attention_mask, return_dict=False)[0]
            h = add_residual(h, residual, where)
            if motion is not None:
                h = motion(h, num_frames=num_frames)
            return h

        hidden_states = _run_layer(block, layer, hidden_states, skip, temb, encoder_hidden_states, _next(residuals))
        if taps is not None:
            taps.append(hidden_states)
    if block.upsamplers is not None:
        for upsampler in block.upsamplers:
            hidden_states = upsampler(hidden_states, upsample_size)
        hidden_states = add_residual(hidden_states, _next(residuals), f"{name} upsampler")
        if taps is not None:
            taps.append(hidden_states)
    return hidden_states


def run_motion_mid_block(
    block: nn.Module,
    hidden_states: torch.Tensor,
    temb: torch.Tensor,
    *,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
    num_frames: int = 1,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """The motion mid block in the order DiffuEraser's weights were trained with (reference §2.1).

    resnets[0] -> attention -> resnets[1] -> ``+ residual`` -> motion module -> resnets[1] *again*.
    diffusers' ``UNetMidBlockCrossAttnMotion`` runs attention -> motion module -> resnets[1] once; the
    released unet_main was trained (stage 2, spatial weights frozen) with the second resnet applied
    twice, so this order is what reproduces it.
    """
    hidden_states = block.resnets[0](hidden_states, temb)
    for attn, resnet, motion in zip(block.attentions, block.resnets[1:], block.motion_modules):

        def layer(h, temb, ehs, residual, attn=attn, resnet=resnet, motion=motion):
            h = attn(h, encoder_hidden_states=ehs, cross_attention_kwargs=cross_attention_kwargs,
                     attention_mask=attention_mask, return_dict=False)[0]
            h = resnet(h, temb)
            h = add_residual(h, residual, "mid block")
            h = motion(h, num_frames=num_frames)
            return resnet(h, temb)

        hidden_states = _run_layer(block, layer, hidden_states, temb, encoder_hidden_states, residual)
    return hidden_states
