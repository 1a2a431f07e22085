"""Training checkpoints: LoRA, optimizer, LR scheduler, grad scaler and RNG state, written atomically.

Layout (``<out_dir>/checkpoints/step_00000006/``)::

    lora.safetensors    the adapter in the Region-DPO LoRA format (fp32, usable as a LoRA as is)
    optimizer.pt        AdamW state (tensors and numbers only: loads with weights_only=True)
    scheduler.pt        LR scheduler state
    scaler.pt           fp16 grad-scaler state (empty dict without fp16)
    rng.pt              RNG states of every process (python, numpy, torch CPU and accelerator)
    state.json          step, run settings that fix the trajectory, data fingerprint

The whole folder is written under a temporary name and renamed into place, so a checkpoint either
exists completely or not at all; ``latest_checkpoint`` only ever sees complete ones.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import RrdpoInputError
from ..fsutil import atomic_dir, is_temp_name

__all__ = [
    "CHECKPOINTS_DIR",
    "Checkpoint",
    "CheckpointDamagedError",
    "CheckpointFallbackWarning",
    "latest_good_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "write_checkpoint",
    "read_checkpoint",
    "prune_checkpoints",
]

CHECKPOINTS_DIR = "checkpoints"
_PREFIX = "step_"


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: list[dict[str, Any]]

    @property
    def lora_path(self) -> Path:
        return self.path / "lora.safetensors"


# --------------------------------------------------------------------------------------------
# RNG state as tensors and plain numbers (so it loads with weights_only=True)


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python_version": int(py_version),
        "python_state": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
        "numpy_name": str(np_state[0]),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"].tolist()),
                     state["python_gauss"]))
    np.random.set_state((state["numpy_name"], state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------------------------
# Folder bookkeeping


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS_DIR / f"{_PREFIX}{int(step):08d}"


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(_PREFIX) or not name[len(_PREFIX):].isdigit():
        return None
    return int(name[len(_PREFIX):])


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        step = _step_of(p)
        if step is not None and p.is_dir() and (p / "state.json").is_file():
            found.append((step, p))
    return sorted(found)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def prune_checkpoints(out_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and leftovers of interrupted writes."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return
    for p in root.iterdir():
        if is_temp_name(p.name):
            shutil.rmtree(p, ignore_errors=True)
    for _, p in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


def write_checkpoint(
    out_dir: str | os.PathLike,
    step: int,
    *,
    write_lora: Callable[[Path], Any],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    scaler: dict[str, Any] | None,
    rng: list[dict[str, Any]],
    state: dict[str, Any],
) -> Path:
    """Write a checkpoint folder atomically and return its path (call on the main process only)."""
    final = checkpoint_path(out_dir, step)
    # The same step may be written again (a resumed run that ends where it started): atomic_dir
    # replaces the old folder.
    with atomic_dir(final) as tmp:
        write_lora(tmp / "lora.safetensors")
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(scheduler, tmp / "scheduler.pt")
        torch.save(scaler or {}, tmp / "scaler.pt")
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": int(step)}, indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
    return final


class CheckpointDamagedError(RrdpoInputError):
    """A checkpoint folder exists but one of its files cannot be read (truncated, garbage, not ours).

    ``file`` is the damaged file and ``problem`` what is wrong with it (the message adds the fix).
    """

    def __init__(self, message: str, file: Path | None = None, problem: str = ""):
        super().__init__(message)
        self.file, self.problem = file, problem


class CheckpointFallbackWarning(UserWarning):
    """resume='auto' skipped a damaged newest checkpoint and resumed from an earlier one."""


def _damaged(path: Path, name: str, what: str) -> CheckpointDamagedError:
    earlier = [p for s, p in list_checkpoints(path.parent.parent) if s < (_step_of(path) or 0)]
    fix = (f"resume='auto' falls back to the previous good one ({earlier[-1].name}); or delete {path}"
           if earlier else f"delete {path} and start the run again (there is no earlier checkpoint)")
    return CheckpointDamagedError(f"training checkpoint {path / name} is damaged: {what}; {fix}", path / name, what)


def _load_pt(path: Path, name: str) -> Any:
    import pickle
    import zipfile

    try:
        return torch.load(path / name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses anything but tensors and plain containers; this trainer never
        # writes anything else, so the file was replaced (never unpickle it to see what it is).
        raise _damaged(path, name, "it holds Python objects other than tensors and numbers (refused, loading it "
                                   "could run code); this trainer never writes such files, so it was replaced") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise _damaged(path, name, f"truncated or not a torch file ({first})") from None


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint folder; a damaged file raises :class:`CheckpointDamagedError` naming it."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a complete training checkpoint (no state.json); pass a folder like "
            f"<out_dir>/{CHECKPOINTS_DIR}/{_PREFIX}00000100 or resume='auto'"
        )
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _damaged(path, "state.json", "not a text (JSON) file") from None
    except json.JSONDecodeError as err:
        raise _damaged(path, "state.json", f"not valid JSON ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise _damaged(path, "state.json", "no integer 'step' in it")
    if not (path / "lora.safetensors").is_file():
        raise _damaged(path, "lora.safetensors", "the file is missing")
    from ..region_lora import load_region_lora

    try:
        load_region_lora(path / "lora.safetensors")  # also refuses NaN/inf weights
    except ValueError as err:
        # The loader's message starts with the path (already named) and ends with its own advice.
        raise _damaged(path, "lora.safetensors", str(err).split(": ", 1)[-1].split("; ")[0][:300]) from None

    def load(name: str) -> Any:
        return _load_pt(path, name)

    return Checkpoint(
        path=path,
        step=int(state["step"]),
        state=state,
        optimizer=load("optimizer.pt"),
        scheduler=load("scheduler.pt"),
        scaler=load("scaler.pt"),
        rng=load("rng.pt"),
    )


def latest_good_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint that reads completely; damaged newer ones are skipped with a warning.

    Checkpoints are written atomically, so damage means a disk fault or a hand-edited file. The
    run falls back to the previous good one (and says which, as a :class:`CheckpointFallbackWarning`);
    writing that step again later replaces the damaged folder. When every checkpoint is damaged
    this raises :class:`CheckpointDamagedError` rather than silently starting over.
    """
    import warnings

    found = list_checkpoints(out_dir)
    problems: list[str] = []
    for _, path in reversed(found):
        try:
            read_checkpoint(path)
        except CheckpointDamagedError as err:
            problems.append(f"{err.file} ({err.problem})")
            continue
        if problems:
            warnings.warn(f"resuming from {path} (the previous good checkpoint): skipped {len(problems)} damaged "
                          f"newer one(s): {' | '.join(problems)}", CheckpointFallbackWarning, stacklevel=2)
        return path
    if problems:
        raise CheckpointDamagedError(
            f"every checkpoint in {Path(out_dir) / CHECKPOINTS_DIR} is damaged ({' | '.join(problems)}); delete that "
            f"folder to start the run over, or train into another out_dir"
        )
    return None
