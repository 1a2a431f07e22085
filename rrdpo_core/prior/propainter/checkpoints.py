"""Loading the three official ProPainter checkpoints into our modules.

The user brings the files of ProPainter's v0.1.0 release (the same ones the DiffuEraser wrapper
uses): ``raft-things.pth``, ``recurrent_flow_completion.pth`` and ``ProPainter.pth``. They are
pickled state dicts, so they are read with ``torch.load(weights_only=True)`` (tensors only, no
code), matched key for key and shape for shape, and any difference is reported readably. A
``.safetensors`` file with the same keys is accepted too.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import torch
import torch.nn as nn

from ...errors import RrdpoInputError
from .flow_completion import RecurrentFlowCompletion
from .model import ProPainterGenerator
from .raft import RAFT

__all__ = ["CHECKPOINTS", "RELEASE_URL", "CheckpointSpec", "ProPainterModels", "load_propainter",
           "load_network", "read_state_dict", "resolve_checkpoints"]

RELEASE_URL = "https://github.com/sczhou/ProPainter/releases/tag/v0.1.0"
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class CheckpointSpec:
    role: str                       # our name for the network
    filename: str                   # official file name
    title: str                      # human name, for messages
    build: Callable[[], nn.Module]  # architecture of the released file
    signature: str                  # a key only this checkpoint has (after prefix stripping)


CHECKPOINTS: dict[str, CheckpointSpec] = {
    "raft": CheckpointSpec("raft", "raft-things.pth", "RAFT optical flow", RAFT,
                           "update_block.gru.convz1.weight"),
    "flow_completion": CheckpointSpec("flow_completion", "recurrent_flow_completion.pth",
                                      "recurrent flow completion", RecurrentFlowCompletion,
                                      "mid_dilation.0.weight"),
    "propainter": CheckpointSpec("propainter", "ProPainter.pth", "ProPainter inpainting generator",
                                 ProPainterGenerator, "transformers.transformer.0.attention.query.weight"),
}


def _where_to_get(spec: CheckpointSpec) -> str:
    return (f"download {spec.filename} from ProPainter's release ({RELEASE_URL}) - the same file the "
            f"DiffuEraser wrapper uses - and put it in models/propainter")


def read_state_dict(path: PathLike, spec: CheckpointSpec | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint file as a flat ``{name: tensor}`` dict (``module.`` prefixes removed)."""
    path = Path(path)
    what = spec.filename if spec else "a ProPainter checkpoint"
    if not path.is_file():
        hint = _where_to_get(spec) if spec else f"see {RELEASE_URL}"
        raise FileNotFoundError(f"{path}: file not found; {hint}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file  # noqa: PLC0415

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RrdpoInputError(
            f"{path}: refused to load - it is not a plain tensor state dict (weights_only loading "
            f"rejected it: {str(err).splitlines()[0]}). Expected {what}; only the official weight "
            f"files are supported.") from err
    except Exception as err:  # zip/pickle/safetensors header errors on a non-checkpoint file
        detail = str(err).splitlines()[0] if str(err) else ""
        raise RrdpoInputError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {detail}). "
                         f"Expected {what}; if it is, the download may be incomplete - fetch it again.") from err

    # Some exports wrap the weights; the official files are flat, but accept the usual wrappers.
    for wrapper in ("state_dict", "model", "params", "params_ema"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RrdpoInputError(f"{path}: does not contain a state dict of tensors. Expected {what}.")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        # raft-things.pth was saved from nn.DataParallel.
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _sample(names: list[str], n: int = 6) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _identify(state: Mapping[str, torch.Tensor]) -> CheckpointSpec | None:
    for spec in CHECKPOINTS.values():
        if spec.signature in state:
            return spec
    return None


def load_network(spec: CheckpointSpec, path: PathLike, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build ``spec``'s network and fill it from ``path`` with strict key and shape matching."""
    state = read_state_dict(path, spec)
    with torch.device("meta"):
        net = spec.build()
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                   for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        other = _identify(state)
        lines = [f"{path}: not the {spec.title} checkpoint ({spec.filename})."]
        if other is not None and other is not spec:
            lines.append(f"It looks like {other.filename} ({other.title}); choose {spec.filename} for this slot.")
        if missing:
            lines.append(f"{len(missing)} missing key(s): {_sample(missing)}")
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected key(s): {_sample(unexpected)}")
        if wrong_shape:
            lines.append(f"{len(wrong_shape)} shape mismatch(es): {_sample(wrong_shape, 4)}")
        lines.append(f"Use the official file: {_where_to_get(spec)}.")
        raise RrdpoInputError("\n".join(lines))
    net = net.to_empty(device=device)
    net.load_state_dict(state, strict=True)
    return net.to(dtype=dtype).eval().requires_grad_(False)


@dataclass
class ProPainterModels:
    """The three networks of ProPainter's inference, in eval mode without gradients.

    RAFT always runs in float32 (as in the original); the flow completion network and the
    generator run in ``dtype``.
    """

    raft: RAFT
    flow_completion: RecurrentFlowCompletion
    generator: ProPainterGenerator

    def __post_init__(self) -> None:
        for net in (self.raft, self.flow_completion, self.generator):
            net.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.generator.parameters()).dtype

    def to(self, device: torch.device | str) -> "ProPainterModels":
        for net in (self.raft, self.flow_completion, self.generator):
            net.to(device)
        return self


_ALIASES = {
    "raft": "raft", "raft-things": "raft", "raft_things": "raft", "flow": "raft",
    "flow_completion": "flow_completion", "recurrent_flow_completion": "flow_completion", "rfc": "flow_completion",
    "propainter": "propainter", "generator": "propainter", "inpaint_generator": "propainter",
}


def resolve_checkpoints(source: PathLike | Mapping[str, PathLike]) -> dict[str, Path]:
    """Map each role to a file: a folder with the official file names, or an explicit mapping."""
    if isinstance(source, Mapping):
        files: dict[str, Path] = {}
        for key, value in source.items():
            role = _ALIASES.get(str(key).lower().removesuffix(".pth"))
            if role is None:
                raise RrdpoInputError(f"unknown ProPainter checkpoint role {key!r}; use one of "
                                 f"{', '.join(CHECKPOINTS)}")
            files[role] = Path(value)
        absent = [r for r in CHECKPOINTS if r not in files]
        if absent:
            raise RrdpoInputError("ProPainter needs all three checkpoints; missing: "
                             + ", ".join(f"{r} ({CHECKPOINTS[r].filename})" for r in absent))
        return files

    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: not a folder. Pass the folder that holds "
            + ", ".join(s.filename for s in CHECKPOINTS.values())
            + " (e.g. models/propainter), or a mapping {'raft': ..., 'flow_completion': ..., 'propainter': ...}")
    present = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    files, absent_specs = {}, []
    for role, spec in CHECKPOINTS.items():
        stem = spec.filename.lower().removesuffix(".pth")
        hit = present.get(spec.filename.lower()) or present.get(stem + ".safetensors")
        if hit is None:
            absent_specs.append(spec)
        else:
            files[role] = hit
    if absent_specs:
        raise FileNotFoundError(
            f"{folder}: missing " + ", ".join(s.filename for s in absent_specs)
            + f". Download them from ProPainter's release ({RELEASE_URL}) - the same files the "
            "DiffuEraser wrapper uses - into this folder.")
    return files


def load_propainter(source: PathLike | Mapping[str, PathLike], device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> ProPainterModels:
    """Load ProPainter's three official checkpoints.

    Args:
        source: a folder containing ``raft-things.pth``, ``recurrent_flow_completion.pth`` and
            ``ProPainter.pth`` (official names, any case), or a mapping from ``"raft"``,
            ``"flow_completion"``, ``"propainter"`` to file paths.
        device: where the networks run.
        dtype: precision of the flow completion network and the generator (RAFT stays float32).
            Half precision is only used on accelerators; on CPU it falls back to float32 (as the
            original does).
    Raises:
        FileNotFoundError: a file or the folder is missing (the message says where to get it).
        RrdpoInputError (a ValueError): a file is unreadable, not a plain state dict, or a
            different network (the message lists the missing / unexpected keys).
    """
    device = torch.device(device)
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    files = resolve_checkpoints(source)
    return ProPainterModels(
        raft=load_network(CHECKPOINTS["raft"], files["raft"], device, torch.float32),
        flow_completion=load_network(CHECKPOINTS["flow_completion"], files["flow_completion"], device, dtype),
        generator=load_network(CHECKPOINTS["propainter"], files["propainter"], device, dtype),
    )
