import numpy as np
import pytest
import torch

from rrdpo_core.masks import prepare_masks, random_mask_sequence


def test_prepare_masks_erodes_specks_then_dilates():
    m = np.zeros((2, 40, 40), np.uint8)
    m[:, 5, 5] = 255  # a lone speck: removed by the 3x3 erosion
    m[:, 20:26, 20:26] = 255  # a 6x6 square: eroded to 4x4, then grown by n pixels per side
    out = prepare_masks(m, dilation_iter=2)
    assert out.dtype == torch.float32 and out.shape == (2, 40, 40)
    assert out[:, 5, 5].sum() == 0
    ys, xs = torch.nonzero(out[0], as_tuple=True)
    assert (int(ys.min()), int(ys.max())) == (21 - 2, 24 + 2)
    assert (int(xs.min()), int(xs.max())) == (21 - 2, 24 + 2)
    # square structuring element: the grown square is full (corners included)
    assert out[0, 19:27, 19:27].all()


def test_prepare_masks_threshold_is_above_zero_and_accepts_images():
    m = torch.zeros(1, 20, 20, 3)
    m[0, 5:15, 5:15, 1] = 0.01  # any channel above zero is hole
    out = prepare_masks(m, dilation_iter=0)
    assert out[0, 6:14, 6:14].all() and out.sum() == 64


def test_prepare_masks_resize_to_frames():
    m = np.zeros((1, 10, 10), np.uint8)
    m[0, 2:8, 2:8] = 1
    out = prepare_masks(m, dilation_iter=0, erode=False, size=(20, 30))
    assert out.shape == (1, 20, 30)
    assert out.sum() == 12 * 18


def test_prepare_masks_bad_input():
    with pytest.raises(ValueError, match="dilation_iter"):
        prepare_masks(np.zeros((1, 4, 4)), dilation_iter=-1)
    with pytest.raises(ValueError, match="masks"):
        prepare_masks(np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="masks"):
        prepare_masks(np.zeros((2, 3, 4, 5, 6)))


def test_random_masks_deterministic_for_a_seed():
    a = random_mask_sequence(12, 60, 100, seed=7)
    b = random_mask_sequence(12, 60, 100, seed=7)
    c = random_mask_sequence(12, 60, 100, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (12, 60, 100)
    assert set(torch.unique(a).tolist()) <= {0.0, 1.0}


def test_random_masks_nonempty_and_moving_when_asked():
    for seed in range(5):
        m = random_mask_sequence(10, 64, 96, seed=seed, static_prob=0.0)
        assert (m.flatten(1).sum(1) > 0).all(), "every frame has a hole"
        # one shape, drawn in a region smaller than the frame, moved whole: never cropped at the border
        crops = []
        for frame in m:
            ys, xs = torch.nonzero(frame, as_tuple=True)
            crops.append(frame[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
        assert crops[0].shape[0] < 64 and crops[0].shape[1] < 96, crops[0].shape
        assert all(torch.equal(c, crops[0]) for c in crops), f"seed {seed}: the shape changed between frames"
    moved = [not torch.equal(random_mask_sequence(10, 64, 96, seed=s, static_prob=0.0)[0],
                             random_mask_sequence(10, 64, 96, seed=s, static_prob=0.0)[-1]) for s in range(6)]
    assert any(moved)
    static = random_mask_sequence(10, 64, 96, seed=1, static_prob=1.0)
    assert all(torch.equal(static[0], f) for f in static)


def test_random_masks_bad_input():
    with pytest.raises(ValueError, match="num_frames"):
        random_mask_sequence(0, 10, 10)
    with pytest.raises(ValueError, match="static_prob"):
        random_mask_sequence(3, 10, 10, static_prob=2.0)
