"""GT-pair preference datasets for Region-Reg-DPO (spec/METHOD.md §6).

For each pair: a clip cut from a source video is the **winner** (the ground truth); a random-shape,
random-motion mask sequence (:func:`rrdpo_core.masks.random_mask_sequence`) is cut into it, and a
model fills the hole to make the **loser**, which is then composited onto the truth outside the
(feathered) hole, as a user would receive it. Loser kinds:

* ``hallucination``: DiffuEraser sampled without a prior (pure-noise start);
* ``blur``: the flow-propagation prior alone (smeared, strongest where little is visible);
* ``flicker``: DiffuEraser (with prior) run on the two halves of the clip independently, with
  different seeds, as two windows that do not share context at a seam would: the content jumps
  between the two seam frames.

On disk (``out_dir``)::

    dataset.json                 format, version and the build settings (fixed for the folder)
    manifest.jsonl               one line per stored pair (index, file, kind, seeds, source, ...)
    text_embeds.safetensors      the text context the losers were made with (the trainer reuses it)
    samples/000000.safetensors   winner, loser (uint8 T,H,W,3), mask (uint8 T,H,W, 1 = hole) and,
                                 with a VAE, winner/loser/masked-image latents (float32 T,4,h,w);
                                 the manifest line is repeated in the file's metadata

Every pair is derived from ``(seed, index)`` alone, so a build is reproducible and *resumable*:
running it again skips the pairs already stored and makes the missing ones, identical to an
uninterrupted build. Sample files are written atomically (temporary name, then rename) and are
the source of truth: the manifest is reconciled with them on every open, so a process killed at
any point leaves neither a half-written pair nor a duplicate.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .blend import blend_into_video
from .conditioning import encode_frames, masked_image
from .errors import RrdpoInputError
from .fsutil import atomic_save_safetensors, atomic_write_json, atomic_write_text, fsync_dir, remove_temp_files
from .progress import CancelFn, ProgressFn, check_cancel
from .rng import derive_seed

__all__ = [
    "LOSER_KINDS",
    "PAIRS_FORMAT",
    "PairSettings",
    "PairEntry",
    "PairDataset",
    "SourceClip",
    "LoserGenerator",
    "build_preference_pairs",
    "resolve_sources",
    "composite_onto_truth",
]

PAIRS_FORMAT = "rrdpo.pairs"
PAIRS_VERSION = 1
LOSER_KINDS = ("hallucination", "blur", "flicker")
DATASET_FILE = "dataset.json"
MANIFEST_FILE = "manifest.jsonl"
SAMPLES_DIR = "samples"
TEXT_FILE = "text_embeds.safetensors"
LOCK_FILE = ".lock"
LATENT_KEYS = ("winner_latents", "loser_latents", "masked_latents")


# --------------------------------------------------------------------------------------------
# Compositing


def composite_onto_truth(truth: torch.Tensor, generated: torch.Tensor, hole: torch.Tensor,
                         mode: str = "gaussian") -> torch.Tensor:
    """The loser as a user receives it: generated pixels in the hole, the truth elsewhere.

    ``mode="gaussian"`` is DiffuEraser's feathered paste (the hole stays fully generated, the
    feather only extends outward); ``"hard"`` pastes the hole exactly. ``(T,H,W,3)`` in [0, 1].
    """
    if mode == "hard":
        a = hole.to(truth.dtype)[..., None]
        return generated * a + truth * (1 - a)
    if mode != "gaussian":
        raise ValueError(f"composite mode must be 'gaussian' or 'hard', got {mode!r}")
    out = blend_into_video(truth, generated, hole, mode="gaussian")
    return torch.as_tensor(np.asarray(out) if not torch.is_tensor(out) else out).float()


def _to_uint8(frames: torch.Tensor) -> torch.Tensor:
    return (frames.float().clamp(0, 1) * 255.0).round().to(torch.uint8)


def _check_cancel(cancel: CancelFn | None) -> None:
    check_cancel(cancel, "building preference pairs was cancelled; run it again to continue where it stopped")


# --------------------------------------------------------------------------------------------
# Settings and entries


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


# --------------------------------------------------------------------------------------------
# Reading


def _sample_name(index: int) -> str:
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
        from .validate import read_json_object

        meta = read_json_object(meta_path, "rebuild the pairs into a new folder (or restore the file from a copy)")
        if meta.get("format") != PAIRS_FORMAT:
            raise ValueError(f"{meta_path}: format is {meta.get('format')!r}, expected {PAIRS_FORMAT!r}")
        if int(meta.get("version", 0)) > PAIRS_VERSION:
            raise ValueError(f"{meta_path}: version {meta.get('version')} is newer than this code ({PAIRS_VERSION})")
        self.settings = PairSettings.from_dict(meta["settings"])
        self.entries: list[PairEntry] = _reconcile(self.root, write=False)

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
        from .validate import read_pair_sample

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


def _reconcile(root: Path, write: bool) -> list[PairEntry]:
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


# --------------------------------------------------------------------------------------------
# Sources


@dataclass
class SourceClip:
    """A source video: a file, a frame folder, or frames in memory (``(T,H,W,3)`` in [0, 1])."""

    name: str
    path: Path | None = None
    frames: torch.Tensor | None = None

    def load(self) -> torch.Tensor:
        if self.frames is not None:
            return self.frames
        from .video_io import read_video

        return read_video(self.path).frames


def resolve_sources(sources: Any) -> list[SourceClip]:
    """Turn the user's sources into clips.

    Accepts a folder (its videos and frame sub-folders; a folder of images is itself one clip),
    a video file, a frame tensor/array ``(T,H,W,3)``, or a list of any of these.
    """
    from .video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, as_frames, to_tensor

    items = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    clips: list[SourceClip] = []
    for k, item in enumerate(items):
        if isinstance(item, (torch.Tensor, np.ndarray)):
            clips.append(SourceClip(name=f"memory:{k}", frames=to_tensor(as_frames(item, name=f"sources[{k}]"))))
            continue
        p = Path(os.fspath(item)).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"source not found: {p} (give video files, frame folders or folders of them)")
        if p.is_file():
            if p.suffix.lower() not in VIDEO_EXTENSIONS:
                raise RrdpoInputError(f"source {p}: not a video file ({', '.join(VIDEO_EXTENSIONS)})")
            clips.append(SourceClip(name=str(p), path=p))
            continue
        children = sorted(p.iterdir())
        if any(c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS for c in children):
            clips.append(SourceClip(name=str(p), path=p))  # a frame folder
            continue
        for c in children:
            if c.is_file() and c.suffix.lower() in VIDEO_EXTENSIONS:
                clips.append(SourceClip(name=str(c), path=c))
            elif c.is_dir() and any(g.suffix.lower() in IMAGE_EXTENSIONS for g in c.iterdir() if g.is_file()):
                clips.append(SourceClip(name=str(c), path=c))
    if not clips:
        raise RrdpoInputError(f"no source clips found in {sources!r}: give video files, frame folders or folders of them")
    return clips


class _ClipCache:
    """Source clips resized to the working size; keeps the last few in memory."""

    def __init__(self, clips: list[SourceClip], height: int, width: int, capacity: int = 4):
        self.clips, self.height, self.width, self.capacity = clips, height, width, capacity
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def get(self, i: int) -> torch.Tensor:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        frames = self.clips[i].load()
        frames = _fit(frames, self.height, self.width)
        self._cache[i] = frames
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return frames

    def length(self, i: int) -> int:
        return int(self.get(i).shape[0])


def _fit(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop to the target aspect ratio, then resize (area filter) to ``height x width``."""
    import cv2

    t, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames.float().contiguous()
    target = width / height
    if w / h > target:
        cw, ch = int(round(h * target)), h
    else:
        cw, ch = w, int(round(w / target))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    out = []
    for f in frames.float().numpy():
        crop = f[y0 : y0 + ch, x0 : x0 + cw]
        interp = cv2.INTER_AREA if ch >= height else cv2.INTER_LINEAR
        out.append(cv2.resize(crop, (width, height), interpolation=interp))
    return torch.from_numpy(np.clip(np.stack(out), 0.0, 1.0)).float()


# --------------------------------------------------------------------------------------------
# Losers


class LoserGenerator:
    """Makes the three loser kinds with the DiffuEraser sampler and the flow-propagation prior.

    ``__call__(kind, frames, hole, seeds)`` returns the raw completion ``(T,H,W,3)`` in [0, 1]
    (before compositing) and a dict of the settings used. Subclass or pass callables in
    ``overrides={kind: fn(frames, hole, seeds) -> frames}`` to change one kind.
    """

    def __init__(self, model: Any, vae: Any, text_embeds: torch.Tensor, *, num_inference_steps: int = 2,
                 scheduler: str = "tcd", overrides: Mapping[str, Callable[..., torch.Tensor]] | None = None,
                 prior_kwargs: Mapping[str, Any] | None = None):
        self.model, self.vae, self.text_embeds = model, vae, text_embeds
        self.num_inference_steps, self.scheduler = int(num_inference_steps), scheduler
        self.overrides = dict(overrides or {})
        self.prior_kwargs = dict(prior_kwargs or {})
        self._pipe = None
        # Set by build_preference_pairs for the pair being made: the pipeline and the prior report
        # into ``progress(done, total)`` of the current phase and poll ``cancel``.
        self.progress: ProgressFn | None = None
        self.cancel: CancelFn | None = None

    # number of sampler seeds each kind consumes
    SEEDS = {"hallucination": 1, "blur": 0, "flicker": 2}

    def settings(self, kind: str) -> dict[str, Any]:
        s: dict[str, Any] = {"kind": kind}
        if kind in ("hallucination", "flicker"):
            s.update(num_inference_steps=self.num_inference_steps, scheduler=self.scheduler)
        if kind == "hallucination":
            s["prior"] = "none (pure noise start)"
        else:
            s["prior"] = "flow_propagation"
            s.update({f"prior.{k}": v for k, v in self.prior_kwargs.items()})
        if kind == "flicker":
            s["seam"] = "two halves sampled independently with different seeds"
        if kind in self.overrides:
            s["override"] = getattr(self.overrides[kind], "__name__", "custom")
        return s

    @property
    def pipe(self):
        if self._pipe is None:
            from .pipeline import DiffuEraserPipeline

            self._pipe = DiffuEraserPipeline(self.model, self.vae)
        return self._pipe

    def _prior(self, frames: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        from .prior import flow_propagation_prior

        return torch.as_tensor(flow_propagation_prior(frames, hole, progress=self.progress, cancel=self.cancel,
                                                      **self.prior_kwargs).frames).float()

    def _sample(self, frames: torch.Tensor, hole: torch.Tensor, prior: torch.Tensor | None, seed: int) -> torch.Tensor:
        out = self.pipe(frames, hole, prior, self.text_embeds, num_inference_steps=self.num_inference_steps,
                        scheduler=self.scheduler, seed=int(seed), progress=self.progress, cancel=self.cancel)
        return torch.as_tensor(out.frames).float()

    def __call__(self, kind: str, frames: torch.Tensor, hole: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        if kind in self.overrides:
            return torch.as_tensor(self.overrides[kind](frames, hole, seeds)).float()
        if kind == "hallucination":
            return self._sample(frames, hole, None, seeds[0])
        if kind == "blur":
            return self._prior(frames, hole)
        if kind == "flicker":
            t = frames.shape[0]
            if t < 2:
                raise RrdpoInputError("the 'flicker' loser needs clips of at least 2 frames")
            prior = self._prior(frames, hole)
            k = t // 2
            first = self._sample(frames[:k], hole[:k], prior[:k], seeds[0])
            second = self._sample(frames[k:], hole[k:], prior[k:], seeds[1])
            return torch.cat([first, second], 0)
        raise ValueError(f"unknown loser kind {kind!r}; choose from {LOSER_KINDS}")


# --------------------------------------------------------------------------------------------
# Building


class _FolderLock:
    """One builder per folder: a lock file holding the owner's pid; a dead owner's lock is taken over."""

    def __init__(self, root: Path):
        self.path = root / LOCK_FILE

    def __enter__(self) -> "_FolderLock":
        for _ in range(2):
            try:
                fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise RuntimeError(
                        f"{self.path.parent} is being written by process {pid}; wait for it to finish (or stop it) "
                        f"before building pairs into the same folder"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale lock of a killed build
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise RuntimeError(f"could not lock {self.path.parent}")

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _plan(settings: PairSettings, index: int, lengths: Sequence[int]) -> dict[str, Any]:
    """Everything random about pair ``index``, from ``(seed, index)`` alone."""
    rng = np.random.default_rng([int(settings.seed) & 0xFFFFFFFF, int(index)])
    eligible = [i for i, n in enumerate(lengths) if n >= settings.num_frames]
    src = int(eligible[int(rng.integers(0, len(eligible)))])
    start = int(rng.integers(0, lengths[src] - settings.num_frames + 1))
    kind = settings.kinds[index % len(settings.kinds)]
    mask_seed = int(rng.integers(0, 2**31 - 1))
    n_seeds = LoserGenerator.SEEDS.get(kind, 2)
    sampler_seeds = tuple(int(rng.integers(0, 2**31 - 1)) for _ in range(max(n_seeds, 2)))[:n_seeds]
    return dict(source_index=src, start=start, kind=kind, mask_seed=mask_seed, sampler_seeds=sampler_seeds)


def _write_settings(root: Path, settings: PairSettings) -> None:
    atomic_write_json(root / DATASET_FILE, {"format": PAIRS_FORMAT, "version": PAIRS_VERSION,
                                            "settings": settings.to_dict(), "created": time.time()})


def _check_new_settings(root: Path, settings: PairSettings, has_pairs: bool = True) -> None:
    """Refuse settings that differ from those of the pairs already in ``root``. Writes nothing: the
    settings are stored once the build is known to start (a build that fails on its inputs must not
    pin a folder to settings it never built pairs with)."""
    meta_path = root / DATASET_FILE
    if not meta_path.is_file() or not has_pairs:
        return
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    old = PairSettings.from_dict(meta.get("settings", {})).to_dict()
    new = settings.to_dict()
    diff = sorted(k for k in new if old.get(k) != new[k])
    if diff:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff)
        raise ValueError(
            f"{root} already holds pairs built with other settings ({changes}); use a new output folder, "
            f"or the same settings to continue that build"
        )


def build_preference_pairs(
    model: Any,
    vae: Any,
    text_embeds: torch.Tensor,
    sources: Any,
    out_dir: str | os.PathLike,
    *,
    count: int,
    kinds: Sequence[str] = LOSER_KINDS,
    seed: int = 0,
    num_frames: int = 22,
    size: tuple[int, int] | None = None,
    num_inference_steps: int = 2,
    scheduler: str = "tcd",
    composite: str = "gaussian",
    store_latents: bool = True,
    mask_static_prob: float = 0.5,
    generator: LoserGenerator | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> PairDataset:
    """Build (or continue building) ``count`` GT preference pairs in ``out_dir``.

    Args:
        model, vae: the DiffuEraser model and the latent codec (``vae.encode`` of ``[-1, 1]`` images
            to scaled latents). ``vae`` may be None only when no kind samples DiffuEraser and
            ``store_latents`` is False.
        text_embeds: ``(1, L, D)`` text context for the sampler (stored for the trainer).
        sources: folder(s) of videos / frame folders, video files, or frame tensors ``(T,H,W,3)``.
        count: total number of pairs the folder should hold (re-running with a larger count adds).
        kinds: loser kinds, used in turn (pair ``i`` gets ``kinds[i % len(kinds)]``).
        seed: fixes every random choice (clip, start frame, mask, sampler seeds) per pair index.
        num_frames: frames per clip; ``size``: ``(height, width)`` (multiples of 8; default: the
            first source's size rounded down to multiples of 8).
        composite: ``"gaussian"`` (DiffuEraser's feathered paste) or ``"hard"``.
        store_latents: also store VAE latents of winner, loser and masked image (saves the trainer
            three VAE passes per step).
        generator: a custom :class:`LoserGenerator` (default: DiffuEraser + flow prior).
        progress: ``progress(units, count * PAIR_UNITS)``: ``PAIR_UNITS`` (100) units per pair, the
            last one when the pair is stored, the others while its loser (prior, sampler windows,
            VAE batches) and its latents are made. cancel: polled between pairs and by the prior,
            the sampler and the encodings; returning True raises
            :class:`rrdpo_core.errors.Cancelled`, keeping every finished pair.

    Returns:
        The :class:`PairDataset` of the folder.
    """
    if isinstance(count, bool) or int(count) != count or count < 1:
        raise ValueError(f"count: must be a positive integer, got {count!r}")
    kinds = tuple(kinds)
    if not kinds or any(k not in LOSER_KINDS for k in kinds):
        raise ValueError(f"kinds: choose one or more of {LOSER_KINDS}, got {list(kinds)}")
    if int(num_frames) < 1:
        raise ValueError(f"num_frames: must be >= 1, got {num_frames}")
    if composite not in ("gaussian", "hard"):
        raise ValueError(f"composite: must be 'gaussian' or 'hard', got {composite!r}")
    if vae is None and (store_latents or ({"hallucination", "flicker"} & set(kinds) and generator is None)):
        raise ValueError("vae: a latent codec is needed to sample losers and to store latents; pass one "
                         "(or store_latents=False with only the 'blur' kind)")
    text_embeds = torch.as_tensor(text_embeds)
    if text_embeds.ndim == 2:
        text_embeds = text_embeds[None]
    text_embeds = text_embeds.detach().float().cpu()
    clips = resolve_sources(sources)
    if size is None:
        first = clips[0].load()
        size = (int(first.shape[1]) // 8 * 8, int(first.shape[2]) // 8 * 8)
    height, width = int(size[0]), int(size[1])
    if height < 8 or width < 8 or height % 8 or width % 8:
        raise ValueError(f"size: height and width must be positive multiples of 8, got {size}")
    settings = PairSettings(
        num_frames=int(num_frames), height=height, width=width, kinds=kinds, seed=int(seed),
        num_inference_steps=int(num_inference_steps), scheduler=str(scheduler), composite=composite,
        store_latents=bool(store_latents), mask_static_prob=float(mask_static_prob),
        sources=tuple(c.name for c in clips),
    )
    root = Path(out_dir)
    (root / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    with _FolderLock(root):
        existing = {e.index for e in _reconcile(root, write=True)}
        _check_new_settings(root, settings, has_pairs=bool(existing))
        gen = generator or LoserGenerator(model, vae, text_embeds, num_inference_steps=num_inference_steps,
                                          scheduler=scheduler)
        cache = _ClipCache(clips, height, width)
        lengths = _source_lengths(root, clips, cache)
        if max(lengths) < settings.num_frames:
            raise RrdpoInputError(
                f"every source clip is shorter than num_frames={settings.num_frames} (longest: {max(lengths)} "
                f"frames); use longer clips or fewer frames"
            )
        if not existing:  # (re)start: this build's settings and text now own the folder
            _write_settings(root, settings)
            atomic_save_safetensors(root / TEXT_FILE, {"text_embeds": text_embeds})
        elif not (root / TEXT_FILE).is_file():
            atomic_save_safetensors(root / TEXT_FILE, {"text_embeds": text_embeds})
        done = len(existing & set(range(int(count))))
        ticks = _PairTicks(progress, int(count))
        ticks.pair(done)
        for index in range(int(count)):
            if index in existing:
                continue
            _check_cancel(cancel)
            entry, tensors = _make_pair(index, settings, cache, lengths, gen, vae, text_embeds, cancel, ticks)
            atomic_save_safetensors(root / SAMPLES_DIR / entry.file, tensors,
                                    {"entry": json.dumps(entry.to_dict(), sort_keys=True)})
            _append_manifest(root, entry)
            done += 1
            ticks.pair(done)
    return PairDataset(root)


class _PairTicks:
    """Progress in ``PAIR_UNITS`` per pair, so the bar also moves while one pair is made.

    A pair's work is split into phases (the loser's prior and sampler runs, then the latents);
    each phase maps its own ``(done, total)`` onto its share of the pair's units.
    """

    def __init__(self, progress: ProgressFn | None, count: int):
        self.progress, self.count = progress, count
        self.done, self.lo, self.hi, self.last = 0, 0.0, 1.0, -1

    def pair(self, done: int) -> None:
        """``done`` pairs are finished."""
        self.done, self.last = done, -1
        self._report(done * PAIR_UNITS)

    def phase(self, lo: float, hi: float) -> None:
        """The next reports cover ``lo .. hi`` of the current pair."""
        self.lo, self.hi = lo, hi
        self(0, 1)

    def __call__(self, done: int, total: int) -> None:
        frac = self.lo + (self.hi - self.lo) * min(1.0, done / max(1, total))
        part = min(PAIR_UNITS - 1, int(frac * PAIR_UNITS))  # the pair's last unit comes with pair()
        if part > self.last:
            self.last = part
            self._report(self.done * PAIR_UNITS + part)
        elif self.progress is not None:
            self._report(self.done * PAIR_UNITS + self.last)  # still a tick: the caller may cancel there

    def _report(self, value: int) -> None:
        if self.progress is not None:
            self.progress(value, self.count * PAIR_UNITS)


def _source_lengths(root: Path, clips: Sequence[SourceClip], cache: _ClipCache) -> list[int]:
    """Frame count of every source; remembered in ``sources.json`` so a resumed build does not
    decode every video again just to count frames."""
    path = root / "sources.json"
    known: dict[str, Any] = {}
    if path.is_file():
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            known = {}

    def key(c: SourceClip) -> str | None:
        if c.path is None:
            return None
        st = c.path.stat()
        return f"{c.path}|{st.st_mtime_ns}|{st.st_size if c.path.is_file() else len(list(c.path.iterdir()))}"

    lengths, changed = [], False
    for i, c in enumerate(clips):
        k = key(c)
        if k is not None and isinstance(known.get(k), int):
            lengths.append(int(known[k]))
            continue
        n = cache.length(i)
        lengths.append(n)
        if k is not None:
            known[k], changed = n, True
    if changed:
        atomic_write_json(path, known)
    return lengths


def _append_manifest(root: Path, entry: PairEntry) -> None:
    with open(root / MANIFEST_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry.to_dict(), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(root)


# Share of a pair's progress units for making the loser; the rest is the three latent encodings.
LOSER_SHARE = 0.85
PAIR_UNITS = 100


class _PhaseSplit:
    """Spreads the loser generator's several runs (prior, then one or two sampler runs) over the
    loser's share of a pair: each new run (``done`` back at a low value) moves to the next slot."""

    SLOTS = {"hallucination": 1, "blur": 1, "flicker": 3}

    def __init__(self, ticks: "_PairTicks | None", kind: str):
        self.ticks, self.slots, self.slot, self.prev = ticks, self.SLOTS.get(kind, 1), 0, None

    def __call__(self, done: int, total: int) -> None:
        if self.ticks is None:
            return
        frac = done / max(1, total)
        if self.prev is not None and frac < self.prev:
            self.slot = min(self.slots - 1, self.slot + 1)
        self.prev = frac
        self.ticks(self.slot * max(1, total) + done, self.slots * max(1, total))


def _make_pair(index: int, settings: PairSettings, cache: _ClipCache, lengths: Sequence[int],
               gen: LoserGenerator, vae: Any, text_embeds: torch.Tensor,
               cancel: CancelFn | None, ticks: "_PairTicks | None" = None) -> tuple[PairEntry, dict[str, torch.Tensor]]:
    from .masks import random_mask_sequence

    plan = _plan(settings, index, lengths)
    clip = cache.get(plan["source_index"])
    # On the uint8 grid from the start: the stored winner is exactly the frames the loser was made from.
    truth = _to_uint8(clip[plan["start"] : plan["start"] + settings.num_frames]).float() / 255.0
    hole = random_mask_sequence(settings.num_frames, settings.height, settings.width, seed=plan["mask_seed"],
                                static_prob=settings.mask_static_prob)
    _check_cancel(cancel)
    if ticks is not None:
        ticks.phase(0.0, LOSER_SHARE if settings.store_latents else 1.0)
    if isinstance(gen, LoserGenerator):
        gen.progress, gen.cancel = _PhaseSplit(ticks, plan["kind"]), cancel
    raw = gen(plan["kind"], truth, hole, plan["sampler_seeds"])
    if tuple(raw.shape) != tuple(truth.shape):
        raise RuntimeError(f"the {plan['kind']!r} generator returned frames of shape {tuple(raw.shape)}, "
                           f"expected {tuple(truth.shape)}")
    loser = composite_onto_truth(truth, raw.clamp(0, 1), hole, settings.composite)
    winner_u8, loser_u8 = _to_uint8(truth), _to_uint8(loser)
    tensors: dict[str, torch.Tensor] = {"winner": winner_u8, "loser": loser_u8, "mask": (hole > 0.5).to(torch.uint8)}
    if settings.store_latents:
        # Encode what is stored (the uint8 frames), so latents and pixels describe the same pair.
        w01 = winner_u8.float() / 255.0
        l01 = loser_u8.float() / 255.0
        latent_gen = torch.Generator().manual_seed(derive_seed(settings.seed, "latents", index))
        for i, (key, x) in enumerate((("winner_latents", w01), ("loser_latents", l01),
                                      ("masked_latents", masked_image(w01, tensors["mask"].float())))):
            if ticks is not None:
                ticks.phase(LOSER_SHARE + (1 - LOSER_SHARE) * i / 3, LOSER_SHARE + (1 - LOSER_SHARE) * (i + 1) / 3)
            _check_cancel(cancel)
            tensors[key] = encode_frames(vae, x, latent_gen)
    entry = PairEntry(
        index=index, file=_sample_name(index), kind=plan["kind"],
        source=cache.clips[plan["source_index"]].name, source_index=plan["source_index"], start=plan["start"],
        num_frames=settings.num_frames, height=settings.height, width=settings.width,
        mask_seed=plan["mask_seed"], sampler_seeds=plan["sampler_seeds"],
        hole_fraction=float((hole > 0.5).float().mean()), has_latents=settings.store_latents,
        generator=gen.settings(plan["kind"]),
    )
    return entry, tensors
