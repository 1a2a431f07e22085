"""Region-Reg-DPO for ComfyUI: DiffuEraser video object removal and Region-DPO LoRA training.

ComfyUI imports this folder as a package (by path, under a mangled module name) and reads
``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``. All the work lives in ``rrdpo_core``
(no ComfyUI imports); ``nodes`` holds the thin adapters.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
