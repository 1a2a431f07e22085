"""Reading tensors out of a ``.safetensors`` file with plain reads, one tensor at a time.

safetensors' own reader memory-maps the file. Copying out of the map page-faults 4 KB at a time
and the mapped pages count in the process's RSS for as long as the map lives: on the 5 GB motion
UNet that costs about 2x the load time and a second copy's worth of resident memory, and it would
defeat weight streaming (``rrdpo_core.streaming``), whose point is a small RSS. This module reads
the documented layout (an 8-byte little-endian header size, a JSON header whose entries give
``dtype``, ``shape`` and ``data_offsets``, then the raw little-endian data) with ``readinto``
straight into each tensor's own buffer. Files are validated with ``safe_open`` by the loader first.
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = ["FILE_DTYPES", "read_layout", "read_tensor"]

# the safetensors dtypes a DiffuEraser weight may be stored in
FILE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_layout(file: str | Path) -> tuple[dict[str, Any], int]:
    """The header (``{key: {"dtype", "shape", "data_offsets"}}``, metadata removed) and the offset
    where the data starts."""
    if sys.byteorder != "little":
        raise ValueError("reading safetensors data directly needs a little-endian machine")
    with open(file, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        layout = json.loads(fh.read(size))
    layout.pop("__metadata__", None)
    return layout, 8 + size


def read_tensor(fh: BinaryIO, data_start: int, begin: int, end: int, shape: torch.Size | list[int],
                file_dtype: torch.dtype, *, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """The tensor stored at ``[begin, end)`` of the data section of the open file ``fh``, as stored
    (``file_dtype``), read into a fresh buffer, or into ``out`` (a contiguous CPU tensor of that
    shape and dtype) when given. ``name`` is used in the error messages."""
    if out is not None and (out.shape != torch.Size(shape) or out.dtype != file_dtype or not out.is_contiguous()
                            or out.device.type != "cpu"):
        raise ValueError(f"{name}: the buffer to read into must be a contiguous CPU {file_dtype} tensor of shape "
                         f"{tuple(shape)}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    buffer = torch.empty(shape, dtype=file_dtype) if out is None else out
    view = memoryview(buffer.reshape(-1).view(torch.uint8).numpy())
    if len(view) != end - begin:
        raise ValueError(f"{name}: {end - begin} bytes stored for a tensor of {len(view)} bytes")
    fh.seek(data_start + begin)
    done = 0
    while done < len(view):
        n = fh.readinto(view[done:])
        if not n:
            raise ValueError(f"{name}: the file ended early (was it changed or truncated after it was checked?)")
        done += n
    return buffer
