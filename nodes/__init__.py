"""ComfyUI node classes (classic V1 API), one module per family, merged here.

Node ids are stable once released; display names are for people.
"""
from __future__ import annotations

from . import _comfy, evaluation, masks, models, prior, sampling, training, video

_comfy.register_model_folders()

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _family in (video, masks, prior, models, sampling, training, evaluation):
    NODE_CLASS_MAPPINGS.update(_family.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_family.NODE_DISPLAY_NAME_MAPPINGS)
