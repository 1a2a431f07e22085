"""One micro-batch of preference pairs through the model: noising, reference and policy passes, loss, backward.

The reference is the same UNet with only the ``"region_dpo"`` adapter switched off (a PCM adapter,
if loaded, stays on), under ``no_grad``: no second copy of the UNet in memory. The loss is
:func:`rrdpo_core.loss.region_reg_dpo_loss` on latent-resolution zones (or the region-weighted SFT
objective alone).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
from einops import rearrange

from ..conditioning import condition_channels
from ..loss import region_reg_dpo_loss, zone_errors
from ..lora import adapter_disabled
from ..region_lora import ADAPTER_NAME
from ..zones import ZONE_NAMES
from .batching import PairBatch
from .config import TrainConfig

__all__ = ["PairStep", "sd15_alphas_cumprod"]


def sd15_alphas_cumprod() -> torch.Tensor:
    """ᾱ_t of the SD1.5 DDPM training schedule (scaled_linear 0.00085..0.012, 1000 steps), float32."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return sched.alphas_cumprod.float().clone()


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
        clips_to_frames = "b f c h w -> (b f) c h w"  # the model sees a clip's frames as one batch
        cond = rearrange(condition_channels(batch.masked.to(dev), batch.known), clips_to_frames)  # (B*F, 5, h, w)
        x_w = rearrange(ab.sqrt() * batch.winner + (1 - ab).sqrt() * noise, clips_to_frames).to(dev)
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
                x_l = rearrange(ab.sqrt() * batch.loser + (1 - ab).sqrt() * noise, clips_to_frames).to(dev)
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
        pred = pred.float().reshape(k, b, f, 4, h, w)  # stacked (k, B*F, ...) or joint (k*B*F, ...)
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
