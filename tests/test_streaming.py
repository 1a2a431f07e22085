"""Weight streaming (offload level "stream"): bit for bit the resident result, with the block weights not held."""
from __future__ import annotations

import hashlib

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from rrdpo_core.lora import apply_kohya_lora, fuse_adapter
from rrdpo_core.models import load_diffueraser
from rrdpo_core.models.testing import write_tiny_diffueraser
from rrdpo_core.offload import low_memory, plan_offload
from rrdpo_core.pipeline import DiffuEraserPipeline
from rrdpo_core.models.unet_motion import contiguous_motion_inputs
from rrdpo_core.streaming import WeightStream, _fold_pays, is_streaming, stream_of, streamed_groups
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


def _conv_and_linear_lora(model, file) -> None:
    """A kohya LoRA on the resnets' 3x3 conv1 and the attentions' to_q: both kinds of folding."""
    gen, lora = torch.Generator().manual_seed(11), {}
    for name, m in model.unet.named_modules():
        if "motion_modules" in name or not name.endswith(("conv1", "to_q")):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        if isinstance(m, torch.nn.Conv2d):
            down, up = torch.randn(2, m.in_channels, 3, 3, generator=gen), torch.randn(m.out_channels, 2, 1, 1, generator=gen)
        else:
            down, up = torch.randn(2, m.in_features, generator=gen), torch.randn(m.out_features, 2, generator=gen)
        lora[key + ".lora_down.weight"], lora[key + ".lora_up.weight"] = 0.3 * down, 0.3 * up
    save_file(lora, str(file))


def _digest(file) -> str:
    return hashlib.sha256(open(file, "rb").read()).hexdigest()


def test_fast_stream_folds_lora_as_read_within_rounding_and_changes_nothing(model_dir, tmp_path):
    path, _ = model_dir
    model = load_diffueraser(path, stream=True)
    _conv_and_linear_lora(model, tmp_path / "lora.safetensors")
    apply_kohya_lora(model.unet, tmp_path / "lora.safetensors")
    layers = [m for m in model.unet.modules() if isinstance(m, BaseTunerLayer)]
    merged_during = []
    probes = [m.register_forward_hook(lambda m, a, o: merged_during.append(m.merged)) for m in layers]
    plain = _eps(model)
    assert merged_during and not any(merged_during)
    files = {f: _digest(f) for f in path.rglob("*.safetensors")}
    merged_during.clear()
    with low_memory(model, None, "stream", compute_device="cpu", fast=True) as (denoiser, _):
        assert stream_of(model.unet).fuse_adapters
        fast = _eps(denoiser)
        # With gradients on, nothing is folded (the adapters must see their inputs).
        merged_grad = len(merged_during)
        with torch.enable_grad():
            latents, text, cond = _inputs()
            torch.testing.assert_close(denoiser.predict_eps(latents, 500, text, cond, 4), plain, rtol=1e-5, atol=1e-5)
        assert len(merged_during) > merged_grad and not any(merged_during[merged_grad:])
        merged_during = merged_during[:merged_grad]
    # Folding happened (convolutions and linears) and changed the result by float rounding only.
    assert sum(merged_during) >= 4, merged_during
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    # Afterwards: adapters unfused again, weights re-read from unchanged files, the exact result.
    assert not stream_of(model.unet).fuse_adapters
    assert all(m.merged_adapters == [] and not m._forward_pre_hooks for m in layers)
    assert {f: _digest(f) for f in files} == files
    assert torch.equal(_eps(model), plain)
    for probe in probes:
        probe.remove()


def test_fold_pays_only_where_the_adapter_costs_more():
    wide, narrow = torch.nn.Linear(1280, 1280), torch.nn.Linear(320, 320)
    assert not _fold_pays(wide, torch.zeros(88, 1280))  # deep level of a small clip: few rows
    assert _fold_pays(wide, torch.zeros(22, 256, 1280))
    assert _fold_pays(narrow, torch.zeros(22, 256, 320))
    conv = torch.nn.Conv2d(1280, 1280, 3, stride=2, padding=1)
    assert not _fold_pays(conv, torch.zeros(22, 1280, 4, 4))  # 22 * 2 * 2 output pixels
    assert _fold_pays(conv, torch.zeros(22, 1280, 64, 64))


def test_scratch_buffer_is_never_overwritten_while_a_weight_is_held(model_dir):
    path, _ = model_dir
    model = load_diffueraser(path, stream=True)
    stream = stream_of(model.unet)
    block, entries = stream.groups[0]
    first = entries[0]
    key = next(n for n, p in model.unet.named_parameters() if p is first.module._parameters[first.attr])
    stored = load_file(str(path / "unet_main" / "diffusion_pytorch_model.safetensors"))[key]
    kept = []
    probe = block.register_forward_pre_hook(lambda m, a: kept.append(first.module._parameters[first.attr].data))
    ref = _eps(model)
    # The kept weight was read into a slot of the shared buffer, which the later layers then left alone.
    assert kept[0].untyped_storage().nbytes() > kept[0].numel() * kept[0].element_size()
    assert torch.equal(_eps(model), ref)
    assert torch.equal(kept[0], stored) and torch.equal(kept[1], stored)
    probe.remove()
    kept.clear()
    assert torch.equal(_eps(model), ref)
    scratch = stream._scratch  # with nothing held, one buffer serves every layer of every call
    assert torch.equal(_eps(model), ref) and stream._scratch is scratch


def test_contiguous_motion_inputs_match_and_come_off(model_dir):
    # No LoRA here: the fixture's unscaled random one amplifies rounding differences to 5 %.
    resident = load_diffueraser(model_dir[0])
    unet = resident.unet
    ref = _eps(resident)
    handles = contiguous_motion_inputs(unet)
    seen = []
    probes = [m.register_forward_pre_hook(lambda m, a, k: seen.append(k["input"].is_contiguous()), with_kwargs=True)
              for m in (h_module.proj_in for h_module in unet.modules() if hasattr(h_module, "proj_in")
                        and "AnimateDiffTransformer3D" in type(h_module).__name__)]
    fast = _eps(resident)
    assert len(handles) == len(probes) > 0 and len(seen) == len(probes) and all(seen)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    for h in handles + probes:
        h.remove()
    assert torch.equal(_eps(resident), ref)


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
