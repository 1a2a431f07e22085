"""DiffuEraser's main denoiser: diffusers' ``UNetMotionModel`` with BrushNet injection.

The modules, their names and the state dict are diffusers' ``UNetMotionModel`` unchanged (the
released ``unet_main`` loads key for key). Only ``forward`` is ours, for two reasons (reference
§2.1, §6.3-6.4, §6.14):

* BrushNet residuals are added *inside* the blocks: after ``conv_in`` (the first skip is stored
  before that addition), after each layer's resnet/attention and before its motion module, and
  after each down/up-sampler. diffusers can only add ControlNet residuals to the skips.
* the mid block runs resnets[0] -> attention -> resnets[1] -> (+ mid residual) -> motion module ->
  resnets[1] again, the order the released weights were trained with.

Everything else (time embedding, attention masks, up-sample sizes for odd latent sizes, LoRA
scaling through ``cross_attention_kwargs["scale"]``) follows the parent class.
"""
from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D, UNetMotionModel, UNetMotionOutput

from ._blocks import (add_residual, block_residual_count, run_down_block, run_motion_mid_block, run_up_block,
                      timestep_tensor)

__all__ = ["DiffuEraserUNetMotionModel", "contiguous_motion_inputs"]

logger = logging.getLogger(__name__)

# What the original DiffuEraser ``UNetMotionModel.__init__`` (libs/unet_motion_model.py of the
# release) takes. A released-layout config.json also carries the SD1.5 UNet's keys, copied by
# ``from_unet2d`` (attention_head_dim, center_input_sample, flip_sin_to_cos, ...): the original
# never reads them, so whatever their values it builds the same network, and so do we.
_ORIGINAL_ARGS = frozenset({
    "sample_size", "in_channels", "conditioning_channels", "out_channels", "down_block_types", "mid_block_type",
    "up_block_types", "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor",
    "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim", "use_linear_projection", "num_attention_heads",
    "motion_max_seq_length", "motion_num_attention_heads", "use_motion_mid_block", "encoder_hid_dim",
    "encoder_hid_dim_type", "conditioning_embedding_out_channels",
})
# Arguments the original takes but never uses (a ControlNet conditioning embedding that is
# commented out; the mid block is chosen by use_motion_mid_block, not by this name).
_ORIGINAL_UNUSED = frozenset({"conditioning_channels", "conditioning_embedding_out_channels", "mid_block_type"})
# Keys diffusers' UNetMotionModel reads but the original does not: the original always builds
# one spatial and one temporal transformer layer per block, one mid-block layer, no extra time or
# class embeddings. These values make the parent class build exactly that, whatever the file says.
_ORIGINAL_IMPLIED: dict[str, Any] = {
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "temporal_transformer_layers_per_block": 1,
    "reverse_temporal_transformer_layers_per_block": None,
    "transformer_layers_per_mid_block": None,
    "temporal_transformer_layers_per_mid_block": 1,
    "reverse_motion_num_attention_heads": None,
    "mid_block_layers": 1,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "projection_class_embeddings_input_dim": None,
    "time_cond_proj_dim": None,
}
# Arguments the original does read that change what the network computes without changing any
# weight's shape, so the weights file cannot vouch for them. DiffuEraser's unet_main was trained
# with these values; another value would load the same tensors into a different network and give
# silently wrong results, so it is refused. (Shape-changing keys such as block_out_channels or
# cross_attention_dim are checked by the loader against the weights.)
_SHAPE_INVISIBLE: dict[str, tuple[Any, ...]] = {
    "num_attention_heads": (8, [8, 8, 8, 8], (8, 8, 8, 8)),
    "motion_num_attention_heads": (8,),
    "act_fn": ("silu",),
    "norm_num_groups": (32,),
    "norm_eps": (1e-5,),
    "mid_block_scale_factor": (1, 1.0),
    "downsample_padding": (1,),
    "use_motion_mid_block": (True,),
    "encoder_hid_dim_type": (None,),
}


class DiffuEraserUNetMotionModel(UNetMotionModel):
    """``UNetMotionModel`` whose forward takes BrushNet's residuals and keeps DiffuEraser's mid block.

    Build it with ``from_config`` / ``from_pretrained`` like the parent; the released
    ``unet_main/config.json`` (``_class_name: UNetMotionModel``) is accepted as is.
    """

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """``from_config`` of a config read the way the original DiffuEraser ``UNetMotionModel`` reads it.

        ``from_pretrained`` builds the model through ``from_config`` too, so both see the same config.
        """
        if isinstance(config, Mapping):
            config = cls.original_config(config)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def original_config(cls, config_dict: Mapping[str, Any]) -> dict[str, Any]:
        """The config as the original DiffuEraser ``UNetMotionModel`` reads it.

        Keys the original never reads are dropped at any value; keys only diffusers reads are set to
        what the original builds; keys that change the network invisibly to the weights must have
        DiffuEraser's values (ValueError naming the key otherwise).
        """
        config_dict = dict(config_dict)
        for key, allowed in _SHAPE_INVISIBLE.items():
            if key in config_dict and config_dict[key] not in allowed:
                raise ValueError(
                    f"unet_main config sets {key}={config_dict[key]!r}, but DiffuEraser's motion UNet was trained with "
                    f"{key}={allowed[0]!r}. The weights do not record this value, so loading them into such a network "
                    "would silently give wrong results; use the config.json that came with the DiffuEraser weights"
                )
        parent_args = set(inspect.signature(UNetMotionModel.__init__).parameters) - {"self"}
        ignored = {}
        for key in list(config_dict):
            if key.startswith("_") or key in _ORIGINAL_ARGS - _ORIGINAL_UNUSED:
                continue
            if key in _ORIGINAL_IMPLIED:
                if config_dict[key] != _ORIGINAL_IMPLIED[key]:
                    ignored[key] = config_dict[key]
                config_dict[key] = _ORIGINAL_IMPLIED[key]
            elif key not in parent_args or key in _ORIGINAL_UNUSED:
                ignored[key] = config_dict.pop(key)
        for key, value in _ORIGINAL_IMPLIED.items():
            config_dict.setdefault(key, value)
        if ignored:
            logger.debug("unet_main config: ignoring %s, which the original DiffuEraser UNetMotionModel does not read",
                         sorted(ignored))
        return config_dict

    @property
    def num_residuals(self) -> tuple[int, int, int]:
        """``(down, mid, up)`` BrushNet residual counts this UNet consumes; (12, 1, 15) for SD1.5."""
        down = 1 + sum(block_residual_count(b) for b in self.down_blocks)
        return down, 1, sum(block_residual_count(b) for b in self.up_blocks)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        num_frames: int | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_block_add_samples: tuple[torch.Tensor, ...] | list[torch.Tensor] | None = None,
        mid_block_add_sample: torch.Tensor | None = None,
        up_block_add_samples: tuple[torch.Tensor, ...] | list[torch.Tensor] | None = None,
        return_dict: bool = True,
    ) -> UNetMotionOutput | tuple[torch.Tensor]:
        """Predict noise for clips of ``num_frames`` frames.

        Args:
            sample: ``(B*F, C, h, w)`` frames of B clips laid out clip after clip (then ``num_frames``
                is required), or diffusers' ``(B, C, F, h, w)``. The output has the input's layout.
            timestep: a number, a 0-d tensor, or ``(B,)`` one per clip.
            encoder_hidden_states: ``(B*F, L, D)``, ``(B, L, D)`` or ``(1, L, D)``; per-clip rows are
                repeated over the clip's frames.
            down_block_add_samples / mid_block_add_sample / up_block_add_samples: BrushNet's
                residuals (all three or none); see ``BrushNetModel``.
            down_block_additional_residuals / mid_block_additional_residual: ControlNet-style
                residuals added to the skips, as in the parent class.
            cross_attention_kwargs: passed to the attention processors; its ``"scale"`` multiplies
                every LoRA adapter for this call, as in diffusers.
        """
        if cross_attention_kwargs and "scale" in cross_attention_kwargs:
            cross_attention_kwargs = dict(cross_attention_kwargs)
            with _lora_scale(self, float(cross_attention_kwargs.pop("scale"))):
                return self.forward(sample, timestep, encoder_hidden_states, num_frames, timestep_cond, attention_mask,
                                    cross_attention_kwargs, added_cond_kwargs, down_block_additional_residuals,
                                    mid_block_additional_residual, down_block_add_samples, mid_block_add_sample,
                                    up_block_add_samples, return_dict)
        if self.config.addition_embed_type is not None or self.encoder_hid_proj is not None:
            raise NotImplementedError("DiffuEraserUNetMotionModel supports no addition or image-projection embeddings")
        if not hasattr(self.mid_block, "motion_modules"):
            raise NotImplementedError("DiffuEraserUNetMotionModel needs use_motion_mid_block=True")

        five_d = sample.ndim == 5
        if five_d:
            batch, channels, num_frames, height, width = sample.shape
            sample = sample.permute(0, 2, 1, 3, 4).reshape(batch * num_frames, channels, height, width)
        elif sample.ndim == 4:
            if num_frames is None:
                raise ValueError("num_frames is required when sample is (B*F, C, h, w)")
            if num_frames < 1 or sample.shape[0] % num_frames:
                raise ValueError(f"{sample.shape[0]} frames do not split into clips of num_frames={num_frames}")
            batch = sample.shape[0] // num_frames
        else:
            raise ValueError(f"sample must be (B*F, C, h, w) or (B, C, F, h, w), got shape {tuple(sample.shape)}")
        max_frames = self.config.motion_max_seq_length
        if num_frames > max_frames:
            raise ValueError(f"num_frames={num_frames} exceeds the motion modules' {max_frames} positions; "
                             f"use windows of at most {max_frames} frames")
        n_rows = sample.shape[0]

        brushnet = (down_block_add_samples, mid_block_add_sample, up_block_add_samples)
        if any(r is not None for r in brushnet) and any(r is None for r in brushnet):
            raise ValueError("pass all three BrushNet residual groups (down, mid, up) or none")
        use_brushnet = down_block_add_samples is not None
        if use_brushnet:
            n_down, _, n_up = self.num_residuals
            if len(down_block_add_samples) != n_down or len(up_block_add_samples) != n_up:
                raise ValueError(
                    f"this UNet takes {n_down} down and {n_up} up BrushNet residuals, got "
                    f"{len(down_block_add_samples)} and {len(up_block_add_samples)}"
                )

        # Sizes that do not halve evenly are up-sampled back to the skip's size, as the parent does.
        forward_upsample_size = any(s % 2**self.num_upsamplers for s in sample.shape[-2:])
        if attention_mask is not None:
            attention_mask = (1 - attention_mask.to(sample.dtype)) * -10000.0
            attention_mask = attention_mask.unsqueeze(1)

        # 1. time: one embedding per clip, repeated over its frames
        timesteps = timestep_tensor(timestep, sample.device)
        if timesteps.shape[0] not in (1, batch):
            raise ValueError(f"timestep must be a scalar or have one value per clip ({batch}), got {tuple(timesteps.shape)}")
        timesteps = timesteps.expand(batch)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype), timestep_cond)
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=n_rows)

        rows = encoder_hidden_states.shape[0]
        if rows != n_rows:
            if rows == batch:
                encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0, output_size=n_rows)
            elif rows == 1:
                encoder_hidden_states = encoder_hidden_states.expand(n_rows, *encoder_hidden_states.shape[1:])
            else:
                raise ValueError(f"encoder_hidden_states has {rows} rows; expected 1, {batch} (clips) or {n_rows} (frames)")

        block_kwargs = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                            cross_attention_kwargs=cross_attention_kwargs, num_frames=num_frames)

        # 2. pre-process; the first skip is the conv_in output *before* BrushNet's first residual
        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        down_iter = up_iter = None
        if use_brushnet:
            sample = add_residual(sample, down_block_add_samples[0], "conv_in")
            down_iter, up_iter = iter(down_block_add_samples[1:]), iter(up_block_add_samples)

        # 3. down
        for i, block in enumerate(self.down_blocks):
            sample, res = run_down_block(block, sample, emb, residuals=down_iter, name=f"down block {i}", **block_kwargs)
            skips += res
        if down_block_additional_residuals is not None:
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals, strict=True))

        # 4. mid
        sample = run_motion_mid_block(self.mid_block, sample, emb, residual=mid_block_add_sample, **block_kwargs)
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual

        # 5. up
        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            sample = run_up_block(block, sample, block_skips, emb, upsample_size=upsample_size, residuals=up_iter,
                                  name=f"up block {i}", **block_kwargs)

        # 6. post-process
        if self.conv_norm_out is not None:
            sample = self.conv_act(self.conv_norm_out(sample))
        sample = self.conv_out(sample)
        if five_d:
            sample = sample.reshape(batch, num_frames, *sample.shape[1:]).permute(0, 2, 1, 3, 4)
        if not return_dict:
            return (sample,)
        return UNetMotionOutput(sample=sample)


@contextmanager
def _lora_scale(model: torch.nn.Module, factor: float) -> Iterator[None]:
    """Multiply every LoRA layer's scaling by ``factor`` for one call, then restore it exactly.

    (diffusers' own helper resets the scalings to alpha/rank afterwards, which would drop the
    per-adapter multipliers set with ``rrdpo_core.lora.set_adapter_scale``.)
    """
    layers = [m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)]
    saved = [dict(m.scaling) for m in layers]
    try:
        for m in layers:
            for name in m.scaling:
                m.scaling[name] *= factor
        yield
    finally:
        for m, scaling in zip(layers, saved):
            m.scaling.clear()
            m.scaling.update(scaling)


def _contiguous_input(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    if torch.is_tensor(kwargs.get("input")):
        return args, {**kwargs, "input": kwargs["input"].contiguous()}
    if args and torch.is_tensor(args[0]):
        return (args[0].contiguous(), *args[1:]), kwargs
    return None


def contiguous_motion_inputs(unet: torch.nn.Module) -> list[Any]:
    """Hand every motion module's input projection a contiguous tensor; returns the hook handles
    (``.remove()`` them to go back).

    The motion modules (diffusers' ``AnimateDiffTransformer3D``, as in the release) permute the
    frames to ``(pixels, frames, channels)`` and apply ``proj_in`` to that strided view, which
    PyTorch runs as a batched matmul against the weight repeated once per pixel. On a busy 2-core
    CPU with 2 threads those batched matmuls took 3.4 s of one full-size 22-frame 128x128 step
    (0.5 s per call on the 320-channel level), against 0.3 s in all on one thread; on the
    contiguous copy each is one plain matmul. The result changes by float rounding only (about 1e-6 relative), so this is an
    option (``rrdpo_core.offload.low_memory(..., fast=True)``), not the release's path.
    """
    return [module.proj_in.register_forward_pre_hook(_contiguous_input, with_kwargs=True)
            for module in unet.modules() if isinstance(module, AnimateDiffTransformer3D)]
