"""The one place that talks to ComfyUI's runtime: folders, progress, interrupt, devices.

Every import of ComfyUI happens lazily inside these functions, so the pack imports cleanly both
inside ComfyUI and outside it (tests import it by path with small stubs of ``folder_paths`` and
``comfy.*``). Without ComfyUI the functions fall back to harmless defaults.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
from typing import Callable, Iterator

import torch

# Model folders this pack adds to ComfyUI's list: name -> (sub-folder of models/, extensions).
# DiffuEraser weights are folders (brushnet/ + unet_main/), so that list has no extension filter
# and the loader lists the sub-folders that look like a DiffuEraser checkpoint.
MODEL_FOLDERS: dict[str, tuple[str, set[str]]] = {
    "diffueraser": ("diffueraser", set()),
    "propainter": ("propainter", {".pth"}),
}
TRAINED_LORA_SUBDIR = "rrdpo"  # trained LoRAs go to models/loras/rrdpo/


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def folder_paths():
    """ComfyUI's ``folder_paths`` module, or ``None`` outside ComfyUI."""
    return _module("folder_paths")


def register_model_folders() -> None:
    """Add ``models/diffueraser`` and ``models/propainter`` to ComfyUI's folder list (idempotent)."""
    fp = folder_paths()
    if fp is None:
        return
    for name, (sub, exts) in MODEL_FOLDERS.items():
        path = os.path.join(fp.models_dir, sub)
        if name in fp.folder_names_and_paths:
            # Keep what extra_model_paths.yaml registered, and add the default folder.
            paths, known_exts = fp.folder_names_and_paths[name]
            if path not in paths:
                paths.append(path)
            known_exts.update(exts)
        else:
            fp.folder_names_and_paths[name] = ([path], set(exts))


def model_folder_paths(name: str) -> list[str]:
    fp = folder_paths()
    if fp is None:
        return []
    register_model_folders()
    try:
        return list(fp.get_folder_paths(name))
    except Exception:  # an unknown key in an old ComfyUI
        return []


def list_files(name: str) -> list[str]:
    fp = folder_paths()
    if fp is None:
        return []
    register_model_folders()
    try:
        return list(fp.get_filename_list(name))
    except Exception:
        return []


def with_placeholders(found: list[str], *expected: str) -> list[str]:
    """``found`` plus each expected default name that is missing from it.

    ComfyUI refuses a workflow whose combo value is not in the list ("Value not in list") before any
    node runs, so a user with an empty model folder would never see where the files come from. The
    shipped default names therefore stay in the list; picking a missing one raises the pack's
    message (see :func:`full_path`).
    """
    return list(found) + [name for name in expected if name not in found]


def full_path(name: str, filename: str, source: str = "") -> str:
    """Resolve a file picked from a ComfyUI list, with an error that names the folder to use and,
    given ``source``, where the file comes from."""
    fp = folder_paths()
    if fp is None:
        raise FileNotFoundError(f"{filename!r}: ComfyUI's folder_paths is not available")
    path = fp.get_full_path(name, filename)
    if path is None:
        folders = ", ".join(model_folder_paths(name)) or f"models/{name}"
        where = f" {source}" if source else ""
        raise FileNotFoundError(f"{filename!r} was not found in the {name!r} model folder(s): {folders}.{where} "
                                "Then refresh ComfyUI (R) and run again.")
    return path


def trained_lora_dir() -> str:
    """``models/loras/rrdpo`` (created), where the trainer writes LoRAs so the LoRA list shows them."""
    fp = folder_paths()
    base = fp.get_folder_paths("loras")[0] if fp is not None else os.path.join("models", "loras")
    path = os.path.join(base, TRAINED_LORA_SUBDIR)
    os.makedirs(path, exist_ok=True)
    return path


def output_dir() -> str:
    fp = folder_paths()
    return fp.get_output_directory() if fp is not None else os.path.abspath("output")


def temp_dir() -> str:
    fp = folder_paths()
    path = fp.get_temp_directory() if fp is not None else os.path.abspath("temp")
    os.makedirs(path, exist_ok=True)
    return path


class Progress:
    """ComfyUI's progress bar (also an interrupt point), as a ``progress(done, total)`` callable."""

    def __init__(self, total: int = 1):
        utils = _module("comfy.utils")
        self._bar = utils.ProgressBar(max(1, int(total))) if utils is not None else None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update_absolute(int(done), max(1, int(total)))


def cancel_requested() -> bool:
    """True once the user pressed Cancel in ComfyUI (for the core's ``cancel=`` callbacks)."""
    mm = _module("comfy.model_management")
    return bool(mm is not None and mm.processing_interrupted())


def raise_if_interrupted() -> None:
    mm = _module("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def interrupt_aware(fn: Callable) -> Callable:
    """Re-raise the core's ``Cancelled`` as ComfyUI's own interrupt so the UI shows 'interrupted'."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..rrdpo_core.errors import Cancelled

        try:
            return fn(*args, **kwargs)
        except Cancelled:
            raise_if_interrupted()
            raise

    return wrapper


@contextlib.contextmanager
def building_model() -> Iterator[None]:
    """Create networks and adapters as normal tensors, even inside ComfyUI's ``inference_mode()``.

    Tensors created in inference mode can never get ``requires_grad`` or be saved for backward
    later; a model shared between nodes (and cached by ComfyUI) must not be made of them.
    """
    with torch.inference_mode(False), torch.no_grad():
        yield


def torch_device() -> torch.device:
    mm = _module("comfy.model_management")
    return mm.get_torch_device() if mm is not None else torch.device("cpu")


def offload_device() -> torch.device:
    mm = _module("comfy.model_management")
    return mm.unet_offload_device() if mm is not None else torch.device("cpu")


def intermediate_device() -> torch.device:
    mm = _module("comfy.model_management")
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


def free_memory_for(device: torch.device, nbytes: int) -> None:
    """Ask ComfyUI to unload its own models so ``nbytes`` fit on ``device``."""
    mm = _module("comfy.model_management")
    if mm is not None and device.type != "cpu":
        mm.free_memory(nbytes, device)
