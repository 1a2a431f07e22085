"""Peak memory and time of sampling: resident vs low-memory (rrdpo_core.offload), and the memory model.

On a GPU (``--device cuda``): the released DiffuEraser architecture (random weights, fp16) and
an SD1.5-shaped VAE sample 22 frames at 1280x720 and 640x360, once fully resident (level
"none") and once at each low-memory level; each row gives the peak of
``torch.cuda.max_memory_allocated``, the wall time, the ratio of both to the resident run of the
same size in the same process, and the estimate of ``rrdpo_core.memory`` for that level. Goals
(issue 12): <= 12 GB at 1280x720 and <= 6 GB at 640x360 at <= 1.3x the resident time.

On the CPU (default when there is no GPU): the GPU rows print "not measured"; then, for small
sizes, a network with the released channel proportions at width 32 and a VAE at width 16 sample
22 frames (1 DDIM step), each size and level in its own process, and the script prints the
estimate of the working memory (activations, VAE, video latents: everything but the weights)
next to what the run measured: the peak of the tensor bytes created during the call
(``PeakTensorMemory``) and the growth of the process's peak RSS. On the CPU the compute and
the offload device are the same memory, so the weights (printed apart) are not part of the
comparison, and the measured peak also holds the pipeline's float32 copies of the input video
(frames, prior, holes), which a GPU run keeps on the host: they are printed as "host inputs".

    python bench/bench_memory.py --sizes 64x64 128x128 # CPU: small sizes, GPU rows "not measured"
    python bench/bench_memory.py --device cuda         # on a GPU machine
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
GPU_SIZES = ((720, 1280), (360, 640))
GPU_GOALS_GB = {(720, 1280): 12.0, (360, 640): 6.0}
TIME_GOAL = 1.3
FRAMES = 22


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _inputs(n: int, height: int, width: int, dim: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(n, height, width, 3, generator=gen)
    masks = torch.zeros(n, height, width)
    masks[:, height // 4: 3 * height // 4, width // 3: 2 * width // 3] = 1
    return frames, masks, frames.flip(0), torch.randn(1, 77, dim, generator=gen)


def cpu_one(height: int, width: int, level: str, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(threads)
    from rrdpo_core.memory import PeakTensorMemory, _build_denoiser, _build_vae, estimate_sampling, network_sizes
    from rrdpo_core.offload import low_memory
    from rrdpo_core.pipeline import DiffuEraserPipeline
    from rrdpo_core.vae import AutoencoderKLCodec

    model = _build_denoiser(32).requires_grad_(False)
    codec = AutoencoderKLCodec(_build_vae(16).requires_grad_(False), encode_chunk=4, decode_chunk=4)
    frames, masks, prior, text = _inputs(FRAMES, height, width, model.cross_attention_dim)
    sizes = network_sizes(model)
    est = estimate_sampling(height, width, FRAMES, level=level, dtype=torch.float32, sizes=sizes, vae_width=16,
                            vae_frames=4 if level == "none" else 1)
    weights = sizes.total
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS counter (Linux)
    rss0 = _rss_kib("VmRSS")
    start = time.perf_counter()
    with PeakTensorMemory() as meter, low_memory(model, codec, level, compute_device="cpu") as (m, c):
        DiffuEraserPipeline(m, c)(frames, masks, prior, text, num_inference_steps=1, scheduler="ddim", seed=0)
    seconds = time.perf_counter() - start
    host_inputs = FRAMES * height * width * (3 + 3) * 4 + FRAMES * height * width  # frames, prior (fp32), holes
    return {"size": f"{width}x{height}", "level": level, "estimate_mb": (est.total - est.weights) / 1e6,
            "measured_tensor_mb": meter.peak / 1e6, "host_inputs_mb": host_inputs / 1e6,
            "rss_growth_mb": (_rss_kib("VmHWM") - rss0) / 1e3, "weights_mb": weights / 1e6, "seconds": seconds}


def gpu_one(height: int, width: int, level: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from rrdpo_core.memory import estimate_sampling, network_sizes
    from rrdpo_core.models.diffueraser import DiffuEraserModel, packaged_config
    from rrdpo_core.offload import low_memory
    from rrdpo_core.pipeline import DiffuEraserPipeline
    from rrdpo_core.vae import SD15_VAE_CONFIG, AutoencoderKLCodec

    from diffusers import AutoencoderKL

    dev, dtype = torch.device("cuda"), torch.float16
    home = dev if level == "none" else torch.device("cpu")
    model = DiffuEraserModel.from_configs(packaged_config("brushnet"), packaged_config("unet_main"))
    model = model.to(home, dtype).eval().requires_grad_(False)
    vae = AutoencoderKL(**{k: v for k, v in SD15_VAE_CONFIG.items() if k != "scaling_factor"})
    codec = AutoencoderKLCodec(vae.to(dev, dtype).eval().requires_grad_(False))
    frames, masks, prior, text = _inputs(FRAMES, height, width, model.cross_attention_dim)
    est = estimate_sampling(height, width, FRAMES, level=level, dtype=dtype, sizes=network_sizes(model))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with low_memory(model, codec, level, compute_device=dev) as (m, c):
        DiffuEraserPipeline(m, c)(frames, masks, prior, text, num_inference_steps=2, scheduler="tcd", seed=0)
    torch.cuda.synchronize()
    return {"size": f"{width}x{height}", "level": level, "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
            "seconds": time.perf_counter() - start, "estimate_gb": est.total / 1e9}


def _in_child(kind: str, args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--sizes", nargs="*", default=["64x64", "128x128", "256x128"], help="CPU sizes WxH")
    p.add_argument("--levels", nargs="*", default=["none", "windows", "blocks"])
    p.add_argument("--cpu-levels", nargs="*", default=["none", "blocks"], help="levels of the CPU rows")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, h, w, level = args.child[0], int(args.child[1]), int(args.child[2]), args.child[3]
        result = gpu_one(h, w, level) if kind == "gpu" else cpu_one(h, w, level, args.threads)
        print(json.dumps(result))
        return 0
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print("GPU: 22 frames, released architecture (random weights), fp16, 2 TCD steps")
    for h, w in GPU_SIZES:
        base = None
        for level in args.levels:
            if device != "cuda":
                print(f"  {w}x{h} {level:8s} peak: not measured   time: not measured   (no GPU in this run)")
                continue
            r = _in_child("gpu", [str(h), str(w), level])
            base = base or r
            print(f"  {w}x{h} {level:8s} peak {r['peak_gb']:6.2f} GB (estimate {r['estimate_gb']:.2f}, goal "
                  f"<= {GPU_GOALS_GB[(h, w)]:.0f})  time {r['seconds']:7.2f} s  x{r['seconds'] / base['seconds']:.2f} "
                  f"of resident (goal <= {TIME_GOAL})  memory x{r['peak_gb'] / base['peak_gb']:.2f}")
    print("CPU: 22 frames, width-32 network (released proportions), width-16 VAE, fp32, 1 DDIM step")
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        for level in args.cpu_levels:
            r = _in_child("cpu", [str(h), str(w), level])
            total = r["estimate_mb"] + r["host_inputs_mb"]
            print(f"  {r['size']:>8s} {level:8s} working memory: estimate {r['estimate_mb']:7.1f} MB + host inputs "
                  f"{r['host_inputs_mb']:5.1f} MB = {total:7.1f} MB; measured tensors {r['measured_tensor_mb']:7.1f} MB "
                  f"(x{r['measured_tensor_mb'] / total:.2f}); RSS growth {r['rss_growth_mb']:7.1f} MB; "
                  f"weights {r['weights_mb']:.1f} MB; {r['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
