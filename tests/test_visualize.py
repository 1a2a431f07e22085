"""Pictures drawn in the core library: figures without pyplot, the plots image, the dtype choice."""
from __future__ import annotations

import sys
import threading

import cv2
import numpy as np
import pytest
import torch

from rrdpo_core.precision import DTYPE_CHOICES, inference_dtype
from rrdpo_core.train.plots import plots_image
from rrdpo_core.visualize import figure_rgb, metrics_chart, new_figure


def test_metrics_chart_draws_from_a_worker_thread_without_pyplot(monkeypatch):
    import matplotlib

    def backend():  # as stored: reading it through get_backend() would import pyplot
        return dict.__getitem__(matplotlib.rcParams, "backend")

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # any pyplot import now fails
    before = backend()
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("chart", metrics_chart(
        {"psnr": {"hole": 21.5}, "ssim": 0.8, "flag": True}, title="t", width=300, height=160)))
    worker.start()
    worker.join()
    chart = out["chart"]
    assert chart.shape == (1, 160, 300, 3) and chart.dtype == torch.float32
    assert 0.0 <= float(chart.min()) < 0.5 < float(chart.max()) <= 1.0  # bars and text on white
    assert backend() == before  # the global backend is left alone


def test_figure_rgb_is_the_drawn_canvas():
    fig = new_figure(2.0, 1.0, dpi=50)
    fig.patch.set_facecolor((1.0, 0.0, 0.0))
    rgb = figure_rgb(fig)
    assert rgb.shape == (50, 100, 3) and rgb.dtype == np.uint8
    assert (rgb == np.array([255, 0, 0], np.uint8)).all()


def _png(path, rgb):
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


def test_plots_image_prefers_the_dashboard_and_pads_panels_on_white(tmp_path):
    tall = np.zeros((6, 4, 3), np.uint8)
    tall[..., 0] = 200
    short = np.zeros((3, 5, 3), np.uint8)
    short[..., 2] = 100
    panels = {"loss": _png(tmp_path / "a.png", tall), "dgr": _png(tmp_path / "b.png", short),
              "gaps": tmp_path / "missing.png"}
    img = plots_image(panels)
    assert img.shape == (6, 9, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img[:, :4], tall / np.float32(255))
    np.testing.assert_array_equal(img[:3, 4:], short / np.float32(255))
    assert (img[3:, 4:] == 1.0).all()  # the shorter panel is padded with white below
    board = plots_image({**panels, "dashboard": _png(tmp_path / "d.png", short)})
    np.testing.assert_array_equal(board, short / np.float32(255))
    assert plots_image({"loss": tmp_path / "missing.png"}).shape == (64, 64, 3)


def test_inference_dtype_is_float32_on_the_cpu_and_the_choice_on_a_gpu():
    assert [inference_dtype(c, "cpu") for c in DTYPE_CHOICES] == [torch.float32] * 4
    gpu = torch.device("cuda", 0)  # only the device type is looked at: no GPU needed
    assert [inference_dtype(c, gpu) for c in DTYPE_CHOICES] == [torch.float16, torch.float16, torch.bfloat16,
                                                               torch.float32]
    with pytest.raises(ValueError, match="fp16"):
        inference_dtype("float8", "cpu")
