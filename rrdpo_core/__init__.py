"""Region-Reg-DPO core library.

Pure torch / diffusers / peft / OpenCV code with no ComfyUI import, so it can be used from the
command line (``python -m rrdpo_core``), from ``accelerate launch`` and from the ComfyUI nodes.
Submodules are imported lazily by their users; importing this package stays cheap.
"""

__version__ = "0.1.0"
