"""How much memory DiffuEraser needs, and which offload level fits the memory there is.

The model has two parts:

* **Weights** are counted exactly: the networks are built on PyTorch's ``meta`` device from
  their configs (no memory, no weights read) and their parameter and buffer bytes summed in
  the compute dtype. For block offloading only the largest group of blocks (plus the
  networks' top-level modules, which diffusers' group offloading keeps as one group) sits on
  the device at a time.
* **Activations** are linear in the number of latent pixels of a window (frames x h x w) and,
  at fixed channel proportions (the released 1:2:4:4), linear in the width of the first block.
  The two coefficients of that line are *measured*, not chosen: :func:`calibrate` runs
  scaled-down networks (released proportions, first block 32 and 64 channels, the released
  one has 320) on the CPU under :class:`PeakTensorMemory`, which records the largest number of
  tensor bytes alive at once, and fits the line. ``memory_calibration.json`` next to this file
  holds the fit and the points it came from; ``python -m rrdpo_core.memory --calibrate``
  measures it again. The same is done for training (activations kept for the backward pass,
  with and without gradient checkpointing) and for the SD1.5 VAE (per image pixel).

On a GPU, PyTorch's SDPA attention does not hold the attention matrix either, so the linear
law carries over; the caching allocator adds fragmentation, covered by :data:`SAFETY`.

``choose_offload(free_bytes, ...)`` picks the least offloading that fits (``"auto"``).
"""
from __future__ import annotations

import json
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .fsutil import atomic_write_text

__all__ = [
    "OFFLOAD_LEVELS",
    "SAFETY",
    "PeakTensorMemory",
    "LinearLaw",
    "Calibration",
    "load_calibration",
    "calibrate",
    "NetworkSizes",
    "network_sizes",
    "MemoryEstimate",
    "estimate_sampling",
    "estimate_training",
    "choose_offload",
    "choose_cpu_offload",
    "available_ram",
    "DEVICE_LEVELS",
    "TrainPreset",
    "choose_train_preset",
]

# Offload levels, least to most offloading:
#   "none":    both networks resident, the video's latents on the compute device;
#   "windows": networks resident, the video's latents on the offload device, one window on the
#              device at a time, the VAE one frame at a time;
#   "blocks":  as "windows", plus block-wise (group) offloading of BrushNet and the motion UNet;
#   "stream":  as "windows", and the layers of BrushNet's and the UNet's blocks are read from their
#              safetensors files for each forward and dropped after (rrdpo_core.streaming): neither the
#              compute device nor the CPU holds more than one layer of them. Picked by "auto" on the CPU
#              when RAM is short; GPU "auto" stays with the first three.
OFFLOAD_LEVELS = ("none", "windows", "blocks", "stream")
DEVICE_LEVELS = OFFLOAD_LEVELS[:3]
# Fraction of the free memory a plan may use: room for the allocator's fragmentation, CUDA
# context growth and the small tensors this model does not count.
SAFETY = 0.85
CALIBRATION_FILE = Path(__file__).resolve().parent / "memory_calibration.json"
LATENT_SCALE = 8
VAE_TILE = 512  # diffusers' tile_sample_min_size for the SD1.5 VAE (config sample_size)


# ------------------------------------------------------------------------------------------
# Measuring


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage created inside the ``with`` block and alive at once.

    Every tensor an operator returns is counted once per storage until the tensor is freed. It
    measures what the computation itself allocates (what ``torch.cuda.max_memory_allocated``
    would add on a GPU), on any device, without the noise of the process's RSS. Tensors that
    existed before (weights, inputs) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self._live:  # empty, or a view of a counted storage
            return
        nbytes = storage.nbytes()
        self._live[key] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(t, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)


@dataclass(frozen=True)
class LinearLaw:
    """Elements alive at the peak, per pixel (latent pixel x frame, or image pixel), as
    ``per_width * width + base`` where ``width`` is the first block's channel count, plus a part
    that does not grow with the pixels, measured as a fraction of the network's weight bytes
    (``fixed_per_weight_byte``: e.g. the time embedding and text context, or, in training,
    copies autograd keeps of the weights)."""

    per_width: float
    base: float
    fixed_per_weight_byte: float = 0.0
    # Largest elements-per-pixel / width ratio measured: used instead of the line when the line
    # does not grow with the width (then extrapolating it to the released width would make no sense;
    # activations of a network at fixed proportions grow at most linearly with its width).
    max_ratio: float = 0.0

    def elements_per_pixel(self, width: int) -> float:
        if self.per_width <= 0:
            return self.max_ratio * width
        return max(0.0, self.per_width * width + self.base)

    @classmethod
    def fit(cls, points: Sequence[tuple[int, float]], fixed_per_weight_byte: float = 0.0) -> "LinearLaw":
        """Least-squares line through ``(width, elements per pixel)`` points (two widths at least)."""
        widths = {w for w, _ in points}
        if len(widths) < 2:
            raise ValueError("fitting a memory law needs measurements at two widths at least")
        x = torch.tensor([float(w) for w, _ in points], dtype=torch.float64)
        y = torch.tensor([float(v) for _, v in points], dtype=torch.float64)
        a = torch.stack([x, torch.ones_like(x)], dim=1)
        sol = torch.linalg.lstsq(a, y[:, None]).solution[:, 0]
        return cls(float(sol[0]), float(sol[1]), float(fixed_per_weight_byte),
                   max(float(v) / float(w) for w, v in points))

    def bytes(self, width: int, pixels: int, element_size: int, weight_bytes: int = 0) -> int:
        return int(self.elements_per_pixel(width) * pixels * element_size
                   + self.fixed_per_weight_byte * weight_bytes)


@dataclass
class Calibration:
    """Measured activation laws (see the module docstring) and the measurements behind them."""

    denoise: LinearLaw
    train: LinearLaw
    train_checkpointed: LinearLaw
    vae_decode: LinearLaw
    vae_encode: LinearLaw
    points: list[dict[str, Any]] = field(default_factory=list)
    torch_version: str = ""

    def to_json(self, path: str | Path) -> Path:
        p = Path(path)
        data = {k: (asdict(v) if isinstance(v, LinearLaw) else v) for k, v in asdict(self).items()}
        return atomic_write_text(p, json.dumps(data, indent=1) + "\n")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        laws = {k: LinearLaw(**data[k]) for k in ("denoise", "train", "train_checkpointed", "vae_decode", "vae_encode")}
        return cls(**laws, points=list(data.get("points", [])), torch_version=str(data.get("torch_version", "")))


def load_calibration(path: str | Path | None = None) -> Calibration:
    p = Path(path) if path is not None else CALIBRATION_FILE
    if not p.is_file():
        raise FileNotFoundError(f"memory calibration not found at {p}; make it with "
                                "`python -m rrdpo_core.memory --calibrate`")
    return Calibration.from_dict(json.loads(p.read_text(encoding="utf-8")))


def _scaled_configs(width: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tiny test configs with the released channel proportions 1:2:4:4 at ``width``."""
    from .models.diffueraser import packaged_config

    channels = [width, 2 * width, 4 * width, 4 * width]
    brush, unet = packaged_config("brushnet_tiny"), packaged_config("unet_main_tiny")
    brush["block_out_channels"] = unet["block_out_channels"] = channels
    return brush, unet


def _build_denoiser(width: int, seed: int = 0):
    from .models.diffueraser import DiffuEraserModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DiffuEraserModel.from_configs(*_scaled_configs(width)).eval()


def measure_denoise(model: Any, frames: int, h: int, w: int, mode: str = "denoise") -> int:
    """Peak activation bytes of one ``predict_eps`` on a window (``mode``: ``denoise``, ``train``,
    ``train_checkpointed``); the model runs in its own dtype on its own device."""
    gen = torch.Generator().manual_seed(0)
    dim = int(model.cross_attention_dim)
    x = torch.randn(frames, 4, h, w, generator=gen).to(model.device, model.dtype)
    cond = torch.randn(frames, 5, h, w, generator=gen).to(model.device, model.dtype)
    text = torch.randn(1, 77, dim, generator=gen).to(model.device, model.dtype)
    if mode == "denoise":
        with torch.no_grad(), PeakTensorMemory() as meter:
            model.predict_eps(x, 500, text, cond, frames)
        return meter.peak
    if mode not in ("train", "train_checkpointed"):
        raise ValueError(f"mode must be denoise, train or train_checkpointed, got {mode!r}")
    unet = model.unet
    # Gradients flow through the whole UNet as they do to LoRA layers spread over it; BrushNet
    # is frozen and gets no gradient (as in training).
    first = unet.conv_in.weight
    was_ckpt = bool(getattr(unet, "is_gradient_checkpointing", False))
    first.requires_grad_(True)
    if mode == "train_checkpointed":
        unet.enable_gradient_checkpointing()
    unet.train()
    try:
        with torch.enable_grad(), PeakTensorMemory() as meter:
            model.predict_eps(x, 500, text, cond, frames).float().square().mean().backward()
    finally:
        first.requires_grad_(False)
        first.grad = None
        unet.eval()
        if mode == "train_checkpointed" and not was_ckpt:
            unet.disable_gradient_checkpointing()
    return meter.peak


def _build_vae(width: int, seed: int = 0):
    from diffusers import AutoencoderKL

    groups = 8 if width < 32 else 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                             block_out_channels=(width, 2 * width, 4 * width, 4 * width), layers_per_block=2,
                             norm_num_groups=groups, sample_size=512).eval()


def measure_vae(vae: Any, frames: int, height: int, width: int, which: str) -> int:
    """Peak activation bytes of one diffusers AutoencoderKL decode or encode of ``frames`` images."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if which == "decode":
            z = torch.randn(frames, 4, height // LATENT_SCALE, width // LATENT_SCALE, generator=gen).to(vae.dtype)
            with PeakTensorMemory() as meter:
                vae.decode(z)
        else:
            img = torch.rand(frames, 3, height, width, generator=gen).to(vae.dtype) * 2 - 1
            with PeakTensorMemory() as meter:
                vae.encode(img).latent_dist.mode()
    return meter.peak


def calibrate(widths: Iterable[int] = (32, 64), vae_widths: Iterable[int] = (16, 32), frames: tuple[int, int] = (2, 4),
              latent_hw: tuple[int, int] = (16, 16), log: Any = None) -> Calibration:
    """Measure the activation laws on the CPU in float32 (see the module docstring).

    Each network is measured at two frame counts: the difference gives the bytes per pixel
    (the slope, fitted as a line in the width), the rest the part that does not grow with the
    pixels (kept as the largest fraction of the weight bytes seen).
    """
    h, w = latent_hw
    f1, f2 = frames
    points: list[dict[str, Any]] = []
    slopes: dict[str, list[tuple[int, float]]] = {m: [] for m in ("denoise", "train", "train_checkpointed",
                                                               "vae_decode", "vae_encode")}
    fixed: dict[str, float] = {m: 0.0 for m in slopes}

    def record(mode: str, width: int, weight_bytes: int, peaks: tuple[int, int], px: tuple[int, int], **where) -> None:
        per_px = (peaks[1] - peaks[0]) / (px[1] - px[0])  # bytes per pixel, float32
        slopes[mode].append((width, per_px / 4))
        fixed[mode] = max(fixed[mode], max(0.0, peaks[1] - per_px * px[1]) / weight_bytes)
        for n, peak in zip(frames, peaks):
            points.append({"mode": mode, "width": width, "frames": n, **where, "peak_bytes": peak,
                           "weight_bytes": weight_bytes})
            if log:
                log(points[-1])

    for width in widths:
        model = _build_denoiser(width)
        wb = _bytes(list(model.parameters()) + list(model.buffers()), None)
        for mode in ("denoise", "train", "train_checkpointed"):
            peaks = tuple(measure_denoise(model, n, h, w, mode) for n in frames)
            record(mode, width, wb, peaks, (f1 * h * w, f2 * h * w), h=h, w=w)
        del model
    H, W = h * LATENT_SCALE, w * LATENT_SCALE
    for width in vae_widths:
        vae = _build_vae(width)
        wb = _bytes(list(vae.parameters()) + list(vae.buffers()), None)
        for which in ("decode", "encode"):
            peaks = tuple(measure_vae(vae, n, H, W, which) for n in frames)
            record(f"vae_{which}", width, wb, peaks, (f1 * H * W, f2 * H * W), h=H, w=W)
        del vae
    laws = {mode: LinearLaw.fit(pts, fixed[mode]) for mode, pts in slopes.items()}
    return Calibration(**laws, points=points, torch_version=torch.__version__)


# ------------------------------------------------------------------------------------------
# Counting weights


@dataclass(frozen=True)
class NetworkSizes:
    """Bytes of the weights in the compute dtype, and what block offloading keeps on the device."""

    brushnet: int
    unet: int
    brushnet_largest_group: int  # top-level group + largest block, as diffusers' block-level offloading loads them
    unet_largest_group: int
    width: int  # first block's channel count

    @property
    def total(self) -> int:
        return self.brushnet + self.unet


def _bytes(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None) -> int:
    total = 0
    for t in tensors:
        size = torch.empty((), dtype=dtype).element_size() if dtype is not None and t.is_floating_point() \
            else t.element_size()
        total += t.numel() * size
    return total


def _group_bytes(net: torch.nn.Module, dtype: torch.dtype | None) -> int:
    """Top-level modules (one group in diffusers' block offloading) + the largest block of a ModuleList."""
    top, largest = 0, 0
    for child in net.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            for block in child:
                largest = max(largest, _bytes(list(block.parameters()) + list(block.buffers()), dtype))
        else:
            top += _bytes(list(child.parameters()) + list(child.buffers()), dtype)
    top += _bytes(list(net.parameters(recurse=False)) + list(net.buffers(recurse=False)), dtype)
    return top + largest


def network_sizes(model: Any = None, dtype: torch.dtype | None = None,
                  configs: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None) -> NetworkSizes:
    """Weight bytes of a loaded ``DiffuEraserModel`` (``model``) or of configs (built on ``meta``).

    ``dtype`` overrides the dtype of floating-point weights (default: as they are; float32 for
    configs).
    """
    if model is None:
        from .models.diffueraser import DiffuEraserModel, packaged_config

        brush_cfg, unet_cfg = configs if configs is not None else (packaged_config("brushnet"),
                                                                   packaged_config("unet_main"))
        with torch.device("meta"):
            model = DiffuEraserModel.from_configs(dict(brush_cfg), dict(unet_cfg))
    brush, unet = model.brushnet, model.unet

    def all_bytes(net: torch.nn.Module) -> int:
        return _bytes(list(net.parameters()) + list(net.buffers()), dtype)

    width = int(list(unet.config.block_out_channels)[0])
    return NetworkSizes(all_bytes(brush), all_bytes(unet), _group_bytes(brush, dtype), _group_bytes(unet, dtype), width)


# ------------------------------------------------------------------------------------------
# Estimates


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak device bytes of one plan, by part."""

    level: str
    weights: int
    activations: int
    latents: int
    vae: int

    @property
    def total(self) -> int:
        # The VAE runs before and after the denoiser, not during it.
        return self.weights + self.latents + max(self.activations, self.vae)

    def describe(self) -> str:
        gib = 1024 ** 3
        return (f"{self.level}: {self.total / gib:.2f} GiB (weights {self.weights / gib:.2f}, activations "
                f"{self.activations / gib:.2f}, VAE {self.vae / gib:.2f}, latents {self.latents / gib:.2f})")


def sd15_vae_bytes(dtype: torch.dtype) -> int:
    """Weight bytes of the SD1.5 VAE (counted on the meta device)."""
    from diffusers import AutoencoderKL

    from .vae import SD15_VAE_CONFIG

    with torch.device("meta"):
        vae = AutoencoderKL(**{k: v for k, v in SD15_VAE_CONFIG.items() if k != "scaling_factor"})
    return _bytes(list(vae.parameters()) + list(vae.buffers()), dtype)


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def estimate_sampling(height: int, width: int, num_frames: int, *, level: str = "none",
                      dtype: torch.dtype = torch.float16, window: int = 22, sizes: NetworkSizes | None = None,
                      vae_width: int = 128, vae_frames: int = 1, guidance: bool = False,
                      vae_tiling: bool = False, calibration: Calibration | None = None) -> MemoryEstimate:
    """Peak device memory of sampling ``num_frames`` frames of ``height`` x ``width`` at ``level``.

    ``sizes`` defaults to the released networks; ``vae_width`` is the first VAE block's channels
    (128 for SD1.5); ``vae_frames`` the frames per VAE call (1 below "none"); ``guidance`` doubles
    the batch; ``vae_tiling`` bounds the VAE's activations by one 512x512 tile.
    """
    if level not in OFFLOAD_LEVELS:
        raise ValueError(f"level must be one of {OFFLOAD_LEVELS}, got {level!r}")
    cal = calibration or load_calibration()
    sizes = sizes or network_sizes(dtype=dtype)
    e = _elem(dtype)
    h, w = height // LATENT_SCALE, width // LATENT_SCALE
    frames = min(window, num_frames) * (2 if guidance else 1)
    acts = cal.denoise.bytes(sizes.width, frames * h * w, e, sizes.total)
    # "stream" holds less than "blocks" (one layer, not one block, beside the top-level parts); counted
    # the same way, which errs on the safe side.
    weights = sizes.total if level in ("none", "windows") else sizes.brushnet_largest_group + sizes.unet_largest_group
    # Video-long tensors (fp32): latents, condition (5 ch), eps accumulator, prior latents.
    latents = 0 if level != "none" else int(num_frames * h * w * (4 + 5 + 4 + 4) * 4)
    vae_pixels = (min(height * width, VAE_TILE * VAE_TILE) if vae_tiling else height * width) * vae_frames
    vae_weights = sd15_vae_bytes(dtype) if vae_width == 128 else 0
    vae = vae_weights + max(cal.vae_decode.bytes(vae_width, vae_pixels, e, vae_weights),
                            cal.vae_encode.bytes(vae_width, vae_pixels, e, vae_weights))
    return MemoryEstimate(level, weights, acts, latents, vae)


def choose_offload(free_bytes: int, height: int, width: int, num_frames: int, **kwargs: Any
                   ) -> tuple[str, MemoryEstimate]:
    """The least offloading whose estimate fits ``SAFETY * free_bytes`` ("blocks" if none fits).

    For a GPU: the levels of :data:`DEVICE_LEVELS`. The CPU's choice is :func:`choose_cpu_offload`.
    """
    estimates = [estimate_sampling(height, width, num_frames, level=lvl, **kwargs) for lvl in DEVICE_LEVELS]
    for est in estimates:
        if est.total <= SAFETY * free_bytes:
            return est.level, est
    return estimates[-1].level, estimates[-1]


def choose_cpu_offload(free_bytes: int, height: int, width: int, num_frames: int, *, resident_bytes: int = 0,
                       **kwargs: Any) -> tuple[str, MemoryEstimate]:
    """CPU sampling: ``"none"`` if what sampling adds fits ``SAFETY * free_bytes``, else ``"stream"``.

    ``resident_bytes``: the weights already in RAM (a loaded model), which the free memory no
    longer counts. "windows" and "blocks" only move things between devices, which on the CPU saves
    nothing; "stream" gives the RAM of the block weights back while sampling.
    """
    none = estimate_sampling(height, width, num_frames, level="none", **kwargs)
    if none.total - min(resident_bytes, none.weights) <= SAFETY * free_bytes:
        return "none", none
    return "stream", estimate_sampling(height, width, num_frames, level="stream", **kwargs)


def available_ram() -> int | None:
    """MemAvailable of this machine in bytes (Linux), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimate_training(height: int, width: int, frames: int, *, pair_passes: str = "joint",
                      gradient_checkpointing: bool = False, dtype: torch.dtype = torch.float16,
                      sizes: NetworkSizes | None = None, calibration: Calibration | None = None) -> int:
    """Peak device bytes of one training micro-batch (one pair) on clips of ``frames`` frames.

    ``joint`` puts winner and loser through the trained UNet as one batch (2x frames with
    gradients); ``sequential`` one after the other. The reference pass runs without gradients
    and is over before the policy pass, so only the larger of the two counts.
    """
    cal = calibration or load_calibration()
    sizes = sizes or network_sizes(dtype=dtype)
    e = _elem(dtype)
    h, w = height // LATENT_SCALE, width // LATENT_SCALE
    with_grad = frames * (2 if pair_passes == "joint" else 1)
    law = cal.train_checkpointed if gradient_checkpointing else cal.train
    train_acts = law.bytes(sizes.width, with_grad * h * w, e, sizes.total)
    ref_acts = cal.denoise.bytes(sizes.width, with_grad * h * w, e, sizes.total)
    return int(sizes.total + max(train_acts, ref_acts))


@dataclass(frozen=True)
class TrainPreset:
    """Memory settings of the trainer chosen from free memory."""

    gradient_checkpointing: bool
    pair_passes: str
    num_frames: int
    estimate: int
    fits: bool

    def describe(self) -> str:
        return (f"gradient_checkpointing={self.gradient_checkpointing}, pair_passes={self.pair_passes}, "
                f"frames per clip={self.num_frames or 'all'} (estimate {self.estimate / 1024 ** 3:.2f} GiB"
                f"{'' if self.fits else ', does not fit: expect out-of-memory'})")


def choose_train_preset(free_bytes: int, height: int, width: int, clip_frames: int, **kwargs: Any) -> TrainPreset:
    """The fastest settings that fit ``SAFETY * free_bytes``: full clips, joint passes, no
    checkpointing first; then checkpointing; then sequential passes; then shorter clips (16, 8)."""
    budget = SAFETY * free_bytes
    candidates = [(False, "joint", 0), (True, "joint", 0), (True, "sequential", 0)]
    candidates += [(True, "sequential", n) for n in (16, 8) if n < clip_frames]
    last = None
    for ckpt, passes, n in candidates:
        est = estimate_training(height, width, n or clip_frames, pair_passes=passes, gradient_checkpointing=ckpt,
                                **kwargs)
        last = TrainPreset(ckpt, passes, n, est, est <= budget)
        if last.fits:
            return last
    return last  # nothing fits: the most frugal, marked as not fitting


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m rrdpo_core.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calibrate", action="store_true", help=f"measure the activation laws into {CALIBRATION_FILE.name}")
    p.add_argument("--out", default=str(CALIBRATION_FILE))
    args = p.parse_args(argv)
    if args.calibrate:
        cal = calibrate(log=lambda pt: print(json.dumps(pt), flush=True))
        print(f"wrote {cal.to_json(args.out)}")
    for size in ((360, 640), (720, 1280)):
        for level in OFFLOAD_LEVELS:
            print(f"{size[1]}x{size[0]} x 22 frames, fp16, {estimate_sampling(*size, 22, level=level).describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
