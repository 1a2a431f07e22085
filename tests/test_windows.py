"""Temporal windows, the overlap merge and the keyframes (reference/diffueraser.md §1.7–§1.8)."""
from __future__ import annotations

import pytest
import torch

from rrdpo_core.windows import (
    OverlapBlender,
    WindowSets,
    blend_windows,
    context_windows,
    keyframe_indices,
    needs_keyframe_pass,
    overlap_weights,
)

# Measured from the released code (reference §1.8 step 4), as (first, last) frame.
REFERENCE = {
    30: ([(0, 21), (8, 29)], [(0, 21), (8, 29)]),
    40: ([(0, 21), (17, 38), (18, 39)], [(0, 21), (11, 32), (18, 39)]),
    100: ([(0, 21), (17, 38), (34, 55), (51, 72), (68, 89), (78, 99)],
          [(0, 21), (11, 32), (28, 49), (45, 66), (62, 83), (78, 99)]),
}


@pytest.mark.parametrize("n", sorted(REFERENCE))
def test_window_lists_match_the_released_examples(n):
    sets = context_windows(n)
    assert WindowSets.as_pairs(sets.a) == REFERENCE[n][0]
    assert WindowSets.as_pairs(sets.b) == REFERENCE[n][1]
    assert sets.for_step(0) == sets.a and sets.for_step(1) == sets.b and sets.for_step(2) == sets.a


@pytest.mark.parametrize("n", [1, 7, 22])
def test_short_videos_are_one_window(n):
    sets = context_windows(n)
    assert sets.a == sets.b == (range(0, n),)


def test_every_frame_is_covered_and_overlaps_are_prefixes():
    for n in range(1, 130):
        for windows in context_windows(n):
            covered = torch.zeros(n, dtype=torch.bool)
            for w in windows:
                assert 1 <= len(w) <= 22 and 0 <= w.start and w.stop <= n
                shared = covered[w.start:w.stop]
                m = int(shared.sum())
                assert bool(shared[:m].all()), (n, w)  # what is already written is a prefix of the window
                covered[w.start:w.stop] = True
            assert bool(covered.all()) and windows[-1].stop == n


def test_overlap_weights_ramp_then_overwrite():
    assert torch.allclose(overlap_weights(5), torch.tensor([1 / 6, 2 / 6, 3 / 6, 4 / 6, 1.0], dtype=torch.float64))
    assert overlap_weights(1).tolist() == [1.0]


def _reference_merge(n: int, windows, outputs) -> torch.Tensor:
    """The released merge as described in words: count buffer, linspace ramp, overwrite from m-1."""
    value = torch.zeros(n, *outputs[0].shape[1:], dtype=torch.float64)
    count = torch.zeros(n)
    for j, (w, out) in enumerate(zip(windows, outputs)):
        out = out.double()
        count[w.start:w.stop] += 1
        if j == 0:
            value[w.start:w.stop] = out
            continue
        m = int((count[w.start:w.stop] > 1).sum())
        ramp = torch.linspace(0, 1, m + 2, dtype=torch.float64)[1:-1]
        for k in range(m):
            value[w.start + k] = (1 - ramp[k]) * value[w.start + k] + ramp[k] * out[k]
        start = max(m - 1, 0)
        value[w.start + start:w.stop] = out[start:]
    return value


@pytest.mark.parametrize("n", [23, 30, 40, 57, 100])
def test_blender_equals_the_released_merge(n):
    gen = torch.Generator().manual_seed(n)
    for windows in context_windows(n):
        outputs = [torch.randn(len(w), 3, generator=gen, dtype=torch.float64) for w in windows]
        merged = blend_windows(n, windows, lambda w, it=iter(outputs): next(it))
        assert torch.allclose(merged, _reference_merge(n, windows, outputs), atol=1e-12)


def test_blender_keeps_values_that_agree_and_rejects_bad_windows():
    n = 40
    truth = torch.randn(n, 2)
    merged = blend_windows(n, context_windows(n).b, lambda w: truth[w.start:w.stop])
    assert torch.allclose(merged, truth, atol=1e-6)
    blender = OverlapBlender(10)
    blender.add(range(4, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="other than its start"):
        blender.add(range(2, 6), torch.zeros(4))
    with pytest.raises(ValueError, match="not covered"):
        blender.result()
    with pytest.raises(ValueError, match="outside"):
        OverlapBlender(5).add(range(3, 7), torch.zeros(4))


def test_keyframes_are_evenly_spaced_and_only_for_long_videos():
    for n in (45, 100, 250):
        assert keyframe_indices(n) == [int(i * n / 22) for i in range(22)]
        assert len(set(keyframe_indices(n))) == 22
    assert not needs_keyframe_pass(44) and needs_keyframe_pass(45)
    with pytest.raises(ValueError):
        keyframe_indices(10)


def test_bad_window_settings():
    with pytest.raises(ValueError):
        context_windows(0)
    with pytest.raises(ValueError):
        context_windows(30, window=22, overlap=22)
