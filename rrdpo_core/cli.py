"""Command line: ``python -m rrdpo_core demo | remove``.

``demo`` makes a synthetic clip with a known truth, removes its occluder with the weight-free
flow prior, writes the result and prints per-zone metrics next to a per-frame OpenCV Telea fill.

``remove`` removes the masked object from a video (mp4 or a folder of frames). Without
``--model`` it fills the hole with the flow prior (no weights) and says so; with ``--model`` the
prior is refined by DiffuEraser (``rrdpo_core.api.remove_objects``).

Frame sizes: any. The flow prior works at any size; with ``--model`` the pipeline pads frames to
multiples of 8 for the network and crops back (a note says so). The result always has the
input's size, and the input's exact pixels outside the blended band.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from .errors import Cancelled, RrdpoInputError
from .fsutil import atomic_write_json
from .progress import ProgressBars
from .offload import OFFLOAD_CHOICES

__all__ = ["main", "build_parser"]


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 432x240 (width x height), got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32, got {text}")
    return w, h


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from .blend import BLEND_MODES

    p = argparse.ArgumentParser(prog="python -m rrdpo_core",
                                description="DiffuEraser video object removal with a Region-Reg-DPO LoRA.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="synthetic clip with known truth: remove the occluder and print metrics")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--frames", type=_positive_int, default=32, help="number of frames (default 32)")
    d.add_argument("--size", type=_size, default=(432, 240), help="WIDTHxHEIGHT (default 432x240)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--blend", choices=BLEND_MODES, default="gaussian")
    d.add_argument("--quiet", action="store_true", help="no progress bars")

    r = sub.add_parser("remove", help="remove the masked object from a video")
    r.add_argument("--video", required=True, help="input video file (mp4, ...) or folder of frames")
    r.add_argument("--mask", required=True, help="mask video, folder of mask images, or one image for all frames")
    r.add_argument("--out", required=True, help="output .mp4 (or other video extension) or a folder for PNG frames")
    r.add_argument("--model", help="DiffuEraser weights folder; without it the weight-free flow prior is used")
    r.add_argument("--vae", help="VAE weights (sd-vae-ft-mse), for --model")
    r.add_argument("--lora", help="Region-Reg-DPO LoRA (.safetensors), for --model")
    r.add_argument("--lora-strength", type=float, default=1.0)
    r.add_argument("--steps", type=_positive_int, default=2, help="denoising steps (DiffuEraser default 2)")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--device", default=None, help="torch device for --model (default: cuda if available)")
    r.add_argument("--prior", choices=("flow", "propainter"), default="flow",
                   help="prior that fills the hole first: the weight-free flow prior, or ProPainter from its "
                        "official weights (--propainter-dir)")
    r.add_argument("--propainter-dir", help="folder with ProPainter.pth, recurrent_flow_completion.pth and "
                                            "raft-things.pth, for --prior propainter")
    r.add_argument("--blend", choices=BLEND_MODES, default="gaussian",
                   help="how the fill is composited into the frames (default: DiffuEraser's gaussian)")
    r.add_argument("--mask-dilation", type=int, default=8,
                   help="3x3 dilation steps applied to the mask after one erosion (DiffuEraser default 8)")
    r.add_argument("--max-frames", type=_positive_int, default=None, help="use only the first N frames")
    r.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's, 24 for folders)")
    r.add_argument("--offload", choices=OFFLOAD_CHOICES, default="none",
                   help="low-memory sampling for --model: the video's latents (windows) and also BrushNet/UNet blocks "
                        "(blocks) off the GPU; stream: BrushNet/UNet block weights read from their files layer by "
                        "layer, never all in RAM (for the CPU); auto picks from free GPU memory or, on the CPU, "
                        "free RAM; same result (default none)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _telea(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-frame OpenCV Telea fill composited into the frames (the naive baseline)."""
    out = frames.copy()
    for t, (f, m) in enumerate(zip(frames, masks)):
        if m.any():
            filled = cv2.inpaint(np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8), m.astype(np.uint8), 5,
                                 cv2.INPAINT_TELEA)
            out[t][m] = filled[m].astype(np.float32) / 255.0
    return out


def _overlay(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The frame with the hole tinted and outlined, for the comparison image."""
    img = frame.copy()
    img[mask] = 0.5 * img[mask] + 0.5 * np.array([1.0, 0.0, 0.3], np.float32)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, (1.0, 1.0, 0.0), 1)
    return img


def _demo(args: argparse.Namespace, progress: ProgressBars) -> int:
    from .blend import blend_into_video
    from .metrics import evaluate_inpainting
    from .prior import flow_propagation_prior
    from .synthetic import make_synthetic_clip
    from .video_io import check_writable_output, stack_side_by_side, write_image, write_video
    from .validate import check_memory

    width, height = args.size
    # Before any work: the output folder must be writable and the clip must fit in memory.
    out_dir = check_writable_output(args.out, "--out", folder=True)  # created when the results are written
    check_memory(_memory_need(args.frames, height, width), f"demo --frames {args.frames} --size {width}x{height}",
                 "use fewer --frames or a smaller --size")
    t0 = time.perf_counter()
    clip = make_synthetic_clip(args.frames, height, width, seed=args.seed)
    frames, masks, truth = clip.frames.numpy(), clip.masks.numpy(), clip.truth.numpy()
    print(f"synthetic clip: {args.frames} frames {width}x{height}, seed {args.seed}, "
          f"hole {100 * masks.mean():.1f}% of the pixels")

    print("no model: filling with the weight-free flow prior (rrdpo_core.prior.flow_propagation_prior)")
    t1 = time.perf_counter()
    prior = flow_propagation_prior(frames, masks, progress=progress.stage("flow prior"))
    t_prior = time.perf_counter() - t1
    result = blend_into_video(frames, prior.frames, masks, mode=args.blend, progress=progress.stage("blend"))
    progress.close()
    baseline = _telea(frames, masks)

    report = evaluate_inpainting(result, truth, masks)
    base_report = evaluate_inpainting(baseline, truth, masks, temporal=False, lpips=False)
    seen = prior.stats.get("seen_fraction", 1.0)
    print(f"flow prior: {t_prior:.1f} s ({args.frames / max(t_prior, 1e-9):.1f} frames/s), "
          f"{100 * seen:.1f}% of hole pixels seen in another frame; blend: {args.blend}")
    print(report.format_table("\nresult vs ground truth"))
    print("\nbaseline (OpenCV Telea, per frame) PSNR dB: " + "  ".join(
        f"{z} {base_report.zones[z].psnr:.2f}" for z in ("hole", "boundary", "context", "frame")
        if base_report.zones[z].psnr is not None and np.isfinite(base_report.zones[z].psnr)))
    gain = report.zones["hole"].psnr - base_report.zones["hole"].psnr
    print(f"hole PSNR gain over Telea: {gain:+.2f} dB")

    out_dir.mkdir(parents=True, exist_ok=True)
    write_video(out_dir / "input.mp4", frames, clip.fps)
    write_video(out_dir / "result.mp4", result, clip.fps)
    write_video(out_dir / "truth.mp4", truth, clip.fps)
    mid = args.frames // 2
    panel = stack_side_by_side([_overlay(frames[mid], masks[mid]), result[mid].numpy(), truth[mid], baseline[mid]])
    write_image(out_dir / "comparison.png", panel)
    summary = {"result": report.to_dict(), "telea_baseline": base_report.to_dict(),
               "prior_stats": prior.stats, "blend": args.blend, "frames": args.frames,
               "size": [width, height], "seed": args.seed}
    _write_json(out_dir / "metrics.json", summary)
    print(f"\nwrote {out_dir}/: input.mp4, result.mp4, truth.mp4, comparison.png "
          f"(frame {mid}: input+mask | result | truth | Telea), metrics.json  [{time.perf_counter() - t0:.1f} s]")
    return 0


# Peak memory of the weight-free path (clip, truth, flows, prior, blend, Telea baseline, encoders)
# per frame pixel, plus the interpreter and libraries: the slope and the base measured with
# `/usr/bin/time -v python -m rrdpo_core demo --frames 16|48` (122 B/pixel, 270 MiB), rounded up.
_BYTES_PER_FRAME_PIXEL = 128
_BASE_BYTES = 300 * 2**20


def _memory_need(frames: int, height: int, width: int) -> int:
    return int(frames) * int(height) * int(width) * _BYTES_PER_FRAME_PIXEL + _BASE_BYTES


def _write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data, sort_keys=False, default=float)


def _remove(args: argparse.Namespace, progress: ProgressBars) -> int:
    from .blend import blend_into_video
    from .masks import prepare_masks
    from .prior import flow_propagation_prior
    from .video_io import check_writable_output, read_masks, read_video, write_video

    from .validate import check_memory

    if args.mask_dilation < 0:
        raise RrdpoInputError(f"--mask-dilation must be >= 0, got {args.mask_dilation}")
    if args.fps is not None and not args.fps > 0:
        raise RrdpoInputError(f"--fps must be a positive number, got {args.fps}")
    for flag, value in (("--video", args.video), ("--mask", args.mask)):
        if not Path(value).exists():
            raise FileNotFoundError(f"{flag} {value}: no such file or folder")
    # Fail now, not after the whole clip was processed, when the result cannot be written.
    out_path = check_writable_output(args.out, "--out")
    video = read_video(args.video, max_frames=args.max_frames)
    frames = video.frames.numpy()
    length, height, width = frames.shape[:3]
    fps = args.fps or video.fps
    # The frames are in memory already; what follows needs the rest of the per-pixel budget.
    check_memory(_memory_need(length, height, width) - frames.nbytes - _BASE_BYTES,
                 f"removing from {args.video} ({length} frames {width}x{height})",
                 "cut the clip with --max-frames or process it in parts")
    notes: list[str] = []
    raw = read_masks(args.mask, max_frames=args.max_frames, notes=notes).numpy()
    for note in notes:
        print(f"note: {note}")
    if raw.shape[1:] != (height, width):
        print(f"note: masks are {raw.shape[2]}x{raw.shape[1]}, frames {width}x{height}: masks resized (nearest)")
        raw = np.stack([cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
                        for m in raw])
    if raw.shape[0] == 1 and length > 1:
        raw = np.repeat(raw, length, axis=0)
    if raw.shape[0] != length:
        raise RrdpoInputError(f"{args.mask}: {raw.shape[0]} mask frames for {length} video frames; give one mask "
                              "per frame, or one image for all, or cut both with --max-frames")
    masks = prepare_masks(raw, dilation_iter=args.mask_dilation).numpy() > 0.5
    print(f"{args.video}: {length} frames {width}x{height} at {fps:g} fps; hole {100 * masks.mean():.2f}% of pixels "
          f"(mask eroded once, dilated {args.mask_dilation}x)")

    if not masks.any():
        print("the mask is empty: nothing to remove, writing the input unchanged")
        write_video(out_path, frames, fps)
        print(f"wrote {out_path}")
        return 0

    if masks.all():
        if args.model is None:
            raise RrdpoInputError("the mask covers every pixel of every frame: the flow prior has no background to "
                                  "propagate; shrink the mask (--mask-dilation) or use --model to generate everything")
        print("note: the mask covers every pixel of every frame: no prior, the model generates everything")
        prior_frames = None
    else:
        t0 = time.perf_counter()
        if args.prior == "propainter":
            prior = _propainter_prior(args, frames, masks, progress)
        else:
            prior = flow_propagation_prior(frames, masks, progress=progress.stage("flow prior"))
        progress.close()
        print(f"{args.prior} prior: {time.perf_counter() - t0:.1f} s, "
              f"{100 * prior.stats.get('seen_fraction', 1):.1f}% of hole pixels seen in another frame")
        prior_frames = prior.frames.numpy()
    if args.model is None:
        print("no --model given: the result is the weight-free flow prior (no diffusion refinement)")
        generated = prior_frames
    else:
        generated = _run_model(args, frames, masks, prior_frames, progress)
    result = blend_into_video(frames, generated, masks, mode=args.blend, progress=progress.stage("blend"))
    progress.close()
    write_video(out_path, result, fps)
    print(f"wrote {out_path} (blend: {args.blend})")
    return 0


def _propainter_prior(args: argparse.Namespace, frames: np.ndarray, masks: np.ndarray, progress):
    """ProPainter from the user's official checkpoints (S-Lab non-commercial license)."""
    if not args.propainter_dir:
        raise RrdpoInputError("--prior propainter needs --propainter-dir: the folder with ProPainter.pth, "
                              "recurrent_flow_completion.pth and raft-things.pth (github.com/sczhou/ProPainter releases)")
    from .prior.propainter import load_propainter, propainter_prior

    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = load_propainter(args.propainter_dir, device=device)
    print(f"propainter prior on {device} (weights from {args.propainter_dir})")
    with torch.no_grad():
        return propainter_prior(frames, masks, models, progress=progress.stage("propainter prior"))


def _run_model(args: argparse.Namespace, frames: np.ndarray, masks: np.ndarray, prior: np.ndarray | None,
               progress: ProgressBars) -> np.ndarray:
    """DiffuEraser refinement of the prior, returned at the input size (blended by the caller)."""
    from .api import remove_objects
    from .video_io import resize_frames

    if args.vae is None:
        raise RrdpoInputError("--model needs --vae (the sd-vae-ft-mse weights)")
    height, width = frames.shape[1:3]
    if height % 8 or width % 8:
        print(f"note: {width}x{height} is not a multiple of 8: the model pads the frames to the next multiple "
              "of 8 (reflection) and crops its output back, so the result keeps the input size")
    prior_frames = None if prior is None else torch.from_numpy(prior)
    out = remove_objects(torch.from_numpy(frames), torch.from_numpy(masks), model_dir=args.model,
                         vae_path=args.vae, lora_path=args.lora, lora_strength=args.lora_strength,
                         prior_frames=prior_frames, steps=args.steps, seed=args.seed,
                         device=args.device, progress=progress.stage("DiffuEraser"), offload=args.offload,
                         blend=False)  # raw generated frames: the --blend mode of the caller composites them
    out = out.detach().cpu().float().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float32)
    return resize_frames(out, height, width)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    progress = ProgressBars(args.quiet)
    try:
        if args.command == "demo":
            return _demo(args, progress)
        return _remove(args, progress)
    except (KeyboardInterrupt, Cancelled):
        progress.close()
        print("interrupted: stopped, no partial output was written", file=sys.stderr)
        return 130
    except (RrdpoInputError, FileNotFoundError) as err:
        progress.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
