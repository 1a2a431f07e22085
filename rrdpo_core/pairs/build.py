"""Building (and resuming) a folder of GT preference pairs: the build loop and one pair's making.

Every pair is derived from ``(seed, index)`` alone, so a build is reproducible and resumable (see
:mod:`rrdpo_core.pairs`).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..conditioning import encode_frames, masked_image
from ..errors import RrdpoInputError
from ..fsutil import atomic_save_safetensors, atomic_write_json, fsync_dir
from ..progress import CancelFn, ProgressFn, check_cancel
from ..rng import derive_seed
from .format import (DATASET_FILE, LOSER_KINDS, MANIFEST_FILE, PAIRS_FORMAT, PAIRS_VERSION, SAMPLES_DIR, TEXT_FILE,
                     PairDataset, PairEntry, PairSettings, reconcile, sample_name)
from .lock import FolderLock
from .losers import LoserGenerator, composite_onto_truth
from .sources import ClipCache, SourceClip, resolve_sources

__all__ = ["build_preference_pairs", "LOSER_SHARE", "PAIR_UNITS"]


def _to_uint8(frames: torch.Tensor) -> torch.Tensor:
    return (frames.float().clamp(0, 1) * 255.0).round().to(torch.uint8)


def _check_cancel(cancel: CancelFn | None) -> None:
    check_cancel(cancel, "building preference pairs was cancelled; run it again to continue where it stopped")


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
    with FolderLock(root):
        existing = {e.index for e in reconcile(root, write=True)}
        _check_new_settings(root, settings, has_pairs=bool(existing))
        gen = generator or LoserGenerator(model, vae, text_embeds, num_inference_steps=num_inference_steps,
                                          scheduler=scheduler)
        cache = ClipCache(clips, height, width)
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


def _source_lengths(root: Path, clips: Sequence[SourceClip], cache: ClipCache) -> list[int]:
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


def _make_pair(index: int, settings: PairSettings, cache: ClipCache, lengths: Sequence[int],
               gen: LoserGenerator, vae: Any, text_embeds: torch.Tensor,
               cancel: CancelFn | None, ticks: "_PairTicks | None" = None) -> tuple[PairEntry, dict[str, torch.Tensor]]:
    from ..masks import random_mask_sequence

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
        index=index, file=sample_name(index), kind=plan["kind"],
        source=cache.clips[plan["source_index"]].name, source_index=plan["source_index"], start=plan["start"],
        num_frames=settings.num_frames, height=settings.height, width=settings.width,
        mask_seed=plan["mask_seed"], sampler_seeds=plan["sampler_seeds"],
        hole_fraction=float((hole > 0.5).float().mean()), has_latents=settings.store_latents,
        generator=gen.settings(plan["kind"]),
    )
    return entry, tensors
