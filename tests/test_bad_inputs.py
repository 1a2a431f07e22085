"""Bad inputs and damaged files (issue 15): one case per input, across the CLI, the API and the nodes.

Each case is either an *error* case, which must raise the given exception type with a message
that names the problem (and the fix, where there is one), or a *documented* case, whose
behaviour is written down (README "Bad inputs") and checked here. Run this file as a script to
print the count of cases by kind.

Heavy objects (the tiny DiffuEraser, a pair folder, a two-checkpoint training run) are built
once per module and only when a case needs them; a case that damages a file copies it first.
"""
from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

if __name__ == "__main__":  # run as a script to count the cases: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _helpers import drifting_clip  # noqa: E402
from rrdpo_core.errors import RrdpoInputError  # noqa: E402

T, H, W = 6, 32, 32


# --------------------------------------------------------------------------------------------
# The case registry


@dataclass
class Case:
    id: str
    run: Callable[["Env"], Any]
    raises: type[BaseException] | None  # None: a documented behaviour, checked inside run()
    says: tuple[str, ...] = ()  # regexes that must all occur in the message (case-insensitive)

    @property
    def kind(self) -> str:
        return "documented" if self.raises is None else "error"


CASES: list[Case] = []


def error(case_id: str, raises: type[BaseException], *says: str):
    def register(fn):
        CASES.append(Case(case_id, fn, raises, says))
        return fn
    return register


def documented(case_id: str):
    def register(fn):
        CASES.append(Case(case_id, fn, None))
        return fn
    return register


class CliFailed(Exception):
    """The command line returned a non-zero status; the message is its stderr."""

    def __init__(self, rc: int, stderr: str):
        super().__init__(stderr)
        self.rc = rc


# --------------------------------------------------------------------------------------------
# Shared, lazily built material


def smooth_frames(t: int = T, h: int = H, w: int = W, seed: int = 0) -> torch.Tensor:
    return drifting_clip(seed, t, h, w)


def box_masks(t: int = T, h: int = H, w: int = W) -> torch.Tensor:
    m = torch.zeros(t, h, w)
    for i in range(t):
        m[i, h // 4 : h // 2, w // 4 + i : w // 2 + i] = 1
    return m


def blurry_loser(frames, hole, seeds):
    x = frames.permute(0, 3, 1, 2)
    return (F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False) * 0.8).permute(0, 2, 3, 1)


def train_config(**kw):
    from rrdpo_core.train import TrainConfig

    base = dict(max_steps=2, learning_rate=1e-3, rank=4, lora_alpha=8.0, checkpoint_every=1, plots=False,
                device="cpu", num_frames=2)
    base.update(kw)
    return TrainConfig(**base)


class Shared:
    def __init__(self, root: Path):
        self.root = root

    @cached_property
    def model(self):
        from rrdpo_core.models.testing import tiny_diffueraser

        return tiny_diffueraser(0).requires_grad_(False)

    @cached_property
    def other_model(self):
        from rrdpo_core.models.testing import tiny_diffueraser

        return tiny_diffueraser(1).requires_grad_(False)

    @cached_property
    def pairs(self) -> Path:
        from rrdpo_core.pairs import LOSER_KINDS, LoserGenerator, build_preference_pairs
        from rrdpo_core.vae import make_tiny_vae

        gen = LoserGenerator(None, None, torch.zeros(1, 77, 32), overrides={k: blurry_loser for k in LOSER_KINDS})
        text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
        clips = [smooth_frames(6, 64, 64, seed=s) for s in (1, 2)]
        ds = build_preference_pairs(None, make_tiny_vae(0), text, clips, self.root / "pairs", count=2, num_frames=4,
                                    generator=gen, store_latents=True, composite="hard")
        return ds.root

    @cached_property
    def run_dir(self) -> Path:
        """A finished 2-step run with checkpoints at steps 1 and 2."""
        from rrdpo_core.train import train_region_dpo

        out = self.root / "run"
        train_region_dpo(self.model, None, None, self.pairs, train_config(), out_dir=out)
        return out

    @cached_property
    def lora(self) -> Path:
        return self.run_dir / "region_dpo_lora.safetensors"  # TrainConfig's default lora_name

    @cached_property
    def model_dir(self) -> Path:
        from rrdpo_core.models.testing import write_tiny_diffueraser

        return write_tiny_diffueraser(self.root / "tiny_model", seed=0)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return Shared(tmp_path_factory.mktemp("bad_inputs"))


@dataclass
class Env:
    tmp: Path
    shared: Shared
    capsys: Any
    comfy: Any

    def copy(self, src: Path, name: str | None = None) -> Path:
        dst = self.tmp / (name or src.name)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
        return dst

    def cli(self, *argv: str) -> str:
        """Run the command line; returns stdout, or raises CliFailed with stderr."""
        from rrdpo_core.cli import main

        self.capsys.readouterr()
        rc = main([*argv, "--quiet"] if argv and argv[0] in ("demo", "remove") else list(argv))
        out = self.capsys.readouterr()
        if rc != 0:
            raise CliFailed(rc, out.err)
        return out.out

    def frames_dir(self, frames: torch.Tensor | None = None, name: str = "frames") -> Path:
        from rrdpo_core.video_io import write_video

        return write_video(self.tmp / name, smooth_frames() if frames is None else frames)

    def masks_dir(self, masks: np.ndarray, name: str = "masks") -> Path:
        folder = self.tmp / name
        folder.mkdir()
        for i, m in enumerate(masks):
            cv2.imwrite(str(folder / f"{i:05d}.png"), m)
        return folder


@pytest.fixture
def env(tmp_path, shared, capsys, comfy_stubs):
    return Env(tmp_path, shared, capsys, comfy_stubs)


def node(node_id: str):
    from pack import node as make

    return make(node_id)


def handle_for(model):
    """A DIFFUERASER wire value around ``model`` (what Load DiffuEraser returns)."""
    mod = sys.modules[type(node("RRDPOApplyRegionDPOLoRA")).__module__]
    memory = importlib.import_module(mod.__name__.rsplit(".", 1)[0] + "._memory")
    return mod.DiffuEraserHandle(model=model, name="tiny", compute_dtype=torch.float32,
                                 patcher=memory.make_patcher(model))


def rewrite_safetensors(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    save_file(tensors, str(path), metadata=meta)
    return path


def poison_first(tensors: dict[str, torch.Tensor], value: float = float("nan")) -> None:
    key = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def pickle_payload(path: Path) -> Path:
    """A pickle that weights_only loading refuses (a class instance, not tensors and numbers)."""
    torch.save({"state": Path("/etc")}, path)
    return path


# ============================================================================================
# Command line


@documented("cli-remove-png-masks-holding-0-1-are-read-as-labels")
def _(env: Env):
    masks = (box_masks().numpy() > 0).astype(np.uint8)  # 0/1, as DAVIS-style label PNGs
    out = env.cli("remove", "--video", str(env.frames_dir()), "--mask", str(env.masks_dir(masks)),
                  "--out", str(env.tmp / "out"), "--mask-dilation", "1")
    assert re.search(r"0/1 \(maximum 1\), read as 0/1", out), out
    assert "mask is empty" not in out
    from rrdpo_core.video_io import read_video

    before, after = read_video(env.tmp / "frames").frames, read_video(env.tmp / "out").frames
    assert not torch.equal(before, after), "the hole was filled, not copied"


@documented("cli-remove-16-bit-png-masks-holding-0-1-are-read-as-labels")
def _(env: Env):
    masks = (box_masks().numpy() > 0).astype(np.uint16)
    out = env.cli("remove", "--video", str(env.frames_dir()), "--mask", str(env.masks_dir(masks)),
                  "--out", str(env.tmp / "out"), "--mask-dilation", "1")
    assert "read as 0/1" in out and "mask is empty" not in out, out


@documented("cli-remove-faint-mask-below-threshold-is-empty-with-a-note")
def _(env: Env):
    masks = (box_masks().numpy() * 40).astype(np.uint8)  # labels 0/40: never above 127
    out = env.cli("remove", "--video", str(env.frames_dir()), "--mask", str(env.masks_dir(masks)),
                  "--out", str(env.tmp / "out"))
    assert re.search(r"brightest mask pixel is 40.*read as an empty mask.*0/255", out), out
    assert "mask is empty" in out


@documented("cli-remove-all-zero-mask-writes-the-input-unchanged")
def _(env: Env):
    out = env.cli("remove", "--video", str(env.frames_dir()), "--mask",
                  str(env.masks_dir(np.zeros((T, H, W), np.uint8))), "--out", str(env.tmp / "out"))
    assert "the mask is empty: nothing to remove" in out
    from rrdpo_core.video_io import read_video

    assert torch.equal(read_video(env.tmp / "frames").frames, read_video(env.tmp / "out").frames)


@documented("cli-remove-mask-of-another-size-is-resized-with-a-note")
def _(env: Env):
    masks = (F.interpolate(box_masks()[:, None], size=(2 * H, 2 * W))[:, 0].numpy() * 255).astype(np.uint8)
    out = env.cli("remove", "--video", str(env.frames_dir()), "--mask", str(env.masks_dir(masks)),
                  "--out", str(env.tmp / "out"), "--mask-dilation", "1")
    assert f"masks are {2 * W}x{2 * H}, frames {W}x{H}: masks resized" in out


@error("cli-remove-mask-all-ones-without-model", CliFailed, r"covers every pixel", r"--mask-dilation|--model")
def _(env: Env):
    env.cli("remove", "--video", str(env.frames_dir()), "--mask",
            str(env.masks_dir(np.full((T, H, W), 255, np.uint8))), "--out", str(env.tmp / "out"))


@error("cli-remove-fewer-masks-than-frames", CliFailed, r"3 mask frames for 6 video frames", r"--max-frames")
def _(env: Env):
    masks = (box_masks().numpy()[:3] * 255).astype(np.uint8)
    env.cli("remove", "--video", str(env.frames_dir()), "--mask", str(env.masks_dir(masks)),
            "--out", str(env.tmp / "out"))


@error("cli-demo-frames-1000000-refused-before-any-work", CliFailed, r"--frames 1000000", r"needs about [\d.]+ TiB",
       r"available", r"fewer --frames")
def _(env: Env):
    try:
        env.cli("demo", "--out", str(env.tmp / "demo"), "--frames", "1000000")
    finally:
        assert not any((env.tmp / "demo").glob("*")), "nothing was written"


@error("cli-demo-out-below-a-file-fails-before-work", CliFailed, r"--out .*blocker.*cannot write",
       r"nothing was computed")
def _(env: Env):
    (env.tmp / "blocker").write_text("a file, not a folder")
    env.cli("demo", "--out", str(env.tmp / "blocker" / "demo"), "--frames", "4")


@error("cli-remove-out-unwritable-fails-before-reading-the-video", CliFailed, r"--out .*cannot write",
       r"nothing was computed")
def _(env: Env):
    import rrdpo_core.video_io as vio

    (env.tmp / "blocker").write_text("a file")
    frames, masks = env.frames_dir(), env.masks_dir((box_masks().numpy() * 255).astype(np.uint8))
    real = vio.read_video
    calls = []
    vio.read_video = lambda *a, **k: calls.append(a) or real(*a, **k)
    try:
        env.cli("remove", "--video", str(frames), "--mask", str(masks), "--out", str(env.tmp / "blocker" / "out.mp4"))
    finally:
        vio.read_video = real
        assert not calls, "the video was not even read"


@error("cli-remove-out-mp4-name-is-an-existing-folder", CliFailed, r"is a folder", r"another name")
def _(env: Env):
    (env.tmp / "result.mp4").mkdir()
    env.cli("remove", "--video", str(env.frames_dir()), "--mask",
            str(env.masks_dir((box_masks().numpy() * 255).astype(np.uint8))), "--out", str(env.tmp / "result.mp4"))


@error("cli-remove-text-file-named-mp4-gives-short-ffmpeg-error", CliFailed, r"notes\.mp4",
       r"could not decode.*Invalid data", r"complete video")
def _(env: Env):
    (env.tmp / "notes.mp4").write_text("this is not a video\n" * 20)
    try:
        env.cli("remove", "--video", str(env.tmp / "notes.mp4"), "--mask", str(env.tmp / "notes.mp4"),
                "--out", str(env.tmp / "out.mp4"))
    except CliFailed as err:
        assert "ffmpeg version" not in str(err) and "configuration:" not in str(err), "no ffmpeg banner"
        assert len(str(err)) < 700, str(err)
        raise


@error("cli-remove-missing-video-file", CliFailed, r"--video .*nowhere\.mp4.*no such file")
def _(env: Env):
    env.cli("remove", "--video", str(env.tmp / "nowhere.mp4"), "--mask", str(env.tmp / "m.png"),
            "--out", str(env.tmp / "out.mp4"))


@error("cli-remove-frames-of-different-sizes", CliFailed, r"different sizes", r"must match")
def _(env: Env):
    folder = env.frames_dir()
    cv2.imwrite(str(folder / "00002.png"), np.zeros((H + 8, W, 3), np.uint8))
    env.cli("remove", "--video", str(folder), "--mask", str(env.masks_dir((box_masks().numpy() * 255).astype(np.uint8))),
            "--out", str(env.tmp / "out"))


@error("cli-remove-unreadable-png-in-frame-folder", CliFailed, r"00003\.png: not a readable image")
def _(env: Env):
    folder = env.frames_dir()
    (folder / "00003.png").write_bytes(b"\x89PNG garbage")
    env.cli("remove", "--video", str(folder), "--mask", str(env.masks_dir((box_masks().numpy() * 255).astype(np.uint8))),
            "--out", str(env.tmp / "out"))


@error("cli-remove-model-without-vae", CliFailed, r"--model needs --vae")
def _(env: Env):
    env.cli("remove", "--video", str(env.frames_dir()), "--mask",
            str(env.masks_dir((box_masks().numpy() * 255).astype(np.uint8))), "--out", str(env.tmp / "out"),
            "--model", str(env.tmp / "model"))


@error("cli-remove-zero-fps", CliFailed, r"--fps must be a positive number, got 0")
def _(env: Env):
    env.cli("remove", "--video", str(env.frames_dir()), "--mask", str(env.tmp), "--out", str(env.tmp / "o"),
            "--fps", "0")


@error("cli-remove-negative-mask-dilation", CliFailed, r"--mask-dilation must be >= 0, got -2")
def _(env: Env):
    env.cli("remove", "--video", str(env.frames_dir()), "--mask", str(env.tmp), "--out", str(env.tmp / "o"),
            "--mask-dilation", "-2")


@error("cli-remove-propainter-prior-without-weights-folder", CliFailed, r"--propainter-dir", r"ProPainter\.pth")
def _(env: Env):
    env.cli("remove", "--video", str(env.frames_dir()), "--mask",
            str(env.masks_dir((box_masks().numpy() * 255).astype(np.uint8))), "--out", str(env.tmp / "out"),
            "--prior", "propainter")


@error("train-cli-pairs-folder-without-samples", SystemExit, r"holds no preference pairs", r"build")
def _(env: Env):
    from rrdpo_core.train.__main__ import main

    pairs = env.copy(env.shared.pairs, "pairs")
    shutil.rmtree(pairs / "samples")
    (pairs / "samples").mkdir()
    (pairs / "manifest.jsonl").unlink(missing_ok=True)
    cfg = env.tmp / "cfg.json"
    cfg.write_text(json.dumps({"model_dir": str(env.tmp / "model"), "pairs_dir": str(pairs),
                               "out_dir": str(env.tmp / "run")}))
    try:
        main(["--config", str(cfg)])
    except SystemExit as err:
        assert "vae_path" not in str(err), "an empty folder must not ask for a VAE"
        raise


# ============================================================================================
# Library: frames and masks (inputs.check_inputs / api.remove_objects, video_io, masks, prior)


@documented("api-uint8-mask-holding-0-1-is-read-as-0-1")
def _(env: Env):
    from rrdpo_core.inputs import check_inputs

    mask = (box_masks() > 0).to(torch.uint8)
    holes = check_inputs(smooth_frames(), mask, multiple=None).holes
    assert torch.equal(holes, mask.bool()), "1 = hole, as remove_objects' docstring says"
    # 0/255 uint8 masks keep reading as before
    assert torch.equal(check_inputs(smooth_frames(), mask * 255, multiple=None).holes, mask.bool())


@error("api-remove-objects-uint8-0-1-mask-is-not-empty", FileNotFoundError, r"weights folder not found",
       r"brushnet/ and unet_main/")
def _(env: Env):
    # An empty mask returns the input before any weights are looked at; a 0/1 mask must not.
    from rrdpo_core.api import remove_objects

    remove_objects(smooth_frames(), (box_masks() > 0).to(torch.uint8), model_dir=env.tmp / "no_model",
                   vae_path=env.tmp / "no_vae")


@error("api-remove-objects-fewer-masks-than-frames", RrdpoInputError, r"got 3 masks for 6 frames",
       r"one mask per frame")
def _(env: Env):
    from rrdpo_core.api import remove_objects

    remove_objects(smooth_frames(), box_masks()[:3], model_dir=env.tmp, vae_path=env.tmp)


@error("api-remove-objects-mask-of-another-size", RrdpoInputError, r"masks are 16x16 .* frames are 32x32",
       r"resize the masks")
def _(env: Env):
    from rrdpo_core.api import remove_objects

    remove_objects(smooth_frames(), box_masks()[:, :16, :16], model_dir=env.tmp, vae_path=env.tmp)


@error("api-remove-objects-nan-frames", RrdpoInputError, r"frame\(s\) \[2\] contain NaN", r"fix or drop")
def _(env: Env):
    from rrdpo_core.api import remove_objects

    frames = smooth_frames()
    frames[2, 0, 0, 0] = float("nan")
    remove_objects(frames, box_masks(), model_dir=env.tmp, vae_path=env.tmp)


@error("api-remove-objects-missing-model-files", FileNotFoundError, r"has no unet_main/ folder", r"brushnet/")
def _(env: Env):
    from rrdpo_core.api import remove_objects

    model = env.copy(env.shared.model_dir, "model")
    shutil.rmtree(model / "unet_main")
    remove_objects(smooth_frames(), box_masks(), model_dir=model, vae_path=env.tmp / "vae")


@error("api-frames-channels-first", RrdpoInputError, r"\(T, H, W, 3\)", r"channels go last")
def _(env: Env):
    from rrdpo_core.inputs import check_inputs

    check_inputs(smooth_frames().permute(0, 3, 1, 2), box_masks(), multiple=None)


@error("api-frames-float-0-255", RrdpoInputError, r"reach 2\d\d", r"divide by 255")
def _(env: Env):
    from rrdpo_core.inputs import check_inputs

    check_inputs(smooth_frames() * 255, box_masks(), multiple=None)


@error("api-frames-int64-dtype", RrdpoInputError, r"dtype int64", r"/ 255")
def _(env: Env):
    from rrdpo_core.inputs import check_inputs

    check_inputs((smooth_frames() * 255).long(), box_masks(), multiple=None)


@error("api-masks-with-nan", RrdpoInputError, r"NaN", r"0/1 hole mask")
def _(env: Env):
    from rrdpo_core.inputs import check_inputs

    m = box_masks()
    m[0, 0, 0] = float("nan")
    check_inputs(smooth_frames(), m, multiple=None)


@error("api-empty-video", RrdpoInputError, r"empty video", r"at least one")
def _(env: Env):
    from rrdpo_core.inputs import check_inputs

    check_inputs(torch.zeros(0, H, W, 3), box_masks(), multiple=None)


@error("api-read-video-non-video-file", RrdpoInputError, r"clip\.mp4: ffmpeg could not decode",
       r"Invalid data found")
def _(env: Env):
    from rrdpo_core.video_io import read_video

    (env.tmp / "clip.mp4").write_bytes(bytes(range(256)) * 20)
    read_video(env.tmp / "clip.mp4")


@documented("api-read-masks-0-1-png-reports-the-label-reading")
def _(env: Env):
    from rrdpo_core.video_io import read_masks

    folder = env.masks_dir((box_masks().numpy() > 0).astype(np.uint8))
    notes: list[str] = []
    masks = read_masks(folder, notes=notes)
    assert torch.equal(masks, box_masks() > 0) and len(notes) == 1 and "0/1" in notes[0]
    # A single 0/1 image reads the same way (it is one mask for all frames)
    assert torch.equal(read_masks(folder / "00000.png")[0], box_masks()[0] > 0)


@documented("api-prepare-masks-uint8-0-1-marks-the-hole")
def _(env: Env):
    from rrdpo_core.masks import prepare_masks

    labels = (box_masks() > 0).to(torch.uint8)
    out = prepare_masks(labels, dilation_iter=0, erode=False)  # binarised at > 0: 0/1 and 0/255 alike
    assert torch.equal(out, labels.float()) and torch.equal(prepare_masks(labels * 255, 0, erode=False), out)


@error("api-prepare-masks-negative-dilation", ValueError, r"dilation_iter.*non-negative integer, got -1")
def _(env: Env):
    from rrdpo_core.masks import prepare_masks

    prepare_masks(box_masks(), dilation_iter=-1)


@error("api-prepare-masks-no-frames", ValueError, r"no mask frames given")
def _(env: Env):
    from rrdpo_core.masks import prepare_masks

    prepare_masks([])


@error("api-flow-prior-mask-count-mismatch", RrdpoInputError, r"got 4 masks for 6 frames")
def _(env: Env):
    from rrdpo_core.prior import flow_propagation_prior

    flow_propagation_prior(smooth_frames(), box_masks()[:4])


@error("api-flow-prior-all-ones-mask", RrdpoInputError, r"every pixel of every frame is hole",
       r"leave some background visible")
def _(env: Env):
    from rrdpo_core.prior import flow_propagation_prior

    flow_propagation_prior(smooth_frames(), torch.ones(T, H, W))


@documented("api-flow-prior-single-frame-is-filled-spatially")
def _(env: Env):
    from rrdpo_core.prior import flow_propagation_prior

    frames, mask = smooth_frames(1), box_masks(1)
    res = flow_propagation_prior(frames, mask)
    assert res.stats["seen_fraction"] == 0.0, "no other frame to see the hole in"
    assert torch.isfinite(res.frames).all() and torch.equal(res.frames[mask == 0], frames[mask == 0])


@error("api-propainter-weights-folder-missing", FileNotFoundError, r"not a folder", r"ProPainter\.pth")
def _(env: Env):
    from rrdpo_core.prior.propainter import load_propainter

    load_propainter(env.tmp / "propainter")


@error("api-propainter-weights-with-a-pickle-payload", ValueError, r"ProPainter\.pth|raft-things\.pth")
def _(env: Env):
    from rrdpo_core.prior.propainter import load_propainter

    folder = env.tmp / "propainter"
    folder.mkdir()
    for name in ("raft-things.pth", "recurrent_flow_completion.pth", "ProPainter.pth"):
        pickle_payload(folder / name)
    load_propainter(folder)


# ============================================================================================
# Library: zones and the loss


def loss_inputs(b: int = 2, c: int = 4, t: int = 2, h: int = 4, w: int = 4):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, c, t, h, w, generator=g) for _ in range(6)]


@error("api-loss-overlapping-zones", RrdpoInputError, r"not a partition", r"more than one zone \(overlap\)",
       r"decompose_zones")
def _(env: Env):
    from rrdpo_core.loss import region_reg_dpo_loss

    ones = torch.ones(2, 1, 2, 4, 4)
    region_reg_dpo_loss(*loss_inputs(), [ones, ones, torch.zeros_like(ones)])


@error("api-loss-zones-leaving-pixels-uncovered", RrdpoInputError, r"not a partition", r"in no zone \(gap\)")
def _(env: Env):
    from rrdpo_core.loss import region_reg_dpo_loss

    hole = torch.zeros(2, 1, 2, 4, 4)
    hole[..., :2, :] = 1
    region_reg_dpo_loss(*loss_inputs(), [hole, torch.zeros_like(hole), torch.zeros_like(hole)])


@error("api-loss-zone-values-outside-0-1", RrdpoInputError, r"zone 0 has values in \[2, 2\]", r"must lie in \[0, 1\]")
def _(env: Env):
    from rrdpo_core.loss import region_reg_dpo_loss

    a = torch.full((2, 1, 2, 4, 4), 2.0)
    region_reg_dpo_loss(*loss_inputs(), [a, 1 - a])


@error("api-loss-nan-zone-mask", RrdpoInputError, r"zone 1 contains NaN")
def _(env: Env):
    from rrdpo_core.loss import region_reg_dpo_loss

    hole = torch.zeros(2, 1, 2, 4, 4)
    region_reg_dpo_loss(*loss_inputs(), [hole, torch.full_like(hole, float("nan")), 1 - hole])


@documented("api-loss-soft-zones-summing-to-1-are-accepted")
def _(env: Env):
    from rrdpo_core.loss import region_reg_dpo_loss

    soft = torch.rand(2, 1, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    zones = [soft.half().float(), 1 - soft.half().float()]
    out = region_reg_dpo_loss(*loss_inputs(), zones, alpha=(1, 1), rho=(0, 0))
    one = region_reg_dpo_loss(*loss_inputs(), [torch.ones(1, 1, 1, 1, 1)], alpha=(1,), rho=(0,))
    torch.testing.assert_close(out.loss, one.loss, rtol=1e-5, atol=1e-6)  # a partition splits the MSE exactly


@error("api-hand-built-zones-that-overlap", RrdpoInputError, r"Zones\(hole, boundary, context\)",
       r"not a partition")
def _(env: Env):
    from rrdpo_core.zones import Zones

    m = box_masks()
    Zones(hole=m, boundary=m, context=1 - m)


@error("api-decompose-zones-nan-mask", ValueError, r"NaN", r"0/1 hole mask")
def _(env: Env):
    from rrdpo_core.zones import decompose_zones

    m = box_masks()
    m[1, 1, 1] = float("inf")
    decompose_zones(m)


@error("api-loss-nan-prediction", ValueError, r"pred_lose: contains NaN")
def _(env: Env):
    from rrdpo_core.loss import region_reg_dpo_loss

    x = loss_inputs()
    x[1][0, 0, 0, 0, 0] = float("nan")
    region_reg_dpo_loss(*x, [torch.ones(1, 1, 1, 1, 1)], alpha=(1,), rho=(0,))


# ============================================================================================
# Library: LoRA files (Region-DPO and PCM) and model weights


@error("api-region-lora-with-nan", RrdpoInputError, r"lora\.safetensors", r"lora\.(up|down)\.weight",
       r"NaN or infinite", r"retrain")
def _(env: Env):
    from rrdpo_core.region_lora import load_region_lora

    load_region_lora(rewrite_safetensors(env.copy(env.shared.lora, "lora.safetensors"), poison_first))


@error("api-region-lora-with-inf", RrdpoInputError, r"inf_lora\.safetensors", r"NaN or infinite")
def _(env: Env):
    from rrdpo_core.region_lora import apply_region_lora

    path = rewrite_safetensors(env.copy(env.shared.lora, "inf_lora.safetensors"),
                               lambda t: poison_first(t, float("inf")))
    apply_region_lora(env.shared.model, path)


@error("api-region-lora-object-with-nan-in-memory", RrdpoInputError, r"the LoRA", r"NaN or infinite")
def _(env: Env):
    from rrdpo_core.region_lora import RegionLora, apply_region_lora, load_region_lora

    lora = load_region_lora(env.shared.lora)
    sd = dict(lora.state_dict)
    poison_first(sd)
    apply_region_lora(env.shared.model, RegionLora(state_dict=sd, info=lora.info, path=None))


@error("api-region-lora-truncated", ValueError, r"trunc\.safetensors: not a readable safetensors file")
def _(env: Env):
    from rrdpo_core.region_lora import load_region_lora

    load_region_lora(truncate(env.copy(env.shared.lora, "trunc.safetensors")))


@error("api-region-lora-for-another-base-model", ValueError, r"trained on different weights|different base model",
       r"retrain the LoRA|load the DiffuEraser weights")
def _(env: Env):
    from rrdpo_core.region_lora import apply_region_lora, remove_region_lora

    try:
        apply_region_lora(env.shared.other_model, env.shared.lora)
    finally:
        remove_region_lora(env.shared.other_model)


@error("api-region-lora-missing-file", FileNotFoundError, r"Region-DPO LoRA not found: .*gone\.safetensors")
def _(env: Env):
    from rrdpo_core.region_lora import load_region_lora

    load_region_lora(env.tmp / "gone.safetensors")


@error("api-pcm-lora-with-nan", RrdpoInputError, r"pcm\.safetensors", r"lora_unet_x\.lora_down\.weight",
       r"download it again")
def _(env: Env):
    from rrdpo_core.lora import read_kohya_lora

    path = env.tmp / "pcm.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.tensor([[float("nan"), 0.0]]),
               "lora_unet_x.lora_up.weight": torch.zeros(2, 1)}, str(path))
    read_kohya_lora(path)


@error("api-pcm-lora-nan-state-dict-in-memory", RrdpoInputError, r"LoRA state dict", r"lora_up")
def _(env: Env):
    from rrdpo_core.lora import apply_kohya_lora

    sd = {"lora_unet_x.lora_down.weight": torch.zeros(1, 2), "lora_unet_x.lora_up.weight": torch.full((2, 1), float("inf"))}
    apply_kohya_lora(env.shared.model.unet, sd, adapter_name="bad_pcm")


@error("api-pcm-lora-pickle-file-refused", ValueError, r"only \.safetensors LoRA files are read", r"convert")
def _(env: Env):
    from rrdpo_core.lora import read_kohya_lora

    read_kohya_lora(pickle_payload(env.tmp / "pcm.ckpt"))


@error("api-pcm-lora-for-another-model", ValueError, r"match no layer of the UNet")
def _(env: Env):
    from rrdpo_core.lora import apply_kohya_lora

    apply_kohya_lora(env.shared.model.unet, {"lora_unet_input_blocks_9_1_proj_in.lora_down.weight": torch.zeros(1, 8),
                                             "lora_unet_input_blocks_9_1_proj_in.lora_up.weight": torch.zeros(8, 1)},
                     adapter_name="wrong_pcm")


@error("api-sampler-nan-output-names-the-cause", RrdpoInputError, r"sampler produced NaN/inf latents",
       r"weights or an applied LoRA", r"bf16/fp32")
def _(env: Env):
    from rrdpo_core.pipeline import DiffuEraserPipeline
    from rrdpo_core.vae import make_tiny_vae

    model = env.shared.model
    pipe = DiffuEraserPipeline(model, make_tiny_vae(0))
    real = model.predict_eps
    model.predict_eps = lambda *a, **k: real(*a, **k) * float("nan")  # as a NaN weight would make it
    try:
        pipe(smooth_frames(4), box_masks(4), None, torch.zeros(1, 77, model.cross_attention_dim), seed=0)
    finally:
        del model.predict_eps


@error("api-model-weights-truncated", ValueError, r"diffusion_pytorch_model\.safetensors is not a complete "
       r"safetensors file", r"download")
def _(env: Env):
    from rrdpo_core.models import load_diffueraser

    model = env.copy(env.shared.model_dir, "model")
    truncate(model / "unet_main" / "diffusion_pytorch_model.safetensors")
    load_diffueraser(model)


@error("api-model-config-garbage", ValueError, r"config\.json is not valid JSON", r"Download")
def _(env: Env):
    from rrdpo_core.models import load_diffueraser

    model = env.copy(env.shared.model_dir, "model")
    (model / "brushnet" / "config.json").write_text("{ not json")
    load_diffueraser(model)


@error("api-model-weights-are-a-git-lfs-pointer", ValueError, r"Git LFS pointer", r"git lfs pull")
def _(env: Env):
    from rrdpo_core.models import load_diffueraser

    model = env.copy(env.shared.model_dir, "model")
    (model / "brushnet" / "diffusion_pytorch_model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n")
    load_diffueraser(model)


@error("api-model-folders-swapped", ValueError, r"are brushnet/ and unet_main/ swapped")
def _(env: Env):
    from rrdpo_core.models import load_diffueraser

    model = env.copy(env.shared.model_dir, "model")
    shutil.copyfile(model / "unet_main" / "diffusion_pytorch_model.safetensors",
                    model / "brushnet" / "diffusion_pytorch_model.safetensors")
    load_diffueraser(model)


# ============================================================================================
# Library: preference pairs and training


def sample_file(pairs: Path, index: int = 0) -> Path:
    return pairs / "samples" / f"{index:06d}.safetensors"


@error("api-pairs-truncated-sample-file", RrdpoInputError, r"000001\.safetensors: damaged sample file",
       r"delete .*000001\.safetensors", r"same settings")
def _(env: Env):
    from rrdpo_core.pairs import PairDataset

    pairs = env.copy(env.shared.pairs, "pairs")
    truncate(sample_file(pairs, 1))
    ds = PairDataset(pairs)
    ds.load(1)


@error("api-train-nan-latents-in-a-sample", RrdpoInputError, r"000000\.safetensors \(damaged sample\)",
       r"winner_latents", r"NaN", r"delete .*000000\.safetensors")
def _(env: Env):
    from rrdpo_core.train import train_region_dpo

    pairs = env.copy(env.shared.pairs, "pairs")
    rewrite_safetensors(sample_file(pairs, 0),
                        lambda t: t.__setitem__("winner_latents", t["winner_latents"] * float("nan")))
    try:
        train_region_dpo(env.shared.model, None, None, pairs, train_config(), out_dir=env.tmp / "run")
    except RrdpoInputError as err:
        assert "learning_rate" not in str(err), "the data is blamed, not the learning rate"
        raise


@documented("api-pairs-damaged-sample-is-rebuilt-identically-by-the-builder")
def _(env: Env):
    from rrdpo_core.pairs import LOSER_KINDS, LoserGenerator, PairDataset, build_preference_pairs
    from rrdpo_core.vae import make_tiny_vae

    pairs = env.copy(env.shared.pairs, "pairs")
    before = {k: v.clone() for k, v in PairDataset(pairs).load(1).items()}  # loaded tensors map the file
    truncate(sample_file(pairs, 1))
    sample_file(pairs, 1).unlink()  # the fix the error names
    gen = LoserGenerator(None, None, torch.zeros(1, 77, 32), overrides={k: blurry_loser for k in LOSER_KINDS})
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    clips = [smooth_frames(6, 64, 64, seed=s) for s in (1, 2)]
    ds = build_preference_pairs(None, make_tiny_vae(0), text, clips, pairs, count=2, num_frames=4, generator=gen,
                                store_latents=True, composite="hard")
    after = ds.load(1)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@error("api-pairs-garbage-dataset-json", RrdpoInputError, r"dataset\.json: damaged, not valid JSON",
       r"rebuild the pairs")
def _(env: Env):
    from rrdpo_core.pairs import PairDataset

    pairs = env.copy(env.shared.pairs, "pairs")
    (pairs / "dataset.json").write_text("{\"format\": ")
    PairDataset(pairs)


@error("api-pairs-folder-missing", FileNotFoundError, r"not a preference-pair folder", r"build_preference_pairs")
def _(env: Env):
    from rrdpo_core.pairs import PairDataset

    PairDataset(env.tmp / "nothing_here")


@error("api-train-pairs-folder-without-samples", ValueError, r"holds no preference pairs", r"build")
def _(env: Env):
    from rrdpo_core.train import train_region_dpo

    pairs = env.copy(env.shared.pairs, "pairs")
    for p in (pairs / "samples").iterdir():
        p.unlink()
    (pairs / "manifest.jsonl").unlink(missing_ok=True)
    train_region_dpo(env.shared.model, None, None, pairs, train_config(), out_dir=env.tmp / "run")


@error("api-train-clips-shorter-than-num-frames", ValueError, r"num_frames=9", r"shortest stored clip has 4")
def _(env: Env):
    from rrdpo_core.train import train_region_dpo

    train_region_dpo(env.shared.model, None, None, env.shared.pairs, train_config(num_frames=9),
                     out_dir=env.tmp / "run")


@error("api-build-pairs-sources-shorter-than-num-frames", RrdpoInputError, r"shorter than num_frames=12",
       r"longer clips or fewer frames")
def _(env: Env):
    from rrdpo_core.pairs import LOSER_KINDS, LoserGenerator, build_preference_pairs

    gen = LoserGenerator(None, None, torch.zeros(1, 77, 32), overrides={k: blurry_loser for k in LOSER_KINDS})
    build_preference_pairs(None, None, torch.zeros(1, 77, 32), [smooth_frames(6, 64, 64)], env.tmp / "p", count=1,
                           num_frames=12, kinds=("blur",), generator=gen, store_latents=False)


@error("api-build-pairs-source-is-not-a-video", RrdpoInputError, r"readme\.txt: not a video file")
def _(env: Env):
    from rrdpo_core.pairs import build_preference_pairs

    (env.tmp / "readme.txt").write_text("hello")
    build_preference_pairs(None, None, torch.zeros(1, 77, 32), env.tmp / "readme.txt", env.tmp / "p", count=1,
                           num_frames=4, kinds=("blur",), store_latents=False)


def damaged_run(env: Env, damage: Callable[[Path], Any]) -> Path:
    run = env.copy(env.shared.run_dir, "run")
    damage(run / "checkpoints" / "step_00000002")
    return run


def resume_expecting_fallback(env: Env, run: Path, damaged_file: str, why: str) -> None:
    from rrdpo_core.train import train_region_dpo
    from rrdpo_core.train.checkpoint import CheckpointFallbackWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train_region_dpo(env.shared.model, None, None, env.shared.pairs, train_config(max_steps=3),
                               out_dir=run)
    said = " ".join(str(w.message) for w in caught if issubclass(w.category, CheckpointFallbackWarning))
    assert re.search(r"resuming from .*step_00000001 \(the previous good checkpoint\)", said), said
    assert re.search(rf"step_00000002/{re.escape(damaged_file)} \(.*{why}", said), said
    assert res.resumed_from == 1 and res.steps == 3


@documented("api-resume-truncated-optimizer-falls-back-to-the-previous-checkpoint")
def _(env: Env):
    run = damaged_run(env, lambda ck: truncate(ck / "optimizer.pt"))
    resume_expecting_fallback(env, run, "optimizer.pt", "truncated or not a torch file")


@documented("api-resume-garbage-state-json-falls-back-to-the-previous-checkpoint")
def _(env: Env):
    run = damaged_run(env, lambda ck: (ck / "state.json").write_text("\x00\x17garbage{"))
    resume_expecting_fallback(env, run, "state.json", "not valid JSON")


@documented("api-resume-pickle-payload-in-optimizer-falls-back-to-the-previous-checkpoint")
def _(env: Env):
    run = damaged_run(env, lambda ck: pickle_payload(ck / "optimizer.pt"))
    resume_expecting_fallback(env, run, "optimizer.pt", "Python objects other than tensors")


@documented("api-resume-nan-lora-in-checkpoint-falls-back-to-the-previous-checkpoint")
def _(env: Env):
    run = damaged_run(env, lambda ck: rewrite_safetensors(ck / "lora.safetensors", poison_first))
    resume_expecting_fallback(env, run, "lora.safetensors", "NaN")


@error("api-resume-from-an-explicit-damaged-checkpoint", RrdpoInputError, r"step_00000002/optimizer\.pt is damaged",
       r"Python objects", r"falls back to the previous good one \(step_00000001\)")
def _(env: Env):
    from rrdpo_core.train import train_region_dpo

    run = damaged_run(env, lambda ck: pickle_payload(ck / "optimizer.pt"))
    train_region_dpo(env.shared.model, None, None, env.shared.pairs,
                     train_config(max_steps=3, resume=str(run / "checkpoints" / "step_00000002")), out_dir=run)


@error("api-resume-when-every-checkpoint-is-damaged", RrdpoInputError, r"every checkpoint in .* is damaged",
       r"delete that folder|another out_dir")
def _(env: Env):
    from rrdpo_core.train import train_region_dpo

    run = damaged_run(env, lambda ck: truncate(ck / "scheduler.pt"))
    (run / "checkpoints" / "step_00000001" / "state.json").write_text("[]")
    train_region_dpo(env.shared.model, None, None, env.shared.pairs, train_config(max_steps=3), out_dir=run)


@error("train-cli-two-processes-name-the-damaged-sample", RuntimeError, r"000000\.safetensors \(damaged sample\)",
       r"NaN", r"delete")
def _(env: Env):
    import os
    import socket
    import subprocess

    launcher = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    if not Path(launcher).exists():
        pytest.skip("the accelerate launcher is not installed")
    pairs = env.copy(env.shared.pairs, "pairs")
    rewrite_safetensors(sample_file(pairs, 0),
                        lambda t: t.__setitem__("loser_latents", t["loser_latents"] * float("nan")))
    (env.tmp / "cfg.json").write_text(json.dumps(dict(
        model_dir=str(env.shared.model_dir), pairs_dir=str(pairs), out_dir=str(env.tmp / "run"), device="cpu",
        max_steps=2, batch_size=1, learning_rate=1e-3, rank=4, lora_alpha=8.0, checkpoint_every=1, plots=False,
        num_frames=2)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "rrdpo_core.train",
           "--config", str(env.tmp / "cfg.json")]
    repo = Path(__file__).resolve().parents[1]
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), "CUDA_VISIBLE_DEVICES": ""}
    # The launcher stops the other process when one fails; the timeout guards against a hang.
    proc = subprocess.run(cmd, cwd=env.tmp, env=run_env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-6000:])


@error("api-resume-with-other-settings", ValueError, r"settings differ from the checkpoint's", r"another out_dir")
def _(env: Env):
    from rrdpo_core.train import train_region_dpo

    run = env.copy(env.shared.run_dir, "run")
    train_region_dpo(env.shared.model, None, None, env.shared.pairs, train_config(max_steps=3, rank=8), out_dir=run)


# ============================================================================================
# ComfyUI nodes (ComfyUI's runtime modules are stubbed by tests/conftest.py)


@error("node-apply-lora-with-nan", ValueError, r"nan_lora\.safetensors", r"NaN or infinite", r"retrain")
def _(env: Env):
    path = env.comfy.models_dir / "loras" / "nan_lora.safetensors"
    shutil.copyfile(env.shared.lora, path)
    rewrite_safetensors(path, poison_first)
    node("RRDPOApplyRegionDPOLoRA").apply(handle_for(env.shared.model), "nan_lora.safetensors", 1.0)


@error("node-apply-lora-of-another-base-model", ValueError, r"different (weights|base model)")
def _(env: Env):
    shutil.copyfile(env.shared.lora, env.comfy.models_dir / "loras" / "mine.safetensors")
    node("RRDPOApplyRegionDPOLoRA").apply(handle_for(env.shared.other_model), "mine.safetensors", 1.0)


@error("node-apply-lora-none-selected", FileNotFoundError, r"No LoRA selected", r"models/loras")
def _(env: Env):
    node("RRDPOApplyRegionDPOLoRA").apply(handle_for(env.shared.model), "none", 1.0)


@error("node-load-diffueraser-without-models", FileNotFoundError, r"models/diffueraser", r"brushnet/ and unet_main/")
def _(env: Env):
    node("RRDPOLoadDiffuEraser").load("none", "auto", "none")


@error("node-load-diffueraser-truncated-weights", ValueError, r"not a complete safetensors file", r"download")
def _(env: Env):
    target = env.comfy.models_dir / "diffueraser" / "tiny"
    shutil.copytree(env.shared.model_dir, target)
    truncate(target / "brushnet" / "diffusion_pytorch_model.safetensors", 0.9)
    node("RRDPOLoadDiffuEraser").load("tiny", "auto", "none")


def sample_node(env: Env, handle, frames=None, masks=None, cond_dim: int = 32):
    from test_nodes_pipeline import FakeComfyVAE, _cond

    frames = smooth_frames(4) if frames is None else frames
    masks = box_masks(4) if masks is None else masks
    return node("RRDPODiffuEraserSampler").sample(handle, FakeComfyVAE(), _cond(dim=cond_dim), frames, masks, 2,
                                                  "ddim", 0, 0.0)


@error("node-sampler-with-a-nan-lora-attached", ValueError, r"nan_lora\.safetensors", r"NaN or infinite")
def _(env: Env):
    # The Apply node refuses the file too; a handle made before the file was damaged meets it here.
    path = env.tmp / "nan_lora.safetensors"
    shutil.copyfile(env.shared.lora, path)
    rewrite_safetensors(path, poison_first)
    sample_node(env, handle_for(env.shared.model).with_lora(str(path), 1.0))


@error("node-sampler-fewer-masks-than-frames", ValueError, r"got 3 mask(s| frames)? for 4 frames")
def _(env: Env):
    sample_node(env, handle_for(env.shared.model), masks=box_masks(3))


@error("node-sampler-conditioning-from-another-clip", ValueError, r"text embedding width 768",
       r"cross-attention width 32", r"SD1\.5 CLIP")
def _(env: Env):
    sample_node(env, handle_for(env.shared.model), cond_dim=768)


@error("node-flow-prior-fewer-masks-than-frames", ValueError, r"got 2 mask(s| frames)? for 6 frames")
def _(env: Env):
    node("RRDPOFlowPrior").run(smooth_frames(), box_masks()[:2], 2.0, "fast")


@error("node-flow-prior-images-channels-first", ValueError, r"channels go last")
def _(env: Env):
    node("RRDPOFlowPrior").run(smooth_frames().permute(0, 3, 1, 2).contiguous(), box_masks(), 2.0, "fast")


@error("node-flow-prior-nan-images", ValueError, r"frame\(s\) \[0\] contain NaN")
def _(env: Env):
    frames = smooth_frames()
    frames[0] = float("nan")
    node("RRDPOFlowPrior").run(frames, box_masks(), 2.0, "fast")


@error("node-flow-prior-images-in-0-255", ValueError, r"divide by 255")
def _(env: Env):
    node("RRDPOFlowPrior").run(smooth_frames() * 255, box_masks(), 2.0, "fast")


@documented("node-flow-prior-image-given-as-mask-is-reduced-over-channels")
def _(env: Env):
    as_image = box_masks()[..., None].expand(-1, -1, -1, 3)  # an IMAGE wired into MASK: max over channels
    prior = node("RRDPOFlowPrior").run(smooth_frames(), as_image, 2.0, "fast")[0]
    ref = node("RRDPOFlowPrior").run(smooth_frames(), box_masks(), 2.0, "fast")[0]
    assert torch.equal(prior, ref)


@error("node-zone-masks-nan-mask", ValueError, r"NaN or infinite", r"0/1 hole mask")
def _(env: Env):
    m = box_masks()
    m[0, 0, 0] = float("nan")
    node("RRDPOZoneMasks").split(m, 8)


@error("node-zone-masks-images-count-mismatch", ValueError, r"images: 4 frames but the mask has 6")
def _(env: Env):
    node("RRDPOZoneMasks").split(box_masks(), 8, images=smooth_frames(4))


@documented("node-zone-masks-all-ones-mask-is-all-hole")
def _(env: Env):
    hole, boundary, context = node("RRDPOZoneMasks").split(torch.ones(T, H, W), 8)[:3]
    assert bool((hole == 1).all()) and not boundary.any() and not context.any()


@error("node-prepare-mask-nan", ValueError, r"contains NaN or infinite")
def _(env: Env):
    m = box_masks()
    m[3, 3, 3] = float("nan")
    node("RRDPOPrepareVideoMask").prepare(m, 8, True)


@documented("node-blend-generated-of-another-size-is-resized-to-the-original")
def _(env: Env):
    out = node("RRDPOBlendIntoVideo").blend(smooth_frames(), smooth_frames(T, 16, 16), box_masks(), "hard")[0]
    assert out.shape == (T, H, W, 3)
    keep = box_masks() == 0
    assert torch.equal(out[keep], smooth_frames()[keep]), "outside the hole the original is kept exactly"


@error("node-blend-generated-with-fewer-frames", ValueError, r"generated has 4 frames but original has 6",
       r"this very video")
def _(env: Env):
    node("RRDPOBlendIntoVideo").blend(smooth_frames(), smooth_frames(4), box_masks(), "gaussian")


@error("node-metrics-truth-of-another-size", ValueError, r"truth has shape", r"must match")
def _(env: Env):
    node("RRDPOInpaintingMetrics").measure(smooth_frames(), box_masks(), 8, truth=smooth_frames(T, 16, 16))


@error("node-trainer-nan-latents-in-a-sample", ValueError, r"000001\.safetensors \(damaged sample\)",
       r"NaN", r"Build Preference Pairs node")
def _(env: Env):
    from test_nodes_pipeline import _cond

    pairs = env.copy(env.shared.pairs, "pairs")
    rewrite_safetensors(sample_file(pairs, 1),
                        lambda t: t.__setitem__("masked_latents", t["masked_latents"] * float("inf")))
    mod = sys.modules[type(node("RRDPOTrainer")).__module__]
    handle = mod.PairsHandle(root=str(pairs), count=2)
    node("RRDPOTrainer").train(handle_for(env.shared.model), _cond(), handle, "nan_run", 2, 1e-3, 4, 1000.0,
                               1.0, 1.5, 0.05, 100.0, 200.0, 5.0, 8, 1, 1, 0)


# --------------------------------------------------------------------------------------------
# The harness


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, env: Env):
    if case.raises is None:
        case.run(env)
        return
    with pytest.raises(case.raises) as info:
        case.run(env)
    if isinstance(info.value, CliFailed):
        assert info.value.rc == 2, f"bad input exits with status 2, got {info.value.rc}"
    message = str(info.value)
    for pattern in case.says:
        assert re.search(pattern, message, re.I | re.S), f"message does not say /{pattern}/:\n{message}"


def test_case_ids_are_unique_and_cover_every_layer():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    for layer in ("cli-", "train-cli-", "api-", "node-"):
        assert any(i.startswith(layer) for i in ids), layer


if __name__ == "__main__":
    kinds = [c.kind for c in CASES]
    print(f"{len(CASES)} cases: {kinds.count('error')} clear errors, {kinds.count('documented')} documented behaviours")
