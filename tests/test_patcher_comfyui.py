"""The pack's networks under ComfyUI's own model management (real ComfyUI modules, no server).

Runs in ComfyUI's interpreter (``COMFYUI_PYTHON``, default this one) with ComfyUI's source from
``COMFYUI_DIR`` on the path; skipped when ``COMFYUI_DIR`` is not set. The script loads the tiny
DiffuEraser through ``comfy.model_management.load_models_gpu`` as the nodes do, with and without
a Region-DPO LoRA patch, and checks that ComfyUI counts it, that the LoRA acts like the peft
adapter, and that the cached model's tensors are unchanged after ComfyUI unloads it.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from comfyui_server import comfyui_dir
from conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(comfyui_dir() is None, reason="set COMFYUI_DIR to a ComfyUI checkout to run")

SCRIPT = r"""
import importlib.util, sys, types
comfy_dir, repo = sys.argv[1], sys.argv[2]
sys.path.insert(0, comfy_dir)
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch
import comfy.model_management as mm

name = "rrdpo_pack_under_test"
spec = importlib.util.spec_from_file_location(name, repo + "/__init__.py", submodule_search_locations=[repo])
pack = types.ModuleType(name); pack.__path__ = [repo]; sys.modules[name] = pack  # the package without its __init__
P = importlib.import_module(name + ".nodes._patcher")
testing = importlib.import_module(name + ".rrdpo_core.models.testing")
rl = importlib.import_module(name + ".rrdpo_core.region_lora")
iso = importlib.import_module(name + ".rrdpo_core.train.isolation")

lora_path = sys.argv[3]
m = testing.tiny_diffueraser(seed=0)
rl.add_region_adapter(m.unet, rank=4, lora_alpha=8)
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for n, p in m.unet.named_parameters():
        if ".lora_B.region_dpo." in n:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
rl.save_region_lora(lora_path, m.unet, rl.RegionLoraInfo(rank=4, lora_alpha=8.0))

gen = torch.Generator().manual_seed(0)
x, c, te = torch.randn(4, 4, 8, 8, generator=gen), torch.randn(4, 5, 8, 8, generator=gen), torch.randn(1, 77, 32, generator=gen)
ref = testing.tiny_diffueraser(seed=0)
rl.apply_region_lora(ref, lora_path, strength=0.7)
with torch.no_grad():
    want_lora = ref.predict_eps(x, 500, te, c, 4)

with torch.inference_mode():  # as ComfyUI runs nodes
    model = testing.tiny_diffueraser(seed=0).requires_grad_(False)  # as load_diffueraser returns it
    with torch.no_grad():
        want_base = model.predict_eps(x, 500, te, c, 4)
    digest = iso.model_digest(model)
    base = P.diffueraser_patcher(model, mm.get_torch_device(), mm.unet_offload_device())
    patched = P.with_region_lora(base, lora_path, 0.7)
    assert not base.patches and patched.patches, "the LoRA lives on the clone only"
    P.load([patched], memory_required=base.model.memory_required((22, 4, 8, 8)))
    loaded = mm.loaded_models()
    assert any(lm is patched for lm in loaded), "ComfyUI counts the patched model"
    got = P.managed_module(patched).predict_eps(x, 500, te, c, 4)
    torch.testing.assert_close(got, want_lora, rtol=1e-4, atol=1e-5)
    assert iso.model_digest(model) != digest  # merged while loaded, as ComfyUI does with LoRAs
    P.load([base], memory_required=0)  # another clone of the same model: ComfyUI puts the weights back first
    assert not any(lm is patched for lm in mm.loaded_models())
    torch.testing.assert_close(P.managed_module(base).predict_eps(x, 500, te, c, 4), want_base)
    mm.unload_all_models()
    assert not mm.loaded_models()
    assert iso.model_digest(model) == digest, "cached model unchanged after ComfyUI unloaded it"
    assert base.model_size() == sum(t.numel() * t.element_size() for t in model.state_dict().values())

    # The nodes' placement: fully loaded through ComfyUI ("none"/"windows") or block-offloaded, same epsilon.
    Mem = importlib.import_module(name + ".nodes._memory")
    outs = {}
    for level in ("none", "windows", "blocks"):
        with Mem.diffueraser_running(patched, 64, 64, 4, offload=level) as (denoiser, placement):
            assert placement.level == level
            outs[level] = denoiser.predict_eps(x, 500, te, c, 4)
            if level == "blocks":
                assert any(hasattr(mod, "_diffusers_hook") for mod in model.modules())
                assert not any(lm is patched for lm in mm.loaded_models())
            else:
                assert any(lm is patched for lm in mm.loaded_models())
        torch.testing.assert_close(outs[level], want_lora, rtol=1e-4, atol=1e-5)
    assert not any(hasattr(mod, "_diffusers_hook") for mod in model.modules())
    mm.unload_all_models()
    assert iso.model_digest(model) == digest, "cached model unchanged after the placements"
print("PATCHER_OK")
"""


def test_networks_are_loaded_counted_and_restored_by_comfyui(tmp_path):
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    proc = subprocess.run([python, "-c", SCRIPT, str(comfyui_dir()), str(REPO_ROOT), str(tmp_path / "lora.safetensors")],
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0 and "PATCHER_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
