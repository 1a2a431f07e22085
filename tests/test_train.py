"""The Region-Reg-DPO trainer (rrdpo_core.train) on the tiny DiffuEraser and synthetic pairs."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rrdpo_core

from _helpers import drifting_clip
from rrdpo_core.errors import Cancelled
from rrdpo_core.lora import add_lora_adapter, list_adapters
from rrdpo_core.models.testing import tiny_diffueraser
from rrdpo_core.pairs import LOSER_KINDS, LoserGenerator, build_preference_pairs
from rrdpo_core.region_lora import apply_region_lora, load_region_lora, lora_target_modules, BaseModelMismatchError
from rrdpo_core.train import NonFiniteLossError, TrainConfig, train_region_dpo
from rrdpo_core.train.checkpoint import latest_checkpoint, list_checkpoints
from rrdpo_core.train.logging import read_log
from rrdpo_core.train.trainer import _Trainer

REPO = Path(rrdpo_core.__file__).resolve().parents[1]  # the checkout that holds the package
LN2 = float(torch.tensor(math.log(2.0), dtype=torch.float32))


clip = partial(drifting_clip, frames=6)  # (T, H, W, 3) texture drifting right, tests/_helpers.py


def blurry_loser(frames, hole, seeds):
    """Deterministic 'blur' stand-in: a box-blurred, darkened frame (no model needed)."""
    x = frames.permute(0, 3, 1, 2)
    return (F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False) * 0.8).permute(0, 2, 3, 1)


def build_pairs(root: Path, store_latents: bool = True, count: int = 4):
    from rrdpo_core.vae import make_tiny_vae

    gen = LoserGenerator(None, None, torch.zeros(1, 77, 32), overrides={k: blurry_loser for k in LOSER_KINDS})
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    return build_preference_pairs(None, make_tiny_vae(0), text, [clip(1), clip(2)], root, count=count, num_frames=4,
                                  generator=gen, store_latents=store_latents, composite="hard")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return build_pairs(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def model():
    return tiny_diffueraser(0).requires_grad_(False)


def config(**kw) -> TrainConfig:
    # Clips of 2 frames (the pairs hold 4: the trainer crops) keep every step cheap.
    base = dict(max_steps=2, learning_rate=1e-3, rank=4, lora_alpha=8.0, checkpoint_every=0, plots=False,
                device="cpu", num_frames=2)
    base.update(kw)
    return TrainConfig(**base)


def lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_region_lora(path).state_dict


def assert_same_lora(a: Path, b: Path) -> None:
    ta, tb = lora_tensors(a), lora_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def assert_lora_near(a: Path, b: Path) -> None:
    """Equal up to float summation order, judged on the whole LoRA: Adam's first steps move each
    weight by about +-lr whatever the gradient's size, so a last-bit difference in a near-zero
    gradient can flip single weights; the update as a whole must agree to 1 %."""
    ta, tb = lora_tensors(a), lora_tensors(b)
    assert ta.keys() == tb.keys()
    diff = math.sqrt(sum(float((ta[k] - tb[k]).pow(2).sum()) for k in ta))
    ups = math.sqrt(sum(float(ta[k].pow(2).sum()) for k in ta if k.endswith("lora_B.weight")))
    assert ups > 0 and diff < 1e-2 * ups, (diff, ups)


def strip_time(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_step_zero_is_exactly_the_reference(model, pairs, tmp_path):
    for beta in (700.0,):  # the default 1000 is checked in test_alpha_zero_is_region_weighted_sft
        res = train_region_dpo(model, None, None, pairs.root, config(max_steps=1, beta=beta),
                               out_dir=tmp_path / str(beta))
        first = read_log(res.log_path)[0]
        assert first["step"] == 0
        assert first["s"] == 0.0 and first["win_gap"] == 0.0 and first["lose_gap"] == 0.0
        assert first["dpo"] == LN2
        assert first["dgr"] == beta / 2
        assert first["implicit_acc"] == 0.5
        for zone in ("hole", "boundary", "context"):
            assert first[f"e_{zone}_model"] == first[f"e_{zone}_ref"]
    assert list_adapters(model.unet) == []  # the model is handed back as it was


class ConvDenoiser(torch.nn.Module):
    """The smallest model with the trainer's model surface: no attention, so it names its LoRA targets."""

    def __init__(self):
        super().__init__()
        self.unet = torch.nn.Sequential(torch.nn.Conv2d(9, 8, 3, padding=1), torch.nn.SiLU(),
                                        torch.nn.Conv2d(8, 4, 3, padding=1))
        self.region_lora_targets = ["0", "2"]

    dtype = property(lambda self: self.unet[0].weight.dtype)
    device = property(lambda self: self.unet[0].weight.device)

    def predict_eps(self, latents, timestep, text_embeds, cond_latents, num_frames, brushnet_scale=1.0):
        return self.unet(torch.cat([latents, cond_latents], dim=1))


def test_a_denoiser_naming_its_lora_targets_trains_and_each_pair_is_logged(pairs, tmp_path):
    model = ConvDenoiser().requires_grad_(False)
    res = train_region_dpo(model, None, None, pairs.root, config(max_steps=3, batch_size=2, learning_rate=1e-2),
                           out_dir=tmp_path)
    assert sorted(load_region_lora(res.lora_path).modules) == ["0", "2"]
    assert list_adapters(model.unet) == []
    recs = read_log(res.log_path)
    for r in recs:  # every pair's timestep and DGR; their means are the logged means
        assert len(r["t_per_sample"]) == len(r["dgr_per_sample"]) == 2
        assert sum(r["t_per_sample"]) / 2 == pytest.approx(r["timestep_mean"])
        assert sum(r["dgr_per_sample"]) / 2 == pytest.approx(r["dgr"], rel=1e-5)
    assert recs[0]["dgr_per_sample"] == [500.0, 500.0]  # step 0: policy == reference, DGR = beta / 2
    assert recs[-1]["dgr_per_sample"] != [500.0, 500.0]
    x = torch.randn(2, 4, 8, 8)
    cond = torch.randn(2, 5, 8, 8)
    with torch.no_grad():
        base = model.predict_eps(x, torch.tensor([10]), None, cond, 2)
        apply_region_lora(model, res.lora_path)
        assert not torch.equal(model.predict_eps(x, torch.tensor([10]), None, cond, 2), base)


def test_short_run_lowers_the_loss_and_moves_the_lora(model, pairs, tmp_path):
    cfg = config(max_steps=6, learning_rate=3e-3)
    trainer = _Trainer(model, pairs, pairs.text_embeds(), cfg, tmp_path, None, None, None, None)
    trainer.setup()
    try:
        def eval_loss():
            with torch.no_grad():
                return sum(float(trainer.forward(trainer.batcher.batch(g))[0].loss) for g in range(4)) / 4

        before = eval_loss()
        b0 = [p.detach().clone() for p in trainer.params]
        records = [trainer.step(k) for k in range(cfg.max_steps)]
        after = eval_loss()
        moved = max(float((p.detach() - q).abs().max()) for p, q in zip(trainer.params, b0))
    finally:
        trainer.teardown()
    assert after < before
    assert moved > 0
    assert records[-1]["lora_norm"] > records[0]["lora_norm"]
    assert all(math.isfinite(r["grad_norm"]) and r["lr"] == cfg.learning_rate for r in records)


def test_alpha_zero_is_region_weighted_sft(model, pairs, tmp_path):
    kw = dict(max_steps=2, rho=(100.0, 300.0, 2.0))
    dpo = train_region_dpo(model, None, None, pairs.root, config(alpha=(0.0, 0.0, 0.0), **kw), out_dir=tmp_path / "a")
    sft = train_region_dpo(model, None, None, pairs.root, config(objective="sft", **kw), out_dir=tmp_path / "b")
    for a, b in zip(read_log(dpo.log_path), read_log(sft.log_path)):
        assert a["s"] == 0.0 and a["dpo"] == LN2 and a["dgr"] == 500.0
        assert a["sft"] == pytest.approx(b["sft"], rel=1e-5)
        assert a["e_hole_model"] == pytest.approx(b["e_hole_model"], rel=1e-5)
    assert load_region_lora(sft.lora_path).info.extra["objective"] == "sft"
    # The gradients agree at a trained (non-zero) LoRA. They are compared rather than weights after
    # several steps because Adam divides by the gradient's own size, which magnifies the last-bit
    # differences of a batch of 2B clips (winners and losers) against B (winners only).
    grads = {}
    for objective, alpha in (("region_reg_dpo", (0.0, 0.0, 0.0)), ("sft", (1.0, 1.5, 0.05))):
        cfg = config(objective=objective, alpha=alpha, **kw)
        trainer = _Trainer(model, pairs, pairs.text_embeds(), cfg, tmp_path / objective, None, None, None, None)
        trainer.setup()
        try:
            from rrdpo_core.lora import load_adapter_weights

            load_adapter_weights(model.unet, lora_tensors(sft.lora_path), "region_dpo")
            out = trainer.forward(trainer.batcher.batch(5))[0]
            out.loss.backward()
            grads[objective] = [p.grad.detach().clone() for p in trainer.params]
        finally:
            trainer.teardown()
    scale = max(float(g.abs().max()) for g in grads["sft"])
    assert scale > 0
    for g_dpo, g_sft in zip(grads["region_reg_dpo"], grads["sft"]):
        torch.testing.assert_close(g_dpo, g_sft, rtol=1e-3, atol=1e-4 * scale)


def test_three_plus_three_steps_equal_six(model, pairs, tmp_path):
    kw = dict(max_steps=6, warmup_steps=2, checkpoint_every=3, plots=True, plot_every=2)
    straight = train_region_dpo(model, None, None, pairs.root, config(**kw), out_dir=tmp_path / "straight")
    half = train_region_dpo(model, None, None, pairs.root, config(**{**kw, "max_steps": 3}), out_dir=tmp_path / "r")
    assert half.steps == 3 and half.resumed_from == 0
    resumed = train_region_dpo(model, None, None, pairs.root, config(**kw), out_dir=tmp_path / "r")
    assert resumed.resumed_from == 3 and resumed.steps == 6
    assert_same_lora(straight.lora_path, resumed.lora_path)
    assert strip_time(read_log(straight.log_path)) == strip_time(read_log(resumed.log_path))
    assert [r["step"] for r in read_log(resumed.log_path)] == list(range(6))
    assert read_log(straight.log_path)[0]["lr"] == 0.0  # warm-up starts from 0
    # Plots of every diagnostic.
    assert set(resumed.plots) == {"dashboard", "loss", "dgr", "gaps", "zone_errors", "dpo_share", "accuracy"}
    assert all(p.is_file() and p.read_bytes()[:4] == b"\x89PNG" for p in resumed.plots.values())
    # Changing a setting that shapes the trajectory is refused, not silently mixed in.
    with pytest.raises(ValueError, match="learning_rate"):
        train_region_dpo(model, None, None, pairs.root, config(**{**kw, "learning_rate": 1e-2, "max_steps": 7}),
                         out_dir=tmp_path / "r")
    with pytest.raises(ValueError, match="already holds a training run"):
        train_region_dpo(model, None, None, pairs.root, config(**{**kw, "resume": "never"}), out_dir=tmp_path / "r")


def test_killed_training_resumes_bit_exactly(pairs, tmp_path):
    from rrdpo_core.models import load_diffueraser
    from rrdpo_core.models.testing import write_tiny_diffueraser

    model_dir = write_tiny_diffueraser(tmp_path / "model")
    cfg = dict(model_dir=str(model_dir), pairs_dir=str(pairs.root), out_dir=str(tmp_path / "run"), device="cpu",
               max_steps=5, learning_rate=1e-3, rank=4, lora_alpha=8.0, checkpoint_every=1, plots=False, num_frames=2)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "rrdpo_core.train", "--config", str(tmp_path / "cfg.json")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if len(list_checkpoints(tmp_path / "run")) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    killed_at = list_checkpoints(tmp_path / "run")[-1][0]
    assert 2 <= killed_at < 5
    # Resume in this process, and compare with an uninterrupted run.
    loaded = load_diffueraser(model_dir)
    resumed = train_region_dpo(loaded, None, None, pairs.root, TrainConfig.from_dict(cfg), out_dir=tmp_path / "run")
    assert resumed.resumed_from == killed_at
    straight = train_region_dpo(loaded, None, None, pairs.root, TrainConfig.from_dict(cfg),
                                out_dir=tmp_path / "straight")
    assert_same_lora(resumed.lora_path, straight.lora_path)
    assert [r["step"] for r in read_log(resumed.log_path)] == list(range(5))
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    assert len(list_checkpoints(tmp_path / "run")) == 2  # keep_checkpoints


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(model, pairs, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = model.predict_eps

    def flaky(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] > 4 else out  # 2 calls per step: steps 0, 1 are fine

    monkeypatch.setattr(model, "predict_eps", flaky)
    with pytest.raises(NonFiniteLossError, match=r"step 2.*step_00000002"):
        train_region_dpo(model, None, None, pairs.root, config(max_steps=4, checkpoint_every=1), out_dir=tmp_path)
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert read_log(tmp_path / "train_log.jsonl")[-1] == {"step": 2, "error": "non-finite model output"}
    assert list_adapters(model.unet) == []
    monkeypatch.setattr(model, "predict_eps", real)
    res = train_region_dpo(model, None, None, pairs.root, config(max_steps=4, checkpoint_every=1), out_dir=tmp_path)
    assert res.resumed_from == 2 and [r["step"] for r in read_log(res.log_path)] == [0, 1, 2, 3]


def test_trains_inside_inference_mode_like_comfyui(pairs, tmp_path):
    with torch.inference_mode():  # ComfyUI runs nodes like this; its loaders build models in it
        model = tiny_diffueraser(0).requires_grad_(False)
        text = torch.randn(1, 77, 32)
        base = model.predict_eps(torch.ones(4, 4, 8, 8), 500, text, torch.ones(4, 5, 8, 8), 4)
        res = train_region_dpo(model, None, text, pairs.root, config(max_steps=2), out_dir=tmp_path)
        assert torch.is_inference_mode_enabled()
        again = model.predict_eps(torch.ones(4, 4, 8, 8), 500, text, torch.ones(4, 5, 8, 8), 4)
    assert torch.equal(base, again) and list_adapters(model.unet) == []
    ups = [v for k, v in lora_tensors(res.lora_path).items() if k.endswith("lora_B.weight")]
    assert max(float(v.abs().max()) for v in ups) > 0


def test_saved_lora_drives_the_sampler(pairs, tmp_path):
    from rrdpo_core.models import load_diffueraser
    from rrdpo_core.models.testing import write_tiny_diffueraser
    from rrdpo_core.api import remove_objects
    from rrdpo_core.vae import write_tiny_vae

    model_dir = write_tiny_diffueraser(tmp_path / "model")
    res = train_region_dpo(load_diffueraser(model_dir), None, None, pairs.root,
                           config(max_steps=3, learning_rate=2e-2), out_dir=tmp_path / "run")
    frames = clip(5, frames=4)
    masks = torch.zeros(4, 64, 64)
    masks[:, 20:44, 16:40] = 1
    kw = dict(model_dir=model_dir, vae_path=write_tiny_vae(tmp_path / "vae", 0), seed=0, text_embeds=pairs.text_embeds(),
              pcm_lora=None, blend=False, steps=2, prior_frames=frames)
    base = remove_objects(frames, masks, **kw)
    tuned = remove_objects(frames, masks, lora_path=res.lora_path, lora_strength=1.0, **kw)
    zero = remove_objects(frames, masks, lora_path=res.lora_path, lora_strength=0.0, **kw)
    assert torch.equal(zero, base)
    assert (tuned - base).abs().max() > 1e-4
    info = load_region_lora(res.lora_path).info
    assert (info.rank, info.lora_alpha, info.steps, info.alpha, info.beta) == (4, 8.0, 3, (1.0, 1.5, 0.05), 1000.0)
    with pytest.raises(BaseModelMismatchError):
        apply_region_lora(tiny_diffueraser(1), res.lora_path)


def test_gradient_checkpointing_and_temporal_targets(model, pairs, tmp_path):
    plain = train_region_dpo(model, None, None, pairs.root, config(), out_dir=tmp_path / "a")
    ckpt = train_region_dpo(model, None, None, pairs.root, config(gradient_checkpointing=True), out_dir=tmp_path / "b")
    assert_lora_near(plain.lora_path, ckpt.lora_path)
    assert not getattr(model.unet, "is_gradient_checkpointing", False)
    temporal = train_region_dpo(model, None, None, pairs.root, config(max_steps=1, temporal=True),
                                out_dir=tmp_path / "c")
    modules = load_region_lora(temporal.lora_path).modules
    assert any(".motion_modules." in m for m in modules)
    assert len(modules) == len(lora_target_modules(model.unet, temporal=True))


def test_sequential_pair_passes_give_the_joint_gradient(model, pairs, tmp_path):
    joint = train_region_dpo(model, None, None, pairs.root, config(max_steps=2), out_dir=tmp_path / "joint")
    seq = train_region_dpo(model, None, None, pairs.root, config(max_steps=2, pair_passes="sequential"),
                           out_dir=tmp_path / "seq")
    for a, b in zip(read_log(joint.log_path), read_log(seq.log_path)):
        for key in ("loss", "dpo", "sft", "dgr", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
        for key in ("s", "win_gap", "lose_gap"):  # differences of near-equal errors: absolute tolerance
            assert a[key] == pytest.approx(b[key], abs=1e-7), key
    assert_lora_near(joint.lora_path, seq.lora_path)


def test_pcm_adapter_stays_active_and_frozen(pairs, tmp_path):
    from peft import LoraConfig

    model = tiny_diffueraser(0).requires_grad_(False)
    targets = lora_target_modules(model.unet)[::2]
    add_lora_adapter(model.unet, LoraConfig(r=4, lora_alpha=4, target_modules=targets, lora_dropout=0.0), "pcm",
                     trainable=False)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if ".lora_B.pcm." in name:
                p.normal_(0, 0.05)
    pcm_before = {n: p.detach().clone() for n, p in model.unet.named_parameters() if ".pcm." in n}
    res = train_region_dpo(model, None, None, pairs.root, config(max_steps=2), out_dir=tmp_path)
    first = read_log(res.log_path)[0]
    assert first["s"] == 0.0 and first["dpo"] == LN2  # the reference has PCM on, like the policy
    assert list_adapters(model.unet) == ["pcm"]
    after = {n: p for n, p in model.unet.named_parameters() if ".pcm." in n}
    assert all(torch.equal(after[n], v) and not after[n].requires_grad for n, v in pcm_before.items())


def test_cancel_saves_a_checkpoint_to_resume_from(model, pairs, tmp_path):
    seen = []
    with pytest.raises(Cancelled, match="step"):
        train_region_dpo(model, None, None, pairs.root, config(max_steps=4), out_dir=tmp_path,
                         progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) > 2)
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    res = train_region_dpo(model, None, None, pairs.root, config(max_steps=4), out_dir=tmp_path)
    assert res.resumed_from == 2 and res.steps == 4


def test_pairs_without_latents_are_encoded_with_the_vae(model, tmp_path):
    from rrdpo_core.vae import make_tiny_vae

    plain = build_pairs(tmp_path / "pairs", store_latents=False, count=2)
    assert not plain.has_latents
    with pytest.raises(ValueError, match="VAE"):
        train_region_dpo(model, None, None, plain.root, config(max_steps=1), out_dir=tmp_path / "a")
    res = train_region_dpo(model, make_tiny_vae(0), None, plain.root, config(max_steps=1), out_dir=tmp_path / "b")
    assert read_log(res.log_path)[0]["dpo"] == LN2


def test_config_is_checked_and_read_from_json(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"learnin_rate": 1e-4})
    with pytest.raises(ValueError, match="alpha"):
        TrainConfig(alpha=(1.0, -1.0, 0.0))
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="ppo")
    with pytest.raises(ValueError, match="timestep_range"):
        TrainConfig(timestep_range=(10, 1000))
    (tmp_path / "c.json").write_text(json.dumps({"pairs_dir": "pairs", "out_dir": "/abs/run", "beta": 500}))
    cfg = TrainConfig.from_json(tmp_path / "c.json")
    assert cfg.pairs_dir == str(tmp_path / "pairs") and cfg.out_dir == "/abs/run" and cfg.beta == 500.0
    cfg.to_json(tmp_path / "back.json")
    assert TrainConfig.from_json(tmp_path / "back.json") == cfg.replace(pairs_dir=str(tmp_path / "pairs"))


def test_batch_zones_are_the_latent_zones_of_the_masks():
    from rrdpo_core.masks import random_mask_sequence
    from rrdpo_core.train.batching import make_pair_batch
    from rrdpo_core.zones import decompose_zones

    holes = torch.stack([random_mask_sequence(3, 64, 80, seed=s) for s in (1, 2)])
    x = torch.zeros(2, 3, 4, 8, 10)
    for band in (0, 3, 8, 13, 20):
        batch = make_pair_batch(x, x, x, holes, torch.tensor([1, 2]), x, band)
        for got, want in zip(batch.zones, decompose_zones(holes, band, latent=True)):
            assert torch.equal(got[:, :, 0], want), band
    known = batch.known[:, :, 0]
    assert torch.equal(known, 1 - holes[..., ::8, ::8])  # nearest resize of the known mask
    with pytest.raises(ValueError, match="8x their latents"):
        make_pair_batch(x, x, x, holes[..., :32, :], torch.tensor([1, 2]), x, 8)
