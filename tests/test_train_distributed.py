"""Data-parallel training: ``accelerate launch`` with 2 CPU processes (gloo) runs the same code.

The two processes split the global batch (one pair each) and average their LoRA gradients, so the
run must match a single process that takes both pairs in one batch, and its LoRA must load.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

import rrdpo_core
from _helpers import drifting_clip
from rrdpo_core.pairs import LOSER_KINDS, LoserGenerator, build_preference_pairs
from rrdpo_core.region_lora import apply_region_lora, load_region_lora
from rrdpo_core.train import TrainConfig, train_region_dpo
from rrdpo_core.train.logging import read_log

REPO = Path(rrdpo_core.__file__).resolve().parents[1]


clip = partial(drifting_clip, frames=4)  # (T, H, W, 3) texture drifting right, tests/_helpers.py


def darker(frames, hole, seeds):
    return frames * 0.6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="the accelerate launcher is not installed")
def test_two_process_accelerate_run_matches_one_process_and_loads(tmp_path):
    from rrdpo_core.models import load_diffueraser
    from rrdpo_core.models.testing import write_tiny_diffueraser
    from rrdpo_core.vae import make_tiny_vae

    gen = LoserGenerator(None, None, torch.zeros(1, 77, 32), overrides={k: darker for k in LOSER_KINDS})
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    pairs = build_preference_pairs(None, make_tiny_vae(0), text, [clip(1), clip(2)], tmp_path / "pairs", count=4,
                                   num_frames=2, generator=gen, composite="hard")
    model_dir = write_tiny_diffueraser(tmp_path / "model")
    settings = dict(model_dir="model", pairs_dir="pairs", out_dir="run2", device="cpu", max_steps=2, batch_size=1,
                    learning_rate=1e-3, rank=4, lora_alpha=8.0, checkpoint_every=1, plots=False)
    (tmp_path / "cfg.json").write_text(json.dumps(settings))

    launcher = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "rrdpo_core.train", "--config", str(tmp_path / "cfg.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    lora_path = Path(summary["lora"])
    records = read_log(tmp_path / "run2" / "train_log.jsonl")
    assert [r["step"] for r in records] == [0, 1]  # logged once, by the main process
    assert [r["pairs_seen"] for r in records] == [2, 4]  # both processes' pairs count

    # The same global batch in one process.
    one = train_region_dpo(load_diffueraser(model_dir), None, None, pairs.root,
                           TrainConfig.from_dict({**settings, "batch_size": 2, "out_dir": None,
                                                  "model_dir": None, "pairs_dir": None}),
                           out_dir=tmp_path / "run1")
    for a, b in zip(records, read_log(one.log_path)):
        for key in ("loss", "sft", "dpo", "e_hole_model", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key
    # Equal up to float summation order (one batch of 2 against 2 batches of 1, then an all-reduce).
    # Adam moves each weight by about +-lr at first, whatever the gradient's size, so a last-bit
    # difference in a near-zero gradient can flip a single weight: the update as a whole must agree.
    two_lora, one_lora = load_region_lora(lora_path).state_dict, load_region_lora(one.lora_path).state_dict
    diff = math.sqrt(sum(float((two_lora[k] - one_lora[k]).pow(2).sum()) for k in one_lora))
    update = math.sqrt(sum(float(v.pow(2).sum()) for k, v in one_lora.items() if k.endswith("lora_B.weight")))
    assert update > 0 and diff < 1e-2 * update, (diff, update)

    model = load_diffueraser(model_dir)
    info = apply_region_lora(model, lora_path, strength=1.0)
    assert info.steps == 2
