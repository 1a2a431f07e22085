"""ProPainter (Zhou et al., ICCV 2023) as DiffuEraser's prior, from the official weights.

Our own implementation of ProPainter's inference path - RAFT flow, recurrent flow completion,
dual-domain propagation and the mask-guided sparse transformer - that loads the user's copies of
the three released checkpoints (``raft-things.pth``, ``recurrent_flow_completion.pth``,
``ProPainter.pth``) key for key. ProPainter's code and weights are under the NTU S-Lab License 1.0
(non-commercial); this code is ours, the weights are the user's. Nothing is downloaded.

    models = load_propainter("models/propainter", device="cuda", dtype=torch.float16)
    prior = propainter_prior(frames, masks, models, progress=..., cancel=...)
"""
from __future__ import annotations

from .checkpoints import CHECKPOINTS, RELEASE_URL, ProPainterModels, load_propainter, resolve_checkpoints
from .inference import DIFFUERASER_SETTINGS, PROPAINTER_DEFAULTS, processing_size, propainter_prior

__all__ = ["CHECKPOINTS", "DIFFUERASER_SETTINGS", "PROPAINTER_DEFAULTS", "RELEASE_URL", "ProPainterModels",
           "load_propainter", "processing_size", "propainter_prior", "resolve_checkpoints"]
