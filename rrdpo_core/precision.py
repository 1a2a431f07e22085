"""Which device and dtype DiffuEraser runs at: the nodes' choice and the one-call API's (light: imported
when ComfyUI lists the nodes)."""
from __future__ import annotations

import warnings
from typing import Any

import torch

__all__ = ["DTYPE_CHOICES", "inference_dtype", "resolve_device_dtype"]

# What "Load DiffuEraser" offers; auto = fp16, the precision the released weights are stored in.
DTYPE_CHOICES = ("auto", "fp16", "bf16", "fp32")
# names the one-call API and the command line accept
_DTYPE_NAMES = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                "fp32": torch.float32, "float32": torch.float32}
_DTYPES = {"auto": torch.float16, **{choice: _DTYPE_NAMES[choice] for choice in DTYPE_CHOICES[1:]}}


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


def resolve_device_dtype(device: Any = None, dtype: Any = None) -> tuple[torch.device, torch.dtype]:
    """The device (None: CUDA if available, else the CPU) and the weights' dtype (None: fp16 on CUDA,
    fp32 on the CPU; a name such as ``"bf16"`` or a torch dtype). Half precision on the CPU warns and
    falls back to fp32."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        return device, (torch.float16 if device.type == "cuda" else torch.float32)
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPE_NAMES)}, got {dtype!r}")
        dtype = _DTYPE_NAMES[dtype.lower()]
    if device.type == "cpu" and dtype != torch.float32:
        warnings.warn("half precision on the CPU is slow and inexact; using float32", stacklevel=3)
        dtype = torch.float32
    return device, dtype
