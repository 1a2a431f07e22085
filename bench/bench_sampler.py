"""Sampler cost against frame count, on CPU with the tiny random DiffuEraser and tiny VAE.

Each frame count runs in its own process, so its peak memory is its own: the figure reported is
the peak resident memory during the pipeline call minus the resident memory just before it
(Linux: the peak counter is reset through /proc/self/clear_refs). Times are wall clock for one
full call (VAE encode, keyframe pass when n > 44, 2 TCD steps over the windows, VAE decode).
Ratios are against the smallest frame count measured in the same run: seconds per frame and
memory per frame should stay flat (linear growth), not rise with n.

    python bench/bench_sampler.py                 # n = 11, 22, 44, 88, 176 at 64x64
    python bench/bench_sampler.py --frames 22 88 --size 128 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_one(n: int, size: int, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(threads)
    from rrdpo_core.models.testing import tiny_diffueraser
    from rrdpo_core.pipeline import DiffuEraserPipeline
    from rrdpo_core.vae import make_tiny_vae

    model = tiny_diffueraser(seed=0)
    pipe = DiffuEraserPipeline(model, make_tiny_vae(seed=0))
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(1, 77, model.cross_attention_dim, generator=gen)

    def clip(frames: int):
        video = torch.rand(frames, size, size, 3, generator=gen)
        masks = torch.zeros(frames, size, size)
        masks[:, size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 1
        return video, masks, video.flip(2)

    pipe(*clip(2), text, seed=0)  # warm-up: first-call allocations and kernels
    video, masks, prior = clip(n)
    evals = []
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
        resettable = True
    except OSError:
        resettable = False
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    out = pipe(video, masks, prior, text, seed=0, progress=lambda d, t: evals.append(t))
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    return dict(n=n, seconds=seconds, peak_mib=(peak - before) / 1024, evals=evals[-1], keyframes=bool(out.keyframes),
                peak_exact=resettable)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[11, 22, 44, 88, 176])
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (multiple of 8)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.size, args.threads)))
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    for n in sorted(args.frames):
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--size", str(args.size),
                               "--threads", str(args.threads)], capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    base = rows[0]
    base_spf, base_mpf = base["seconds"] / base["n"], base["peak_mib"] / base["n"]
    print(f"DiffuEraser sampler, tiny random model, CPU, {args.size}x{args.size}, {args.threads} thread(s), "
          "TCD 2 steps")
    print(f"{'frames':>6} {'windows':>7} {'kf pass':>7} {'seconds':>8} {'s/frame':>8} {'s/frame ratio':>13} "
          f"{'s/window':>8} {'peak MiB':>9} {'MiB/frame':>9} {'MiB/frame ratio':>15}")
    for r in rows:
        spf, mpf = r["seconds"] / r["n"], r["peak_mib"] / r["n"]
        print(f"{r['n']:>6} {r['evals']:>7} {('yes' if r['keyframes'] else 'no'):>7} {r['seconds']:>8.2f} {spf:>8.3f} "
              f"{spf / base_spf:>13.2f} {r['seconds'] / r['evals']:>8.3f} {r['peak_mib']:>9.1f} {mpf:>9.2f} "
              f"{(mpf / base_mpf if base_mpf > 0 else float('nan')):>15.2f}")
    print("\nstep by step (linear growth: time ratio close to the frame ratio once there are several windows):")
    for prev, r in zip(rows, rows[1:]):
        print(f"  {prev['n']:>4} -> {r['n']:>4} frames x{r['n'] / prev['n']:.2f}: time x{r['seconds'] / prev['seconds']:.2f}, "
              f"windows x{r['evals'] / prev['evals']:.2f}, peak memory x{r['peak_mib'] / max(prev['peak_mib'], 1e-9):.2f}")
    last = rows[-1]
    growth_t = last["seconds"] / base["seconds"]
    growth_n = last["n"] / base["n"]
    print(f"overall {base['n']} -> {last['n']} frames (x{growth_n:.1f}): time x{growth_t:.2f}, "
          f"peak memory x{last['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}; windows x{last['evals'] / base['evals']:.1f}")
    if not all(r["peak_exact"] for r in rows):
        print("note: /proc/self/clear_refs not writable; peak memory includes the warm-up")


if __name__ == "__main__":
    main()
