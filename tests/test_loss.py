import math

import pytest
import torch
import torch.nn.functional as F

from rrdpo_core.loss import region_reg_dpo_loss, zone_errors
from rrdpo_core.zones import decompose_zones

B, C, T, H, W = 3, 4, 2, 16, 16


def _batch(seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(B, C, T, H, W, generator=g)
    ref_w = target + spread * torch.randn(B, C, T, H, W, generator=g)
    ref_l = target + spread * torch.randn(B, C, T, H, W, generator=g)
    pred_w = ref_w + 0.05 * torch.randn(B, C, T, H, W, generator=g)
    pred_l = ref_l + 0.05 * torch.randn(B, C, T, H, W, generator=g)
    # a different hole per sample, shared by channels (size-1 channel dim broadcasts)
    m = torch.zeros(B, 1, T, H * 8, W * 8)
    m[0, :, :, 30:70, 30:60] = 1
    m[1, :, :, 0:20, :] = 1
    m[2, :, 1, 64:, 64:] = 1
    zones = decompose_zones(m, band_px=8, latent=True)
    return pred_w, pred_l, ref_w, ref_l, target, target.clone(), zones


def _mse(x, y):
    return (x - y).pow(2).flatten(1).mean(1)


def _reg_dpo_reference(pred_w, pred_l, ref_w, ref_l, tw, tl, beta, rho):
    """Independent formula: Reg-DPO with one global MSE (diffusers Diffusion-DPO + rho * SFT)."""
    model_diff = _mse(pred_w, tw) - _mse(pred_l, tl)
    ref_diff = _mse(ref_w, tw) - _mse(ref_l, tl)
    logits = ref_diff - model_diff  # diffusers: loss = -logsigmoid(beta * logits), no 0.5
    return (-F.logsigmoid(beta * logits) + rho * _mse(pred_w, tw)).mean()


def test_zone_errors_sum_to_mse():
    pw, _, _, _, tw, _, zones = _batch()
    e = zone_errors(tw, pw, list(zones))
    assert e.shape == (B, 3)
    torch.testing.assert_close(e.sum(1), _mse(pw, tw), rtol=1e-6, atol=0)


def test_uniform_weights_give_reg_dpo():
    args = _batch()
    for rho in (0.0, 7.0):
        out = region_reg_dpo_loss(*args, alpha=(1, 1, 1), rho=(rho, rho, rho), beta=500.0)
        ref = _reg_dpo_reference(*args[:6], beta=500.0, rho=rho)
        torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)


def test_one_zone_is_reg_dpo_and_diffusion_dpo():
    pw, pl, rw, rl, tw, tl, _ = _batch(seed=1)
    one = [torch.ones(1, 1, 1, 1, 1)]
    out = region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, one, alpha=(1.0,), rho=(3.0,), beta=1000.0)
    torch.testing.assert_close(out.loss, _reg_dpo_reference(pw, pl, rw, rl, tw, tl, 1000.0, 3.0), rtol=1e-5, atol=1e-6)
    dpo = region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, one, alpha=(1.0,), rho=(0.0,), beta=1000.0)
    diffusion_dpo = _reg_dpo_reference(pw, pl, rw, rl, tw, tl, 1000.0, 0.0)
    torch.testing.assert_close(dpo.loss, diffusion_dpo, rtol=1e-5, atol=1e-6)
    assert dpo.sft == 0
    # 3 uniform zones and 1 zone agree to float rounding
    z3 = region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, decompose_zones(torch.zeros(B, 1, 1, H * 8, W * 8), latent=True),
                             alpha=(1, 1, 1), rho=(0, 0, 0), beta=1000.0)
    torch.testing.assert_close(z3.loss, dpo.loss, rtol=1e-5, atol=1e-6)


def test_alpha_zero_is_region_weighted_sft():
    pw, pl, rw, rl, tw, tl, zones = _batch(seed=2)
    rho = (10.0, 20.0, 0.5)
    out = region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, zones, alpha=(0, 0, 0), rho=rho)
    masks = list(zones)
    manual = sum(r * ((pw - tw).pow(2) * m).flatten(1).sum(1) / pw[0].numel() for r, m in zip(rho, masks))
    assert out.dpo.item() == pytest.approx(math.log(2), abs=1e-7)  # s == 0 exactly
    torch.testing.assert_close(out.sft, manual.mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.loss - out.dpo, manual.mean(), rtol=1e-6, atol=1e-6)
    # and its gradient is exactly the SFT gradient (the constant ln 2 adds nothing)
    pw1 = pw.clone().requires_grad_(True)
    region_reg_dpo_loss(pw1, pl, rw, rl, tw, tl, zones, alpha=(0, 0, 0), rho=rho).loss.backward()
    pw2 = pw.clone().requires_grad_(True)
    sum(r * ((pw2 - tw).pow(2) * m).flatten(1).sum(1) / pw[0].numel() for r, m in zip(rho, masks)).mean().backward()
    torch.testing.assert_close(pw1.grad, pw2.grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("rho_mode", ["constant", "dgr"])
def test_gradient_matches_closed_form(rho_mode):
    pw, pl, rw, rl, tw, tl, zones = _batch(seed=3)
    alpha, rho, beta = (1.0, 1.5, 0.05), (100.0, 200.0, 5.0), 1000.0
    pw = pw.double().requires_grad_(True)
    pl = pl.double().requires_grad_(True)
    out = region_reg_dpo_loss(pw, pl, rw.double(), rl.double(), tw.double(), tl.double(), zones,
                              alpha=alpha, rho=rho, beta=beta, rho_mode=rho_mode)
    out.loss.backward()
    n = pw[0].numel()
    dgr = out.dgr.double().view(B, 1, 1, 1, 1)
    gw = torch.zeros_like(pw)
    gl = torch.zeros_like(pl)
    for a, r, m in zip(alpha, rho, zones):
        anchor = r * dgr if rho_mode == "dgr" else r
        # seed §4.7: winner coefficient alpha_r * DGR + rho_r, loser alpha_r * DGR
        gw += (a * dgr + anchor) * (-2.0 * m * (tw.double() - pw.detach())) / n
        gl += -(a * dgr) * (-2.0 * m * (tl.double() - pl.detach())) / n
    gw /= B
    gl /= B
    torch.testing.assert_close(pw.grad, gw, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(pl.grad, gl, rtol=1e-8, atol=1e-14)


def _with_s(s_values, beta=1000.0, alpha=(1.0,), rho=(100.0,), rho_mode="constant"):
    """A batch whose s_region equals the given values exactly (one zone, ref = target)."""
    n = len(s_values)
    target = torch.zeros(n, 1, dtype=torch.float64)
    pred_w = torch.sqrt(torch.tensor(s_values, dtype=torch.float64).clamp(min=0)).view(n, 1)
    pred_l = torch.sqrt((-torch.tensor(s_values, dtype=torch.float64)).clamp(min=0)).view(n, 1)
    return region_reg_dpo_loss(pred_w, pred_l, target, target, target, target, [torch.ones(1, 1)],
                               alpha=alpha, rho=rho, beta=beta, rho_mode=rho_mode)


def test_seed_dgr_table():
    out = _with_s([0.0, -0.001, -0.005, -0.01, -0.02])
    torch.testing.assert_close(out.s, torch.tensor([0.0, -0.001, -0.005, -0.01, -0.02], dtype=torch.float64))
    dgr = out.dgr.tolist()
    assert dgr[0] == pytest.approx(500.0, rel=1e-12)
    assert dgr[1] == pytest.approx(269, abs=0.5)
    assert dgr[2] == pytest.approx(6.69, abs=0.005)
    assert dgr[3] == pytest.approx(0.045, abs=0.0005)
    assert dgr[4] < 1e-5


def test_seed_handover_table():
    # alpha = 1, rho = 100, beta' = 1000: DPO share of the winner's coefficient
    out = _with_s([0.0, -0.005, -0.01])
    share = [float(_with_s([v]).dpo_share[0]) for v in (0.0, -0.005, -0.01)]
    assert share[0] == pytest.approx(500 / 600)  # "83 %"
    assert share[1] == pytest.approx(6.69 / 106.69, abs=1e-4)
    assert share[2] < 0.001  # SFT anchors ~100 %
    assert out.implicit_acc.item() == pytest.approx((0.5 + 1 + 1) / 3)


@pytest.mark.parametrize("rho_mode,vanishes", [("constant", False), ("dgr", True)])
def test_winner_gradient_as_s_goes_to_minus_infinity(rho_mode, vanishes):
    pw, pl, rw, rl, tw, tl, zones = _batch(seed=4)
    alpha, rho = (1.0, 1.5, 0.05), (100.0, 200.0, 5.0)
    # make the loser's error huge so s -> -inf and DGR -> 0
    pl = tl + 50.0
    pw = pw.clone().requires_grad_(True)
    out = region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, zones, alpha=alpha, rho=rho, rho_mode=rho_mode)
    assert (out.s < -1).all() and (out.dgr < 1e-30).all()
    out.loss.backward()
    n = pw[0].numel()
    for r, m in zip(rho, zones):
        g_zone = (pw.grad * m).abs().sum()
        sft_only = (r * 2.0 * (m * (tw - pw.detach())).abs() / n / B).sum()
        if vanishes:
            assert g_zone < 1e-20 * sft_only + 1e-30
        else:
            # the rho_r term alone survives in each zone
            torch.testing.assert_close(g_zone, sft_only, rtol=1e-5, atol=0)
            if m.sum() > 0:
                assert g_zone > 0


def test_step_zero_values():
    pw, pl, rw, rl, tw, tl, zones = _batch(seed=5)
    out = region_reg_dpo_loss(rw, rl, rw, rl, tw, tl, zones)  # model == reference
    assert torch.equal(out.s, torch.zeros(B))
    assert out.dpo.item() == pytest.approx(math.log(2))
    assert torch.equal(out.dgr, torch.full((B,), 500.0))
    assert out.implicit_acc.item() == 0.5


def test_empty_zones_are_finite():
    pw, pl, rw, rl, tw, tl, _ = _batch(seed=6)
    zones = decompose_zones(torch.zeros(B, 1, T, H * 8, W * 8), latent=True)  # no hole, no boundary
    out = region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, zones)
    for v in out.scalars().values():
        assert math.isfinite(v)
    assert out.win_err_model[0] == 0 and out.win_err_model[1] == 0


def test_loser_dominant_ratio_counts_the_cheat_path():
    target = torch.zeros(4, 1)
    ref = target
    # samples 0,1: winner worse but loser much worse (cheat path); 2: healthy; 3: wrong ranking
    pw = torch.sqrt(torch.tensor([[0.001], [0.002], [0.0], [0.01]]))
    pl = torch.sqrt(torch.tensor([[0.01], [0.02], [0.001], [0.0]]))
    out = region_reg_dpo_loss(pw, pl, ref, ref, target, target, [torch.ones(1, 1)], alpha=(1.0,), rho=(0.0,))
    assert int(out.num_correct) == 3
    assert out.loser_dominant_ratio.item() == pytest.approx(3 / 3)
    pw2 = torch.sqrt(torch.tensor([[0.0], [0.0], [0.0], [0.01]]))
    pl2 = torch.sqrt(torch.tensor([[0.0001], [0.02], [0.001], [0.0]]))
    ref2 = torch.sqrt(torch.full((4, 1), 0.005))
    out2 = region_reg_dpo_loss(pw2, pl2, ref2, ref2, target, target, [torch.ones(1, 1)], alpha=(1.0,), rho=(0.0,))
    # every winner improved by 0.005; sample 0: lose_gap -0.0049, 2: -0.004 -> correct, not dominant;
    # 1: lose_gap 0.015 > 0.005 -> dominant; 3: wrongly ranked, not counted
    assert int(out2.num_correct) == 3
    assert out2.loser_dominant_ratio.item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_reduce_in_float32(dtype):
    args = _batch(seed=7)
    full = region_reg_dpo_loss(*[a.to(dtype).float() for a in args[:6]], args[6])
    half = region_reg_dpo_loss(*[a.to(dtype) for a in args[:6]], args[6])
    assert half.loss.dtype == torch.float32
    torch.testing.assert_close(half.loss, full.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(half.dgr, full.dgr, rtol=1e-4, atol=1e-4)


def test_bad_inputs_name_the_argument():
    pw, pl, rw, rl, tw, tl, zones = _batch(seed=8)
    with pytest.raises(ValueError, match="alpha"):
        region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, zones, alpha=(1.0, 1.0))
    with pytest.raises(ValueError, match="rho"):
        region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, zones, rho=(1.0,))
    with pytest.raises(ValueError, match="zones"):
        region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, [torch.ones(B, 1, T, H + 1, W)])
    with pytest.raises(ValueError, match="zones"):
        region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, [torch.ones(H, W)])
    bad = pl.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="pred_lose"):
        region_reg_dpo_loss(pw, bad, rw, rl, tw, tl, zones)
    with pytest.raises(ValueError, match="ref_win"):
        region_reg_dpo_loss(pw, pl, rw[:1], rl, tw, tl, zones)
    with pytest.raises(ValueError, match="beta"):
        region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, zones, beta=0)
    with pytest.raises(ValueError, match="rho_mode"):
        region_reg_dpo_loss(pw, pl, rw, rl, tw, tl, zones, rho_mode="linear")
    with pytest.raises(ValueError, match="band_px"):
        decompose_zones(torch.zeros(1, 8, 8), band_px=-3)
