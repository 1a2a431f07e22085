"""Benchmark: the weight-free flow prior against per-frame OpenCV Telea, object removal and video completion.

Clips: every clip in ../shared/data (bmx-trees, 80 frames 432x240; diffueraser-example1, 70 frames
854x480) and synthetic clips (rrdpo_core.synthetic: a panning textured plane and a textured object
crossing it). Tasks, each with a ground truth:

* ``removal``     - object removal. Synthetic clips: the moving object's masks, the truth is the
                    background without it. Real clips (their object masks have no truth under them):
                    a moving random shape (rrdpo_core.masks, seeded) cut over the background, as
                    ../shared/data/README.md asks: the clip's own object masks (grown by 4 px) are
                    taken out of it, so the truth under the hole is background, frames as truth.
* ``shape-over-objects`` - the same random shape cut over everything (objects included), frames as
                    truth: video completion of whatever the shape hides. Where it hides a moving
                    object (the bmx rider), the truth is that object, which a prior made for object
                    removal fills with the background behind it by design.
* ``squares``     - video completion, a fixed grid of square holes, frames as truth (on the synthetic
                    clips the moving object crosses the squares: the ghost test).
* ``moving-grid`` - video completion, the same grid moving 2 px right and 1 px down per frame.

Per clip and task both methods fill the same frames in the same run. Printed: hole PSNR (pooled over
all hole pixels of all frames) and hole SSIM of the prior and of Telea, the gain, the share of frames
where the prior's hole PSNR >= Telea's, the warping error in the hole (x1e3, along the truth's flow:
temporal stability; lower is steadier), and frames/s of both (wall clock; for the prior also frames per
CPU-second of this process, which a busy shared machine does not distort as much). Goals (issue 14): gain >= 6 dB, >= 90 %
of frames, >= 15 frames/s at 432x240 on 2 CPU cores.

    python bench/bench_prior.py                          # everything (a few minutes on 2 cores)
    python bench/bench_prior.py --threads 1              # OpenCV/torch on one thread
    python bench/bench_prior.py --clips synthetic-0 --tasks squares --frames 30
    python bench/bench_prior.py --preview-dir out/       # also writes the source-map previews (incl.
                                                         # diffueraser-example1 with its own mask, no truth)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rrdpo_core.masks import random_mask_sequence  # noqa: E402
from rrdpo_core.metrics import ssim_map, warping_error  # noqa: E402
from rrdpo_core.prior import SOURCE_SPATIAL, flow_propagation_prior, source_preview  # noqa: E402
from rrdpo_core.synthetic import make_synthetic_clip  # noqa: E402
from rrdpo_core.video_io import read_masks, read_video, write_image  # noqa: E402

DATA = Path(os.environ.get("RRDPO_SHARED_DATA", REPO.parent / "shared" / "data"))
SYNTHETIC_SEEDS = (0, 1, 2)
TASKS = ("removal", "squares", "moving-grid", "shape-over-objects")


def load_clips(names: list[str] | None, frames: int | None, synthetic_size: tuple[int, int] = (240, 432)
               ) -> list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """(name, frames, object masks or None, truth under the object masks or None) per clip.

    The synthetic clips are generated at ``synthetic_size`` (height, width); the real ones keep theirs.
    """
    clips = []
    bmx = DATA / "bmx-trees" / "frames"
    if bmx.is_dir():
        video = read_video(bmx, max_frames=frames).frames.numpy()
        masks = read_masks(DATA / "bmx-trees" / "masks", size=video.shape[1:3], max_frames=len(video)).numpy()
        clips.append(("bmx-trees", video, masks, None))
    else:
        print(f"skipped bmx-trees: {bmx} not found (set RRDPO_SHARED_DATA)")
    de = DATA / "diffueraser-example1" / "video.mp4"
    if de.is_file():
        video = read_video(de, max_frames=frames).frames.numpy()
        masks = read_masks(DATA / "diffueraser-example1" / "mask.mp4", size=video.shape[1:3],
                           max_frames=len(video)).numpy()
        clips.append(("diffueraser-example1", video, masks, None))
    else:
        print(f"skipped diffueraser-example1: {de} not found (set RRDPO_SHARED_DATA)")
    for seed in SYNTHETIC_SEEDS:
        c = make_synthetic_clip(frames or 40, *synthetic_size, seed=seed)
        clips.append((f"synthetic-{seed}", c.frames.numpy(), c.masks.numpy(), c.truth.numpy()))
    if names:
        clips = [c for c in clips if c[0] in names]
    return clips


def shape_seed(name: str) -> int:
    """The random shape's seed per clip: the same shape whichever clips a run selects."""
    order = ["bmx-trees", "diffueraser-example1"] + [f"synthetic-{s}" for s in SYNTHETIC_SEEDS]
    return order.index(name) + 1 if name in order else 1


def square_grid(length: int, height: int, width: int, moving: bool) -> np.ndarray:
    """Square holes of side min(H, W)/8 every 3 sides (about 11 % of the frame), fixed or moving (2, 1) px/frame."""
    side = max(4, min(height, width) // 8)
    period = 3 * side
    masks = np.zeros((length, height, width), bool)
    yy, xx = np.mgrid[0:height, 0:width]
    for t in range(length):
        dx, dy = (2 * t, t) if moving else (0, 0)
        masks[t] = (((xx - side - dx) % period) < side) & (((yy - side - dy) % period) < side)
    return masks


def task_inputs(task: str, frames: np.ndarray, obj_masks, obj_truth, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(masks, truth) of a task on a clip."""
    length, height, width = frames.shape[:3]
    if task == "removal" and obj_truth is not None:
        return obj_masks, obj_truth
    if task in ("removal", "shape-over-objects"):
        shape = random_mask_sequence(length, height, width, seed=seed).numpy() > 0.5
        if task == "removal" and obj_masks is not None:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
            objects = np.stack([cv2.dilate((m > 0.5).astype(np.uint8), kernel) > 0 for m in obj_masks])
            shape &= ~objects
        return shape, frames
    return square_grid(length, height, width, moving=task == "moving-grid"), frames


def telea(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = frames.copy()
    for t, (f, m) in enumerate(zip(frames, masks)):
        filled = cv2.inpaint((f * 255 + 0.5).astype(np.uint8), m.astype(np.uint8), 5, cv2.INPAINT_TELEA)
        out[t][m] = filled[m].astype(np.float32) / 255.0
    return out


def hole_psnr(result: np.ndarray, truth: np.ndarray, masks: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(((result - truth) ** 2)[masks].mean(), 1e-12)))


def frame_psnrs(result: np.ndarray, truth: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = np.full(len(masks), np.nan)
    for t, m in enumerate(masks):
        if m.any():
            out[t] = hole_psnr(result[t], truth[t], m)
    return out


def hole_ssim(result: np.ndarray, truth: np.ndarray, masks: np.ndarray) -> float:
    vals = [ssim_map(r, g)[m] for r, g, m in zip(result, truth, masks) if m.any()]
    return float(np.concatenate(vals).mean())


def timed(fn, repeat: int):
    """Result, fastest wall-clock seconds, and the process CPU seconds of that run."""
    best, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall = time.perf_counter() - t0
        if wall < best:
            best, cpu = wall, time.process_time() - c0
    return out, best, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default=None, help="comma-separated clip names (default: all)")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated tasks of {TASKS}")
    ap.add_argument("--frames", type=int, default=None, help="use only the first N frames (synthetic: N frames)")
    ap.add_argument("--threads", type=int, default=None, help="OpenCV and torch threads (default: library default)")
    ap.add_argument("--repeat", type=int, default=1, help="timing runs per method (the fastest is reported)")
    ap.add_argument("--preset", default="medium", help="DIS preset of the prior")
    ap.add_argument("--no-spatial", action="store_true", help="skip the spatial-fill comparison table")
    ap.add_argument("--preview-dir", type=Path, default=None, help="write source-map previews (PNG) here")
    args = ap.parse_args()
    if args.threads is not None:
        import torch

        cv2.setNumThreads(args.threads)
        torch.set_num_threads(args.threads)

    clips = load_clips(args.clips.split(",") if args.clips else None, args.frames)
    tasks = args.tasks.split(",")
    print(f"{os.cpu_count()} CPUs, OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, DIS preset {args.preset}")
    header = (f"{'clip':<22}{'task':<13}{'size':>9}{'PSNR prior':>11}{'Telea':>7}{'gain':>7}{'SSIM prior':>11}"
              f"{'Telea':>7}{'frames>=T':>10}{'warp prior':>11}{'Telea':>7}{'fps prior':>10}{'/CPU-s':>7}{'Telea':>7}  goals")
    print(header)
    print("-" * len(header))
    t_all = time.perf_counter()
    for name, frames, obj_masks, obj_truth in clips:
        length, height, width = frames.shape[:3]
        for task in tasks:
            masks, truth = task_inputs(task, frames, obj_masks, obj_truth, seed=shape_seed(name))
            inputs = np.where(masks[..., None], 0.0, frames).astype(np.float32) if obj_truth is None else frames
            base, t_base, _ = timed(lambda: telea(inputs, masks), args.repeat)
            res, t_prior, c_prior = timed(lambda: flow_propagation_prior(inputs, masks, preset=args.preset), args.repeat)
            out = res.frames.numpy()
            p, pb = hole_psnr(out, truth, masks), hole_psnr(base, truth, masks)
            fp, fb = frame_psnrs(out, truth, masks), frame_psnrs(base, truth, masks)
            has = ~np.isnan(fp)
            share = float((fp[has] >= fb[has]).mean())
            s, sb = hole_ssim(out, truth, masks), hole_ssim(base, truth, masks)
            (_, wp), (_, wb) = warping_error([out, base], truth, regions=masks)
            fps, fps_b = length / t_prior, length / t_base
            spatial = res.source_map.numpy() == SOURCE_SPATIAL
            sp = (f"{hole_psnr(out, truth, spatial):.2f} vs {hole_psnr(base, truth, spatial):.2f}"
                  if spatial.any() else "-")
            ok = [p - pb >= 6.0, share >= 0.9] + ([fps >= 15.0] if (height, width) == (240, 432) else [])
            print(f"{name:<22}{task:<13}{f'{width}x{height}':>9}{p:>11.2f}{pb:>7.2f}{p - pb:>+7.2f}{s:>11.3f}{sb:>7.3f}"
                  f"{100 * share:>9.0f}%{1e3 * (wp or 0):>11.2f}{1e3 * (wb or 0):>7.2f}{fps:>10.1f}{length / c_prior:>7.1f}{fps_b:>7.1f}  "
                  f"{'met' if all(ok) else 'MISSED'}  (fused {100 * res.stats['fused_fraction']:.0f}%, "
                  f"copied {100 * res.stats['copied_fraction']:.0f}%, spatial {100 * res.stats['spatial_fraction']:.0f}%, "
                  f"PSNR on the spatial pixels prior vs Telea {sp})",
                  flush=True)
            if args.preview_dir is not None:
                _write_preview(args.preview_dir, f"{name}-{task}", out, masks, res.source_map.numpy(), truth)
        if args.preview_dir is not None and name == "diffueraser-example1" and obj_masks is not None:
            res = flow_propagation_prior(frames, obj_masks, preset=args.preset)
            _write_preview(args.preview_dir, f"{name}-object-mask", res.frames.numpy(), obj_masks,
                           res.source_map.numpy(), frames)
    print(f"goals: gain >= +6 dB, frames>=T >= 90 %, fps prior >= 15 at 432x240; "
          f"total {time.perf_counter() - t_all:.0f} s")
    if not args.no_spatial:
        spatial_table(clips, tasks)


def spatial_table(clips, tasks) -> None:
    """Why never-seen pixels get the mean of Telea and the membrane: single-frame fills of the same holes, no propagation."""
    from rrdpo_core.prior.fusion import spatial_fill_frame

    print("\nspatial fill alone (each frame filled from itself only): hole PSNR of Telea, the membrane and their "
          "mean (the prior's spatial fill)")
    print(f"{'clip':<22}{'task':<13}{'Telea':>8}{'membrane':>10}{'mean':>8}{'gain':>7}")
    gains = []
    for name, frames, obj_masks, obj_truth in clips:
        for task in tasks:
            masks, truth = task_inputs(task, frames, obj_masks, obj_truth, seed=shape_seed(name))
            inputs = np.where(masks[..., None], 0.0, frames).astype(np.float32) if obj_truth is None else frames
            fills = {m: np.stack([spatial_fill_frame(f, k, m) for f, k in zip(inputs, masks)])
                     for m in ("membrane", "mean")}
            pt = hole_psnr(telea(inputs, masks), truth, masks)
            pm, pe = hole_psnr(fills["membrane"], truth, masks), hole_psnr(fills["mean"], truth, masks)
            gains.append(pe - pt)
            print(f"{name:<22}{task:<13}{pt:>8.2f}{pm:>10.2f}{pe:>8.2f}{pe - pt:>+7.2f}", flush=True)
    if gains:
        print(f"mean gain of the prior's spatial fill over Telea: {np.mean(gains):+.2f} dB "
              f"(min {np.min(gains):+.2f}, max {np.max(gains):+.2f})")


def _write_preview(folder: Path, stem: str, out: np.ndarray, masks: np.ndarray, source: np.ndarray,
                   truth: np.ndarray) -> None:
    """Middle frame: input with hole, prior, source map tint, truth - side by side."""
    t = len(out) // 2
    tint = source_preview(out[t:t + 1], masks[t:t + 1], source[t:t + 1]).numpy()[0]
    holed = np.where(masks[t][..., None], 0.0, truth[t])
    row = np.concatenate([holed, out[t], tint, truth[t]], axis=1)
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / f"{stem}.png", row)


if __name__ == "__main__":
    main()
