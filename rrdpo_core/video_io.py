"""Videos in memory and on disk.

In memory the library's canonical video is a float32 torch tensor ``(T, H, W, 3)`` in ``[0, 1]``
on the CPU (ComfyUI's IMAGE layout) and a mask is ``(T, H, W)`` with 1 = hole. Functions here
accept numpy arrays and uint8 too, and check shapes and values once, with messages that say how
to fix the input (:func:`as_frames`, :func:`as_masks`).

On disk a video is an mp4 (or any container ffmpeg reads) or a folder of png/jpg frames, sorted
by the numbers in their names. mp4 files are read and written with the ffmpeg binary that
``imageio-ffmpeg`` ships (libx264, crf 16, so the files play everywhere); OpenCV reads them when
imageio-ffmpeg is missing. Every file is written to a temporary name in its folder first and then
renamed, so an interrupted job never leaves a half-written result behind.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch

from .errors import RrdpoInputError
from .fsutil import atomic_path
from .validate import last_error_lines

__all__ = [
    "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "Video", "as_frames", "as_masks", "to_tensor",
    "read_video", "read_masks", "write_video", "write_image", "is_video_path", "check_writable_output", "resize_frames", "resize_masks",
    "stack_side_by_side",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".gif")
DEFAULT_FPS = 24.0
# Float frames slightly outside [0, 1] (resampling overshoot) are clipped; beyond this they are
# almost surely 0..255 values, which clipping would turn white.
_FLOAT_RANGE_LIMIT = 2.0


# ------------------------------------------------------------------------------------------
# In-memory conventions


def as_frames(frames: torch.Tensor | np.ndarray, name: str = "frames") -> np.ndarray:
    """Check a video and return it as a C-contiguous float32 numpy array ``(T, H, W, 3)`` in [0, 1].

    Accepts torch or numpy, float in [0, 1] (overshoot up to 2 is clipped; more is an error, as
    0..255 floats would turn white) or uint8 (divided by 255), with 3
    or 4 channels (alpha dropped); a single ``(H, W, 3)`` image is one frame. NaN or infinite
    values are an error, because every later step (flow, blending, VAE) would spread them.
    """
    if isinstance(frames, torch.Tensor):
        arr = frames.detach().cpu()
        arr = arr.numpy() if arr.dtype != torch.bfloat16 else arr.float().numpy()
    elif isinstance(frames, np.ndarray):
        arr = frames
    else:
        raise RrdpoInputError(f"{name}: expected a torch.Tensor or numpy array (T, H, W, 3), "
                              f"got {type(frames).__name__}")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
        raise RrdpoInputError(f"{name}: expected RGB frames of shape (T, H, W, 3), got {tuple(arr.shape)}; "
                              "channels go last (ComfyUI IMAGE layout)")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise RrdpoInputError(f"{name}: empty video of shape {tuple(arr.shape)}; pass at least one non-empty frame")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr, dtype=np.float32) / np.float32(255.0)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.floating):
        # Other integer types are ambiguous (0..255? 0..65535? 0/1?): ask for an explicit scale.
        raise RrdpoInputError(f"{name}: expected float pixels in [0, 1] or uint8 0..255, got dtype {arr.dtype}; "
                              "convert them (e.g. frames.float() / 255 for 8-bit values)")
    out = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(out).reshape(out.shape[0], -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise RrdpoInputError(f"{name}: frame(s) {bad[:8].tolist()} contain NaN or infinite values; "
                              "fix or drop those frames (a decoder or an upstream node produced them)")
    peak = float(out.max())
    if peak > _FLOAT_RANGE_LIMIT:
        # Clipping 0..255 floats to [0, 1] would give a white video without a word.
        raise RrdpoInputError(f"{name}: float pixels reach {peak:g}, but frames must be in [0, 1]; if they are "
                              "0..255 values, divide by 255")
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0))


def as_masks(masks: torch.Tensor | np.ndarray, length: int, height: int, width: int,
             name: str = "masks") -> np.ndarray:
    """Check hole masks against a video and return bool ``(T, H, W)`` (True = hole).

    A pixel is hole where the mask is > 0.5 (so 0/1 floats and bools work). uint8 masks are read
    as 0/255 (hole > 127), except that a uint8 mask whose maximum is 1 is read as 0/1 (label
    tools and DAVIS-style files store 1 = hole; reading them as 0/255 would silently give an
    empty mask). ``(T, H, W, C)`` masks are reduced with max over C. A single ``(H, W)`` or
    ``(1, H, W)`` mask applies to every frame.
    """
    if isinstance(masks, torch.Tensor):
        arr = masks.detach().cpu()
        arr = arr.float().numpy() if arr.dtype in (torch.bfloat16, torch.float16) else arr.numpy()
    elif isinstance(masks, np.ndarray):
        arr = masks
    else:
        raise RrdpoInputError(f"{name}: expected a torch.Tensor or numpy array (T, H, W), got {type(masks).__name__}")
    if arr.ndim == 4 and arr.shape[-1] in (1, 3, 4):
        arr = arr.max(axis=-1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise RrdpoInputError(f"{name}: expected (T, H, W) masks, got shape {tuple(arr.shape)}")
    if tuple(arr.shape[1:]) != (height, width):
        raise RrdpoInputError(f"{name}: masks are {arr.shape[2]}x{arr.shape[1]} (WxH) but the frames are "
                              f"{width}x{height}; resize the masks to the frame size (nearest neighbour)")
    if arr.shape[0] == 1 and length > 1:
        arr = np.broadcast_to(arr, (length, height, width))
    elif arr.shape[0] != length:
        raise RrdpoInputError(f"{name}: got {arr.shape[0]} masks for {length} frames; pass one mask per frame "
                              "(or a single mask for all frames)")
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr > (0 if int(arr.max(initial=0)) == 1 else 127))
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise RrdpoInputError(f"{name}: contain NaN or infinite values; pass a 0/1 hole mask")
    return np.ascontiguousarray(arr > 0.5)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """numpy video -> the canonical CPU float32 tensor (no copy when already float32 contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))


# ------------------------------------------------------------------------------------------
# Files


@dataclass
class Video:
    """Frames read from disk: ``frames`` float32 ``(T, H, W, 3)`` in [0, 1], and the frame rate."""

    frames: torch.Tensor
    fps: float
    source: str


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def check_writable_output(path: str | os.PathLike, flag: str = "--out", folder: bool | None = None) -> Path:
    """Make sure ``path`` can be written before long work starts; creates nothing.

    ``folder`` True: the output is a folder; False: a file; None: a video extension is a file,
    anything else a folder (the command line's convention). The nearest existing folder on the
    way is probed with a temporary file (removed at once), which also catches read-only mounts.
    """
    p = Path(path).expanduser()
    is_folder = (not is_video_path(p)) if folder is None else folder
    if is_folder and p.exists() and not p.is_dir():
        raise RrdpoInputError(f"{flag} {p}: exists and is not a folder; give a folder (or a .mp4 path)")
    if not is_folder and p.is_dir():
        raise RrdpoInputError(f"{flag} {p}: is a folder, but a video file is to be written there; give another name")
    probe_dir = p if is_folder else p.parent
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise RrdpoInputError(f"{flag} {p}: cannot write there, {probe_dir} is a file, not a folder; choose another "
                              "path (nothing was computed yet)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".rrdpo-write-test.", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise RrdpoInputError(f"{flag} {p}: cannot write to {probe_dir} ({reason}); choose a folder you can write to "
                              "(nothing was computed yet)") from None
    return p


def _natural_key(p: Path) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", p.name)]


def _image_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                   key=_natural_key)
    if not files:
        raise FileNotFoundError(f"{folder}: no image frames ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return files


def _read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    data = np.fromfile(str(path), dtype=np.uint8)  # imdecode also handles non-ASCII paths
    img = cv2.imdecode(data, flags) if data.size else None
    if img is None:
        raise RrdpoInputError(f"{path}: not a readable image")
    return img


def _read_video_file(path: Path, max_frames: int | None) -> tuple[np.ndarray, float]:
    """uint8 RGB (T, H, W, 3) and fps of a video file."""
    frames: list[np.ndarray] = []
    fps = DEFAULT_FPS
    try:
        import imageio_ffmpeg
    except ImportError:  # pragma: no cover - imageio-ffmpeg is a requirement; OpenCV is the fallback
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        try:
            reader = imageio_ffmpeg.read_frames(str(path))
            meta = next(reader)
            w, h = meta["size"]
            fps = float(meta.get("fps") or DEFAULT_FPS)
            for buf in reader:
                frames.append(np.frombuffer(buf, np.uint8).reshape(h, w, 3))
                if max_frames is not None and len(frames) >= max_frames:
                    reader.close()
                    break
        except StopIteration as err:
            raise RrdpoInputError(f"{path}: ffmpeg found no video stream in this file; give a video "
                                  f"({', '.join(VIDEO_EXTENSIONS)}) or a folder of frames") from err
        except (RuntimeError, OSError) as err:
            raise RrdpoInputError(f"{path}: ffmpeg could not decode this file ({last_error_lines(str(err))}); check "
                                  "that it is a complete video (re-export or re-download it), or give a folder of "
                                  "frames") from None
    else:  # pragma: no cover
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise RrdpoInputError(f"{path}: OpenCV could not open this video")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS)
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        cap.release()
    if not frames:
        raise RrdpoInputError(f"{path}: the video has no frames")
    return np.stack(frames), fps


def _read_any(path: str | os.PathLike, max_frames: int | None, gray: bool) -> tuple[np.ndarray, float]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTENSIONS:
        files = _image_files(p)[:max_frames] if p.is_dir() else [p]
        if gray:
            imgs = [_read_image(f, cv2.IMREAD_UNCHANGED) for f in files]
            imgs = [i if i.ndim == 2 else i[..., :3].max(axis=-1) for i in imgs]
        else:
            imgs = [cv2.cvtColor(_read_image(f), cv2.COLOR_BGR2RGB) for f in files]
        shapes = {i.shape for i in imgs}
        if len(shapes) > 1:
            raise RrdpoInputError(f"{p}: frames have different sizes {sorted(shapes)[:3]}; all frames must match")
        if any(i.dtype != np.uint8 for i in imgs):
            # 16-bit masks holding 0/1 labels stay 0/1 (scaling them to 8 bits would round them to 0).
            labels = gray and all(int(i.max(initial=0)) <= 1 for i in imgs)
            scale = [255.0 / max(1, np.iinfo(i.dtype).max) for i in imgs]
            imgs = [i.astype(np.uint8) if labels else cv2.convertScaleAbs(i, alpha=a) for i, a in zip(imgs, scale)]
        return np.stack(imgs), DEFAULT_FPS
    rgb, fps = _read_video_file(p, max_frames)
    return (rgb.max(axis=-1) if gray else rgb), fps


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> Video:
    """Read an mp4 (or other ffmpeg-readable video), a folder of images, or one image.

    Folders give ``fps = 24`` (there is no rate in a folder of frames).
    """
    rgb, fps = _read_any(path, max_frames, gray=False)
    return Video(frames=to_tensor(rgb.astype(np.float32) / 255.0), fps=fps, source=str(path))


def read_masks(path: str | os.PathLike, size: tuple[int, int] | None = None, max_frames: int | None = None,
               threshold: int = 127, notes: list[str] | None = None) -> torch.Tensor:
    """Read hole masks as bool ``(T, H, W)`` (True = hole) from a video, a folder or one image.

    A pixel is hole where its brightest channel is above ``threshold`` (0..255): mask videos are
    usually lossy, so a mid-grey threshold ignores compression noise. Mask images (a folder or one
    file) whose maximum over all frames is 1 are 0/1 label images (DAVIS-style PNGs, most
    labelling tools): they are read as 0/1 (hole > 0), not as an empty 0/255 mask. A mask that is not all zero but never reaches
    the threshold is read as empty, with a note saying so. ``size = (height, width)`` resizes
    with nearest neighbour (as DiffuEraser does with its mask video). ``notes`` (a list), when
    given, receives one line per such decision, for the caller to show.
    """
    gray, _ = _read_any(path, max_frames, gray=True)
    peak = int(gray.max(initial=0))
    # Only image files hold exact labels; in a lossy mask video a stray 1 is compression noise.
    images = Path(path).is_dir() or Path(path).suffix.lower() in IMAGE_EXTENSIONS
    if peak == 1 and images:
        masks = gray > 0
        if notes is not None:
            notes.append(f"{path}: mask values are 0/1 (maximum 1), read as 0/1 labels (1 = hole), not 0/255")
    else:
        masks = gray > threshold
        if 0 < peak <= threshold and notes is not None:
            notes.append(f"{path}: the brightest mask pixel is {peak}, not above the threshold {threshold}: read as an "
                         f"empty mask. If it stores labels 0..{peak}, write it as 0/255 (hole = white)")
    if size is not None and tuple(masks.shape[1:]) != tuple(size):
        h, w = size
        masks = np.stack([cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
                          for m in masks])
    return torch.from_numpy(np.ascontiguousarray(masks))


def _to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = frames.detach().cpu().float().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_image(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> Path:
    """Write one RGB image (H, W, 3), float in [0, 1] or uint8, atomically."""
    path = Path(path)
    rgb = _to_uint8(image)
    ok, buf = cv2.imencode(path.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RrdpoInputError(f"{path}: OpenCV cannot encode images of this type; use .png or .jpg")
    with atomic_path(path, durable=False) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


def write_video(path: str | os.PathLike, frames: torch.Tensor | np.ndarray | Iterable[np.ndarray],
                fps: float = DEFAULT_FPS, crf: int = 16) -> Path:
    """Write frames ``(T, H, W, 3)`` (float [0, 1] or uint8) as a video file or a folder of PNGs.

    A path with a video extension becomes an H.264 file (yuv420p when width and height are even,
    so it plays everywhere; yuv444p otherwise, which keeps odd sizes exact). Any other path is a
    folder of ``00000.png``, ``00001.png``, ... (lossless).
    """
    path = Path(path)
    if isinstance(frames, (torch.Tensor, np.ndarray)):
        data = _to_uint8(frames)
    else:
        data = np.stack([_to_uint8(f) for f in frames])
    if data.ndim != 4 or data.shape[-1] != 3 or data.shape[0] == 0:
        raise RrdpoInputError(f"write_video: expected (T, H, W, 3) frames, got shape {tuple(data.shape)}")
    if not is_video_path(path):
        if path.exists() and not path.is_dir():
            raise RrdpoInputError(f"{path}: exists and is not a folder; give a folder or a .mp4 path")
        path.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(data):
            write_image(path / f"{i:05d}.png", frame)
        return path
    if not (fps > 0):
        raise RrdpoInputError(f"fps must be positive, got {fps}")
    import imageio_ffmpeg

    h, w = data.shape[1:3]
    pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
    with atomic_path(path, durable=False) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (w, h), fps=float(fps), codec="libx264", pix_fmt_out=pix_fmt, quality=None,
            macro_block_size=1, output_params=["-crf", str(int(crf))], ffmpeg_log_level="error")
        try:
            writer.send(None)
            try:
                for frame in data:
                    writer.send(np.ascontiguousarray(frame).tobytes())
            finally:
                writer.close()
        except (OSError, RuntimeError) as err:
            raise RrdpoInputError(f"{path}: ffmpeg could not write the video ({last_error_lines(str(err))}); check the "
                                  "free disk space, or write a folder of PNG frames instead") from None
    return path


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize float frames (T, H, W, 3): area filter when shrinking, bicubic when enlarging."""
    if frames.shape[1:3] == (height, width):
        return frames
    shrink = height * width < frames.shape[1] * frames.shape[2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return np.clip(np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in frames]), 0.0, 1.0)


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize bool masks (T, H, W); a target pixel is hole if any source pixel under it is (never shrinks holes)."""
    if masks.shape[1:] == (height, width):
        return masks
    out = [cv2.resize(m.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA) > 0 for m in masks]
    out = [o | (cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0)
           for o, m in zip(out, masks)]
    return np.stack(out)


def stack_side_by_side(images: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate equally tall (H, W, 3) images horizontally with a 4-px white gap."""
    h = images[0].shape[0]
    gap = np.ones((h, 4, 3), images[0].dtype) * (255 if images[0].dtype == np.uint8 else 1.0)
    parts: list[np.ndarray] = []
    for i, img in enumerate(images):
        if i:
            parts.append(gap)
        parts.append(img)
    return np.concatenate(parts, axis=1)
