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

This module holds the loop (set-up, resume, steps, checkpoints, cancel); the pieces live in
:mod:`.dist` (processes), :mod:`.batching` (pairs -> batches), :mod:`.pair_step` (one micro-batch's
passes and loss), :mod:`.checkpoint`, :mod:`.logging` and :mod:`.plots`.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..errors import Cancelled
from ..pairs.format import PairDataset
from ..progress import CancelFn, ProgressFn
from ..lora import adapter_parameters, load_adapter_weights
from ..region_lora import (
    ADAPTER_NAME,
    RegionLoraInfo,
    add_region_adapter,
    base_fingerprint,
    load_region_lora,
    remove_region_lora,
    save_region_lora,
)
from ..rng import derive_seed
from .batching import Batcher, PairBatch
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
from .dist import Dist
from .logging import JsonlLog
from .pair_step import PairStep
from .plots import render_plots

__all__ = ["TrainResult", "NonFiniteLossError", "train_region_dpo", "run_training"]

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
        self.dist = Dist(device, want_cpu)
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
        # A model may name the modules its LoRA adapts (see "The model" in run_training's docstring);
        # DiffuEraser does not, and gets the attention projections of its transformer blocks.
        self.targets = add_region_adapter(unet, rank=cfg.rank, lora_alpha=cfg.lora_alpha, temporal=cfg.temporal,
                                          adapter_name=ADAPTER_NAME, trainable=True,
                                          target_modules=getattr(model, "region_lora_targets", None))
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
        self.params = adapter_parameters(unet, ADAPTER_NAME)
        if cfg.gradient_checkpointing and hasattr(unet, "enable_gradient_checkpointing"):
            was = bool(getattr(unet, "is_gradient_checkpointing", False))
            unet.enable_gradient_checkpointing()
            if not was:
                self._restore.append(unet.disable_gradient_checkpointing)
        self.batcher = Batcher(self.ds, cfg, self.dist.rank, self.dist.world, self.vae,
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
        load_adapter_weights(self.unet, lora.state_dict, ADAPTER_NAME)
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
        samples: list[tuple[int, float]] = []  # (timestep, DGR) of every pair of this process's step
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
            if getattr(out, "dgr", None) is not None:
                samples += zip(t.tolist(), out.dgr.detach().float().cpu().tolist())
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
        if samples:
            # The batch-mean DGR hides its collapse: at high noise a pair's x_t are nearly the same,
            # so DGR stays near beta/2 there whatever training does (docs/method_dynamics.md). Each
            # pair's timestep and DGR let the log be split by noise level.
            every = [x for part in self.dist.gather(samples) for x in part]
            record.update(t_per_sample=[int(a) for a, _ in every], dgr_per_sample=[float(b) for _, b in every])
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

    The model: the loop needs only what :class:`rrdpo_core.models.DiffuEraserModel` offers, so any
    latent-space inpainting denoiser with the same surface trains the same way:

    * ``unet``: the ``nn.Module`` the ``"region_dpo"`` peft adapter is added to (the reference
      pass switches it off there);
    * ``predict_eps(latents (B*F, 4, h, w), timesteps (B,), text (1, L, D), cond (B*F, 5, h, w),
      num_frames, brushnet_scale=...) -> (B*F, 4, h, w)``;
    * ``dtype``, ``device`` and ``to()``; optionally ``max_frames`` (default 32);
    * optionally ``region_lora_targets``: full module names (inside ``unet``) the LoRA adapts;
      absent or None means the attention projections of the UNet's transformer blocks.

    ``bench/method_dynamics.py`` trains a small convolutional denoiser this way.
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
