"""Low-memory sampling: the same result as the resident run, with less on the compute device.

:func:`low_memory` wraps a ``DiffuEraserModel`` and a latent codec for
:class:`rrdpo_core.pipeline.DiffuEraserPipeline` at one of the levels of
:data:`rrdpo_core.memory.OFFLOAD_LEVELS`:

* ``"none"``: nothing changes.
* ``"windows"``: the pipeline sees the model as living on the *offload* device, so every
  video-long tensor (latents, condition, merged epsilon, the scheduler's state) stays there; each
  window is sent to the compute device for the denoiser and its epsilon comes back. The VAE of an
  :class:`~rrdpo_core.vae.AutoencoderKLCodec` works one frame at a time (slices).
* ``"blocks"``: as ``"windows"``, and BrushNet and the motion UNet are block-offloaded with
  diffusers' group offloading (``diffusers.hooks.apply_group_offloading``, block level): the
  weights stay on the offload device and each block is brought to the compute device just for
  its forward pass.
* ``"stream"``: as ``"windows"``, and the layers of BrushNet's and the UNet's blocks are read from
  their safetensors files just for their forward and dropped after
  (:class:`rrdpo_core.streaming.WeightStream`): the weights are in neither the compute device's
  memory nor the CPU's, except one layer at a time and the networks' small top-level parts. For
  the CPU, where the other levels save nothing. Needs weights that still equal their file (loaded
  by ``load_diffueraser``, no fused LoRA); a model loaded with ``stream=True`` streams at any level.
  The VAE keeps its own chunking here, so the result is bit for bit the resident run's.

``fast=True`` (opt-in, any level) runs the same networks by faster paths that change the result
by float rounding only (about 1e-6 relative), so it is not the default, which reproduces the
release: LoRA adapters folded into each streamed layer's weights as they are read, where that
costs fewer operations than running them beside the layer (``"stream"``,
:class:`rrdpo_core.streaming.WeightStream`'s ``fuse_adapters``; the file and any resident weight
are never changed), and contiguous inputs for the motion modules' input projections
(:func:`rrdpo_core.models.unet_motion.contiguous_motion_inputs`).

``vae_tiling=True`` (opt-in, any level but ``"none"``) also decodes in tiles (diffusers'
``enable_tiling``). It is the one setting that changes the result, since tiles are blended over
their overlap, and is not needed for the sizes DiffuEraser runs at: one 1280x720 frame decodes
in well under 2 GB (see ``rrdpo_core.memory``).

Everything is undone on exit: the hooks are removed, the VAE settings restored and the networks
put back on the device they came from. The choice ``"auto"`` goes through
:func:`rrdpo_core.memory.choose_offload` with the free memory the caller reports.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .memory import OFFLOAD_LEVELS, MemoryEstimate, choose_offload, network_sizes
from .streaming import WeightStream, can_stream, is_placeholder, is_streaming, stream_of

__all__ = ["OFFLOAD_CHOICES", "OffloadPlan", "OffloadedDenoiser", "plan_offload", "low_memory",
           "group_offload", "remove_group_offload"]

OFFLOAD_CHOICES = ("auto",) + OFFLOAD_LEVELS


@dataclass(frozen=True)
class OffloadPlan:
    """What :func:`low_memory` does, and why (``estimate`` is None for a level chosen by hand)."""

    level: str
    compute_device: torch.device
    offload_device: torch.device
    estimate: MemoryEstimate | None = None
    free_bytes: int | None = None

    def describe(self) -> str:
        why = ""
        if self.estimate is not None and self.free_bytes is not None:
            why = f" (estimate {self.estimate.total / 1024 ** 3:.2f} GiB, free {self.free_bytes / 1024 ** 3:.2f} GiB)"
        elif self.estimate is not None:
            why = f" (estimate {self.estimate.total / 1024 ** 3:.2f} GiB)"
        return f"offload {self.level} on {self.compute_device}{why}"


def plan_offload(choice: str, model: Any, height: int, width: int, num_frames: int, *,
                 compute_device: torch.device | str, offload_device: torch.device | str = "cpu",
                 free_bytes: int | None = None, guidance: bool = False) -> OffloadPlan:
    """Turn an offload choice (``"auto"`` or a level) into a plan for a video of this size.

    ``"auto"`` needs ``free_bytes`` (the free memory of the compute device; without it: ``"none"``).
    On the CPU it picks ``"stream"`` when what sampling adds to the resident weights does not fit
    (:func:`rrdpo_core.memory.choose_cpu_offload`) and the weights can be re-read from their files
    (``free_bytes`` 0 counts as unknown there); on a GPU the least of none/windows/blocks that fits.
    A model that already streams its weights (``load_diffueraser(..., stream=True)``) gets
    ``"stream"`` instead of ``"blocks"``.
    """
    if choice not in OFFLOAD_CHOICES:
        raise ValueError(f"offload must be one of {OFFLOAD_CHOICES}, got {choice!r}")
    compute, offload = torch.device(compute_device), torch.device(offload_device)
    dtype = getattr(model, "dtype", torch.float32)
    sizes = network_sizes(model)
    kwargs = dict(dtype=dtype, sizes=sizes, guidance=guidance)
    if choice != "auto":
        from .memory import estimate_sampling

        return OffloadPlan(choice, compute, offload, estimate_sampling(height, width, num_frames, level=choice,
                                                                       **kwargs), free_bytes)
    if free_bytes is None:
        from .memory import estimate_sampling

        return OffloadPlan("none", compute, offload, estimate_sampling(height, width, num_frames, **kwargs),
                           free_bytes)
    if compute.type == "cpu":
        from .memory import choose_cpu_offload, estimate_sampling

        # 0 free bytes is what a caller with no RAM figure passes (ComfyUI's CPU path); weights that
        # cannot be re-read from their file (merged LoRA patches, built in memory) cannot stream.
        if free_bytes <= 0 or not all(can_stream(net) for net in _nets(model)):
            return OffloadPlan("none", compute, offload, estimate_sampling(height, width, num_frames, **kwargs),
                               free_bytes)

        resident = sum(_resident_bytes(net) for net in _nets(model))
        level, est = choose_cpu_offload(int(free_bytes), height, width, num_frames, resident_bytes=resident, **kwargs)
        return OffloadPlan(level, compute, offload, est, free_bytes)
    level, est = choose_offload(int(free_bytes), height, width, num_frames, **kwargs)
    if level == "blocks" and any(is_streaming(net) for net in _nets(model)):
        level = "stream"
    return OffloadPlan(level, compute, offload, est, free_bytes)


def _nets(model: Any) -> list[torch.nn.Module]:
    return [net for net in (getattr(model, "brushnet", None), getattr(model, "unet", None)) if net is not None]


def _resident_bytes(net: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters() if not is_placeholder(p))


class OffloadedDenoiser:
    """A ``DiffuEraserModel`` as the pipeline sees it when the video's tensors live on ``storage``.

    ``device`` is the storage device, so the pipeline keeps latents, condition and scheduler
    state there; :meth:`predict_eps` runs on the model's compute device and returns epsilon on
    the storage device. Every other attribute is the model's.
    """

    def __init__(self, model: Any, storage: torch.device | str):
        self._model = model
        self._storage = torch.device(storage)

    @property
    def device(self) -> torch.device:
        return self._storage

    @property
    def model(self) -> Any:
        return self._model

    def predict_eps(self, latents: torch.Tensor, timestep: Any, text_embeds: torch.Tensor,
                    cond_latents: torch.Tensor, num_frames: int, brushnet_scale: float = 1.0) -> torch.Tensor:
        compute = self._model.device
        eps = self._model.predict_eps(latents.to(compute), timestep, text_embeds.to(compute), cond_latents.to(compute),
                                      num_frames, brushnet_scale)
        return eps.to(self._storage)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


_HOOK_NAMES = ("group_offloading", "lazy_prefetch_group_offloading", "layer_execution_tracker")


def group_offload(net: torch.nn.Module, compute_device: torch.device, offload_device: torch.device,
                  blocks_per_group: int = 1) -> None:
    """Block-level group offloading of one diffusers network (weights stay on ``offload_device``)."""
    from diffusers.hooks import apply_group_offloading

    net.to(offload_device)
    apply_group_offloading(net, onload_device=compute_device, offload_device=offload_device,
                           offload_type="block_level", num_blocks_per_group=blocks_per_group,
                           use_stream=compute_device.type == "cuda")


def remove_group_offload(net: torch.nn.Module) -> None:
    """Remove every group-offloading hook from ``net`` and its children (and the empty registries)."""
    for module in net.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        for name in _HOOK_NAMES:
            registry.remove_hook(name, recurse=False)
        if not registry.hooks:
            del module._diffusers_hook


def _codec_for(codec: Any, level: str, tiling: bool) -> tuple[Any, list]:
    """A sliced (and with ``tiling``, tiled) copy of an AutoencoderKLCodec; other codecs as they are.

    Returns the codec and the undo actions.
    """
    from .vae import AutoencoderKLCodec

    # "stream" keeps the codec's own chunks (4-frame encode as released): its result stays bit for bit
    # the resident one (a 1-frame encode is not, by float rounding), and on the CPU the VAE's
    # activations at DiffuEraser's sizes are small next to the weights streaming saves.
    if level == "none" or not isinstance(codec, AutoencoderKLCodec):
        return codec, []
    undo = []
    sliced = codec if level == "stream" else dataclasses.replace(codec, encode_chunk=1, decode_chunk=1)
    if tiling and hasattr(codec.vae, "enable_tiling"):
        was = bool(getattr(codec.vae, "use_tiling", False))
        codec.vae.enable_tiling()
        if not was:
            undo.append(codec.vae.disable_tiling)
    return sliced, undo


@contextlib.contextmanager
def _fast_paths(model: Any, enabled: bool) -> Iterator[None]:
    """The ``fast=True`` paths of :func:`low_memory` (module docstring), undone on exit."""
    if not enabled:
        yield
        return
    from .models.unet_motion import contiguous_motion_inputs

    handles = contiguous_motion_inputs(model.unet)
    streams = [(s, s.fuse_adapters) for s in (stream_of(net) for net in _nets(model)) if s is not None]
    for stream, _ in streams:
        stream.fuse_adapters = True
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for stream, was in streams:
            stream.fuse_adapters = was


@contextlib.contextmanager
def low_memory(model: Any, codec: Any, plan: OffloadPlan | str, *, compute_device: torch.device | str | None = None,
               offload_device: torch.device | str = "cpu", blocks_per_group: int = 1,
               vae_tiling: bool = False, fast: bool = False) -> Iterator[tuple[Any, Any]]:
    """``(model, codec)`` to hand to ``DiffuEraserPipeline`` at the plan's level; undone on exit.

    ``plan`` is an :class:`OffloadPlan` or a level name (then ``compute_device`` defaults to the
    model's device). At ``"none"`` the model should already be on the compute device; at the other
    levels it may be anywhere and is returned to where it was. ``fast=True`` adds the faster paths
    of the module docstring (results equal up to float rounding, not bit for bit).
    """
    if isinstance(plan, str):
        if plan not in OFFLOAD_LEVELS:
            raise ValueError(f"level must be one of {OFFLOAD_LEVELS}, got {plan!r} (plan 'auto' with plan_offload)")
        plan = OffloadPlan(plan, torch.device(compute_device or model.device), torch.device(offload_device))
    if plan.level == "none":
        with _fast_paths(model, fast):
            yield model, codec
        return
    home = model.device
    nets = [model.brushnet, model.unet]
    undo: list = []
    streaming = any(is_streaming(net) for net in nets)
    level = "stream" if streaming and plan.level == "blocks" else plan.level  # already streams: no group offload
    try:
        if level == "stream":
            for net in nets:
                if is_streaming(net):
                    continue
                stream = WeightStream(net, plan.compute_device)
                stream.attach()  # drops the block weights first, so the move below carries only the rest
                undo.append(lambda stream=stream: stream.detach(home))
            model.to(plan.compute_device)
        elif level == "blocks":
            for net in nets:
                undo.append(lambda net=net: remove_group_offload(net))
                group_offload(net, plan.compute_device, plan.offload_device, blocks_per_group)
        else:
            model.to(plan.compute_device)
        codec_used, codec_undo = _codec_for(codec, plan.level, vae_tiling)
        undo.extend(codec_undo)
        with _fast_paths(model, fast):
            yield OffloadedDenoiser(model, plan.offload_device), codec_used
    finally:
        for fn in reversed(undo):
            fn()
        model.to(home)
