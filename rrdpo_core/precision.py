"""Which dtype DiffuEraser runs at on which device (light: imported when ComfyUI lists the nodes)."""
from __future__ import annotations

import torch

__all__ = ["DTYPE_CHOICES", "inference_dtype"]

# What "Load DiffuEraser" offers; auto = fp16, the precision the released weights are stored in.
DTYPE_CHOICES = ("auto", "fp16", "bf16", "fp32")
_DTYPES = {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def inference_dtype(choice: str, device: torch.device | str) -> torch.dtype:
    """The dtype to run DiffuEraser at for a ``choice`` in :data:`DTYPE_CHOICES` on ``device``.

    Always float32 on the CPU (half precision there is slow or unsupported); on a GPU the
    choice, ``auto`` being fp16.
    """
    if choice not in _DTYPES:
        raise ValueError(f"dtype: {choice!r} is not one of {', '.join(DTYPE_CHOICES)}")
    if torch.device(device).type == "cpu":
        return torch.float32
    return _DTYPES[choice]
