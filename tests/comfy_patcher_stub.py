"""A minimal stand-in for ComfyUI's ``comfy.model_patcher`` / ``comfy.weight_adapter`` and the
loading half of ``comfy.model_management``, for the unit tests' ComfyUI stubs (tests/conftest.py).

It does what the pack relies on, the way ComfyUI does it: a patcher owns a module and a list of
weight patches; ``clone()`` shares the module with its own copy of the patches;
``load_models_gpu`` first unloads any other loaded clone of the same module (putting its original
weights back), then merges the new patcher's patches into the weights, keeping the originals;
``unpatch_model`` restores them exactly. tests/test_patcher_comfyui.py runs the same node code
against the real ComfyUI.
"""
from __future__ import annotations

import types
from typing import Any

import torch


class LoRAAdapter:
    """``comfy.weight_adapter.LoRAAdapter(loaded_keys, (up, down, alpha, mid, dora, reshape))``."""

    def __init__(self, loaded_keys: set, weights: tuple):
        self.loaded_keys, self.weights = loaded_keys, weights

    def patched(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        # weight + strength * alpha / rank * up @ down, computed in float32 as ComfyUI does
        up, down, alpha = self.weights[:3]
        scale = (alpha / down.shape[0]) if alpha is not None else 1.0
        delta = (up.flatten(1).float() @ down.flatten(1).float()).reshape(weight.shape)
        return (weight.float() + strength * scale * delta).to(weight.dtype)


class ModelPatcher:
    def __init__(self, model: torch.nn.Module, load_device: torch.device, offload_device: torch.device, **_: Any):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        self.patches: dict[str, list[tuple[float, LoRAAdapter]]] = {}
        self.backup: dict[str, torch.Tensor] = {}

    def clone(self) -> "ModelPatcher":
        other = ModelPatcher(self.model, self.load_device, self.offload_device)
        other.patches = {k: list(v) for k, v in self.patches.items()}
        return other

    def is_clone(self, other: "ModelPatcher") -> bool:
        return getattr(other, "model", None) is self.model

    def add_patches(self, patches: dict[str, LoRAAdapter], strength_patch: float = 1.0,
                    strength_model: float = 1.0) -> list[str]:
        keys = dict(self.model.named_parameters())
        added = [k for k in patches if k in keys]
        for k in added:
            self.patches.setdefault(k, []).append((float(strength_patch), patches[k]))
        return added

    def patch_model(self, device_to: torch.device | None = None, **_: Any) -> torch.nn.Module:
        params = dict(self.model.named_parameters())
        with torch.inference_mode(False), torch.no_grad():
            for key, patches in self.patches.items():
                weight = params[key]
                self.backup.setdefault(key, weight.detach().clone())
                new = self.backup[key]
                for strength, patch in patches:
                    new = patch.patched(new, strength)
                weight.copy_(new)
            if device_to is not None:
                self.model.to(device_to)
        return self.model

    def unpatch_model(self, device_to: torch.device | None = None, **_: Any) -> None:
        params = dict(self.model.named_parameters())
        with torch.inference_mode(False), torch.no_grad():
            for key, original in self.backup.items():
                params[key].copy_(original)
            self.backup = {}
            if device_to is not None:
                self.model.to(device_to)

    def loaded_size(self) -> int:
        return 0  # the stubs run on the CPU, where free memory is never asked


class _LoadedModel:
    def __init__(self, patcher: ModelPatcher):
        self.model = patcher

    def model_unload(self) -> None:
        self.model.unpatch_model(self.model.offload_device)


def install(mm: types.ModuleType) -> tuple[types.ModuleType, types.ModuleType]:
    """Add the loading functions to the stub ``mm``; return the stub model_patcher and weight_adapter."""
    mm.current_loaded_models = []

    def load_models_gpu(patchers, memory_required: int = 0, force_full_load: bool = False, **_: Any) -> None:
        for patcher in patchers:
            if any(loaded.model is patcher for loaded in mm.current_loaded_models):
                continue
            for loaded in list(mm.current_loaded_models):
                if loaded.model.is_clone(patcher):  # one clone of a module at a time
                    loaded.model_unload()
                    mm.current_loaded_models.remove(loaded)
            patcher.patch_model(device_to=patcher.load_device)
            mm.current_loaded_models.insert(0, _LoadedModel(patcher))

    def unload_all_models() -> None:
        for loaded in list(mm.current_loaded_models):
            loaded.model_unload()
        mm.current_loaded_models.clear()

    mm.load_models_gpu, mm.unload_all_models = load_models_gpu, unload_all_models
    model_patcher = types.ModuleType("comfy.model_patcher")
    model_patcher.ModelPatcher = ModelPatcher
    weight_adapter = types.ModuleType("comfy.weight_adapter")
    weight_adapter.LoRAAdapter = LoRAAdapter
    return model_patcher, weight_adapter
