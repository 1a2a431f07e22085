"""Model nodes: load DiffuEraser from models/diffueraser, attach a Region-DPO LoRA with a strength."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import _comfy

CATEGORY = "Region-Reg-DPO/models"
NONE = "none"
# Names the shipped workflows use; kept in the lists as placeholders when absent (see _comfy.with_placeholders).
DEFAULT_MODEL = "diffuEraser"
DEFAULT_PCM = "pcm_sd15_smallcfg_2step_converted.safetensors"
DEFAULT_REGION_LORA = "rrdpo/region_dpo_lora.safetensors"
MODEL_SOURCE = ("Put the released DiffuEraser weights there as <name>/brushnet/ and <name>/unet_main/ "
                "(config.json + diffusion_pytorch_model.safetensors each) from huggingface.co/lixiaowen/diffuEraser.")
PCM_SOURCE = (f"Download {DEFAULT_PCM} from huggingface.co/wangfuyun/PCM_Weights (folder sd15) into models/loras, "
              "or set pcm_lora to none (then use unipc/ddim with about 20 steps).")
REGION_LORA_SOURCE = ("Train one with the Region-Reg-DPO Trainer (workflow d), which writes "
                      f"models/loras/{DEFAULT_REGION_LORA}, or pick another Region-DPO LoRA.")


@dataclass(frozen=True)
class DiffuEraserHandle:
    """What flows along a DIFFUERASER wire.

    The networks are shared by every node that receives the handle; LoRAs are kept as a list and
    as weight patches of the handle's own patcher clone, which ComfyUI merges while it has that
    clone loaded and takes out when it unloads it, so a cached upstream model is never changed
    behind ComfyUI's back.
    """

    model: object  # rrdpo_core.models.DiffuEraserModel (on the offload device)
    name: str
    compute_dtype: torch.dtype
    # The comfy ModelPatcher that lets ComfyUI load, count and offload the networks; with LoRAs,
    # a clone of the loader's patcher carrying them as weight patches (nodes/_patcher.py).
    patcher: object = field(compare=False)
    pcm_lora: str | None = None
    pcm_steps: int | None = None
    loras: tuple[tuple[str, float], ...] = field(default_factory=tuple)

    def with_lora(self, path: str, strength: float) -> "DiffuEraserHandle":
        from ._patcher import with_region_lora

        patcher = with_region_lora(self.patcher, path, strength)
        return replace(self, loras=self.loras + ((path, float(strength)),), patcher=patcher)


def _is_diffueraser_dir(path: Path) -> bool:
    return (path / "brushnet" / "config.json").is_file() and (path / "unet_main" / "config.json").is_file()


def list_diffueraser_models() -> list[str]:
    """Sub-folders of models/diffueraser (any depth <= 2) in the released brushnet/ + unet_main/ layout."""
    found = []
    for base in _comfy.model_folder_paths("diffueraser"):
        base = Path(base)
        if not base.is_dir():
            continue
        if _is_diffueraser_dir(base):
            found.append(".")
        for child in sorted(base.iterdir()):
            if child.is_dir() and _is_diffueraser_dir(child):
                found.append(child.name)
            elif child.is_dir():
                found += [f"{child.name}/{g.name}" for g in sorted(child.iterdir()) if g.is_dir() and _is_diffueraser_dir(g)]
    return sorted(set(found))


def _resolve_model_dir(name: str) -> Path:
    for base in _comfy.model_folder_paths("diffueraser"):
        path = (Path(base) / name).resolve()
        if Path(base).resolve() in (path, *path.parents) and _is_diffueraser_dir(path):
            return path
    folders = ", ".join(_comfy.model_folder_paths("diffueraser")) or "models/diffueraser"
    raise FileNotFoundError(
        f"DiffuEraser model {name!r} not found in {folders}. Put the released weights there as "
        f"<name>/brushnet/{{config.json, diffusion_pytorch_model.safetensors}} and <name>/unet_main/{{...}} "
        f"(huggingface.co/lixiaowen/diffuEraser), then refresh ComfyUI (R)."
    )


class RRDPOLoadDiffuEraser:
    DESCRIPTION = (
        "Load DiffuEraser (BrushNet + motion UNet) from models/diffueraser/<name>/ in the released layout, "
        "optionally with the PCM acceleration LoRA from models/loras (2-step PCM is what DiffuEraser ships with)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("DIFFUERASER",)
    RETURN_NAMES = ("diffueraser",)
    OUTPUT_TOOLTIPS = ("The DiffuEraser networks, for the sampler, the pair builder and the trainer.",)

    @classmethod
    def INPUT_TYPES(cls):
        from ..rrdpo_core.precision import DTYPE_CHOICES

        loras = _comfy.with_placeholders([NONE] + _comfy.list_files("loras"), DEFAULT_PCM)
        return {
            "required": {
                "model_name": (list_diffueraser_models() or [DEFAULT_MODEL], {
                    "tooltip": "A folder in models/diffueraser holding brushnet/ and unet_main/ (the released weights). "
                               f"With none there, '{DEFAULT_MODEL}' is listed and says where to get them."}),
                "dtype": (list(DTYPE_CHOICES), {"default": "auto",
                                                "tooltip": "Compute precision on the GPU (auto = fp16); the CPU always uses fp32."}),
                "pcm_lora": (loras, {"default": NONE,
                                     "tooltip": "PCM acceleration LoRA (pcm_sd15_smallcfg_2step_converted.safetensors for "
                                                "the released 2-step setting), or none for UniPC/DDIM with more steps."}),
            },
        }

    def load(self, model_name: str, dtype: str, pcm_lora: str):
        from ..rrdpo_core.models import load_diffueraser
        from ..rrdpo_core.precision import inference_dtype

        if model_name == NONE:
            raise FileNotFoundError(
                "No DiffuEraser model found: put the released weights in models/diffueraser/<name>/ "
                "(brushnet/ and unet_main/ from huggingface.co/lixiaowen/diffuEraser) and refresh."
            )
        path = _resolve_model_dir(model_name)
        dev = _comfy.torch_device()
        cdtype = inference_dtype(dtype, dev)
        pcm_path = _comfy.full_path("loras", pcm_lora, PCM_SOURCE) if pcm_lora != NONE else None
        # ComfyUI runs nodes under torch.inference_mode(); weights and adapters made there would be
        # inference tensors, which later nodes can neither switch adapters on (peft's set_adapter
        # flips requires_grad) nor train through. Build them as normal tensors instead.
        with _comfy.building_model():
            # Keep the weights on the offload device between runs; the sampler moves them when it runs.
            model = load_diffueraser(path, dtype=cdtype, device=_comfy.offload_device())
            if pcm_path is not None:
                from ..rrdpo_core.lora import apply_kohya_lora

                apply_kohya_lora(model.unet, pcm_path, adapter_name="pcm")
        pcm_steps = None
        if pcm_path is not None:
            name = os.path.basename(pcm_lora).lower()
            pcm_steps = next((n for n in (2, 4, 8, 16) if f"{n}step" in name), None)
        from ._memory import make_patcher

        return (DiffuEraserHandle(model=model, name=model_name, compute_dtype=cdtype, pcm_lora=pcm_path,
                                  pcm_steps=pcm_steps, patcher=make_patcher(model)),)


class RRDPOApplyRegionDPOLoRA:
    DESCRIPTION = (
        "Attach a Region-DPO LoRA (trained by the Region-Reg-DPO Trainer, from models/loras) at a strength. "
        "0 gives the base model exactly; 1 the trained one. A LoRA trained on another base model is refused."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("DIFFUERASER",)
    RETURN_NAMES = ("diffueraser",)
    OUTPUT_TOOLTIPS = ("The same networks with the LoRA attached (applied while sampling).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "diffueraser": ("DIFFUERASER", {"tooltip": "From Load DiffuEraser."}),
                "lora_name": (_comfy.with_placeholders(_comfy.list_files("loras"), DEFAULT_REGION_LORA), {
                    "tooltip": "A Region-DPO LoRA file; trained ones are saved to models/loras/rrdpo/."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.05,
                                       "tooltip": "Scale of the LoRA's change (0 = base model, 1 = as trained)."}),
            },
        }

    def apply(self, diffueraser: DiffuEraserHandle, lora_name: str, strength: float):
        from ..rrdpo_core.region_lora import check_base_model, load_region_lora

        if lora_name == NONE:
            raise FileNotFoundError("No LoRA selected: put a Region-DPO LoRA in models/loras (or train one).")
        path = _comfy.full_path("loras", lora_name, REGION_LORA_SOURCE)
        lora = load_region_lora(path)  # refuses files that are not Region-DPO LoRAs
        check_base_model(lora, diffueraser.model.unet)  # refuses another base model, now rather than later
        return (diffueraser.with_lora(path, strength),)


NODE_CLASS_MAPPINGS = {
    "RRDPOLoadDiffuEraser": RRDPOLoadDiffuEraser,
    "RRDPOApplyRegionDPOLoRA": RRDPOApplyRegionDPOLoRA,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RRDPOLoadDiffuEraser": "Load DiffuEraser",
    "RRDPOApplyRegionDPOLoRA": "Apply Region-DPO LoRA",
}
