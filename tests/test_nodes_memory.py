"""Memory controls of the nodes (issue 12) with ComfyUI stubs: the trainer's settings and report,
the cached model and RNGs left as found, the separate training process."""
from __future__ import annotations

import importlib
import random

import numpy as np
import pytest
import torch

from pack import PACK_NAME, load_pack, node
from test_nodes_pipeline import FakeComfyVAE, _clip, _cond

TRAIN_ARGS = (1e-3, 4, 1000.0, 1.0, 1.5, 0.05, 100.0, 200.0, 5.0, 8, 1, 100, 0)


@pytest.fixture
def handle_and_pairs(comfy_stubs):
    from rrdpo_core.models.testing import write_tiny_diffueraser

    write_tiny_diffueraser(comfy_stubs.models_dir / "diffueraser" / "tiny", seed=0)
    frames, _ = _clip()
    (handle,) = node("RRDPOLoadDiffuEraser").load("tiny", "auto", "none")
    pairs, _, _ = node("RRDPOBuildPreferencePairs").build(handle, FakeComfyVAE(), _cond(), "p", 2, 4, False, True,
                                                          False, 0, images=frames)
    return handle, pairs


def test_trainer_memory_settings_reach_the_trainer_and_the_report(handle_and_pairs, monkeypatch):
    handle, pairs = handle_and_pairs
    load_pack()
    trainer = importlib.import_module(f"{PACK_NAME}.rrdpo_core.train.trainer")
    iso = importlib.import_module(f"{PACK_NAME}.rrdpo_core.train.isolation")
    seen = []
    real = trainer.train_region_dpo

    def spy(model, vae, text, pairs_dir, config, **kw):
        seen.append(config)
        random.random(), np.random.rand(), torch.rand(1)  # the run draws from the global RNGs
        return real(model, vae, text, pairs_dir, config, **kw)

    monkeypatch.setattr(trainer, "train_region_dpo", spy)
    digest, rng = iso.model_digest(handle.model), iso.rng_digest()
    out = node("RRDPOTrainer").train(handle, _cond(), pairs, "manual", 2, *TRAIN_ARGS, memory_preset="manual",
                                     gradient_checkpointing=True, pair_passes="sequential", frames_per_clip=2,
                                     mixed_precision="no")
    cfg = seen[-1]
    assert (cfg.gradient_checkpointing, cfg.pair_passes, cfg.num_frames, cfg.mixed_precision) == (
        True, "sequential", 2, "no")
    report = out["result"][3]
    assert report.splitlines()[0].startswith("memory preset manual: gradient_checkpointing=True, "
                                             "pair_passes=sequential, frames per clip=2")
    assert "GiB" in report.splitlines()[0]
    assert iso.model_digest(handle.model) == digest and iso.rng_digest() == rng

    # "auto" on a CPU keeps the given settings and says so.
    out = node("RRDPOTrainer").train(handle, _cond(), pairs, "auto", 1, *TRAIN_ARGS)
    assert "memory preset auto on cpu" in out["result"][3].splitlines()[0]
    assert (seen[-1].gradient_checkpointing, seen[-1].pair_passes) == (False, "joint")
    with pytest.raises(ValueError, match="pair_passes must be one of"):
        node("RRDPOTrainer").train(handle, _cond(), pairs, "bad", 1, *TRAIN_ARGS, pair_passes="both")


def test_trainer_in_a_separate_process(handle_and_pairs):
    from rrdpo_core.region_lora import load_region_lora

    handle, pairs = handle_and_pairs
    out = node("RRDPOTrainer").train(handle, _cond(), pairs, "child", 2, *TRAIN_ARGS, separate_process=True)
    trained, path, plots, report = out["result"]
    assert load_region_lora(path).info.rank == 4
    assert trained.loras == ((path, 1.0),)
    assert report.startswith("memory preset")
