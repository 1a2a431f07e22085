"""Reading, writing and checking videos (rrdpo_core.video_io)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rrdpo_core.errors import RrdpoInputError
from rrdpo_core.video_io import (as_frames, as_masks, read_masks, read_video, resize_masks, write_image,
                                 write_video)


def gradient_video(length=5, h=32, w=48):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([np.stack([xx / w, yy / h, np.full_like(xx, t / length)], -1) for t in range(length)])


def test_as_frames_conventions():
    u8 = np.full((2, 4, 6, 4), 255, np.uint8)  # RGBA uint8
    out = as_frames(u8)
    assert out.shape == (2, 4, 6, 3) and out.dtype == np.float32 and np.all(out == 1.0)
    assert as_frames(torch.zeros(4, 6, 3)).shape == (1, 4, 6, 3)  # one image is one frame
    assert as_frames(np.full((1, 2, 2, 3), 1.5)).max() == 1.0
    with pytest.raises(RrdpoInputError, match="channels go last"):
        as_frames(np.zeros((2, 3, 4, 6)))
    bad = np.zeros((3, 4, 4, 3), np.float32)
    bad[2, 0, 0, 1] = np.inf
    with pytest.raises(RrdpoInputError, match=r"frame\(s\) \[2\]"):
        as_frames(bad)


def test_as_masks_conventions():
    m = as_masks(np.array([[0, 200], [127, 255]], np.uint8), 3, 2, 2)
    assert m.shape == (3, 2, 2) and m.dtype == bool
    assert m[0].tolist() == [[False, True], [False, True]]
    assert as_masks(torch.tensor([[[0.2, 0.7]]]), 1, 1, 2).tolist() == [[[False, True]]]
    with pytest.raises(RrdpoInputError, match="2 masks for 3 frames"):
        as_masks(np.zeros((2, 4, 4)), 3, 4, 4)
    with pytest.raises(RrdpoInputError, match="resize the masks"):
        as_masks(np.zeros((3, 4, 5)), 3, 4, 4)


def test_png_folder_round_trip_is_exact(tmp_path):
    video = (gradient_video() * 255).round() / 255
    write_video(tmp_path / "frames", video)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    back = read_video(tmp_path / "frames")
    np.testing.assert_allclose(back.frames.numpy(), video, atol=1e-6)
    assert not list(tmp_path.rglob(".*tmp*"))  # no temporary files left behind


@pytest.mark.parametrize("size", [(32, 48), (31, 45)])
def test_mp4_round_trip(tmp_path, size):
    h, w = size
    video = gradient_video(6, h, w)
    path = write_video(tmp_path / "clip.mp4", video, fps=12.5)
    back = read_video(path)
    assert back.frames.shape == (6, h, w, 3)
    assert back.fps == pytest.approx(12.5)
    assert np.abs(back.frames.numpy() - video).mean() < 0.02  # lossy, but close
    assert read_video(path, max_frames=2).frames.shape[0] == 2


def test_frames_in_a_folder_are_in_natural_order(tmp_path):
    for i in (1, 2, 10):
        write_image(tmp_path / f"f{i}.png", np.full((4, 4, 3), i / 10, np.float32))
    values = read_video(tmp_path).frames[:, 0, 0, 0].numpy()
    np.testing.assert_allclose(values, [0.1, 0.2, 1.0], atol=2 / 255)


def test_read_masks_thresholds_and_resizes(tmp_path):
    masks = np.zeros((3, 16, 16, 3), np.float32)
    masks[:, 4:12, 4:12] = 1.0
    masks[:, 0, 0] = 0.2  # compression noise
    write_video(tmp_path / "m", masks)
    m = read_masks(tmp_path / "m")
    assert m.dtype == torch.bool and m.shape == (3, 16, 16)
    assert m.sum() == 3 * 64
    assert read_masks(tmp_path / "m", size=(8, 8)).shape == (3, 8, 8)
    single = read_masks(tmp_path / "m" / "00000.png")
    assert single.shape == (1, 16, 16)


def test_missing_and_unreadable_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image frames"):
        read_video(tmp_path / "empty")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(RrdpoInputError):
        read_video(tmp_path / "broken.mp4")


def test_resize_masks_never_loses_hole_pixels():
    m = np.zeros((1, 17, 17), bool)
    m[0, 8, 8] = True
    assert resize_masks(m, 5, 5).any()
    assert resize_masks(m, 34, 34).sum() >= 4
