"""GT-pair preference datasets (rrdpo_core.pairs): losers, compositing, storage, resuming."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import rrdpo_core

from _helpers import drifting_clip
from rrdpo_core.errors import Cancelled, RrdpoInputError
from rrdpo_core.pairs import (
    LOSER_KINDS,
    MANIFEST_FILE,
    SAMPLES_DIR,
    LoserGenerator,
    PairDataset,
    build_preference_pairs,
    resolve_sources,
)

REPO = Path(rrdpo_core.__file__).resolve().parents[1]  # the checkout that holds the package


clip = partial(drifting_clip, frames=8)  # (T, H, W, 3) texture drifting right, tests/_helpers.py


def cheap_loser(frames, hole, seeds):
    """A deterministic stand-in generator: the frame darkened plus seeded noise."""
    g = torch.Generator().manual_seed(int(seeds[0]) if len(seeds) else 7)
    return (frames * 0.5 + 0.2 * torch.rand(frames.shape, generator=g)).clamp(0, 1)


def cheap_generator() -> LoserGenerator:
    return LoserGenerator(None, None, torch.zeros(1, 77, 32), overrides={k: cheap_loser for k in LOSER_KINDS})


def tensors_of(ds: PairDataset) -> list[dict[str, torch.Tensor]]:
    return [ds.load(i) for i in range(len(ds))]


def same_datasets(a: PairDataset, b: PairDataset) -> None:
    assert [e.to_dict() for e in a.entries] == [e.to_dict() for e in b.entries]
    for ta, tb in zip(tensors_of(a), tensors_of(b)):
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def tiny():
    from rrdpo_core.models.testing import tiny_diffueraser
    from rrdpo_core.vae import make_tiny_vae

    model = tiny_diffueraser(0)
    text = torch.randn(1, 77, model.cross_attention_dim, generator=torch.Generator().manual_seed(0))
    return model, make_tiny_vae(0), text


def test_builds_every_loser_kind_with_the_model(tmp_path, tiny):
    model, vae, text = tiny
    sources = [clip(1), clip(2)]
    progress = []
    ds = build_preference_pairs(model, vae, text, sources, tmp_path, count=3, num_frames=4, seed=5,
                                progress=lambda d, t: progress.append((d, t)))
    assert progress[0] == (0, 300) and progress[-1] == (300, 300)  # 100 units per pair
    values = [d for d, _ in progress]
    assert values == sorted(values) and {100, 200} <= set(values)
    # the bar moves while a pair is made (prior, sampler windows, VAE batches), not only between pairs
    assert len({d for d in values if 0 < d < 100}) >= 5
    assert len(ds) == 3 and ds.kinds() == {"hallucination": 1, "blur": 1, "flicker": 1}
    assert ds.has_latents and torch.equal(ds.text_embeds(), text)
    lines = (tmp_path / MANIFEST_FILE).read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2]
    yy, xx = np.mgrid[:64, :64]
    for i, entry in enumerate(ds.entries):
        d = ds[i]
        assert d["winner"].shape == d["loser"].shape == (4, 64, 64, 3) and d["winner"].dtype == torch.uint8
        assert d["mask"].shape == (4, 64, 64) and set(d["mask"].unique().tolist()) <= {0, 1}
        for key in ("winner_latents", "loser_latents", "masked_latents"):
            assert d[key].shape == (4, 4, 8, 8) and torch.isfinite(d[key]).all()
        assert not torch.equal(d["winner_latents"], d["masked_latents"])
        # The winner is the source clip itself.
        src = sources[entry.source_index][entry.start : entry.start + 4]
        assert torch.equal(d["winner"], (src * 255).round().to(torch.uint8))
        # The loser is the model's fill inside the hole and the truth away from it (the feather
        # of the composite reaches 10 px outward).
        hole = d["mask"].bool()
        diff = (d["winner"].int() - d["loser"].int()).abs().amax(-1)
        assert diff[hole].float().mean() > 1.0, entry.kind
        for t in range(4):
            ys, xs = np.nonzero(hole[t].numpy())
            dist = np.sqrt((yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2).min(-1) if len(ys) else None
            if dist is not None:
                assert diff[t][torch.from_numpy(dist > 12)].max() == 0, entry.kind
        assert entry.mask_seed >= 0 and entry.generator["kind"] == entry.kind
        assert len(entry.sampler_seeds) == {"hallucination": 1, "blur": 0, "flicker": 2}[entry.kind]
    # Pairs differ: different clips, masks and seeds.
    assert not torch.equal(ds[0]["mask"], ds[1]["mask"])


def test_flicker_loser_jumps_at_the_seam(tiny):
    model, vae, text = tiny
    frames = clip(3, frames=6)
    hole = torch.zeros(6, 64, 64)
    hole[:, 16:48, 16:48] = 1
    gen = LoserGenerator(model, vae, text)
    out = gen("flicker", frames, hole, (11, 12))
    same = gen("flicker", frames, hole, (11, 11))  # same seed in both halves: no seed jump
    assert out.shape == frames.shape
    assert not torch.equal(out[3:], same[3:]) and torch.equal(out[:3], same[:3])


def test_rerun_adds_missing_pairs_and_matches_a_fresh_build(tmp_path):
    gen = cheap_generator()
    a, b = tmp_path / "a", tmp_path / "b"
    build_preference_pairs(None, None, torch.zeros(1, 77, 32), [clip(1), clip(2)], a, count=2, num_frames=4,
                           generator=gen, store_latents=False)
    first = {p.name: p.stat().st_mtime_ns for p in (a / SAMPLES_DIR).iterdir()}
    ds = build_preference_pairs(None, None, torch.zeros(1, 77, 32), [clip(1), clip(2)], a, count=4, num_frames=4,
                                generator=gen, store_latents=False)
    assert len(ds) == 4
    assert {p.name: p.stat().st_mtime_ns for p in (a / SAMPLES_DIR).iterdir() if p.name in first} == first
    fresh = build_preference_pairs(None, None, torch.zeros(1, 77, 32), [clip(1), clip(2)], b, count=4,
                                   num_frames=4, generator=gen, store_latents=False)
    same_datasets(ds, fresh)
    with pytest.raises(ValueError, match="other settings.*num_frames"):
        build_preference_pairs(None, None, torch.zeros(1, 77, 32), [clip(1), clip(2)], a, count=4, num_frames=5,
                               generator=gen, store_latents=False)


_KILL_SCRIPT = r"""
import sys, time, torch
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from test_pairs import clip, cheap_generator
from rrdpo_core.pairs import build_preference_pairs
from rrdpo_core.vae import make_tiny_vae
gen = cheap_generator()
slow = gen.overrides["hallucination"]
def sleepy(frames, hole, seeds):
    time.sleep(0.4)
    return slow(frames, hole, seeds)
sleepy.__name__ = slow.__name__  # the manifest records the generator's name
gen.overrides = {{k: sleepy for k in gen.overrides}}
build_preference_pairs(None, make_tiny_vae(0), torch.zeros(1, 77, 32), [clip(1), clip(2)], {out!r}, count=6,
                       num_frames=4, generator=gen)
"""


def test_killed_build_resumes_without_loss_or_duplicates(tmp_path):
    from rrdpo_core.vae import make_tiny_vae

    out = tmp_path / "killed"
    script = _KILL_SCRIPT.format(repo=str(REPO), tests=str(Path(__file__).parent), out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            done = [p for p in (out / SAMPLES_DIR).glob("*.safetensors") if not p.name.startswith(".")]
            if len(done) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    kept = len([p for p in (out / SAMPLES_DIR).glob("[0-9]*.safetensors")])
    assert 2 <= kept < 6
    # What a kill can leave behind: a torn manifest line and a half-written temporary file.
    with open(out / MANIFEST_FILE, "a") as f:
        f.write('{"index": 5, "fi')
    (out / SAMPLES_DIR / ".000005.safetensors.tmp99999").write_bytes(b"partial")
    gen, vae, text = cheap_generator(), make_tiny_vae(0), torch.zeros(1, 77, 32)
    ds = build_preference_pairs(None, vae, text, [clip(1), clip(2)], out, count=6, num_frames=4, generator=gen)
    assert [e.index for e in ds.entries] == list(range(6))
    lines = [json.loads(line) for line in (out / MANIFEST_FILE).read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(6))  # each pair exactly once
    assert not [p for p in (out / SAMPLES_DIR).iterdir() if p.name.startswith(".")]
    assert not (out / ".lock").exists()
    fresh = build_preference_pairs(None, vae, text, [clip(1), clip(2)], tmp_path / "fresh", count=6, num_frames=4,
                                   generator=gen)
    same_datasets(ds, fresh)


def test_sources_from_disk_are_cropped_and_resized(tmp_path):
    from rrdpo_core.video_io import write_video

    root = tmp_path / "sources"
    frames_dir = root / "clip_a"
    frames_dir.mkdir(parents=True)
    video = (clip(4, frames=6, size=96)[:, :80] * 255).round().to(torch.uint8).numpy()  # 80x96 frames
    for t, frame in enumerate(video):
        cv2.imwrite(str(frames_dir / f"{t:03d}.png"), frame[..., ::-1])
    write_video(root / "clip_b.mp4", video, fps=10)
    (root / "notes.txt").write_text("not a video")
    clips = resolve_sources(root)
    assert sorted(Path(c.name).name for c in clips) == ["clip_a", "clip_b.mp4"]
    assert clips[0].load().shape == (6, 80, 96, 3)
    ds = build_preference_pairs(None, None, torch.zeros(1, 77, 32), root, tmp_path / "pairs", count=2, num_frames=3,
                                size=(64, 64), generator=cheap_generator(), store_latents=False)
    assert ds[0]["winner"].shape == (3, 64, 64, 3)
    assert {Path(e.source).name for e in ds.entries} <= {"clip_a", "clip_b.mp4"}


def test_cancel_keeps_finished_pairs(tmp_path):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        build_preference_pairs(None, None, torch.zeros(1, 77, 32), [clip(1)], tmp_path, count=5, num_frames=4,
                               generator=cheap_generator(), store_latents=False, cancel=cancel)
    ds = PairDataset(tmp_path)
    assert 1 <= len(ds) < 5 and not (tmp_path / ".lock").exists()


def test_bad_requests_are_refused(tmp_path):
    text = torch.zeros(1, 77, 32)
    kw = dict(generator=cheap_generator(), store_latents=False)
    with pytest.raises(ValueError, match="kinds"):
        build_preference_pairs(None, None, text, [clip(1)], tmp_path / "a", count=1, kinds=["sharp"], **kw)
    with pytest.raises(ValueError, match="count"):
        build_preference_pairs(None, None, text, [clip(1)], tmp_path / "b", count=0, **kw)
    with pytest.raises(RrdpoInputError, match="shorter than num_frames"):
        build_preference_pairs(None, None, text, [clip(1, frames=3)], tmp_path / "c", count=1, num_frames=4, **kw)
    with pytest.raises(ValueError, match="multiples of 8"):
        build_preference_pairs(None, None, text, [clip(1)], tmp_path / "d", count=1, size=(60, 64), **kw)
    with pytest.raises(ValueError, match="vae"):
        build_preference_pairs(None, None, text, [clip(1)], tmp_path / "e", count=1)
    with pytest.raises(FileNotFoundError):
        resolve_sources(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not a preference-pair folder"):
        PairDataset(tmp_path)


def test_a_build_that_fails_on_its_inputs_leaves_no_settings_behind(tmp_path):
    from rrdpo_core.pairs import DATASET_FILE, TEXT_FILE

    gen = cheap_generator()
    root = tmp_path / "p"
    with pytest.raises(ValueError, match="shorter than num_frames"):
        build_preference_pairs(None, None, torch.zeros(1, 77, 32), [clip(1)], root, count=2, num_frames=12,
                               generator=gen, store_latents=False)
    assert not (root / DATASET_FILE).exists() and not (root / TEXT_FILE).exists()
    # the corrected re-run into the same name is accepted and records its own settings
    ds = build_preference_pairs(None, None, torch.zeros(1, 77, 32), [clip(1)], root, count=2, num_frames=4,
                                generator=gen, store_latents=False)
    assert len(ds) == 2 and ds.settings.num_frames == 4
    # a folder holding settings but no pair (left by an older version) takes new settings too
    stale = tmp_path / "stale"
    build_preference_pairs(None, None, torch.zeros(1, 77, 32), [clip(1)], stale, count=1, num_frames=4,
                           generator=gen, store_latents=False)
    for p in (stale / SAMPLES_DIR).iterdir():
        p.unlink()
    ds = build_preference_pairs(None, None, torch.zeros(1, 77, 32), [clip(1)], stale, count=1, num_frames=5,
                                generator=gen, store_latents=False)
    assert ds.settings.num_frames == 5 and len(ds) == 1


def test_pair_preview_shows_masked_input_winner_and_loser_of_each_kind(tmp_path):
    from rrdpo_core.pair_preview import pair_preview

    ds = build_preference_pairs(None, None, torch.zeros(1, 77, 32), [clip(1), clip(2)], tmp_path, count=7,
                                num_frames=4, generator=cheap_generator(), store_latents=False)
    img = pair_preview(ds, per_kind=2, height=64)
    label, gap = 18, 4
    rows = 2 + 2 + 2  # two of each of the three kinds (7 pairs: 3 hallucination, 2 blur, 2 flicker)
    assert img.shape == (1, rows * (label + 64) + (rows - 1) * gap, 3 * 64 + 2 * gap, 3)
    assert 0 <= img.min() and img.max() <= 1
    shown = [e for e in ds.entries if e.kind == "hallucination"][:2] + [e for e in ds.entries if e.kind == "blur"][:2]
    for row, entry in enumerate(shown[:3]):
        top = row * (label + 64 + gap) + label
        masked, winner, loser = (img[0, top:top + 64, c * (64 + gap):c * (64 + gap) + 64] for c in range(3))
        t = ds.load(ds.entries.index(entry), ["winner", "mask"])
        hole = t["mask"][t["mask"].shape[0] // 2].bool()  # 64x64 clips: tiles are at full size
        assert torch.allclose(winner, t["winner"][t["winner"].shape[0] // 2].float() / 255, atol=1 / 255)
        assert masked[hole].max() == 0, "the hole is black in the masked input, as the model sees it"
        assert torch.allclose(masked[~hole], winner[~hole])
        assert (loser[hole] - winner[hole]).abs().mean() > 0.02, "the loser differs from the truth in the hole"
