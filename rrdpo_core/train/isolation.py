"""Leave the host process as the trainer found it: the cached model and the global RNGs.

Inside ComfyUI the model handed to the trainer is a cached object other nodes keep using, and the
random generators are process-wide. The trainer itself replaces inference-mode tensors by normal
ones (autograd needs them), moves the model, toggles ``requires_grad`` and, on resume, restores the
RNG state saved in a checkpoint. :func:`preserved` snapshots what the caller owns before a run and
puts it back after it, whether the run finished, was cancelled or failed:

* every parameter and buffer *object* of the model (so the same tensors, on the same device, with
  the same ``requires_grad``), and each module's ``training`` flag;
* the RNG states of Python's ``random``, NumPy, PyTorch's CPU generator and every CUDA device.

Values are not copied (that would double the model in memory): each tensor's version counter is
recorded, and a tensor changed in place during the run is reported (:class:`ModelChangedError`),
because the snapshot could not undo that. :func:`model_digest` hashes the values for tests.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

__all__ = ["ModelChangedError", "ModelSnapshot", "RngSnapshot", "preserved", "model_digest", "rng_digest"]


class ModelChangedError(RuntimeError):
    """A tensor of the cached model was changed in place during training."""


def _version(t: torch.Tensor) -> int | None:
    try:
        return int(t._version)
    except RuntimeError:  # inference tensors keep no version counter (and cannot be changed in place outside it)
        return None


@dataclass
class ModelSnapshot:
    """The identity of every parameter/buffer of ``model`` and the modules' training flags."""

    # (module's qualified name, module, "_parameters" or "_buffers", name, tensor, version, requires_grad)
    entries: list[tuple[str, nn.Module, str, str, Any, int | None, bool]] = field(default_factory=list)
    training: list[tuple[nn.Module, bool]] = field(default_factory=list)

    @classmethod
    def take(cls, model: nn.Module) -> "ModelSnapshot":
        snap = cls()
        for qual, module in model.named_modules(remove_duplicate=False):
            snap.training.append((module, module.training))
            for name, p in module._parameters.items():
                snap.entries.append((qual, module, "_parameters", name, p, None if p is None else _version(p),
                                     bool(p is not None and p.requires_grad)))
            for name, b in module._buffers.items():
                snap.entries.append((qual, module, "_buffers", name, b, None if b is None else _version(b), False))
        return snap

    def changed_in_place(self) -> list[str]:
        return [f"{qual}.{name}" for qual, _, _, name, t, version, _ in self.entries
                if t is not None and version is not None and _version(t) != version]

    def restore(self) -> None:
        for _, module, kind, name, tensor, _, requires_grad in self.entries:
            getattr(module, kind)[name] = tensor
            if kind == "_parameters" and tensor is not None and tensor.requires_grad != requires_grad \
                    and not tensor.is_inference():
                tensor.requires_grad_(requires_grad)
        for module, flag in self.training:
            module.training = flag


@dataclass
class RngSnapshot:
    """Process-wide random states: Python, NumPy, PyTorch CPU and every CUDA device."""

    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor] | None

    @classmethod
    def take(cls) -> "RngSnapshot":
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@contextlib.contextmanager
def preserved(model: nn.Module | None, rng: bool = True) -> Iterator[None]:
    """Restore ``model``'s tensors and flags and the global RNGs on exit (always).

    Raises :class:`ModelChangedError` after restoring if a tensor was changed in place (only when
    the block itself succeeded: an error from the block wins).
    """
    snap = ModelSnapshot.take(model) if model is not None else None
    rngs = RngSnapshot.take() if rng else None
    ok = False
    try:
        yield
        ok = True
    finally:
        if rngs is not None:
            rngs.restore()
        if snap is not None:
            changed = snap.changed_in_place()
            snap.restore()
            if ok and changed:
                raise ModelChangedError(f"the training run changed {len(changed)} tensor(s) of the cached model in "
                                        f"place (e.g. {changed[:3]}); reload the model")


def model_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes, values) and their identities' order."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:{t.device}:{t.requires_grad}".encode())
        h.update(t.detach().to("cpu", copy=True).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rng_digest() -> str:
    """SHA-256 of the global RNG states (see :class:`RngSnapshot`)."""
    h = hashlib.sha256()
    h.update(repr(random.getstate()).encode())
    state = np.random.get_state()
    h.update(repr((state[0], state[2], state[3], state[4])).encode() + np.asarray(state[1]).tobytes())
    h.update(torch.get_rng_state().numpy().tobytes())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for s in torch.cuda.get_rng_state_all():
            h.update(s.numpy().tobytes())
    return h.hexdigest()
