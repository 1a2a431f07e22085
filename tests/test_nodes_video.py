"""Trim & Resize Clip node and the mask fitting behind it."""
from __future__ import annotations

import pytest
import torch

from pack import load_pack, node


def _clip(t=10, h=90, w=160):
    g = torch.Generator().manual_seed(0)
    return torch.rand(t, h, w, 3, generator=g)


def test_trim_resize_keeps_range_aspect_and_never_upscales(comfy_stubs):
    frames = _clip()
    images, mask, report = node("RRDPOTrimResizeClip").trim(frames, start_frame=2, max_frames=5, max_side=80)
    assert images.shape == (5, 45, 80, 3)  # 160x90 -> 80x45, same aspect ratio
    assert mask.shape == (5, 45, 80) and not mask.any(), "no mask in -> empty mask out"
    # frame 2 of the input is frame 0 of the output (shrunk)
    assert torch.allclose(images[0].mean(), frames[2].mean(), atol=0.02)
    assert not torch.allclose(images[0].mean(), frames[3].mean(), atol=1e-4)
    assert "2-6" in report and "160x90 -> 80x45" in report
    big, _, report = node("RRDPOTrimResizeClip").trim(frames, start_frame=0, max_frames=0, max_side=960)
    assert torch.equal(big, frames), "a small clip is neither enlarged nor changed; 0 frames = all"
    assert "kept 160x90" in report
    same, _, _ = node("RRDPOTrimResizeClip").trim(frames, start_frame=8, max_frames=150, max_side=0)
    assert torch.equal(same, frames[8:])


def test_trim_resize_cuts_and_resizes_the_mask_with_the_frames(comfy_stubs):
    frames = _clip()
    per_frame = torch.zeros(10, 90, 160)
    for t in range(10):
        per_frame[t, 20:60, 10 * t : 10 * t + 40] = 1
    _, mask, report = node("RRDPOTrimResizeClip").trim(frames, 3, 4, 80, mask=per_frame)
    assert mask.shape == (4, 45, 80) and set(mask.unique().tolist()) <= {0.0, 1.0}
    # the hole of input frame 3 (x 30..70 at full size) is x 15..35 at half size
    assert mask[0, 20, 15:35].all() and not mask[0, 20, :14].any() and not mask[0, 20, 36:].any()
    assert mask[1, 20, 20:40].all(), "output frame 1 is input frame 4"
    # one mask image for the whole clip, at another size than the frames
    single = torch.zeros(1, 180, 320)
    single[0, 40:120, 60:140] = 1
    _, mask, report = node("RRDPOTrimResizeClip").trim(frames, 0, 0, 80, mask=single)
    assert mask.shape == (10, 45, 80) and torch.equal(mask[0], mask[9])
    assert mask[:, 10:30, 15:35].all() and mask.sum() == 10 * 20 * 20
    assert "one mask" in report and "320x180 -> 80x45" in report
    with pytest.raises(ValueError, match="mask"):
        node("RRDPOTrimResizeClip").trim(frames, 0, 0, 80, mask=torch.zeros(3, 90, 160))
    with pytest.raises(ValueError, match="start_frame"):
        node("RRDPOTrimResizeClip").trim(frames, 10, 0, 80)


def test_trim_resize_node_contract(comfy_stubs):
    pack = load_pack()
    cls = pack.NODE_CLASS_MAPPINGS["RRDPOTrimResizeClip"]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["RRDPOTrimResizeClip"] == "Trim & Resize Clip"
    assert cls.CATEGORY == "Region-Reg-DPO/video"
    spec = cls.INPUT_TYPES()
    assert {k: v[1]["default"] for k, v in spec["required"].items() if k != "images"} == \
        {"start_frame": 0, "max_frames": 150, "max_side": 960}
    assert cls.RETURN_TYPES == ("IMAGE", "MASK", "STRING") and cls.RETURN_NAMES == ("images", "mask", "report")


def test_trim_resize_in_chunks_matches_one_resize(comfy_stubs):
    import torch.nn.functional as F

    frames = _clip(t=19, h=90, w=160)  # more frames than one resize chunk, not a multiple of it
    images, _, _ = node("RRDPOTrimResizeClip").trim(frames, 0, 0, 64)
    whole = F.interpolate(frames.movedim(-1, 1), size=(36, 64), mode="bilinear", align_corners=False,
                          antialias=True).clamp(0, 1).movedim(1, -1)
    assert images.shape == (19, 36, 64, 3)
    torch.testing.assert_close(images, whole, rtol=0, atol=1e-6)
