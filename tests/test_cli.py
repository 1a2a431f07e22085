"""The command line (rrdpo_core.cli): demo and remove."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from rrdpo_core import cli
from rrdpo_core.synthetic import make_synthetic_clip
from rrdpo_core.video_io import read_video, write_video

from conftest import REPO_ROOT


def test_demo_writes_results_and_beats_the_baseline(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--frames", "8", "--size", "96x64", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "no model" in text and "Telea" in text and "hole" in text
    for name in ("input.mp4", "result.mp4", "truth.mp4", "comparison.png", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["result"]["zones"]["hole"]["psnr"] > metrics["telea_baseline"]["zones"]["hole"]["psnr"] + 5
    assert cv2.imread(str(out / "comparison.png")).shape[0] == 64


@pytest.fixture
def clip_on_disk(tmp_path):
    clip = make_synthetic_clip(6, 64, 100, seed=2)  # 100 is not a multiple of 8 on purpose
    write_video(tmp_path / "video", clip.frames)
    write_video(tmp_path / "mask", clip.masks[..., None].float().expand(-1, -1, -1, 3))
    return tmp_path, clip


def test_remove_without_model_uses_the_flow_prior(clip_on_disk, capsys):
    tmp, clip = clip_on_disk
    frames = read_video(tmp / "video").frames.numpy()
    assert cli.main(["remove", "--video", str(tmp / "video"), "--mask", str(tmp / "mask"),
                     "--out", str(tmp / "out"), "--mask-dilation", "2", "--quiet"]) == 0
    assert "no --model given" in capsys.readouterr().out
    result = read_video(tmp / "out").frames.numpy()
    assert result.shape == frames.shape
    grown = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((29, 29), np.uint8)) > 0 for m in clip.masks.numpy()])
    np.testing.assert_array_equal(result[~grown], frames[~grown])  # PNG folders are lossless
    truth = clip.truth.numpy()
    m = clip.masks.numpy()
    assert ((result - truth) ** 2)[m].mean() < 0.25 * ((frames - truth) ** 2)[m].mean()


def test_remove_with_an_empty_mask_copies_the_input(tmp_path, capsys):
    video = np.random.default_rng(0).random((3, 16, 24, 3)).astype(np.float32)
    write_video(tmp_path / "v", video)
    write_video(tmp_path / "m", np.zeros_like(video))
    assert cli.main(["remove", "--video", str(tmp_path / "v"), "--mask", str(tmp_path / "m"),
                     "--out", str(tmp_path / "o.mp4"), "--quiet"]) == 0
    assert "mask is empty" in capsys.readouterr().out
    assert read_video(tmp_path / "o.mp4").frames.shape == (3, 16, 24, 3)


def test_remove_reports_bad_input(clip_on_disk, capsys):
    tmp, _ = clip_on_disk
    code = cli.main(["remove", "--video", str(tmp / "video"), "--mask", str(tmp / "mask"),
                     "--out", str(tmp / "o"), "--max-frames", "6", "--quiet"])
    assert code == 0
    (tmp / "mask" / "00005.png").unlink()
    code = cli.main(["remove", "--video", str(tmp / "video"), "--mask", str(tmp / "mask"), "--out", str(tmp / "o2"),
                     "--quiet"])
    assert code == 2
    assert "5 mask frames for 6 video frames" in capsys.readouterr().err
    assert not (tmp / "o2").exists()
    assert cli.main(["remove", "--video", str(tmp / "missing"), "--mask", str(tmp / "mask"),
                     "--out", str(tmp / "o3"), "--quiet"]) == 2
    write_video(tmp / "full", np.ones((1, 64, 100, 3), np.float32))  # one all-hole mask for every frame
    assert cli.main(["remove", "--video", str(tmp / "video"), "--mask", str(tmp / "full" / "00000.png"),
                     "--out", str(tmp / "o4"), "--quiet"]) == 2
    assert "covers every pixel" in capsys.readouterr().err


def test_model_branch_passes_the_prior_and_returns_the_input_size(clip_on_disk, monkeypatch, capsys):
    tmp, _ = clip_on_disk
    calls = {}

    def remove_objects(frames, masks, *, model_dir, vae_path, lora_path=None, lora_strength=1.0,
                       prior_frames=None, steps=2, seed=None, device=None, progress=None, blend=True,
                       offload="none"):
        calls.update(shape=tuple(frames.shape), mask_shape=tuple(masks.shape), prior=tuple(prior_frames.shape),
                     model_dir=model_dir, lora=lora_path, strength=lora_strength, steps=steps, seed=seed,
                     blend=blend, offload=offload)
        return prior_frames[:, :, :96]  # stands in for the model; a smaller output is resized back

    import rrdpo_core.api

    monkeypatch.setattr(rrdpo_core.api, "remove_objects", remove_objects)
    code = cli.main(["remove", "--video", str(tmp / "video"), "--mask", str(tmp / "mask"), "--out", str(tmp / "o"),
                     "--model", "weights", "--vae", "vae.safetensors", "--lora", "l.safetensors",
                     "--lora-strength", "0.5", "--steps", "4", "--seed", "3", "--offload", "blocks", "--quiet"])
    assert code == 0
    assert calls["offload"] == "blocks"
    assert "multiple of 8" in capsys.readouterr().out
    assert calls["shape"] == (6, 64, 100, 3) and calls["mask_shape"] == (6, 64, 100)
    assert calls["prior"] == (6, 64, 100, 3)
    assert (calls["model_dir"], calls["lora"], calls["strength"], calls["steps"], calls["seed"], calls["blend"]) == (
        "weights", "l.safetensors", 0.5, 4, 3, False)
    assert read_video(tmp / "o").frames.shape == (6, 64, 100, 3)


def test_ctrl_c_stops_cleanly_without_output(clip_on_disk, monkeypatch, capsys):
    tmp, _ = clip_on_disk
    import rrdpo_core.prior as prior_pkg

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prior_pkg, "flow_propagation_prior", interrupted)
    code = cli.main(["remove", "--video", str(tmp / "video"), "--mask", str(tmp / "mask"),
                     "--out", str(tmp / "o.mp4"), "--quiet"])
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp / "o.mp4").exists()


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "rrdpo_core", "remove", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--model" in proc.stdout and "--lora-strength" in proc.stdout


def test_bad_size_argument():
    with pytest.raises(SystemExit):
        cli.main(["demo", "--out", "x", "--size", "big"])


def test_remove_with_propainter_prior(clip_on_disk, monkeypatch, capsys):
    tmp, clip = clip_on_disk
    args = ["remove", "--video", str(tmp / "video"), "--mask", str(tmp / "mask"), "--out", str(tmp / "out_pp"),
            "--mask-dilation", "2", "--quiet", "--prior", "propainter"]
    assert cli.main(args) == 2
    assert "--propainter-dir" in capsys.readouterr().err
    # missing weights: a clear error naming the files
    assert cli.main(args + ["--propainter-dir", str(tmp / "nowhere")]) != 0
    assert "ProPainter.pth" in capsys.readouterr().err

    import rrdpo_core.prior.propainter as pp
    from rrdpo_core.prior import PriorResult

    calls = {}

    def fake_prior(frames, masks, models, progress=None, **kw):
        calls["frames"] = frames.shape
        return PriorResult(torch.as_tensor(clip.truth).float(), torch.ones(clip.masks.shape), {"seen_fraction": 1.0})

    monkeypatch.setattr(pp, "load_propainter", lambda folder, device=None: "models")
    monkeypatch.setattr(pp, "propainter_prior", fake_prior)
    (tmp / "weights").mkdir()
    assert cli.main(args + ["--propainter-dir", str(tmp / "weights")]) == 0
    assert "propainter prior" in capsys.readouterr().out
    assert calls["frames"][0] == 6
    result = read_video(tmp / "out_pp").frames.numpy()
    m = clip.masks.numpy().astype(bool)
    # the truth came back through the prior, so the hole is (nearly) the truth
    assert np.abs(result[m] - clip.truth.numpy()[m]).mean() < 0.02
