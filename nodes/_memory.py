"""Memory decisions of the nodes: ComfyUI loads the networks, the core's memory model sizes them.

* :func:`diffueraser_running` puts a DIFFUERASER handle's networks where a sampler call needs
  them: through ``comfy.model_management.load_models_gpu`` with the activation estimate of the
  window about to run (ComfyUI frees other models first, counts ours, and offloads it later when
  it needs the room), or, when even that does not fit, with BrushNet and the motion UNet
  block-offloaded (``rrdpo_core.offload``). The Region-DPO LoRAs are weight patches of the
  handle's patcher clone (``nodes/_patcher.py``), so the cached networks get them only while
  ComfyUI has that clone loaded, and get their own weights back when it unloads it.
* :func:`propainter_models` loads ProPainter's three networks once per set of files and lets
  ComfyUI manage them the same way.
* :func:`train_memory` turns the Trainer node's memory inputs (or the "auto" preset, from free
  memory) into ``TrainConfig`` fields and a line for the node's report.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from . import _comfy

TRAIN_PRESETS = ("auto", "manual")
PAIR_PASSES = ("joint", "sequential")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


def _mm():
    return _comfy._module("comfy.model_management")


def make_patcher(model: Any) -> Any:
    """The loader's ModelPatcher for a freshly loaded DiffuEraserModel."""
    from ._patcher import diffueraser_patcher

    return diffueraser_patcher(model, _comfy.torch_device(), _comfy.offload_device())


def free_bytes(device: torch.device, patcher: Any = None) -> int:
    """Free memory on ``device`` as ComfyUI counts it, plus what our own model already holds there."""
    mm = _mm()
    if mm is None or device.type == "cpu" or not hasattr(mm, "get_free_memory"):
        return 0
    free = int(mm.get_free_memory(device))
    if patcher is not None:
        free += int(patcher.loaded_size())
    return free


def _unload_clones(patcher: Any) -> None:
    """Let ComfyUI unload any loaded clone of ``patcher``'s model (it restores the weights)."""
    mm = _mm()
    for loaded in list(getattr(mm, "current_loaded_models", [])):
        if loaded.model is not None and loaded.model.is_clone(patcher):
            loaded.model_unload()
            mm.current_loaded_models.remove(loaded)


@dataclass
class Placement:
    """What :func:`diffueraser_running` did, for the node's report."""

    level: str
    detail: str


@contextlib.contextmanager
def diffueraser_running(patcher: Any, height: int, width: int, frames: int, offload: str = "auto",
                        guidance: bool = False) -> Iterator[tuple[Any, Placement]]:
    """The networks of ``patcher`` (LoRA patches included) ready for a pipeline, and how they were placed."""
    from ..rrdpo_core.offload import low_memory, plan_offload
    from ._patcher import load, managed_module

    model = managed_module(patcher)
    device, offload_dev = _comfy.torch_device(), _comfy.offload_device()
    plan = plan_offload(offload, model, height, width, frames, compute_device=device, offload_device=offload_dev,
                        free_bytes=free_bytes(device, patcher) if offload == "auto" else None, guidance=guidance)
    est = plan.estimate
    if plan.level != "blocks":
        load([patcher], memory_required=est.activations + est.latents if est is not None else 0)
        with low_memory(model, None, plan) as (denoiser, _):
            yield denoiser, Placement(plan.level, plan.describe())
        return
    # Block offloading: the weights (LoRA merged) stay on the offload device and stream block by block.
    _unload_clones(patcher)
    mm = _mm()
    if mm is not None and device.type != "cpu" and est is not None:
        mm.free_memory(est.total, device)
    patcher.patch_model(device_to=offload_dev)
    try:
        with low_memory(model, None, plan) as (denoiser, _):
            yield denoiser, Placement(plan.level, plan.describe())
    finally:
        patcher.unpatch_model(device_to=offload_dev)


# ------------------------------------------------------------------------------------------
# ProPainter, loaded once

_PROPAINTER_CACHE: dict[tuple, Any] = {}


def propainter_models(files: dict[str, str], device: torch.device) -> Any:
    """ProPainter's networks for these files, loaded once (cached by path and modification time)
    and, inside ComfyUI, loaded to ``device`` through its model management."""
    from ..rrdpo_core.prior.propainter import load_propainter

    key = tuple(sorted((role, os.path.abspath(p), os.path.getmtime(p)) for role, p in files.items()))
    entry = _PROPAINTER_CACHE.get(key)
    if entry is None:
        _PROPAINTER_CACHE.clear()  # one set of ProPainter weights at a time
        with _comfy.building_model():  # normal tensors even under ComfyUI's inference mode
            models = load_propainter(files, device=_comfy.offload_device())
        from ._patcher import propainter_patcher

        entry = _PROPAINTER_CACHE[key] = (models, propainter_patcher(models, device, _comfy.offload_device()))
    models, patcher = entry
    from ._patcher import load

    load([patcher], memory_required=0)
    return models


# ------------------------------------------------------------------------------------------
# Trainer memory


def pairs_geometry(pairs_root: str) -> tuple[int, int, int]:
    """(height, width, frames) of the largest clip in a pairs folder."""
    from ..rrdpo_core.pairs import PairDataset

    ds = PairDataset(pairs_root)
    entries = getattr(ds, "entries", [])
    if not entries:
        return 512, 512, 22
    return (max(e.height for e in entries), max(e.width for e in entries), max(e.num_frames for e in entries))


def train_memory(preset: str, gradient_checkpointing: bool, pair_passes: str, frames_per_clip: int,
                 mixed_precision: str, pairs_root: str, model: Any) -> tuple[dict[str, Any], str]:
    """TrainConfig fields for the memory inputs, and the report line that says what was chosen and why."""
    from ..rrdpo_core.memory import choose_train_preset, estimate_training, network_sizes

    if preset not in TRAIN_PRESETS:
        raise ValueError(f"memory_preset must be one of {TRAIN_PRESETS}, got {preset!r}")
    if pair_passes not in PAIR_PASSES:
        raise ValueError(f"pair_passes must be one of {PAIR_PASSES}, got {pair_passes!r}")
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {mixed_precision!r}")
    height, width, clip_frames = pairs_geometry(pairs_root)
    sizes = network_sizes(model)
    dtype = getattr(model, "dtype", torch.float32)
    device = _comfy.torch_device()
    fields = {"mixed_precision": mixed_precision}
    if preset == "auto" and device.type != "cpu":
        free = free_bytes(device)
        chosen = choose_train_preset(free, height, width, clip_frames, dtype=dtype, sizes=sizes)
        fields.update(gradient_checkpointing=chosen.gradient_checkpointing, pair_passes=chosen.pair_passes,
                      num_frames=chosen.num_frames)
        line = f"memory preset auto ({free / 1024 ** 3:.1f} GiB free on {device}): {chosen.describe()}"
        return fields, line
    fields.update(gradient_checkpointing=bool(gradient_checkpointing), pair_passes=pair_passes,
                  num_frames=int(frames_per_clip))
    est = estimate_training(height, width, int(frames_per_clip) or clip_frames, pair_passes=pair_passes,
                            gradient_checkpointing=bool(gradient_checkpointing), dtype=dtype, sizes=sizes)
    why = "manual" if preset == "manual" else f"auto on {device}: the settings as given"
    line = (f"memory preset {why}: gradient_checkpointing={bool(gradient_checkpointing)}, pair_passes={pair_passes}, "
            f"frames per clip={int(frames_per_clip) or 'all'}, mixed_precision={mixed_precision} "
            f"(estimate {est / 1024 ** 3:.2f} GiB for {width}x{height} clips)")
    return fields, line
