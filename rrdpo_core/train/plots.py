"""Training curves as PNG (matplotlib's Agg canvas: no display needed).

``render_plots(records, out_dir)`` draws, from the JSONL records of :mod:`.logging`:

* ``loss``: total loss and the SFT anchor; L_dpo with its step-0 value ln 2;
* ``dgr``: the DPO gradient coefficient, with beta/2 (its value at s = 0);
* ``gaps``: win_gap (want < 0), lose_gap (want > 0) and s;
* ``zone_errors``: winner error per zone, model (solid) vs reference (dashed);
* ``dpo_share``: the DPO share of the winner's gradient coefficient per zone;
* ``accuracy``: implicit accuracy and the loser-dominant ratio;
* ``dashboard``: all panels in one image.

Noisy curves get an exponential moving average drawn over the raw values.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..fsutil import atomic_write_bytes
from ..visualize import figure_rgb, new_figure

__all__ = ["render_plots", "plots_image", "PLOT_NAMES"]

PLOT_NAMES = ("dgr", "gaps", "loss", "zone_errors", "dpo_share", "accuracy")  # grid order; loss last in row 1
# so its right-hand axis (L_dpo) has the figure margin to itself
ZONES = ("hole", "boundary", "context")
_COLORS = {"hole": "tab:red", "boundary": "tab:orange", "context": "tab:blue"}


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(int(r.get("step", len(xs))))
            ys.append(float(v))
    return xs, ys


def _ema(ys: list[float], n: int) -> list[float]:
    if not ys:
        return ys
    a = 2.0 / (max(2, n) + 1.0)
    out, m = [], ys[0]
    for y in ys:
        m = a * y + (1 - a) * m
        out.append(m)
    return out


def _line(ax, records, key, label=None, style="-", color=None, smooth=True):
    xs, ys = _series(records, key)
    if not xs:
        return False
    n = len(xs)
    if smooth and n >= 20:
        ax.plot(xs, ys, style, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(xs, _ema(ys, max(5, n // 20)), style, color=color, label=label or key, linewidth=1.5)
    else:
        ax.plot(xs, ys, style, color=color, label=label or key, linewidth=1.3, marker="." if n < 40 else None)
    return True


def _write_png(rgb: "np.ndarray", path: Path) -> Path:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:  # pragma: no cover
        raise RuntimeError(f"could not encode {path}")
    return atomic_write_bytes(path, buf.tobytes())


def plots_image(paths: dict[str, str | os.PathLike]) -> np.ndarray:
    """The PNGs of :func:`render_plots` as one picture, ``(H, W, 3)`` float32 RGB in [0, 1].

    The dashboard alone when there is one (it holds every panel); otherwise the panels side by
    side, top-aligned on white. Unreadable files are left out; with none a 64x64 black image.
    """
    import cv2

    if "dashboard" in paths:
        paths = {"dashboard": paths["dashboard"]}
    images = []
    for path in paths.values():
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is not None:
            images.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    if not images:
        return np.zeros((64, 64, 3), np.float32)
    height = max(i.shape[0] for i in images)
    padded = [np.pad(i, ((0, height - i.shape[0]), (0, 0), (0, 0)), constant_values=255) for i in images]
    return np.concatenate(padded, axis=1).astype(np.float32) / 255.0


def render_plots(
    records: Sequence[dict[str, Any]], out_dir: str | os.PathLike, beta: float | None = None
) -> dict[str, Path]:
    """Draw the training curves into ``out_dir``.

    Returns ``{name: png path}``: one PNG per panel that has data (``loss``, ``dgr``, ``gaps``,
    ``zone_errors``, ``dpo_share``, ``accuracy``) and ``dashboard`` with all of them. The figure
    is drawn once and the panels are cut out of it (drawing is the slow part).
    """
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not records:
        return {}
    fig = new_figure(16.5, 8.4, dpi=90)  # Agg canvas, no pyplot: safe in ComfyUI's worker thread
    grid = fig.subplots(2, 3, squeeze=False)
    fig.subplots_adjust(left=0.05, right=0.95, top=0.95, bottom=0.07, wspace=0.3, hspace=0.32)
    panels = dict(zip(PLOT_NAMES, grid.reshape(-1)))
    for ax in panels.values():
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    drew: dict[str, bool] = {}

    ax = panels["loss"]
    ax.set_title("Loss (total, SFT anchor) and L_dpo (right)", fontsize=10)
    drew["loss"] = _line(ax, records, "loss", "loss (total)", color="tab:blue")
    drew["loss"] |= _line(ax, records, "sft", "L_sft", color="tab:orange")
    if _series(records, "dpo")[0]:
        ax2 = ax.twinx()
        _line(ax2, records, "dpo", "L_dpo", color="tab:purple")
        ax2.axhline(math.log(2), color="tab:purple", linestyle=":", linewidth=0.8)
        ax2.set_ylabel("L_dpo (dotted: ln 2)", color="tab:purple")
        drew["loss"] = True

    ax = panels["dgr"]
    ax.set_title("DPO gradient coefficient DGR (dotted: beta/2)", fontsize=10)
    drew["dgr"] = _line(ax, records, "dgr", "DGR")
    if drew["dgr"] and beta:
        ax.axhline(beta / 2, color="gray", linestyle=":")

    ax = panels["gaps"]
    ax.set_title("Implicit reward gaps", fontsize=10)
    drew["gaps"] = _line(ax, records, "win_gap", "win_gap (want < 0)", color="tab:green")
    drew["gaps"] |= _line(ax, records, "lose_gap", "lose_gap (want > 0)", color="tab:red")
    drew["gaps"] |= _line(ax, records, "s", "s = win - lose", color="black")
    if drew["gaps"]:
        ax.axhline(0.0, color="gray", linewidth=0.8)

    ax = panels["zone_errors"]
    ax.set_title("Winner error per zone: model (solid) vs reference (dashed)", fontsize=10)
    drew["zone_errors"] = False
    for z in ZONES:
        drew["zone_errors"] |= _line(ax, records, f"e_{z}_model", f"{z}", "-", _COLORS[z])
        _line(ax, records, f"e_{z}_ref", "_nolegend_", "--", _COLORS[z])
    if drew["zone_errors"] and all(v > 0 for z in ZONES for v in _series(records, f"e_{z}_model")[1]):
        ax.set_yscale("log")

    ax = panels["dpo_share"]
    ax.set_title("DPO share of the winner's gradient coefficient", fontsize=10)
    drew["dpo_share"] = False
    for z in ZONES:
        drew["dpo_share"] |= _line(ax, records, f"dpo_share_{z}", z, "-", _COLORS[z])
    ax.set_ylim(-0.02, 1.02)

    ax = panels["accuracy"]
    ax.set_title("Implicit accuracy, loser-dominant ratio", fontsize=10)
    drew["accuracy"] = _line(ax, records, "implicit_acc", "implicit accuracy")
    drew["accuracy"] |= _line(ax, records, "loser_dominant_ratio", "loser-dominant ratio")
    ax.set_ylim(-0.02, 1.02)

    for name, ax in panels.items():
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        if not drew[name]:
            ax.text(0.5, 0.5, "not logged by this objective", ha="center", va="center", transform=ax.transAxes,
                    color="gray")
    rgb = figure_rgb(fig)
    paths = {"dashboard": _write_png(rgb, out_dir / "dashboard.png")}
    # Each panel's image is its grid cell: from half-way to the neighbouring panel (or the
    # figure edge) on every side, so tick labels and titles come along without a layout pass.
    h_px, w_px = rgb.shape[:2]
    boxes = {name: ax.get_position() for name, ax in panels.items()}
    xs = sorted({round(b.x0, 4) for b in boxes.values()} | {round(b.x1, 4) for b in boxes.values()})
    ys = sorted({round(b.y0, 4) for b in boxes.values()} | {round(b.y1, 4) for b in boxes.values()})

    def cut(v: float, edges: list[float], lower: bool, share: float) -> float:
        """Split the gap to the neighbour: ``share`` of it goes to the lower-coordinate panel."""
        v = round(v, 4)
        i = edges.index(v)
        if lower:
            return 0.0 if i == 0 else edges[i - 1] + share * (v - edges[i - 1])
        return 1.0 if i == len(edges) - 1 else v + share * (edges[i + 1] - v)

    for name, b in boxes.items():
        if not drew[name]:
            continue
        # Horizontally most of a gap holds the right panel's tick labels; vertically the upper
        # panel's "step" label and the lower panel's title share it.
        x0, x1 = int(cut(b.x0, xs, True, 0.15) * w_px), int(math.ceil(cut(b.x1, xs, False, 0.15) * w_px))
        y0, y1 = int((1 - cut(b.y1, ys, False, 0.5)) * h_px), int(math.ceil((1 - cut(b.y0, ys, True, 0.5)) * h_px))
        paths[name] = _write_png(rgb[y0:y1, x0:x1], out_dir / f"{name}.png")
    return paths
