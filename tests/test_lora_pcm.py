"""Kohya-format LoRA (PCM) as a named PEFT adapter on the motion UNet."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from rrdpo_core.lora import (
    PCM_ADAPTER,
    REGION_DPO_ADAPTER,
    apply_kohya_lora,
    fuse_adapter,
    list_adapters,
    read_kohya_lora,
    remove_adapter,
    set_adapter_scale,
)
from rrdpo_core.models.testing import tiny_diffueraser

FRAMES = 2
# The layer kinds PCM's sd15 LoRA targets (reference §1.2).
PCM_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def spatial_targets(unet: nn.Module, every: int = 1) -> list[str]:
    names = [n for n, m in unet.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d)) and n.endswith(PCM_TARGETS) and "motion_modules" not in n]
    return names[::every]


def kohya_lora(unet: nn.Module, names: list[str], rank: int = 4, alpha: float | None = 2.0, seed: int = 0,
               std: float = 0.2) -> dict[str, torch.Tensor]:
    """A random kohya-format LoRA: lora_unet_<path with _>.lora_down.weight / .lora_up.weight / .alpha."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name in names:
        w = unet.get_submodule(name).weight
        key = "lora_unet_" + name.replace(".", "_")
        if w.ndim == 2:
            down, up = torch.randn(rank, w.shape[1], generator=g), torch.randn(w.shape[0], rank, generator=g)
        else:
            down, up = torch.randn(rank, *w.shape[1:], generator=g), torch.randn(w.shape[0], rank, 1, 1, generator=g)
        sd[key + ".lora_down.weight"] = (std * down / w[0].numel() ** 0.5).half()  # PCM files are fp16
        sd[key + ".lora_up.weight"] = (std * up / rank ** 0.5).half()
        if alpha is not None:
            sd[key + ".alpha"] = torch.tensor(alpha, dtype=torch.float16)
    return sd


def merged_copy(unet: nn.Module, sd: dict[str, torch.Tensor], scale: float) -> None:
    """Add scale * up @ down to each targeted weight, in place (the expected low-rank delta)."""
    with torch.no_grad():
        for key in {k.split(".")[0] for k in sd}:
            name = key[len("lora_unet_"):]
            module = next(m for n, m in unet.named_modules() if n.replace(".", "_") == name)
            down = sd[key + ".lora_down.weight"].to(module.weight.dtype)
            up = sd[key + ".lora_up.weight"].to(module.weight.dtype)
            if module.weight.ndim == 2:
                module.weight += scale * up @ down
            else:
                module.weight += scale * torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)


def inputs(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(FRAMES, 4, 8, 8, generator=g, dtype=dtype)
    cond = torch.randn(FRAMES, 5, 8, 8, generator=g, dtype=dtype)
    text = torch.randn(1, 77, 32, generator=g, dtype=dtype)
    return latents, cond, text


def eps(model, seed: int = 0):
    latents, cond, text = inputs(seed)
    with torch.no_grad():
        return model.predict_eps(latents, 499, text, cond, num_frames=FRAMES)


@pytest.fixture(scope="module")
def pristine():
    # float64 so that "exactly the expected delta" can be checked to ~1e-12
    return tiny_diffueraser(seed=2, dtype=torch.float64).requires_grad_(False)


@pytest.fixture
def fresh(pristine):
    return lambda: copy.deepcopy(pristine)


@pytest.fixture
def model(fresh):
    return fresh()


def test_lora_adds_exactly_the_low_rank_delta_and_removes_bit_for_bit(model, fresh):
    unet = model.unet
    names = spatial_targets(unet)
    assert {n.rsplit(".", 1)[-1] for n in names} >= {"to_q", "conv1", "conv_shortcut", "time_emb_proj", "conv"}
    sd = kohya_lora(unet, names, rank=4, alpha=2.0)
    keys_before = list(unet.state_dict())
    base = eps(model)

    applied = apply_kohya_lora(unet, sd, PCM_ADAPTER)
    assert sorted(applied) == sorted(names) and list_adapters(unet) == [PCM_ADAPTER]
    assert all(not p.requires_grad for p in unet.parameters())  # frozen unless trainable=True
    with_lora = eps(model)

    expected_model = fresh()
    merged_copy(expected_model.unet, sd, scale=2.0 / 4)  # alpha / rank
    expected = eps(expected_model)
    assert (with_lora - base).abs().max() > 1e-3  # the LoRA does something
    torch.testing.assert_close(with_lora, expected, rtol=1e-10, atol=1e-10)

    remove_adapter(unet, PCM_ADAPTER)
    assert list_adapters(unet) == [] and not any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    assert list(unet.state_dict()) == keys_before
    assert torch.equal(eps(model), base)


def test_single_layer_delta_is_scale_times_up_down(model):
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"
    sd = kohya_lora(model.unet, [name], rank=3, alpha=6.0)  # scale 2
    layer = model.unet.get_submodule(name)
    x = torch.randn(5, layer.in_features, dtype=torch.float64)
    before = layer(x)
    apply_kohya_lora(model.unet, sd, PCM_ADAPTER)
    lora_layer = model.unet.get_submodule(name)
    key = "lora_unet_" + name.replace(".", "_")
    delta = 2.0 * x @ sd[key + ".lora_down.weight"].double().T @ sd[key + ".lora_up.weight"].double().T
    torch.testing.assert_close(lora_layer(x) - before, delta, rtol=1e-12, atol=1e-12)


def test_ranks_and_alphas_may_differ_per_module(model):
    a, b = "mid_block.attentions.0.proj_in", "up_blocks.1.resnets.0.conv_shortcut"
    sd = {**kohya_lora(model.unet, [a], rank=2, alpha=1.0), **kohya_lora(model.unet, [b], rank=4, alpha=8.0, seed=1)}
    apply_kohya_lora(model.unet, sd, PCM_ADAPTER)
    assert model.unet.get_submodule(a).scaling[PCM_ADAPTER] == 0.5
    assert model.unet.get_submodule(b).scaling[PCM_ADAPTER] == 2.0
    assert model.unet.get_submodule(b).lora_A[PCM_ADAPTER].weight.shape[0] == 4


def test_adapter_scale_multiplies_alpha_over_rank(model, fresh):
    names = spatial_targets(model.unet, every=3)
    sd = kohya_lora(model.unet, names, rank=4, alpha=None)  # no .alpha: kohya convention alpha = rank
    base = eps(model)
    apply_kohya_lora(model.unet, sd, PCM_ADAPTER, scale=0.5)
    half = eps(model)
    expected_model = fresh()
    merged_copy(expected_model.unet, sd, scale=0.5)
    torch.testing.assert_close(half, eps(expected_model), rtol=1e-10, atol=1e-10)
    set_adapter_scale(model.unet, PCM_ADAPTER, 0.0)
    assert torch.equal(eps(model), base)


def test_call_time_lora_scale_is_restored_exactly(model):
    unet = model.unet
    apply_kohya_lora(unet, kohya_lora(unet, spatial_targets(unet, every=3)), PCM_ADAPTER, scale=0.8)
    layer = next(m for m in unet.modules() if isinstance(m, BaseTunerLayer))
    before = dict(layer.scaling)
    latents, _, text = inputs()
    t = torch.tensor([499])
    with torch.no_grad():
        scaled = unet(latents, t, text, num_frames=FRAMES, cross_attention_kwargs={"scale": 0.5}).sample
        assert layer.scaling == before  # the 0.8 multiplier survives the call
        set_adapter_scale(unet, PCM_ADAPTER, 0.4)
        expected = unet(latents, t, text, num_frames=FRAMES).sample
    torch.testing.assert_close(scaled, expected, rtol=1e-12, atol=1e-12)


def test_second_named_adapter_stacks_and_is_removed_independently(model, fresh):
    unet = model.unet
    names = spatial_targets(unet, every=2)
    pcm = kohya_lora(unet, names, rank=4, alpha=2.0, seed=1)
    other = kohya_lora(unet, names[::2] + spatial_targets(unet, every=5), rank=2, alpha=1.0, seed=2)
    apply_kohya_lora(unet, pcm, PCM_ADAPTER)
    apply_kohya_lora(unet, other, REGION_DPO_ADAPTER, trainable=True)
    assert list_adapters(unet) == [PCM_ADAPTER, REGION_DPO_ADAPTER]
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all(f".{REGION_DPO_ADAPTER}." in n for n in trainable)  # PCM and base stay frozen

    both = fresh()
    merged_copy(both.unet, pcm, 0.5)
    merged_copy(both.unet, other, 0.5)
    torch.testing.assert_close(eps(model), eps(both), rtol=1e-10, atol=1e-10)  # PCM was not switched off

    remove_adapter(unet, PCM_ADAPTER)
    only_other = fresh()
    merged_copy(only_other.unet, other, 0.5)
    torch.testing.assert_close(eps(model), eps(only_other), rtol=1e-10, atol=1e-10)
    assert list_adapters(unet) == [REGION_DPO_ADAPTER]
    assert all(f".{REGION_DPO_ADAPTER}." in n for n, p in unet.named_parameters() if p.requires_grad)


def test_base_weights_keep_their_requires_grad(model):
    unet = model.unet.requires_grad_(True)
    apply_kohya_lora(unet, kohya_lora(unet, spatial_targets(unet, every=3)), PCM_ADAPTER)
    base = [p for n, p in unet.named_parameters() if ".lora_" not in n]
    lora = [p for n, p in unet.named_parameters() if ".lora_" in n]
    assert base and lora and all(p.requires_grad for p in base) and not any(p.requires_grad for p in lora)


def test_lora_file_round_trip(model, tmp_path):
    names = spatial_targets(model.unet, every=4)
    sd = kohya_lora(model.unet, names)
    file = tmp_path / "pcm_sd15_smallcfg_2step_converted.safetensors"
    save_file(sd, str(file))
    assert apply_kohya_lora(model.unet, file) == sorted(names)
    with pytest.raises(FileNotFoundError, match="PCM_Weights"):
        read_kohya_lora(tmp_path / "missing.safetensors")
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a complete safetensors file"):
        read_kohya_lora(file)


def _mismatch(model, kind):
    unet = model.unet
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"
    sd = kohya_lora(unet, [name])
    key = "lora_unet_" + name.replace(".", "_")
    if kind == "unknown module":
        sd = {k.replace("attn1_to_k", "attn1_to_kk"): v for k, v in sd.items()}
    elif kind == "ldm names":
        sd = {k.replace(key, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k"): v for k, v in sd.items()}
    elif kind == "text encoder":
        sd["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 8)
    elif kind == "wrong shape":
        sd[key + ".lora_up.weight"] = torch.zeros(7, 4)
    elif kind == "half pair":
        del sd[key + ".lora_up.weight"]
    elif kind == "motion module":
        sd = kohya_lora(unet, ["down_blocks.0.motion_modules.0.proj_in"])
    elif kind == "locon extras":
        sd[key + ".lora_mid.weight"] = torch.zeros(1)
    return sd


@pytest.mark.parametrize("kind,message", [
    ("unknown module", r"match no layer.*attn1_to_kk"),
    ("ldm names", r"input_blocks/middle_block/output_blocks"),
    ("text encoder", r"text-encoder LoRA weights are not supported"),
    ("wrong shape", r"do not fit the layer.*lora_up \(7, 4\)"),
    ("half pair", r"lacks its lora_up\.weight"),
    ("motion module", r"targets a motion module"),
    ("locon extras", r"only plain LoRA"),
])
def test_mismatched_lora_is_an_error_not_a_no_op(model, kind, message):
    sd = _mismatch(model, kind)
    with pytest.raises(ValueError, match=message):
        apply_kohya_lora(model.unet, sd, PCM_ADAPTER)
    assert list_adapters(model.unet) == [] and not any(isinstance(m, BaseTunerLayer) for m in model.unet.modules())


def test_adapter_names_are_checked(model):
    sd = kohya_lora(model.unet, spatial_targets(model.unet, every=7))
    apply_kohya_lora(model.unet, sd, PCM_ADAPTER)
    with pytest.raises(ValueError, match="already exists"):
        apply_kohya_lora(model.unet, sd, PCM_ADAPTER)
    with pytest.raises(ValueError, match="no adapter named"):
        remove_adapter(model.unet, REGION_DPO_ADAPTER)
    with pytest.raises(ValueError, match="no adapter named"):
        set_adapter_scale(model.unet, REGION_DPO_ADAPTER, 1.0)


def test_fused_adapter_is_the_merged_network_and_leaves_other_adapters(model, fresh):
    unet = model.unet
    names = spatial_targets(unet, every=2)
    sd = kohya_lora(unet, names, rank=4, alpha=2.0)
    keys_before = list(unet.state_dict())
    apply_kohya_lora(unet, sd, PCM_ADAPTER)
    other = kohya_lora(unet, spatial_targets(unet, every=3), rank=2, alpha=1.0, seed=5)
    apply_kohya_lora(unet, other, REGION_DPO_ADAPTER)
    unfused = eps(model)

    assert sorted(fuse_adapter(unet, PCM_ADAPTER)) == sorted(names)
    assert list_adapters(unet) == [REGION_DPO_ADAPTER]
    torch.testing.assert_close(eps(model), unfused, rtol=1e-10, atol=1e-10)  # float64: same network
    remove_adapter(unet, REGION_DPO_ADAPTER)
    assert list(unet.state_dict()) == keys_before
    expected = fresh()
    merged_copy(expected.unet, sd, scale=2.0 / 4)
    for key, value in expected.unet.state_dict().items():
        torch.testing.assert_close(unet.state_dict()[key], value, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="no adapter named"):
        fuse_adapter(unet, PCM_ADAPTER)
