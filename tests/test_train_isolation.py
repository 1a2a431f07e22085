"""The trainer leaves the cached model and the global RNGs as it found them, and can run in its own process."""
from __future__ import annotations

import math
import os
import random
import signal
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers import drifting_clip
from rrdpo_core.errors import Cancelled
from rrdpo_core.models.testing import tiny_diffueraser, write_tiny_diffueraser
from rrdpo_core.pairs import LOSER_KINDS, LoserGenerator, build_preference_pairs
from rrdpo_core.train import TrainConfig, train_region_dpo
from rrdpo_core.train.checkpoint import list_checkpoints
from rrdpo_core.train.isolation import ModelChangedError, model_digest, preserved, rng_digest
from rrdpo_core.train.process import TrainingProcessError, run_training_in_process


_clip = partial(drifting_clip, frames=4)  # (T, H, W, 3) texture drifting right, tests/_helpers.py


def _blurry(frames, hole, seeds):
    x = frames.permute(0, 3, 1, 2)
    return (F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False) * 0.8).permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from rrdpo_core.vae import make_tiny_vae

    gen = LoserGenerator(None, None, torch.zeros(1, 77, 32), overrides={k: _blurry for k in LOSER_KINDS})
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    root = tmp_path_factory.mktemp("pairs")
    return build_preference_pairs(None, make_tiny_vae(0), text, [_clip(1), _clip(2)], root, count=2, num_frames=4,
                                  generator=gen, store_latents=True, composite="hard")


def _config(**kw) -> TrainConfig:
    base = dict(max_steps=2, learning_rate=1e-3, rank=4, lora_alpha=8.0, checkpoint_every=0, plots=False,
                device="cpu", num_frames=2)
    base.update(kw)
    return TrainConfig(**base)


def _inference_model():
    with torch.inference_mode():  # as ComfyUI loads it: inference tensors
        return tiny_diffueraser(0)


def _seed_everything():
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)


def _identity(model):
    return [id(t) for t in list(model.parameters()) + list(model.buffers())]


def test_bare_trainer_replaces_inference_tensors(pairs, tmp_path):
    # What `preserved` is for: without it the cached model's tensors are other objects afterwards.
    model = _inference_model()
    ids = _identity(model)
    train_region_dpo(model, None, None, pairs.root, _config(), out_dir=tmp_path / "run")
    assert _identity(model) != ids


@pytest.mark.parametrize("outcome", ["finished", "cancelled", "failed", "resumed"])
def test_model_and_rng_are_left_as_found(pairs, tmp_path, outcome):
    model = _inference_model()
    out = tmp_path / "run"
    if outcome == "resumed":  # resuming restores the checkpoint's RNG state inside the run
        train_region_dpo(model, None, None, pairs.root, _config(max_steps=1), out_dir=out)
    _seed_everything()
    ids, digest, rng = _identity(model), model_digest(model), rng_digest()
    calls = []

    def progress(done, total):
        calls.append(done)
        if outcome == "failed" and done >= 1:
            raise RuntimeError("boom in a callback")

    cancel = (lambda: len(calls) >= 2) if outcome == "cancelled" else None
    with pytest.raises((Cancelled, RuntimeError)) if outcome in ("cancelled", "failed") else _no_error():
        with preserved(model):
            train_region_dpo(model, None, None, pairs.root, _config(max_steps=3 if outcome != "resumed" else 2),
                             out_dir=out, progress=progress, cancel=cancel)
    assert _identity(model) == ids
    assert model_digest(model) == digest
    assert rng_digest() == rng
    if outcome == "cancelled":
        assert list_checkpoints(out)  # the cancel left a checkpoint


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_changed_in_place_is_reported_and_rng_restored():
    model = tiny_diffueraser(0)
    rng = rng_digest()
    with pytest.raises(ModelChangedError, match="in place"):
        with preserved(model):
            torch.rand(3)
            with torch.no_grad():
                model.unet.conv_in.weight.mul_(2)
    assert rng_digest() == rng


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_diffueraser(tmp_path_factory.mktemp("tiny") / "model")


def test_separate_process_trains_cancels_and_reports_crashes(pairs, model_dir, tmp_path):
    # 1. A run: progress arrives, the LoRA is written.
    seen = []
    result = run_training_in_process(_config(model_dir=str(model_dir), pairs_dir=str(pairs.root),
                                             out_dir=str(tmp_path / "a")),
                                     progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (2, 2) and result.lora_path.is_file() and result.steps == 2

    # 2. Cancel after the first step: the child saves a checkpoint, the parent raises Cancelled.
    steps = []
    with pytest.raises(Cancelled, match="checkpoint"):
        run_training_in_process(_config(model_dir=str(model_dir), pairs_dir=str(pairs.root),
                                        out_dir=str(tmp_path / "b"), max_steps=50),
                                progress=lambda d, t: steps.append(d), cancel=lambda: bool(steps) and steps[-1] >= 1)
    assert list_checkpoints(tmp_path / "b")
    # ... and a re-run resumes from it.
    saved = list_checkpoints(tmp_path / "b")[-1][0]
    resumed = run_training_in_process(_config(model_dir=str(model_dir), pairs_dir=str(pairs.root),
                                              out_dir=str(tmp_path / "b"), max_steps=saved + 1))
    assert resumed.resumed_from == saved and resumed.steps == saved + 1

    # 3. A child killed mid-run (as by the out-of-memory killer): a clear error in the parent.
    pid = []

    def kill_after_first_step(done, total):
        if done >= 1 and pid:
            os.kill(pid[0], signal.SIGKILL)

    with pytest.raises(TrainingProcessError, match="killed by signal 9"):
        run_training_in_process(_config(model_dir=str(model_dir), pairs_dir=str(pairs.root),
                                        out_dir=str(tmp_path / "c"), max_steps=50),
                                on_start=pid.append, progress=kill_after_first_step)

    # 4. An error in the child keeps its type and message.
    with pytest.raises(FileNotFoundError):
        run_training_in_process(_config(model_dir=str(tmp_path / "nowhere"), pairs_dir=str(pairs.root),
                                        out_dir=str(tmp_path / "d")))
