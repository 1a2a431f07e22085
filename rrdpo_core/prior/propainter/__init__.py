"""ProPainter (Zhou et al., ICCV 2023) as DiffuEraser's prior, from the official weights.

A re-implementation of ProPainter's architecture and inference path - RAFT flow, recurrent flow
completion, dual-domain propagation and the mask-guided sparse transformer - that follows
ProPainter's code (github.com/sczhou/ProPainter) closely, module for module, so that it loads the
user's copies of the three released checkpoints (``raft-things.pth``,
``recurrent_flow_completion.pth``, ``ProPainter.pth``) key for key. Because it is derived from
ProPainter's code, this sub-package (``rrdpo_core/prior/propainter/``) is under the S-Lab License
1.0 (non-commercial use only; the text is in ``LICENSE`` beside this file), like the weights; the
rest of the pack is Apache-2.0 and works without it (the flow prior needs no weights). Nothing is
downloaded.

    models = load_propainter("models/propainter", device="cuda", dtype=torch.float16)
    prior = propainter_prior(frames, masks, models, progress=..., cancel=...)
"""
from __future__ import annotations

from .checkpoints import CHECKPOINTS, RELEASE_URL, ProPainterModels, load_propainter, resolve_checkpoints
from .inference import DIFFUERASER_SETTINGS, PROPAINTER_DEFAULTS, processing_size, propainter_prior

__all__ = ["CHECKPOINTS", "DIFFUERASER_SETTINGS", "PROPAINTER_DEFAULTS", "RELEASE_URL", "ProPainterModels",
           "load_propainter", "processing_size", "propainter_prior", "resolve_checkpoints"]
