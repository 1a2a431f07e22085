"""Cost of one Region-Reg-DPO training step against its baselines, as ratios measured in one run.

Four ways to take one optimizer step on the same batch of preference pairs (a LoRA of the same
rank on the same spatial-attention projections, AdamW, the same precision):

    sft             plain L2 on the winner only (DiffuEraser's own training loss): one pass
    dpo_copy        Diffusion-DPO as the official recipe runs it: the reference is a separate
                    frozen copy of the UNet (BrushNet is frozen and shared)
    dpo_adapter     Diffusion-DPO with the reference = the same UNet with the LoRA switched off
    region_reg_dpo  this project's trainer step (rrdpo_core.train.pair_step.PairStep): adapter-off
                    reference, three latent zones built from the pixel masks every step,
                    region-weighted DPO + SFT anchor, winner and loser in one batch
    region_reg_dpo_seq  the same with pair_passes="sequential" (winner, then loser, through the
                    trained model; the winner's backward in between)

Printed: median step time and, on CUDA, peak allocated memory of each, and the ratios the issue
sets goals for:

    region terms     time(region_reg_dpo) / time(dpo_adapter)    goal <= 1.05
    memory           peak(region_reg_dpo[_seq]) / peak(dpo_copy) goal <= 0.75

The two region_reg_dpo modes run the trainer's own step code; only the data loading is replaced
by an in-memory synthetic batch (zones and the known-mask channel are still built every step, as
the trainer's batcher does). The baselines use the same noising and adapter. Weights are random
(the cost does not depend on their values).

Usage::

    python3 bench/bench_train_step.py --tiny                        # CPU, tiny model (smoke run)
    python3 bench/bench_train_step.py --frames 22 --size 256        # GPU, released architecture
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rrdpo_core.loss import region_reg_dpo_loss  # noqa: E402
from rrdpo_core.masks import random_mask_sequence  # noqa: E402
from rrdpo_core.conditioning import known_mask_latent  # noqa: E402
from rrdpo_core.lora import adapter_disabled, adapter_parameters  # noqa: E402
from rrdpo_core.region_lora import ADAPTER_NAME, add_region_adapter, remove_region_lora  # noqa: E402
from rrdpo_core.train.config import TrainConfig  # noqa: E402
from rrdpo_core.train.batching import make_pair_batch  # noqa: E402
from rrdpo_core.train.pair_step import PairStep, sd15_alphas_cumprod  # noqa: E402

MODES = ("sft", "dpo_copy", "dpo_adapter", "region_reg_dpo", "region_reg_dpo_seq")


def build_model(tiny: bool, device: torch.device, dtype: torch.dtype):
    from rrdpo_core.models import DiffuEraserModel, packaged_config

    names = ("brushnet_tiny", "unet_main_tiny") if tiny else ("brushnet", "unet_main")
    with torch.device(device):  # build in place: the released architecture is 1.3 B + 0.7 B parameters
        model = DiffuEraserModel.from_configs(packaged_config(names[0]), packaged_config(names[1]))
    return model.to(dtype).eval().requires_grad_(False)


def synthetic_batch(args, text_dim: int, gen: torch.Generator) -> dict:
    b, f, s = args.pairs, args.frames, args.size
    h = s // 8
    holes = torch.stack([random_mask_sequence(f, s, s, seed=int(torch.randint(0, 10**6, (1,), generator=gen)))
                         for _ in range(b)])
    shape = (b, f, 4, h, h)
    return dict(
        winner=torch.randn(shape, generator=gen), loser=torch.randn(shape, generator=gen),
        masked=torch.randn(shape, generator=gen), holes=holes,
        t=torch.randint(0, 1000, (b,), generator=gen), noise=torch.randn(shape, generator=gen),
        text=torch.randn(1, 77, text_dim, generator=gen),
    )


@contextmanager
def swapped_unet(model, unet):
    """The official recipe's reference: run the same BrushNet with a separate UNet copy."""
    own = model.unet
    model.unet = unet
    try:
        yield
    finally:
        model.unet = own


class Step:
    def __init__(self, mode: str, model, args, device: torch.device, amp: torch.dtype | None):
        self.mode, self.model, self.args, self.device, self.amp = mode, model, args, device, amp
        self.ref_unet = None
        if mode == "dpo_copy":  # copied before the adapter exists: the frozen reference model
            self.ref_unet = copy.deepcopy(model.unet)
        add_region_adapter(model.unet, rank=args.rank, lora_alpha=2.0 * args.rank, trainable=True)
        self.params = adapter_parameters(model.unet, ADAPTER_NAME)
        for p in self.params:
            p.data = p.data.float()
        if args.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        self.opt = torch.optim.AdamW(self.params, lr=1e-6)
        self.ab = sd15_alphas_cumprod()
        self.pair_step = None
        if mode.startswith("region_reg_dpo"):
            cfg = TrainConfig(pair_passes="sequential" if mode.endswith("_seq") else "joint",
                              gradient_checkpointing=args.gradient_checkpointing, rank=args.rank)
            self.pair_step = PairStep(model, cfg, device, amp, torch.zeros(1, 77, model.cross_attention_dim))

    def close(self) -> None:
        if self.args.gradient_checkpointing:
            self.model.unet.disable_gradient_checkpointing()
        remove_region_lora(self.model)
        self.ref_unet = None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()

    def __call__(self, batch: dict) -> float:
        if self.pair_step is not None:
            return self.ours(batch)
        dev, model = self.device, self.model
        b, f = batch["winner"].shape[:2]
        h, w = batch["winner"].shape[-2:]
        t, noise = batch["t"], batch["noise"]
        ab = self.ab[t].view(b, 1, 1, 1, 1)
        x_w = ab.sqrt() * batch["winner"] + (1 - ab).sqrt() * noise
        cond = torch.cat([batch["masked"], known_mask_latent(batch["holes"].float(), (h, w))], dim=2)
        zones = [torch.ones(1, 1, 1, 1, 1, device=dev)]
        if self.mode == "sft":
            lat, cnd, ts, k = x_w, cond, t, 1
        else:
            x_l = ab.sqrt() * batch["loser"] + (1 - ab).sqrt() * noise
            lat, cnd, ts, k = torch.cat([x_w, x_l]), torch.cat([cond, cond]), torch.cat([t, t]), 2
        lat = lat.reshape(k * b * f, 4, h, w).to(dev)
        cnd = cnd.reshape(k * b * f, 5, h, w).to(dev)
        ts, target, text = ts.to(dev), noise.to(dev), batch["text"].to(dev)
        with self.autocast():
            ref = None
            if self.mode == "dpo_copy":
                with torch.no_grad(), swapped_unet(model, self.ref_unet):
                    ref = model.predict_eps(lat, ts, text, cnd, f)
            elif self.mode == "dpo_adapter":
                with torch.no_grad(), adapter_disabled(model.unet, ADAPTER_NAME):
                    ref = model.predict_eps(lat, ts, text, cnd, f)
            pred = model.predict_eps(lat, ts, text, cnd, f)
        pred = pred.float().reshape(k, b, f, 4, h, w)
        if self.mode == "sft":
            loss = torch.nn.functional.mse_loss(pred[0], target)
        else:
            ref = ref.float().reshape(k, b, f, 4, h, w)
            # Diffusion-DPO: one zone, no anchor (diffusers convention)
            out = region_reg_dpo_loss(pred[0], pred[1], ref[0], ref[1], target, target, zones,
                                      alpha=(1.0,), rho=(0.0,), beta=1000.0)
            loss = out.loss
        loss.backward()
        return self.update(loss)

    def update(self, loss: torch.Tensor) -> float:
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def ours(self, batch: dict) -> float:
        pair = make_pair_batch(batch["winner"], batch["loser"], batch["masked"], batch["holes"], batch["t"],
                               batch["noise"], band_px=8, device=self.device)
        self.pair_step.text = batch["text"].to(self.device)
        out, _, ctx = self.pair_step.forward(pair)
        self.pair_step.backward(out, ctx, 1.0)
        return self.update(out.loss)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(mode: str, model, args, device, amp, batches) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step = Step(mode, model, args, device, amp)
    times = []
    try:
        for i in range(args.warmup + args.steps):
            sync(device)
            t0 = time.perf_counter()
            step(batches[i % len(batches)])
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    finally:
        step.close()
        del step
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_bytes": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random model (CPU smoke run)")
    p.add_argument("--frames", type=int, default=22)
    p.add_argument("--size", type=int, default=256, help="frame side in pixels (latents are size/8)")
    p.add_argument("--pairs", type=int, default=1, help="preference pairs per step")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                   help="weights/autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--repeat", type=int, default=1, help="run every mode this many times (interleaved); the "
                   "best median is kept, which damps drift and noise of a shared machine")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    amp = None if dtype == torch.float32 else dtype
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(args.tiny, device, dtype)
    gen = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(args, model.cross_attention_dim, gen) for _ in range(2)]
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"{'tiny' if args.tiny else 'released'} architecture, {name}, {args.pairs} pair(s) x {args.frames} frames "
          f"x {args.size}px, LoRA rank {args.rank}, gradient checkpointing {args.gradient_checkpointing}; "
          f"model built in {time.perf_counter() - t0:.1f}s", flush=True)

    results: dict[str, dict] = {}
    for _ in range(args.repeat):
        for mode in args.modes.split(","):
            r = measure(mode, model, args, device, amp, batches)
            if mode in results:
                old = results[mode]
                r = {"median_s": min(r["median_s"], old["median_s"]), "min_s": min(r["min_s"], old["min_s"]),
                     "peak_bytes": max(r["peak_bytes"] or 0, old["peak_bytes"] or 0) or None}
            results[mode] = r
    for mode, r in results.items():
        mem = f"{r['peak_bytes'] / 2**30:8.2f} GiB" if r["peak_bytes"] is not None else "     n/a"
        print(f"  {mode:18s} median {r['median_s'] * 1000:9.1f} ms   min {r['min_s'] * 1000:9.1f} ms   peak {mem}",
              flush=True)

    def ratio(a, b, key):
        if a in results and b in results and results[a][key] and results[b][key]:
            return results[a][key] / results[b][key]
        return None

    ratios = {
        "time region_reg_dpo / dpo_adapter (region terms, goal <= 1.05)": ratio("region_reg_dpo", "dpo_adapter", "median_s"),
        "time region_reg_dpo / dpo_copy": ratio("region_reg_dpo", "dpo_copy", "median_s"),
        "time region_reg_dpo / sft": ratio("region_reg_dpo", "sft", "median_s"),
        "time dpo_adapter / dpo_copy": ratio("dpo_adapter", "dpo_copy", "median_s"),
        "time region_reg_dpo_seq / region_reg_dpo": ratio("region_reg_dpo_seq", "region_reg_dpo", "median_s"),
        "peak region_reg_dpo / dpo_copy (goal <= 0.75)": ratio("region_reg_dpo", "dpo_copy", "peak_bytes"),
        "peak region_reg_dpo_seq / dpo_copy (goal <= 0.75)": ratio("region_reg_dpo_seq", "dpo_copy", "peak_bytes"),
        "peak dpo_adapter / dpo_copy": ratio("dpo_adapter", "dpo_copy", "peak_bytes"),
        "peak region_reg_dpo / sft": ratio("region_reg_dpo", "sft", "peak_bytes"),
    }
    for k, v in ratios.items():
        print(f"  {k:62s} {'n/a (needs CUDA)' if v is None else f'{v:.3f}'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": str(device), "results": results,
                                               "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
