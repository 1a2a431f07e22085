"""Loading (and writing) DiffuEraser weights in the released folder layout.

The release (Hugging Face ``lixiaowen/diffuEraser``, reference §4) is::

    <path>/brushnet/config.json
    <path>/brushnet/diffusion_pytorch_model.safetensors      (3.54 GB, fp32)
    <path>/unet_main/config.json
    <path>/unet_main/diffusion_pytorch_model.safetensors     (5.25 GB, fp32)

(``diffusion_pytorch_model.fp16.safetensors`` is the half-precision variant). Loading is strict:
every tensor the config's network has must be in the file with its shape, nothing else may be;
the motion modules' sinusoidal ``pos_embed.pe`` buffers may be absent, since their values follow
from the config. Every failure names the file and says what to do.

Memory: the networks are built on the meta device (no weights allocated); the file's header is
checked with ``safetensors.safe_open``, then each tensor is read straight into its own buffer,
converted to the target dtype and device one tensor at a time, and assigned into the model. The
file is never memory-mapped whole, so the peak resident memory stays close to the size of the
loaded model, not twice it.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Union

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..fsutil import atomic_path
from ..tensorfile import FILE_DTYPES, read_layout, read_tensor
from ..streaming import WeightStream, placeholder, record_source, streamed_keys
from .brushnet import BrushNetModel
from .diffueraser import DiffuEraserModel
from .unet_motion import DiffuEraserUNetMotionModel

__all__ = ["load_diffueraser", "save_diffueraser", "CheckpointError", "RELEASE_URL", "CONFIG_NAME", "weights_name"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
RELEASE_URL = "https://huggingface.co/lixiaowen/diffuEraser"
CONFIG_NAME = "config.json"
# The file stores the config's class under these names; our classes accept them.
_COMPONENTS: dict[str, tuple[type, str]] = {
    "brushnet": (BrushNetModel, "BrushNetModel"),
    "unet_main": (DiffuEraserUNetMotionModel, "UNetMotionModel"),
}
# Keys only one of the two files has, to recognise swapped folders.
_SIGNATURE_KEYS = {"brushnet": "conv_in_condition.weight", "unet_main": "conv_out.weight"}
_OPTIONAL_SUFFIX = ".pos_embed.pe"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
class CheckpointError(ValueError):
    """A DiffuEraser weights file or config that cannot be loaded; the message says which and why."""


def weights_name(variant: str | None = None) -> str:
    """``diffusion_pytorch_model[.<variant>].safetensors``."""
    return f"diffusion_pytorch_model.{variant}.safetensors" if variant else "diffusion_pytorch_model.safetensors"


def load_diffueraser(
    path: PathLike,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    variant: str | None = None,
    stream: bool = False,
) -> DiffuEraserModel:
    """Load the released DiffuEraser networks from ``path`` (the folder holding ``brushnet/`` and ``unet_main/``).

    Args:
        dtype: dtype of the loaded networks (the files are converted tensor by tensor).
        device: where the weights go; on a GPU the CPU never holds the whole model.
        variant: ``"fp16"`` reads ``diffusion_pytorch_model.fp16.safetensors``. With ``None`` the plain
            file is read, or the fp16 one if it is the only one present.
        stream: keep only the small top-level parts of each network in memory; the weights of
            their down/mid/up blocks are read from the file for each forward and dropped after
            (``rrdpo_core.streaming``; the same results; for the released networks in fp32 0.12 GB
            stays resident, plus one layer of at most 0.2 GB while it runs, instead of 8.8 GB). The weights are then fixed to the file's: no fused LoRA, no training.

    Returns:
        A ``DiffuEraserModel`` in eval mode with ``requires_grad=False`` everywhere (adapters added
        later for training switch on their own parameters).

    Raises:
        FileNotFoundError: a folder or file is missing.
        CheckpointError (a ValueError): a file is incomplete, damaged, or does not match its config.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"DiffuEraser weights folder not found: {root}. Download {RELEASE_URL} so that this folder contains "
            "brushnet/ and unet_main/ (each with config.json and diffusion_pytorch_model.safetensors)."
        )
    missing = [name for name in _COMPONENTS if not (root / name).is_dir()]
    if missing:
        present = sorted(p.name for p in root.iterdir())
        raise FileNotFoundError(
            f"{root} has no {' or '.join(f'{m}/' for m in missing)} folder (it contains: {present or 'nothing'}). "
            f"Point to the folder of {RELEASE_URL} that holds both brushnet/ and unet_main/."
        )
    dtype = _resolve_dtype(dtype)
    device = torch.device(device)
    brushnet = _load_component(root / "brushnet", "brushnet", dtype=dtype, device=device, variant=variant,
                               stream=stream)
    unet = _load_component(root / "unet_main", "unet_main", dtype=dtype, device=device, variant=variant, stream=stream)
    try:
        model = DiffuEraserModel(brushnet, unet)
    except ValueError as err:
        raise CheckpointError(f"{root}: brushnet/ and unet_main/ do not belong together ({err}). "
                              f"Download both folders from {RELEASE_URL} again.") from err
    return model.eval().requires_grad_(False)


def save_diffueraser(model: DiffuEraserModel, path: PathLike, variant: str | None = None,
                     dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` in the released layout (``brushnet/``, ``unet_main/``), each file atomically.

    The configs name the classes as the release does (``BrushNetModel``, ``UNetMotionModel``), so the
    folder reads like the original. ``dtype`` converts the saved tensors (e.g. fp16 with variant "fp16").
    """
    root = Path(path)
    for name, component in (("brushnet", model.brushnet), ("unet_main", model.unet)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        config = json.loads(component.to_json_string())
        config["_class_name"] = _COMPONENTS[name][1]
        _atomic_write(folder / CONFIG_NAME, lambda tmp, c=config: Path(tmp).write_text(
            json.dumps(c, indent=2, sort_keys=True) + "\n", encoding="utf-8"))
        state = {k: v.detach().to(device="cpu", dtype=dtype or v.dtype).contiguous()
                 for k, v in component.state_dict().items()}
        _atomic_write(folder / weights_name(variant), lambda tmp, s=state: save_file(s, tmp, metadata={"format": "pt"}))
    return root


# ------------------------------------------------------------------------------------------------


def _load_component(folder: Path, name: str, *, dtype: torch.dtype, device: torch.device, variant: str | None,
                    stream: bool = False):
    cls, _ = _COMPONENTS[name]
    config = _read_config(folder, name)
    weights = _find_weights(folder, name, variant)
    with init_empty_weights():  # parameters on "meta"; buffers (pos_embed.pe) are real and computed
        try:
            model = cls.from_config(config)
        except (ValueError, TypeError, KeyError) as err:
            raise CheckpointError(f"{folder / CONFIG_NAME} does not describe a DiffuEraser {name} network: {err}. "
                                  f"Download {name}/config.json from {RELEASE_URL} again.") from err
    skip = streamed_keys(model) if stream else set()
    _load_weights(model, weights, name, dtype=dtype, device=device, skip=skip)
    # Only the computed buffers still need moving. nn.Module.to, because ModelMixin.to warns about
    # fp32-pinned modules on every dtype cast even when, as here, there are none.
    model = torch.nn.Module.to(model, device=device, dtype=dtype)
    record_source(model, weights, dtype)  # lets offload "stream" re-read these weights from the file
    if stream:
        WeightStream(model, device).attach()
    return model


def _read_config(folder: Path, name: str) -> dict[str, Any]:
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} is missing. Download {name}/{CONFIG_NAME} from {RELEASE_URL} into {folder} "
            f"(the packaged copy rrdpo_core/models/configs/{name}.json describes the same network)."
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON ({err}); it is probably an incomplete download. "
                              f"Download {name}/{CONFIG_NAME} from {RELEASE_URL} again.") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} does not hold a JSON object. Download {name}/{CONFIG_NAME} from {RELEASE_URL} again.")
    cls, released_name = _COMPONENTS[name]
    class_name = config.get("_class_name")
    if class_name is not None and class_name not in (released_name, cls.__name__):
        other = next((o for o, (c, r) in _COMPONENTS.items() if class_name in (r, c.__name__)), None)
        hint = f" That is the {other} config: are brushnet/ and unet_main/ swapped?" if other else ""
        raise CheckpointError(f"{file} describes a {class_name}, not the {released_name} expected in {name}/.{hint} "
                              f"Download {name}/{CONFIG_NAME} from {RELEASE_URL} again.")
    return config


def _find_weights(folder: Path, name: str, variant: str | None) -> Path:
    file = folder / weights_name(variant)
    if file.is_file():
        return file
    if variant is None and (folder / weights_name("fp16")).is_file():
        logger.info("%s: using the fp16 variant, the only weights file present", folder)
        return folder / weights_name("fp16")
    pickled = sorted(p.name for p in folder.glob("diffusion_pytorch_model*.bin"))
    hint = (f" Only {pickled} is there: these networks load from .safetensors only (no pickled code runs); "
            "download the .safetensors file instead." if pickled else "")
    raise FileNotFoundError(f"{file} is missing.{hint} Download {name}/{file.name} from {RELEASE_URL} into {folder}.")


def _load_weights(model: torch.nn.Module, file: Path, name: str, *, dtype: torch.dtype, device: torch.device,
                  skip: set[str] = frozenset()) -> None:
    redownload = f"Delete it and download {name}/{file.name} from {RELEASE_URL} again."
    with open(file, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{file} is a Git LFS pointer, not the weights. Run `git lfs pull` in the clone, "
                              f"or download {name}/{file.name} from {RELEASE_URL}.")
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            header = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file} is not a complete safetensors file ({err}); it is probably an interrupted "
                              f"download. {redownload}") from err

    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in expected if k not in header and not k.endswith(_OPTIONAL_SUFFIX))
    unexpected = sorted(k for k in header if k not in expected)
    if missing or unexpected:
        other = next((o for o, key in _SIGNATURE_KEYS.items() if o != name and key in header), None)
        swapped = (f" It looks like the {other} weights: are brushnet/ and unet_main/ swapped?" if other else "")
        raise CheckpointError(
            f"{file} does not hold DiffuEraser's {name} weights for its config.json:{swapped} "
            f"{_listing('missing', missing)}{_listing('unexpected', unexpected)}"
            f"Make sure {file.parent} holds the files of the {name}/ folder of {RELEASE_URL}."
        )
    wrong = [f"{k}: file {list(shape)} vs config {expected[k]}" for k, (shape, _) in header.items()
             if list(shape) != expected[k]]
    if wrong:
        raise CheckpointError(
            f"{file}: {len(wrong)} tensor shape(s) differ from what {file.parent / CONFIG_NAME} describes, e.g. "
            f"{'; '.join(wrong[:5])}. The config and the weights come from different models: download both "
            f"{name}/ files from {RELEASE_URL} again."
        )
    bad_dtype = sorted({d for _, d in header.values() if d not in FILE_DTYPES})
    if bad_dtype:
        raise CheckpointError(f"{file} stores tensors as {bad_dtype}; expected floating point weights. {redownload}")

    try:
        tensors = _read_tensors(file, {k: v for k, v in header.items() if k not in skip}, dtype=dtype, device=device)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"reading {file} failed ({err}). {redownload}") from err
    # Streamed block weights (stream=True) start as placeholders: their shape, no memory.
    tensors.update({k: placeholder(header[k][0], dtype, device) for k in skip if k in header})
    model.load_state_dict(tensors, strict=False, assign=True)
    del tensors
    leftover = [k for k, v in model.state_dict().items() if v.is_meta]
    if leftover:  # cannot happen after the key check above; kept as a guard against silent garbage
        raise CheckpointError(f"{file}: {len(leftover)} tensors were not loaded, e.g. {leftover[:3]}. {redownload}")


def _read_tensors(file: Path, header: dict[str, tuple[list[int], str]], *, dtype: torch.dtype,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Read every tensor straight into its own buffer, in file order, converting one tensor at a time
    (plain reads, no memory map: see ``rrdpo_core.tensorfile``)."""
    layout, data_start = read_layout(file)
    tensors = {}
    with open(file, "rb", buffering=0) as fh:
        for key in sorted(header, key=lambda k: layout[k]["data_offsets"][0]):
            shape, file_dtype = header[key]
            begin, end = layout[key]["data_offsets"]
            tensor = read_tensor(fh, data_start, begin, end, shape, FILE_DTYPES[file_dtype], name=f"{file}: {key}")
            tensors[key] = tensor.to(device=device, dtype=dtype)  # no copy when nothing changes
    return tensors


def _listing(kind: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
    return f"{len(keys)} {kind} tensor(s) ({shown}). "


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point type, got {dtype}")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or a torch.dtype")
    return _DTYPES[key]


def _atomic_write(target: Path, write) -> None:
    with atomic_path(target) as tmp:
        write(str(tmp))
