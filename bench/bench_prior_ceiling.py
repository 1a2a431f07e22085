"""How far is the flow prior from propagation with the true motion? A ceiling for the tasks of bench_prior.py.

The flow prior must guess the motion inside a hole from what lies around it. This script asks what copying
from other frames would give if that motion were known: each hole pixel is tracked along the flow of the
*unholed* truth frames (OpenCV DIS, the prior's preset, refined down to full resolution), frame by frame in both directions,
to the first frame whose hole does not cover it there, and takes that frame's colour from the nearer side
("oracle"). Pixels no frame shows keep Telea. It is not a strict upper bound (a fusion of several frames can
do better, DIS errs on fast or blurred motion), but it uses information that no method seeing only the holed
frames has: the motion of what the hole hides.

"border" does the same with the truth's flow inside each hole replaced by a completion from outside it, as a
prior must do: a normalized convolution (Gaussian, sigma = min(H, W) / 48) of the flow around the hole, and on
the video-completion tasks separately for the clip's moving objects (hole pixels of an object from that
object's pixels outside the hole, the others from the others: labels no prior has). The gap between "oracle"
and "border" is what the hidden motion is worth; the gap between "border" and the prior is what is left to win
with a better motion completion or labelling.

On the video-completion tasks the hole PSNR is also split into the pixels of the clip's moving objects (its
object masks, grown by 2 px) and the rest, and the prior is scored once more with only its object pixels
replaced by the oracle's ("prior+obj: oracle", the gain if the prior tracked the objects as well as the truth's
flow does) and by the border completion's ("border": the gain if it knew which hole pixels are the object's
and completed their motion from the object's own border).

    python bench/bench_prior_ceiling.py                                  # every clip and task (~10 min on 2 cores)
    python bench/bench_prior_ceiling.py --clips diffueraser-example1 --tasks squares,moving-grid
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_prior as bp  # noqa: E402

from rrdpo_core.prior import flow_propagation_prior  # noqa: E402
from rrdpo_core.prior.motion import DIS_PRESETS, bilinear  # noqa: E402


def truth_flows(truth: np.ndarray, preset: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Forward (t -> t+1) and backward (t+1 -> t) DIS flow of the truth frames, refined to full resolution."""
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    dis.setFinestScale(0)  # refined down to the full resolution, as the prior refines to its working one
    gray = [cv2.cvtColor((f * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY) for f in truth]
    forward = [dis.calc(gray[t], gray[t + 1], None) for t in range(len(gray) - 1)]
    backward = [dis.calc(gray[t + 1], gray[t], None) for t in range(len(gray) - 1)]
    return forward, backward


def first_sight(truth: np.ndarray, masks: np.ndarray, forward, backward, t: int, step: int, max_away: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Colour (N, 3; NaN where none) and frame distance (inf where none) of the first frame in direction
    ``step`` (+1 / -1) that shows each hole pixel of frame ``t``, in ``np.nonzero(masks[t])`` order."""
    height, width = masks.shape[1:]
    ys, xs = np.nonzero(masks[t])
    x, y = xs.astype(np.float32), ys.astype(np.float32)
    colour = np.full((len(xs), 3), np.nan, np.float32)
    distance = np.full(len(xs), np.inf)
    alive = np.arange(len(xs))
    s = t
    for k in range(1, max_away + 1):
        nxt = s + step
        if not 0 <= nxt < len(truth) or len(alive) == 0:
            break
        d = bilinear(forward[s] if step > 0 else backward[s - 1], x[alive], y[alive])
        x[alive] += d[:, 0]
        y[alive] += d[:, 1]
        alive = alive[(x[alive] >= 0) & (x[alive] <= width - 1) & (y[alive] >= 0) & (y[alive] <= height - 1)]
        yi = np.rint(y[alive]).astype(int)
        xi = np.rint(x[alive]).astype(int)
        seen = ~masks[nxt][yi, xi]
        hit = alive[seen]
        colour[hit] = bilinear(truth[nxt], x[hit], y[hit])
        distance[hit] = k
        alive = alive[~seen]
        s = nxt
    return colour, distance


def border_completed(flows: list[np.ndarray], holes: np.ndarray, objects: np.ndarray, sigma: float
                     ) -> list[np.ndarray]:
    """``flows[s]`` with its values in ``holes[s]`` replaced by a normalized convolution of those outside; hole
    pixels of an object (``objects[s]``) from the object's pixels outside, the rest from the rest."""
    out = []
    for flow, hole, obj in zip(flows, holes, objects):
        done = flow.copy()
        for inside, known in ((hole & ~obj, ~hole & ~obj), (hole & obj, ~hole & obj)):
            if not inside.any():
                continue
            if not known.any():
                known = ~hole
            w = known.astype(np.float32)
            num = cv2.GaussianBlur(flow * w[..., None], (0, 0), sigma)
            den = cv2.GaussianBlur(w, (0, 0), sigma)
            far = inside & (den < 1e-4)
            if far.any():   # beyond the kernel's reach: a kernel 4x as wide
                num[far] = cv2.GaussianBlur(flow * w[..., None], (0, 0), 4 * sigma)[far]
                den[far] = cv2.GaussianBlur(w, (0, 0), 4 * sigma)[far]
            done[inside] = num[inside] / np.maximum(den[inside], 1e-12)[:, None]
        out.append(done)
    return out


def oracle_fill(truth: np.ndarray, masks: np.ndarray, fallback: np.ndarray, forward, backward, max_away: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(nearest-side fill, frames to the nearest sight per hole pixel of all frames) along the given flows."""
    nearest = fallback.copy()
    distances = []
    for t in range(len(truth)):
        ys, xs = np.nonzero(masks[t])
        after, d_after = first_sight(truth, masks, forward, backward, t, +1, max_away)
        before, d_before = first_sight(truth, masks, forward, backward, t, -1, max_away)
        near = np.where((d_after <= d_before)[:, None], after, before)
        found = np.isfinite(near[:, 0])
        nearest[t][ys[found], xs[found]] = near[found]
        distances.append(np.minimum(d_after, d_before))
    return nearest, np.concatenate(distances) if distances else np.zeros(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default=None, help="comma-separated clip names (default: all of bench_prior.py)")
    ap.add_argument("--tasks", default=",".join(bp.TASKS), help=f"comma-separated tasks of {bp.TASKS}")
    ap.add_argument("--frames", type=int, default=None, help="use only the first N frames (synthetic: N frames)")
    ap.add_argument("--preset", default="medium", choices=sorted(DIS_PRESETS), help="DIS preset (prior and oracle)")
    ap.add_argument("--max-away", type=int, default=1000, help="track at most this many frames each way")
    args = ap.parse_args()

    clips = bp.load_clips(args.clips.split(",") if args.clips else None, args.frames)
    print("hole PSNR (dB); gains over Telea; 'object' = the clip's moving objects (own masks, grown 2 px) in the "
          "hole, video-completion tasks only")
    header = (f"{'clip':<22}{'task':<20}{'Telea':>7}{'prior':>7}{'oracle':>7}{'border':>7}{'gain prior':>11}"
              f"{'oracle':>7}{'border':>7}{'object %':>9}{'object: prior':>14}{'Telea':>7}{'oracle':>7}{'border':>7}"
              f"{'rest: prior':>12}{'oracle':>7}{'prior+obj: oracle':>18}{'border':>7}{'unseen %':>9}{'median away':>12}")
    print(header)
    print("-" * len(header))
    t0 = time.perf_counter()
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    for name, frames, obj_masks, obj_truth in clips:
        flows = {}  # per truth array: the tasks of a clip share their truth (the frames), and DIS on it is slow
        for task in args.tasks.split(","):
            masks, truth = bp.task_inputs(task, frames, obj_masks, obj_truth, seed=bp.shape_seed(name))
            inputs = np.where(masks[..., None], 0.0, frames).astype(np.float32) if obj_truth is None else frames
            telea = bp.telea(inputs, masks)
            prior = flow_propagation_prior(inputs, masks, preset=args.preset).frames.numpy()
            completion = task != "removal" and obj_masks is not None
            labels = (np.stack([cv2.dilate((m > 0.5).astype(np.uint8), grow) > 0 for m in obj_masks])
                      if completion else np.zeros_like(masks))
            if id(truth) not in flows:
                flows[id(truth)] = truth_flows(truth, args.preset)
            forward, backward = flows[id(truth)]
            nearest, away = oracle_fill(truth, masks, telea, forward, backward, args.max_away)
            sigma = min(masks.shape[1:]) / 48
            border, _ = oracle_fill(truth, masks, telea, border_completed(forward, masks[:-1], labels[:-1], sigma),
                                    border_completed(backward, masks[1:], labels[1:], sigma), args.max_away)
            p_t, p_p, p_o, p_b = (bp.hole_psnr(r, truth, masks) for r in (telea, prior, nearest, border))
            row = (f"{name:<22}{task:<20}{p_t:>7.2f}{p_p:>7.2f}{p_o:>7.2f}{p_b:>7.2f}{p_p - p_t:>+11.2f}"
                   f"{p_o - p_t:>+7.2f}{p_b - p_t:>+7.2f}")
            objects = labels & masks
            if objects.any():
                rest = masks & ~objects
                fixed = [np.where(objects[..., None], r, prior) for r in (nearest, border)]
                row += (f"{100 * objects.sum() / masks.sum():>8.1f}%"
                        + "".join(f"{bp.hole_psnr(r, truth, objects):>{w}.2f}"
                                  for r, w in ((prior, 14), (telea, 7), (nearest, 7), (border, 7)))
                        + f"{bp.hole_psnr(prior, truth, rest):>12.2f}{bp.hole_psnr(nearest, truth, rest):>7.2f}"
                        f"{bp.hole_psnr(fixed[0], truth, masks) - p_t:>+18.2f}{bp.hole_psnr(fixed[1], truth, masks) - p_t:>+7.2f}")
            else:
                row += f"{'-':>9}{'-':>14}{'-':>7}{'-':>7}{'-':>7}{'-':>12}{'-':>7}{'-':>18}{'-':>7}"
            seen = np.isfinite(away)
            median = f"{np.median(away[seen]):.0f}" if seen.any() else "-"
            print(row + f"{100 * (1 - seen.mean()):>8.1f}%{median:>12}", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
