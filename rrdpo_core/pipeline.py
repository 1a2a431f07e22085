"""The DiffuEraser sampler: masked video + prior -> inpainted frames.

``DiffuEraserPipeline`` only orchestrates; the pieces live elsewhere:

* the denoiser (BrushNet + motion UNet) is ``rrdpo_core.models.DiffuEraserModel.predict_eps``;
* the VAE is any :class:`rrdpo_core.vae.LatentCodec`;
* schedules come from :mod:`rrdpo_core.schedulers` (diffusers' TCD / DDIM / UniPC);
* windows, their merge rule and the keyframes from :mod:`rrdpo_core.windows`;
* the start latents from :mod:`rrdpo_core.inversion`.

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
``rrdpo_core.blend.blend_into_video`` for that (``remove_objects`` does it by default).

Conventions: frames ``(T, H, W, 3)`` float in [0, 1] (or uint8), torch or numpy; masks
``(T, H, W)`` with 1 = hole. H and W must be multiples of 8 (:func:`pad_to_multiple` pads; the
``remove_objects`` entry point does it and crops back). Any frame count >= 1 works.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import Cancelled, RrdpoInputError
from .inversion import INIT_MODES, NOISE_PERIOD, InitLatents, ddim_invert, draw_noise, noise_latents, tile_noise
from .schedulers import end_alpha_cumprod, make_scheduler, sampling_timesteps, step_kwargs
from .vae import LatentCodec, codec_encode
from .video_io import as_frames, as_masks
from .windows import OVERLAP, WINDOW, WindowSets, blend_windows, context_windows, keyframe_indices, needs_keyframe_pass

__all__ = [
    "ProgressFn",
    "CancelFn",
    "PipelineOutput",
    "VideoInputs",
    "check_inputs",
    "pad_to_multiple",
    "DiffuEraserPipeline",
    "EMPTY_PROMPT_EMBEDS_FILE",
    "load_text_embeds",
    "save_text_embeds",
    "encode_prompt",
    "resolve_text_embeds",
    "find_pcm_lora",
    "remove_objects",
]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

LATENT_SCALE = 8  # SD1.5 VAE: one latent cell per 8x8 pixels


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
# Inputs


@dataclass
class VideoInputs:
    """Checked inputs on the CPU: ``frames`` float32 (T, H, W, 3) in [0, 1], ``holes`` bool (T, H, W),
    ``prior`` like ``frames`` or None."""

    frames: torch.Tensor
    holes: torch.Tensor
    prior: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def check_inputs(frames: Any, masks: Any, prior_frames: Any = None, multiple: int | None = LATENT_SCALE) -> VideoInputs:
    """Validate frames, masks and prior; raise :class:`RrdpoInputError` (a ValueError) saying how to fix them.

    Frames and masks must agree in count and size (one mask may serve all frames). A prior of
    another size is resized to the frames (bilinear, antialiased): a ProPainter prior often comes
    at a reduced size. With ``multiple`` set, H and W must be multiples of it.
    """
    video = torch.from_numpy(as_frames(frames, "frames"))
    length, height, width = video.shape[:3]
    holes = torch.from_numpy(as_masks(masks, length, height, width, "masks"))
    prior = None
    if prior_frames is not None:
        prior = torch.from_numpy(as_frames(prior_frames, "prior_frames"))
        if prior.shape[0] != length:
            raise RrdpoInputError(f"prior_frames: got {prior.shape[0]} prior frames for {length} frames; "
                                  "make the prior from the same frames")
        if tuple(prior.shape[1:3]) != (height, width):
            logger.info("resizing the prior from %sx%s to the frame size %sx%s",
                        prior.shape[2], prior.shape[1], width, height)
            prior = F.interpolate(prior.permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                                  align_corners=False, antialias=True).clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    if multiple and (height % multiple or width % multiple):
        raise RrdpoInputError(
            f"frames are {width}x{height} (WxH); DiffuEraser needs both sides to be multiples of {multiple} (the VAE "
            f"works on {multiple}x{multiple} cells). Pad them with rrdpo_core.pipeline.pad_to_multiple (remove_objects "
            f"does this and crops back), or resize/crop to {width - width % multiple}x{height - height % multiple}")
    return VideoInputs(video, holes, prior)


def pad_to_multiple(inputs: VideoInputs, multiple: int = LATENT_SCALE) -> tuple[VideoInputs, tuple[int, int]]:
    """Pad frames (reflected), prior and masks (as known) at the bottom/right to multiples of ``multiple``.

    Returns the padded inputs and the original ``(H, W)``; crop results with ``[:, :H, :W]``.
    Padding keeps every input pixel as it is, unlike the released code's resize.
    """
    height, width = inputs.size
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return inputs, (height, width)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"

    def pad_video(video: torch.Tensor) -> torch.Tensor:
        return F.pad(video.permute(0, 3, 1, 2), (0, pad_w, 0, pad_h), mode=mode).permute(0, 2, 3, 1).contiguous()

    holes = F.pad(inputs.holes, (0, pad_w, 0, pad_h), value=False)
    prior = pad_video(inputs.prior) if inputs.prior is not None else None
    return VideoInputs(pad_video(inputs.frames), holes, prior), (height, width)


# ------------------------------------------------------------------------------------------
# The pipeline


def _check_cancel(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


class _Progress:
    def __init__(self, total: int, callback: ProgressFn | None, cancel: CancelFn | None):
        self.total, self.done = total, 0
        self.callback, self.cancel = callback, cancel

    def check(self) -> None:
        _check_cancel(self.cancel)

    def advance(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


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
    progress: _Progress


@dataclass
class _Randomness:
    """One generator per use, so each draw depends only on the seed and not on what ran before it.

    That keeps :meth:`DiffuEraserPipeline.prepare_latents` followed by ``__call__(init=...)`` with
    the same seed identical to one ``__call__``: both encode the same condition, which the DDIM
    inversion relies on. All draws are made on the CPU, so a seed means the same on every device.
    """

    prior: torch.Generator  # VAE posterior samples of the prior
    noise: torch.Generator  # the 22-frame base noise
    cond: torch.Generator  # VAE posterior samples of the masked frames
    step: torch.Generator  # scheduler noise (eta > 0 only)
    seed: int | None

    @classmethod
    def make(cls, seed: int | None, generator: torch.Generator | None) -> "_Randomness":
        if generator is not None:  # derive the streams from the caller's generator, in a fixed order
            subseeds = torch.randint(0, 2**62, (4,), generator=generator, device=generator.device).tolist()
        else:
            if seed is None:
                seed = int.from_bytes(os.urandom(8), "little") >> 1
            # Any integer seed (ComfyUI's go up to 2**64 - 1) -> four unrelated 63-bit seeds.
            subseeds = [int.from_bytes(hashlib.blake2b(f"{int(seed)}:{k}".encode(), digest_size=8).digest(), "little")
                        >> 1 for k in range(4)]
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in subseeds]
        return cls(*gens, seed=None if generator is not None else int(seed))


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
        out = []
        for start in range(0, frames.shape[0], self.vae_batch):
            _check_cancel(cancel)
            chunk = frames[start:start + self.vae_batch].to(self.device, torch.float32).permute(0, 3, 1, 2) * 2 - 1
            out.append(codec_encode(self.vae, chunk, generator).to(self.device, torch.float32))
            if tick is not None:
                tick()
        return torch.cat(out)

    def encode_condition(self, frames: torch.Tensor, holes: torch.Tensor, generator: torch.Generator | None = None,
                         cancel: CancelFn | None = None, tick: Callable[[], None] | None = None) -> torch.Tensor:
        """BrushNet's condition ``(T, 5, h, w)``: latents of ``frame·(1−hole)`` and the known-mask (1 = known).

        The mask goes to latent size by nearest-neighbour sampling, as the released pipeline does.
        """
        known = (~holes.bool()).float()
        latents = self.encode_frames(frames * known[..., None], generator, cancel, tick)
        mask = F.interpolate(known[:, None], size=tuple(latents.shape[-2:]), mode="nearest").to(latents.device)
        return torch.cat([latents, mask], dim=1)

    def decode_latents(self, latents: torch.Tensor, cancel: CancelFn | None = None,
                       tick: Callable[[], None] | None = None) -> torch.Tensor:
        """Scaled latents -> ``(T, H, W, 3)`` float32 in [0, 1] on the CPU, in chunks (``tick()`` after each)."""
        out = []
        for start in range(0, latents.shape[0], self.vae_batch):
            _check_cancel(cancel)
            images = self.vae.decode(latents[start:start + self.vae_batch])
            out.append((images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu())
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
               rng: _Randomness, refine_iters: int) -> _Run:
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
                    step_kwargs(probe, eta, rng.step), int(refine_iters), _Progress(0, None, None))

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
        rng = _Randomness.make(seed, generator)
        run = self._setup(text_embeds, negative_embeds, guidance_scale, init_mode, num_inference_steps,
                          scheduler, t_start, 0.0, rng, refine_iters)
        sets = context_windows(inputs.num_frames, self.window, self.overlap)
        _, timesteps = self._new_scheduler(run)
        evals = _steps_per_pass(sets, len(timesteps)) * (1 + refine_iters) if init_mode != "noise" else 0
        # Work plan for progress: VAE batches (prior; condition for the inversion) and inversion windows.
        vae_units = self.vae_batches(inputs.num_frames) * ((inputs.prior is not None) + (init_mode != "noise"))
        run.progress = _Progress(evals + vae_units, progress, cancel)
        prior_latents, noise = self._prior_and_noise(inputs, init_mode, rng, cancel, run.progress.advance)
        cond = (self.encode_condition(inputs.frames, inputs.holes, rng.cond, cancel, run.progress.advance)
                if init_mode != "noise" else None)
        tiled = tile_noise(noise, inputs.num_frames) if noise is not None else None
        latents = self._start(run, init_mode, prior_latents, cond, sets, tiled)
        return InitLatents(latents.cpu(), init_mode, [int(t) for t in timesteps], prior_latents.cpu(),
                           noise, rng.seed)

    def _prior_and_noise(self, inputs: VideoInputs, init_mode: str, rng: _Randomness, cancel: CancelFn | None,
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
        rng = _Randomness.make(seed, generator)
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
        run.progress = _Progress(total, progress, cancel)
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


# ------------------------------------------------------------------------------------------
# Text embedding without ComfyUI

EMPTY_PROMPT_EMBEDS_FILE = "empty_prompt_embeds.safetensors"
_TEXT_KEY = "text_embeds"


def load_text_embeds(path: str | os.PathLike) -> torch.Tensor:
    """A precomputed prompt embedding from a ``.safetensors`` file (key ``text_embeds``, or its only tensor)."""
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"text embedding file not found: {p}")
    tensors = load_file(str(p))
    if _TEXT_KEY in tensors:
        emb = tensors[_TEXT_KEY]
    elif len(tensors) == 1:
        emb = next(iter(tensors.values()))
    else:
        raise RrdpoInputError(f"{p}: holds {sorted(tensors)}; expected one tensor or a '{_TEXT_KEY}' key")
    emb = emb[None] if emb.ndim == 2 else emb
    if emb.ndim != 3 or emb.shape[0] != 1:
        raise RrdpoInputError(f"{p}: expected a (1, 77, D) embedding, got {tuple(emb.shape)}")
    return emb.float()


def save_text_embeds(path: str | os.PathLike, text_embeds: torch.Tensor) -> Path:
    """Write a prompt embedding for :func:`load_text_embeds` (atomically)."""
    from safetensors.torch import save_file

    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        save_file({_TEXT_KEY: text_embeds.detach().float().cpu().contiguous()}, str(tmp))
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def encode_prompt(text_encoder: str | os.PathLike, prompt: str = "", device: torch.device | str = "cpu") -> torch.Tensor:
    """Encode ``prompt`` with a local SD1.5 CLIP text encoder (last hidden state, as DiffuEraser).

    ``text_encoder`` is the SD1.5 folder (with ``tokenizer/`` and ``text_encoder/``) or a folder
    holding both the tokenizer and the text encoder files. Nothing is downloaded.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(text_encoder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"text encoder folder not found: {root}; pass the SD1.5 folder that holds "
                                "tokenizer/ and text_encoder/")
    tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
    enc_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(str(enc_dir), local_files_only=True).to(device).eval()
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"could not load a CLIP tokenizer and text encoder from {root}: {exc}") from exc
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        return encoder(ids).last_hidden_state.float().cpu()


def resolve_text_embeds(text_embeds: torch.Tensor | str | os.PathLike | None = None,
                        text_encoder: str | os.PathLike | None = None,
                        model_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """The empty-prompt embedding for a run without ComfyUI, from (first that applies):

    1. ``text_embeds``: a tensor, or a ``.safetensors`` file (:func:`load_text_embeds`);
    2. ``text_encoder``: an SD1.5 folder with ``tokenizer/`` and ``text_encoder/`` (encoded once);
    3. ``<model_dir>/empty_prompt_embeds.safetensors`` if it exists.
    """
    if isinstance(text_embeds, torch.Tensor):
        return text_embeds
    if text_embeds is not None:
        return load_text_embeds(text_embeds)
    if text_encoder is not None:
        return encode_prompt(text_encoder, "")
    if model_dir is not None and (Path(model_dir) / EMPTY_PROMPT_EMBEDS_FILE).is_file():
        return load_text_embeds(Path(model_dir) / EMPTY_PROMPT_EMBEDS_FILE)
    raise FileNotFoundError(
        "DiffuEraser needs the empty prompt's CLIP embedding. Pass text_encoder=<SD1.5 folder with tokenizer/ and "
        f"text_encoder/>, or text_embeds=<file .safetensors> (make one once with save_text_embeds(path, "
        f"encode_prompt(<SD1.5 folder>))), or put it at <model_dir>/{EMPTY_PROMPT_EMBEDS_FILE}")


# ------------------------------------------------------------------------------------------
# One-call entry point (used by the command line)


def find_pcm_lora(model_dir: str | os.PathLike, steps: int) -> Path | None:
    """The PCM LoRA for ``steps`` steps next to the model folder, if there is one.

    Looks for ``pcm_sd15_smallcfg_<steps>step_converted.safetensors`` in the model folder, its
    parent, ``<parent>/loras``, ``<parent>/PCM_Weights/sd15`` (released layout) and, for ComfyUI's
    ``models/diffueraser/<name>``, ``models/loras``.
    """
    root = Path(model_dir).expanduser()
    name = f"pcm_sd15_smallcfg_{steps}step_converted.safetensors"
    for folder in (root, root.parent, root.parent / "loras", root.parent / "PCM_Weights" / "sd15",
                   root.parent.parent / "loras"):
        if (folder / name).is_file():
            return folder / name
    return None


def _resolve_device_dtype(device: Any, dtype: Any) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        return device, (torch.float16 if device.type == "cuda" else torch.float32)
    if isinstance(dtype, str):
        names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                 "fp32": torch.float32, "float32": torch.float32}
        if dtype.lower() not in names:
            raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype.lower()]
    if device.type == "cpu" and dtype != torch.float32:
        warnings.warn("half precision on the CPU is slow and inexact; using float32", stacklevel=3)
        dtype = torch.float32
    return device, dtype


def remove_objects(
    frames: Any,
    masks: Any,
    *,
    model_dir: str | os.PathLike,
    vae_path: str | os.PathLike,
    lora_path: str | os.PathLike | None = None,
    lora_strength: float = 1.0,
    prior_frames: Any = None,
    steps: int = 2,
    seed: int | None = None,
    device: Any = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    text_embeds: torch.Tensor | str | os.PathLike | None = None,
    text_encoder: str | os.PathLike | None = None,
    pcm_lora: str | os.PathLike | None = "auto",
    scheduler: str = "tcd",
    dtype: Any = None,
    blend: bool = True,
    init_mode: str = "noise",
    t_start: int = 999,
    offload: str = "none",
) -> torch.Tensor | np.ndarray:
    """Remove the masked objects from a video with DiffuEraser, from weights on disk.

    Args:
        frames: ``(T, H, W, 3)`` float in [0, 1] or uint8, torch or numpy. Any size: sides that are
            not multiples of 8 are padded (reflected) for the model and cropped back.
        masks: ``(T, H, W)``, 1 = hole, used as given (dilate them first as the released code
            does: ``rrdpo_core.masks.prepare_masks``).
        model_dir: folder with ``brushnet/`` and ``unet_main/`` (released layout).
        vae_path: SD1.5 VAE folder or single ``.safetensors`` file (``sd-vae-ft-mse``).
        lora_path, lora_strength: a Region-DPO LoRA to apply to the UNet.
        prior_frames: the prior; None computes the weight-free flow-propagation prior.
        steps: sampling steps (2 with TCD + PCM, as released).
        seed: fixes the result (None: random).
        device: None = CUDA if available, else CPU. fp16 on CUDA (``dtype`` overrides), fp32 on CPU.
        progress, cancel: see :class:`DiffuEraserPipeline`.
        text_embeds, text_encoder: where the empty-prompt embedding comes from
            (:func:`resolve_text_embeds`).
        pcm_lora: ``"auto"`` finds the PCM LoRA for ``steps`` near ``model_dir``
            (:func:`find_pcm_lora`); a path uses that file; None runs without it.
        blend: composite the result into the input (``rrdpo_core.blend.blend_into_video``, the
            released Gaussian feather), so every pixel away from the holes is the input's exactly;
            False returns the raw generated frames.
        offload: low-memory sampling (:mod:`rrdpo_core.offload`): ``"none"`` (default, all on the
            device), ``"windows"``, ``"blocks"`` or ``"auto"`` (from the GPU's free memory). Every
            level gives the same result.

    Returns:
        ``(T, H, W, 3)`` float32 in [0, 1] at the input size: a torch tensor if ``frames`` was one,
        else numpy. An all-zero mask returns the input at once (no weights are loaded).
    """
    inputs = check_inputs(frames, masks, prior_frames, multiple=None)
    as_numpy = not isinstance(frames, torch.Tensor)

    def result(video: torch.Tensor) -> torch.Tensor | np.ndarray:
        return video.numpy() if as_numpy else video

    if not bool(inputs.holes.any()):
        return result(inputs.frames)
    device, dtype = _resolve_device_dtype(device, dtype)

    from .models import load_diffueraser

    # offload "stream": the block weights are never resident (a region LoRA's base-model check reads them, so not then).
    model = load_diffueraser(model_dir, dtype=dtype, device=device, stream=offload == "stream" and lora_path is None)
    text = resolve_text_embeds(text_embeds, text_encoder, model_dir)
    pcm = find_pcm_lora(model_dir, steps) if pcm_lora == "auto" else pcm_lora
    if pcm is not None:
        from .lora import apply_kohya_lora

        pcm = Path(pcm).expanduser()
        if not pcm.is_file():
            raise FileNotFoundError(f"PCM LoRA not found: {pcm}")
        apply_kohya_lora(model.unet, pcm, adapter_name="pcm")
    elif pcm_lora == "auto" and scheduler == "tcd" and steps <= 8:
        warnings.warn(f"no PCM LoRA (pcm_sd15_smallcfg_{steps}step_converted.safetensors) found near {model_dir}: "
                      f"{steps}-step TCD without it gives blurry results. Put the file next to the model folder, "
                      "pass pcm_lora=<file>, or use scheduler='unipc' with about 20 steps", stacklevel=2)
    if lora_path is not None:
        from .region_lora import apply_region_lora

        apply_region_lora(model, lora_path, strength=lora_strength)
    codec = _load_codec(vae_path, dtype, device)

    if inputs.prior is None:
        if bool(inputs.holes.all()):
            warnings.warn("the mask covers every pixel of every frame: nothing to propagate, running without a prior",
                          stacklevel=2)
        else:
            from .prior import flow_propagation_prior

            inputs.prior = flow_propagation_prior(inputs.frames, inputs.holes, cancel=cancel).frames
    padded, (height, width) = pad_to_multiple(inputs)
    if (height, width) != padded.size:
        warnings.warn(f"frames are {width}x{height}; padded to {padded.size[1]}x{padded.size[0]} (multiples of 8) "
                      "for the model and cropped back", stacklevel=2)
    # Low-memory sampling (rrdpo_core.offload): same result, less on the GPU; "auto" reads its free memory.
    from .memory import available_ram
    from .offload import low_memory, plan_offload

    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_ram()
    plan = plan_offload(offload, model, *padded.size, padded.num_frames, compute_device=device, free_bytes=free)
    with low_memory(model, codec, plan) as (denoiser, low_codec):
        out = DiffuEraserPipeline(denoiser, low_codec)(
            padded.frames, padded.holes, padded.prior, text, num_inference_steps=steps, scheduler=scheduler,
            seed=seed, progress=progress, cancel=cancel, init_mode=init_mode, t_start=t_start)
    generated = out.frames[:, :height, :width]
    if not blend:
        return result(generated.contiguous())
    from .blend import blend_into_video

    return result(torch.as_tensor(blend_into_video(inputs.frames, generated, inputs.holes)).float().contiguous())


def _load_codec(vae_path: Any, dtype: torch.dtype, device: torch.device) -> LatentCodec:
    if hasattr(vae_path, "encode") and hasattr(vae_path, "decode"):
        return vae_path  # already a codec (tests, other callers)
    from .vae import load_vae

    return load_vae(vae_path, dtype=dtype, device=device)
