import pytest
import torch

from pack import node


def _mask(t=3, h=48, w=64):
    m = torch.zeros(t, h, w)
    m[:, 10:30, 20:40] = 1
    return m


def test_zone_masks_node_layouts(comfy_stubs):
    hole, band, ctx, overlay, _ = node("RRDPOZoneMasks").split(_mask(), band_px=5)
    assert hole.shape == band.shape == ctx.shape == (3, 48, 64)
    assert torch.equal(hole + band + ctx, torch.ones(3, 48, 64))
    assert overlay.shape == (3, 48, 64, 3) and overlay.dtype == torch.float32
    assert 0 <= overlay.min() and overlay.max() <= 1
    frames = torch.rand(3, 48, 64, 3)
    _, _, _, ov2, _ = node("RRDPOZoneMasks").split(_mask(), band_px=5, images=frames)
    # context pixels of the overlay are the frames themselves
    assert torch.equal(ov2[ctx.bool()], frames[ctx.bool()])


def test_zone_masks_node_rejects_frame_mismatch(comfy_stubs):
    with pytest.raises(ValueError, match="images"):
        node("RRDPOZoneMasks").split(_mask(3), band_px=5, images=torch.rand(2, 48, 64, 3))


def test_prepare_mask_node_resizes_and_dilates(comfy_stubs):
    out, _ = node("RRDPOPrepareVideoMask").prepare(_mask(2, 24, 32), dilation_iter=2, erode=True,
                                                   images=torch.rand(2, 48, 64, 3))
    assert out.shape == (2, 48, 64)
    assert out.sum() > 0 and set(torch.unique(out).tolist()) == {0.0, 1.0}
