"""The preference-pair folder format and its reader (what the trainer needs of the pairs).

See :mod:`rrdpo_core.pairs` for the layout on disk. Sample files are the source of truth: opening a
folder reconciles the manifest with them, so a folder left by a killed build opens cleanly.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..fsutil import atomic_write_text, remove_temp_files

__all__ = ["PAIRS_FORMAT", "PAIRS_VERSION", "LOSER_KINDS", "DATASET_FILE", "MANIFEST_FILE", "SAMPLES_DIR", "TEXT_FILE",
           "LATENT_KEYS", "PairSettings", "PairEntry", "PairDataset", "sample_name", "reconcile"]

PAIRS_FORMAT = "rrdpo.pairs"
PAIRS_VERSION = 1
LOSER_KINDS = ("hallucination", "blur", "flicker")
DATASET_FILE = "dataset.json"
MANIFEST_FILE = "manifest.jsonl"
SAMPLES_DIR = "samples"
TEXT_FILE = "text_embeds.safetensors"
LATENT_KEYS = ("winner_latents", "loser_latents", "masked_latents")


@dataclass
class PairSettings:
    """What every pair of a folder shares; fixed when the folder is created."""

    num_frames: int
    height: int
    width: int
    kinds: tuple[str, ...] = LOSER_KINDS
    seed: int = 0
    num_inference_steps: int = 2
    scheduler: str = "tcd"
    composite: str = "gaussian"
    store_latents: bool = True
    mask_static_prob: float = 0.5
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        d["sources"] = list(self.sources)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PairSettings":
        d = dict(d)
        d["kinds"] = tuple(d.get("kinds", LOSER_KINDS))
        d["sources"] = tuple(d.get("sources", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class PairEntry:
    """One stored pair, as in the manifest and in its sample file's metadata."""

    index: int
    file: str
    kind: str
    source: str
    source_index: int
    start: int
    num_frames: int
    height: int
    width: int
    mask_seed: int
    sampler_seeds: tuple[int, ...]
    hole_fraction: float
    has_latents: bool
    generator: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sampler_seeds"] = list(self.sampler_seeds)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PairEntry":
        d = dict(d)
        d["sampler_seeds"] = tuple(d.get("sampler_seeds", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def sample_name(index: int) -> str:
    return f"{index:06d}.safetensors"


def _read_entry_from_file(path: Path) -> PairEntry | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return PairEntry.from_dict(json.loads(meta["entry"]))
    except (SafetensorError, OSError, KeyError, ValueError, TypeError):
        return None


class PairDataset:
    """A folder of preference pairs (read side). ``len(ds)``, ``ds[i]`` -> dict of tensors.

    Opening reconciles the manifest with the sample files (which are authoritative), so a folder
    left by a killed build opens cleanly.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta_path = self.root / DATASET_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.root} is not a preference-pair folder (no {DATASET_FILE}); build one with "
                f"rrdpo_core.pairs.build_preference_pairs"
            )
        from ..validate import read_json_object

        meta = read_json_object(meta_path, "rebuild the pairs into a new folder (or restore the file from a copy)")
        if meta.get("format") != PAIRS_FORMAT:
            raise ValueError(f"{meta_path}: format is {meta.get('format')!r}, expected {PAIRS_FORMAT!r}")
        if int(meta.get("version", 0)) > PAIRS_VERSION:
            raise ValueError(f"{meta_path}: version {meta.get('version')} is newer than this code ({PAIRS_VERSION})")
        self.settings = PairSettings.from_dict(meta["settings"])
        self.entries: list[PairEntry] = reconcile(self.root, write=False)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.load(i)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(len(self)):
            yield self.load(i)

    @property
    def has_latents(self) -> bool:
        return bool(self.entries) and all(e.has_latents for e in self.entries)

    def path(self, i: int) -> Path:
        return self.root / SAMPLES_DIR / self.entries[i].file

    def load(self, i: int, keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Tensors of pair ``i`` (all, or only ``keys``): winner/loser uint8 (T,H,W,3), mask uint8 (T,H,W).

        A damaged sample file (truncated, a missing tensor, NaN/inf latents) raises an error that
        names it and says how to rebuild it (:func:`rrdpo_core.validate.read_pair_sample`).
        """
        from ..validate import read_pair_sample

        return read_pair_sample(self.path(i), keys)

    def text_embeds(self) -> torch.Tensor | None:
        path = self.root / TEXT_FILE
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        return load_file(str(path))["text_embeds"]

    def fingerprint(self) -> str:
        """Identity of the stored pairs (indices and files): a resumed training run checks it."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(f"{e.index}:{e.file}:{e.kind}:{e.mask_seed};".encode())
        return "sha256:" + h.hexdigest()[:32]

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.kind] = out.get(e.kind, 0) + 1
        return out


def reconcile(root: Path, write: bool) -> list[PairEntry]:
    """Entries of every complete sample file; with ``write``, also repair the manifest on disk."""
    samples = root / SAMPLES_DIR
    manifest = root / MANIFEST_FILE
    listed: dict[int, PairEntry] = {}
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                e = PairEntry.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError):
                continue  # a line torn by a kill
            listed[e.index] = e
    entries: dict[int, PairEntry] = {}
    if samples.is_dir():
        for p in sorted(samples.iterdir()):
            if not p.name.endswith(".safetensors") or p.name.startswith("."):
                continue
            stem = p.name[: -len(".safetensors")]
            if not stem.isdigit():
                continue
            idx = int(stem)
            e = listed.get(idx)
            if e is None or e.file != p.name:
                e = _read_entry_from_file(p)
                if e is None:
                    continue
            entries[idx] = e
    out = [entries[k] for k in sorted(entries)]
    if write:
        remove_temp_files(samples)
        remove_temp_files(root)
        # Rewritten from the sample files every time a build starts: drops a line torn by a kill
        # (appending after it would corrupt the next line too) and adds pairs whose line was lost.
        atomic_write_text(manifest, "".join(json.dumps(e.to_dict(), sort_keys=True) + "\n" for e in out))
    return out
