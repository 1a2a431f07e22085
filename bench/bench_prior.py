"""Benchmark: the weight-free flow prior against per-frame OpenCV Telea, on real video.

bmx-trees (DAVIS, 80 frames, 432x240, from ../shared/data) with fixed square holes cut over the
background, so the frames themselves are the ground truth. For each hole, both methods fill the
same frames in the same run; the script prints hole PSNR (dB, pooled over all hole pixels of all
frames), the gain over Telea, and frames per second of each method on this machine.

Goal (issue #4): >= 6 dB above Telea in the hole and >= 15 frames/s at 432x240 on a 2-core CPU.

    python bench/bench_prior.py                      # the two fixed squares + a moving random mask
    python bench/bench_prior.py --presets medium,fast --repeat 3
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
from rrdpo_core.prior import flow_propagation_prior  # noqa: E402

DATA = Path(os.environ.get("RRDPO_SHARED_DATA", REPO.parent / "shared" / "data"))

# (name, top, left, side): squares over the background, clear of the rider's path.
SQUARES = [("square right 104px", 48, 312, 104), ("square left 90px", 60, 0, 90)]


def load_bmx(limit: int | None) -> np.ndarray:
    folder = DATA / "bmx-trees" / "frames"
    if not folder.is_dir():
        sys.exit(f"skipped: {folder} not found (set RRDPO_SHARED_DATA to the folder holding bmx-trees/)")
    files = sorted(folder.glob("*.jpg"))[:limit]
    return np.stack([cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]).astype(np.float32) / 255


def telea(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = frames.copy()
    for t, (f, m) in enumerate(zip(frames, masks)):
        filled = cv2.inpaint((f * 255 + 0.5).astype(np.uint8), m.astype(np.uint8), 5, cv2.INPAINT_TELEA)
        out[t][m] = filled[m].astype(np.float32) / 255.0
    return out


def hole_psnr(result: np.ndarray, truth: np.ndarray, masks: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / ((result - truth) ** 2)[masks].mean()))


def timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    ap.add_argument("--presets", default="medium", help="comma-separated DIS presets to run (medium,fast,ultrafast)")
    ap.add_argument("--repeat", type=int, default=2, help="timing runs per method (the fastest is reported)")
    args = ap.parse_args()

    frames = load_bmx(args.frames)
    length, height, width = frames.shape[:3]
    cases = []
    for name, top, left, side in SQUARES:
        m = np.zeros((length, height, width), bool)
        m[:, top:top + side, left:left + side] = True
        cases.append((name, m))
    cases.append(("moving random shape (seed 1)", random_mask_sequence(length, height, width, seed=1).numpy() > 0.5))

    print(f"bmx-trees: {length} frames {width}x{height}, {os.cpu_count()} CPUs, OpenCV {cv2.__version__}, "
          f"{cv2.getNumThreads()} OpenCV threads")
    header = f"{'hole':<30}{'method':<22}{'hole PSNR':>10}{'gain dB':>9}{'frames/s':>10}{'speed vs Telea':>16}"
    print(header)
    print("-" * len(header))
    for name, masks in cases:
        base, t_base = timed(lambda: telea(frames, masks), args.repeat)
        p_base = hole_psnr(base, frames, masks)
        print(f"{name:<30}{'Telea (per frame)':<22}{p_base:>10.2f}{'':>9}{length / t_base:>10.1f}{'1.00x':>16}")
        for preset in args.presets.split(","):
            res, t_prior = timed(lambda: flow_propagation_prior(frames, masks, preset=preset), args.repeat)
            p = hole_psnr(res.frames.numpy(), frames, masks)
            label = f"flow prior ({preset})"
            print(f"{'':<30}{label:<22}{p:>10.2f}{p - p_base:>+9.2f}{length / t_prior:>10.1f}"
                  f"{f'{t_base / t_prior:.2f}x':>16}   seen {100 * res.stats['seen_fraction']:.1f}% of the hole")
    print("goal: gain >= 6 dB and >= 15 frames/s for the flow prior at 432x240")


if __name__ == "__main__":
    main()
