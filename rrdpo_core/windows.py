"""Temporal windows: how DiffuEraser splits a video into 22-frame clips and merges the clips back.

The motion UNet sees at most 22 frames at a time (it was trained on 22-frame clips), so every
denoising step runs it on overlapping windows (reference §1.8 steps 4–6):

* two window lists, used on alternate steps so window seams move between steps: list A starts at
  0, 17, 34, ... (stride = window − overlap), list B at 0 and then 11, 28, 45, ... (shifted by half a
  window); both end with a window flush with the last frame;
* windows are merged in order: the frames a window shares with those already written (a prefix
  of it) get a linear ramp (new weight (k+1)/(m+1)), and from the *last* shared frame on the new
  window overwrites;
* videos longer than two windows first get a pass over 22 evenly spaced keyframes.

Short videos (fewer frames than a window) run as one shorter window; the released code refused
them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

__all__ = [
    "WINDOW",
    "OVERLAP",
    "WindowSets",
    "context_windows",
    "overlap_weights",
    "OverlapBlender",
    "blend_windows",
    "keyframe_indices",
    "needs_keyframe_pass",
]

WINDOW = 22  # frames per clip the released model was trained on
OVERLAP = WINDOW // 4  # 5, as released


@dataclass(frozen=True)
class WindowSets:
    """The two window lists; ``for_step(i)`` is the list used at denoising step ``i``."""

    a: tuple[range, ...]
    b: tuple[range, ...]

    def for_step(self, step_index: int) -> tuple[range, ...]:
        return self.a if step_index % 2 == 0 else self.b

    def __iter__(self):
        return iter((self.a, self.b))

    @staticmethod
    def as_pairs(windows: Sequence[range]) -> list[tuple[int, int]]:
        """``(first, last)`` frame of each window, the form the reference lists them in."""
        return [(w.start, w.stop - 1) for w in windows]


def context_windows(num_frames: int, window: int = WINDOW, overlap: int = OVERLAP) -> WindowSets:
    """Window lists A and B for ``num_frames`` frames (reference §1.8 step 4).

    For ``num_frames <= window`` both lists are one window over the whole video.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if window < 2 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 2 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    if num_frames <= window:
        whole = (range(0, num_frames),)
        return WindowSets(whole, whole)
    stride = window - overlap
    last = num_frames - window  # start of the window flush with the end

    def windows(starts: list[int]) -> tuple[range, ...]:
        # A final window flush with the end follows whenever the last start leaves frames uncovered;
        # every start is below `last`, so that is always the case.
        if starts[-1] + window < num_frames:
            starts = starts + [last]
        return tuple(range(s, s + window) for s in starts)

    starts_a = list(range(0, last, stride))
    # The swap list opens with the first window, then starts half a window in; when its loop is
    # empty the released code reuses list A's last loop start for the end rule (same result here).
    starts_b = [0] + list(range(window // 2, last, stride))
    return WindowSets(windows(starts_a), windows(starts_b))


def overlap_weights(m: int) -> torch.Tensor:
    """Weights of the *new* window on the ``m`` frames it shares with what is already written.

    ``(k+1)/(m+1)`` for ``k < m-1`` and 1 for the last shared frame, which the released merge
    overwrites (e.g. m=5: 1/6, 2/6, 3/6, 4/6, 1).
    """
    if m <= 0:
        return torch.ones(0, dtype=torch.float64)
    w = torch.arange(1, m + 1, dtype=torch.float64) / (m + 1)
    w[-1] = 1.0
    return w


class OverlapBlender:
    """Merges per-window results into one ``(num_frames, ...)`` tensor, window by window.

    Windows must be added in list order; a window may overlap only a prefix of itself with the
    frames written before it (true of both lists from :func:`context_windows`).
    """

    def __init__(self, num_frames: int):
        self.num_frames = num_frames
        self.value: torch.Tensor | None = None
        self.written = torch.zeros(num_frames, dtype=torch.bool)

    def add(self, window: range, values: torch.Tensor) -> None:
        if values.shape[0] != len(window):
            raise ValueError(f"window {window} has {len(window)} frames but {values.shape[0]} values were given")
        if window.start < 0 or window.stop > self.num_frames:
            raise ValueError(f"window {window} lies outside the {self.num_frames}-frame video")
        if self.value is None:
            self.value = values.new_zeros((self.num_frames, *values.shape[1:]))
        shared = self.written[window.start:window.stop]
        m = int(shared.sum())
        if m and not bool(shared[:m].all()):
            raise ValueError(f"window {window} overlaps frames already written somewhere other than its start")
        if m:
            w = overlap_weights(m).to(values.device, values.dtype).view(-1, *([1] * (values.ndim - 1)))
            old = self.value[window.start:window.start + m]
            self.value[window.start:window.start + m] = old + w * (values[:m] - old)
        self.value[window.start + m:window.stop] = values[m:]
        self.written[window.start:window.stop] = True

    def result(self) -> torch.Tensor:
        if self.value is None or not bool(self.written.all()):
            missing = (~self.written).nonzero().flatten().tolist()
            raise ValueError(f"frames {missing[:10]} were not covered by any window")
        return self.value


def blend_windows(num_frames: int, windows: Sequence[range], evaluate: Callable[[range], torch.Tensor]) -> torch.Tensor:
    """Run ``evaluate`` on each window in order and merge the results with the overlap rule."""
    blender = OverlapBlender(num_frames)
    for window in windows:
        blender.add(window, evaluate(window))
    return blender.result()


def keyframe_indices(num_frames: int, count: int = WINDOW) -> list[int]:
    """``count`` evenly spaced frames, ``int(i·n/count)`` for i < count (reference §1.7)."""
    if num_frames < count:
        raise ValueError(f"cannot pick {count} keyframes from {num_frames} frames")
    return [(i * num_frames) // count for i in range(count)]


def needs_keyframe_pass(num_frames: int, window: int = WINDOW) -> bool:
    """The released pipeline runs the keyframe pass only for more than two windows of frames."""
    return num_frames > 2 * window
