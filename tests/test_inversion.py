"""Start latents from the prior: forward noise (released) and DDIM inversion; the schedules."""
from __future__ import annotations

import pytest
import torch

from rrdpo_core.errors import RrdpoInputError
from rrdpo_core.inversion import ddim_invert, ddim_transfer, draw_noise, noise_latents, tile_noise
from rrdpo_core.schedulers import end_alpha_cumprod, forward_noise, make_scheduler, sampling_timesteps


# ------------------------------------------------------------------------------------------
# schedules and the released prior injection


def test_tcd_timesteps_are_the_released_ones():
    # reference §1.2 [measured]
    assert sampling_timesteps(make_scheduler("tcd"), 2).tolist() == [999, 499]
    assert sampling_timesteps(make_scheduler("tcd"), 4).tolist() == [999, 759, 499, 259]
    assert sampling_timesteps(make_scheduler("ddim"), 2).tolist() == [999, 499]


@pytest.mark.parametrize("name", ["tcd", "ddim", "unipc"])
def test_lower_t_start_keeps_the_step_count_below_it(name):
    steps = sampling_timesteps(make_scheduler(name), 2, t_start=600)
    assert len(steps) == 2 and int(steps[0]) <= 600 and int(steps[0]) > int(steps[1]) >= 0
    with pytest.raises(ValueError, match="t_start"):
        sampling_timesteps(make_scheduler(name), 2, t_start=1000)
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("euler")


def test_forward_noise_has_the_reference_coefficients():
    acp = make_scheduler("tcd").alphas_cumprod
    one, zero = torch.ones(1), torch.zeros(1)
    # reference §1.6 table [measured]: x = sqrt(a)·z + sqrt(1-a)·eps
    assert forward_noise(one, zero, 999, acp).item() == pytest.approx(0.068265, abs=2e-6)
    assert forward_noise(zero, one, 999, acp).item() == pytest.approx(0.997667, abs=2e-6)
    assert forward_noise(one, zero, 499, acp).item() == pytest.approx(0.526944, abs=2e-6)
    assert forward_noise(zero, one, 499, acp).item() == pytest.approx(0.849900, abs=2e-6)
    assert end_alpha_cumprod(make_scheduler("tcd")) == pytest.approx(0.99915, abs=1e-6)  # final TCD step lands on ᾱ_0


def test_noise_repeats_every_22_frames_and_is_seeded():
    base = draw_noise((4, 2, 3), torch.Generator().manual_seed(0))
    assert base.shape == (22, 4, 2, 3)
    assert torch.equal(base, draw_noise((4, 2, 3), torch.Generator().manual_seed(0)))
    tiled = tile_noise(base, 50)
    assert tiled.shape[0] == 50
    assert torch.equal(tiled[3], tiled[25]) and torch.equal(tiled[25], tiled[47])
    assert not torch.equal(tiled[3], tiled[4])
    z = torch.randn(50, 4, 2, 3)
    acp = make_scheduler().alphas_cumprod
    x = noise_latents(z, tiled, 999, acp)
    assert torch.allclose(x, acp[999].sqrt() * z + (1 - acp[999]).sqrt() * tiled, atol=1e-6)


@pytest.mark.parametrize("name", ["tcd", "ddim"])
def test_transfer_is_the_deterministic_scheduler_step_and_inverts_exactly(name):
    scheduler = make_scheduler(name)
    steps = sampling_timesteps(scheduler, 2)
    gen = torch.Generator().manual_seed(1)
    x, eps = torch.randn(3, 4, 5, 5, generator=gen), torch.randn(3, 4, 5, 5, generator=gen)
    acp = scheduler.alphas_cumprod
    got = scheduler.step(eps, steps[0], x, eta=0.0).prev_sample
    mine = ddim_transfer(x, eps, float(acp[steps[0]]), float(acp[steps[1]]))
    assert torch.allclose(got, mine, atol=1e-5)
    got = scheduler.step(eps, steps[1], got, eta=0.0).prev_sample
    mine = ddim_transfer(mine, eps, float(acp[steps[1]]), end_alpha_cumprod(scheduler))
    assert torch.allclose(got, mine, atol=1e-5)
    back = ddim_transfer(ddim_transfer(x, eps, 0.3, 0.9), eps, 0.9, 0.3)
    assert torch.allclose(back, x, atol=1e-5)


def _sample_ddim(x, eps_fn, scheduler, steps):
    for i, t in enumerate(steps):
        x = scheduler.step(eps_fn(x, int(t), i), t, x, eta=0.0).prev_sample
    return x


def test_inversion_round_trip_with_a_smooth_model_and_refinement():
    # eps = 0.4·tanh(x) + c: smooth and contracting, so the fixed-point refinement converges
    # geometrically and the round trip becomes exact to float precision.
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(6, 4, 4, 4, generator=gen)
    c = 0.1 * torch.randn(6, 4, 4, 4, generator=gen)
    seen_steps = []

    def eps_fn(x, t, i):
        seen_steps.append((t, i))
        return 0.4 * torch.tanh(x) + c

    scheduler = make_scheduler("ddim")
    steps = sampling_timesteps(scheduler, 10, t_start=499)
    acp, end = scheduler.alphas_cumprod, end_alpha_cumprod(scheduler)
    errors = {}
    for refine in (0, 1, 8):
        x_t = ddim_invert(z, eps_fn, steps.tolist(), acp, end, refine_iters=refine)
        sampler = make_scheduler("ddim")
        back = _sample_ddim(x_t, eps_fn, sampler, sampling_timesteps(sampler, 10, t_start=499))
        errors[refine] = float((back - z).norm() / z.norm())
    assert errors[8] < 1e-4 and errors[1] < errors[0] / 2
    # step i of the inversion used the sampler's step index i (so it uses the sampler's window list)
    assert sorted(set(seen_steps)) == sorted(set((int(t), i) for i, t in enumerate(steps)))
    with pytest.raises(ValueError):
        ddim_invert(z, eps_fn, steps.tolist(), acp, end, refine_iters=-1)


# ------------------------------------------------------------------------------------------
# DDIM inversion through the tiny DiffuEraser


@pytest.fixture(scope="module")
def tiny_pipe():
    from rrdpo_core.models.testing import tiny_diffueraser
    from rrdpo_core.pipeline import DiffuEraserPipeline
    from rrdpo_core.vae import make_tiny_vae

    model = tiny_diffueraser(seed=0)
    return DiffuEraserPipeline(model, make_tiny_vae(seed=0))


def _clip(model, n=3, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, size, size, 3, generator=gen)
    masks = torch.zeros(n, size, size)
    masks[:, 8:24, 8:20] = 1
    prior = torch.rand(n, size, size, 3, generator=gen)
    text = torch.randn(1, 77, model.cross_attention_dim, generator=gen)
    return frames, masks, prior, text


def test_invert_then_sample_recovers_the_prior_latents(tiny_pipe):
    """Round trip through UNet+BrushNet with deterministic DDIM on the same grid and windows.

    Tolerance: DDIM inversion evaluates eps at the lower point of each step instead of the upper
    one, so one step errs by |B|·|eps(x_t) − eps(x_s)| — first order in the step — and later
    sampler steps amplify it by up to sqrt(ᾱ_end/ᾱ_t). The random tiny network is no denoiser,
    so it is not small in absolute terms; what must hold is that the inversion recovers the
    prior an order of magnitude better than the released forward-noise start at the same t
    (the baseline, measured here on the same inputs), and that the fixed-point refinement
    (which removes the first-order error where it contracts) makes it markedly better still.
    """
    frames, masks, prior, text = _clip(tiny_pipe.model)
    kw = dict(scheduler="ddim", num_inference_steps=4, t_start=250, seed=5)
    errors = {}
    for refine in (0, 2):
        init = tiny_pipe.prepare_latents(frames, masks, prior, text, init_mode="ddim_inversion",
                                         refine_iters=refine, **kw)
        assert init.latents.shape == (3, 4, 4, 4) and init.timesteps[0] <= 250
        out = tiny_pipe(frames, masks, prior, text, init=init, decode=False, **kw)
        z = init.prior_latents
        errors[refine] = float((out.latents - z).norm() / z.norm())
    baseline = tiny_pipe(frames, masks, prior, text, init_mode="noise", decode=False, **kw)
    baseline_error = float((baseline.latents - z).norm() / z.norm())
    assert errors[0] < 0.1 * baseline_error, (errors, baseline_error)
    assert errors[2] < 0.5 * errors[0], errors


def test_inversion_needs_a_prior(tiny_pipe):
    frames, masks, _, text = _clip(tiny_pipe.model)
    with pytest.raises(RrdpoInputError, match="prior"):
        tiny_pipe.prepare_latents(frames, masks, None, text, init_mode="ddim_inversion")
    with pytest.raises(ValueError, match="init_mode"):
        tiny_pipe.prepare_latents(frames, masks, None, text, init_mode="sdedit")
