"""DiffuEraser's networks, weight-compatible with the released checkpoints.

* ``BrushNetModel``: the 9-channel BrushNet branch with cross-attention (28 zero-conv residuals).
* ``DiffuEraserUNetMotionModel``: diffusers' ``UNetMotionModel`` with BrushNet injection and the
  mid-block order the released weights were trained with.
* ``DiffuEraserModel``: both, with ``predict_eps`` for one window of frames.
* ``load_diffueraser``: strict, low-memory loading of the released ``brushnet/`` + ``unet_main/`` folders.

The tiny-checkpoint helper for tests lives in ``rrdpo_core.models.testing``.
"""
from .brushnet import BrushNetModel, BrushNetOutput
from .diffueraser import CONFIG_NAMES, DiffuEraserModel, packaged_config
from .loader import CheckpointError, load_diffueraser, save_diffueraser
from .unet_motion import DiffuEraserUNetMotionModel

__all__ = [
    "BrushNetModel",
    "BrushNetOutput",
    "CONFIG_NAMES",
    "CheckpointError",
    "DiffuEraserModel",
    "DiffuEraserUNetMotionModel",
    "load_diffueraser",
    "packaged_config",
    "save_diffueraser",
]
