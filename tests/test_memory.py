"""The memory model (rrdpo_core.memory): its meter, its measured laws and the choices made from them."""
from __future__ import annotations

import pytest
import torch

from rrdpo_core import memory
from rrdpo_core.memory import (LinearLaw, PeakTensorMemory, choose_offload, choose_train_preset, estimate_sampling,
                               estimate_training, load_calibration, network_sizes)
from rrdpo_core.models.diffueraser import packaged_config
from rrdpo_core.models.testing import tiny_diffueraser


def test_peak_meter_counts_live_tensors_only():
    with PeakTensorMemory() as meter:
        a = torch.ones(1000)  # 4000 bytes
        b = torch.ones(2000)  # 8000 bytes: 12000 alive
        del a
        c = torch.ones(500)  # 2000 bytes: 10000 alive
        v = b[:10]  # a view allocates nothing
        assert meter.current == 10000
    assert meter.peak == 12000
    del b, c, v


def test_law_measured_at_two_widths_predicts_a_third():
    def per_pixel(width: int) -> float:
        model = memory._build_denoiser(width)
        p1, p2 = (memory.measure_denoise(model, n, 8, 8) for n in (2, 4))
        return (p2 - p1) / (2 * 8 * 8) / 4

    law = LinearLaw.fit([(32, per_pixel(32)), (64, per_pixel(64))])
    predicted, measured = law.elements_per_pixel(96), per_pixel(96)
    assert abs(predicted - measured) / measured < 0.1


def test_stored_calibration_matches_a_fresh_measurement():
    cal = load_calibration()
    model = memory._build_denoiser(32)
    p1, p2 = (memory.measure_denoise(model, n, 16, 16) for n in (2, 4))
    fresh = (p2 - p1) / (2 * 16 * 16) / 4
    assert abs(cal.denoise.elements_per_pixel(32) - fresh) / fresh < 0.05
    assert cal.train.elements_per_pixel(320) > cal.denoise.elements_per_pixel(320)


def test_network_sizes_from_configs_equal_the_loaded_model():
    model = tiny_diffueraser()
    loaded = network_sizes(model)
    from_cfg = network_sizes(configs=(packaged_config("brushnet_tiny"), packaged_config("unet_main_tiny")))
    assert loaded == from_cfg
    assert loaded.total == sum(t.numel() * 4 for t in list(model.parameters()) + list(model.buffers()))
    assert 0 < loaded.unet_largest_group < loaded.unet and 0 < loaded.brushnet_largest_group < loaded.brushnet
    half = network_sizes(model, dtype=torch.float16)
    assert half.total * 2 == loaded.total


def test_estimates_grow_with_size_and_shrink_with_offloading():
    small = estimate_sampling(360, 640, 22, level="none")
    big = estimate_sampling(720, 1280, 22, level="none")
    assert big.activations == pytest.approx(4 * small.activations, rel=0.01)
    blocks = estimate_sampling(720, 1280, 22, level="blocks")
    assert blocks.total < big.total and blocks.activations == big.activations
    assert estimate_sampling(720, 1280, 200, level="windows").latents == 0
    assert estimate_sampling(720, 1280, 200, level="none").latents > 0
    gib = 1024 ** 3
    assert choose_offload(1000 * gib, 720, 1280, 22)[0] == "none"
    assert choose_offload(int(blocks.total / memory.SAFETY) + 1, 720, 1280, 22)[0] == "blocks"
    with pytest.raises(ValueError, match="level must be one of"):
        estimate_sampling(64, 64, 22, level="some")


def test_training_preset_trades_speed_for_memory():
    gib = 1024 ** 3
    joint = estimate_training(256, 256, 22)
    assert estimate_training(256, 256, 22, pair_passes="sequential") < joint
    assert estimate_training(256, 256, 22, gradient_checkpointing=True) < joint
    rich = choose_train_preset(10_000 * gib, 256, 256, 22)
    assert (rich.gradient_checkpointing, rich.pair_passes, rich.num_frames, rich.fits) == (False, "joint", 0, True)
    poor = choose_train_preset(1 * gib, 256, 256, 22)
    assert poor.gradient_checkpointing and poor.pair_passes == "sequential"
    assert not choose_train_preset(1, 256, 256, 22).fits
    assert "does not fit" in choose_train_preset(1, 256, 256, 22).describe()
