"""The Region-DPO LoRA adapter and file format (rrdpo_core.region_lora), on the tiny DiffuEraser."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rrdpo_core import region_lora as rl
from rrdpo_core.lora import active_adapters, adapter_disabled, add_lora_adapter, list_adapters, remove_adapter
from rrdpo_core.models.testing import tiny_diffueraser

F, H, W = 3, 8, 8  # frames, latent size (64x64 pixels)


@pytest.fixture(scope="module")
def models():
    """Built once per module (building is the slow part); tests restore them (see ``model``)."""
    return {
        "base": tiny_diffueraser(0).requires_grad_(False),  # as load_diffueraser returns it
        "other": tiny_diffueraser(1).requires_grad_(False),
        "bf16": tiny_diffueraser(0, dtype=torch.bfloat16).requires_grad_(False),
    }


def _clean(model):
    for name in list_adapters(model.unet):
        remove_adapter(model.unet, name)
    model.requires_grad_(False)


@pytest.fixture
def model(models):
    yield models["base"]
    for m in models.values():
        _clean(m)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return dict(
        latents=torch.randn(2 * F, 4, H, W, generator=g),
        timestep=torch.tensor([100, 700]),
        text=torch.randn(1, 77, 32, generator=g),  # the tiny model's cross_attention_dim
        cond=torch.randn(2 * F, 5, H, W, generator=g),
    )


def eps(model, x):
    with torch.no_grad():
        return model.predict_eps(x["latents"], x["timestep"], x["text"], x["cond"], F)


def add_fake_pcm(model, seed=3):
    """A frozen, non-zero 'pcm' adapter on the spatial attention, like the PCM LoRA."""
    from peft import LoraConfig

    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=rl.lora_target_modules(model.unet)[::3], lora_dropout=0.0)
    add_lora_adapter(model.unet, cfg, "pcm", trainable=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if ".lora_B.pcm." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def perturb_region_lora(model, seed=1, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if ".lora_B.region_dpo." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def info(**kw):
    base = dict(rank=4, lora_alpha=8.0, targets={"spatial": True, "temporal": False}, alpha=(1.0, 1.5, 0.05),
                rho=(100.0, 200.0, 5.0), beta=1000.0, band_px=8, steps=7)
    base.update(kw)
    return rl.RegionLoraInfo(**base)


def test_targets_are_spatial_attention_projections_and_temporal_is_optional(model):
    spatial = rl.lora_target_modules(model.unet)
    both = rl.lora_target_modules(model.unet, temporal=True)
    assert spatial and all(".attentions." in n and ".motion_modules." not in n for n in spatial)
    assert {n.rsplit(".", 1)[-1] for n in spatial} == {"to_q", "to_k", "to_v", "0"}
    assert {n.split(".transformer_blocks.")[1].split(".")[1] for n in spatial} == {"attn1", "attn2"}
    extra = set(both) - set(spatial)
    assert extra and all(".motion_modules." in n for n in extra)
    assert not any("brushnet" in n for n in both)


def test_new_adapter_is_zero_and_reference_keeps_pcm_active(model, inputs):
    base = eps(model, inputs)
    add_fake_pcm(model)
    with_pcm = eps(model, inputs)
    assert (with_pcm - base).abs().max() > 1e-4
    rl.add_region_adapter(model.unet, rank=4, lora_alpha=8)
    assert active_adapters(model.unet) == ["pcm", "region_dpo"]
    # Zero-output init: exactly the model without the adapter.
    assert torch.equal(eps(model, inputs), with_pcm)
    trainable = [n for n, p in model.unet.named_parameters() if p.requires_grad]
    assert trainable and all(".region_dpo." in n for n in trainable)
    perturb_region_lora(model)
    trained = eps(model, inputs)
    assert (trained - with_pcm).abs().max() > 1e-4
    with adapter_disabled(model.unet, rl.ADAPTER_NAME):
        ref = eps(model, inputs)
    assert torch.equal(ref, with_pcm)  # PCM on, Region-DPO off
    assert torch.equal(eps(model, inputs), trained)  # and back on afterwards
    assert [n for n, p in model.unet.named_parameters() if p.requires_grad] == trainable
    with pytest.raises(ValueError, match="already has an adapter"):
        rl.add_region_adapter(model.unet)


def test_file_round_trip_strength_and_metadata(tmp_path, model, inputs):
    base = eps(model, inputs)
    rl.add_region_adapter(model.unet, rank=4, lora_alpha=8)
    perturb_region_lora(model)
    trained = eps(model, inputs)
    path = rl.save_region_lora(tmp_path / "r.safetensors", model.unet, info())
    rl.remove_region_lora(model)
    assert list_adapters(model.unet) == []
    assert torch.equal(eps(model, inputs), base)

    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("unet.") and (k.endswith(".lora.down.weight") or k.endswith(".lora.up.weight"))
                        for k in keys)
    assert meta["format"] == rl.FORMAT_NAME and meta["format_version"] == str(rl.FORMAT_VERSION)
    assert (meta["rank"], float(meta["lora_alpha"]), json.loads(meta["alpha"]), float(meta["beta"])) == \
        ("4", 8.0, [1.0, 1.5, 0.05], 1000.0)
    assert meta["steps"] == "7" and meta["band_px"] == "8" and json.loads(meta["targets"])["spatial"] is True
    assert meta["base_fingerprint"].startswith("sha256:")

    loaded = rl.load_region_lora(path)
    assert loaded.info.rank == 4 and loaded.info.rho == (100.0, 200.0, 5.0) and loaded.info.steps == 7
    rl.apply_region_lora(model, path, strength=1.0)
    assert torch.allclose(eps(model, inputs), trained, atol=1e-6)
    rl.apply_region_lora(model, path, strength=0.0)  # replaces the adapter, strength 0 = base
    assert torch.equal(eps(model, inputs), base)
    rl.set_region_lora_strength(model, 0.5)
    half = eps(model, inputs)
    assert 0 < (half - base).abs().max() < (trained - base).abs().max()


def test_refuses_lora_of_another_base_model(tmp_path, model, models):
    rl.add_region_adapter(model.unet, rank=4, lora_alpha=8)
    path = rl.save_region_lora(tmp_path / "r.safetensors", model.unet, info())
    rl.remove_region_lora(model)
    other = models["other"]  # same architecture, other weights
    with pytest.raises(rl.BaseModelMismatchError, match="different weights"):
        rl.apply_region_lora(other, path)
    assert list_adapters(other.unet) == []
    # Same weights in another dtype are the same base model.
    rl.apply_region_lora(models["bf16"], path)
    rl.apply_region_lora(other, path, check_base=False)  # explicit override
    # A different architecture (a LoRA from a bigger UNet) is named as such.
    lora = rl.load_region_lora(path)
    lora.info.fingerprint = rl.BaseFingerprint(structure="sha256:0000", samples=lora.info.fingerprint.samples)
    with pytest.raises(rl.BaseModelMismatchError, match="different base model"):
        rl.apply_region_lora(model, lora)


def test_bad_files_get_clear_errors(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="not found"):
        rl.load_region_lora(tmp_path / "missing.safetensors")
    foreign = tmp_path / "kohya.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(ValueError, match="not a Region-DPO LoRA"):
        rl.apply_region_lora(model, foreign)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        rl.load_region_lora(garbage)
    with pytest.raises(ValueError, match="rank"):
        rl.add_region_adapter(model.unet, rank=0)


def test_fingerprint_ignores_adapters_and_dtype_but_not_weights(model, models):
    a = rl.base_fingerprint(model)
    half = models["bf16"]
    add_fake_pcm(half)
    b = rl.base_fingerprint(half)
    assert a.structure == b.structure and a.matches(b)
    c = rl.base_fingerprint(models["other"])
    assert c.structure == a.structure and not a.matches(c)
