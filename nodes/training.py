"""Training nodes: build GT preference pairs, train a Region-DPO LoRA with Region-Reg-DPO."""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from . import _comfy
from ._inputs import CONDITIONING_INPUT, model_inputs, seed_input
from ._vae import ComfyVAECodec, text_embeds_from_conditioning
from .models import DiffuEraserHandle
from .sampling import running

CATEGORY = "Region-Reg-DPO/training"
NONE = "none"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class PairsHandle:
    """What flows along an RRDPO_PAIRS wire: a pair folder on disk and its size."""

    root: str
    count: int


def _checked_name(value: str, what: str) -> str:
    value = value.strip()
    if value.endswith(".safetensors"):
        value = value[: -len(".safetensors")]
    if not _NAME.match(value) or ".." in value:
        raise ValueError(f"{what}: {value!r} is not a plain name; use letters, digits, '_', '-', '.' (no folders)")
    return value


def _input_folders() -> list[str]:
    fp = _comfy.folder_paths()
    if fp is None or not hasattr(fp, "get_input_directory"):
        return []
    base = Path(fp.get_input_directory())
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


class RRDPOBuildPreferencePairs:
    DESCRIPTION = (
        "Build GT-pair preference data: cut random moving masks into clean source clips; the winner is the truth, "
        "the loser is a completion of the same clip (hallucination: DiffuEraser without prior; blur: the flow prior "
        "alone; flicker: windows straddling a seam) composited onto the truth. Re-running continues where it stopped."
    )
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = ("RRDPO_PAIRS", "STRING", "IMAGE")
    RETURN_NAMES = ("pairs", "summary", "preview")
    OUTPUT_TOOLTIPS = (
        "The pair folder, for the trainer.",
        "How many pairs of each kind the folder holds.",
        "A few pairs of each kind at their middle frame: masked input | winner (truth) | loser, one row each.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **model_inputs("The model that makes the losers (the one you will train)."),
                "dataset_name": ("STRING", {"default": "rrdpo_pairs",
                                            "tooltip": "Folder name under output/rrdpo_pairs/ (a plain name)."}),
                "count": ("INT", {"default": 16, "min": 1, "max": 100000, "tooltip": "Number of pairs to have in the folder."}),
                "num_frames": ("INT", {"default": 22, "min": 1, "max": 32, "tooltip": "Frames per pair (22 = one DiffuEraser window)."}),
                "hallucination": ("BOOLEAN", {"default": True, "tooltip": "Losers from DiffuEraser without a prior."}),
                "blur": ("BOOLEAN", {"default": True, "tooltip": "Losers from the propagation prior alone."}),
                "flicker": ("BOOLEAN", {"default": True, "tooltip": "Losers with a temporal seam (window jumps)."}),
                "seed": seed_input("Seed of masks, crops and loser sampling."),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "A clean source clip (frames without the object to remove)."}),
                "source_folder": ([NONE] + _input_folders(), {
                    "default": NONE, "tooltip": "A folder in ComfyUI's input/ with source videos or frame folders."}),
            },
        }

    @_comfy.interrupt_aware
    def build(self, diffueraser: DiffuEraserHandle, vae, conditioning, dataset_name, count, num_frames,
              hallucination, blur, flicker, seed, images=None, source_folder=NONE):
        from ..rrdpo_core.pairs import build_preference_pairs

        kinds = [k for k, on in (("hallucination", hallucination), ("blur", blur), ("flicker", flicker)) if on]
        if not kinds:
            raise ValueError("kinds: switch on at least one loser kind (hallucination, blur or flicker)")
        sources = []
        if images is not None:
            sources.append(images.float().cpu())
        if source_folder not in (None, NONE):
            fp = _comfy.folder_paths()
            sources.append(os.path.join(fp.get_input_directory(), source_folder))
        if not sources:
            raise ValueError("sources: connect source frames (images) or choose a source_folder from ComfyUI's input/")
        out_dir = Path(_comfy.output_dir()) / "rrdpo_pairs" / _checked_name(dataset_name, "dataset_name")
        with torch.inference_mode(False), running(diffueraser) as model:
            text = text_embeds_from_conditioning(conditioning, model.cross_attention_dim)
            dataset = build_preference_pairs(
                model, ComfyVAECodec(vae), text, sources, out_dir, count=count, kinds=kinds, seed=seed,
                num_frames=num_frames, progress=_comfy.Progress(count), cancel=_comfy.cancel_requested,
            )
        per_kind: dict[str, int] = {}
        for entry in dataset.entries:
            per_kind[entry.kind] = per_kind.get(entry.kind, 0) + 1
        summary = f"{len(dataset)} pairs in {out_dir}: " + ", ".join(f"{k} {n}" for k, n in sorted(per_kind.items()))
        from ..rrdpo_core.pair_preview import pair_preview

        return (PairsHandle(str(out_dir), len(dataset)), summary, pair_preview(dataset))


class RRDPOTrainer:
    DESCRIPTION = (
        "Train a Region-DPO LoRA on the main UNet with the Region-Reg-DPO loss: zone-weighted DPO (alpha) plus a "
        "constant zone-weighted SFT anchor (rho) over hole / boundary band / context. The reference is the same "
        "UNet with the LoRA switched off. Checkpoints and resumes; the LoRA goes to models/loras/rrdpo/."
    )
    CATEGORY = CATEGORY
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = ("DIFFUERASER", "STRING", "IMAGE", "STRING")
    RETURN_NAMES = ("diffueraser", "lora_path", "plots", "report")
    OUTPUT_TOOLTIPS = (
        "The model with the trained LoRA attached (strength 1).",
        "Where the LoRA file was written (models/loras/rrdpo/...).",
        "Training curves: loss, DGR, win/lose gaps, per-zone errors, DPO share.",
        "The last step's diagnostics.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        def f(default, lo, hi, step, tip):
            return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip})

        return {
            "required": {
                "diffueraser": ("DIFFUERASER", {"tooltip": "The base model (a PCM LoRA, if loaded, stays on in both policy and reference)."}),
                "conditioning": CONDITIONING_INPUT,
                "pairs": ("RRDPO_PAIRS", {"tooltip": "From Build Preference Pairs."}),
                "lora_name": ("STRING", {"default": "region_dpo_lora", "tooltip": "File name of the LoRA in models/loras/rrdpo/."}),
                "steps": ("INT", {"default": 200, "min": 1, "max": 1000000, "tooltip": "Optimizer steps."}),
                "learning_rate": f(2e-6, 1e-8, 1e-2, 1e-7, "AdamW learning rate (design default 2e-6)."),
                "rank": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "LoRA rank (alpha = 2 x rank)."}),
                "beta": f(1000.0, 1.0, 100000.0, 10.0, "DPO beta (seed range 500-1000; official Diffusion-DPO 5000 = 2500 here)."),
                "alpha_hole": f(1.0, 0.0, 100.0, 0.05, "DPO weight of the hole zone."),
                "alpha_boundary": f(1.5, 0.0, 100.0, 0.05, "DPO weight of the boundary band."),
                "alpha_context": f(0.05, 0.0, 100.0, 0.01, "DPO weight of the context."),
                "rho_hole": f(100.0, 0.0, 100000.0, 1.0, "Constant SFT anchor of the hole zone."),
                "rho_boundary": f(200.0, 0.0, 100000.0, 1.0, "Constant SFT anchor of the boundary band (strongest)."),
                "rho_context": f(5.0, 0.0, 100000.0, 0.5, "Constant SFT anchor of the context."),
                "band_px": ("INT", {"default": 8, "min": 0, "max": 64, "tooltip": "Boundary band width in pixels."}),
                "grad_accum": ("INT", {"default": 1, "min": 1, "max": 1024, "tooltip": "Gradient accumulation steps."}),
                "checkpoint_every": ("INT", {"default": 100, "min": 1, "max": 100000, "tooltip": "Checkpoint interval (steps); a re-run resumes."}),
                "seed": seed_input("Seed of noise, timesteps and data order."),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "Only needed if the pairs were stored without latents."}),
                "memory_preset": (["auto", "manual"], {"default": "auto", "tooltip": (
                    "auto: pick gradient checkpointing, pair passes and frames per clip from the free GPU memory "
                    "(the choice is in the report); manual: use the four settings below as given.")}),
                "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip": (
                    "Recompute activations in the backward pass: much less memory, about a third slower (manual).")}),
                "pair_passes": (["joint", "sequential"], {"default": "joint", "tooltip": (
                    "joint: winner and loser in one batch (fastest); sequential: one after the other, half the "
                    "activation memory, same gradients (manual).")}),
                "frames_per_clip": ("INT", {"default": 0, "min": 0, "max": 32, "tooltip": (
                    "Train on random crops of this many frames of each clip (0 = whole clips) (manual).")}),
                "mixed_precision": (["auto", "no", "fp16", "bf16"], {"default": "auto", "tooltip": (
                    "Autocast precision; auto follows the model's dtype (fp16/bf16 on a GPU, none on the CPU).")}),
                "separate_process": ("BOOLEAN", {"default": False, "tooltip": (
                    "Train in a child process that loads the model from disk, so an out-of-memory or a crash "
                    "cannot take ComfyUI down. Progress, Cancel and checkpoints work the same. Needs pairs stored "
                    "with their latents.")}),
            },
        }

    @_comfy.interrupt_aware
    def train(self, diffueraser: DiffuEraserHandle, conditioning, pairs: PairsHandle, lora_name, steps, learning_rate,
              rank, beta, alpha_hole, alpha_boundary, alpha_context, rho_hole, rho_boundary, rho_context, band_px,
              grad_accum, checkpoint_every, seed, vae=None, memory_preset="auto", gradient_checkpointing=False,
              pair_passes="joint", frames_per_clip=0, mixed_precision="auto", separate_process=False):
        from ..rrdpo_core.train import TrainConfig, train_region_dpo
        from ..rrdpo_core.fsutil import atomic_path

        if diffueraser.loras:
            raise ValueError("diffueraser: train from the base model; remove the Apply Region-DPO LoRA node before the trainer")
        name = _checked_name(lora_name, "lora_name")
        run_dir = Path(_comfy.output_dir()) / "rrdpo_runs" / name
        from ._memory import train_memory

        memory, memory_line = train_memory(memory_preset, gradient_checkpointing, pair_passes, frames_per_clip,
                                           mixed_precision, pairs.root, diffueraser.model)
        config = TrainConfig(
            alpha=(alpha_hole, alpha_boundary, alpha_context), rho=(rho_hole, rho_boundary, rho_context), beta=beta,
            band_px=band_px, rank=rank, lora_alpha=2.0 * rank, learning_rate=learning_rate, max_steps=steps,
            grad_accum=grad_accum, checkpoint_every=checkpoint_every, seed=seed, lora_name=f"{name}.safetensors",
            **memory,
        )
        if separate_process:
            result = _train_in_process(diffueraser, conditioning, pairs, config, run_dir, steps)
        else:
            from ..rrdpo_core.train.isolation import preserved

            with torch.inference_mode(False), running(diffueraser) as model:
                text = text_embeds_from_conditioning(conditioning, model.cross_attention_dim)
                # The cached networks and the process-wide RNGs come back as they were, whatever happens.
                with preserved(model):
                    result = train_region_dpo(model, ComfyVAECodec(vae) if vae is not None else None, text,
                                              pairs.root, config, out_dir=run_dir, progress=_comfy.Progress(steps),
                                              cancel=_comfy.cancel_requested)
        target = Path(_comfy.trained_lora_dir()) / f"{name}.safetensors"
        with atomic_path(target) as tmp:  # appears in the LoRA list only when complete
            shutil.copyfile(result.lora_path, tmp)
        report = "\n".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.diagnostics.items())
        report = f"{memory_line}\n{report}"
        if result.resumed_from:
            report = f"resumed from the checkpoint of step {result.resumed_from} in {run_dir}\n{report}"
        from ..rrdpo_core.train.plots import plots_image

        plots = torch.from_numpy(plots_image(result.plots))[None]
        return {"ui": {"text": [report]},
                "result": (diffueraser.with_lora(str(target), 1.0), str(target), plots, report)}


def _train_in_process(diffueraser: DiffuEraserHandle, conditioning, pairs: PairsHandle, config, run_dir: Path,
                      steps: int):
    """Train in a child process (rrdpo_core.train.process) that loads the model from its folder."""
    from ..rrdpo_core.pairs import PairDataset
    from ..rrdpo_core.text_embeddings import save_text_embeds
    from ..rrdpo_core.train.process import run_training_in_process
    from .models import _resolve_model_dir

    if not PairDataset(pairs.root).has_latents:
        raise ValueError("separate_process: the pairs were stored without latents and ComfyUI's VAE cannot be handed "
                         "to another process; rebuild them with latents, or train in this process")
    run_dir.mkdir(parents=True, exist_ok=True)
    text = text_embeds_from_conditioning(conditioning, diffueraser.model.cross_attention_dim)
    text_path = save_text_embeds(run_dir / "text_embeds.safetensors", text)
    device = _comfy.torch_device()
    config = config.replace(model_dir=str(_resolve_model_dir(diffueraser.name)), pairs_dir=str(pairs.root),
                            out_dir=str(run_dir), pcm_lora=diffueraser.pcm_lora, text_embeds=str(text_path),
                            device=str(device))
    if device.type != "cpu":  # make room: the child needs the memory ComfyUI's models hold
        _comfy.free_memory_for(device, 1 << 62)
    return run_training_in_process(config, progress=_comfy.Progress(steps), cancel=_comfy.cancel_requested)


NODE_CLASS_MAPPINGS = {
    "RRDPOBuildPreferencePairs": RRDPOBuildPreferencePairs,
    "RRDPOTrainer": RRDPOTrainer,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RRDPOBuildPreferencePairs": "Build Preference Pairs",
    "RRDPOTrainer": "Region-Reg-DPO Trainer",
}
