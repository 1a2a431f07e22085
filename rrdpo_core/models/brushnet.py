"""BrushNet with cross-attention: DiffuEraser's inpainting branch (reference §2.2).

A full SD1.5-shaped UNet (encoder, mid block and decoder, no ``conv_out``) whose input layer
``conv_in_condition`` takes 9 channels: the noisy latent (4), the VAE latent of the masked image
(4) and the mask (1 = known, 0 = hole), in that order. Every down skip, the mid-block output, and
every decoder layer and up-sampler output go through a 1x1 "zero conv"; the 12 + 1 + 15 results are
the residuals the motion UNet adds layer by layer (see ``unet_motion.py``).

Frames are a batch here: BrushNet has no temporal layers. The blocks are diffusers' 2D blocks, so
the state dict is the SD1.5 UNet's minus ``conv_in``/``conv_norm_out``/``conv_out``, plus
``conv_in_condition`` and the ``brushnet_*`` zero convs, key for key as released.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn, get_down_block, get_up_block
from diffusers.utils import BaseOutput

from ._blocks import run_up_block, timestep_tensor

__all__ = ["BrushNetModel", "BrushNetOutput"]

_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclass
class BrushNetOutput(BaseOutput):
    """The residuals BrushNet hands to the motion UNet, already multiplied by the conditioning scale.

    ``down_block_res_samples``: one per down skip (conv_in, each layer, each down-sampler; 12 for SD1.5).
    ``mid_block_res_sample``: the mid-block output's residual.
    ``up_block_res_samples``: one per decoder layer and up-sampler (15 for SD1.5).
    """

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor
    up_block_res_samples: tuple[torch.Tensor, ...]


def _zero_conv(channels: int) -> nn.Conv2d:
    # Zero-initialised so a freshly built BrushNet leaves the UNet untouched (how it was trained).
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class BrushNetModel(ModelMixin, ConfigMixin):
    """DiffuEraser's BrushNet ("brushnet_CA"). Accepts the released ``brushnet/config.json`` as is.

    Config keys that SD1.5 UNet configs carry but that this branch does not implement (class or
    addition embeddings, an encoder projection, pooled conditions) are accepted at their inert
    values and rejected otherwise, so a config asking for something else fails loudly.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 5,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        only_cross_attention: bool = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        transformer_layers_per_block: int = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int = 8,
        num_attention_heads: int | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool | None = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        brushnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        # conditioning_embedding_out_channels and addition_embed_type_num_heads are leftovers of the
        # ControlNet/SD1.5 configs BrushNet was derived from; they build nothing.
        unsupported = {
            "encoder_hid_dim": encoder_hid_dim, "encoder_hid_dim_type": encoder_hid_dim_type,
            "class_embed_type": class_embed_type, "addition_embed_type": addition_embed_type,
            "addition_time_embed_dim": addition_time_embed_dim, "num_class_embeds": num_class_embeds,
            "projection_class_embeddings_input_dim": projection_class_embeddings_input_dim,
        }
        set_keys = {k: v for k, v in unsupported.items() if v is not None}
        if set_keys:
            raise ValueError(f"BrushNetModel does not implement {set_keys}; DiffuEraser's BrushNet config has them null")
        if global_pool_conditions:
            raise ValueError("BrushNetModel does not implement global_pool_conditions=True (DiffuEraser uses false)")
        if brushnet_conditioning_channel_order not in ("rgb", "bgr"):
            raise ValueError(f"brushnet_conditioning_channel_order must be 'rgb' or 'bgr', got {brushnet_conditioning_channel_order!r}")
        if not (len(down_block_types) == len(up_block_types) == len(block_out_channels)):
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        for t in down_block_types:
            if t not in _DOWN_TYPES:
                raise ValueError(f"unsupported down block {t!r}; expected one of {_DOWN_TYPES}")
        for t in up_block_types:
            if t not in _UP_TYPES:
                raise ValueError(f"unsupported up block {t!r}; expected one of {_UP_TYPES}")
        if mid_block_type != "UNetMidBlock2DCrossAttn":
            raise ValueError(f"unsupported mid block {mid_block_type!r}; expected 'UNetMidBlock2DCrossAttn'")
        for name, value in (("layers_per_block", layers_per_block), ("transformer_layers_per_block",
                            transformer_layers_per_block), ("cross_attention_dim", cross_attention_dim)):
            if not isinstance(value, int):
                raise ValueError(f"{name} must be a single int for BrushNetModel, got {value!r}")

        # SD1.5 configs name the head count "attention_head_dim"; diffusers keeps that reading.
        heads = num_attention_heads or attention_head_dim
        n_blocks = len(block_out_channels)
        time_embed_dim = block_out_channels[0] * 4

        self.conv_in_condition = nn.Conv2d(in_channels + conditioning_channels, block_out_channels[0], 3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)

        self.down_blocks = nn.ModuleList()
        self.brushnet_down_blocks = nn.ModuleList([_zero_conv(block_out_channels[0])])
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            is_final = i == n_blocks - 1
            self.down_blocks.append(get_down_block(
                block_type,
                num_layers=layers_per_block,
                transformer_layers_per_block=transformer_layers_per_block,
                in_channels=input_channel,
                out_channels=output_channel,
                temb_channels=time_embed_dim,
                add_downsample=not is_final,
                resnet_eps=norm_eps,
                resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups,
                cross_attention_dim=cross_attention_dim,
                num_attention_heads=heads,
                attention_head_dim=attention_head_dim,
                downsample_padding=downsample_padding,
                use_linear_projection=use_linear_projection,
                only_cross_attention=only_cross_attention,
                upcast_attention=upcast_attention,
                resnet_time_scale_shift=resnet_time_scale_shift,
            ))
            for _ in range(layers_per_block + (not is_final)):
                self.brushnet_down_blocks.append(_zero_conv(output_channel))

        self.mid_block = UNetMidBlock2DCrossAttn(
            in_channels=block_out_channels[-1],
            temb_channels=time_embed_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            output_scale_factor=mid_block_scale_factor,
            resnet_time_scale_shift=resnet_time_scale_shift,
            cross_attention_dim=cross_attention_dim,
            num_attention_heads=heads,
            resnet_groups=norm_num_groups,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
        )
        self.brushnet_mid_block = _zero_conv(block_out_channels[-1])

        self.up_blocks = nn.ModuleList()
        self.brushnet_up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            is_final = i == n_blocks - 1
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            input_channel = reversed_channels[min(i + 1, n_blocks - 1)]
            self.up_blocks.append(get_up_block(
                block_type,
                num_layers=layers_per_block + 1,
                transformer_layers_per_block=transformer_layers_per_block,
                in_channels=input_channel,
                out_channels=output_channel,
                prev_output_channel=prev_output_channel,
                temb_channels=time_embed_dim,
                add_upsample=not is_final,
                resnet_eps=norm_eps,
                resnet_act_fn=act_fn,
                resolution_idx=i,
                resnet_groups=norm_num_groups,
                cross_attention_dim=cross_attention_dim,
                num_attention_heads=heads,
                use_linear_projection=use_linear_projection,
                only_cross_attention=only_cross_attention,
                upcast_attention=upcast_attention,
                resnet_time_scale_shift=resnet_time_scale_shift,
                attention_head_dim=attention_head_dim,
            ))
            for _ in range(layers_per_block + 1 + (not is_final)):
                self.brushnet_up_blocks.append(_zero_conv(output_channel))

    @property
    def num_residuals(self) -> tuple[int, int, int]:
        """``(down, mid, up)`` residual counts; (12, 1, 15) for SD1.5."""
        return len(self.brushnet_down_blocks), 1, len(self.brushnet_up_blocks)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        brushnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> BrushNetOutput | tuple:
        """Residuals for a batch of frames.

        Args:
            sample: noisy latents ``(N, in_channels, h, w)``; N counts frames (B*F).
            timestep: a number, a 0-d tensor, or one value per row ``(N,)``.
            encoder_hidden_states: ``(N, L, cross_attention_dim)`` text context, one row per frame.
            brushnet_cond: ``(N, conditioning_channels, h, w)`` = masked-image latent (4) + mask (1, 1 = known).
            conditioning_scale: multiplies every residual (DiffuEraser uses 1.0).
        """
        if sample.ndim != 4 or brushnet_cond.ndim != 4 or brushnet_cond.shape[0] != sample.shape[0] \
                or brushnet_cond.shape[2:] != sample.shape[2:]:
            raise ValueError(
                f"BrushNet needs sample (N,C,h,w) and brushnet_cond (N,C',h,w) of the same N, h, w; got "
                f"{tuple(sample.shape)} and {tuple(brushnet_cond.shape)}"
            )
        expected = self.config.in_channels + self.config.conditioning_channels
        if sample.shape[1] + brushnet_cond.shape[1] != expected:
            raise ValueError(
                f"BrushNet's conv_in_condition takes {expected} channels ({self.config.in_channels} latent + "
                f"{self.config.conditioning_channels} condition); got {sample.shape[1]} + {brushnet_cond.shape[1]}"
            )
        if self.config.brushnet_conditioning_channel_order == "bgr":
            brushnet_cond = torch.flip(brushnet_cond, dims=[1])
        if attention_mask is not None:
            attention_mask = (1 - attention_mask.to(sample.dtype)) * -10000.0
            attention_mask = attention_mask.unsqueeze(1)

        timesteps = timestep_tensor(timestep, sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        # time_proj has no weights and returns float32; the embedding may run in half precision.
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype), timestep_cond)

        sample = self.conv_in_condition(torch.cat([sample, brushnet_cond], dim=1))

        down_res: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states,
                                    attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            down_res += res
        down_out = tuple(conv(h) for conv, h in zip(self.brushnet_down_blocks, down_res, strict=True))

        sample = self.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs)
        mid_out = self.brushnet_mid_block(sample)

        taps: list[torch.Tensor] = []
        skips = down_res
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            # The size is always forwarded, so odd latent sizes up-sample back to the skip's size.
            upsample_size = skips[-1].shape[2:] if i < len(self.up_blocks) - 1 else None
            sample = run_up_block(block, sample, block_skips, emb, encoder_hidden_states=encoder_hidden_states,
                                  attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs,
                                  upsample_size=upsample_size, taps=taps, name=f"BrushNet up block {i}")
        up_out = tuple(conv(h) for conv, h in zip(self.brushnet_up_blocks, taps, strict=True))

        if conditioning_scale != 1.0:
            down_out = tuple(r * conditioning_scale for r in down_out)
            mid_out = mid_out * conditioning_scale
            up_out = tuple(r * conditioning_scale for r in up_out)
        if not return_dict:
            return down_out, mid_out, up_out
        return BrushNetOutput(down_block_res_samples=down_out, mid_block_res_sample=mid_out, up_block_res_samples=up_out)
