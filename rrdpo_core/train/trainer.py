"""The Region-Reg-DPO training loop (spec/METHOD.md §3-§5).

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` preference pairs per process.
For each pair (winner = ground truth, loser = a model's completion, same mask) the loop draws one
timestep ``t ~ U{lo..hi}`` per clip and one noise tensor, shared by winner and loser; both get the
same BrushNet conditioning (masked-GT latents + known-mask), and are stacked into one batch:

* reference pass: the same UNet with only the ``"region_dpo"`` adapter switched off (a PCM
  adapter, if loaded, stays on), under ``no_grad``: no second copy of the UNet in memory;
* policy pass: with the adapter, with gradients;
* :func:`rrdpo_core.loss.region_reg_dpo_loss` on latent-resolution zones.

Trained: only the LoRA (fp32 master weights). AdamW, LR warm-up/schedule (diffusers'
``get_scheduler``), gradient accumulation, clipping, autocast mixed precision (fp16 with a grad
scaler, or bf16), gradient checkpointing.

Reproducibility: which pairs a micro-batch takes comes from seeded epoch permutations, and every
random draw about one pair (frame crop, timestep, noise) from a generator seeded by the pair's
position in the run; a checkpoint stores the LoRA, optimizer, scheduler, scaler and RNG state, so
a resumed run continues bit-exactly.

Data parallel: under ``accelerate launch`` (``WORLD_SIZE > 1``) every process takes its own
pairs; LoRA gradients are averaged across processes before clipping, so all processes keep
identical weights (the model is not wrapped in DDP: only the small LoRA gradients are reduced).
"""
from __future__ import annotations

import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import Cancelled
from ..progress import CancelFn, ProgressFn
from ..loss import region_reg_dpo_loss, zone_errors
from ..conditioning import condition_channels, encode_frames, known_mask_latent, masked_image
from ..pairs.format import LATENT_KEYS, PairDataset
from ..rng import derive_seed
from ..region_lora import (
    ADAPTER_NAME,
    RegionLoraInfo,
    adapter_disabled,
    add_region_adapter,
    base_fingerprint,
    load_region_adapter_weights,
    load_region_lora,
    remove_region_lora,
    save_region_lora,
    trainable_lora_parameters,
)
from ..zones import LATENT_FACTOR, ZONE_NAMES, decompose_zones
from .checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    latest_good_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    restore_rng_state,
    write_checkpoint,
)
from .config import TrainConfig
from .logging import JsonlLog
from .plots import render_plots

__all__ = ["TrainResult", "NonFiniteLossError", "train_region_dpo", "run_training", "sd15_alphas_cumprod",
           "PairBatch", "PairStep", "make_pair_batch"]

LOG_NAME = "train_log.jsonl"
PLOTS_DIR = "plots"


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient) became NaN/inf; the run stopped without writing a checkpoint."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    lora_path: Path
    log_path: Path
    plots: dict[str, Path]
    diagnostics: dict[str, Any]
    steps: int
    checkpoint: Path | None
    out_dir: Path
    resumed_from: int = 0


def sd15_alphas_cumprod() -> torch.Tensor:
    """ᾱ_t of the SD1.5 DDPM training schedule (scaled_linear 0.00085..0.012, 1000 steps), float32."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return sched.alphas_cumprod.float().clone()


# --------------------------------------------------------------------------------------------
# Processes


class _Dist:
    """Rank, world size and collectives; a single process needs no process group at all."""

    def __init__(self, device: torch.device | None, want_cpu: bool):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=want_cpu)
            self.rank, self.world = self.state.process_index, self.state.num_processes
            self.device = self.state.device
        else:
            self.state = None
            self.rank = 0
            if device is None:
                device = torch.device("cpu" if want_cpu or not torch.cuda.is_available() else "cuda")
            self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        if self.state is not None:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
            t /= self.world
        return t

    def any(self, flag: bool) -> bool:
        if self.state is None:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        if self.state is None:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])


# --------------------------------------------------------------------------------------------
# Batches


@dataclass
class PairBatch:
    winner: torch.Tensor  # (B, F, 4, h, w) clean latents
    loser: torch.Tensor
    masked: torch.Tensor  # (B, F, 4, h, w) masked-GT latents
    known: torch.Tensor  # (B, F, 1, h, w) 1 = known
    zones: list[torch.Tensor]  # 3 x (B, F, 1, h, w)
    timesteps: torch.Tensor  # (B,) one per clip, shared by winner and loser
    noise: torch.Tensor  # (B, F, 4, h, w) shared by winner and loser
    indices: list[int]


class _Batcher:
    """Which pairs each micro-batch of each process sees, and their tensors.

    Micro-batch ``g`` of the whole run covers the global positions ``[g*W*B, (g+1)*W*B)`` of an
    endless sequence of epoch permutations (``W`` processes of ``B`` pairs); process ``r`` takes
    ``B`` consecutive positions. Everything random about one pair (frame crop, timestep, noise)
    comes from a generator seeded by ``(seed, position)``, so the run does not depend on how the
    global batch is split into processes, and resuming draws exactly what it would have drawn.
    """

    def __init__(self, dataset: PairDataset, cfg: TrainConfig, rank: int, world: int, vae: Any, max_frames: int,
                 device: torch.device | None = None):
        self.device = device
        if len(dataset) == 0:
            raise ValueError(f"{dataset.root} holds no preference pairs; build some with rrdpo_core.pairs")
        self.ds, self.cfg, self.rank, self.world, self.vae = dataset, cfg, rank, world, vae
        self.latents = dataset.has_latents
        if not self.latents and vae is None:
            raise ValueError(
                f"{dataset.root} stores no latents, so training needs the VAE to encode the frames: pass vae= "
                f"(or set vae_path in the config), or rebuild the pairs with store_latents=True"
            )
        clip_frames = min(e.num_frames for e in dataset.entries)
        self.frames = cfg.num_frames or clip_frames
        if self.frames > clip_frames:
            raise ValueError(f"num_frames={cfg.num_frames} but the shortest stored clip has {clip_frames} frames")
        if self.frames > max_frames:
            raise ValueError(
                f"clips of {self.frames} frames exceed the motion modules' {max_frames} positions; set num_frames "
                f"to at most {max_frames} (DiffuEraser trains on 22)"
            )
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "epoch", epoch))
            self._perms = {epoch: torch.randperm(len(self.ds), generator=g).tolist()}
        return self._perms[epoch]

    def positions(self, global_micro: int) -> list[int]:
        b = self.cfg.batch_size
        first = (global_micro * self.world + self.rank) * b
        return list(range(first, first + b))

    def indices(self, global_micro: int) -> list[int]:
        return [self._perm(pos // len(self.ds))[pos % len(self.ds)] for pos in self.positions(global_micro)]

    def batch(self, global_micro: int) -> PairBatch:
        lo, hi = self.cfg.timestep_range
        idx = self.indices(global_micro)
        ws, ls, ms, holes, ts, noises = [], [], [], [], [], []
        for pos, i in zip(self.positions(global_micro), idx):
            gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "pair", pos))
            keys = (*LATENT_KEYS, "mask") if self.latents else ("winner", "loser", "mask")
            d = self.ds.load(i, keys)
            t_all = int(d["mask"].shape[0])
            s = int(torch.randint(0, t_all - self.frames + 1, (1,), generator=gen))
            sl = slice(s, s + self.frames)
            hole = d["mask"][sl].float()
            if self.latents:
                w, l, m = (d[k][sl].float() for k in LATENT_KEYS)
            else:
                w01, l01 = d["winner"][sl].float() / 255.0, d["loser"][sl].float() / 255.0
                w, l, m = (encode_frames(self.vae, x, gen) for x in (w01, l01, masked_image(w01, hole)))
            ws.append(w), ls.append(l), ms.append(m), holes.append(hole)
            ts.append(torch.randint(lo, hi + 1, (1,), generator=gen))
            noises.append(torch.randn(w.shape, generator=gen))
        return make_pair_batch(torch.stack(ws), torch.stack(ls), torch.stack(ms), torch.stack(holes),
                               torch.cat(ts), torch.stack(noises), self.cfg.band_px, idx, self.device)


def make_pair_batch(winner: torch.Tensor, loser: torch.Tensor, masked: torch.Tensor, holes: torch.Tensor,
                    timesteps: torch.Tensor, noise: torch.Tensor, band_px: int,
                    indices: list[int] | None = None, device: torch.device | str | None = None) -> PairBatch:
    """A :class:`PairBatch` from clean latents ``(B, F, 4, h, w)`` and pixel hole masks ``(B, F, H, W)``.

    Builds BrushNet's known-mask channel and the three zones at latent resolution (METHOD §1).
    The full-resolution part (the 8x8 max-pool) runs on ``device`` when given (a GPU does it in
    no time; on the CPU it is most of the per-step cost of the zones); the band dilation then
    runs on the small latent mask, which gives exactly ``decompose_zones(holes, band_px,
    latent=True)``.
    """
    h, w = winner.shape[-2:]
    holes = holes.to(device) if device is not None else holes
    pixel = (holes > 0.5).to(torch.float32)
    lead = pixel.shape[:-2]
    flat = pixel.reshape(-1, 1, *pixel.shape[-2:])
    hole_lat = F.max_pool2d(flat, LATENT_FACTOR, LATENT_FACTOR, ceil_mode=True)
    hole_lat = hole_lat.reshape(*lead, *hole_lat.shape[-2:])
    if tuple(hole_lat.shape[-2:]) != (h, w):
        raise ValueError(
            f"latents are {h}x{w} but the {tuple(holes.shape[-2:])} masks give {tuple(hole_lat.shape[-2:])} "
            f"latent zones; the pairs' frames must be 8x their latents"
        )
    band_lat = max(1, round(band_px / LATENT_FACTOR)) if band_px > 0 else 0  # METHOD §1: k_lat
    zones = decompose_zones(hole_lat, band_px=band_lat, latent=False)
    return PairBatch(
        winner=winner, loser=loser, masked=masked, known=known_mask_latent(pixel, (h, w)),
        zones=[z.unsqueeze(2) for z in zones], timesteps=timesteps, noise=noise,
        indices=list(indices) if indices is not None else [],
    )


# --------------------------------------------------------------------------------------------
# The SFT-only objective (no reference pass)


@dataclass
class _SFTOutput:
    loss: torch.Tensor
    win_err: torch.Tensor  # (K,)

    def scalars(self) -> dict[str, float]:
        out = {"loss": float(self.loss.detach()), "sft": float(self.loss.detach())}
        for k, name in enumerate(ZONE_NAMES):
            out[f"e_{name}_model"] = float(self.win_err[k])
        return out


def _sft_loss(pred: torch.Tensor, target: torch.Tensor, zones: list[torch.Tensor], rho: tuple[float, ...]) -> _SFTOutput:
    ew = zone_errors(target, pred, zones)  # (B, K), the same reduction as the DPO loss
    r = torch.tensor(rho, dtype=ew.dtype, device=ew.device)
    return _SFTOutput(loss=(ew * r).sum(1).mean(), win_err=ew.detach().mean(0))


class PairStep:
    """One micro-batch of preference pairs through the model: noising, the reference pass (adapter
    off), the policy pass, the loss (:func:`rrdpo_core.loss.region_reg_dpo_loss`) and its backward.

    Used by the trainer and by ``bench/bench_train_step.py``. ``any_rank`` turns a local
    "prediction not finite" flag into an all-process one (so every process stops together).
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None,
                 text: torch.Tensor, scaler: torch.amp.GradScaler | None = None,
                 any_rank: Callable[[bool], bool] = bool):
        self.model, self.cfg, self.device, self.amp_dtype = model, cfg, device, amp_dtype
        self.text = text.to(device)
        self.scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
        self.any_rank = any_rank
        self.alphas_cumprod = sd15_alphas_cumprod()
        self.dpo = cfg.objective == "region_reg_dpo"
        self.sequential = cfg.pair_passes == "sequential"

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def forward(self, batch: PairBatch) -> tuple[Any, torch.Tensor, dict[str, Any]]:
        """Reference and policy predictions and the loss of one micro-batch (no backward yet).

        Returns ``(output or None if a prediction is not finite, timesteps, context for backward)``.
        With ``pair_passes="sequential"`` the loser's policy prediction here is taken without
        gradients; :meth:`backward` runs it again with them after the winner's backward, so only
        one member of the pair holds activations at a time.
        """
        cfg, dev = self.cfg, self.device
        b, f = batch.winner.shape[:2]
        h, w = batch.winner.shape[-2:]
        t, noise = batch.timesteps, batch.noise
        ab = self.alphas_cumprod[t].view(b, 1, 1, 1, 1)
        cond = condition_channels(batch.masked.to(dev), batch.known).reshape(b * f, -1, h, w)  # (B*F, 5, h, w)
        x_w = (ab.sqrt() * batch.winner + (1 - ab).sqrt() * noise).reshape(b * f, 4, h, w).to(dev)
        ts = t.to(dev)
        target = noise.to(dev)
        zones = [z.to(dev) for z in batch.zones]
        text, scale = self.text, cfg.brushnet_scale

        def predict(x: torch.Tensor, c: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
            return self.model.predict_eps(x, tt, text, c, f, brushnet_scale=scale)

        ctx: dict[str, Any] = {}
        ref = None
        with self._autocast():
            if not self.dpo:
                pred = predict(x_w, cond, ts)[None]
            else:
                x_l = (ab.sqrt() * batch.loser + (1 - ab).sqrt() * noise).reshape(b * f, 4, h, w).to(dev)
                both, cond2, ts2 = torch.cat([x_w, x_l]), torch.cat([cond, cond]), torch.cat([ts, ts])
                if self.sequential:
                    with torch.no_grad(), adapter_disabled(self.model.unet, ADAPTER_NAME):
                        ref = torch.stack([predict(x_w, cond, ts), predict(x_l, cond, ts)])
                    with torch.no_grad():
                        pred_l = predict(x_l, cond, ts)
                    pred = torch.stack([predict(x_w, cond, ts), pred_l])
                    ctx.update(x_l=x_l, cond=cond, ts=ts, predict=predict)
                else:
                    with torch.no_grad(), adapter_disabled(self.model.unet, ADAPTER_NAME):
                        ref = predict(both, cond2, ts2)
                    pred = predict(both, cond2, ts2)
        k = 2 if self.dpo else 1
        pred = pred.float().reshape(k, b, f, 4, h, w)
        bad = not bool(torch.isfinite(pred.detach()).all())
        if ref is not None:
            ref = ref.float().reshape(k, b, f, 4, h, w)
            bad = bad or not bool(torch.isfinite(ref).all())
        if self.any_rank(bad):
            return None, t, ctx
        if self.dpo:
            out = region_reg_dpo_loss(pred[0], pred[1], ref[0], ref[1], target, target, zones,
                                      alpha=cfg.alpha, rho=cfg.rho, beta=cfg.beta, rho_mode=cfg.rho_mode)
        else:
            out = _sft_loss(pred[0], target, zones, cfg.rho)
        ctx.update(target=target, zones=zones, shape=(b, f, 4, h, w))
        return out, t, ctx

    def backward(self, out: Any, ctx: dict[str, Any], weight: float) -> None:
        """Gradients of ``weight * out.loss`` into the LoRA parameters."""
        self.scaler.scale(out.loss * weight).backward()
        if not (self.dpo and self.sequential):
            return
        # out.loss saw the loser's prediction as a constant, so the pass above gave the winner's
        # share of the gradient. The loser's share: dL/dpred_l = -DGR * d(sum_r alpha_r e_r)/dpred_l
        # per pair (DGR detached, as softplus'(beta s) * beta is).
        with self._autocast():
            pred_l = ctx["predict"](ctx["x_l"], ctx["cond"], ctx["ts"])
        pred_l = pred_l.float().reshape(ctx["shape"])
        alpha = torch.tensor(self.cfg.alpha, dtype=torch.float32, device=pred_l.device)
        e_l = zone_errors(ctx["target"], pred_l, ctx["zones"])  # (B, K)
        surrogate = -(out.dgr.to(e_l.dtype) * (e_l * alpha).sum(1)).mean()
        self.scaler.scale(surrogate * weight).backward()


# --------------------------------------------------------------------------------------------
# The run


def _as_config(config: TrainConfig | Mapping[str, Any] | None, **overrides: Any) -> TrainConfig:
    if config is None:
        cfg = TrainConfig()
    elif isinstance(config, TrainConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = TrainConfig.from_dict(config)
    else:
        raise TypeError(f"config: expected a TrainConfig or a dict, got {type(config).__name__}")
    return cfg.replace(**overrides) if overrides else cfg


def _resolve_precision(cfg: TrainConfig, model_dtype: torch.dtype, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision."""
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(model_dtype, "no")
    if mp == "fp16" and device.type == "cpu":
        raise ValueError("mixed_precision='fp16' needs a GPU; use 'bf16' or 'no' on the CPU (or load the model in fp32)")
    return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mp]


def _normal_tensors_(module: nn.Module) -> None:
    """Replace inference tensors (a model loaded inside ``torch.inference_mode()``, as ComfyUI
    does) by normal ones: autograd cannot save inference tensors for backward. Must run with
    inference mode off."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_inference():
                m._parameters[name] = nn.Parameter(p.clone(), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_inference():
                m._buffers[name] = b.clone()


class _Trainer:
    def __init__(self, model: nn.Module, dataset: PairDataset, text_embeds: torch.Tensor, cfg: TrainConfig,
                 out_dir: Path, vae: Any, progress: ProgressFn | None, cancel: CancelFn | None,
                 on_log: Callable[[dict[str, Any]], None] | None):
        self.model, self.ds, self.cfg, self.out_dir, self.vae = model, dataset, cfg, out_dir, vae
        self.progress, self.cancel, self.on_log = progress, cancel, on_log
        self.unet: nn.Module = model.unet
        want_cpu = cfg.device == "cpu"
        device = torch.device(cfg.device) if cfg.device else None
        if device is None and getattr(model, "device", None) is not None and torch.device(model.device).type != "cpu":
            device = torch.device(model.device)  # a single process trains where the caller put the model
        self.dist = _Dist(device, want_cpu)
        self.device = self.dist.device
        self.amp_dtype = _resolve_precision(cfg, model.dtype, self.device)
        self.text = text_embeds.detach().clone().to(self.device)
        self.log = JsonlLog(out_dir / LOG_NAME)
        self.dpo = cfg.objective == "region_reg_dpo"
        self._restore: list[Callable[[], None]] = []
        self.last_record: dict[str, Any] = {}

    # -- set-up / tear-down ------------------------------------------------------------------
    def setup(self) -> None:
        model, unet, cfg = self.model, self.unet, self.cfg
        _normal_tensors_(model)
        if getattr(model, "device", self.device) != self.device:
            old = model.device
            model.to(self.device)
            self._restore.append(lambda: model.to(old))
        flags = {id(p): p.requires_grad for p in model.parameters()}
        model.requires_grad_(False)
        self._restore.append(lambda: [p.requires_grad_(flags.get(id(p), False)) for p in model.parameters()])
        self.fingerprint = base_fingerprint(unet)
        # The adapter's A matrices are drawn from a CPU generator seeded by the run's seed, so every
        # process (and every device) starts from the same LoRA; B = 0 makes its output exactly 0.
        self.targets = add_region_adapter(unet, rank=cfg.rank, lora_alpha=cfg.lora_alpha, temporal=cfg.temporal,
                                          adapter_name=ADAPTER_NAME, trainable=True)
        self._restore.append(lambda: remove_region_lora(unet, ADAPTER_NAME))
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "lora-init"))
        with torch.no_grad():
            for name, p in unet.named_parameters():
                if f".lora_A.{ADAPTER_NAME}." in name:
                    w = torch.empty(p.shape, dtype=torch.float32)
                    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)  # peft's default A init
                    p.data = w.to(self.device)
                elif f".lora_B.{ADAPTER_NAME}." in name:
                    p.data = torch.zeros(p.shape, dtype=torch.float32, device=self.device)
        self.params = trainable_lora_parameters(unet, ADAPTER_NAME)
        if cfg.gradient_checkpointing and hasattr(unet, "enable_gradient_checkpointing"):
            was = bool(getattr(unet, "is_gradient_checkpointing", False))
            unet.enable_gradient_checkpointing()
            if not was:
                self._restore.append(unet.disable_gradient_checkpointing)
        self.batcher = _Batcher(self.ds, cfg, self.dist.rank, self.dist.world, self.vae,
                                int(getattr(model, "max_frames", 32)), self.device)
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, betas=cfg.adam_betas,
                                           eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        from diffusers.optimization import get_scheduler

        name = cfg.lr_schedule
        if name == "constant" and cfg.warmup_steps > 0:
            name = "constant_with_warmup"
        self.scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=cfg.max_steps)
        # A modest initial scale: the SFT anchor (rho ~ 100) makes the loss large, and the default
        # 2**16 would overflow fp16 and skip the first several updates.
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0**10,
                                           enabled=self.amp_dtype == torch.float16)
        self.pair_step = PairStep(model, cfg, self.device, self.amp_dtype, self.text, self.scaler, self.dist.any)

    def teardown(self) -> None:
        for fn in reversed(self._restore):
            try:
                fn()
            except Exception:  # pragma: no cover - best effort; the original error matters more
                pass
        self._restore.clear()

    # -- state ---------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "trajectory": self.cfg.trajectory(),
            "world_size": self.dist.world,
            "pairs": self.ds.fingerprint(),
            "num_pairs": len(self.ds),
            "max_steps": self.cfg.max_steps,
            "lr_schedule": self.cfg.lr_schedule,
        }

    def lora_info(self, steps: int) -> RegionLoraInfo:
        cfg = self.cfg
        return RegionLoraInfo(
            rank=cfg.rank, lora_alpha=cfg.lora_alpha,
            targets={"spatial": True, "temporal": bool(cfg.temporal), "modules": len(self.targets)},
            alpha=cfg.alpha if self.dpo else (0.0, 0.0, 0.0), rho=cfg.rho, beta=cfg.beta, band_px=cfg.band_px,
            rho_mode=cfg.rho_mode, steps=steps, fingerprint=self.fingerprint,
            extra={"objective": cfg.objective, "learning_rate": cfg.learning_rate, "seed": cfg.seed,
                   "pairs": self.ds.fingerprint(), "num_frames": self.batcher.frames},
        )

    def save_checkpoint(self, steps: int) -> Path | None:
        rng = self.dist.gather(capture_rng_state(self.device))
        path = None
        if self.dist.is_main:
            path = write_checkpoint(
                self.out_dir, steps,
                write_lora=lambda p: save_region_lora(p, self.unet, self.lora_info(steps), ADAPTER_NAME),
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {}, rng=rng, state=self._state(),
            )
            prune_checkpoints(self.out_dir, self.cfg.keep_checkpoints)
        self.dist.barrier()
        return path

    def resume(self) -> int:
        cfg = self.cfg
        found = list_checkpoints(self.out_dir)
        if cfg.resume == "never":
            if found:
                raise ValueError(
                    f"{self.out_dir} already holds a training run (checkpoints up to step {found[-1][0]}); "
                    f"use another out_dir, or resume='auto' to continue it"
                )
            path = None
        elif cfg.resume == "auto":
            path = latest_good_checkpoint(self.out_dir)  # skips (and names) damaged newer checkpoints
        else:
            path = Path(cfg.resume)
        if path is None:
            if self.dist.is_main:
                self.log.reset()
                prune_checkpoints(self.out_dir, cfg.keep_checkpoints)
            self.dist.barrier()
            return 0
        ck = read_checkpoint(path)
        old, new = ck.state.get("trajectory", {}), cfg.trajectory()
        diff = sorted(k for k in new if old.get(k) != new[k])
        if cfg.lr_schedule != "constant" and ck.state.get("max_steps") != cfg.max_steps:
            diff.append("max_steps (it shapes the LR schedule)")
        if diff:
            raise ValueError(
                f"cannot resume from {path}: these settings differ from the checkpoint's: {diff}. Use the same "
                f"settings to continue bit-exactly, or start a new run in another out_dir"
            )
        if ck.state.get("world_size") != self.dist.world:
            raise ValueError(
                f"cannot resume from {path}: it was written by {ck.state.get('world_size')} process(es), this run has "
                f"{self.dist.world}; the data order depends on it. Launch with the same number of processes"
            )
        if ck.state.get("pairs") != self.ds.fingerprint():
            raise ValueError(
                f"cannot resume from {path}: the preference pairs changed since it was written (it saw "
                f"{ck.state.get('num_pairs')} pairs, the folder now holds {len(self.ds)}); use the same pairs"
            )
        lora = load_region_lora(ck.lora_path)
        load_region_adapter_weights(self.unet, lora.state_dict, ADAPTER_NAME)
        self.optimizer.load_state_dict(ck.optimizer)
        self.scheduler.load_state_dict(ck.scheduler)
        if ck.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(ck.scaler)
        restore_rng_state(ck.rng[min(self.dist.rank, len(ck.rng) - 1)], self.device)
        if self.dist.is_main:
            self.log.truncate_after(ck.step)
        self.dist.barrier()
        return ck.step

    # -- one step ------------------------------------------------------------------------------
    def forward(self, batch: "PairBatch"):
        return self.pair_step.forward(batch)

    def backward(self, out: Any, ctx: dict[str, Any], weight: float) -> None:
        self.pair_step.backward(out, ctx, weight)

    def _nonfinite(self, step: int, what: str) -> NonFiniteLossError:
        last = latest_checkpoint(self.out_dir)
        where = (f"the last good checkpoint is {last} (step {read_checkpoint(last).step}); resume from it"
                 if last else "no checkpoint had been written yet")
        if self.dist.is_main:
            self.log.write({"step": step, "error": f"non-finite {what}"})
        return NonFiniteLossError(
            f"training stopped at step {step}: the {what} is NaN or infinite. Nothing was saved for this step; "
            f"{where}. Lower learning_rate (now {self.cfg.learning_rate}) or beta (now {self.cfg.beta}), or use "
            f"bf16 instead of fp16"
        )

    def _check_cancel(self, steps_done: int, last_saved: int) -> None:
        if self.cancel is None or not self.cancel():
            return
        path = self.save_checkpoint(steps_done) if steps_done > last_saved else None
        where = f"; a checkpoint of step {steps_done} is in {path}" if path else ""
        raise Cancelled(f"training cancelled after {steps_done} step(s){where}; run again with resume='auto' to continue")

    def _save_on_stop(self, steps_done: int, last_saved: int) -> None:
        """Keep the finished steps when the run is stopped from outside our cancel poll.

        ComfyUI raises its interrupt from the progress hook (and clears the flag ``cancel`` reads),
        so the poll before the next step never sees it; this saves from the exception path instead.
        Only in a single process: in a distributed run the other ranks would wait at the barrier.
        """
        if steps_done <= last_saved or self.dist.world > 1:
            return
        try:
            self.save_checkpoint(steps_done)
        except Exception as err:  # never hide the original exception behind a failed save
            warnings.warn(f"could not save a checkpoint of step {steps_done} on stop: {err}")

    def _sync_grads(self) -> None:
        if self.dist.world <= 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.mean_(flat)
        offset = 0
        for p, g in zip(self.params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        tsum = 0.0
        for micro in range(cfg.grad_accum):
            batch = self.batcher.batch(step * cfg.grad_accum + micro)
            out, t, ctx = self.forward(batch)
            if out is None or self.dist.any(not bool(torch.isfinite(out.loss.detach()))):
                raise self._nonfinite(step, "loss" if out is not None else "model output")
            self.backward(out, ctx, 1.0 / cfg.grad_accum)
            del ctx
            for key, v in out.scalars().items():
                sums[key] = sums.get(key, 0.0) + v / cfg.grad_accum
            tsum += float(t.float().mean()) / cfg.grad_accum
        self._sync_grads()
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        skipped = False
        if not math.isfinite(grad_norm):
            if not self.scaler.is_enabled():
                raise self._nonfinite(step, "gradient")
            skipped = True  # fp16 overflow: the scaler skips this update and lowers its scale
        lr = float(self.scheduler.get_last_lr()[0])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        keys = sorted(sums)
        vec = torch.tensor([sums[k] for k in keys] + [tsum], dtype=torch.float64, device=self.device)
        vec = self.dist.mean_(vec).cpu().tolist()
        record: dict[str, Any] = {"step": step, **dict(zip(keys, vec[:-1]))}
        with torch.no_grad():
            lora_norm = float(torch.sqrt(sum((p.detach().float() ** 2).sum() for p in self.params)))
        record.update(
            timestep_mean=vec[-1], lr=lr, grad_norm=grad_norm, lora_norm=lora_norm, skipped=skipped,
            pairs_seen=(step + 1) * cfg.grad_accum * cfg.batch_size * self.dist.world,
            seconds=time.perf_counter() - t0,
        )
        return record

    # -- loop ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        start = self.resume()
        last_saved = start
        total = cfg.max_steps
        if self.progress is not None:
            self.progress(min(start, total), total)
        ckpt = latest_checkpoint(self.out_dir) if start else None
        for step in range(start, total):
            self._check_cancel(step, last_saved)
            try:
                record = self.step(step)
            except NonFiniteLossError:
                raise
            except BaseException:
                # Stopped inside a step (before its update, which ends the step): `step` steps are done.
                self._save_on_stop(step, last_saved)
                raise
            self.last_record = record
            if self.dist.is_main:
                self.log.write(record)
                if self.on_log is not None:
                    self.on_log(dict(record))
            done = step + 1
            if done == total or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                ckpt = self.save_checkpoint(done) or ckpt
                last_saved = done
            if self.dist.is_main and cfg.plots and cfg.plot_every and done % cfg.plot_every == 0 and done != total:
                render_plots(self.log.records(), self.out_dir / PLOTS_DIR, beta=cfg.beta)
            if self.progress is not None:
                try:
                    self.progress(done, total)
                except BaseException:  # ComfyUI's progress hook raises its interrupt here
                    self._save_on_stop(done, last_saved)
                    raise
        if start >= total and ckpt is None:
            ckpt = latest_checkpoint(self.out_dir)
        lora_path = self.out_dir / cfg.lora_name
        plots: dict[str, Path] = {}
        if self.dist.is_main:
            save_region_lora(lora_path, self.unet, self.lora_info(max(start, total)), ADAPTER_NAME)
            records = self.log.records()
            if cfg.plots:
                plots = render_plots(records, self.out_dir / PLOTS_DIR, beta=cfg.beta)
            if not self.last_record and records:
                self.last_record = records[-1]
        self.dist.barrier()
        return TrainResult(
            lora_path=lora_path, log_path=self.log.path, plots=plots, diagnostics=dict(self.last_record),
            steps=max(start, total), checkpoint=ckpt, out_dir=self.out_dir, resumed_from=start,
        )


def run_training(
    model: nn.Module,
    dataset: PairDataset | str | os.PathLike,
    text_embeds: torch.Tensor | None,
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    vae: Any = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a Region-DPO LoRA on ``model`` (a DiffuEraserModel) and write it to ``out_dir``.

    The model is left as it was found (the adapter is removed, flags and device restored); the
    trained LoRA is the file ``TrainResult.lora_path``. See :func:`train_region_dpo`.
    """
    cfg = _as_config(config)
    out = Path(out_dir or cfg.out_dir or "")
    if not str(out):
        raise ValueError("out_dir: give an output folder (argument or config 'out_dir')")
    with torch.inference_mode(False), torch.enable_grad():
        ds = dataset if isinstance(dataset, PairDataset) else PairDataset(dataset)
        if text_embeds is None:
            text_embeds = ds.text_embeds()
            if text_embeds is None:
                raise ValueError(
                    f"no text embedding: pass text_embeds (DiffuEraser uses the empty prompt's CLIP embedding) or "
                    f"build the pairs with rrdpo_core.pairs, which stores it in {ds.root}"
                )
        text = torch.as_tensor(text_embeds).detach().clone()
        if text.ndim == 2:
            text = text[None]
        out.mkdir(parents=True, exist_ok=True)
        trainer = _Trainer(model, ds, text, cfg, out, vae, progress, cancel, on_log)
        try:
            trainer.setup()
            return trainer.run()
        finally:
            trainer.teardown()


def train_region_dpo(
    model: nn.Module,
    vae: Any,
    text_embeds: torch.Tensor | None,
    pairs_dir: str | os.PathLike | PairDataset,
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    out_dir: str | os.PathLike,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a Region-Reg-DPO LoRA for DiffuEraser on a folder of preference pairs.

    Works when called inside ``torch.inference_mode()`` (ComfyUI runs nodes that way): training
    leaves it, and a model loaded in inference mode gets normal tensors first.

    Args:
        model: a ``DiffuEraserModel`` (a PCM adapter already in its UNet stays active in both the
            trained model and the reference).
        vae: the latent codec; only used when the pairs hold no latents (may be None otherwise).
        text_embeds: ``(1, 77, D)`` text context; None uses the one stored with the pairs.
        pairs_dir: a folder from :func:`rrdpo_core.pairs.build_preference_pairs`.
        config: a :class:`TrainConfig` or a dict of its fields.
        out_dir: checkpoints, ``train_log.jsonl``, ``plots/*.png`` and the LoRA go here; an
            existing run there is resumed (``config.resume="auto"``).
        progress: ``progress(steps_done, max_steps)``; cancel: polled before each micro-batch,
            returning True saves a checkpoint and raises :class:`rrdpo_core.errors.Cancelled`.
        on_log: called with each step's record (every diagnostic of spec/METHOD.md §4).

    Returns:
        :class:`TrainResult` (LoRA path, log path, plot paths, last diagnostics).

    Raises:
        NonFiniteLossError: the loss or gradient became NaN/inf; the last good checkpoint is kept.
    """
    return run_training(model, pairs_dir, text_embeds, config, out_dir=out_dir, vae=vae, progress=progress,
                        cancel=cancel, on_log=on_log)
