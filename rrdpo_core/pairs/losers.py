"""Losers of the preference pairs: a model's completion of the hole, composited as a user receives it.

Kinds: ``hallucination`` (DiffuEraser without a prior), ``blur`` (the flow-propagation prior alone)
and ``flicker`` (DiffuEraser on the two halves of the clip with different seeds).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..blend import blend_into_video
from ..errors import RrdpoInputError
from ..progress import CancelFn, ProgressFn
from .format import LOSER_KINDS

__all__ = ["LoserGenerator", "composite_onto_truth"]


def composite_onto_truth(truth: torch.Tensor, generated: torch.Tensor, hole: torch.Tensor,
                         mode: str = "gaussian") -> torch.Tensor:
    """The loser as a user receives it: generated pixels in the hole, the truth elsewhere.

    ``mode="gaussian"`` is DiffuEraser's feathered paste (the hole stays fully generated, the
    feather only extends outward); ``"hard"`` pastes the hole exactly. ``(T,H,W,3)`` in [0, 1].
    """
    if mode == "hard":
        a = hole.to(truth.dtype)[..., None]
        return generated * a + truth * (1 - a)
    if mode != "gaussian":
        raise ValueError(f"composite mode must be 'gaussian' or 'hard', got {mode!r}")
    out = blend_into_video(truth, generated, hole, mode="gaussian")
    return torch.as_tensor(np.asarray(out) if not torch.is_tensor(out) else out).float()


class LoserGenerator:
    """Makes the three loser kinds with the DiffuEraser sampler and the flow-propagation prior.

    ``__call__(kind, frames, hole, seeds)`` returns the raw completion ``(T,H,W,3)`` in [0, 1]
    (before compositing) and a dict of the settings used. Subclass or pass callables in
    ``overrides={kind: fn(frames, hole, seeds) -> frames}`` to change one kind.
    """

    def __init__(self, model: Any, vae: Any, text_embeds: torch.Tensor, *, num_inference_steps: int = 2,
                 scheduler: str = "tcd", overrides: Mapping[str, Callable[..., torch.Tensor]] | None = None,
                 prior_kwargs: Mapping[str, Any] | None = None):
        self.model, self.vae, self.text_embeds = model, vae, text_embeds
        self.num_inference_steps, self.scheduler = int(num_inference_steps), scheduler
        self.overrides = dict(overrides or {})
        self.prior_kwargs = dict(prior_kwargs or {})
        self._pipe = None
        # Set by build_preference_pairs for the pair being made: the pipeline and the prior report
        # into ``progress(done, total)`` of the current phase and poll ``cancel``.
        self.progress: ProgressFn | None = None
        self.cancel: CancelFn | None = None

    # number of sampler seeds each kind consumes
    SEEDS = {"hallucination": 1, "blur": 0, "flicker": 2}

    def settings(self, kind: str) -> dict[str, Any]:
        s: dict[str, Any] = {"kind": kind}
        if kind in ("hallucination", "flicker"):
            s.update(num_inference_steps=self.num_inference_steps, scheduler=self.scheduler)
        if kind == "hallucination":
            s["prior"] = "none (pure noise start)"
        else:
            s["prior"] = "flow_propagation"
            s.update({f"prior.{k}": v for k, v in self.prior_kwargs.items()})
        if kind == "flicker":
            s["seam"] = "two halves sampled independently with different seeds"
        if kind in self.overrides:
            s["override"] = getattr(self.overrides[kind], "__name__", "custom")
        return s

    @property
    def pipe(self):
        if self._pipe is None:
            # Imported on first use: the trainer reads pairs without loading the sampler.
            from ..pipeline import DiffuEraserPipeline

            self._pipe = DiffuEraserPipeline(self.model, self.vae)
        return self._pipe

    def _prior(self, frames: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        from ..prior import flow_propagation_prior

        return torch.as_tensor(flow_propagation_prior(frames, hole, progress=self.progress, cancel=self.cancel,
                                                      **self.prior_kwargs).frames).float()

    def _sample(self, frames: torch.Tensor, hole: torch.Tensor, prior: torch.Tensor | None, seed: int) -> torch.Tensor:
        out = self.pipe(frames, hole, prior, self.text_embeds, num_inference_steps=self.num_inference_steps,
                        scheduler=self.scheduler, seed=int(seed), progress=self.progress, cancel=self.cancel)
        return torch.as_tensor(out.frames).float()

    def __call__(self, kind: str, frames: torch.Tensor, hole: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        if kind in self.overrides:
            return torch.as_tensor(self.overrides[kind](frames, hole, seeds)).float()
        if kind == "hallucination":
            return self._sample(frames, hole, None, seeds[0])
        if kind == "blur":
            return self._prior(frames, hole)
        if kind == "flicker":
            t = frames.shape[0]
            if t < 2:
                raise RrdpoInputError("the 'flicker' loser needs clips of at least 2 frames")
            prior = self._prior(frames, hole)
            k = t // 2
            first = self._sample(frames[:k], hole[:k], prior[:k], seeds[0])
            second = self._sample(frames[k:], hole[k:], prior[k:], seeds[1])
            return torch.cat([first, second], 0)
        raise ValueError(f"unknown loser kind {kind!r}; choose from {LOSER_KINDS}")
