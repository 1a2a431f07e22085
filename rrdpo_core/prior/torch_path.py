"""The flow prior's tracking, fusion, colour matching and spatial fill in torch (kornia), for GPUs.

The same algorithm as the NumPy/OpenCV path (:mod:`.sources`, :mod:`.fusion`, :mod:`rrdpo_core.membrane`),
step for step: warping with ``kornia.geometry.transform.remap``, the ring around each hole with
``kornia.morphology.dilation``, resampling with ``torch.nn.functional``. The flow itself (OpenCV DIS and its
completion, :mod:`.motion`) is computed on the CPU and handed in. Results agree with the NumPy path
up to resampling details (OpenCV quantises bilinear weights to 1/32 pixel; torch's area
downscaling differs from OpenCV's on odd sizes in the membrane pyramid); ``tests/test_prior.py``
states the tolerance.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .fusion import _TIE_BREAK, OFFSET_SCALE, RING_OUTLIER, offset_box
from ..membrane import membrane_window
from .motion import (CONSISTENCY_ALPHA, CONSISTENCY_BETA, MOTION_MIN_AGREEMENT, MOTION_SIGMA_PX, MOTION_SIGMA_REL,
                     FlowField, exposure_curve, motion_check_stack)
from .objects import object_pixels, object_sources, telea_at, uncertain_pixels
from .preview import SOURCE_COPIED, SOURCE_FUSED, SOURCE_KNOWN, SOURCE_SPATIAL

__all__ = ["propagate_torch", "harmonic_fill_torch"]

_CROSS = torch.tensor([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]])


def _kornia():
    try:
        import kornia  # noqa: F401
        import kornia.filters
        import kornia.geometry.transform
        import kornia.morphology
    except ImportError as err:  # pragma: no cover - kornia is a requirement
        raise ImportError("the torch path of the flow prior needs kornia: pip install kornia") from err
    return kornia


# ------------------------------------------------------------------------------------------
# Membrane


def harmonic_fill_torch(values: torch.Tensor, unknown: torch.Tensor, smooth_iterations: int = 6) -> torch.Tensor:
    """:func:`rrdpo_core.membrane.harmonic_fill` in torch: ``values`` ``(C, H, W)``, ``unknown`` ``(H, W)`` bool."""
    if not bool(unknown.any()):
        return values.clone()
    if bool(unknown.all()):
        return torch.zeros_like(values)
    y0, y1, x0, x1 = membrane_window(unknown.cpu().numpy())
    hole = unknown[y0:y1, x0:x1]
    known = (~hole).to(values.dtype)
    crop = values[:, y0:y1, x0:x1]
    level_v = [(crop * known)[None]]
    level_w = [known[None, None]]
    while bool((level_w[-1] <= 0).any()) and min(level_w[-1].shape[-2:]) > 1:
        ph, pw = level_w[-1].shape[-2:]
        size = ((ph + 1) // 2, (pw + 1) // 2)
        level_v.append(F.interpolate(level_v[-1], size=size, mode="area"))
        level_w.append(F.interpolate(level_w[-1], size=size, mode="area"))
    wc = level_w[-1]
    if bool((wc > 0).any()):
        fallback = level_v[-1].sum(dim=(2, 3), keepdim=True) / wc.sum()
    else:
        fallback = level_v[0].sum(dim=(2, 3), keepdim=True) / known.sum()
    filled = torch.where(wc > 0, level_v[-1] / wc.clamp_min(1e-12), fallback)
    for lv, lw in zip(reversed(level_v[:-1]), reversed(level_w[:-1])):
        up = F.interpolate(filled, size=lw.shape[-2:], mode="bilinear", align_corners=False)
        wl = lw.clamp(0.0, 1.0)
        filled = wl * (lv / lw.clamp_min(1e-12)) + (1.0 - wl) * up
    kernel = _CROSS.to(values)[None, None].expand(values.shape[0], 1, 3, 3)
    for _ in range(int(smooth_iterations)):
        avg = F.conv2d(F.pad(filled, (1, 1, 1, 1), mode="replicate"), kernel, groups=values.shape[0])
        filled = torch.where(hole, avg, filled)
    out = values.clone()
    out[:, y0:y1, x0:x1] = torch.where(hole, filled[0], crop)
    return out


# ------------------------------------------------------------------------------------------
# Sampling


def _dense(field: FlowField, device: torch.device) -> torch.Tensor:
    """Full-resolution flow ``(2, H, W)`` (as ``FlowField.dense``: bilinear, half-pixel centres)."""
    h, w = field.full_hw
    low = torch.from_numpy(np.ascontiguousarray(field.flow)).to(device).permute(2, 0, 1)[None]
    if tuple(low.shape[-2:]) == (h, w):
        return low[0]
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
    return up * torch.tensor([field.sx, field.sy], device=device, dtype=up.dtype)[:, None, None]


def _bilinear_points(video: torch.Tensor, f: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sample ``video`` ``(T, C, H, W)`` at frames ``f`` and positions ``(x, y)`` (border clamped) -> ``(N, C)``."""
    _, _, h, w = video.shape
    x = x.clamp(0, w - 1)
    y = y.clamp(0, h - 1)
    x0 = x.floor().long().clamp(0, w - 1)
    y0 = y.floor().long().clamp(0, h - 1)
    x1 = (x0 + 1).clamp(max=w - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    wx = (x - x0)[:, None]
    wy = (y - y0)[:, None]
    a = video[f, :, y0, x0]
    b = video[f, :, y0, x1]
    c = video[f, :, y1, x0]
    d = video[f, :, y1, x1]
    return (a * (1 - wx) + b * wx) * (1 - wy) + (c * (1 - wx) + d * wx) * wy


# ------------------------------------------------------------------------------------------
# The steps


def _track(holes: torch.Tensor, fwd, bwd, targets, *, forward: bool, slots: int, gap: int,
           step: Callable[[], None]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`rrdpo_core.prior.sources.track_sources` in torch."""
    from kornia.geometry.transform import remap

    length, height, width = holes.shape
    device = holes.device
    gy, gx = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    frame = torch.full((slots, height, width), -1.0, device=device)
    x = torch.zeros((slots, height, width), device=device)
    y = torch.zeros((slots, height, width), device=device)
    result: list = [None] * length
    order = range(length) if forward else range(length - 1, -1, -1)
    for t in order:
        prev = t - 1 if forward else t + 1
        if 0 <= prev < length:
            step_field, back_field = (bwd[prev], fwd[prev]) if forward else (fwd[t], bwd[t])
            sf, bf = _dense(step_field, device), _dense(back_field, device)
            qx, qy = gx + sf[0], gy + sf[1]
            back = remap(bf[None], qx[None], qy[None], mode="bilinear", padding_mode="border", align_corners=True)[0]
            err = ((sf + back) ** 2).sum(0)
            bound = CONSISTENCY_ALPHA * ((sf ** 2).sum(0) + (back ** 2).sum(0)) + CONSISTENCY_BETA
            inside = (qx >= -0.5) & (qx <= width - 0.5) & (qy >= -0.5) & (qy <= height - 0.5)
            ok = inside & (err <= bound)
            rx = torch.round(qx).clamp(0, width - 1)
            ry = torch.round(qy).clamp(0, height - 1)
            flat = (ry.long() * width + rx.long()).reshape(-1)
            frame = frame.reshape(slots, -1)[:, flat].reshape(slots, height, width)
            x = x.reshape(slots, -1)[:, flat].reshape(slots, height, width) + (qx - rx)
            y = y.reshape(slots, -1)[:, flat].reshape(slots, height, width) + (qy - ry)
            frame = torch.where(ok, frame, torch.full_like(frame, -1.0))
        else:
            frame.fill_(-1.0)
        known = ~holes[t]
        shift = known & (frame[0] >= 0) & ((frame[1] < 0) | ((frame[0] - frame[1]).abs() >= gap))
        new = []
        for a, own in ((frame, torch.full_like(gx, float(t))), (x, gx), (y, gy)):
            below = torch.where(shift, a[:-1], a[1:])
            new.append(torch.cat([torch.where(known, own, a[0])[None], below], 0))
        frame, x, y = new
        ys, xs = targets[t]
        result[t] = (frame[:, ys, xs].long(), x[:, ys, xs], y[:, ys, xs])
        step()
    return result


def _agreement(stack: torch.Tensor, f: torch.Tensor, x: torch.Tensor, y: torch.Tensor, full_hw) -> torch.Tensor:
    """:func:`rrdpo_core.prior.motion.motion_agreement` in torch; ``stack`` ``(T, 4, h, w)``, ``f`` may be -1."""
    shape = f.shape
    _, _, h, w = stack.shape
    sx, sy = full_hw[1] / w, full_hw[0] / h
    v = _bilinear_points(stack, f.clamp_min(0).reshape(-1), (x.reshape(-1) + 0.5) / sx - 0.5,
                         (y.reshape(-1) + 0.5) / sy - 0.5)
    ex, ey, bx, by = v[:, 0] * sx, v[:, 1] * sy, v[:, 2] * sx, v[:, 3] * sy
    sigma = MOTION_SIGMA_PX + MOTION_SIGMA_REL * torch.sqrt(bx * bx + by * by)
    agree = torch.exp(-(ex * ex + ey * ey) / (2 * sigma * sigma))
    return torch.where(agree >= MOTION_MIN_AGREEMENT, agree, torch.zeros_like(agree)).reshape(shape)


def _fuse(colours: torch.Tensor, weights: torch.Tensor, tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rrdpo_core.prior.fusion.fuse_candidates` in torch."""
    dist = (colours[:, None] - colours[None, :]).abs().mean(-1)  # (S, S, N)
    valid = weights > 0
    support = (weights[:, None] * (dist <= tolerance)).sum(0)  # diagonal: each candidate supports itself
    score = (weights[:, None] * dist).sum(0)
    key = torch.where(valid, support - _TIE_BREAK * score, torch.full_like(score, float("-inf")))
    best = key.argmax(0)
    to_best = dist.gather(0, best[None, None, :].expand(1, dist.shape[1], -1))[0]
    inlier = (to_best <= tolerance) & valid
    count = inlier.sum(0)
    w = torch.where((count == 1) & ((weights > 0).sum(0) > 1), weights, weights * inlier)
    fused = (colours * w[..., None]).sum(0) / w.sum(0).clamp_min(1e-12)[:, None]
    return fused, (w > 0).sum(0)


def _ring_inliers(hole_np: np.ndarray, ring_ys, ring_xs, mismatch: torch.Tensor, ring_ok) -> torch.Tensor:
    """:func:`rrdpo_core.prior.fusion.ring_inliers` in torch (components labelled by OpenCV)."""
    region = hole_np.copy()
    ys_np, xs_np = ring_ys.cpu().numpy(), ring_xs.cpu().numpy()
    region[ys_np, xs_np] = True
    _, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    lab = torch.from_numpy(labels[ys_np, xs_np].astype(np.int64)).to(mismatch.device)
    keep = torch.zeros(len(ring_ys), dtype=torch.bool, device=mismatch.device)
    for k in torch.unique(lab[ring_ok]).tolist():
        sel = torch.nonzero((lab == k) & ring_ok, as_tuple=True)[0]
        median = torch.quantile(mismatch[sel], 0.5, dim=0)  # interpolated, as numpy's median
        keep[sel] = (mismatch[sel] - median).abs().mean(-1) <= RING_OUTLIER
    return keep


def _colour_offset(frame: torch.Tensor, hole_np: np.ndarray, ring_ys, ring_xs, ring_fused, ring_ok
                   ) -> torch.Tensor | None:
    """:func:`rrdpo_core.prior.fusion.colour_offset` in torch: ``frame`` ``(3, H, W)``, returns ``(3, H, W)``."""
    if not bool(ring_ok.any()):
        return None
    _, h, w = frame.shape
    device = frame.device
    mismatch = frame[:, ring_ys, ring_xs].T - ring_fused  # (N, 3)
    keep = ring_ok & _ring_inliers(hole_np, ring_ys, ring_xs, mismatch, ring_ok)
    if not bool(keep.any()):
        return None
    ys, xs = ring_ys[keep], ring_xs[keep]
    y0, y1, x0, x1 = offset_box(ring_ys.cpu().numpy(), ring_xs.cpu().numpy(), h, w)
    diff = torch.zeros((3, y1 - y0, x1 - x0), device=device)
    weight = torch.zeros((1, y1 - y0, x1 - x0), device=device)
    diff[:, ys - y0, xs - x0] = mismatch[keep].T
    weight[:, ys - y0, xs - x0] = 1.0
    small = (max(1, (y1 - y0) // OFFSET_SCALE), max(1, (x1 - x0) // OFFSET_SCALE))
    num = F.interpolate(diff[None], size=small, mode="area")[0]
    den = F.interpolate(weight[None], size=small, mode="area")[0]
    valid = den[0] > 0
    mean = torch.where(valid, num / den.clamp_min(1e-6), torch.zeros_like(num))
    filled = harmonic_fill_torch(mean, ~valid)
    out = torch.zeros((3, h, w), device=device)
    out[:, y0:y1, x0:x1] = F.interpolate(filled[None], size=(y1 - y0, x1 - x0), mode="bilinear",
                                         align_corners=False)[0]
    return out


def _candidate_table(premult: torch.Tensor, curve: torch.Tensor, t: int, sigma: float, f: torch.Tensor,
                     x: torch.Tensor, y: torch.Tensor, agree: torch.Tensor, usable: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Colours ``f.shape + (3,)`` and weights of the sources ``(f, x, y)`` for frame ``t``, as
    :func:`.flow.candidate_table`: read from the known pixels (``premult``: colour times
    knownness, knownness last), brought to frame ``t``'s exposure, weighted by temporal distance
    times ``agree``; 0 where not ``usable`` or on no known pixel."""
    sampled = _bilinear_points(premult, f.clamp_min(0).reshape(-1), x.reshape(-1), y.reshape(-1)).reshape(*f.shape, 4)
    valid = usable & (sampled[..., 3] > 1e-3)
    colours = sampled[..., :3] / sampled[..., 3:].clamp_min(1e-3)
    colours = colours * torch.exp(curve[t] - curve[f.clamp_min(0)])  # to this frame's exposure
    weights = torch.where(valid, torch.exp(-(f - t).abs().float() / sigma) * agree, torch.zeros_like(x))
    return colours, weights


def propagate_torch(video: np.ndarray, holes: np.ndarray, fwd: list[FlowField], bwd: list[FlowField], cfg,
                    device: torch.device, step: Callable[[], None]) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-5 of the flow prior on ``device``; returns the filled video and the source map (NumPy)."""
    kornia = _kornia()

    length, height, width = holes.shape
    vid = torch.from_numpy(video).to(device).permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W)
    hol = torch.from_numpy(holes).to(device)
    known = (~hol).float()[:, None]
    premult = torch.cat([vid * known, known], 1)  # bilinear over known pixels only
    source = torch.where(hol, SOURCE_SPATIAL, SOURCE_KNOWN).to(torch.uint8)
    unseen = hol.clone()
    out = vid.clone()

    if cfg.ring > 0:
        # The ring (known pixels within ``ring`` of a hole), with kornia's morphology.
        ellipse = torch.from_numpy(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * cfg.ring + 1,) * 2)).float()
        grown = kornia.morphology.dilation(hol.float()[:, None], ellipse.to(device), border_type="constant",
                                           border_value=0.0)[:, 0] > 0.5
        rings = grown & ~hol
        # One ring pixel in two, on a checkerboard, as the NumPy path (:func:`.fusion.ring_samples`).
        yy, xx = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
        rings &= ((yy + xx) % 2 == 0)
    targets, hole_counts = [], []
    for t in range(length):
        ys, xs = torch.nonzero(hol[t], as_tuple=True)
        hole_counts.append(len(ys))
        if cfg.ring > 0 and len(ys):
            rys, rxs = torch.nonzero(rings[t], as_tuple=True)
            ys, xs = torch.cat([ys, rys]), torch.cat([xs, rxs])
        targets.append((ys, xs))

    later: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # uncertain never-seen pixels, Telea's fill
    if length > 1:
        checks_np = tuple(motion_check_stack(fwd, bwd, towards_past=p) for p in (True, False))
        checks = [torch.from_numpy(c).to(device).permute(0, 3, 1, 2) for c in checks_np]
        curve = torch.from_numpy(exposure_curve(video, holes, fwd)).to(device)
        past = _track(hol, fwd, bwd, targets, forward=True, slots=cfg.slots, gap=cfg.gap, step=step)
        future = _track(hol, fwd, bwd, targets, forward=False, slots=cfg.slots, gap=cfg.gap, step=step)
        for t in range(length):
            ys, xs = targets[t]
            n_hole = hole_counts[t]
            if n_hole:
                src_f = torch.cat([past[t][0], future[t][0]])
                src_x = torch.cat([past[t][1], future[t][1]])
                src_y = torch.cat([past[t][2], future[t][2]])
                agree = torch.cat([_agreement(checks[0], past[t][0], past[t][1], past[t][2], (height, width)),
                                   _agreement(checks[1], future[t][0], future[t][1], future[t][2], (height, width))])
                # (a ring pixel's own frame is not a source)
                colours, weights = _candidate_table(premult, curve, t, cfg.sigma, src_f, src_x, src_y, agree,
                                                    (src_f >= 0) & (src_f != t))
                fused, count = _fuse(colours, weights, cfg.tolerance)
                hole_fused, hole_n = fused[:n_hole], count[:n_hole]
                if cfg.ring > 0:
                    offset = _colour_offset(vid[t], holes[t], ys[n_hole:], xs[n_hole:], fused[n_hole:], count[n_hole:] > 0)
                    if offset is not None:
                        hole_fused = hole_fused + offset[:, ys[:n_hole], xs[:n_hole]].T
                got = hole_n > 0
                ys_np, xs_np = ys.cpu().numpy(), xs.cpu().numpy()
                obj = object_sources(holes, fwd, bwd, checks_np, t, ys_np, xs_np, cfg.slots, cfg.slots * cfg.gap)
                if obj is not None:
                    # The object layer (:mod:`.objects`): its sources read, fused and checked here,
                    # which pixels it fills decided by the same NumPy rule.
                    o_f = torch.from_numpy(obj.frame.astype(np.int64)).to(device)
                    o_col, o_w = _candidate_table(premult, curve, t, cfg.sigma, o_f, torch.from_numpy(obj.x).to(device),
                                                  torch.from_numpy(obj.y).to(device),
                                                  torch.from_numpy(obj.agree).to(device), o_f >= 0)
                    o_fused, o_count = _fuse(o_col, o_w, cfg.tolerance)
                    index = torch.from_numpy(obj.index).to(device)
                    zy, zx = ys_np[obj.index], xs_np[obj.index]
                    background, background_ok = fused[index].cpu().numpy(), (count[index] > 0).cpu().numpy()
                    is_ring = obj.index >= n_hole
                    o_col_np, o_w_np, own = o_col.cpu().numpy(), o_w.cpu().numpy(), video[t, zy, zx]
                    on = object_pixels(o_col_np, o_w_np, o_fused.cpu().numpy(), own, background, background_ok,
                                       is_ring, zy, zx, holes[t], cfg.slots, cfg.tolerance)
                    on_t = torch.from_numpy(on).to(device)
                    sel = index[on_t]
                    hole_fused = hole_fused.clone()
                    hole_n = hole_n.clone()
                    unsure = uncertain_pixels(o_col_np, o_w_np, own, background, background_ok, is_ring, zy, zx,
                                              holes[t], on, cfg.slots)
                    if unsure.any():
                        # Half the background's colour (or the spatial fill's, at the end), half the
                        # border's (Telea, on the CPU as in the spatial fill), as the NumPy path.
                        telea = telea_at(video[t], holes[t], zy[unsure], zx[unsure], cfg.radius)
                        seen = background_ok[unsure]
                        seen_t = torch.from_numpy(seen).to(device)
                        at = index[torch.from_numpy(unsure).to(device)][seen_t]
                        telea_t = torch.from_numpy(telea).to(device=device, dtype=hole_fused.dtype)
                        hole_fused[at] = 0.5 * (hole_fused[at] + telea_t[seen_t])
                        if not seen.all():
                            later[t] = (zy[unsure][~seen], zx[unsure][~seen], telea[~seen])
                    hole_fused[sel] = o_fused[on_t]
                    hole_n[sel] = o_count[on_t]
                    got = hole_n > 0
                hy, hx = ys[:n_hole][got], xs[:n_hole][got]
                out[t, :, hy, hx] = hole_fused[got].clamp(0, 1).T
                source[t, hy, hx] = torch.where(hole_n[got] > 1, SOURCE_FUSED, SOURCE_COPIED).to(torch.uint8)
                unseen[t, hy, hx] = False
            step()

    # Spatial fill of never-seen pixels, carried along the flow from the previous frame's fill.
    for t in range(length):
        if not bool(unseen[t].any()):
            continue
        todo = unseen[t].clone()
        if t > 0 and bwd and bool(unseen[t - 1].any()):
            ys, xs = torch.nonzero(todo, as_tuple=True)
            d = _dense(bwd[t - 1], device)[:, ys, xs]
            qx, qy = xs + d[0], ys + d[1]
            rx = torch.round(qx).clamp(0, width - 1).long()
            ry = torch.round(qy).clamp(0, height - 1).long()
            carry = unseen[t - 1, ry, rx] & (qx >= 0) & (qx <= width - 1) & (qy >= 0) & (qy <= height - 1)
            if bool(carry.any()):
                prev = torch.full((len(ys),), t - 1, device=device, dtype=torch.long)[carry]
                out[t, :, ys[carry], xs[carry]] = _bilinear_points(out, prev, qx[carry], qy[carry]).T
                todo[ys[carry], xs[carry]] = False
        if bool(todo.any()):
            from .fusion import _SPATIAL_SMOOTHING, membrane_parts, telea_fill

            todo_np = todo.cpu().numpy()
            filled = out[t].clone()
            for y0, y1, x0, x1, part in membrane_parts(todo_np):
                win = harmonic_fill_torch(out[t][:, y0:y1, x0:x1], todo[y0:y1, x0:x1],
                                          smooth_iterations=_SPATIAL_SMOOTHING)
                part_t = torch.from_numpy(part).to(device)
                filled[:, y0:y1, x0:x1] = torch.where(part_t, win, filled[:, y0:y1, x0:x1])
            # The Telea half has no torch counterpart: OpenCV on the CPU, for these pixels only.
            telea = telea_fill(out[t].permute(1, 2, 0).cpu().numpy(), todo_np, cfg.radius)
            telea_t = torch.from_numpy(telea).to(device).permute(2, 0, 1)
            out[t] = torch.where(todo, 0.5 * (filled + telea_t), filled)
    for t, (hy, hx, telea) in later.items():
        hy_t, hx_t = torch.from_numpy(hy).to(device), torch.from_numpy(hx).to(device)
        out[t, :, hy_t, hx_t] = 0.5 * (out[t, :, hy_t, hx_t] + torch.from_numpy(telea).to(device=device).T)
    result = out.permute(0, 2, 3, 1).cpu().numpy()
    result[~holes] = video[~holes]  # outside the holes: the input exactly
    return np.ascontiguousarray(result), source.cpu().numpy()
