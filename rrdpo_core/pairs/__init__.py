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

Modules: :mod:`.format` (settings, entries, the folder reader the trainer uses), :mod:`.sources`
(source clips), :mod:`.losers` (loser kinds and compositing), :mod:`.lock` (one builder per
folder), :mod:`.build` (the build loop).
"""
from __future__ import annotations

from .build import build_preference_pairs
from .format import (DATASET_FILE, LATENT_KEYS, LOSER_KINDS, MANIFEST_FILE, PAIRS_FORMAT, SAMPLES_DIR, TEXT_FILE,
                     PairDataset, PairEntry, PairSettings)
from .losers import LoserGenerator, composite_onto_truth
from .sources import SourceClip, resolve_sources

__all__ = [
    "LOSER_KINDS",
    "PAIRS_FORMAT",
    "DATASET_FILE",
    "MANIFEST_FILE",
    "SAMPLES_DIR",
    "TEXT_FILE",
    "LATENT_KEYS",
    "PairSettings",
    "PairEntry",
    "PairDataset",
    "SourceClip",
    "LoserGenerator",
    "build_preference_pairs",
    "resolve_sources",
    "composite_onto_truth",
]
