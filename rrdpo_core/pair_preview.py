"""A picture of a preference-pair folder: for a few pairs of each loser kind, the masked input the
model sees, the winner (the truth) and the loser, side by side, so a user can judge the data before
training on it."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from .conditioning import masked_image
from .pairs import LOSER_KINDS, PairDataset

__all__ = ["pair_preview"]

_GAP = 4  # white pixels between tiles and rows
_LABEL_H = 18  # height of the caption strip above each tile


def _tile(frame: torch.Tensor, height: int) -> np.ndarray:
    """``(H, W, 3)`` float in [0, 1] -> uint8 at ``height`` rows, aspect ratio kept."""
    h, w = frame.shape[:2]
    width = max(1, round(w * height / h))
    mode = "area" if height < h else "bilinear"
    x = F.interpolate(frame.permute(2, 0, 1)[None].float(), size=(height, width), mode=mode)
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    import cv2

    strip = np.full((_LABEL_H, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (3, _LABEL_H - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, tile], 0)


def _hstack(tiles: list[np.ndarray]) -> np.ndarray:
    gap = np.full((tiles[0].shape[0], _GAP, 3), 255, np.uint8)
    parts = []
    for t in tiles:
        parts += [t, gap]
    return np.concatenate(parts[:-1], 1)


def pair_preview(pairs: PairDataset | str | os.PathLike, per_kind: int = 2, height: int = 160) -> torch.Tensor:
    """An IMAGE ``(1, H, W, 3)`` float in [0, 1]: one row per shown pair (up to ``per_kind`` of each
    loser kind), each row ``masked input | winner | loser`` at the pair's middle frame."""
    ds = pairs if isinstance(pairs, PairDataset) else PairDataset(pairs)
    if per_kind < 1 or height < 8:
        raise ValueError(f"per_kind must be >= 1 and height >= 8, got {per_kind}, {height}")
    order = {k: i for i, k in enumerate(LOSER_KINDS)}
    shown: dict[str, list[int]] = {}
    for i, e in enumerate(ds.entries):
        if len(shown.setdefault(e.kind, [])) < per_kind:
            shown[e.kind].append(i)
    rows = []
    for kind in sorted(shown, key=lambda k: order.get(k, len(order))):
        for i in shown[kind]:
            t = ds.load(i, ["winner", "loser", "mask"])
            mid = t["winner"].shape[0] // 2
            winner = t["winner"][mid].float() / 255.0
            loser = t["loser"][mid].float() / 255.0
            hole = t["mask"][mid].float()
            masked = masked_image(winner[None], hole[None])[0]
            entry = ds.entries[i]
            rows.append(_hstack([
                _caption(_tile(masked, height), f"#{entry.index} masked input (frame {mid})"),
                _caption(_tile(winner, height), "winner (truth)"),
                _caption(_tile(loser, height), f"loser: {kind}"),
            ]))
    if not rows:
        return torch.ones(1, height, height, 3)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    gap = np.full((_GAP, width, 3), 255, np.uint8)
    parts = []
    for r in rows:
        parts += [r, gap]
    grid = np.concatenate(parts[:-1], 0)
    return torch.from_numpy(grid).float()[None] / 255.0
