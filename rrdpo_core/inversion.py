"""Prior -> initial latents: where sampling starts (spec/METHOD.md §7).

Two ways to start from the prior's latents ``z`` (VAE latents of the prior frames):

* ``"noise"`` (default, the released behaviour, reference §1.6): forward-noise ``z`` to the first
  sampling timestep, ``x = sqrt(ᾱ_t)·z + sqrt(1-ᾱ_t)·ε``. At t=999 that is ``0.068265·z + 0.997667·ε``,
  a weak low-frequency trace of the prior. ε is one ``(22, 4, h, w)`` draw tiled along time with
  period 22, so frames i and i+22 share their noise.
* ``"ddim_inversion"``: run the deterministic DDIM ODE *backwards* from ``z`` up to the first
  sampling timestep, through the same UNet+BrushNet the sampler uses, conditioned on the same
  masked frames, on the same timestep grid and with the same window lists. Sampling
  deterministically from the result comes back close to ``z``, so the prior constrains the
  output much more than with ``"noise"``.

A first sampling timestep below 999 (``t_start``) is an SDEdit-style weaker start in both modes.

The inversion is the mirror of a deterministic sampler step. A DDIM / TCD(eta=0) step from level
``a_t = ᾱ_t`` to ``a_s`` with noise estimate ε is the bijection
``x_s = sqrt(a_s)·(x_t − sqrt(1−a_t)·ε)/sqrt(a_t) + sqrt(1−a_s)·ε``, so given ε it is undone exactly
by swapping the roles of the two levels. The catch is that the sampler evaluates ε at the upper
point ``(x_t, t)``, which the inversion does not know yet: it uses ``ε(x_s, t)`` instead (the
standard DDIM-inversion approximation, first order in the step), and optionally refines it with
fixed-point iterations ``x_t <- step(x_s, ε(x_t, t))``, which converge to the exact inverse when
the model is smooth enough.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .schedulers import forward_noise

__all__ = [
    "INIT_MODES",
    "NOISE_PERIOD",
    "InitLatents",
    "draw_noise",
    "tile_noise",
    "noise_latents",
    "ddim_transfer",
    "ddim_invert",
]

INIT_MODES = ("noise", "ddim_inversion")
NOISE_PERIOD = 22  # the released noise repeats every 22 frames (one clip)

# eps_fn(latents (T, 4, h, w), timestep, step_index) -> epsilon (T, 4, h, w) for the whole video.
EpsFn = Callable[[torch.Tensor, int, int], torch.Tensor]


@dataclass
class InitLatents:
    """Initial latents for the sampler and what they were made from.

    Attributes:
        latents: ``(T, 4, h, w)`` float32, at noise level ``timesteps[0]``.
        mode: ``"noise"`` or ``"ddim_inversion"``.
        timesteps: the sampling timesteps these latents were prepared for (highest first).
        prior_latents: ``(T, 4, h, w)`` VAE latents of the prior (zeros when there was no prior).
        noise: the ``(22, 4, h, w)`` base noise of ``"noise"`` mode (None for the inversion).
        seed: the seed that drew the noise / VAE samples, when known.
    """

    latents: torch.Tensor
    mode: str
    timesteps: list[int]
    prior_latents: torch.Tensor
    noise: torch.Tensor | None = None
    seed: int | None = None

    @property
    def t_start(self) -> int:
        return int(self.timesteps[0])


def draw_noise(shape: Sequence[int], generator: torch.Generator | None, period: int = NOISE_PERIOD) -> torch.Tensor:
    """The base noise, ``(period, *shape)`` float32, drawn on the CPU so a seed gives the same noise
    on every device."""
    return torch.randn((period, *shape), generator=generator, dtype=torch.float32)


def tile_noise(base: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Repeat the base noise along time and cut to ``num_frames`` (frame i gets ``base[i % period]``)."""
    period = base.shape[0]
    reps = -(-num_frames // period)
    return base.repeat(reps, *([1] * (base.ndim - 1)))[:num_frames]


def noise_latents(prior_latents: torch.Tensor, noise: torch.Tensor, timestep: int,
                  alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``"noise"`` mode: the prior latents forward-noised to ``timestep`` with per-frame ``noise``."""
    if noise.shape != prior_latents.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and prior latents {tuple(prior_latents.shape)} differ in shape")
    return forward_noise(prior_latents, noise.to(prior_latents.device), timestep, alphas_cumprod)


def ddim_transfer(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Move ``x`` from level ᾱ=``alpha_from`` to ``alpha_to`` along the DDIM ODE with noise estimate ``eps``.

    Downwards (alpha_to > alpha_from) it is a deterministic DDIM / TCD(eta=0) sampling step;
    upwards it is the inversion step. The coefficients are computed in float64.
    """
    a_f = torch.tensor(alpha_from, dtype=torch.float64)
    a_t = torch.tensor(alpha_to, dtype=torch.float64)
    scale = (a_t / a_f).sqrt()
    eps_coef = (1 - a_t).sqrt() - scale * (1 - a_f).sqrt()
    return (float(scale) * x.float() + float(eps_coef) * eps.float()).to(x.dtype)


def ddim_invert(
    prior_latents: torch.Tensor,
    eps_fn: EpsFn,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    end_alpha: float,
    refine_iters: int = 0,
) -> torch.Tensor:
    """``"ddim_inversion"`` mode: invert ``prior_latents`` up to ``timesteps[0]``.

    Args:
        prior_latents: ``(T, 4, h, w)`` clean latents, taken to sit at level ``end_alpha`` (where
            the sampler's last step lands, :func:`rrdpo_core.schedulers.end_alpha_cumprod`).
        eps_fn: the sampler's whole-video noise estimate ``eps_fn(latents, t, step_index)``; step
            ``i`` of the inversion must use the window list the sampler uses at step ``i``.
        timesteps: the sampler's timesteps, highest first (sampler step i goes from
            ``timesteps[i]`` to ``timesteps[i+1]``, the last one to ``end_alpha``).
        alphas_cumprod: the schedule's ᾱ table.
        refine_iters: fixed-point refinements per step (each costs one more ``eps_fn`` call).
    """
    if refine_iters < 0:
        raise ValueError(f"refine_iters must be >= 0, got {refine_iters}")
    steps = [int(t) for t in timesteps]
    x = prior_latents.float()
    for i in reversed(range(len(steps))):
        t = steps[i]
        alpha_hi = float(alphas_cumprod[t])
        alpha_lo = float(alphas_cumprod[steps[i + 1]]) if i + 1 < len(steps) else float(end_alpha)
        x_lo = x
        x = ddim_transfer(x_lo, eps_fn(x_lo, t, i), alpha_lo, alpha_hi)
        for _ in range(refine_iters):
            x = ddim_transfer(x_lo, eps_fn(x, t, i), alpha_lo, alpha_hi)
    return x
