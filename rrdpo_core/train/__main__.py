"""Command line: ``python -m rrdpo_core.train --config CONFIG.json``.

One process trains on one device (GPU if there is one). Data parallel on N processes::

    accelerate launch --num_processes N -m rrdpo_core.train --config CONFIG.json

(on a machine without GPUs add ``--multi_gpu`` and ``"device": "cpu"`` in the config to get N CPU
processes talking over gloo). Re-running the same command continues the run from its newest
checkpoint (``"resume": "auto"``, the default).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .config import TrainConfig


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rrdpo_core.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="JSON file with TrainConfig fields (paths relative to it)")
    p.add_argument("--out-dir", help="override out_dir")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    p.add_argument("--resume", help="override resume: auto, never, or a checkpoint folder")
    p.add_argument("--device", help="override device (cpu, cuda, cuda:1, ...)")
    return p.parse_args(argv)


def _model_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """Base weights in the autocast dtype on a GPU (they are frozen), fp32 otherwise."""
    mp = cfg.mixed_precision
    if mp == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mp]


def checked_pairs(cfg: TrainConfig):
    """The pairs, checked before anything heavy: a wrong folder should not cost a model load."""
    from ..errors import RrdpoInputError
    from ..pairs import PairDataset

    dataset = PairDataset(cfg.pairs_dir)
    if len(dataset) == 0:  # before the latents/VAE question, which an empty folder cannot answer
        raise RrdpoInputError(f"{cfg.pairs_dir} holds no preference pairs (dataset.json but no complete sample in "
                              f"samples/); build them with rrdpo_core.pairs.build_preference_pairs or the Build "
                              f"Preference Pairs node, then train")
    if not dataset.has_latents and not cfg.vae_path:
        raise RrdpoInputError(f"{cfg.pairs_dir} stores no latents: set 'vae_path' in the config to encode the frames")
    return dataset


def load_training_inputs(cfg: TrainConfig, dataset):
    """Process group/device, the model (with the PCM adapter), the text embedding and the VAE for ``cfg``.

    Shared by this command line and the separate training process (``train.process``), so both
    train exactly the same thing. Returns ``(dist, model, text, vae)``; ``text`` is None when the
    pairs store their own embedding, ``vae`` None when they store latents.
    """
    from ..models import load_diffueraser
    from .dist import Dist

    # The process group and device come first: each process loads the model onto its own device.
    dist = Dist(torch.device(cfg.device) if cfg.device else None, cfg.device == "cpu")
    device = dist.device
    dtype = _model_dtype(cfg, device)
    model = load_diffueraser(cfg.model_dir, dtype=dtype, device=device)
    if cfg.pcm_lora:
        from ..lora import apply_kohya_lora

        apply_kohya_lora(model.unet, Path(cfg.pcm_lora), adapter_name="pcm")
    text = None
    if cfg.text_embeds:
        from ..text_embeddings import load_text_embeds

        text = load_text_embeds(cfg.text_embeds)
    elif dataset.text_embeds() is None:
        from ..text_embeddings import resolve_text_embeds

        text = resolve_text_embeds(None, None, cfg.model_dir)
    vae = None
    if not dataset.has_latents:
        from ..vae import load_vae

        vae = load_vae(cfg.vae_path, dtype=dtype, device=device)
    return dist, model, text, vae


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    cfg = TrainConfig.from_json(args.config)
    overrides = {k: v for k, v in (("out_dir", args.out_dir), ("max_steps", args.max_steps),
                                   ("resume", args.resume), ("device", args.device)) if v is not None}
    if overrides:
        cfg = cfg.replace(**overrides)
    for name in ("model_dir", "pairs_dir", "out_dir"):
        if not getattr(cfg, name):
            raise SystemExit(f"config {args.config}: '{name}' is required on the command line")

    from .trainer import run_training

    from ..errors import RrdpoInputError

    try:
        dataset = checked_pairs(cfg)
    except RrdpoInputError as err:
        raise SystemExit(str(err)) from None
    dist, model, text, vae = load_training_inputs(cfg, dataset)

    def progress(done: int, total: int) -> None:
        if dist.is_main:
            print(f"step {done}/{total}", file=sys.stderr, flush=True)

    def on_log(record: dict) -> None:
        keys = ("loss", "dpo", "sft", "s", "dgr", "implicit_acc", "grad_norm")
        print(json.dumps({"step": record["step"], **{k: record[k] for k in keys if k in record}}), flush=True)

    result = run_training(model, dataset, text, cfg, out_dir=cfg.out_dir, vae=vae, progress=progress,
                          on_log=on_log)
    if dist.is_main:
        print(json.dumps({"lora": str(result.lora_path), "log": str(result.log_path), "steps": result.steps,
                          "resumed_from": result.resumed_from,
                          "plots": {k: str(v) for k, v in result.plots.items()}}), flush=True)
    if dist.state is not None:
        import torch.distributed as tdist

        dist.barrier()
        if tdist.is_initialized():
            tdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..errors import RrdpoInputError

    try:
        sys.exit(main())
    except (RrdpoInputError, FileNotFoundError) as err:  # bad input or a damaged file: the message says which
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
