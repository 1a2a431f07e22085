"""Quality of an inpainted video: per-zone fidelity, temporal stability, seam visibility.

The measures of the design document's evaluation table (seed §7.3) that need no learned model:

* **PSNR and SSIM per zone** against a ground truth: hole, boundary band, context
  (``rrdpo_core.zones``, spec/METHOD.md §1) and the full frame. PSNR pools the squared error
  over all pixels of the zone in all frames. SSIM is the standard Gaussian-window SSIM (sigma
  1.5, 11x11, data range 1, K = 0.01 / 0.03) per channel, its map averaged over the zone.
* **Temporal warping error** (Lai et al., ECCV 2018, with OpenCV DIS flow instead of a learned
  flow): frame t+1 warped back to frame t along the flow of the reference video, squared error
  over pixels that pass a forward-backward consistency test, averaged over frame pairs. Given
  for the whole frame, for the hole alone (seed: "pixel change of the mask region between
  adjacent frames"), and for the ground truth itself - the floor that flow errors and real
  changes leave.
* **Boundary gradient continuity**: on the seam (2 px either side of the hole edge), the mean
  absolute difference between the image gradients of result and truth; and, with no truth
  needed, the seam-to-surroundings gradient ratio (mean gradient magnitude on the seam over that
  on a ring 4-10 px outside it); a visible seam pushes it up (compare with the truth's ratio).
* **LPIPS** only when the ``lpips`` package and its AlexNet backbone weights are already on this
  machine; nothing is downloaded.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from .errors import Cancelled, RrdpoInputError
from .video_io import as_frames, as_masks
from .zones import decompose_zones

__all__ = ["InpaintingReport", "ZoneScore", "evaluate_inpainting", "psnr", "ssim_map", "warping_error",
           "lpips_status"]

ZONES = ("hole", "boundary", "context", "frame")
_SEAM_PX = 2
_RING = (4, 10)


@dataclass
class ZoneScore:
    """PSNR (dB; ``inf`` for a perfect match) and SSIM of one zone; None where the zone is empty."""

    psnr: float | None
    ssim: float | None
    pixels: int


@dataclass
class InpaintingReport:
    """Everything :func:`evaluate_inpainting` measured. Fields that need a truth are None without one."""

    frames: int
    zones: dict[str, ZoneScore] = field(default_factory=dict)
    warp_error: float | None = None
    warp_error_hole: float | None = None
    warp_error_truth: float | None = None
    warp_error_truth_hole: float | None = None
    boundary_gradient_error: float | None = None
    seam_gradient_ratio: float | None = None
    seam_gradient_ratio_truth: float | None = None
    lpips_hole: float | None = None
    lpips_frame: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["zones"] = {k: asdict(v) for k, v in self.zones.items()}
        return d

    def format_table(self, title: str | None = None) -> str:
        """A plain-text table for terminals and logs."""
        lines = [title] if title else []
        if self.zones:
            lines.append(f"{'zone':<10}{'PSNR dB':>10}{'SSIM':>9}{'pixels':>12}")
            for name in ZONES:
                z = self.zones.get(name)
                if z is None:
                    continue
                lines.append(f"{name:<10}{_fmt(z.psnr, 2):>10}{_fmt(z.ssim, 4):>9}{z.pixels:>12}")
        lines.append(f"warping error (x1e-3)  frame {_fmt(_milli(self.warp_error), 3)}  hole "
                     f"{_fmt(_milli(self.warp_error_hole), 3)}  | truth: frame {_fmt(_milli(self.warp_error_truth), 3)}"
                     f"  hole {_fmt(_milli(self.warp_error_truth_hole), 3)}")
        lines.append(f"seam: gradient error {_fmt(self.boundary_gradient_error, 4)}  gradient ratio "
                     f"{_fmt(self.seam_gradient_ratio, 3)} (truth {_fmt(self.seam_gradient_ratio_truth, 3)})")
        if self.lpips_hole is not None:
            lines.append(f"LPIPS  hole {_fmt(self.lpips_hole, 4)}  frame {_fmt(self.lpips_frame, 4)}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _milli(v: float | None) -> float | None:
    return None if v is None else v * 1e3


def _fmt(v: float | None, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


# ------------------------------------------------------------------------------------------
# Building blocks


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float | None:
    """PSNR in dB of two [0, 1] arrays, over the pixels where ``where`` (broadcast on channels)."""
    err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if where is not None:
        if not where.any():
            return None
        err = err[where]
    mse = float(err.mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two (H, W, 3) images in [0, 1], averaged over channels -> (H, W)."""
    c1, c2 = 0.01**2, 0.03**2
    # float32 is ample for [0, 1] images and twice as fast as float64 here.
    a = a.astype(np.float32)
    b = b.astype(np.float32)

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean(axis=-1)


def _gray_u8(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def _valid_pairs(reference: np.ndarray):
    """Yield (t, flow t->t+1, non-occluded mask) from DIS flow on the reference video."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    h, w = reference.shape[1:3]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    grays = [_gray_u8(f) for f in reference]
    for t in range(len(reference) - 1):
        fwd = dis.calc(grays[t], grays[t + 1], None)
        bwd = dis.calc(grays[t + 1], grays[t], None)
        map_x, map_y = grid_x + fwd[..., 0], grid_y + fwd[..., 1]
        back = cv2.remap(bwd, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        err = ((fwd + back) ** 2).sum(-1)
        bound = 0.01 * ((fwd**2).sum(-1) + (back**2).sum(-1)) + 0.5
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        yield t, map_x, map_y, (err <= bound) & inside


def warping_error(videos: list[np.ndarray], reference: np.ndarray, regions: np.ndarray | None = None,
                  cancel: Callable[[], bool] | None = None) -> list[tuple[float | None, float | None]]:
    """Warping error of each video in ``videos`` along the flow of ``reference``.

    Returns one ``(whole frame, inside regions)`` pair per video; the second is None without
    ``regions`` (bool (T, H, W)). Frame pairs without valid pixels are skipped.
    """
    sums = [[0.0, 0.0] for _ in videos]
    counts = [[0, 0] for _ in videos]
    for t, map_x, map_y, valid in _valid_pairs(reference):
        if cancel is not None and cancel():
            raise Cancelled("metrics cancelled")
        for i, v in enumerate(videos):
            warped = cv2.remap(v[t + 1], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            err = ((v[t] - warped) ** 2).mean(-1)
            for j, sel in enumerate((valid, None if regions is None else valid & regions[t])):
                if sel is not None and sel.any():
                    sums[i][j] += float(err[sel].mean())
                    counts[i][j] += 1
    return [tuple(s / c if c else None for s, c in zip(si, ci)) for si, ci in zip(sums, counts)]


def _gradients(frame: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(frame, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(frame, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.stack([gx, gy], axis=0)  # (2, H, W, 3)


def _seam_and_ring(hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h8 = hole.astype(np.uint8)
    k = lambda r: cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))  # noqa: E731
    seam = (cv2.dilate(h8, k(_SEAM_PX)) > 0) & ~(cv2.erode(h8, k(_SEAM_PX)) > 0)
    ring = (cv2.dilate(h8, k(_RING[1])) > 0) & ~(cv2.dilate(h8, k(_RING[0])) > 0)
    return seam, ring


# ------------------------------------------------------------------------------------------
# LPIPS, only from weights already on disk


def lpips_status() -> tuple[bool, str]:
    """Whether LPIPS can run offline here, and why not."""
    try:
        import lpips  # noqa: F401
    except Exception as err:  # missing package, or torchvision that cannot load
        return False, f"LPIPS skipped: the lpips package is not usable ({type(err).__name__}: {err})"
    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not ckpt.is_file():
        return False, f"LPIPS skipped: AlexNet backbone weights not found at {ckpt} (nothing is downloaded)"
    return True, ""


def _lpips(result: np.ndarray, truth: np.ndarray, holes: np.ndarray) -> tuple[float, float]:
    import lpips

    net = lpips.LPIPS(net="alex", verbose=False).eval()
    hole_vals, frame_vals = [], []
    with torch.no_grad():
        for r, g, m in zip(result, truth, holes):
            x = torch.from_numpy(r).permute(2, 0, 1)[None] * 2 - 1
            y = torch.from_numpy(g).permute(2, 0, 1)[None] * 2 - 1
            d = net(x, y, spatial=True)[0, 0].numpy()
            frame_vals.append(float(d.mean()))
            if m.any():
                hole_vals.append(float(d[m].mean()))
    return (float(np.mean(hole_vals)) if hole_vals else math.nan), float(np.mean(frame_vals))


# ------------------------------------------------------------------------------------------


def evaluate_inpainting(
    result: torch.Tensor | np.ndarray,
    truth: torch.Tensor | np.ndarray | None,
    masks: torch.Tensor | np.ndarray,
    *,
    band_px: int = 8,
    temporal: bool = True,
    lpips: bool | str = "auto",
    cancel: Callable[[], bool] | None = None,
) -> InpaintingReport:
    """Measure an inpainted video against its ground truth (or without one).

    Args:
        result: inpainted video ``(T, H, W, 3)`` in [0, 1].
        truth: the ground truth, same shape, or None (then only the warping error along the
            result's own flow and the seam gradient ratio are measured).
        masks: the holes that were filled, ``(T, H, W)`` (1 = hole).
        band_px: boundary band width for the zones (spec default 8).
        temporal: compute the warping errors (two DIS flows per frame pair).
        lpips: True to require LPIPS (error if unavailable), "auto" to add it when available.
    """
    res = as_frames(result, "result")
    length, height, width = res.shape[:3]
    holes = as_masks(masks, length, height, width)
    gt = None
    if truth is not None:
        gt = as_frames(truth, "truth")
        if gt.shape != res.shape:
            raise RrdpoInputError(f"truth has shape {gt.shape} but result has {res.shape}; they must match")
    report = InpaintingReport(frames=length)

    if gt is not None:
        zones = decompose_zones(torch.from_numpy(holes), band_px=band_px)
        zone_masks = {"hole": zones.hole.numpy() > 0.5, "boundary": zones.boundary.numpy() > 0.5,
                      "context": zones.context.numpy() > 0.5, "frame": np.ones_like(holes)}
        # Squared error per pixel (mean over RGB) and SSIM maps, once; zones only select.
        sq_err = np.stack([((r - g) ** 2).mean(-1) for r, g in zip(res, gt)])
        ssim_maps = np.stack([ssim_map(r, g).astype(np.float32) for r, g in zip(res, gt)])
        for name, zm in zone_masks.items():
            n = int(zm.sum())
            if not n:
                report.zones[name] = ZoneScore(psnr=None, ssim=None, pixels=0)
                continue
            mse = float(sq_err[zm].sum(dtype=np.float64)) / n
            report.zones[name] = ZoneScore(psnr=math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse),
                                           ssim=float(ssim_maps[zm].sum(dtype=np.float64)) / n, pixels=n)

    if temporal and length > 1:
        if gt is not None:
            (w_res, w_res_h), (w_gt, w_gt_h) = warping_error([res, gt], gt, holes, cancel)
            report.warp_error_truth, report.warp_error_truth_hole = w_gt, w_gt_h
        else:
            ((w_res, w_res_h),) = warping_error([res], res, holes, cancel)
            report.notes.append("no truth: warping error measured along the result's own flow")
        report.warp_error, report.warp_error_hole = w_res, w_res_h

    grad_err, n_seam = 0.0, 0
    ratio_res, ratio_gt = [], []
    for t in range(length):
        if not holes[t].any():
            continue
        seam, ring = _seam_and_ring(holes[t])
        if not seam.any() or not ring.any():
            continue
        g_res = _gradients(res[t])
        mag_res = np.sqrt((g_res**2).sum(0)).mean(-1)
        ratio_res.append((mag_res[seam].mean(), mag_res[ring].mean()))
        if gt is not None:
            g_gt = _gradients(gt[t])
            grad_err += float(np.abs(g_res - g_gt).mean(axis=(0, 3))[seam].sum())
            n_seam += int(seam.sum())
            mag_gt = np.sqrt((g_gt**2).sum(0)).mean(-1)
            ratio_gt.append((mag_gt[seam].mean(), mag_gt[ring].mean()))

    def ratio(pairs: list[tuple[float, float]]) -> float | None:
        if not pairs:
            return None
        seam_mean, ring_mean = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
        return float(seam_mean / ring_mean) if ring_mean > 0 else None

    report.seam_gradient_ratio = ratio(ratio_res)
    if gt is not None:
        report.boundary_gradient_error = grad_err / n_seam if n_seam else None
        report.seam_gradient_ratio_truth = ratio(ratio_gt)

    if lpips and gt is not None:
        ok, why = lpips_status()
        if ok:
            report.lpips_hole, report.lpips_frame = _lpips(res, gt, holes)
        elif lpips is True:
            raise RrdpoInputError(why)
        else:
            report.notes.append(why)
    return report
