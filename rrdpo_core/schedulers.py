"""Noise schedules for DiffuEraser sampling: diffusers' TCD, DDIM and UniPC with the SD1.5 settings.

* ``tcd`` (default): what released DiffuEraser samples with after loading the PCM LoRA
  (reference §1.2): ``TCDScheduler`` with the SD1.5 betas and trailing spacing, every other
  setting at its default; 2 steps give timesteps [999, 499]. It is stepped with ``eta=0``
  (deterministic), because the released pipeline forwards its ``eta=0.0`` to TCD (§1.8).
* ``ddim``: ``DDIMScheduler`` from the SD1.5 scheduler config with *trailing* spacing, so every
  step count starts at t=999 like TCD (SD1.5's own "leading" spacing would start 2 steps at 501).
* ``unipc``: ``UniPCMultistepScheduler`` from the SD1.5 scheduler config, as DiffuEraser's
  training-time validation uses it (20 or 50 steps, reference §1.10).

All three share one table of ᾱ_t (scaled-linear betas 0.00085 -> 0.012 over 1000 steps), which
:func:`forward_noise` and the DDIM inversion use.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = [
    "SCHEDULERS",
    "SD15_SCHEDULER_CONFIG",
    "make_scheduler",
    "sampling_timesteps",
    "step_kwargs",
    "end_alpha_cumprod",
    "forward_noise",
    "TCD_STEPS_WITHOUT_PCM",
    "needs_pcm_lora",
]

SCHEDULERS = ("tcd", "ddim", "unipc")

# TCD below this many steps is a few-step sampler: it gives sharp results only with the PCM LoRA
# (released DiffuEraser: 2 steps + the 2-step PCM LoRA). The sampler node refuses such a run
# without the LoRA and remove_objects warns; both ask needs_pcm_lora.
TCD_STEPS_WITHOUT_PCM = 8


def needs_pcm_lora(scheduler: Any, steps: int) -> bool:
    """Whether sampling ``steps`` steps with ``scheduler`` needs the PCM LoRA (few-step TCD)."""
    return scheduler == "tcd" and int(steps) < TCD_STEPS_WITHOUT_PCM

# SD1.5's scheduler/scheduler_config.json (a PNDM config; the other schedulers read the keys they know).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def make_scheduler(name: str = "tcd", **overrides: Any):
    """A fresh scheduler by name (``tcd``, ``ddim`` or ``unipc``); ``overrides`` change config keys."""
    from diffusers import DDIMScheduler, TCDScheduler, UniPCMultistepScheduler

    key = name.lower()
    if key == "tcd":
        config = {k: SD15_SCHEDULER_CONFIG[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
        return TCDScheduler(**{**config, "timestep_spacing": "trailing", **overrides})
    if key == "ddim":
        return DDIMScheduler.from_config({**SD15_SCHEDULER_CONFIG, "timestep_spacing": "trailing", **overrides})
    if key == "unipc":
        return UniPCMultistepScheduler.from_config({**SD15_SCHEDULER_CONFIG, **overrides})
    raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS} "
                     "(tcd with the PCM LoRA is the released 2-step setting)")


def sampling_timesteps(scheduler, num_inference_steps: int, t_start: int = 999,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """Set the scheduler's timesteps and return the ones to run, highest first.

    ``t_start`` below the top of the schedule gives an SDEdit-style start (diffusers' img2img
    convention: only the timesteps at or below ``t_start`` run). The schedule is made denser until
    ``num_inference_steps`` of its timesteps lie at or below ``t_start`` (or the scheduler allows
    no more steps), so a weaker start still gets the requested number of steps; the first returned
    timestep is where sampling really starts and may be a little below ``t_start``.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    num_train = int(scheduler.config.num_train_timesteps)
    if not 0 <= t_start <= num_train - 1:
        raise ValueError(f"t_start must be in [0, {num_train - 1}], got {t_start}")
    # TCD picks its steps from a fixed grid of `original_inference_steps` timesteps.
    limit = int(getattr(scheduler.config, "original_inference_steps", None) or num_train)
    total, kept = num_inference_steps, None
    while total <= limit:
        scheduler.set_timesteps(total, device=device)
        all_steps = scheduler.timesteps
        # (DDIM's trailing spacing can round a last timestep to -1 for step counts that do not divide 1000.)
        kept = all_steps[(all_steps <= t_start) & (all_steps >= 0)]
        if len(kept) >= num_inference_steps or t_start >= int(all_steps[0]):
            break
        total += 1
    if kept is None or len(kept) == 0:
        raise ValueError(f"no timestep of this {type(scheduler).__name__} schedule lies at or below t_start={t_start}; "
                         "raise t_start")
    begin = int((scheduler.timesteps > t_start).sum())
    kept = scheduler.timesteps[begin:begin + len(kept)]
    if begin and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin * getattr(scheduler, "order", 1))
    return kept


def step_kwargs(scheduler, eta: float = 0.0, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Extra ``scheduler.step`` arguments it accepts: ``eta`` (0 = deterministic TCD / DDIM) and ``generator``."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params and generator is not None:
        kwargs["generator"] = generator
    return kwargs


def end_alpha_cumprod(scheduler) -> float:
    """ᾱ of the level the scheduler's last step lands on.

    TCD steps to timestep 0, i.e. ᾱ_0 = 0.99915, not 1 (reference §1.8 step 7); DDIM with the SD1.5
    config (``set_alpha_to_one=False``) lands on the same ᾱ_0; UniPC's default ``final_sigmas_type
    ="zero"`` lands on the clean sample (ᾱ = 1).
    """
    from diffusers import DDIMScheduler, TCDScheduler

    acp = scheduler.alphas_cumprod
    if isinstance(scheduler, TCDScheduler):
        return float(acp[0])
    if isinstance(scheduler, DDIMScheduler):
        return float(scheduler.final_alpha_cumprod)
    if getattr(scheduler.config, "final_sigmas_type", "zero") == "zero":
        return 1.0
    return float(acp[0])


def forward_noise(latents: torch.Tensor, noise: torch.Tensor, timestep: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0): ``sqrt(ᾱ_t)·latents + sqrt(1-ᾱ_t)·noise`` at one train timestep.

    At t=999 this is the released prior injection ``0.068265·z + 0.997667·ε`` (reference §1.6: the
    released code reaches it through a UniPC ``add_noise`` lookup that lands on ᾱ_999).
    """
    a = alphas_cumprod[int(timestep)].double()
    return (a.sqrt() * latents.double() + (1 - a).sqrt() * noise.double()).to(latents.dtype)
