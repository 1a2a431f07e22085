"""The Region-DPO LoRA: its adapter on the main UNet, its file format, and loading it for sampling.

What is trained (spec/METHOD.md §5) is a peft LoRA on the spatial attention projections of the
main UNet (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of ``attn1``/``attn2`` in the spatial
transformer blocks), optionally also on the motion modules' temporal attention. It lives in the
UNet as the *named* peft adapter ``"region_dpo"``, next to an acceleration LoRA such as PCM
(adapter ``"pcm"``). Switching one adapter off never touches the other, which is how the frozen
reference of the DPO loss is the same network with only ``"region_dpo"`` disabled.

The file is a safetensors file with diffusers-style keys (``unet.<module>.lora.down.weight`` /
``lora.up.weight``, what ``save_lora_weights`` writes) and string metadata: format version, rank,
LoRA alpha, targets, the loss settings it was trained with (α, ρ, β, band, steps) and a
fingerprint of the base UNet it was trained on. A LoRA is refused on a different base model,
because a LoRA delta is only meaningful relative to the weights it was trained against.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .lora import (REGION_DPO_ADAPTER, add_lora_adapter, adapter_state_dict, has_adapter, load_adapter_weights,
                   remove_adapter, set_adapter_scale)

__all__ = [
    "ADAPTER_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "BaseModelMismatchError",
    "RegionLoraInfo",
    "RegionLora",
    "BaseFingerprint",
    "base_fingerprint",
    "lora_target_modules",
    "add_region_adapter",
    "check_base_model",
    "save_region_lora",
    "load_region_lora",
    "apply_region_lora",
    "set_region_lora_strength",
    "remove_region_lora",
]

ADAPTER_NAME = REGION_DPO_ADAPTER
FORMAT_NAME = "rrdpo.region_lora"
FORMAT_VERSION = 1
KEY_PREFIX = "unet."

_PROJ = r"(?:to_q|to_k|to_v|to_out\.0)"
# Spatial transformer blocks are children of ``attentions.N``; temporal ones of ``motion_modules.N``.
SPATIAL_PATTERN = rf"(?:^|\.)attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.{_PROJ}$"
TEMPORAL_PATTERN = rf"(?:^|\.)motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]\.{_PROJ}$"

_FINGERPRINT_TENSORS = 8  # tensors sampled for the value part of the fingerprint
_FINGERPRINT_VALUES = 4  # values per sampled tensor


class BaseModelMismatchError(ValueError):
    """The LoRA was trained on a different base UNet than the one it is being applied to."""


# --------------------------------------------------------------------------------------------
# The Region-DPO adapter. Generic handling of named adapters (adding, removing, scaling, switching
# one off, their parameters and weights) is rrdpo_core.lora's; this module adds what the
# Region-DPO LoRA needs on top: its targets, its file, the base-model check.


def _unet_of(model: nn.Module) -> nn.Module:
    """Accept a DiffuEraserModel (anything with ``.unet``) or the UNet itself."""
    unet = getattr(model, "unet", model)
    if not isinstance(unet, nn.Module):
        raise TypeError(f"expected a DiffuEraser model or its UNet (an nn.Module), got {type(model).__name__}")
    return unet


def lora_target_modules(unet: nn.Module, temporal: bool = False, spatial: bool = True) -> list[str]:
    """Full module names of the attention projections the Region-DPO LoRA adapts."""
    unet = _unet_of(unet)
    patterns = ([SPATIAL_PATTERN] if spatial else []) + ([TEMPORAL_PATTERN] if temporal else [])
    if not patterns:
        raise ValueError("lora targets: choose spatial and/or temporal attention")
    rx = re.compile("|".join(f"(?:{p})" for p in patterns))
    out = [name for name, m in unet.named_modules() if rx.search(name) and _is_linear_like(m)]
    return out


def _is_linear_like(module: nn.Module) -> bool:
    base = getattr(module, "base_layer", module)  # already wrapped by another adapter (PCM)
    return isinstance(base, nn.Linear)


def add_region_adapter(
    unet: nn.Module,
    rank: int = 16,
    lora_alpha: float = 32.0,
    temporal: bool = False,
    adapter_name: str = ADAPTER_NAME,
    trainable: bool = True,
    target_modules: Sequence[str] | None = None,
) -> list[str]:
    """Add the Region-DPO LoRA adapter to ``unet`` with output exactly zero (B = 0), active.

    Other adapters (PCM) stay active; base weights keep their requires_grad; the new adapter's
    parameters are trainable when ``trainable``. peft draws the A matrices from the global torch
    RNG; the trainer re-draws them from its own seeded generator. Returns the adapted module names.
    """
    from peft import LoraConfig

    unet = _unet_of(unet)
    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
        raise ValueError(f"rank: must be a positive integer, got {rank!r}")
    if not float(lora_alpha) > 0:
        raise ValueError(f"lora_alpha: must be > 0, got {lora_alpha!r}")
    if has_adapter(unet, adapter_name):
        raise ValueError(
            f"the UNet already has an adapter named {adapter_name!r} (a Region-DPO LoRA is applied?); remove it "
            f"first (rrdpo_core.region_lora.remove_region_lora) or pick another adapter_name"
        )
    targets = list(target_modules) if target_modules is not None else lora_target_modules(unet, temporal=temporal)
    if not targets:
        raise ValueError(
            "no attention projections (to_q/to_k/to_v/to_out.0 of attn1/attn2 in transformer blocks) found in "
            "this UNet; the Region-DPO LoRA needs a DiffuEraser/UNetMotionModel-style UNet"
        )
    # init_lora_weights=True: kaiming-uniform A, zero B -> the adapter adds exactly 0 at step 0,
    # so policy == reference and s = 0, L_dpo = ln 2, DGR = beta/2 (METHOD §5).
    # One regex of the exact names (peft full-matches it): much faster to inject than a long list.
    config = LoraConfig(
        r=int(rank), lora_alpha=float(lora_alpha), target_modules="|".join(re.escape(t) for t in targets),
        init_lora_weights=True, lora_dropout=0.0,
    )
    add_lora_adapter(unet, config, adapter_name, trainable=trainable)
    return targets


# --------------------------------------------------------------------------------------------
# Base-model fingerprint


@dataclass(frozen=True)
class BaseFingerprint:
    """Cheap identity of a base UNet: key names + shapes (exact) and a few weight values.

    The structure hash must match exactly; the sampled values are compared with a tolerance so
    that the same weights in fp32, fp16 or bf16 count as the same base model.
    """

    structure: str
    samples: tuple[float, ...]

    def to_metadata(self) -> dict[str, str]:
        return {"base_fingerprint": self.structure, "base_samples": json.dumps([float(v) for v in self.samples])}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> "BaseFingerprint | None":
        if "base_fingerprint" not in meta:
            return None
        samples = tuple(float(v) for v in json.loads(meta.get("base_samples", "[]")))
        return cls(structure=meta["base_fingerprint"], samples=samples)

    def matches(self, other: "BaseFingerprint", rtol: float = 2e-2, atol: float = 1e-4) -> bool:
        if self.structure != other.structure or len(self.samples) != len(other.samples):
            return False
        return all(abs(a - b) <= atol + rtol * abs(b) for a, b in zip(self.samples, other.samples))


def _base_state(unet: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Base weights only, under their un-adapted names (peft's ``.base_layer`` removed)."""
    out = []
    for key, tensor in unet.state_dict(keep_vars=True).items():
        if "lora_" in key or "lora_magnitude_vector" in key:
            continue
        out.append((key.replace(".base_layer.", "."), tensor))
    out.sort(key=lambda kv: kv[0])
    return out


def base_fingerprint(model: nn.Module) -> BaseFingerprint:
    """Fingerprint of the base UNet of ``model`` (adapters excluded)."""
    state = _base_state(_unet_of(model))
    if not state:
        raise ValueError("base_fingerprint: the model has no weights")
    h = hashlib.sha256()
    for key, t in state:
        h.update(f"{key}:{tuple(t.shape)};".encode())
    # A few values from tensors spread over the sorted key list, at fixed flat positions.
    floats = [(k, t) for k, t in state if t.is_floating_point() and t.ndim >= 2 and t.numel() > 0]
    step = max(1, len(floats) // _FINGERPRINT_TENSORS)
    samples = []
    with torch.no_grad():
        for _, t in floats[::step][:_FINGERPRINT_TENSORS]:
            flat = t.detach().reshape(-1)
            for j in range(_FINGERPRINT_VALUES):
                samples.append(float(flat[(j * 7919 + 13) % flat.numel()].float()))
    return BaseFingerprint(structure="sha256:" + h.hexdigest()[:32], samples=tuple(samples))


# --------------------------------------------------------------------------------------------
# File format


@dataclass
class RegionLoraInfo:
    """Metadata of a Region-DPO LoRA file (everything is also stored as strings in the file)."""

    rank: int
    lora_alpha: float
    targets: dict[str, Any] = field(default_factory=dict)  # {"spatial": bool, "temporal": bool, "modules": int}
    alpha: tuple[float, ...] = ()
    rho: tuple[float, ...] = ()
    beta: float = 0.0
    band_px: int = 0
    rho_mode: str = "constant"
    steps: int = 0
    fingerprint: BaseFingerprint | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        meta = {
            "format": FORMAT_NAME,
            "format_version": str(self.format_version),
            "rank": str(int(self.rank)),
            "lora_alpha": repr(float(self.lora_alpha)),
            "targets": json.dumps(self.targets, sort_keys=True),
            "alpha": json.dumps([float(v) for v in self.alpha]),
            "rho": json.dumps([float(v) for v in self.rho]),
            "beta": repr(float(self.beta)),
            "band_px": str(int(self.band_px)),
            "rho_mode": self.rho_mode,
            "steps": str(int(self.steps)),
        }
        if self.fingerprint is not None:
            meta.update(self.fingerprint.to_metadata())
        for k, v in self.extra.items():
            meta.setdefault(f"extra.{k}", str(v))
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], where: str = "LoRA file") -> "RegionLoraInfo":
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(
                f"{where}: not a Region-DPO LoRA (metadata 'format' is {meta.get('format')!r}, expected "
                f"{FORMAT_NAME!r}); it was not written by rrdpo_core.region_lora.save_region_lora"
            )
        version = int(meta.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{where}: format version {version} is newer than this code understands ({FORMAT_VERSION}); "
                f"update the node pack"
            )
        try:
            return cls(
                rank=int(meta["rank"]),
                lora_alpha=float(meta["lora_alpha"]),
                targets=json.loads(meta.get("targets", "{}")),
                alpha=tuple(json.loads(meta.get("alpha", "[]"))),
                rho=tuple(json.loads(meta.get("rho", "[]"))),
                beta=float(meta.get("beta", "0")),
                band_px=int(meta.get("band_px", "0")),
                rho_mode=meta.get("rho_mode", "constant"),
                steps=int(meta.get("steps", "0")),
                fingerprint=BaseFingerprint.from_metadata(meta),
                format_version=version,
                extra={k[6:]: v for k, v in meta.items() if k.startswith("extra.")},
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{where}: damaged Region-DPO LoRA metadata ({exc})") from None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fingerprint"] = None if self.fingerprint is None else asdict(self.fingerprint)
        return d


@dataclass
class RegionLora:
    """A loaded LoRA file: peft-keyed tensors (``<module>.lora_A.weight``) and its metadata."""

    state_dict: dict[str, torch.Tensor]
    info: RegionLoraInfo
    path: Path | None = None

    @property
    def modules(self) -> list[str]:
        return sorted({k.rsplit(".", 2)[0] for k in self.state_dict})


def _to_diffusers_keys(peft_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.utils import convert_state_dict_to_diffusers

    converted = convert_state_dict_to_diffusers(dict(peft_sd))
    return {KEY_PREFIX + k: v for k, v in converted.items()}


def _from_diffusers_keys(sd: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not key.startswith(KEY_PREFIX):
            raise ValueError(f"{where}: key {key!r} does not start with {KEY_PREFIX!r}; only UNet LoRAs are supported")
        k = key[len(KEY_PREFIX):]
        m = re.match(r"^(.*)\.lora(?:\.|_)(down|up|A|B)\.weight$", k)
        if not m:
            raise ValueError(f"{where}: unexpected key {key!r} (expected '<module>.lora.down.weight' / '.lora.up.weight')")
        which = "lora_A" if m.group(2) in ("down", "A") else "lora_B"
        out[f"{m.group(1)}.{which}.weight"] = value
    return out


def save_region_lora(
    path: str | os.PathLike,
    unet: nn.Module,
    info: RegionLoraInfo,
    adapter_name: str = ADAPTER_NAME,
    dtype: torch.dtype | None = torch.float32,
) -> Path:
    """Write the adapter ``adapter_name`` of ``unet`` to ``path`` (atomic), with ``info`` as metadata.

    ``info.fingerprint`` is filled from ``unet`` when it is None.
    """
    unet = _unet_of(unet)
    peft_sd = adapter_state_dict(unet, adapter_name)
    if dtype is not None:
        peft_sd = {k: v.to(dtype) for k, v in peft_sd.items()}
    if info.fingerprint is None:
        info = RegionLoraInfo(**{**info.__dict__, "fingerprint": base_fingerprint(unet)})
    from .fsutil import atomic_save_safetensors

    return atomic_save_safetensors(Path(path), _to_diffusers_keys(peft_sd), info.to_metadata())


def load_region_lora(path: str | os.PathLike) -> RegionLora:
    """Read a Region-DPO LoRA file (tensors on CPU) and check its format."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Region-DPO LoRA not found: {path} (train one with rrdpo_core.train)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    info = RegionLoraInfo.from_metadata(meta, where=str(path))
    sd = _from_diffusers_keys(tensors, str(path))
    if not sd:
        raise ValueError(f"{path}: the file holds no LoRA tensors")
    from .validate import check_finite_tensors

    # A NaN in one LoRA matrix turns every sampled frame into NaN; refuse the file here, by name.
    check_finite_tensors(tensors, str(path), "the LoRA is damaged (or its training diverged): use an earlier "
                                             "checkpoint's lora.safetensors, or retrain it")
    return RegionLora(state_dict=sd, info=info, path=path)


def check_base_model(lora: RegionLora, model: nn.Module) -> None:
    """Raise :class:`BaseModelMismatchError` if ``lora`` was trained on another base UNet."""
    where = str(lora.path) if lora.path else "the LoRA"
    if lora.info.fingerprint is None:
        raise BaseModelMismatchError(
            f"{where} has no base-model fingerprint, so it cannot be checked against this model; "
            f"pass check_base=False to apply it anyway"
        )
    mine = base_fingerprint(model)
    theirs = lora.info.fingerprint
    if mine.structure != theirs.structure:
        raise BaseModelMismatchError(
            f"{where} was trained on a different base model (architecture fingerprint {theirs.structure} vs this "
            f"model's {mine.structure}): load the DiffuEraser weights it was trained on, or retrain the LoRA on these"
        )
    if not theirs.matches(mine):
        raise BaseModelMismatchError(
            f"{where} was trained on different weights of the same architecture (sampled base weights differ): "
            f"load the DiffuEraser weights it was trained on, or retrain the LoRA on these"
        )


def apply_region_lora(
    model: nn.Module,
    lora: str | os.PathLike | RegionLora,
    strength: float = 1.0,
    adapter_name: str = ADAPTER_NAME,
    check_base: bool = True,
) -> RegionLoraInfo:
    """Load a Region-DPO LoRA into ``model``'s UNet as adapter ``adapter_name`` at ``strength``.

    Any adapter already active (PCM) stays active. An existing adapter of the same name is
    replaced. ``strength`` 0 gives exactly the base output; 1 the trained one. Raises
    :class:`BaseModelMismatchError` for a LoRA trained on another base model.
    """
    unet = _unet_of(model)
    if isinstance(lora, RegionLora):
        from .validate import check_finite_tensors

        check_finite_tensors(lora.state_dict, str(lora.path or "the LoRA"), "pass a LoRA without NaN/inf weights")
    else:
        lora = load_region_lora(lora)  # checks the file, NaN/inf included
    strength = float(strength)
    if not torch.isfinite(torch.tensor(strength)):
        raise ValueError(f"strength: must be a finite number, got {strength}")
    if check_base:
        check_base_model(lora, unet)
    if has_adapter(unet, adapter_name):
        remove_region_lora(unet, adapter_name)
    modules = lora.modules
    present = {n for n, _ in unet.named_modules()}
    absent = [m for m in modules if m not in present]
    if absent:
        raise BaseModelMismatchError(
            f"{lora.path or 'the LoRA'} targets modules this UNet does not have (e.g. {absent[:2]}); it was trained "
            f"on a different base model"
        )
    add_region_adapter(
        unet, rank=lora.info.rank, lora_alpha=lora.info.lora_alpha, adapter_name=adapter_name,
        trainable=False, target_modules=modules,
    )
    load_adapter_weights(unet, lora.state_dict, adapter_name)
    set_region_lora_strength(unet, strength, adapter_name)
    return lora.info


def set_region_lora_strength(model: nn.Module, strength: float, adapter_name: str = ADAPTER_NAME) -> None:
    """Scale the adapter's output: ``strength * lora_alpha / rank * B A x`` (0 = the base model)."""
    set_adapter_scale(_unet_of(model), adapter_name, float(strength))


def remove_region_lora(model: nn.Module, adapter_name: str = ADAPTER_NAME) -> None:
    """Remove the adapter from the UNet; other adapters (PCM) stay as they were. No-op if absent."""
    unet = _unet_of(model)
    if has_adapter(unet, adapter_name):
        remove_adapter(unet, adapter_name)
