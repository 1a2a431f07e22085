"""The flow prior's torch path against its NumPy path at 1280x720: speed on a device, same result.

Issue 14 asks for a torch path (kornia warping and morphology) that runs the prior's algorithm on a
GPU for 1280x720 video. This script runs both paths on the same clips and holes at that size and
prints, per clip and task, frames/s of each (wall clock, the device synchronised), hole PSNR of
each against the truth, and how far the two results are apart in the hole (mean and 99th
percentile of the absolute difference, values in [0, 1]).

Clips: the synthetic clips of ``bench_prior.py`` generated at the size asked, and the clips of
``../shared/data`` resized to it (bicubic frames, nearest masks). Tasks as in ``bench_prior.py``.

    python bench/bench_prior_device.py                                 # cuda if there is one, else cpu
    python bench/bench_prior_device.py --device cuda --size 1280x720 --frames 40
    python bench/bench_prior_device.py --device cpu --frames 12 --clips synthetic-0   # a quick check here
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_prior import hole_psnr, load_clips, shape_seed, task_inputs  # noqa: E402
from rrdpo_core.prior import flow_propagation_prior  # noqa: E402


def resize_clip(frames: np.ndarray, masks: np.ndarray | None, width: int, height: int):
    frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_CUBIC) for f in frames]).clip(0, 1)
    if masks is not None:
        masks = np.stack([cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
                          for m in masks]) > 0
    return frames.astype(np.float32), masks


def clips_at(names: list[str] | None, frames: int, width: int, height: int):
    """The clips at ``width`` x ``height``: the synthetic ones generated at that size, the real ones resized."""
    out = []
    for name, video, obj_masks, truth in load_clips(names, frames, synthetic_size=(height, width)):
        if truth is None:
            video, obj_masks = resize_clip(video, obj_masks, width, height)
        out.append((name, video, obj_masks, truth))
    return out


def timed_prior(frames: np.ndarray, masks: np.ndarray, device: str | None):
    sync = torch.cuda.synchronize if device and torch.device(device).type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    result = flow_propagation_prior(frames, masks, device=device)
    sync()
    return result.frames.float().cpu().numpy(), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the torch path runs (cuda, cpu)")
    ap.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--clips", default=None, help="comma-separated clip names (default: all)")
    ap.add_argument("--tasks", default="removal,squares,moving-grid")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    print(f"torch path on {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda")
                                           else f", {torch.get_num_threads()} threads")
          + f"; NumPy/OpenCV path on the CPU; {width}x{height}, {args.frames} frames", flush=True)
    header = ("| clip | task | NumPy fps | torch fps | torch / NumPy speed | PSNR NumPy | PSNR torch "
              "| hole diff mean / p99 |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    clips = clips_at(args.clips.split(",") if args.clips else None, args.frames, width, height)
    for name, video, obj_masks, truth in clips:
        for task in args.tasks.split(","):
            masks, target = task_inputs(task, video, obj_masks, truth, shape_seed(name))
            ref, t_np = timed_prior(video, masks, None)
            got, t_torch = timed_prior(video, masks, args.device)
            hole = masks.astype(bool)
            diff = np.abs(got - ref)[hole]
            n = len(video)
            print(f"| {name} | {task} | {n / t_np:.2f} | {n / t_torch:.2f} | {t_np / t_torch:.2f}x "
                  f"| {hole_psnr(ref, target, masks):.2f} | {hole_psnr(got, target, masks):.2f} "
                  f"| {diff.mean():.4f} / {np.percentile(diff, 99):.4f} |", flush=True)


if __name__ == "__main__":
    main()
