"""Training configuration: one dataclass, read from / written to JSON.

Every field has the default of spec/METHOD.md §3/§5 (seed §6.4) or of the DiffuEraser training
recipe (reference/diffueraser.md §3.1). Paths in a config file are resolved relative to the file.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..loss import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_RHO, RHO_MODES

__all__ = ["TrainConfig", "OBJECTIVES", "PAIR_PASSES", "LR_SCHEDULES", "MIXED_PRECISION", "RESUME_MODES"]

OBJECTIVES = ("region_reg_dpo", "sft")
PAIR_PASSES = ("joint", "sequential")
LR_SCHEDULES = ("constant", "linear", "cosine")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
RESUME_MODES = ("auto", "never")
_PATH_FIELDS = ("pairs_dir", "out_dir", "model_dir", "vae_path", "pcm_lora", "text_embeds")


@dataclass
class TrainConfig:
    """Settings of one Region-Reg-DPO LoRA training run.

    Model and data (used by the command line; the Python API takes the objects instead):
        pairs_dir: preference pairs built by ``rrdpo_core.pairs``.
        out_dir: where checkpoints, the log, plots and the final LoRA go.
        model_dir: DiffuEraser weights (``brushnet/`` + ``unet_main/``) for ``load_diffueraser``.
        vae_path: SD1.5 VAE; needed only when the pairs hold no latents.
        pcm_lora: optional acceleration LoRA (kohya format) loaded as adapter ``"pcm"``; it stays
            active in both the trained model and the reference.
        text_embeds: a safetensors file with the text context (key ``text_embeds``); default: the
            one stored with the pairs.

    Objective (spec/METHOD.md §3): ``objective`` ``"region_reg_dpo"`` or ``"sft"`` (region-weighted
    L2 on the winner only, no reference pass); ``alpha``/``rho`` per zone (hole, boundary,
    context), ``beta``, ``rho_mode``, ``band_px`` (boundary width in pixels).

    LoRA (§5): ``rank``, ``lora_alpha``, ``temporal`` (also adapt the motion modules' attention).

    Optimisation: AdamW (``learning_rate``, ``adam_betas``, ``adam_eps``, ``weight_decay``),
    ``warmup_steps`` then ``lr_schedule``; ``max_steps`` optimizer steps of ``batch_size`` pairs
    per process times ``grad_accum`` micro-batches; ``max_grad_norm`` clipping (0 = off);
    ``mixed_precision`` (``auto`` follows the model's dtype); ``gradient_checkpointing``;
    ``pair_passes``: ``"joint"`` runs winner and loser through the trained model as one batch
    (fastest), ``"sequential"`` one after the other with the winner's backward in between, so
    only one clip's activations are held at a time (same gradient; about half the activation
    memory for about one extra forward pass);
    ``num_frames`` (crop clips to this many frames; 0 = whole clip); ``timestep_range``
    (inclusive, sampled uniformly per clip and shared by the pair).

    Bookkeeping: ``checkpoint_every`` steps (0 = only at the end), ``keep_checkpoints``,
    ``plot_every`` (also at the end; ``plots=False`` draws none), ``resume`` (``"auto"`` continues from the newest checkpoint in ``out_dir``,
    ``"never"`` refuses a non-empty ``out_dir``, or a checkpoint folder), ``lora_name``.
    """

    pairs_dir: str | None = None
    out_dir: str | None = None
    model_dir: str | None = None
    vae_path: str | None = None
    pcm_lora: str | None = None
    text_embeds: str | None = None

    objective: str = "region_reg_dpo"
    alpha: tuple[float, float, float] = DEFAULT_ALPHA
    rho: tuple[float, float, float] = DEFAULT_RHO
    beta: float = DEFAULT_BETA
    rho_mode: str = "constant"
    band_px: int = 8

    rank: int = 16
    lora_alpha: float = 32.0
    temporal: bool = False

    learning_rate: float = 2e-6
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 1e-2
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    max_steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    pair_passes: str = "joint"
    num_frames: int = 0
    timestep_range: tuple[int, int] = (0, 999)
    brushnet_scale: float = 1.0
    seed: int = 0
    device: str | None = None

    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    plot_every: int = 50
    plots: bool = True
    resume: str = "auto"
    lora_name: str = "region_dpo_lora.safetensors"

    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.alpha = tuple(float(v) for v in self.alpha)  # type: ignore[assignment]
        self.rho = tuple(float(v) for v in self.rho)  # type: ignore[assignment]
        self.adam_betas = tuple(float(v) for v in self.adam_betas)  # type: ignore[assignment]
        self.timestep_range = tuple(int(v) for v in self.timestep_range)  # type: ignore[assignment]
        self.validate()

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"train config: {name} {why}")

        if self.objective not in OBJECTIVES:
            raise bad("objective", f"must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("alpha", "rho"):
            v = getattr(self, name)
            if len(v) != 3 or any(not math.isfinite(x) or x < 0 for x in v):
                raise bad(name, f"needs 3 finite non-negative weights (hole, boundary, context), got {list(v)}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise bad("beta", f"must be a finite positive number, got {self.beta}")
        if self.pair_passes not in PAIR_PASSES:
            raise bad("pair_passes", f"must be one of {PAIR_PASSES}, got {self.pair_passes!r}")
        if self.rho_mode not in RHO_MODES:
            raise bad("rho_mode", f"must be one of {RHO_MODES}, got {self.rho_mode!r}")
        for name in ("band_px", "warmup_steps", "num_frames", "checkpoint_every", "plot_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(name, f"must be a non-negative integer, got {v!r}")
        for name in ("rank", "max_steps", "batch_size", "grad_accum", "keep_checkpoints"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, f"must be a positive integer, got {v!r}")
        for name in ("lora_alpha", "learning_rate"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise bad(name, f"must be a finite positive number, got {v!r}")
        if not (0 <= self.adam_betas[0] < 1 and 0 <= self.adam_betas[1] < 1) or len(self.adam_betas) != 2:
            raise bad("adam_betas", f"needs two numbers in [0, 1), got {list(self.adam_betas)}")
        if not (self.weight_decay >= 0 and self.adam_eps > 0 and self.max_grad_norm >= 0):
            raise bad("weight_decay/adam_eps/max_grad_norm", "must be >= 0 (adam_eps > 0)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad("mixed_precision", f"must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        lo, hi = self.timestep_range if len(self.timestep_range) == 2 else (-1, -1)
        if not 0 <= lo <= hi <= 999:
            raise bad("timestep_range", f"needs 0 <= low <= high <= 999, got {list(self.timestep_range)}")
        if self.resume not in RESUME_MODES and not str(self.resume).strip():
            raise bad("resume", f"must be one of {RESUME_MODES} or a checkpoint folder, got {self.resume!r}")
        if not self.lora_name.endswith(".safetensors") or os.sep in self.lora_name:
            raise bad("lora_name", f"must be a file name ending in .safetensors, got {self.lora_name!r}")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> "TrainConfig":
        """Build from a mapping; unknown keys are an error (a typo must not be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"train config: unknown key(s) {unknown}; valid keys are {sorted(known)}")
        values = dict(data)
        if base_dir is not None:
            for key in _PATH_FIELDS:
                v = values.get(key)
                if isinstance(v, str) and v and not os.path.isabs(os.path.expanduser(v)):
                    values[key] = str(Path(base_dir) / v)
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"train config: {exc}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"train config not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of settings, got {type(data).__name__}")
        return cls.from_dict(data, base_dir=path.parent)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def to_json(self, path: str | os.PathLike) -> Path:
        from ..fsutil import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    # Settings that must not change when a run is resumed (they define the trajectory).
    TRAJECTORY_KEYS = (
        "objective", "alpha", "rho", "beta", "rho_mode", "band_px", "rank", "lora_alpha", "temporal",
        "learning_rate", "adam_betas", "adam_eps", "weight_decay", "warmup_steps", "lr_schedule",
        "batch_size", "grad_accum", "max_grad_norm", "num_frames", "timestep_range", "brushnet_scale", "seed",
        "pair_passes",
    )

    def trajectory(self) -> dict[str, Any]:
        d = self.to_dict()
        return {k: d[k] for k in self.TRAJECTORY_KEYS}
