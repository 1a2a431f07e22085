"""Priors for DiffuEraser: the hole filled before the diffusion model refines it.

``flow_propagation_prior`` needs no weights (OpenCV optical flow and propagation; a torch/kornia
path for GPUs). ``source_preview`` draws its source map. The ProPainter prior, which needs the
user's ProPainter checkpoints, lives in ``rrdpo_core.prior.propainter`` and is imported from there
on demand (it pulls in the networks).
"""
from __future__ import annotations

from .flow import DIS_PRESETS, PriorResult, flow_propagation_prior
from .preview import SOURCE_COPIED, SOURCE_FUSED, SOURCE_KNOWN, SOURCE_SPATIAL, source_preview

__all__ = ["DIS_PRESETS", "PriorResult", "flow_propagation_prior", "source_preview",
           "SOURCE_KNOWN", "SOURCE_COPIED", "SOURCE_FUSED", "SOURCE_SPATIAL"]
