"""Named LoRA adapters on the DiffuEraser motion UNet (PEFT layers, never merged).

Two adapters live side by side on ``unet_main``:

* ``"pcm"``: the PCM acceleration LoRA (``pcm_sd15_smallcfg_2step_converted.safetensors``), a
  kohya-format file (``lora_unet_<module path with _>.lora_down.weight / .lora_up.weight /
  .alpha``), rank 64, on the spatial SD1.5 layers only (reference §1.2). Each module's scale is its
  ``alpha / rank``, read from the file.
* ``"region_dpo"``: the preference LoRA the training adds later through ``add_lora_adapter``.

All adapters present are active together (their low-rank updates add up). That is the point of
this module: PEFT's and diffusers' ``add_adapter`` make only the newest adapter active, which would
silently switch PCM off when the training adapter is added. Adapters are registered with
``inference_mode=True`` (frozen) unless added as trainable; the base weights' ``requires_grad``
flags are left as they were.

A LoRA file that does not fit the network (unknown module names, wrong shapes, text-encoder
weights, motion-module targets for a spatial-only LoRA) is an error, never a silent no-op.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Union

import torch
import torch.nn as nn
from peft import LoraConfig
from peft.functional import delete_adapter, inject_adapter_in_model, set_adapter, set_requires_grad
from peft.tuners.tuners_utils import BaseTunerLayer

__all__ = [
    "PCM_ADAPTER", "REGION_DPO_ADAPTER", "KohyaModule", "read_kohya_lora", "parse_kohya_lora", "apply_kohya_lora",
    "add_lora_adapter", "remove_adapter", "set_adapter_scale", "list_adapters", "fuse_adapter",
    "active_adapters", "has_adapter", "adapter_disabled", "adapter_parameters", "adapter_state_dict",
    "load_adapter_weights", "foldable_delta",
]

PCM_ADAPTER = "pcm"
REGION_DPO_ADAPTER = "region_dpo"
PathLike = Union[str, os.PathLike]

_PREFIX = "lora_unet_"
_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
# Sub-module names PEFT creates inside a wrapped layer; they are not targets themselves.
_PEFT_INTERNALS = {"base_layer", "lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B",
                   "lora_magnitude_vector"}


@dataclass(frozen=True)
class KohyaModule:
    """One LoRA'd layer: ``delta W = (alpha / rank) * up @ down`` (convs: over the kernel)."""

    name: str           # dotted module path in the UNet, e.g. "down_blocks.0.resnets.0.conv1"
    down: torch.Tensor  # (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor    # (out, rank) or (out, rank, 1, 1)
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def read_kohya_lora(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a LoRA ``.safetensors`` file into a flat dict (CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"LoRA file not found: {path}. For PCM, download pcm_sd15_smallcfg_2step_converted.safetensors "
            "from https://huggingface.co/wangfuyun/PCM_Weights (folder sd15)."
        )
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only .safetensors LoRA files are read (no pickles); convert it first")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a complete safetensors file ({err}); download it again") from err
    from .validate import check_finite_tensors

    check_finite_tensors(tensors, str(path), "the LoRA file is damaged; download it again")
    return tensors


def parse_kohya_lora(unet: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                     spatial_only: bool = True) -> list[KohyaModule]:
    """Match a kohya-format UNet LoRA to ``unet``'s layers, checking every key and shape.

    Raises:
        ValueError: keys that are not kohya UNet LoRA keys, names that match no layer (or a motion
            module when ``spatial_only``), incomplete down/up pairs, or shapes that do not fit.
    """
    if not state_dict:
        raise ValueError("the LoRA state dict is empty")
    from .validate import check_finite_tensors

    check_finite_tensors(state_dict, "the LoRA state dict", "pass a LoRA without NaN/inf weights")
    foreign = sorted(k for k in state_dict if not k.startswith(_PREFIX))
    if foreign:
        te = [k for k in foreign if k.startswith("lora_te")]
        why = ("text-encoder LoRA weights are not supported (DiffuEraser's text is a fixed empty prompt); "
               if te else "")
        raise ValueError(
            f"{why}{len(foreign)} key(s) are not kohya UNet LoRA keys ('{_PREFIX}<module>.lora_down.weight' / "
            f"'.lora_up.weight' / '.alpha'), e.g. {foreign[:4]}. Is this a kohya-format UNet LoRA (such as PCM's "
            "*_converted.safetensors)?"
        )
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    odd = []
    for key, tensor in state_dict.items():
        module_key, _, part = key[len(_PREFIX):].partition(".")
        if part not in _PARTS:
            odd.append(key)
            continue
        grouped.setdefault(module_key, {})[part] = tensor
    if odd:
        raise ValueError(f"unsupported LoRA tensors (only plain LoRA down/up/alpha is supported, not LoCon/LoHa/DoRA "
                         f"extras): {odd[:4]}")

    table = _kohya_table(unet)
    unknown = sorted(k for k in grouped if k not in table)
    if unknown:
        ldm = any(k.startswith(("input_blocks", "middle_block", "output_blocks")) for k in unknown)
        hint = (" They use the original SD checkpoint's block names (input_blocks/middle_block/output_blocks); "
                "this loader expects diffusers module paths (down_blocks/mid_block/up_blocks), as PCM's "
                "*_converted files have." if ldm else "")
        raise ValueError(f"{len(unknown)} LoRA module(s) match no layer of the UNet, e.g. "
                         f"{[_PREFIX + k for k in unknown[:4]]}.{hint}")

    modules = []
    for module_key, parts in sorted(grouped.items()):
        name = table[module_key]
        if spatial_only and "motion_modules" in name.split("."):
            raise ValueError(f"LoRA module {_PREFIX}{module_key} targets a motion module ({name}); this LoRA must "
                             "only touch the spatial SD1.5 layers")
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise ValueError(f"LoRA module {_PREFIX}{module_key} lacks its "
                             f"{'lora_down' if 'lora_down.weight' not in parts else 'lora_up'}.weight; the file is incomplete")
        base = _base_layer(unet.get_submodule(name))
        down, up = _fit_shapes(name, base, parts["lora_down.weight"], parts["lora_up.weight"])
        # Without .alpha, kohya's convention is alpha = rank (scale 1).
        alpha = float(parts["alpha"].item()) if "alpha" in parts else float(down.shape[0])
        if not math.isfinite(alpha):
            raise ValueError(f"LoRA module {_PREFIX}{module_key} has a non-finite alpha")
        modules.append(KohyaModule(name=name, down=down, up=up, alpha=alpha))
    return modules


def apply_kohya_lora(unet: nn.Module, state_dict: Mapping[str, torch.Tensor] | PathLike,
                     adapter_name: str = PCM_ADAPTER, scale: float | None = None, *,
                     spatial_only: bool = True, trainable: bool = False) -> list[str]:
    """Add a kohya-format LoRA to ``unet`` as the named adapter; returns the adapted module names.

    Args:
        state_dict: the LoRA's tensors, or a ``.safetensors`` path.
        scale: multiplier on each module's ``alpha / rank`` (``None`` = 1, as DiffuEraser runs PCM).
        spatial_only: refuse LoRA modules inside motion modules (PCM is an SD1.5 LoRA).
        trainable: leave the adapter's parameters trainable (default frozen).
    """
    if not isinstance(state_dict, Mapping):
        state_dict = read_kohya_lora(state_dict)
    modules = parse_kohya_lora(unet, state_dict, spatial_only=spatial_only)
    ranks = Counter(m.rank for m in modules)
    alphas = Counter(m.alpha for m in modules)
    r = ranks.most_common(1)[0][0]
    alpha = alphas.most_common(1)[0][0]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        # Exact module paths, as one regex (PEFT full-matches it; quicker to inject than a list).
        target_modules="|".join(re.escape(m.name) for m in modules),
        rank_pattern={re.escape(m.name): m.rank for m in modules if m.rank != r},
        alpha_pattern={re.escape(m.name): m.alpha for m in modules if m.alpha != alpha},
        lora_dropout=0.0,
        init_lora_weights=True,
    )
    add_lora_adapter(unet, config, adapter_name, trainable=trainable)
    with torch.inference_mode(False), torch.no_grad():  # normal tensors (see add_lora_adapter); no_grad last
        for m in modules:
            layer = unet.get_submodule(m.name)
            layer.lora_A[adapter_name].weight.copy_(m.down)
            layer.lora_B[adapter_name].weight.copy_(m.up)
    if scale is not None:
        set_adapter_scale(unet, adapter_name, scale)
    return [m.name for m in modules]


def add_lora_adapter(unet: nn.Module, config: LoraConfig, adapter_name: str, *, trainable: bool = True) -> None:
    """Inject a LoRA adapter (PEFT layers) and keep every adapter on ``unet`` active.

    Use this rather than ``unet.add_adapter``, which would deactivate the others (e.g. PCM).
    New LoRA weights follow ``config.init_lora_weights`` (default: B = 0, so the output is unchanged).
    """
    existing = list_adapters(unet)
    if adapter_name in existing:
        raise ValueError(f"adapter {adapter_name!r} already exists on this UNet; remove_adapter() it first")
    config.inference_mode = not trainable
    # By object, not name: wrapped layers' weights move to "<layer>.base_layer.weight".
    flags = [(p, p.requires_grad) for p in unet.parameters()]
    # Adapter weights must be normal tensors even when the caller runs under torch.inference_mode()
    # (ComfyUI runs every node that way): set_adapter flips requires_grad on every adapter later,
    # which inference tensors refuse, and training needs them in autograd.
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():  # no_grad after: it re-enables grad
        # PEFT warns when a model already has adapters; several named adapters are intended here.
        warnings.filterwarnings("ignore", message=".*peft_config.*")
        inject_adapter_in_model(config, unet, adapter_name)
    for p, flag in flags:  # PEFT freezes the base model; that is the caller's decision
        p.requires_grad_(flag)
    unet._hf_peft_config_loaded = True  # lets diffusers' own LoRA helpers (save_lora_adapter, ...) see it
    _activate_all(unet)


def remove_adapter(unet: nn.Module, name: str) -> None:
    """Remove adapter ``name``; layers left with no adapter get their original module back.

    With no adapter left the UNet is the original network again: same modules, same state-dict
    keys, bit-identical outputs.
    """
    if name not in list_adapters(unet):
        raise ValueError(f"no adapter named {name!r} on this UNet (present: {list_adapters(unet)})")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
        delete_adapter(unet, name, prefix="lora_")
    unet.peft_config.pop(name, None)
    for module_name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer) and not any(len(getattr(module, a)) for a in module.adapter_layer_names):
            parent_name, _, child = module_name.rpartition(".")
            setattr(unet.get_submodule(parent_name) if parent_name else unet, child, module.get_base_layer())
    if not unet.peft_config:
        del unet.peft_config
        unet._hf_peft_config_loaded = False
    else:
        _activate_all(unet)


def fuse_adapter(unet: nn.Module, name: str) -> list[str]:
    """Fold adapter ``name`` into the base weights (``W += scale * up @ down``) and remove its layers.

    For a LoRA that stays on for good (PCM at inference), this saves the adapter's extra matmuls
    and memory. It computes the same network up to float rounding (about 1e-6 relative in fp32),
    not bit for bit: the release runs PCM as unfused adapters. Other adapters stay as they are.
    Returns the fused module names.
    """
    if name not in list_adapters(unet):
        raise ValueError(f"no adapter named {name!r} on this UNet (present: {list_adapters(unet)})")
    fused = []
    with torch.no_grad():
        for module_name, module in unet.named_modules():
            if isinstance(module, BaseTunerLayer) and name in getattr(module, "lora_A", {}):
                base = module.get_base_layer()
                delta = module.get_delta_weight(name)
                base.weight.add_(delta.to(device=base.weight.device, dtype=base.weight.dtype))
                fused.append(module_name)
    remove_adapter(unet, name)
    return fused


def foldable_delta(layer: nn.Module) -> tuple[torch.Tensor, list[str]] | None:
    """The weight update ``layer`` (a PEFT LoRA layer) adds in its forward, summed over the adapters it
    runs (each ``scale * up @ down``, in the adapters' dtype), and their names.

    ``None`` when the layer runs no adapter or one that is not a plain LoRA (DoRA and other
    variants change more than the weight), so its forward cannot be replaced by the base layer
    with this update added. Used to fold adapters into weights read for one forward
    (``rrdpo_core.streaming``); nothing is changed here.
    """
    if not isinstance(layer, BaseTunerLayer) or layer.disable_adapters or layer.merged:
        return None
    names = [a for a in layer.active_adapters if a in getattr(layer, "lora_A", {})]
    variants = getattr(layer, "lora_variant", {}) or {}
    if not names or any(a in variants or getattr(layer, "use_dora", {}).get(a) for a in names):
        return None
    delta = layer.get_delta_weight(names[0])
    for name in names[1:]:
        delta = delta + layer.get_delta_weight(name)
    return delta, names


def set_adapter_scale(unet: nn.Module, name: str, scale: float) -> None:
    """Set adapter ``name``'s multiplier: each module then scales by ``scale * alpha / rank``."""
    if name not in list_adapters(unet):
        raise ValueError(f"no adapter named {name!r} on this UNet (present: {list_adapters(unet)})")
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer) and hasattr(module, "set_scale"):
            module.set_scale(name, float(scale))


def list_adapters(unet: nn.Module) -> list[str]:
    """Names of the adapters on ``unet``, in the order they were added."""
    return list(getattr(unet, "peft_config", {}) or {})


# ------------------------------------------------------------------------------------------------
# One adapter among several: which are active, switching one off, its parameters and weights.


def _tuner_layers(unet: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer):
            yield name, module


def _layer_adapters(layer: nn.Module) -> set[str]:
    return set(getattr(layer, "lora_A", {}).keys())


def active_adapters(unet: nn.Module) -> list[str]:
    """Names of the adapters active in any LoRA layer of ``unet`` (sorted)."""
    names: set[str] = set()
    for _, layer in _tuner_layers(unet):
        act = layer.active_adapters
        names.update([act] if isinstance(act, str) else act)
    return sorted(names)


def has_adapter(unet: nn.Module, name: str) -> bool:
    """Whether ``unet`` holds adapter ``name`` (registered, or left in its layers)."""
    return name in list_adapters(unet) or any(name in _layer_adapters(layer) for _, layer in _tuner_layers(unet))


@contextmanager
def adapter_disabled(unet: nn.Module, name: str) -> Iterator[None]:
    """Run the UNet without adapter ``name`` (every other adapter, e.g. PCM, stays as it was).

    This is the frozen reference of Region-Reg-DPO: no second copy of the UNet in memory. Only the
    layers' active-adapter lists change (peft's ``set_adapter`` also flips requires_grad, so the
    flags it found are put back on exit).
    """
    saved: list[tuple[nn.Module, list[str], list[tuple[torch.Tensor, bool]]]] = []
    for _, layer in _tuner_layers(unet):
        act = layer.active_adapters
        act = [act] if isinstance(act, str) else list(act)
        if name in act:
            saved.append((layer, act, [(p, p.requires_grad) for p in layer.parameters()]))
            layer.set_adapter([a for a in act if a != name])
    try:
        yield
    finally:
        for layer, act, flags in saved:
            layer.set_adapter(act)
            for p, flag in flags:
                p.requires_grad_(flag)


def adapter_parameters(unet: nn.Module, name: str) -> list[nn.Parameter]:
    """Adapter ``name``'s parameters (its A and B matrices), in a fixed (module-name) order."""
    params = [p for n, p in unet.named_parameters() if f".lora_A.{name}." in n or f".lora_B.{name}." in n]
    if not params:
        raise ValueError(f"the UNet has no adapter named {name!r}; add it first")
    return params


def adapter_state_dict(unet: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s weights with peft keys without the adapter name (``<module>.lora_A.weight``)."""
    out: dict[str, torch.Tensor] = {}
    for module_name, layer in _tuner_layers(unet):
        if name not in _layer_adapters(layer):
            continue
        out[f"{module_name}.lora_A.weight"] = layer.lora_A[name].weight.detach()
        out[f"{module_name}.lora_B.weight"] = layer.lora_B[name].weight.detach()
    if not out:
        raise ValueError(f"the UNet has no adapter named {name!r}")
    return out


def load_adapter_weights(unet: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """Copy :func:`adapter_state_dict`-style weights into adapter ``name``; every key must fit its layer."""
    layers = dict(_tuner_layers(unet))
    expected = set()
    for module_name, layer in layers.items():
        if name in _layer_adapters(layer):
            expected |= {f"{module_name}.lora_A.weight", f"{module_name}.lora_B.weight"}
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise ValueError(
            f"LoRA weights do not match the adapter's layers ({len(missing)} missing, e.g. "
            f"{sorted(missing)[:2]}; {len(unexpected)} unexpected, e.g. {sorted(unexpected)[:2]})"
        )
    with torch.no_grad():
        for key, value in state_dict.items():
            module_name, which = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
            param = getattr(layers[module_name], which)[name].weight
            if param.shape != value.shape:
                raise ValueError(f"LoRA tensor {key}: shape {tuple(value.shape)} != layer's {tuple(param.shape)}")
            param.copy_(value.to(param.dtype))


# ------------------------------------------------------------------------------------------------


def _activate_all(unet: nn.Module) -> None:
    names = list_adapters(unet)
    set_adapter(unet, names, inference_mode=True)  # all active, all frozen ...
    trainable = [n for n in names if not unet.peft_config[n].inference_mode]
    if trainable:  # ... then the trainable ones switched back on
        set_requires_grad(unet, trainable, requires_grad=True)


def _base_layer(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def _kohya_table(unet: nn.Module) -> dict[str, str]:
    """kohya module key (dots replaced by underscores) -> dotted module path, for LoRA-able layers."""
    table: dict[str, str] = {}
    clashes = set()
    for name, module in unet.named_modules():
        if not name or _PEFT_INTERNALS & set(name.split(".")):
            continue
        if not isinstance(_base_layer(module), (nn.Linear, nn.Conv2d)):
            continue
        key = name.replace(".", "_")
        if key in table:
            clashes.add(key)
        table[key] = name
    for key in clashes:  # ambiguous underscore names cannot be resolved; never guess
        del table[key]
    return table


def _fit_shapes(name: str, base: nn.Module, down: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rank = down.shape[0]
    if isinstance(base, nn.Linear):
        want_down, want_up = (rank, base.in_features), (base.out_features, rank)
    else:
        kh, kw = base.kernel_size
        if down.ndim == 2 and (kh, kw) == (1, 1):  # some exporters store 1x1 convs as matrices
            down = down[:, :, None, None]
        if up.ndim == 2:
            up = up[:, :, None, None]
        want_down, want_up = (rank, base.in_channels // base.groups, kh, kw), (base.out_channels, rank, 1, 1)
    if tuple(down.shape) != want_down or tuple(up.shape) != want_up:
        raise ValueError(f"LoRA shapes for {name} do not fit the layer ({base}): lora_down {tuple(down.shape)} "
                         f"(expected {want_down}), lora_up {tuple(up.shape)} (expected {want_up}); the LoRA was "
                         "made for a different network")
    return down, up
