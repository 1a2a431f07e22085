"""Side by side with the original DiffuEraser: load time, sampling time, peak memory, output difference.

Both pipelines run on the same random weights written in the released layout (``brushnet/``,
``unet_main/``, an SD1.5-architecture VAE folder, a kohya-format PCM LoRA), on the same frames,
masks, prior, text embedding and 22-frame base noise. Each side runs in its own process, so its
peak resident memory (CPU) or peak allocated memory (GPU) is its own, and the sides alternate
(original, ours, original, ours, ...) so a busy machine slows both alike.

The original side imports the code of a checkout of lixiaowen-xw/DiffuEraser (``--original``)
and runs in that checkout's own environment (``--original-python``, e.g. a venv with its pinned
diffusers 0.29.2 / peft 0.13.2 / transformers 4.41.1). Nothing of it is copied here: the worker
below calls its classes the way its ``DiffuEraser.forward`` does (reference/diffueraser.md §1.2,
§1.6-§1.9), with three differences needed for a comparison: the text embedding is given (no CLIP
weights), the base noise is read from a file instead of drawn, and the networks stay in the
requested dtype (the release casts everything to fp16, which on a CPU is neither fast nor what
we compare).

The VAE's posterior standard deviation is set to about 3e-7 (its log-variance output is a
constant -30), because the original samples the posterior with the global RNG and ours with its
own generator: the two sides then encode to the same latents up to that noise.

    python bench/bench_vs_original.py --original /tmp/orig_diffueraser --original-python /opt/origvenv/bin/python
    python bench/bench_vs_original.py ... --frames 22 --size 128 --steps 2 --threads 2 --rounds 2   # the defaults
    python bench/bench_vs_original.py ... --tiny --frames 50   # small random networks: a quick fidelity check

Printed: per run, load and sampling seconds, seconds inside BrushNet / the motion UNet / VAE
encode / VAE decode, and peak memory; then the medians, ours/original ratios, and the output
difference (final latents; generated and composited 8-bit frames). ``--profile`` adds a
torch.profiler table of the top operators of each side's sampling. Each worker also measures, right
before it samples, the rate the device delivers for the sampler's operators (best of a matrix
product and its 3x3 convolution shapes); the summary gives the FLOPs of a run (counted on
meta-device networks), each side's rate over its sampling time, and its share of the best such
rate seen in the run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LORA_FILE = "pcm_sd15_smallcfg_2step_converted.safetensors"
# The SD1.5 scheduler config the release builds its UniPC (prior noising) scheduler from.
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      trained_betas=None, prediction_type="epsilon")
TCD_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  timestep_spacing="trailing")
COMPONENTS = ("brushnet", "unet", "vae_encode", "vae_decode")
CPU_FIGURES = ("user_s", "sys_s", "faults_k")


# --------------------------------------------------------------------------------------------
# Inputs and weights (made once per work folder, in our environment)


def prepare(work: Path, args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from rrdpo_core.models import packaged_config
    from rrdpo_core.models.testing import write_random_diffueraser
    from rrdpo_core.vae import SD15_VAE_CONFIG

    stamp = work / "prepared.json"
    want = dict(tiny=args.tiny, frames=args.frames, size=args.size, seed=args.seed)
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return
    work.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"writing random {'tiny' if args.tiny else 'full-size'} weights and inputs to {work} ...", flush=True)
    suffix = "_tiny" if args.tiny else ""
    write_random_diffueraser(work / "diffuEraser", seed=args.seed, brushnet_config="brushnet" + suffix,
                             unet_config="unet_main" + suffix)

    from diffusers import AutoencoderKL

    vae_config = dict(SD15_VAE_CONFIG)
    if args.tiny:
        vae_config.update(block_out_channels=[32, 32, 64, 64], layers_per_block=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        vae = AutoencoderKL(**vae_config)
    with torch.no_grad():  # posterior std ~3e-7: both sides encode to the same latents (module docstring)
        vae.quant_conv.weight[4:].zero_()
        vae.quant_conv.bias[4:].fill_(-30.0)
    vae.save_pretrained(work / "vae", safe_serialization=True)

    # A PCM-like LoRA in kohya format: rank 64, alpha 8, fp16, on the spatial layers it targets.
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    targets = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
    from rrdpo_core.models import DiffuEraserUNetMotionModel

    with init_empty_weights():
        unet = DiffuEraserUNetMotionModel.from_config(packaged_config("unet_main" + suffix))
    rank, lora = (4 if args.tiny else 64), {}
    for name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or "motion_modules" in name \
                or not name.endswith(targets):
            continue
        shape = module.weight.shape
        key = "lora_unet_" + name.replace(".", "_")
        down = torch.randn(rank, *shape[1:], generator=gen) / shape[1:].numel() ** 0.5
        up = torch.randn(shape[0], rank, *([1, 1] if len(shape) == 4 else []), generator=gen) / rank ** 0.5
        lora[key + ".lora_down.weight"] = down.half()
        lora[key + ".lora_up.weight"] = (0.5 * up).half()
        lora[key + ".alpha"] = torch.tensor(8.0 if not args.tiny else 2.0, dtype=torch.float16)
    save_file(lora, str(work / LORA_FILE))

    n, size = args.frames, args.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    frames, masks = [], []
    for t in range(n):  # a smooth moving pattern with noise; a moving box as the hole
        base = np.stack([np.sin(6 * xx + 0.3 * t), np.cos(5 * yy - 0.2 * t), np.sin(4 * (xx + yy) + 0.1 * t)], -1)
        noise = torch.rand(size, size, 3, generator=gen).numpy()
        frames.append(np.clip(127.5 + 90 * base + 30 * (noise - 0.5), 0, 255).astype(np.uint8))
        m = np.zeros((size, size), np.uint8)
        x0 = size // 4 + t % (size // 4)
        m[size // 4: size // 2 + size // 8, x0: x0 + size // 3] = 1
        masks.append(m)
    frames, masks = np.stack(frames), np.stack(masks)
    prior = frames.copy()
    prior[masks.astype(bool)] = 128  # a flat prior in the holes
    latent = size // 8
    noise = torch.randn(22, 4, latent, latent, generator=gen).numpy()
    text = torch.randn(1, 77, 32 if args.tiny else 768, generator=gen).numpy()
    np.savez(work / "inputs.npz", frames=frames, masks=masks, prior=prior, noise=noise, text=text)
    stamp.write_text(json.dumps(want))


# --------------------------------------------------------------------------------------------
# Measuring inside a worker


class Meter:
    """Wall time spent inside wrapped callables, by name (nested calls of the same name count once)."""

    def __init__(self, sync):
        self.seconds = {k: 0.0 for k in COMPONENTS}
        self.depth = {k: 0 for k in COMPONENTS}
        self.sync = sync

    def wrap(self, obj, attr: str, name: str) -> None:
        inner = getattr(obj, attr)

        def timed(*a, **kw):
            if self.depth[name]:
                return inner(*a, **kw)
            self.depth[name] += 1
            self.sync()
            start = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.sync()
                self.seconds[name] += time.perf_counter() - start
                self.depth[name] -= 1

        setattr(obj, attr, timed)


def _peak_memory(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def _usage() -> tuple[float, float, int]:
    """(user CPU s, system CPU s, minor page faults) of this process so far."""
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_stime, u.ru_minflt


def _usage_since(before: tuple[float, float, int]) -> dict:
    after = _usage()
    return dict(user_s=after[0] - before[0], sys_s=after[1] - before[1], faults_k=(after[2] - before[2]) / 1000)


def _sync_fn(device):
    import torch

    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _profiled(enabled: bool):
    import contextlib

    if not enabled:
        return contextlib.nullcontext(None)
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU])


def worker_original(args: argparse.Namespace) -> dict:
    """The release's inference path (DiffuEraser.__init__ / .forward), driven with our inputs."""
    sys.path.insert(0, str(Path(args.original).resolve()))
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    work = Path(args.work)
    data = np.load(work / "inputs.npz")
    n = data["frames"].shape[0]

    load_usage = _usage()
    start = time.perf_counter()
    from diffusers import AutoencoderKL, TCDScheduler, UniPCMultistepScheduler
    from diffusers.image_processor import VaeImageProcessor
    from diffueraser.pipeline_diffueraser import StableDiffusionDiffuEraserPipeline
    from libs.brushnet_CA import BrushNetModel
    from libs.unet_motion_model import UNetMotionModel

    vae = AutoencoderKL.from_pretrained(work / "vae")
    brushnet = BrushNetModel.from_pretrained(work / "diffuEraser", subfolder="brushnet")
    unet = UNetMotionModel.from_pretrained(work / "diffuEraser", subfolder="unet_main")
    class GivenTextEmbedding(torch.nn.Module):
        """Stands in for CLIP: the embedding is passed in; the pipeline only asks for its dtype and
        device (the pipeline's ``device`` asks the first of its modules in set order, which changes
        from process to process with string hashing, so this one must answer too)."""

        @property
        def dtype(self):
            return dtype

        @property
        def device(self):
            return device

    pipe = StableDiffusionDiffuEraserPipeline(vae=vae, text_encoder=GivenTextEmbedding(), tokenizer=None, unet=unet, brushnet=brushnet,
                                              scheduler=UniPCMultistepScheduler(**SD15_SCHEDULER), safety_checker=None,
                                              feature_extractor=None, requires_safety_checker=False).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    noise_scheduler = UniPCMultistepScheduler(**SD15_SCHEDULER)
    if not args.no_lora:
        pipe.load_lora_weights(str(work), weight_name=LORA_FILE)  # PEFT adapters, not fused, as released
    pipe.scheduler = TCDScheduler(**TCD_CONFIG)
    processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True)
    sync = _sync_fn(device)
    sync()
    load_s = time.perf_counter() - start
    load_cpu = {"load_" + k: v for k, v in _usage_since(load_usage).items()}

    meter = Meter(sync)
    meter.wrap(brushnet, "forward", "brushnet")
    meter.wrap(unet, "forward", "unet")
    meter.wrap(vae, "encode", "vae_encode")
    meter.wrap(vae, "decode", "vae_decode")

    frames = [Image.fromarray(f) for f in data["frames"]]
    masks = [Image.fromarray(m * 255) for m in data["masks"]]
    masked = [Image.fromarray((np.asarray(f) * (1 - np.asarray(m)[..., None].astype(np.float32) / 255)).astype(np.uint8))
              for f, m in zip(frames, masks)]
    prior = [Image.fromarray(p) for p in data["prior"]]
    text = torch.from_numpy(data["text"]).to(device, dtype)
    width, height = frames[0].size
    torch.manual_seed(args.seed)  # the release samples the VAE posterior with the global RNG

    attainable = measure_peak(args)  # what the machine delivers right now (it drifts between runs)
    sync()
    usage = _usage()
    start = time.perf_counter()
    with _profiled(args.profile) as prof, torch.no_grad():
        base_noise = torch.from_numpy(data["noise"]).to(device, dtype)
        noise = base_noise.repeat(-(-n // 22), 1, 1, 1)[:n]
        pixels = torch.cat([processor.preprocess(p, height=height, width=width) for p in prior]).to(device, dtype)
        latents = torch.cat([vae.encode(pixels[i:i + 4]).latent_dist.sample() for i in range(0, n, 4)])
        latents = latents * vae.config.scaling_factor
        t0 = torch.tensor([0], device=device).long()
        cond_images, cond_masks = list(masked), list(masks)
        if n > 44:  # keyframe pre-pass (§1.7)
            keys = [int(i * n / 22) for i in range(22)]
            key_start = noise_scheduler.add_noise(latents[keys], base_noise, t0)
            key_out = pipe(num_frames=22, prompt=None, prompt_embeds=text, images=[masked[i] for i in keys],
                           masks=[masks[i] for i in keys], num_inference_steps=args.steps, guidance_scale=0,
                           latents=key_start).latents
            decoded = torch.cat([vae.decode(key_out[i:i + 1] / vae.config.scaling_factor).sample
                                 for i in range(key_out.shape[0])]).float()
            key_frames = processor.postprocess(decoded, output_type="pil")
            black = Image.new("L", masks[0].size, 0)
            for i, k in enumerate(keys):
                latents[k] = key_out[i]
                cond_masks[k] = black
                cond_images[k] = key_frames[i]
        start_latents = noise_scheduler.add_noise(latents, noise, t0)
        out = pipe(num_frames=22, prompt=None, prompt_embeds=text, images=cond_images, masks=cond_masks,
                   num_inference_steps=args.steps, guidance_scale=0, latents=start_latents)
    sync()
    sample_s = time.perf_counter() - start
    cpu = _usage_since(usage)
    generated = np.stack([np.asarray(f) for f in out.frames])
    # composite (§1.9)
    import cv2

    comp = []
    for g, f, m in zip(generated, data["frames"], data["masks"]):
        m8 = m * 255
        blur = cv2.GaussianBlur(m8, (21, 21), 0) / 255.0
        alpha = np.repeat(((1 - (1 - m8 / 255.0) * (1 - blur)) * 255).astype(np.uint8)[..., None], 3, 2)
        alpha = alpha.astype(np.float32) / 255.0
        comp.append((g.astype(np.uint8) * alpha + f.astype(np.uint8) * (1 - alpha)).astype(np.uint8))
    np.savez(args.out, latents=out.latents.float().cpu().numpy(), generated=generated, composite=np.stack(comp))
    return dict(load_s=load_s, sample_s=sample_s, peak_gib=_peak_memory(device), **meter.seconds, **cpu, **load_cpu,
                attainable=attainable, profile=_profile_table(prof), torch=torch.__version__)


def worker_ours(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    variant = set(args.worker.split("_")[1:])  # ours[_fused][_stream][_fast][_bf16]
    if "bf16" in variant:
        dtype = torch.bfloat16
    work = Path(args.work)
    data = np.load(work / "inputs.npz")
    n = data["frames"].shape[0]

    load_usage = _usage()
    start = time.perf_counter()
    from rrdpo_core.blend import blend_into_video
    from rrdpo_core.inversion import InitLatents, noise_latents, tile_noise
    from rrdpo_core.lora import apply_kohya_lora, fuse_adapter
    from rrdpo_core.models import load_diffueraser
    from rrdpo_core.pipeline import DiffuEraserPipeline
    from rrdpo_core.schedulers import make_scheduler, sampling_timesteps
    from rrdpo_core.vae import load_vae

    # "stream": the block weights are never resident, read from the file for each layer's forward
    # (offload level "stream" with a model loaded by load_diffueraser(..., stream=True)).
    model = load_diffueraser(work / "diffuEraser", dtype=dtype, device=device, stream="stream" in variant)
    if not args.no_lora:
        apply_kohya_lora(model.unet, work / LORA_FILE)
        if "fused" in variant:
            fuse_adapter(model.unet, "pcm")
    codec = load_vae(work / "vae", dtype=dtype, device=device)
    if "stream" in variant or "fast" in variant:
        from rrdpo_core.offload import low_memory

        # "_fast": low_memory(..., fast=True), the paths that change the result by float rounding
        # only (LoRA folded into streamed weights as read, contiguous motion-module inputs).
        stack = contextlib.ExitStack()
        model, codec = stack.enter_context(low_memory(model, codec, "stream" if "stream" in variant else "none",
                                                      fast="fast" in variant))
    pipe = DiffuEraserPipeline(model, codec)
    sync = _sync_fn(device)
    sync()
    load_s = time.perf_counter() - start
    load_cpu = {"load_" + k: v for k, v in _usage_since(load_usage).items()}

    meter = Meter(sync)
    meter.wrap(model.brushnet, "forward", "brushnet")
    meter.wrap(model.unet, "forward", "unet")
    meter.wrap(codec.vae, "encode", "vae_encode")
    meter.wrap(codec.vae, "decode", "vae_decode")

    frames = torch.from_numpy(data["frames"]).float() / 255
    holes = torch.from_numpy(data["masks"]).bool()
    prior = torch.from_numpy(data["prior"]).float() / 255
    text = torch.from_numpy(data["text"])
    base_noise = torch.from_numpy(data["noise"])

    attainable = measure_peak(args)  # what the machine delivers right now (it drifts between runs)
    sync()
    usage = _usage()
    start = time.perf_counter()
    with _profiled(args.profile) as prof:
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            prior_latents = pipe.encode_frames(prior, gen)
        scheduler = make_scheduler("tcd")
        timesteps = [int(t) for t in sampling_timesteps(scheduler, args.steps, 999)]
        start_latents = noise_latents(prior_latents, tile_noise(base_noise, n).to(prior_latents.device), timesteps[0],
                                      scheduler.alphas_cumprod)
        init = InitLatents(start_latents, "noise", timesteps, prior_latents, base_noise, args.seed)
        out = pipe(frames, holes, prior, text, num_inference_steps=args.steps, init=init, seed=args.seed)
    sync()
    sample_s = time.perf_counter() - start
    cpu = _usage_since(usage)
    generated = np.rint(out.frames.float().numpy() * 255).astype(np.uint8)
    composite = np.rint(blend_into_video(frames, out.frames.float(), holes).numpy() * 255).astype(np.uint8)
    np.savez(args.out, latents=out.latents.float().numpy(), generated=generated, composite=composite)
    return dict(load_s=load_s, sample_s=sample_s, peak_gib=_peak_memory(device), **meter.seconds, **cpu, **load_cpu,
                attainable=attainable, profile=_profile_table(prof), torch=torch.__version__)


def count_flops(args: argparse.Namespace, work: Path) -> dict:
    """FLOPs per frame of BrushNet, the motion UNet (per step) and the VAE (per encode / decode).

    Counted by ``torch.utils.flop_counter`` (convolutions and matrix products; attention as far as
    it counts it) on networks built on the meta device at this run's size, so nothing is computed.
    Cached in the work folder.
    """
    cache = work / "flops.json"
    key = dict(size=args.size, tiny=args.tiny)
    if cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return data["flops"]
    sys.path.insert(0, str(ROOT))
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    from rrdpo_core.models import DiffuEraserModel, packaged_config
    from rrdpo_core.vae import SD15_VAE_CONFIG

    suffix = "_tiny" if args.tiny else ""
    vae_config = {k: v for k, v in SD15_VAE_CONFIG.items() if k != "scaling_factor"}
    if args.tiny:
        vae_config.update(block_out_channels=[32, 32, 64, 64], layers_per_block=1)
    frames, h = 22, args.size // 8

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    with torch.device("meta"), torch.no_grad():
        model = DiffuEraserModel.from_configs(packaged_config("brushnet" + suffix), packaged_config("unet_main" + suffix))
        vae = AutoencoderKL(**vae_config)
        lat, cond = torch.randn(frames, 4, h, h), torch.randn(frames, 5, h, h)
        text = torch.randn(1, 77, model.cross_attention_dim)
        brush = flops(lambda: model.brushnet(lat, torch.full((frames,), 500), text.expand(frames, -1, -1), cond))
        both = flops(lambda: model.predict_eps(lat, 500, text, cond, frames))
        enc = flops(lambda: vae.encode(torch.randn(1, 3, args.size, args.size)))
        dec = flops(lambda: vae.decode(torch.randn(1, 4, h, h)))
    result = dict(brushnet=brush / frames, unet=(both - brush) / frames, vae_encode=enc, vae_decode=dec)
    cache.write_text(json.dumps(dict(key=key, flops=result)))
    return result


def measure_peak(args: argparse.Namespace) -> float:
    """The device's attainable dense rate in this run's dtype and threads, in GFLOP/s, measured now.

    The best of a square matrix product and the largest 3x3 convolutions the sampler runs
    (the VAE's full-resolution levels and the UNet's 512/1280-channel levels at this run's size),
    each timed best-of-5 after a warm-up. This is what the hardware delivers for the operators the
    sampler is made of, so the share of it that a side reaches over its sampling time says how much
    room any change of *how* the networks run can still win (the FLOPs being the same on both sides).
    """
    import torch

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = _sync_fn(device)

    def rate(fn, flops: float) -> float:
        fn()
        sync()
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - start)
        return flops / best / 1e9

    gen = torch.Generator().manual_seed(0)  # not the global RNG: the original samples its VAE posterior with it

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    n = 2048 if device.type == "cpu" else 8192
    a, b = randn(n, n), randn(n, n)
    rates = [rate(lambda: a @ b, 2.0 * n ** 3)]
    h = args.size
    for channels, side, batch in ((128, h, 1), (256, h // 2, 1), (512, h // 4, 4), (1280, h // 16, args.frames)):
        if side < 2:
            continue
        x, w = randn(batch, channels, side, side), randn(channels, channels, 3, 3)
        flops = 2.0 * batch * channels * channels * 9 * side * side
        with torch.no_grad():
            rates.append(rate(lambda: torch.nn.functional.conv2d(x, w, padding=1), flops))
    return max(rates)


def _profile_table(prof) -> str | None:
    if prof is None:
        return None
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


# --------------------------------------------------------------------------------------------
# Driver


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def run_side(side: str, round_: int, args: argparse.Namespace, work: Path) -> dict:
    while args.min_free_gib and _available_gib() < args.min_free_gib:
        print(f"  waiting: {_available_gib():.1f} GiB available, {args.min_free_gib} needed", flush=True)
        time.sleep(30)
    python = args.original_python if side == "original" else sys.executable
    out = work / f"out_{side}_{round_}.npz"
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--work", str(work), "--out", str(out),
           "--original", str(args.original), "--threads", str(args.threads), "--steps", str(args.steps),
           "--device", args.device, "--dtype", args.dtype, "--seed", str(args.seed), "--size", str(args.size),
           "--frames", str(args.frames)]
    cmd += ["--no-lora"] * args.no_lora + ["--profile"] * args.profile
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{side} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["out"] = str(out)
    return result


def compare(a: Path, b: Path) -> dict:
    import numpy as np

    x, y = np.load(a), np.load(b)
    la, lb = x["latents"].astype(np.float64), y["latents"].astype(np.float64)
    return dict(
        latents_max_abs=float(np.abs(la - lb).max()),
        latents_rel=float(np.linalg.norm(la - lb) / max(np.linalg.norm(lb), 1e-30)),
        generated_max_levels=int(np.abs(x["generated"].astype(int) - y["generated"].astype(int)).max()),
        generated_differing=float((x["generated"] != y["generated"]).mean()),
        composite_max_levels=int(np.abs(x["composite"].astype(int) - y["composite"].astype(int)).max()),
        composite_differing=float((x["composite"] != y["composite"]).mean()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", required=True, help="checkout of lixiaowen-xw/DiffuEraser (its libs/, diffueraser/)")
    parser.add_argument("--original-python", default=None,
                        help="python of the original's environment (diffusers 0.29.2, peft 0.13.2, ...)")
    parser.add_argument("--work", default="/tmp/rrdpo_vs_original", help="folder for weights, inputs and outputs")
    parser.add_argument("--frames", type=int, default=22)
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels (multiple of 8)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="times each side runs, alternating")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="small random networks instead of the released sizes")
    parser.add_argument("--no-lora", action="store_true", help="run without the PCM LoRA")
    parser.add_argument("--profile", action="store_true", help="print each side's top operators (torch.profiler)")
    parser.add_argument("--sides", default="original,ours,ours_stream",
                        help="order within a round. Variants of ours (suffixes combine, e.g. ours_stream_bf16): "
                             "'_stream' loads with load_diffueraser(stream=True) and samples at offload level "
                             "'stream' (block weights read from the file per layer, never resident); '_bf16' "
                             "runs ours in bfloat16 (compared against the float32 original); '_fused' folds the "
                             "PCM LoRA into the weights; '_fast' samples under low_memory(..., fast=True) "
                             "(LoRA folded into streamed weights as they are read, contiguous motion-module "
                             "inputs: float rounding differences only)")
    parser.add_argument("--min-free-gib", type=float, default=13.0,
                        help="wait until this much memory is available before starting a side (0: never wait)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's nominal peak dense TFLOP/s in the run's dtype: also prints the share of it "
                             "reached (the attainable rate is always measured in the run)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        fn = worker_original if args.worker == "original" else worker_ours
        result = fn(args)
        Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
        return
    if not args.original_python:
        parser.error("--original-python is required (the python of the original checkout's environment)")
    if args.size % 8:
        parser.error("--size must be a multiple of 8")
    if args.tiny and args.min_free_gib == 13.0:
        args.min_free_gib = 0
    work = Path(args.work) / ("tiny" if args.tiny else "full")
    prepare(work, args)

    sides = args.sides.split(",")
    for side in sides:
        if side != "original" and not (side.startswith("ours") and set(side.split("_")[1:]) <= {"fused", "stream", "fast", "bf16"}):
            parser.error(f"unknown side {side!r}: 'original', or 'ours' with any of _fused, _stream, _fast, _bf16")
    results: dict[str, list[dict]] = {s: [] for s in sides}
    print(f"{args.frames} frames at {args.size}x{args.size}, {args.steps} TCD steps, "
          f"{'no LoRA' if args.no_lora else 'PCM LoRA'}, {args.device} {args.dtype}, {args.threads} threads, "
          f"{'tiny' if args.tiny else 'full-size'} random weights", flush=True)
    header = (f"{'run':<14}{'load s':>8}{'sample s':>10}" + "".join(f"{c:>12}" for c in COMPONENTS + CPU_FIGURES)
              + f"{'peak GiB':>10}{'attain GF/s':>13}")
    print(header, flush=True)
    for r in range(args.rounds):
        for side in sides:
            res = run_side(side, r, args, work)
            results[side].append(res)
            print(f"{side + ' ' + str(r + 1):<14}{res['load_s']:>8.1f}{res['sample_s']:>10.1f}"
                  + "".join(f"{res[c]:>12.1f}" for c in COMPONENTS + CPU_FIGURES) + f"{res['peak_gib']:>10.2f}"
                  + f"{res['attainable']:>13.1f}", flush=True)
            if res.get("profile"):
                print(res["profile"], flush=True)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    for ours in [s for s in sides if s.startswith("ours")] if "original" in sides else []:
        print(f"\nmedians ({ours} / original):")
        for key in ("load_s", "sample_s", *COMPONENTS, *CPU_FIGURES, "peak_gib"):
            o, u = med("original", key), med(ours, key)
            print(f"  {key:<11} original {o:8.2f}   {ours} {u:8.2f}   ratio {u / o if o else float('nan'):.2f}")
        print(f"  torch: original {results['original'][0]['torch']}, {ours} {results[ours][0]['torch']}")
        diff = compare(Path(results[ours][0]["out"]), Path(results["original"][0]["out"]))
        print(f"output difference, {ours} vs original: " + json.dumps(diff))
    # FLOPs of one run: each frame through BrushNet and the UNet once per step, VAE-encoded twice
    # (prior and condition, on both sides) and decoded once.
    f = count_flops(args, work)
    total = args.frames * (args.steps * (f["brushnet"] + f["unet"]) + 2 * f["vae_encode"] + f["vae_decode"])
    print(f"\nFLOPs per frame: BrushNet {f['brushnet'] / 1e9:.1f} G and motion UNet {f['unet'] / 1e9:.1f} G per step, "
          f"VAE encode {f['vae_encode'] / 1e9:.1f} G, decode {f['vae_decode'] / 1e9:.1f} G; "
          f"{total / 1e12:.2f} TFLOP per run")
    # The attainable rate (measure_peak) is measured in each worker just before it samples. On a
    # shared machine it moves between runs, so the best of them is taken as the device's ceiling.
    rates = [r["attainable"] for side in sides for r in results[side]]
    ceiling = max(rates)
    print(f"  attainable rate ({args.device}, {args.dtype}, {args.threads} threads; best of a matmul and the "
          f"sampler's 3x3 convolution shapes, measured before each run): "
          + ", ".join(f"{r:.0f}" for r in rates) + f" GFLOP/s; ceiling {ceiling:.0f}"
          + (f"; nominal peak given: {args.peak_tflops * 1e3:.0f} GFLOP/s" if args.peak_tflops else ""))
    for side in sides:
        rate = total / med(side, "sample_s") / 1e9
        line = f"  {side}: {rate:.1f} GFLOP/s over the sampling wall time; {100 * rate / ceiling:.1f} % of the ceiling"
        if args.peak_tflops:
            line += f", {100 * rate / (args.peak_tflops * 1e3):.1f} % of the nominal peak"
        print(line)
    if "original" in sides:
        need = total / (0.8 * med("original", "sample_s")) / 1e9
        print(f"  0.8x the original's sampling time at the same FLOPs means {need:.1f} GFLOP/s over the whole "
              f"sampling: {100 * need / ceiling:.1f} % of the ceiling")
    for side in sides:
        if len(results[side]) > 1:
            diff = compare(Path(results[side][0]["out"]), Path(results[side][1]["out"]))
            print(f"output difference, {side} run 1 vs run 2: latents max abs {diff['latents_max_abs']:.3g}")


if __name__ == "__main__":
    main()
