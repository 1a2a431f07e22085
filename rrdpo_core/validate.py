"""Checks shared by the library, the command line and the nodes, so bad input fails early and clearly.

Each check raises a :class:`rrdpo_core.errors.RrdpoInputError` (a ``ValueError``) whose message
names the file or argument, the offending value and what to do about it. They are cheap (one
pass over tensors that are about to be used anyway) and run where data enters: a file is read,
zones are built, an output path is given.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .errors import RrdpoInputError

__all__ = [
    "ZONE_TOLERANCE",
    "available_memory_bytes",
    "check_finite_tensors",
    "check_memory",
    "check_zone_partition",
    "format_bytes",
    "last_error_lines",
    "read_json_object",
    "read_pair_sample",
]

# Zones summing to 1 within this (and each within [0, 1] within it) are a partition. Binary zones
# are exact; the slack is for soft or resampled zones stored in half precision.
ZONE_TOLERANCE = 1e-3


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], where: str, fix: str) -> None:
    """Raise if any floating-point tensor holds NaN or inf; the message names ``where``, the tensor and ``fix``."""
    bad = []
    for key, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            bad.append(f"{key} ({n} of {t.numel()} values)")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise RrdpoInputError(f"{where}: tensor(s) {', '.join(bad[:3])}{more} hold NaN or infinite values; {fix}")


def check_zone_partition(masks: Sequence[torch.Tensor], tol: float = ZONE_TOLERANCE, where: str = "zones") -> None:
    """Raise unless ``masks`` (broadcastable to each other) lie in [0, 1] and sum to 1 at every element.

    The Region-Reg-DPO loss divides every zone by the whole sample, so it is the plain MSE only when
    the zones partition the sample; overlapping zones count pixels twice and gaps drop them.
    """
    floats = [m.detach().float() for m in masks]
    total = floats[0]
    for mf in floats[1:]:
        total = total + mf
    # One device->host transfer for every statistic (the trainer runs this each step on the GPU).
    stats = torch.stack([torch.stack([mf.min(), mf.max()]) for mf in floats]
                        + [torch.stack([(total - 1).abs().max(), (total > 1 + tol).sum().float()])]).tolist()
    for k, (lo, hi) in enumerate(stats[:-1]):
        if lo != lo or hi != hi:  # NaN compares false with everything
            raise RrdpoInputError(f"{where}: zone {k} contains NaN; zone masks must be numbers in [0, 1]")
        if lo < -tol or hi > 1 + tol:
            raise RrdpoInputError(f"{where}: zone {k} has values in [{lo:g}, {hi:g}]; zone masks must lie in [0, 1]")
    worst, over = stats[-1][0], int(stats[-1][1])
    if worst > tol:
        under = int((total < 1 - tol).sum())
        what = []
        if over:
            what.append(f"{over} element(s) are in more than one zone (overlap)")
        if under:
            what.append(f"{under} element(s) are in no zone (gap)")
        raise RrdpoInputError(
            f"{where}: the {len(masks)} zones are not a partition: {' and '.join(what)}, the zone sum is off by up to "
            f"{worst:g}. Build the zones with rrdpo_core.zones.decompose_zones (hole, boundary, context), or pass "
            f"masks that sum to 1 everywhere (one all-ones mask for a single zone)"
        )


def available_memory_bytes() -> int | None:
    """Memory this process can still get (Linux MemAvailable; psutil elsewhere); None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - unknown platform: no check
        return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_memory(need: int, what: str, fix: str, available: int | None = None) -> None:
    """Refuse work whose estimated memory ``need`` exceeds what is available, before it starts."""
    have = available_memory_bytes() if available is None else available
    if have is not None and need > have:
        raise RrdpoInputError(f"{what} needs about {format_bytes(need)} of memory, but only {format_bytes(have)} is "
                              f"available; {fix}")


_NOISE = re.compile(r"^(ffmpeg version|built with|configuration:|lib\w+\s+\d+\.|=== stderr|Input #|Output #|Stream #|"
                    r"Duration:|Metadata:|Press \[q\]|frame=)")
_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")


def last_error_lines(text: str, keep: int = 2, limit: int = 300) -> str:
    """The last meaningful line(s) of a tool's stderr (drops ffmpeg's banner, build flags and stream lists)."""
    lines = [ln.strip() for ln in str(text).replace("\r", "\n").splitlines() if ln.strip()]
    useful = [_PREFIX.sub("", ln) for ln in lines if not _NOISE.match(ln)]
    picked = (useful or lines)[-keep:]
    out = " | ".join(picked)
    return out if len(out) <= limit else "..." + out[-limit:]


def read_pair_sample(path: str | os.PathLike, keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of one stored preference pair, or a clear error that names the file and how to rebuild it.

    A truncated or overwritten file, a missing tensor and NaN/inf values (a diverged VAE, a disk
    fault) are all reported with the sample's path: a pair is rebuilt exactly by deleting its file
    and running the pair builder again on the folder with the same settings (every random choice
    of a pair is fixed by its index), after which a training run resumes as before.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    fix = (f"delete {path} and run the pair builder (rrdpo_core.pairs.build_preference_pairs or the Build "
           f"Preference Pairs node) again on {path.parent.parent} with the same settings: it rebuilds just this pair")
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = list(f.keys())
            names = stored if keys is None else list(keys)
            missing = [k for k in names if k not in stored]
            if missing:
                raise RrdpoInputError(f"{path}: the sample has no tensor(s) {missing} (stored: {sorted(stored)}); {fix}")
            tensors = {k: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise FileNotFoundError(f"{path}: the sample file is gone; {fix}") from None
        raise RrdpoInputError(f"{path}: damaged sample file, not a complete safetensors file ({err}); {fix}") from None
    check_finite_tensors(tensors, f"{path} (damaged sample)", fix)
    return tensors


def read_json_object(path: str | os.PathLike, fix: str) -> dict:
    """A JSON object from ``path``, or a clear error naming the file, what is wrong and ``fix``."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RrdpoInputError(f"{path}: damaged, not a text (JSON) file; {fix}") from None
    except json.JSONDecodeError as err:
        raise RrdpoInputError(f"{path}: damaged, not valid JSON ({err.msg} at line {err.lineno}); {fix}") from None
    if not isinstance(data, dict):
        raise RrdpoInputError(f"{path}: damaged, holds a JSON {type(data).__name__} instead of an object; {fix}")
    return data
