"""Weight streaming (offload level "stream"): bit for bit the resident result, with the block weights not held."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from rrdpo_core.lora import apply_kohya_lora, fuse_adapter
from rrdpo_core.models import load_diffueraser
from rrdpo_core.models.testing import write_tiny_diffueraser
from rrdpo_core.offload import low_memory, plan_offload
from rrdpo_core.pipeline import DiffuEraserPipeline
from rrdpo_core.streaming import WeightStream, is_streaming, streamed_groups
from rrdpo_core.vae import make_tiny_vae


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """(checkpoint folder, kohya LoRA file, resident model with that LoRA as adapter "pcm")."""
    folder = tmp_path_factory.mktemp("stream")
    path = write_tiny_diffueraser(folder / "tiny")
    model = load_diffueraser(path)
    # A kohya LoRA on some spatial layers, as PCM is: adapters must survive streaming of their base layer.
    gen, lora = torch.Generator().manual_seed(7), {}
    for name, m in model.unet.named_modules():
        if isinstance(m, torch.nn.Linear) and name.endswith(("to_q", "to_out.0")) and "motion_modules" not in name:
            key = "lora_unet_" + name.replace(".", "_")
            lora[key + ".lora_down.weight"] = torch.randn(2, m.in_features, generator=gen)
            lora[key + ".lora_up.weight"] = torch.randn(m.out_features, 2, generator=gen)
    save_file(lora, str(folder / "lora.safetensors"))
    apply_kohya_lora(model.unet, folder / "lora.safetensors")
    return path, folder / "lora.safetensors", model


@pytest.fixture(scope="module")
def model_dir(loaded):
    return loaded[:2]


@pytest.fixture(scope="module")
def resident(loaded):
    return loaded[2]


def _inputs(frames: int = 4, size: int = 8):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(frames, 4, size, size, generator=gen), torch.randn(1, 77, 32, generator=gen),
            torch.randn(frames, 5, size, size, generator=gen))


def _eps(model, frames: int = 4):
    latents, text, cond = _inputs(frames)
    with torch.no_grad():
        return model.predict_eps(latents, 500, text, cond, frames)


def _resident_bytes(net) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters() if 0 not in p.stride() or p.numel() == 1)


def test_streamed_load_gives_the_resident_result_bit_for_bit(model_dir, resident):
    path, lora = model_dir
    streamed = load_diffueraser(path, stream=True)
    apply_kohya_lora(streamed.unet, lora)
    assert is_streaming(streamed.unet) and is_streaming(streamed.brushnet)
    assert torch.equal(_eps(streamed), _eps(resident))
    # Between calls the block weights are placeholders: most of the bytes are not held.
    for net in ("brushnet", "unet"):
        held, full = _resident_bytes(getattr(streamed, net)), _resident_bytes(getattr(resident, net))
        assert held < 0.5 * full, (net, held, full)
        assert all(torch.isnan(p).all() for _, g in streamed_groups(getattr(streamed, net))
                   for n, p in g.named_parameters() if "lora_" not in n)


def test_stream_level_on_a_resident_model_matches_and_restores(resident):
    model = resident
    codec = make_tiny_vae(seed=0)
    gen = torch.Generator().manual_seed(3)
    frames, masks = torch.rand(5, 16, 16, 3, generator=gen), torch.zeros(5, 16, 16)
    masks[:, 4:12, 4:12] = 1
    text = torch.randn(1, 77, 32, generator=gen)

    def sample(m, c):
        return DiffuEraserPipeline(m, c)(frames, masks, frames.flip(0), text, num_inference_steps=2,
                                         scheduler="ddim", seed=1)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = sample(model, codec)
    with low_memory(model, codec, "stream", compute_device="cpu") as (denoiser, low_codec):
        assert is_streaming(model.unet) and is_streaming(model.brushnet)
        assert _resident_bytes(model.unet) < 0.5 * sum(v.numel() * 4 for v in before.values())
        out = sample(denoiser, low_codec)
    assert torch.equal(out.latents, ref.latents) and torch.equal(out.frames, ref.frames)
    assert not is_streaming(model.unet) and not is_streaming(model.brushnet)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(h == {} for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


def test_cpu_auto_streams_when_ram_is_short(resident):
    model = resident
    gib = 1024 ** 3
    assert plan_offload("auto", model, 64, 64, 22, compute_device="cpu", free_bytes=100 * gib).level == "none"
    assert plan_offload("auto", model, 64, 64, 22, compute_device="cpu", free_bytes=1024).level == "stream"
    assert plan_offload("auto", model, 64, 64, 22, compute_device="cpu").level == "none"  # free memory unknown
    assert plan_offload("auto", model, 64, 64, 22, compute_device="cpu", free_bytes=0).level == "none"


def test_changed_weights_are_not_streamed(resident):
    model = resident  # last user of the module's model: fusing below changes it for good
    assert plan_offload("auto", model, 64, 64, 22, compute_device="cpu", free_bytes=1024).level == "stream"
    fuse_adapter(model.unet, "pcm")  # the base weights now differ from the file
    # "auto" does not pick "stream" for weights it cannot re-read; asking for it by name is refused.
    assert plan_offload("auto", model, 64, 64, 22, compute_device="cpu", free_bytes=1024).level == "none"
    with pytest.raises(ValueError, match="changed since it was loaded"):
        with low_memory(model, None, "stream", compute_device="cpu"):
            pass
    with pytest.raises(ValueError, match="not loaded from a DiffuEraser safetensors file"):
        WeightStream(torch.nn.Linear(2, 2))  # built in memory: no file to re-read
