"""Batches of preference pairs for the trainer: which pairs each micro-batch takes, and their tensors.

Every random draw about one pair (frame crop, timestep, noise) comes from a generator seeded by the
pair's position in the run, so the run does not depend on how the global batch is split into
processes and a resumed run draws exactly what it would have drawn. BrushNet's conditioning comes
from :mod:`rrdpo_core.conditioning`, the module the sampler uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..conditioning import encode_frames, known_mask_latent, masked_image
from ..pairs.format import LATENT_KEYS, PairDataset
from ..rng import derive_seed
from ..zones import LATENT_FACTOR, decompose_zones
from .config import TrainConfig

__all__ = ["PairBatch", "Batcher", "make_pair_batch"]


@dataclass
class PairBatch:
    winner: torch.Tensor  # (B, F, 4, h, w) clean latents
    loser: torch.Tensor
    masked: torch.Tensor  # (B, F, 4, h, w) masked-GT latents
    known: torch.Tensor  # (B, F, 1, h, w) 1 = known
    zones: list[torch.Tensor]  # 3 x (B, F, 1, h, w)
    timesteps: torch.Tensor  # (B,) one per clip, shared by winner and loser
    noise: torch.Tensor  # (B, F, 4, h, w) shared by winner and loser
    indices: list[int]


class Batcher:
    """Which pairs each micro-batch of each process sees, and their tensors.

    Micro-batch ``g`` of the whole run covers the global positions ``[g*W*B, (g+1)*W*B)`` of an
    endless sequence of epoch permutations (``W`` processes of ``B`` pairs); process ``r`` takes
    ``B`` consecutive positions. Everything random about one pair (frame crop, timestep, noise)
    comes from a generator seeded by ``(seed, position)``, so the run does not depend on how the
    global batch is split into processes, and resuming draws exactly what it would have drawn.
    """

    def __init__(self, dataset: PairDataset, cfg: TrainConfig, rank: int, world: int, vae: Any, max_frames: int,
                 device: torch.device | None = None):
        self.device = device
        if len(dataset) == 0:
            raise ValueError(f"{dataset.root} holds no preference pairs; build some with rrdpo_core.pairs")
        self.ds, self.cfg, self.rank, self.world, self.vae = dataset, cfg, rank, world, vae
        self.latents = dataset.has_latents
        if not self.latents and vae is None:
            raise ValueError(
                f"{dataset.root} stores no latents, so training needs the VAE to encode the frames: pass vae= "
                f"(or set vae_path in the config), or rebuild the pairs with store_latents=True"
            )
        clip_frames = min(e.num_frames for e in dataset.entries)
        self.frames = cfg.num_frames or clip_frames
        if self.frames > clip_frames:
            raise ValueError(f"num_frames={cfg.num_frames} but the shortest stored clip has {clip_frames} frames")
        if self.frames > max_frames:
            raise ValueError(
                f"clips of {self.frames} frames exceed the motion modules' {max_frames} positions; set num_frames "
                f"to at most {max_frames} (DiffuEraser trains on 22)"
            )
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "epoch", epoch))
            self._perms = {epoch: torch.randperm(len(self.ds), generator=g).tolist()}
        return self._perms[epoch]

    def positions(self, global_micro: int) -> list[int]:
        b = self.cfg.batch_size
        first = (global_micro * self.world + self.rank) * b
        return list(range(first, first + b))

    def indices(self, global_micro: int) -> list[int]:
        return [self._perm(pos // len(self.ds))[pos % len(self.ds)] for pos in self.positions(global_micro)]

    def batch(self, global_micro: int) -> PairBatch:
        lo, hi = self.cfg.timestep_range
        idx = self.indices(global_micro)
        ws, ls, ms, holes, ts, noises = [], [], [], [], [], []
        for pos, i in zip(self.positions(global_micro), idx):
            gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "pair", pos))
            keys = (*LATENT_KEYS, "mask") if self.latents else ("winner", "loser", "mask")
            d = self.ds.load(i, keys)
            t_all = int(d["mask"].shape[0])
            s = int(torch.randint(0, t_all - self.frames + 1, (1,), generator=gen))
            sl = slice(s, s + self.frames)
            hole = d["mask"][sl].float()
            if self.latents:
                w, l, m = (d[k][sl].float() for k in LATENT_KEYS)
            else:
                w01, l01 = d["winner"][sl].float() / 255.0, d["loser"][sl].float() / 255.0
                w, l, m = (encode_frames(self.vae, x, gen) for x in (w01, l01, masked_image(w01, hole)))
            ws.append(w), ls.append(l), ms.append(m), holes.append(hole)
            ts.append(torch.randint(lo, hi + 1, (1,), generator=gen))
            noises.append(torch.randn(w.shape, generator=gen))
        return make_pair_batch(torch.stack(ws), torch.stack(ls), torch.stack(ms), torch.stack(holes),
                               torch.cat(ts), torch.stack(noises), self.cfg.band_px, idx, self.device)


def make_pair_batch(winner: torch.Tensor, loser: torch.Tensor, masked: torch.Tensor, holes: torch.Tensor,
                    timesteps: torch.Tensor, noise: torch.Tensor, band_px: int,
                    indices: list[int] | None = None, device: torch.device | str | None = None) -> PairBatch:
    """A :class:`PairBatch` from clean latents ``(B, F, 4, h, w)`` and pixel hole masks ``(B, F, H, W)``.

    Builds BrushNet's known-mask channel and the three zones at latent resolution (METHOD §1).
    The full-resolution part (the 8x8 max-pool) runs on ``device`` when given (a GPU does it in
    no time; on the CPU it is most of the per-step cost of the zones); the band dilation then
    runs on the small latent mask, which gives exactly ``decompose_zones(holes, band_px,
    latent=True)``.
    """
    h, w = winner.shape[-2:]
    holes = holes.to(device) if device is not None else holes
    pixel = (holes > 0.5).to(torch.float32)
    lead = pixel.shape[:-2]
    flat = pixel.reshape(-1, 1, *pixel.shape[-2:])
    hole_lat = F.max_pool2d(flat, LATENT_FACTOR, LATENT_FACTOR, ceil_mode=True)
    hole_lat = hole_lat.reshape(*lead, *hole_lat.shape[-2:])
    if tuple(hole_lat.shape[-2:]) != (h, w):
        raise ValueError(
            f"latents are {h}x{w} but the {tuple(holes.shape[-2:])} masks give {tuple(hole_lat.shape[-2:])} "
            f"latent zones; the pairs' frames must be 8x their latents"
        )
    band_lat = max(1, round(band_px / LATENT_FACTOR)) if band_px > 0 else 0  # METHOD §1: k_lat
    zones = decompose_zones(hole_lat, band_px=band_lat, latent=False)
    return PairBatch(
        winner=winner, loser=loser, masked=masked, known=known_mask_latent(pixel, (h, w)),
        zones=[z.unsqueeze(2) for z in zones], timesteps=timesteps, noise=noise,
        indices=list(indices) if indices is not None else [],
    )
