"""The pack's networks as ComfyUI model patchers, so ComfyUI's memory manager counts and moves them.

ComfyUI manages a model through ``comfy.model_patcher.ModelPatcher``: ``load_models_gpu`` frees
other models to make room (using the memory estimate it is given), loads the weights, merges
the patcher's weight patches into them (keeping the originals to put back), and later unloads or
offloads them when something else needs the memory. Wrapping the DiffuEraser networks and the
ProPainter networks this way makes them ordinary citizens there:

* :func:`diffueraser_patcher` / :func:`propainter_patcher` build the patcher once per loaded
  model (the loader nodes keep it in their cached output);
* :func:`with_region_lora` returns a *clone* with the Region-DPO LoRA as weight patches
  (``comfy.weight_adapter.LoRAAdapter``): the cached patcher stays without them, ComfyUI merges
  them when it loads the clone and restores the original weights when it unloads it or loads
  another clone of the same model (which is what ComfyUI does for its own LoRAs);
* :func:`load` asks ComfyUI to load patchers with a memory estimate from
  :mod:`rrdpo_core.memory`.

ComfyUI is imported lazily (``comfy.model_patcher``, ``comfy.model_management``,
``comfy.weight_adapter``), as everywhere in this pack (see ``nodes/_comfy.py``).
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

import torch
import torch.nn as nn

__all__ = ["ManagedModule", "diffueraser_patcher", "propainter_patcher", "region_lora_patches", "with_region_lora",
           "load", "managed_module", "free_bytes"]

DIFFUERASER_PREFIX = "diffueraser."


def _comfy(name: str):
    return importlib.import_module(name)


class ManagedModule(nn.Module):
    """A container that ModelPatcher can own: it holds the real network(s) as children and the
    attributes ComfyUI sets on a managed model (``device``, ``model_loaded_weight_memory``...),
    so the cached network objects themselves get no foreign attributes.

    ``memory_required(input_shape)`` gives ComfyUI the activation estimate of a window of
    ``input_shape = (frames, channels, h, w)`` latents.
    """

    def __init__(self, kind: str, device: torch.device, **networks: nn.Module):
        super().__init__()
        self.kind = kind
        for name, net in networks.items():
            self.add_module(name, net)
        self.device = device

    def memory_required(self, input_shape: Sequence[int]) -> int:
        if self.kind != "diffueraser":
            return 0
        from ..rrdpo_core.memory import estimate_sampling

        frames, _, h, w = (int(v) for v in input_shape)
        dtype = next(self.parameters()).dtype
        est = estimate_sampling(h * 8, w * 8, frames, window=frames, dtype=dtype,
                                sizes=_sizes(self.diffueraser))
        return est.activations


def _sizes(model: Any):
    from ..rrdpo_core.memory import network_sizes

    return network_sizes(model)


def managed_module(patcher: Any) -> Any:
    """The network a patcher manages (the DiffuEraserModel, or the ProPainterModels' container)."""
    module = patcher.model
    return module.diffueraser if module.kind == "diffueraser" else module


def diffueraser_patcher(model: nn.Module, load_device: torch.device, offload_device: torch.device) -> Any:
    """A ``ModelPatcher`` over a ``DiffuEraserModel`` (BrushNet + motion UNet)."""
    mp = _comfy("comfy.model_patcher")
    device = torch.device(model.device)
    return mp.ModelPatcher(ManagedModule("diffueraser", device, diffueraser=model), load_device=load_device,
                           offload_device=offload_device)


def propainter_patcher(models: Any, load_device: torch.device, offload_device: torch.device) -> Any:
    """A ``ModelPatcher`` over ProPainter's three networks (RAFT, flow completion, generator)."""
    mp = _comfy("comfy.model_patcher")
    return mp.ModelPatcher(ManagedModule("propainter", models.device, raft=models.raft,
                                         flow_completion=models.flow_completion, generator=models.generator),
                           load_device=load_device, offload_device=offload_device)


def region_lora_patches(patcher: Any, lora: Any) -> dict[str, Any]:
    """ComfyUI weight patches (``{state-dict key: LoRAAdapter}``) for a Region-DPO LoRA.

    ``lora`` is a path or a loaded :class:`rrdpo_core.region_lora.RegionLora`. Keys follow the
    managed model's state dict: ``diffueraser.unet.<module>.weight``, or
    ``...<module>.base_layer.weight`` where a peft adapter (PCM) wraps the layer.
    """
    from ..rrdpo_core.region_lora import load_region_lora

    wa = _comfy("comfy.weight_adapter")
    lora = lora if not isinstance(lora, (str, bytes)) and hasattr(lora, "state_dict") else load_region_lora(lora)
    keys = set(patcher.model.state_dict().keys())
    alpha = float(lora.info.lora_alpha)
    patches: dict[str, Any] = {}
    missing = []
    for module in lora.modules:
        down = lora.state_dict[f"{module}.lora_A.weight"]
        up = lora.state_dict[f"{module}.lora_B.weight"]
        base = f"{DIFFUERASER_PREFIX}unet.{module}"
        key = next((k for k in (f"{base}.weight", f"{base}.base_layer.weight") if k in keys), None)
        if key is None:
            missing.append(module)
            continue
        # LoRAAdapter adds strength * alpha / rank * up @ down to the weight (rank = down.shape[0]).
        patches[key] = wa.LoRAAdapter(set(), (up, down, alpha, None, None, None))
    if missing:
        from ..rrdpo_core.region_lora import BaseModelMismatchError

        raise BaseModelMismatchError(f"{lora.path or 'the LoRA'} targets modules this UNet does not have "
                                     f"(e.g. {missing[:2]}); it was trained on a different base model")
    return patches


def with_region_lora(patcher: Any, lora: Any, strength: float) -> Any:
    """A clone of ``patcher`` with the LoRA as weight patches at ``strength`` (the original is unchanged)."""
    clone = patcher.clone()
    patches = region_lora_patches(patcher, lora)
    added = clone.add_patches(patches, strength_patch=float(strength))
    if len(added) != len(patches):
        raise ValueError(f"only {len(added)} of the LoRA's {len(patches)} layers could be patched")
    return clone


def free_bytes(device: torch.device) -> int:
    """Free memory on ``device`` as ComfyUI counts it (its own cache included)."""
    mm = _comfy("comfy.model_management")
    return int(mm.get_free_memory(device))


def load(patchers: Sequence[Any], memory_required: int) -> None:
    """Ask ComfyUI to load ``patchers`` fully, with ``memory_required`` bytes for the activations.

    Full loads only: these networks are plain torch modules, not ComfyUI's cast-on-the-fly
    layers, so ComfyUI's partial ("lowvram") loading would leave some on the wrong device. Block
    offloading (``rrdpo_core.offload``) is the low-memory path instead.
    """
    mm = _comfy("comfy.model_management")
    mm.load_models_gpu(list(patchers), memory_required=int(memory_required), force_full_load=True)
