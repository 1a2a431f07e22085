"""Region-Reg-DPO for ComfyUI: DiffuEraser video object removal and Region-DPO LoRA training.

ComfyUI imports this folder as a package (by path, under a mangled module name) and reads
``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``. All the work lives in ``rrdpo_core``
(no ComfyUI imports); ``nodes`` holds the thin adapters.
"""
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    # Imported as a lone module, not as a package: pytest does this with the repository root when
    # the checkout's folder name is not a Python identifier (e.g. "ComfyUI-RRDPO"). There is no
    # package to import the nodes relative to; the tests load the pack by path (tests/pack.py).
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
