"""From candidate sources to hole colours: robust fusion, colour matching, spatial fill.

* **Fusion.** Each hole pixel has up to ``2 * slots`` candidate colours (past and future sources,
  read once with bilinear weights over known pixels only). Each weighs ``exp(-|s - t| / sigma)``.
  The *weighted medoid* - the candidate closest, in weighted L1, to all the others - picks the
  colour most frames agree on; the candidates within ``tolerance`` of it (the consistent cluster)
  are averaged. A moving object seen at the source location in a minority of the frames is
  rejected, while agreeing frames still average out independent propagation errors. Where no
  two candidates agree (sources misaligned across an edge) all are averaged.
* **Colour matching.** The same fusion is run for a ring of *known* pixels around each hole
  (excluding the ring's own frame). The difference between the ring's true colour and its
  propagated colour is the mismatch of the copied content at the border (exposure, white
  balance, shading): it is smoothed along the ring and carried into the hole as a membrane
  (harmonic interpolation), which is the gradient-domain (Poisson) blend of the copied content.
* **Spatial fill.** Never-seen pixels get the membrane of the pixels around them; see
  :func:`spatial_fill` for why that and not Telea.
"""
from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np

from .membrane import harmonic_fill
from .motion import FlowField, bilinear

__all__ = ["KnownSampler", "fuse_candidates", "colour_offset", "spatial_fill", "ring_of"]



# Jacobi steps after the push-pull for the spatial fill: enough to remove the pyramid's blockiness.
_SPATIAL_SMOOTHING = 16


class KnownSampler:
    """Bilinear colours of a frame read from its known (non-hole) pixels only.

    Each frame is kept premultiplied, ``(rgb * known, known)``: sampling both with ``cv2.remap``
    and dividing gives bilinear weights renormalised over the known pixels under the footprint.
    Hole pixels therefore never contribute, so what is being removed cannot leak back in.
    A few recently used frames are cached (sources are nearly always close in time).
    """

    def __init__(self, video: np.ndarray, holes: np.ndarray, cache_bytes: int = 512 * 2**20):
        self.video, self.holes = video, holes
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_size = max(8, cache_bytes // (16 * holes[0].size))

    def _premultiplied(self, s: int) -> np.ndarray:
        pm = self.cache.get(s)
        if pm is None:
            known = (~self.holes[s]).astype(np.float32)[..., None]
            pm = np.concatenate([self.video[s] * known, known], axis=-1)
            self.cache[s] = pm
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(s)
        return pm

    def sample(self, s: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Colours (N, 3) of frames ``s`` at ``(x, y)``, and ``ok`` (N,): some known pixel was under them."""
        acc = np.zeros((len(s), 4), np.float32)
        order = np.argsort(s, kind="stable")
        frames_used, starts = np.unique(s[order], return_index=True)
        ends = np.append(starts[1:], len(s))
        for frame, a, b in zip(frames_used, starts, ends):
            sel = order[a:b]
            acc[sel] = bilinear(self._premultiplied(int(frame)), x[sel], y[sel])
        ok = acc[:, 3] > 1e-3
        colour = np.zeros((len(s), 3), np.float32)
        colour[ok] = acc[ok, :3] / acc[ok, 3:]
        return colour, ok


def fuse_candidates(colours: np.ndarray, weights: np.ndarray, tolerance: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Robust fusion of ``colours`` ``(S, N, 3)`` with ``weights`` ``(S, N)`` (0 = no candidate).

    Returns the fused colours ``(N, 3)`` and how many candidates were averaged ``(N,)`` (0 where
    there was none).
    """
    s, n = weights.shape
    if n == 0:
        return np.zeros((0, 3), np.float32), np.zeros(0, np.int32)
    # Mean absolute difference over channels between every pair of candidates: (S, S, N).
    dist = np.zeros((s, s, n), np.float32)
    for c in range(colours.shape[-1]):
        ch = colours[..., c]
        dist += np.abs(ch[:, None] - ch[None, :])
    dist /= colours.shape[-1]
    score = (weights[:, None] * dist).sum(0)
    score = np.where(weights > 0, score, np.inf)
    medoid = np.argmin(score, axis=0)
    to_medoid = np.take_along_axis(dist, medoid[None, None, :], axis=0)[0]  # (S, N)
    inlier = (to_medoid <= tolerance) & (weights > 0)
    count = inlier.sum(0)
    # No two candidates agree: not an object seen in some frames (the background frames would
    # agree with each other) but sources misaligned across an edge, typically the past ones on
    # one side and the future ones on the other. Their weighted mean is the least-squares guess.
    w = np.where((count == 1) & ((weights > 0).sum(0) > 1), weights, weights * inlier)
    total = w.sum(0)
    fused = (colours * w[..., None]).sum(0) / np.maximum(total, 1e-12)[:, None]
    return fused.astype(np.float32), (w > 0).sum(0).astype(np.int32)


def ring_of(hole: np.ndarray, width: int) -> np.ndarray:
    """Known pixels within ``width`` of a hole (an elliptic dilation minus the hole)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return (cv2.dilate(hole.astype(np.uint8), kernel) > 0) & ~hole


def colour_offset(frame: np.ndarray, hole: np.ndarray, ring_ys: np.ndarray, ring_xs: np.ndarray,
                  ring_fused: np.ndarray, ring_ok: np.ndarray, ring: int, sigma: float) -> np.ndarray | None:
    """The correction ``(H, W, 3)`` to add to propagated hole colours, or None without a usable ring.

    Mismatch on the ring (true minus propagated), smoothed along the ring with a normalised
    Gaussian (texture misalignment is high-frequency, exposure and shading are not), then
    interpolated harmonically into each hole from its own ring (one connected hole at a time,
    in its box grown by the ring width).
    """
    if not ring_ok.any():
        return None
    h, w = hole.shape
    diff = np.zeros((h, w, 3), np.float32)
    weight = np.zeros((h, w), np.float32)
    ys, xs = ring_ys[ring_ok], ring_xs[ring_ok]
    diff[ys, xs] = frame[ys, xs] - ring_fused[ring_ok]
    weight[ys, xs] = 1.0
    out = np.zeros((h, w, 3), np.float32)
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(hole.astype(np.uint8), connectivity=8)
    for k in range(1, count):
        bx, by, bw, bh, _ = (int(v) for v in boxes[k])
        y0, y1 = max(0, by - ring - 1), min(h, by + bh + ring + 1)
        x0, x1 = max(0, bx - ring - 1), min(w, bx + bw + ring + 1)
        d, wt = diff[y0:y1, x0:x1], weight[y0:y1, x0:x1]
        valid = wt > 0
        if not valid.any():
            continue
        num = cv2.GaussianBlur(d * wt[..., None], (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        den = cv2.GaussianBlur(wt, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        smooth = np.where(valid[..., None], num / np.maximum(den, 1e-6)[..., None], 0.0).astype(np.float32)
        filled = harmonic_fill(smooth, ~valid)
        inside = labels[y0:y1, x0:x1] == k
        out[y0:y1, x0:x1][inside] = filled[inside]
    return out


def spatial_fill(out: np.ndarray, unseen: np.ndarray, bwd: list[FlowField] | None, method: str = "membrane",
                 radius: int = 5) -> None:
    """Fill never-seen pixels in place, reusing the previous frame's fill along the flow.

    ``method="membrane"`` (default) is the harmonic interpolation of the pixels around: for the
    large holes a video prior leaves unseen it keeps the hole's colours and gradients smooth
    where Telea drags streaks of the border across (it scored higher hole PSNR on every clip of
    ``bench/bench_prior.py``, see the README), and the torch path computes the same thing.
    ``"telea"`` (OpenCV, ``radius``) is kept for comparison.
    """
    length, height, width = unseen.shape
    for t in range(length):
        if not unseen[t].any():
            continue
        todo = unseen[t].copy()
        if t > 0 and bwd is not None and unseen[t - 1].any():
            ys, xs = np.nonzero(todo)
            d = bwd[t - 1].at(xs.astype(np.float32), ys.astype(np.float32))
            qx, qy = xs + d[:, 0], ys + d[:, 1]
            rx = np.clip(np.rint(qx), 0, width - 1).astype(np.int32)
            ry = np.clip(np.rint(qy), 0, height - 1).astype(np.int32)
            carry = unseen[t - 1, ry, rx] & (qx >= 0) & (qx <= width - 1) & (qy >= 0) & (qy <= height - 1)
            if carry.any():
                out[t, ys[carry], xs[carry]] = bilinear(out[t - 1], qx[carry], qy[carry])
                todo[ys[carry], xs[carry]] = False
        if todo.any():
            if method == "telea":
                img = np.clip(out[t] * 255.0 + 0.5, 0, 255).astype(np.uint8)
                filled = cv2.inpaint(img, todo.astype(np.uint8), radius, cv2.INPAINT_TELEA)
                out[t][todo] = filled[todo].astype(np.float32) / 255.0
            else:
                out[t] = harmonic_fill(out[t], todo, smooth_iterations=_SPATIAL_SMOOTHING)
