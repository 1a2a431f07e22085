"""ProPainter building blocks: checkpoint layouts, deformable conv, RAFT lookup, sparse attention,
image propagation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rrdpo_core.prior.propainter.deform_conv import deform_conv2d, deform_conv2d_torch
from rrdpo_core.prior.propainter.flow_completion import RecurrentFlowCompletion
from rrdpo_core.prior.propainter.inference import dilate_masks, processing_size, reference_indices
from rrdpo_core.prior.propainter.model import ProPainterGenerator
from rrdpo_core.prior.propainter.raft import RAFT, CorrelationPyramid
from rrdpo_core.prior.propainter.transformer import SparseWindowAttention

DATA = Path(__file__).parent / "data"
NETWORKS = {"raft": RAFT, "flow_completion": RecurrentFlowCompletion, "generator": ProPainterGenerator}


# ------------------------------------------------------------------------------------------
# Key-exact layouts of the three official checkpoints


@pytest.mark.parametrize("name", list(NETWORKS))
def test_state_dict_matches_official_checkpoint_layout(name):
    manifest = json.loads((DATA / f"propainter_{name}_keys.json").read_text())
    prefix = manifest["prefix"]
    with torch.device("meta"):
        net = NETWORKS[name]()
    ours = {prefix + k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in net.state_dict().items()}
    official = {k: (v["shape"], v["dtype"]) for k, v in manifest["tensors"].items()}
    assert sorted(set(official) - set(ours)) == [], "keys the checkpoint has and our module lacks"
    assert sorted(set(ours) - set(official)) == [], "keys our module has and the checkpoint lacks"
    assert [k for k in official if ours[k] != official[k]] == [], "shape / dtype mismatches"


def test_rolled_window_indices_match_checkpoint_buffer():
    manifest = json.loads((DATA / "propainter_generator_keys.json").read_text())
    assert len(manifest["int_buffers"]) == 8  # one per transformer block
    attn = SparseWindowAttention(dim=8, n_head=2, window_size=(5, 9), pool_size=(4, 4))
    for values in manifest["int_buffers"].values():
        assert attn.valid_ind_rolled.tolist() == values


# ------------------------------------------------------------------------------------------
# Deformable convolution against a direct transcription of the DCNv2 definition


def _bilinear_zero(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Bilinear sample of img (C, H, W) at (y, x) with zeros outside (per-corner)."""
    _, h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return img.new_zeros(img.shape[0])
    y0, x0 = math.floor(y), math.floor(x)
    out = img.new_zeros(img.shape[0])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out = out + wy * wx * img[:, yy, xx]
    return out


def _naive_deform_conv(x, offset, weight, bias, stride, padding, dilation, mask):
    b, c, h, w = x.shape
    oc, _, kh, kw = weight.shape
    groups = offset.shape[1] // (2 * kh * kw)
    cg = c // groups
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = torch.zeros(b, oc, ho, wo, dtype=torch.float64)
    for n in range(b):
        for oy in range(ho):
            for ox in range(wo):
                col = torch.zeros(c, kh, kw, dtype=torch.float64)
                for g in range(groups):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = offset[n, 2 * (g * kh * kw + k), oy, ox].item()
                            dx = offset[n, 2 * (g * kh * kw + k) + 1, oy, ox].item()
                            py = oy * stride - padding + i * dilation + dy
                            px = ox * stride - padding + j * dilation + dx
                            v = _bilinear_zero(x[n, g * cg:(g + 1) * cg].double(), py, px)
                            col[g * cg:(g + 1) * cg, i, j] = v * mask[n, g * kh * kw + k, oy, ox].item()
                out[n, :, oy, ox] = (weight.double() * col).flatten(1).sum(1) + bias.double()
    return out


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 2, 2)])
def test_deform_conv_matches_definition(stride, padding, dilation):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 7, generator=g)
    weight = torch.randn(3, 4, 3, 3, generator=g)
    bias = torch.randn(3, generator=g)
    ho = (6 + 2 * padding - dilation * 2 - 1) // stride + 1
    wo = (7 + 2 * padding - dilation * 2 - 1) // stride + 1
    # Two offset groups; shifts up to 4 px push some taps off the image.
    offset = torch.randn(2, 2 * 2 * 9, ho, wo, generator=g) * 2.0
    mask = torch.rand(2, 2 * 9, ho, wo, generator=g)
    ours = deform_conv2d_torch(x, offset, weight, bias, stride, padding, dilation, mask)
    ref = _naive_deform_conv(x, offset, weight, bias, stride, padding, dilation, mask)
    torch.testing.assert_close(ours.double(), ref, atol=1e-4, rtol=1e-4)
    auto = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)  # torchvision or fallback
    torch.testing.assert_close(auto.double(), ref, atol=1e-4, rtol=1e-4)


def test_deform_conv_without_offsets_is_a_convolution():
    x = torch.randn(1, 32, 9, 11)
    weight, bias = torch.randn(8, 32, 3, 3), torch.randn(8)
    offset = torch.zeros(1, 2 * 16 * 9, 9, 11)
    mask = torch.ones(1, 16 * 9, 9, 11)
    out = deform_conv2d_torch(x, offset, weight, bias, 1, 1, 1, mask)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# RAFT


def test_raft_correlation_window_is_x_major():
    """The trained motion encoder expects the (2r+1)^2 lookup window with x on the slow axis."""
    g = torch.Generator().manual_seed(0)
    fmap1 = F.normalize(torch.randn(1, 64, 8, 8, generator=g), dim=1)
    fmap2 = torch.roll(fmap1, shifts=1, dims=3)  # content moved one pixel to the right
    coords = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")[::-1])[None]
    corr = CorrelationPyramid(fmap1, fmap2)(coords)  # (1, 4 * 81, 8, 8)
    peak = corr[0, :81, 2:6, 2:6].argmax(0)  # level 0, interior pixels
    r = 4
    assert (peak == (r + 1) * (2 * r + 1) + r).all()  # x + 1, y + 0


def test_raft_bidirectional_matches_pairwise_calls():
    torch.manual_seed(0)
    raft = RAFT().eval()
    frames = torch.rand(3, 3, 64, 72) * 2 - 1  # RAFT's 4-level pyramid needs >= 64 px
    with torch.no_grad():
        fwd, bwd = raft.bidirectional(frames, iters=3)
        ref_fwd = raft(frames[:-1], frames[1:], iters=3)
        ref_bwd = raft(frames[1:], frames[:-1], iters=3)
    assert fwd.shape == (2, 2, 64, 72)
    torch.testing.assert_close(fwd, ref_fwd, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bwd, ref_bwd, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# Sparse transformer and image propagation


def test_sparse_attention_only_masked_windows_look_across_frames():
    torch.manual_seed(0)
    attn = SparseWindowAttention(dim=8, n_head=2, window_size=(2, 2), pool_size=(2, 2)).eval()
    x = torch.randn(1, 2, 4, 4, 8)
    mask = torch.zeros(1, 2, 4, 4, 1)
    mask[:, :, :2, :2] = 1  # only the top-left window is masked
    other = x.clone()
    other[:, 1] = torch.randn(4, 4, 8)  # change frame 1 only
    with torch.no_grad():
        a, b = attn(x, mask), attn(other, mask)
    # Frame 0's unmasked windows attend within frame 0 only; its masked window sees frame 1 too.
    assert torch.allclose(a[0, 0, 2:, :], b[0, 0, 2:, :]) and torch.allclose(a[0, 0, :2, 2:], b[0, 0, :2, 2:])
    assert not torch.allclose(a[0, 0, :2, :2], b[0, 0, :2, :2])
    # An unmasked window only attends to its own tokens, even within its frame.
    moved = x.clone()
    moved[:, 0, 2:, :] = torch.randn(2, 4, 8)
    with torch.no_grad():
        c = attn(moved, mask)
    assert torch.allclose(a[0, 0, :2, 2:], c[0, 0, :2, 2:])


def test_image_propagation_pulls_hidden_pixels_along_the_flow():
    """Panning scene with exact flows: every hole pixel seen in some frame gets its true value."""
    torch.manual_seed(0)
    gen = ProPainterGenerator(hidden=32, depths=2, num_heads=2, ffn_hidden=98).eval()
    t, h, w, speed = 5, 16, 24, 2
    base = torch.rand(3, h, w + speed * t) * 2 - 1
    # Frame i shows base columns [speed*i, speed*i + w): content moves left by `speed` per frame.
    frames = torch.stack([base[:, :, speed * i: speed * i + w] for i in range(t)])[None]
    masks = torch.zeros(1, t, 1, h, w)
    for i in range(t):
        masks[0, i, 0, 4:12, 6 + i: 14 + i] = 1
    fwd = torch.zeros(1, t - 1, 2, h, w)
    fwd[:, :, 0] = -speed  # frame i -> i+1
    bwd = -fwd             # frame i+1 -> i
    with torch.no_grad():
        out, unknown = gen.img_propagation(frames * (1 - masks), fwd, bwd, masks, "nearest")

    seen = torch.zeros(t, h, w, dtype=torch.bool)  # brute force: visible in any frame?
    for i in range(t):
        for x in range(w):
            for j in range(t):
                xj = x - speed * (j - i)
                if 0 <= xj < w:
                    seen[i, :, x] |= masks[0, j, 0, :, xj] == 0
    hole = masks[0, :, 0] > 0
    assert torch.equal(unknown[0, :, 0] > 0, hole & ~seen)
    filled = hole & seen
    assert filled.sum() > 50
    torch.testing.assert_close(out[0].permute(0, 2, 3, 1)[filled], frames[0].permute(0, 2, 3, 1)[filled])


# ------------------------------------------------------------------------------------------
# Small helpers of the inference procedure


def test_dilation_is_scipy_cross_iterated():
    m = torch.zeros(1, 1, 11, 11)
    m[0, 0, 5, 5] = 1
    out = dilate_masks(m, 3)[0, 0]
    yy, xx = torch.meshgrid(torch.arange(11), torch.arange(11), indexing="ij")
    assert torch.equal(out.bool(), (yy - 5).abs() + (xx - 5).abs() <= 3)  # diamond, not square


def test_processing_size_floors_to_multiples_of_8_and_caps_long_side():
    assert processing_size(270, 486) == (264, 480)
    assert processing_size(1080, 1920, 0.6, 960) == (320, 576)  # DiffuEraser: 0.6 * 960 / 1920
    assert processing_size(480, 640, 1.0, 960) == (480, 640)


def test_reference_frames():
    assert reference_indices(0, [0, 1, 2, 3, 4, 5], 30, 10) == [10, 20]
    # On long clips only frames near the window are used.
    assert reference_indices(50, list(range(45, 56)), 200, 10, ref_num=4) == [30, 40, 60]
