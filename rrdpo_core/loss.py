"""The Region-Reg-DPO loss and its diagnostics (spec/METHOD.md §2-§4).

For a batch of preference pairs (winner w, loser l) with K disjoint zones ``M_r``::

    e_r(x, y)  = sum(M_r * (x - y)^2) / N                    N = elements of one sample
    s          = sum_r alpha_r [ (e_r(eps_w, pred_w) - e_r(eps_w, ref_w))
                               - (e_r(eps_l, pred_l) - e_r(eps_l, ref_l)) ]
    L_dpo      = -log sigmoid(-beta * s)
    L_sft      = sum_r rho_r * e_r(eps_w, pred_w)
    L          = mean over samples of (L_dpo + L_sft)

Dividing every zone by the *whole* sample size makes ``sum_r e_r`` the plain per-sample MSE, so
with one zone (or uniform weights) this is exactly Reg-DPO, with ``rho = 0`` exactly
Diffusion-DPO (diffusers convention: no 0.5 factor), and with ``alpha = 0`` region-weighted SFT.

``DGR = beta * sigmoid(beta * s)`` is the DPO gradient coefficient: ``dL_dpo/dtheta = DGR *
ds/dtheta``. The SFT weights ``rho_r`` are constants by default; ``rho_mode="dgr"`` makes the
anchor ``rho_r * DGR`` (detached), the dynamic weighting of the Reg-DPO paper, which dies with
DGR (seed §4.8) and is offered for comparison only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .validate import check_zone_partition
from .zones import Zones

__all__ = [
    "RegionDPOOutput",
    "region_reg_dpo_loss",
    "zone_errors",
    "DEFAULT_ALPHA",
    "DEFAULT_RHO",
    "DEFAULT_BETA",
]

DEFAULT_ALPHA = (1.0, 1.5, 0.05)  # hole, boundary, context (seed §6.4)
DEFAULT_RHO = (100.0, 200.0, 5.0)
DEFAULT_BETA = 1000.0
RHO_MODES = ("constant", "dgr")


@dataclass
class RegionDPOOutput:
    """Loss terms (differentiable scalars) and detached diagnostics of one batch.

    Per-sample tensors have shape ``(B,)``; per-zone tensors ``(K,)`` are averaged over samples;
    ``*_per_sample`` per-zone tensors have shape ``(B, K)``.
    """

    loss: torch.Tensor
    dpo: torch.Tensor
    sft: torch.Tensor
    # per sample, detached
    s: torch.Tensor
    dgr: torch.Tensor
    win_gap: torch.Tensor
    lose_gap: torch.Tensor
    # batch-level, detached
    implicit_acc: torch.Tensor
    loser_dominant_ratio: torch.Tensor
    num_correct: torch.Tensor
    # per zone, detached
    win_err_model: torch.Tensor
    win_err_ref: torch.Tensor
    lose_err_model: torch.Tensor
    lose_err_ref: torch.Tensor
    dpo_share: torch.Tensor
    win_err_model_per_sample: torch.Tensor
    win_err_ref_per_sample: torch.Tensor
    zone_names: tuple[str, ...]

    def scalars(self) -> dict[str, float]:
        """Flat ``name -> float`` dict of every diagnostic, for JSONL logs and plots."""
        out: dict[str, float] = {
            "loss": float(self.loss.detach()),
            "dpo": float(self.dpo.detach()),
            "sft": float(self.sft.detach()),
            "s": float(self.s.mean()),
            "dgr": float(self.dgr.mean()),
            "win_gap": float(self.win_gap.mean()),
            "lose_gap": float(self.lose_gap.mean()),
            "implicit_acc": float(self.implicit_acc),
            "loser_dominant_ratio": float(self.loser_dominant_ratio),
        }
        for k, name in enumerate(self.zone_names):
            out[f"e_{name}_model"] = float(self.win_err_model[k])
            out[f"e_{name}_ref"] = float(self.win_err_ref[k])
            out[f"e_{name}_lose_model"] = float(self.lose_err_model[k])
            out[f"e_{name}_lose_ref"] = float(self.lose_err_ref[k])
            out[f"dpo_share_{name}"] = float(self.dpo_share[k])
        return out


def _zone_masks(zones: Zones | Sequence[torch.Tensor], shape: torch.Size) -> tuple[list[torch.Tensor], tuple[str, ...]]:
    if isinstance(zones, Zones):
        masks, names = list(zones.as_tuple()), ("hole", "boundary", "context")
    elif isinstance(zones, torch.Tensor):
        raise ValueError(
            "zones: pass a Zones object or a sequence of K mask tensors, not one tensor "
            "(wrap a single all-ones mask as [mask] for one zone)"
        )
    else:
        masks = list(zones)
        names = ("hole", "boundary", "context") if len(masks) == 3 else tuple(f"zone{k}" for k in range(len(masks)))
    if not masks:
        raise ValueError("zones: at least one zone mask is needed")
    for k, m in enumerate(masks):
        if not isinstance(m, torch.Tensor):
            raise ValueError(f"zones: mask {k} is a {type(m).__name__}, expected a torch.Tensor")
        ok = m.ndim == len(shape) and m.shape[0] in (1, shape[0])
        if ok:
            try:
                ok = torch.broadcast_shapes(m.shape, shape) == shape
            except RuntimeError:
                ok = False
        if not ok:
            raise ValueError(
                f"zones: mask {k} has shape {tuple(m.shape)}, which does not broadcast to the prediction "
                f"shape {tuple(shape)} (batch first, same number of dimensions; use size-1 dims to broadcast)"
            )
    return masks, names


def zone_errors(target: torch.Tensor, pred: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample, per-zone squared error normalised by the whole sample size: ``(B, K)``.

    Half-precision inputs are reduced in float32 (float64 stays float64).
    """
    dtype = _reduce_dtype(pred.dtype)
    sq = (target.to(dtype) - pred.to(dtype)).pow(2)
    n = sq[0].numel()
    return torch.stack([(sq * m.to(dtype)).flatten(1).sum(1) / n for m in masks], dim=1)


def _reduce_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _weights(value: Sequence[float], k: int, name: str) -> torch.Tensor:
    try:
        w = [float(v) for v in value]
    except TypeError:
        raise ValueError(f"{name}: expected a sequence of {k} numbers (one per zone), got {value!r}") from None
    if len(w) != k:
        raise ValueError(f"{name}: has {len(w)} entries but there are {k} zones; give one weight per zone")
    if any(not torch.isfinite(torch.tensor(v)) or v < 0 for v in w):
        raise ValueError(f"{name}: weights must be finite and >= 0, got {w}")
    return torch.tensor(w, dtype=torch.float64)


def region_reg_dpo_loss(
    pred_win: torch.Tensor,
    pred_lose: torch.Tensor,
    ref_win: torch.Tensor,
    ref_lose: torch.Tensor,
    target_win: torch.Tensor,
    target_lose: torch.Tensor,
    zones: Zones | Sequence[torch.Tensor],
    alpha: Sequence[float] = DEFAULT_ALPHA,
    rho: Sequence[float] = DEFAULT_RHO,
    beta: float = DEFAULT_BETA,
    rho_mode: str = "constant",
) -> RegionDPOOutput:
    """Region-Reg-DPO loss for a batch of preference pairs (see the module docstring).

    Args:
        pred_win, pred_lose: ε predictions of the trained model, shape ``(B, ...)``.
        ref_win, ref_lose: ε predictions of the frozen reference (gradients are not taken).
        target_win, target_lose: ε targets (with GT pairs both are the same noise draw).
        zones: a :class:`Zones` or a sequence of K masks broadcastable to the prediction shape
            (batch first, same number of dimensions) that partition it: values in [0, 1] summing to
            1 at every element (within ``rrdpo_core.validate.ZONE_TOLERANCE``, for soft zones).
            Overlapping zones or gaps raise :class:`rrdpo_core.errors.RrdpoInputError`.
        alpha: K DPO weights (inside the sigmoid).
        rho: K SFT anchor weights (outside the sigmoid).
        beta: the single multiplier of ``s`` (seed β' = β·T·ω folded in); > 0.
        rho_mode: ``"constant"`` (default) or ``"dgr"`` (anchor ``rho_r * DGR``, detached).
    """
    tensors = {
        "pred_win": pred_win,
        "pred_lose": pred_lose,
        "ref_win": ref_win,
        "ref_lose": ref_lose,
        "target_win": target_win,
        "target_lose": target_lose,
    }
    shape = pred_win.shape
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.shape != shape:
            raise ValueError(f"{name}: shape {tuple(t.shape)} differs from pred_win's {tuple(shape)}")
        if not torch.isfinite(t.detach()).all():
            raise ValueError(f"{name}: contains NaN or infinite values (check the learning rate / mixed precision)")
    if len(shape) < 2:
        raise ValueError(f"pred_win: needs a batch dimension and at least one more, got shape {tuple(shape)}")
    if rho_mode not in RHO_MODES:
        raise ValueError(f"rho_mode: must be one of {RHO_MODES}, got {rho_mode!r}")
    beta = float(beta)
    if not beta > 0 or beta == float("inf"):
        raise ValueError(f"beta: must be a finite positive number, got {beta}")

    masks, names = _zone_masks(zones, shape)
    if not isinstance(zones, Zones) or not zones.checked:
        # Zones from decompose_zones are a partition by construction; anything else is checked
        # (the loss is the plain MSE split by zone only when every element is in exactly one zone).
        check_zone_partition(masks)
    k = len(masks)
    device = pred_win.device
    dtype = _reduce_dtype(pred_win.dtype)
    a = _weights(alpha, k, "alpha").to(device, dtype)
    r = _weights(rho, k, "rho").to(device, dtype)

    with torch.no_grad():
        ew_ref = zone_errors(target_win, ref_win.detach(), masks)
        el_ref = zone_errors(target_lose, ref_lose.detach(), masks)
    ew = zone_errors(target_win, pred_win, masks)  # (B, K)
    el = zone_errors(target_lose, pred_lose, masks)

    win_gap = ((ew - ew_ref) * a).sum(1)  # (B,)
    lose_gap = ((el - el_ref) * a).sum(1)
    s = win_gap - lose_gap
    dpo = F.softplus(beta * s)  # = -log sigmoid(-beta * s), stable for large |beta * s|

    dgr = (beta * torch.sigmoid(beta * s)).detach()
    if rho_mode == "constant":
        sft = (ew * r).sum(1)
    else:
        sft = (ew * r).sum(1) * dgr
    loss = (dpo + sft).mean()

    with torch.no_grad():
        s_d = s.detach()
        implicit_acc = ((s_d < 0).float() + 0.5 * (s_d == 0).float()).mean()
        correct = s_d < 0
        num_correct = correct.sum()
        dominant = (lose_gap.detach() > win_gap.detach().abs()) & correct
        loser_dominant = dominant.sum() / num_correct.clamp(min=1)
        coef = a[None] * dgr[:, None]  # (B, K) DPO part of the winner's coefficient
        anchor = r[None] * (dgr[:, None] if rho_mode == "dgr" else 1.0)
        denom = coef + anchor
        share = torch.where(denom > 0, coef / denom.clamp(min=torch.finfo(denom.dtype).tiny), torch.zeros_like(denom))

    return RegionDPOOutput(
        loss=loss,
        dpo=dpo.mean(),
        sft=sft.mean(),
        s=s_d,
        dgr=dgr,
        win_gap=win_gap.detach(),
        lose_gap=lose_gap.detach(),
        implicit_acc=implicit_acc,
        loser_dominant_ratio=loser_dominant,
        num_correct=num_correct,
        win_err_model=ew.detach().mean(0),
        win_err_ref=ew_ref.mean(0),
        lose_err_model=el.detach().mean(0),
        lose_err_ref=el_ref.mean(0),
        dpo_share=share.mean(0),
        win_err_model_per_sample=ew.detach(),
        win_err_ref_per_sample=ew_ref,
        zone_names=names,
    )

