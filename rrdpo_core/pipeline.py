"""The DiffuEraser sampler: masked video + prior -> inpainted frames.

``DiffuEraserPipeline`` only orchestrates; the pieces live elsewhere:

* the denoiser (BrushNet + motion UNet) is ``rrdpo_core.models.DiffuEraserModel.predict_eps``;
* the VAE is any :class:`rrdpo_core.vae.LatentCodec`;
* schedules come from :mod:`rrdpo_core.schedulers` (diffusers' TCD / DDIM / UniPC);
* windows, their merge rule and the keyframes from :mod:`rrdpo_core.windows`;
* the start latents from :mod:`rrdpo_core.inversion`;
* BrushNet's condition from :mod:`rrdpo_core.conditioning` (the trainer uses the same functions);
* input checks and padding from :mod:`rrdpo_core.inputs`, the random streams from :mod:`rrdpo_core.rng`.

What one call does, following released DiffuEraser (reference §1.6–§1.8):

1. VAE-encode the prior frames; draw one 22-frame noise block; encode the condition
   (masked frames ``frame·(1−mask)`` and the mask at latent size, 1 = known).
2. If there are more than 44 frames: sample 22 evenly spaced keyframes as one window, then make
   them fully known conditioning (their decoded result becomes their "masked" frame, their mask
   all known) and their prior latents the keyframe result.
3. Start latents from the prior (``init_mode``: forward noise as released, or DDIM inversion).
4. For each timestep, predict ε on every window of the step's window list (lists A/B alternate)
   and merge the windows with the linear overlap ramp, then take one scheduler step for the
   whole video. For deterministic single-step schedulers (TCD with eta=0 as released, DDIM with
   eta=0) a step is affine in ε with per-frame coefficients that do not depend on the window, so
   merging ε and then stepping equals the released "step every window, then merge"; for UniPC it
   gives the multistep solver a history per video instead of the released per-window reset.
5. Decode the latents in chunks.

The frames returned are the generated frames, *not* composited into the input; use
``rrdpo_core.blend.blend_into_video`` for that (:func:`rrdpo_core.api.remove_objects` does it by default).

Conventions: frames ``(T, H, W, 3)`` float in [0, 1] (or uint8), torch or numpy; masks
``(T, H, W)`` with 1 = hole. H and W must be multiples of 8 (:func:`rrdpo_core.inputs.pad_to_multiple` pads;
:func:`rrdpo_core.api.remove_objects` does it and crops back). Any frame count >= 1 works.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from einops import rearrange

from .conditioning import encode_condition, encode_frames
from .errors import RrdpoInputError
from .inputs import LATENT_SCALE, VideoInputs, check_inputs
from .inversion import INIT_MODES, NOISE_PERIOD, InitLatents, ddim_invert, draw_noise, noise_latents, tile_noise
from .progress import CancelFn, Progress, ProgressFn, check_cancel
from .rng import SamplerStreams
from .schedulers import make_scheduler, end_alpha_cumprod, sampling_timesteps, step_kwargs
from .vae import LatentCodec
from .windows import OVERLAP, WINDOW, WindowSets, blend_windows, context_windows, keyframe_indices, needs_keyframe_pass

__all__ = ["PipelineOutput", "DiffuEraserPipeline"]

logger = logging.getLogger(__name__)


@dataclass
class PipelineOutput:
    """Result of :class:`DiffuEraserPipeline`.

    Attributes:
        frames: ``(T, H, W, 3)`` float32 in [0, 1] on the CPU: the generated frames, not blended
            into the input (None when called with ``decode=False``). With an empty mask: the
            input frames unchanged.
        latents: ``(T, 4, H/8, W/8)`` float32 final latents on the CPU (None for an empty mask).
        seed: the seed of the noise and VAE samples (None when a generator was passed).
        timesteps: the timesteps that ran, highest first.
        keyframes: indices of the keyframes of the keyframe pass (empty when it did not run).
    """

    frames: torch.Tensor | None
    latents: torch.Tensor | None
    seed: int | None = None
    timesteps: list[int] = field(default_factory=list)
    keyframes: list[int] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class _Run:
    """Per-call settings shared by the passes."""

    text: torch.Tensor
    uncond: torch.Tensor | None
    guidance_scale: float
    scheduler: Any
    num_inference_steps: int
    t_start: int
    step_kwargs: dict
    refine_iters: int
    progress: Progress


def _steps_per_pass(sets: WindowSets, num_steps: int) -> int:
    return sum(len(sets.for_step(i)) for i in range(num_steps))


class DiffuEraserPipeline:
    """DiffuEraser video inpainting (see the module docstring for what one call does).

    Args:
        model: a ``DiffuEraserModel`` (anything with ``predict_eps``, ``device``, ``dtype``,
            ``cross_attention_dim``).
        vae: a :class:`LatentCodec`.
        window, overlap: frames per window and overlap (22 and 5 as released).
        keyframe_pass: run the keyframe pass for videos longer than two windows (released: yes).
        vae_batch: frames handed to the codec at once (cancel is checked between batches).
        brushnet_scale: BrushNet residual scale (1.0 as released).
    """

    def __init__(self, model: Any, vae: LatentCodec, *, window: int = WINDOW, overlap: int = OVERLAP,
                 keyframe_pass: bool = True, vae_batch: int = 4, brushnet_scale: float = 1.0):
        max_frames = int(getattr(model, "max_frames", window))
        if window > max_frames:
            raise ValueError(f"window {window} is longer than the {max_frames} frames the motion modules accept")
        if vae_batch < 1:
            raise ValueError("vae_batch must be at least 1")
        self.model, self.vae = model, vae
        self.window, self.overlap = window, overlap
        self.keyframe_pass, self.vae_batch, self.brushnet_scale = keyframe_pass, vae_batch, brushnet_scale

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device)

    # -- VAE ---------------------------------------------------------------------------------

    def vae_batches(self, num_frames: int) -> int:
        """Codec calls for ``num_frames`` frames: each is one progress unit."""
        return -(-int(num_frames) // self.vae_batch)

    def encode_frames(self, frames: torch.Tensor, generator: torch.Generator | None = None,
                      cancel: CancelFn | None = None, tick: Callable[[], None] | None = None) -> torch.Tensor:
        """``(T, H, W, 3)`` in [0, 1] -> scaled latents ``(T, 4, H/8, W/8)`` float32 on the model's device.

        ``tick()`` is called after every batch (the VAE is much of the time on a CPU or small GPU).
        """
        return encode_frames(self.vae, frames, generator, batch=self.vae_batch, device=self.device, cancel=cancel,
                             tick=tick)

    def encode_condition(self, frames: torch.Tensor, holes: torch.Tensor, generator: torch.Generator | None = None,
                         cancel: CancelFn | None = None, tick: Callable[[], None] | None = None) -> torch.Tensor:
        """BrushNet's condition ``(T, 5, h, w)`` (:func:`rrdpo_core.conditioning.encode_condition`)."""
        return encode_condition(self.vae, frames, holes, generator, batch=self.vae_batch, device=self.device,
                                cancel=cancel, tick=tick)

    def decode_latents(self, latents: torch.Tensor, cancel: CancelFn | None = None,
                       tick: Callable[[], None] | None = None) -> torch.Tensor:
        """Scaled latents -> ``(T, H, W, 3)`` float32 in [0, 1] on the CPU, in chunks (``tick()`` after each)."""
        out = []
        for start in range(0, latents.shape[0], self.vae_batch):
            check_cancel(cancel)
            images = self.vae.decode(latents[start:start + self.vae_batch])
            out.append(rearrange((images.float() / 2 + 0.5).clamp(0, 1), "t c h w -> t h w c").cpu())
            if tick is not None:
                tick()
        return torch.cat(out)

    # -- denoising ---------------------------------------------------------------------------

    def _video_eps(self, run: _Run, latents: torch.Tensor, cond: torch.Tensor, t: int,
                   windows: Sequence[range]) -> torch.Tensor:
        def one_window(window: range) -> torch.Tensor:
            run.progress.check()
            x, c = latents[window.start:window.stop], cond[window.start:window.stop]
            if run.uncond is not None:
                eps = self.model.predict_eps(torch.cat([x, x]), t, torch.cat([run.uncond, run.text]),
                                             torch.cat([c, c]), len(window), self.brushnet_scale).float()
                eps_uncond, eps_text = eps.chunk(2)
                eps = eps_uncond + run.guidance_scale * (eps_text - eps_uncond)
            else:
                eps = self.model.predict_eps(x, t, run.text, c, len(window), self.brushnet_scale).float()
            run.progress.advance()
            return eps

        return blend_windows(latents.shape[0], windows, one_window)

    def _new_scheduler(self, run: _Run):
        if isinstance(run.scheduler, str):
            scheduler = make_scheduler(run.scheduler)
        else:  # a diffusers scheduler instance: copy it, passes must not share state
            scheduler = type(run.scheduler).from_config(run.scheduler.config)
        timesteps = sampling_timesteps(scheduler, run.num_inference_steps, run.t_start)
        return scheduler, timesteps

    def _sample(self, run: _Run, latents: torch.Tensor, cond: torch.Tensor, sets: WindowSets) -> torch.Tensor:
        scheduler, timesteps = self._new_scheduler(run)
        latents = latents.to(self.device, torch.float32) * float(scheduler.init_noise_sigma)
        for i, t in enumerate(timesteps):
            eps = self._video_eps(run, latents, cond, int(t), sets.for_step(i))
            latents = scheduler.step(eps, t, latents, **run.step_kwargs).prev_sample
        return latents

    def _start(self, run: _Run, mode: str, prior_latents: torch.Tensor, cond: torch.Tensor, sets: WindowSets,
               noise: torch.Tensor | None) -> torch.Tensor:
        scheduler, timesteps = self._new_scheduler(run)
        if mode == "noise":
            return noise_latents(prior_latents, noise, int(timesteps[0]), scheduler.alphas_cumprod)

        def eps_fn(x: torch.Tensor, t: int, step_index: int) -> torch.Tensor:
            return self._video_eps(run, x, cond, t, sets.for_step(step_index))

        return ddim_invert(prior_latents, eps_fn, [int(t) for t in timesteps], scheduler.alphas_cumprod,
                           end_alpha_cumprod(scheduler), run.refine_iters)

    def _check_text(self, text_embeds: Any, name: str) -> torch.Tensor:
        if not isinstance(text_embeds, torch.Tensor):
            raise RrdpoInputError(f"{name}: expected a (1, 77, {self.model.cross_attention_dim}) tensor, got "
                                  f"{type(text_embeds).__name__}; DiffuEraser uses the empty prompt's CLIP embedding")
        emb = text_embeds[None] if text_embeds.ndim == 2 else text_embeds
        dim = int(self.model.cross_attention_dim)
        if emb.ndim != 3 or emb.shape[0] != 1 or emb.shape[-1] != dim:
            raise RrdpoInputError(f"{name}: expected shape (1, L, {dim}), got {tuple(text_embeds.shape)}; encode the "
                                  f"prompt with the text encoder the model was trained with (SD1.5 CLIP: width 768)")
        if not torch.isfinite(emb).all():
            raise RrdpoInputError(f"{name}: contains NaN or infinite values")
        return emb.to(self.device, torch.float32)

    def _setup(self, text_embeds: Any, negative_embeds: Any, guidance_scale: float,
               init_mode: str, num_inference_steps: int, scheduler: Any, t_start: int, eta: float,
               rng: SamplerStreams, refine_iters: int) -> _Run:
        if init_mode not in INIT_MODES:
            raise ValueError(f"init_mode must be one of {INIT_MODES}, got {init_mode!r}")
        text = self._check_text(text_embeds, "text_embeds")
        uncond = None
        if guidance_scale > 1.0:
            if negative_embeds is None:
                raise RrdpoInputError("guidance_scale > 1 needs negative_embeds (the unconditional embedding); "
                                      "released DiffuEraser runs without guidance (guidance_scale=0)")
            uncond = self._check_text(negative_embeds, "negative_embeds")
            if uncond.shape != text.shape:
                raise RrdpoInputError(f"negative_embeds {tuple(uncond.shape)} and text_embeds {tuple(text.shape)} differ")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        probe = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
        return _Run(text, uncond, float(guidance_scale), scheduler, int(num_inference_steps), int(t_start),
                    step_kwargs(probe, eta, rng.step), int(refine_iters), Progress(0, None, None))

    # -- public ------------------------------------------------------------------------------

    @torch.no_grad()
    def prepare_latents(
        self,
        frames: Any,
        masks: Any,
        prior_frames: Any,
        text_embeds: Any,
        *,
        init_mode: str = "noise",
        num_inference_steps: int = 2,
        scheduler: Any = "tcd",
        t_start: int = 999,
        guidance_scale: float = 0.0,
        negative_embeds: Any = None,
        refine_iters: int = 0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> InitLatents:
        """Start latents from a prior for a later ``__call__(..., init=...)`` with the same settings.

        ``prior_frames=None`` means no prior: zero prior latents (``"noise"`` mode then starts from
        ``sqrt(1-ᾱ_t)·ε``; ``"ddim_inversion"`` needs a prior).
        """
        inputs = check_inputs(frames, masks, prior_frames)
        rng = SamplerStreams.make(seed, generator)
        run = self._setup(text_embeds, negative_embeds, guidance_scale, init_mode, num_inference_steps,
                          scheduler, t_start, 0.0, rng, refine_iters)
        sets = context_windows(inputs.num_frames, self.window, self.overlap)
        _, timesteps = self._new_scheduler(run)
        evals = _steps_per_pass(sets, len(timesteps)) * (1 + refine_iters) if init_mode != "noise" else 0
        # Work plan for progress: VAE batches (prior; condition for the inversion) and inversion windows.
        vae_units = self.vae_batches(inputs.num_frames) * ((inputs.prior is not None) + (init_mode != "noise"))
        run.progress = Progress(evals + vae_units, progress, cancel)
        prior_latents, noise = self._prior_and_noise(inputs, init_mode, rng, cancel, run.progress.advance)
        cond = (self.encode_condition(inputs.frames, inputs.holes, rng.cond, cancel, run.progress.advance)
                if init_mode != "noise" else None)
        tiled = tile_noise(noise, inputs.num_frames) if noise is not None else None
        latents = self._start(run, init_mode, prior_latents, cond, sets, tiled)
        return InitLatents(latents.cpu(), init_mode, [int(t) for t in timesteps], prior_latents.cpu(),
                           noise, rng.seed)

    def _prior_and_noise(self, inputs: VideoInputs, init_mode: str, rng: SamplerStreams, cancel: CancelFn | None,
                         tick: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        height, width = inputs.size
        shape = (4, height // LATENT_SCALE, width // LATENT_SCALE)
        if inputs.prior is not None:
            prior_latents = self.encode_frames(inputs.prior, rng.prior, cancel, tick)
        elif init_mode == "ddim_inversion":
            raise RrdpoInputError("init_mode='ddim_inversion' inverts the prior, but no prior_frames were given; "
                                  "pass prior frames (e.g. rrdpo_core.prior.flow_propagation_prior) or use init_mode='noise'")
        else:
            prior_latents = torch.zeros((inputs.num_frames, *shape), device=self.device)
        # The released code draws the noise in any case; the inversion only needs it for the keyframe-free case.
        noise = draw_noise(shape, rng.noise, NOISE_PERIOD) if init_mode == "noise" else None
        return prior_latents, noise

    @torch.no_grad()
    def __call__(
        self,
        frames: Any,
        masks: Any,
        prior_frames: Any = None,
        text_embeds: Any = None,
        *,
        num_inference_steps: int = 2,
        scheduler: Any = "tcd",
        guidance_scale: float = 0.0,
        negative_embeds: Any = None,
        init_mode: str = "noise",
        t_start: int = 999,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        init: InitLatents | None = None,
        eta: float = 0.0,
        keyframe_pass: bool | None = None,
        refine_iters: int = 0,
        decode: bool = True,
    ) -> PipelineOutput:
        """Inpaint the holes of ``frames``.

        Args:
            frames: ``(T, H, W, 3)`` in [0, 1] (float) or uint8; H, W multiples of 8.
            masks: ``(T, H, W)``, 1 = hole (one ``(H, W)`` mask serves all frames). Used as given:
                prepare them first (``rrdpo_core.masks.prepare_masks``: released DiffuEraser
                dilates 8 times).
            prior_frames: the prior video (same count; resized if its size differs), or None for
                no prior.
            text_embeds: ``(1, 77, D)`` text embedding (DiffuEraser: the empty prompt).
            num_inference_steps: 2 with TCD + the PCM 2-step LoRA as released; e.g. 20–50 with
                ``"unipc"`` / ``"ddim"`` and no PCM LoRA.
            scheduler: ``"tcd"``, ``"ddim"``, ``"unipc"`` or a diffusers scheduler instance.
            guidance_scale: classifier-free guidance when > 1 (needs ``negative_embeds``).
            init_mode: ``"noise"`` (released) or ``"ddim_inversion"`` (see :mod:`rrdpo_core.inversion`).
            t_start: first timestep, 999 = full strength; lower is an SDEdit-style weaker start.
            seed / generator: fix the noise and the VAE samples (None: a random seed, reported
                in the output).
            progress: ``progress(done, total)`` after every window of every step (keyframe
                pass and inversion included) and after every VAE batch (encoding and decoding).
            cancel: polled before every window and VAE batch; True raises
                :class:`rrdpo_core.errors.Cancelled`.
            init: start latents from :meth:`prepare_latents` (same steps, scheduler, t_start).
                Its seed replaces ``seed``/``generator``, so the condition is encoded as when the
                latents were made. With a keyframe pass only its prior latents and noise are used,
                because the keyframes change the start of the main pass.
            eta: TCD/DDIM stochasticity (0 = deterministic, as released).
            keyframe_pass: override the pipeline's setting for this call.
            refine_iters: fixed-point refinements per DDIM-inversion step.
            decode: decode the latents to frames (False returns latents only).

        An all-zero mask returns the input frames at once, without running any network. A mask
        that covers everything runs normally: the result then comes from the prior and the model
        alone.
        """
        inputs = check_inputs(frames, masks, prior_frames)
        if not bool(inputs.holes.any()):
            return PipelineOutput(inputs.frames, None, seed)
        if init is not None and init.seed is not None:
            # Encode the condition exactly as when the latents were prepared (the DDIM inversion
            # depends on it); everything else random already lives in `init`.
            seed, generator = init.seed, None
        rng = SamplerStreams.make(seed, generator)
        mode = init.mode if init is not None else init_mode
        run = self._setup(text_embeds, negative_embeds, guidance_scale, mode, num_inference_steps,
                          scheduler, t_start, eta, rng, refine_iters)
        n = inputs.num_frames
        sets = context_windows(n, self.window, self.overlap)
        _, timesteps = self._new_scheduler(run)
        timesteps = [int(t) for t in timesteps]
        use_keyframes = (self.keyframe_pass if keyframe_pass is None else keyframe_pass) and needs_keyframe_pass(n, self.window)

        if init is not None:
            self._check_init(init, inputs, timesteps)

        # Work plan, for progress: sampling windows per pass, plus inversion windows where they run.
        inversion = 1 + run.refine_iters if mode == "ddim_inversion" else 0
        main = _steps_per_pass(sets, len(timesteps))
        total = main * (1 + (inversion if (init is None or use_keyframes) else 0))
        if use_keyframes:
            total += len(timesteps) * (1 + inversion)
        # ... and VAE batches: prior and condition encoding, keyframe decode + re-encode, final decode.
        vb = self.vae_batches
        total += vb(n) * ((init is None and inputs.prior is not None) + 1 + bool(decode))
        if use_keyframes:
            total += 2 * vb(len(keyframe_indices(n, self.window)))
        run.progress = Progress(total, progress, cancel)
        tick = run.progress.advance

        # 1. prior latents, noise, condition (in the released order of random draws)
        if init is None:
            prior_latents, noise = self._prior_and_noise(inputs, mode, rng, cancel, tick)
        else:
            prior_latents = init.prior_latents.to(self.device, torch.float32)
            noise = init.noise
        cond = self.encode_condition(inputs.frames, inputs.holes, rng.cond, cancel, tick)

        # 2. keyframe pass
        keyframes: list[int] = []
        if use_keyframes:
            keyframes = keyframe_indices(n, self.window)
            single = context_windows(len(keyframes), self.window, self.overlap)
            key_cond = cond[keyframes]
            key_noise = noise[: len(keyframes)] if noise is not None else None  # keyframe i gets noise[i]
            start = self._start(run, mode, prior_latents[keyframes], key_cond, single, key_noise)
            key_latents = self._sample(run, start, key_cond, single)
            key_frames = self.decode_latents(key_latents, cancel, tick)
            # The release turns the decoded keyframes into 8-bit PIL images (rounded) and re-encodes
            # those as BrushNet's condition (reference §1.7); the same rounding here keeps the main
            # pass on the released trajectory.
            key_frames = torch.round(key_frames * 255) / 255
            prior_latents = prior_latents.clone()
            prior_latents[keyframes] = key_latents
            cond = cond.clone()
            no_holes = torch.zeros(key_frames.shape[:3], dtype=torch.bool)
            cond[keyframes] = self.encode_condition(key_frames, no_holes, rng.cond, cancel, tick)

        # 3. start latents
        if init is not None and not use_keyframes:
            latents = init.latents.to(self.device, torch.float32)
        else:
            tiled = tile_noise(noise, n) if noise is not None else None
            latents = self._start(run, mode, prior_latents, cond, sets, tiled)

        # 4. sampling, 5. decoding
        latents = self._sample(run, latents, cond, sets)
        if not bool(torch.isfinite(latents).all()):
            # Caught here, the cause is named; later it would surface as "NaN frames" blamed on the input.
            raise RrdpoInputError(
                "the sampler produced NaN/inf latents: the model weights or an applied LoRA hold NaN/inf values, or "
                f"{self.model.dtype} overflowed. Re-download the weights, check the LoRA (load_region_lora refuses "
                "damaged files) or lower its strength, or run in bf16/fp32")
        out_frames = self.decode_latents(latents, cancel, tick) if decode else None
        return PipelineOutput(out_frames, latents.cpu(), rng.seed, timesteps, keyframes)

    def _check_init(self, init: InitLatents, inputs: VideoInputs, timesteps: list[int]) -> None:
        height, width = inputs.size
        shape = (inputs.num_frames, 4, height // LATENT_SCALE, width // LATENT_SCALE)
        if tuple(init.latents.shape) != shape or tuple(init.prior_latents.shape) != shape:
            raise RrdpoInputError(f"init: latents of shape {tuple(init.latents.shape)} do not fit {inputs.num_frames} "
                                  f"frames of {width}x{height} (expected {shape}); prepare them from the same frames")
        if list(init.timesteps) != timesteps:
            raise RrdpoInputError(f"init: the latents were prepared for timesteps {list(init.timesteps)} but this "
                                  f"sampler runs {timesteps}; use the same steps, scheduler and t_start for both")
        if init.mode == "noise" and init.noise is None:
            raise RrdpoInputError("init: noise-mode latents without their noise; make them with prepare_latents")
