import numpy as np
import pytest
import torch

from rrdpo_core.masks import random_mask_sequence
from rrdpo_core.zones import Zones, decompose_zones, disk


def _check_partition(z: Zones, shape):
    for m in z:
        assert m.shape == shape
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0}, "zones must be binary"
    total = z.hole + z.boundary + z.context
    assert torch.equal(total, torch.ones_like(total)), "every pixel in exactly one zone"
    # pairwise disjoint
    assert not (z.hole * z.boundary).any()
    assert not (z.hole * z.context).any()
    assert not (z.boundary * z.context).any()


def _square_mask(t=3, h=64, w=80, y=20, x=30, s=16):
    m = torch.zeros(t, h, w)
    m[:, y : y + s, x : x + s] = 1
    return m


@pytest.mark.parametrize("latent", [False, True])
@pytest.mark.parametrize(
    "kind", ["empty", "full", "thin", "moving", "square"],
)
def test_partition_is_exact(kind, latent):
    t, h, w = 5, 64, 88
    if kind == "empty":
        m = torch.zeros(t, h, w)
    elif kind == "full":
        m = torch.ones(t, h, w)
    elif kind == "thin":
        m = torch.zeros(t, h, w)
        m[:, :, 40] = 1  # one pixel wide vertical line
        m[:, 10, :] = 1
    elif kind == "moving":
        m = random_mask_sequence(t, h, w, seed=3, static_prob=0.0)
    else:
        m = _square_mask(t, h, w)
    z = decompose_zones(m, band_px=8, latent=latent)
    shape = (t, h // 8, w // 8) if latent else (t, h, w)
    _check_partition(z, shape)
    if kind == "empty":
        assert z.hole.sum() == 0 and z.boundary.sum() == 0
    if kind == "full":
        assert z.hole.all() and z.boundary.sum() == 0


def test_boundary_is_a_disk_band_of_width_k():
    m = torch.zeros(1, 101, 101)
    m[0, 50, 50] = 1
    z = decompose_zones(m, band_px=6)
    # a single hole pixel dilated by a disk of radius 6 is exactly that disk
    expected = torch.from_numpy(disk(6)).float()
    grown = (z.hole + z.boundary)[0, 44:57, 44:57]
    assert torch.equal(grown, expected)
    assert (z.hole + z.boundary).sum() == expected.sum()
    # a digital disk: every pixel within distance k is covered, nothing beyond k + 1
    yy, xx = torch.meshgrid(torch.arange(101.0), torch.arange(101.0), indexing="ij")
    d = torch.sqrt((yy - 50) ** 2 + (xx - 50) ** 2)
    grown_full = (z.hole + z.boundary)[0]
    assert grown_full[d <= 6].all()
    assert not grown_full[d > 7].any()


def test_band_width_changes_boundary_size():
    m = _square_mask()
    small = decompose_zones(m, band_px=5).boundary.sum()
    large = decompose_zones(m, band_px=15).boundary.sum()
    assert large > small > 0


def test_latent_zones_built_at_latent_resolution():
    m = torch.zeros(1, 64, 64)
    m[0, 9, 9] = 1  # one pixel in latent cell (1, 1)
    z = decompose_zones(m, band_px=8, latent=True)
    assert z.hole.shape == (1, 8, 8)
    assert z.hole[0, 1, 1] == 1 and z.hole.sum() == 1, "a cell touching any hole pixel is hole"
    # k_lat = max(1, round(8 / 8)) = 1: the 4-neighbourhood (radius-1 disk) is boundary
    assert z.boundary.sum() == 4
    assert z.boundary[0, 0, 1] == 1 and z.boundary[0, 1, 0] == 1
    # a band of 20 px becomes round(20/8) = 2 latent cells
    z2 = decompose_zones(m, band_px=20, latent=True)
    assert z2.boundary.sum() > z.boundary.sum()


def test_latent_size_not_multiple_of_8_rounds_up():
    m = torch.zeros(2, 30, 43)
    m[:, -1, -1] = 1
    z = decompose_zones(m, latent=True)
    assert z.hole.shape == (2, 4, 6)
    assert z.hole[:, -1, -1].all()
    _check_partition(z, (2, 4, 6))


def test_leading_shape_dtype_and_device_kept():
    m = _square_mask(4, 32, 32).reshape(2, 1, 2, 32, 32).to(torch.float16)
    z = decompose_zones(m, band_px=3)
    assert z.hole.shape == m.shape and z.hole.dtype == torch.float16
    zb = decompose_zones(m.bool(), band_px=3)
    assert zb.hole.dtype == torch.float32
    assert torch.equal(zb.hole, z.hole.float())
    zn = decompose_zones(m.float().numpy(), band_px=3)
    assert torch.equal(zn.boundary, z.boundary.float())


def test_threshold_is_half():
    m = torch.full((1, 16, 16), 0.5)
    assert decompose_zones(m).hole.sum() == 0
    m[0, 3, 3] = 0.51
    assert decompose_zones(m).hole.sum() == 1


@pytest.mark.parametrize("band", [-1, 2.5, True])
def test_bad_band_is_rejected(band):
    with pytest.raises(ValueError, match="band_px"):
        decompose_zones(torch.zeros(1, 8, 8), band_px=band)


def test_bad_mask_is_rejected():
    with pytest.raises(ValueError, match="mask"):
        decompose_zones(torch.zeros(8))
    with pytest.raises(ValueError, match="mask"):
        decompose_zones(torch.full((1, 8, 8), float("nan")))


def test_band_zero_means_no_boundary():
    z = decompose_zones(_square_mask(), band_px=0, latent=True)
    assert z.boundary.sum() == 0
    assert np.isclose(float((z.hole + z.context).min()), 1.0)
