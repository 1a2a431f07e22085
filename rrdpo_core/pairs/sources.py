"""Source clips for the pair builder: video files, frame folders or frames in memory, fitted to the working size."""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RrdpoInputError

__all__ = ["SourceClip", "resolve_sources", "ClipCache", "fit_clip"]


@dataclass
class SourceClip:
    """A source video: a file, a frame folder, or frames in memory (``(T,H,W,3)`` in [0, 1])."""

    name: str
    path: Path | None = None
    frames: torch.Tensor | None = None

    def load(self) -> torch.Tensor:
        if self.frames is not None:
            return self.frames
        from ..video_io import read_video

        return read_video(self.path).frames


def resolve_sources(sources: Any) -> list[SourceClip]:
    """Turn the user's sources into clips.

    Accepts a folder (its videos and frame sub-folders; a folder of images is itself one clip),
    a video file, a frame tensor/array ``(T,H,W,3)``, or a list of any of these.
    """
    from ..video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, as_frames, to_tensor

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


class ClipCache:
    """Source clips resized to the working size; keeps the last few in memory."""

    def __init__(self, clips: list[SourceClip], height: int, width: int, capacity: int = 4):
        self.clips, self.height, self.width, self.capacity = clips, height, width, capacity
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def get(self, i: int) -> torch.Tensor:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        frames = self.clips[i].load()
        frames = fit_clip(frames, self.height, self.width)
        self._cache[i] = frames
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return frames

    def length(self, i: int) -> int:
        return int(self.get(i).shape[0])


def fit_clip(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
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
