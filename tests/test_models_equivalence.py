"""Our forwards against independent references built from stock diffusers models.

* Motion UNet: diffusers' own ``UNetMotionModel`` with the same weights. BrushNet residuals are
  injected into it with forward hooks at the documented points (reference §2.1), and its mid block
  is replaced by the documented order. Our forward must match it exactly, and must differ from the
  unpatched stock model only through the mid block.
* BrushNet: diffusers' ``UNet2DConditionModel`` with BrushNet's trunk weights, its intermediate
  outputs captured by hooks and passed through BrushNet's zero convs.

All weights are random and non-zero, so a residual added one step early or late, or a resnet run
once instead of twice, shows up.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel, UNetMotionModel

from rrdpo_core.models import packaged_config
from rrdpo_core.models.testing import tiny_diffueraser

FRAMES = 3


@pytest.fixture(scope="module")
def model():
    return tiny_diffueraser(seed=4).requires_grad_(False)


def _stock_unet(ours) -> UNetMotionModel:
    stock = UNetMotionModel.from_config(packaged_config("unet_main_tiny"))
    stock.load_state_dict(ours.state_dict())
    return stock.eval().requires_grad_(False)


def _documented_mid_forward(block, residual=None):
    """resnets[0] -> attention -> resnets[1] -> (+ residual) -> motion module -> resnets[1] again."""

    def forward(hidden_states, temb=None, encoder_hidden_states=None, attention_mask=None,
                cross_attention_kwargs=None, encoder_attention_mask=None, num_frames=1):
        h = block.resnets[0](hidden_states, temb)
        h = block.attentions[0](h, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        h = block.resnets[1](h, temb)
        if residual is not None:
            h = h + residual
        h = block.motion_modules[0](h, num_frames=num_frames)
        return block.resnets[1](h, temb)

    return forward


def _inject_with_hooks(stock: UNetMotionModel, down, up) -> list:
    """Add BrushNet residuals to the stock model where the reference says DiffuEraser adds them."""
    handles, down, up = [], list(down), list(up)

    def add_to_output(residual):
        def hook(module, args, output):
            if isinstance(output, tuple):  # Transformer2DModel with return_dict=False
                return (output[0] + residual,) + output[1:]
            return output + residual
        return hook

    # conv_in's output is stored as the first skip *before* residual 0 is added, so residual 0 goes
    # onto the input of the first down block instead of onto conv_in's output.
    r0 = down.pop(0)
    handles.append(stock.down_blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: (args, {**kwargs, "hidden_states": kwargs["hidden_states"] + r0}),
        with_kwargs=True))
    for blocks, residuals in ((stock.down_blocks, down), (stock.up_blocks, up)):
        for block in blocks:
            spatial = getattr(block, "attentions", None) or block.resnets  # last spatial module of each layer
            for module in spatial:
                handles.append(module.register_forward_hook(add_to_output(residuals.pop(0))))
            sampler = getattr(block, "downsamplers", None) or getattr(block, "upsamplers", None)
            if sampler is not None:
                handles.append(sampler[0].register_forward_hook(add_to_output(residuals.pop(0))))
        assert not residuals
    return handles


def _run_stock(stock, latents, t, text_per_frame):
    five_d = latents.reshape(-1, FRAMES, *latents.shape[1:]).permute(0, 2, 1, 3, 4)
    out = stock(five_d, t, text_per_frame).sample
    return out.permute(0, 2, 1, 3, 4).reshape(latents.shape)


def _inputs(h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(FRAMES, 4, h, w, generator=g)
    cond = torch.cat([torch.randn(FRAMES, 4, h, w, generator=g), (torch.rand(FRAMES, 1, h, w, generator=g) > 0.5).float()], 1)
    text = torch.randn(FRAMES, 77, 32, generator=g)
    return latents, cond, text


def test_without_brushnet_only_the_mid_block_differs_from_stock_diffusers(model):
    stock = _stock_unet(model.unet)
    latents, _, text = _inputs()
    t = torch.tensor([499])
    with torch.no_grad():
        ours = model.unet(latents, t, text, num_frames=FRAMES).sample
        plain = _run_stock(stock, latents, t, text)
        stock.mid_block.forward = _documented_mid_forward(stock.mid_block)
        patched = _run_stock(stock, latents, t, text)
    # diffusers' mid block (attention -> motion -> resnet once) is not what the weights were trained with ...
    assert (ours - plain).abs().mean() > 1e-4 * ours.abs().mean()
    # ... and it is the only difference.
    assert torch.equal(ours, patched)


@pytest.mark.parametrize("size", [(8, 8), (9, 7)])
def test_brushnet_injection_points_match_hooked_stock_model(model, size):
    latents, cond, text = _inputs(*size, seed=1)
    t = torch.tensor([999])
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        res = model.brushnet(latents, t.expand(FRAMES), text, cond)
    # Random residuals of the right shapes, larger than the trained ones, so every point matters.
    down = [torch.randn(r.shape, generator=g) for r in res.down_block_res_samples]
    mid = torch.randn(res.mid_block_res_sample.shape, generator=g)
    up = [torch.randn(r.shape, generator=g) for r in res.up_block_res_samples]

    stock = _stock_unet(model.unet)
    stock.mid_block.forward = _documented_mid_forward(stock.mid_block, residual=mid)
    handles = _inject_with_hooks(stock, down, up)
    with torch.no_grad():
        expected = _run_stock(stock, latents, t, text)
        ours = model.unet(latents, t, text, num_frames=FRAMES, down_block_add_samples=down,
                          mid_block_add_sample=mid, up_block_add_samples=up).sample
        zero = [torch.zeros_like(r) for r in down], torch.zeros_like(mid), [torch.zeros_like(r) for r in up]
        ours_zero = model.unet(latents, t, text, num_frames=FRAMES, down_block_add_samples=zero[0],
                               mid_block_add_sample=zero[1], up_block_add_samples=zero[2]).sample
        ours_none = model.unet(latents, t, text, num_frames=FRAMES).sample
    for h in handles:
        h.remove()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours_zero, ours_none)
    assert (ours - ours_none).abs().mean() > 0.1 * ours_none.abs().mean()


def test_residual_count_and_shape_are_checked(model):
    latents, _, text = _inputs()
    n_down, _, n_up = model.unet.num_residuals
    with pytest.raises(ValueError, match="all three"):
        model.unet(latents, 1, text, num_frames=FRAMES, mid_block_add_sample=torch.zeros(1))
    with pytest.raises(ValueError, match="12 down and 15 up"):
        model.unet(latents, 1, text, num_frames=FRAMES, down_block_add_samples=[latents] * (n_down - 1),
                   mid_block_add_sample=latents, up_block_add_samples=[latents] * n_up)
    with pytest.raises(ValueError, match="conv_in"):  # a (C,h,w) broadcastable residual is refused
        model.unet(latents, 1, text, num_frames=FRAMES, down_block_add_samples=[torch.zeros(1, 32, 8, 8)] * n_down,
                   mid_block_add_sample=latents, up_block_add_samples=[latents] * n_up)


def test_brushnet_residuals_match_stock_unet2d_taps(model):
    brushnet = model.brushnet
    cfg = packaged_config("brushnet_tiny")
    stock = UNet2DConditionModel(
        in_channels=cfg["in_channels"] + cfg["conditioning_channels"], out_channels=4,
        down_block_types=cfg["down_block_types"], up_block_types=cfg["up_block_types"],
        block_out_channels=cfg["block_out_channels"], layers_per_block=cfg["layers_per_block"],
        cross_attention_dim=cfg["cross_attention_dim"], attention_head_dim=cfg["attention_head_dim"],
        norm_num_groups=cfg["norm_num_groups"],
    )
    trunk = {("conv_in." + k.split(".", 1)[1] if k.startswith("conv_in_condition.") else k): v
             for k, v in brushnet.state_dict().items() if not k.startswith("brushnet_")}
    result = stock.load_state_dict(trunk, strict=False)
    assert set(result.missing_keys) == {"conv_norm_out.weight", "conv_norm_out.bias", "conv_out.weight", "conv_out.bias"}
    assert not result.unexpected_keys
    stock.eval().requires_grad_(False)

    down_taps, up_taps, mid_tap = [], [], []
    handles = [stock.conv_in.register_forward_hook(lambda m, a, out: down_taps.append(out))]
    for block in stock.down_blocks:
        handles.append(block.register_forward_hook(lambda m, a, out: down_taps.extend(out[1])))
    handles.append(stock.mid_block.register_forward_hook(lambda m, a, out: mid_tap.append(out)))
    for block in stock.up_blocks:
        for module in getattr(block, "attentions", None) or block.resnets:
            handles.append(module.register_forward_hook(
                lambda m, a, out: up_taps.append(out[0] if isinstance(out, tuple) else out)))
        if block.upsamplers is not None:
            handles.append(block.upsamplers[0].register_forward_hook(lambda m, a, out: up_taps.append(out)))

    latents, cond, text = _inputs(9, 7, seed=3)
    t = torch.tensor([499])
    with torch.no_grad():
        stock(torch.cat([latents, cond], 1), t, text)
        res = brushnet(latents, t, text, cond, conditioning_scale=0.5)
        expected_down = [0.5 * conv(h) for conv, h in zip(brushnet.brushnet_down_blocks, down_taps, strict=True)]
        expected_up = [0.5 * conv(h) for conv, h in zip(brushnet.brushnet_up_blocks, up_taps, strict=True)]
        expected_mid = 0.5 * brushnet.brushnet_mid_block(mid_tap[0])
    for h in handles:
        h.remove()
    assert len(res.down_block_res_samples) == 12 and len(res.up_block_res_samples) == 15
    for ours, ref in zip(res.down_block_res_samples + (res.mid_block_res_sample,) + res.up_block_res_samples,
                         expected_down + [expected_mid] + expected_up, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    # channels per injection point, as documented for SD1.5 (scaled down here)
    c0, c1, c2, c3 = cfg["block_out_channels"]
    assert [r.shape[1] for r in res.down_block_res_samples] == [c0] * 4 + [c1] * 3 + [c2] * 3 + [c3] * 2
    assert [r.shape[1] for r in res.up_block_res_samples] == [c3] * 4 + [c2] * 4 + [c1] * 4 + [c0] * 3


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_diffueraser(seed=6)
    latents, cond, text = _inputs(seed=4)

    def grads():
        model.zero_grad(set_to_none=True)
        eps = model.predict_eps(latents, 499, text[:1], cond, num_frames=FRAMES)
        eps.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.unet.enable_gradient_checkpointing()
    model.brushnet.enable_gradient_checkpointing()
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
