"""Region-Reg-DPO LoRA training for DiffuEraser.

* :func:`train_region_dpo` — the Python API (used by the ComfyUI trainer node; works inside
  ``torch.inference_mode()``).
* ``python -m rrdpo_core.train --config CONFIG`` — the command line; under
  ``accelerate launch --num_processes N -m rrdpo_core.train --config CONFIG`` the same code runs
  data-parallel on N processes.

Submodules are imported on first use so that ``import rrdpo_core.train`` stays cheap.
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "TrainConfig",
    "TrainResult",
    "NonFiniteLossError",
    "train_region_dpo",
    "run_training",
]

_LAZY = {
    "TrainConfig": ".config",
    "TrainResult": ".trainer",
    "NonFiniteLossError": ".trainer",
    "train_region_dpo": ".trainer",
    "run_training": ".trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
