"""One full-size denoiser step (BrushNet + motion UNet), offload ``stream``, with and without ``fast``.

A/B in one process, interleaved (plain, fast, plain, fast, ...), so a busy machine slows both
alike; prints each call's CPU seconds (user, system), minor page faults and wall seconds, then
the medians and the ratio fast / plain, and the output difference. It reuses the random
full-size weights, the PCM-like LoRA and the sizes that ``bench_vs_original.py`` writes into its
work folder (run that once first).

    python bench/bench_stream_step.py --work /tmp/rrdpo_vs_original --threads 2 --rounds 2
    python bench/bench_stream_step.py ... --threads 1   # compute without 2-thread waiting on a busy machine
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LORA_FILE = "pcm_sd15_smallcfg_2step_converted.safetensors"


def _usage() -> tuple[float, float, int]:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_stime, u.ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/rrdpo_vs_original", help="bench_vs_original.py's work folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--frames", type=int, default=22)
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels (latents are size / 8)")
    parser.add_argument("--no-brushnet", action="store_true", help="time the motion UNet alone (brushnet_scale 0)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    import torch

    from rrdpo_core.lora import apply_kohya_lora
    from rrdpo_core.models import load_diffueraser
    from rrdpo_core.offload import low_memory

    torch.set_num_threads(args.threads)
    work = Path(args.work) / "full"
    if not (work / "diffuEraser").is_dir():
        raise SystemExit(f"{work / 'diffuEraser'} not found: run bench/bench_vs_original.py with --work {args.work} first")
    model = load_diffueraser(work / "diffuEraser", stream=True)
    apply_kohya_lora(model.unet, work / LORA_FILE)
    gen = torch.Generator().manual_seed(0)
    side = args.size // 8
    latents = torch.randn(args.frames, 4, side, side, generator=gen)
    cond = torch.randn(args.frames, 5, side, side, generator=gen)
    text = torch.randn(1, 77, model.cross_attention_dim, generator=gen)
    scale = 0.0 if args.no_brushnet else 1.0

    results: dict[str, list[dict]] = {"plain": [], "fast": []}
    outputs = {}
    print(f"{'run':<10}{'user s':>9}{'sys s':>8}{'CPU s':>8}{'faults k':>10}{'wall s':>8}", flush=True)
    for r in range(args.rounds):
        for name in ("plain", "fast"):
            with low_memory(model, None, "stream", compute_device="cpu", fast=name == "fast") as (denoiser, _), \
                    torch.no_grad():
                before, start = _usage(), time.perf_counter()
                eps = denoiser.predict_eps(latents, 999, text, cond, args.frames, brushnet_scale=scale)
                after, wall = _usage(), time.perf_counter() - start
            res = dict(user=after[0] - before[0], sys=after[1] - before[1], faults=(after[2] - before[2]) / 1000,
                       wall=wall)
            res["cpu"] = res["user"] + res["sys"]
            results[name].append(res)
            outputs.setdefault(name, eps)
            print(f"{name + ' ' + str(r + 1):<10}{res['user']:>9.1f}{res['sys']:>8.1f}{res['cpu']:>8.1f}"
                  f"{res['faults']:>10.0f}{res['wall']:>8.1f}", flush=True)
    for key in ("user", "sys", "cpu", "wall"):
        p, f = (statistics.median(r[key] for r in results[n]) for n in ("plain", "fast"))
        print(f"median {key:<5} plain {p:7.2f}  fast {f:7.2f}  ratio {f / p:.2f}")
    a, b = outputs["fast"].double(), outputs["plain"].double()
    print(f"output difference fast vs plain: max abs {float((a - b).abs().max()):.3g}, "
          f"relative {float((a - b).norm() / b.norm()):.3g}")


if __name__ == "__main__":
    main()
