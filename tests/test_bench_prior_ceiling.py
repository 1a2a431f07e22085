"""bench/bench_prior_ceiling.py: the oracle that tracks hole pixels along the truth's own flow, and the completion
of a flow field inside holes from outside them, on tiny clips (the README's ceiling table rests on both)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from rrdpo_core.synthetic import make_synthetic_clip

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ceiling():
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_prior_ceiling", REPO_ROOT / "bench" / "bench_prior_ceiling.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))


def test_the_oracle_copies_a_panned_background_from_the_frames_that_see_it(ceiling):
    clip = make_synthetic_clip(12, 64, 96, seed=4)
    truth = clip.truth.numpy()
    masks = np.zeros(truth.shape[:3], bool)
    masks[:, 24:40, 45:51] = True                    # a fixed bar the background pans under (~1 px/frame)
    fallback = np.zeros_like(truth)                  # whatever the oracle does not reach stays black
    forward, backward = ceiling.truth_flows(truth, "medium")
    filled, away = ceiling.oracle_fill(truth, masks, fallback, forward, backward, max_away=1000)
    error = np.abs(filled - truth)[masks].mean()
    assert error < 0.03, error                       # a black pixel left behind would cost ~0.5
    assert np.isfinite(away).all() and np.median(away) >= 2   # the bar hides each pixel for several frames
    near, _ = ceiling.oracle_fill(truth, masks, fallback, forward, backward, max_away=1)
    assert (near[masks] == 0).all(axis=-1).mean() > 0.3       # one frame away most of the bar is still hidden


def test_border_completion_keeps_the_outside_and_fills_each_label_from_its_own_pixels(ceiling):
    flow = np.zeros((1, 40, 60, 2), np.float32)
    flow[0, :, :30] = (1.0, 0.0)                     # background moving right
    flow[0, :, 30:] = (0.0, 2.0)                     # an object moving down
    truth_flow = flow[0].copy()
    holes = np.zeros((1, 40, 60), bool)
    holes[0, 10:30, 20:40] = True                    # straddles both
    flow[0][holes[0]] = 50.0                         # what the hole hides must not leak into the completion
    labels = np.zeros_like(holes)
    labels[0, :, 30:] = True
    (done,) = ceiling.border_completed(list(flow), holes, labels, sigma=3.0)
    assert np.array_equal(done[~holes[0]], flow[0][~holes[0]])
    np.testing.assert_allclose(done[holes[0]], truth_flow[holes[0]], atol=1e-4)
    (blind,) = ceiling.border_completed(list(flow), holes, np.zeros_like(holes), sigma=3.0)
    mixed = blind[holes[0]]
    assert np.abs(mixed - truth_flow[holes[0]]).max() > 0.3   # without labels the two motions blur together
    assert mixed.max() < 2.5                                  # and still nothing of the hidden values
