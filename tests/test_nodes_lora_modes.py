"""PCM + Region-DPO LoRA composition in the nodes, run the way ComfyUI runs them: every node call
inside ``torch.inference_mode()`` (execution.py), the Load node's output cached and shared by later
runs, Cancel raised from the progress hook. The shared model must come out of every run unchanged."""
from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from pack import node
from test_lora_pcm import kohya_lora, spatial_targets
from test_nodes_pipeline import FakeComfyVAE, _clip, _cond

PCM_FILE = "pcm_sd15_smallcfg_2step_converted.safetensors"


def model_digest(model: torch.nn.Module) -> str:
    """Hash of every state-dict tensor (names, dtypes, shapes, bytes) plus requires_grad flags and
    the adapter list: what a later run of a cached model depends on."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(repr([(n, p.requires_grad) for n, p in model.named_parameters()]).encode())
    h.update(repr(list(getattr(model.unet, "peft_config", {}) or {})).encode())
    return h.hexdigest()


@pytest.fixture
def files(comfy_stubs):
    """A tiny DiffuEraser, a PCM kohya LoRA and a Region-DPO LoRA in the ComfyUI model folders."""
    from rrdpo_core.models.testing import tiny_diffueraser, write_tiny_diffueraser
    from rrdpo_core.region_lora import RegionLoraInfo, add_region_adapter, save_region_lora

    write_tiny_diffueraser(comfy_stubs.models_dir / "diffueraser" / "tiny", seed=0)
    base = tiny_diffueraser(seed=0)
    save_file(kohya_lora(base.unet, spatial_targets(base.unet, every=2), rank=4, alpha=2.0, seed=3),
              str(comfy_stubs.models_dir / "loras" / PCM_FILE))
    (comfy_stubs.models_dir / "loras" / "rrdpo").mkdir()
    add_region_adapter(base.unet, rank=4, lora_alpha=8)
    with torch.no_grad():
        for n, p in base.unet.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
    save_region_lora(comfy_stubs.models_dir / "loras" / "rrdpo" / "r.safetensors", base.unet,
                     RegionLoraInfo(rank=4, lora_alpha=8))
    return comfy_stubs


def unloaded_digest(stubs, handle) -> str:
    """The cached model's digest once ComfyUI has unloaded it: a loaded LoRA clone has its patches
    merged into the weights (as in ComfyUI), and unloading must give the model back exactly."""
    stubs.unload_all()
    return model_digest(handle.model)


def _run_b(handle, vae, frames, mask, prior):
    """Workflow b's two model nodes: Prior Latents (noise mode) then the sampler, TCD 2 steps."""
    out = node("RRDPOPriorLatents").prepare(handle, vae, _cond(), frames, mask, prior, "noise", 999, 2, "tcd", 0)
    return node("RRDPODiffuEraserSampler").sample(handle, vae, _cond(), frames, mask, 2, "tcd", 0, 0.0,
                                                   prior_latents=out[0])[0]


def test_pcm_and_region_lora_compose_under_inference_mode_repeatedly_and_after_cancel(files):
    frames, mask = _clip()
    with torch.inference_mode():  # everything below runs as inside ComfyUI's executor
        (base,) = node("RRDPOLoadDiffuEraser").load("tiny", "auto", PCM_FILE)
        assert base.pcm_lora is not None
        # the cached model holds normal tensors, so later nodes may switch adapters and gradients
        assert not any(p.is_inference() for p in base.model.parameters())
        (lora,) = node("RRDPOApplyRegionDPOLoRA").apply(base, "rrdpo/r.safetensors", 1.0)
        vae = FakeComfyVAE()
        prior, _, _, _ = node("RRDPOFlowPrior").run(frames, mask, flow_downscale=2.0, preset="fast")
        digest = model_digest(base.model)

        before = len(files.progress)
        first = _run_b(lora, vae, frames, mask, prior)
        ticks = len(files.progress) - before
        assert ticks >= 2
        assert unloaded_digest(files, base) == digest, "a run changed the cached model"
        second = _run_b(lora, vae, frames, mask, prior)
        assert unloaded_digest(files, base) == digest
        assert torch.equal(first, second), "the same run twice gives the same frames"
        plain = _run_b(base, vae, frames, mask, prior)
        assert not torch.allclose(plain, first, atol=1e-4), "the Region LoRA is applied while sampling"
        assert unloaded_digest(files, base) == digest

        # Cancel in the middle of the sampler (raised from the progress hook, as ComfyUI does)
        files.interrupt_after(len(files.progress) + (ticks + 1) // 2)
        with pytest.raises(Exception) as info:
            _run_b(lora, vae, frames, mask, prior)
        assert type(info.value).__name__ == "InterruptProcessingException"
        assert unloaded_digest(files, base) == digest, "a cancelled run left its adapter or flags behind"
        assert torch.equal(_run_b(lora, vae, frames, mask, prior), first), "the run after a cancel is unaffected"
        assert torch.equal(_run_b(base, vae, frames, mask, prior), plain)
        assert unloaded_digest(files, base) == digest


def test_region_lora_any_strength_with_pcm(files):
    frames, mask = _clip()
    with torch.inference_mode():
        (base,) = node("RRDPOLoadDiffuEraser").load("tiny", "auto", PCM_FILE)
        vae = FakeComfyVAE()
        digest = model_digest(base.model)
        args = (vae, _cond(), frames, mask, 2, "tcd", 0, 0.0)
        plain = node("RRDPODiffuEraserSampler").sample(base, *args)[0]
        outs = {}
        for strength in (0.0, 0.5, -1.0, 2.0):
            (lora,) = node("RRDPOApplyRegionDPOLoRA").apply(base, "rrdpo/r.safetensors", strength)
            outs[strength] = node("RRDPODiffuEraserSampler").sample(lora, *args)[0]
            assert unloaded_digest(files, base) == digest
        torch.testing.assert_close(outs[0.0], plain, rtol=0, atol=1e-6)
        assert not torch.allclose(outs[0.5], plain, atol=1e-4)
        # two Region LoRAs chained on one handle compose as well
        (one,) = node("RRDPOApplyRegionDPOLoRA").apply(base, "rrdpo/r.safetensors", 0.5)
        (two,) = node("RRDPOApplyRegionDPOLoRA").apply(one, "rrdpo/r.safetensors", 0.5)
        both = node("RRDPODiffuEraserSampler").sample(two, *args)[0]
        assert torch.isfinite(both).all() and unloaded_digest(files, base) == digest


def test_kohya_adapter_made_under_inference_mode_is_switchable_afterwards():
    """The core alone: an adapter added inside inference_mode() holds normal tensors, so adding and
    removing a second adapter outside it (peft's set_adapter flips requires_grad) works."""
    from rrdpo_core.lora import apply_kohya_lora, list_adapters
    from rrdpo_core.models.testing import tiny_diffueraser
    from rrdpo_core.region_lora import add_region_adapter, remove_region_lora

    model = tiny_diffueraser(seed=0)
    with torch.inference_mode():
        apply_kohya_lora(model.unet, kohya_lora(model.unet, spatial_targets(model.unet, every=3)), "pcm")
    assert not any(p.is_inference() for n, p in model.unet.named_parameters() if ".pcm." in n)
    digest = model_digest(model)
    add_region_adapter(model.unet, rank=2, lora_alpha=4, trainable=True)
    remove_region_lora(model)
    assert list_adapters(model.unet) == ["pcm"] and model_digest(model) == digest


def test_training_on_the_cached_model_leaves_it_as_it_was_for_later_lora_runs(files):
    """Workflow d then e on one server: the trainer runs on the cached model; afterwards a Region LoRA
    still applies exactly as before, and the model's state is bit-identical."""
    frames, mask = _clip()
    with torch.inference_mode():
        (base,) = node("RRDPOLoadDiffuEraser").load("tiny", "auto", PCM_FILE)
        (lora,) = node("RRDPOApplyRegionDPOLoRA").apply(base, "rrdpo/r.safetensors", 1.0)
        vae = FakeComfyVAE()
        args = (vae, _cond(), frames, mask, 2, "tcd", 0, 0.0)
        before = node("RRDPODiffuEraserSampler").sample(lora, *args)[0]
        plain = node("RRDPODiffuEraserSampler").sample(base, *args)[0]
        digest = model_digest(base.model)
        pairs = node("RRDPOBuildPreferencePairs").build(base, vae, _cond(), "p", 2, 4, False, True, False, 0,
                                                        images=frames)[0]
        assert unloaded_digest(files, base) == digest
        out = node("RRDPOTrainer").train(base, _cond(), pairs, "t", 2, 1e-3, 4, 1000.0, 1.0, 1.5, 0.05, 100.0,
                                         200.0, 5.0, 8, 1, 100, 0)["result"]
        assert unloaded_digest(files, base) == digest, "the trainer changed the cached model"
        after = node("RRDPODiffuEraserSampler").sample(lora, *args)[0]
        assert torch.equal(after, before) and not torch.allclose(after, plain, atol=1e-4)
        # the trainer's own output handle carries the trained LoRA (non-zero after 2 steps at lr 1e-3)
        trained = node("RRDPODiffuEraserSampler").sample(out[0], *args)[0]
        assert not torch.equal(trained, plain)
