"""The pack inside a real ComfyUI: node registration, every shipped workflow end to end, interrupt.

Runs only when ``COMFYUI_DIR`` points at a ComfyUI checkout (``COMFYUI_PYTHON``: the interpreter
of its environment, with this pack's requirements installed); skipped otherwise. Tiny random
models are written into a private models folder: a tiny DiffuEraser (768-wide text context, so
ComfyUI's SD1.5 CLIP fits), a random SD1.5-shaped VAE and CLIP text encoder, and a Region-DPO
LoRA for the tiny model.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfyui_server import comfyui_dir, running_comfyui
from conftest import REPO_ROOT
from pack import load_pack
from workflow_tools import load_workflows, ui_to_api

pytestmark = pytest.mark.skipif(comfyui_dir() is None, reason="set COMFYUI_DIR to a ComfyUI checkout to run")

FRAMES, SIZE = 8, 64

# Written by a separate interpreter so the big random models never sit in the test process.
MAKE_MODELS = r"""
import sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[1])
base = Path(sys.argv[2])
from safetensors.torch import save_file
from rrdpo_core.models.testing import write_tiny_diffueraser, tiny_diffueraser
from rrdpo_core.region_lora import RegionLoraInfo, add_region_adapter, save_region_lora
write_tiny_diffueraser(base / "models/diffueraser/diffuEraser", seed=0, cross_attention_dim=768)
m = tiny_diffueraser(seed=0, cross_attention_dim=768)
add_region_adapter(m.unet, rank=4, lora_alpha=8)
with torch.no_grad():
    for n, p in m.unet.named_parameters():
        if "lora_" in n:
            p.normal_(0, 0.2)
save_region_lora(base / "models/loras/rrdpo/region_dpo_lora.safetensors", m.unet, RegionLoraInfo(rank=4, lora_alpha=8))
torch.manual_seed(0)
from diffusers import AutoencoderKL
vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
(base / "models/vae").mkdir(parents=True, exist_ok=True)
save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, str(base / "models/vae/sd-vae-ft-mse.safetensors"))
from transformers import CLIPTextConfig, CLIPTextModel
clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                    num_hidden_layers=12, max_position_embeddings=77, vocab_size=49408, projection_dim=768))
(base / "models/text_encoders").mkdir(parents=True, exist_ok=True)
# ComfyUI reads the original "text_model." key layout; transformers 5 drops that prefix
save_file({(k if k.startswith("text_model.") else "text_model." + k): v.contiguous()
           for k, v in clip.state_dict().items() if "position_ids" not in k},
          str(base / "models/text_encoders/clip_l.safetensors"))
"""


def _write_inputs(base: Path) -> None:
    import numpy as np

    from rrdpo_core.video_io import write_video

    yy, xx = np.meshgrid(np.linspace(0, 1, SIZE), np.linspace(0, 1, SIZE), indexing="ij")
    frames = np.stack([np.stack([(xx + 0.04 * t) % 1, yy, 0.5 * (xx + yy)], -1) for t in range(FRAMES)])
    masks = np.zeros((FRAMES, SIZE, SIZE, 3))
    for t in range(FRAMES):
        masks[t, 20:44, 12 + 2 * t: 32 + 2 * t] = 1
    write_video(base / "input" / "input_video.mp4", frames.astype(np.float32), fps=8)
    write_video(base / "input" / "input_mask.mp4", masks.astype(np.float32), fps=8)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "input").mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", MAKE_MODELS, str(REPO_ROOT), str(base)], check=True)
    _write_inputs(base)
    with running_comfyui(base) as srv:
        yield srv


# Test-size settings that override the workflows' widget values (the graphs themselves are unchanged).
OVERRIDES = {
    "RRDPOLoadDiffuEraser": {"pcm_lora": "none"},
    "RRDPOPriorLatents": {"scheduler": "ddim", "steps": 2},
    "RRDPODiffuEraserSampler": {"scheduler": "ddim", "steps": 2},
    "RRDPOBuildPreferencePairs": {"count": 2, "num_frames": 6},
    "RRDPOTrainer": {"steps": 2, "checkpoint_every": 1},
    "RRDPOFlowPrior": {"preset": "fast"},
}


def test_object_info_lists_every_node_without_import_failure(server):
    info = server.object_info()
    ours = set(load_pack().NODE_CLASS_MAPPINGS)
    assert ours <= set(info), f"missing from /object_info: {sorted(ours - set(info))}"
    log = server.log()
    assert "region_reg_dpo" not in "".join(l for l in log.splitlines() if "IMPORT FAILED" in l), log[-3000:]
    assert info["RRDPOLoadDiffuEraser"]["input"]["required"]["model_name"][0] == ["diffuEraser"]


@pytest.mark.parametrize("name", sorted(load_workflows()))
def test_workflow_runs_through_prompt(server, name):
    info = server.object_info()
    workflow = load_workflows()[name]
    prompt = ui_to_api(workflow, info, overrides=OVERRIDES)
    entry = server.wait(server.queue_prompt(prompt), timeout=900)
    status = entry["status"]
    assert status["status_str"] == "success", json.dumps(status, indent=1)[:4000] + server.log()[-3000:]
    assert entry["outputs"], "the workflow produced outputs"


def test_interrupt_stops_a_long_node(server):
    info = server.object_info()
    workflow = load_workflows()["d_train_region_dpo_lora"]
    overrides = dict(OVERRIDES, RRDPOTrainer={"steps": 100000, "checkpoint_every": 1000, "lora_name": "interrupted"})
    prompt = ui_to_api(workflow, info, overrides=overrides)
    pid = server.queue_prompt(prompt)
    # wait until the trainer runs, then press Cancel
    deadline = time.time() + 600
    while time.time() < deadline:
        queue = server.get("/queue")
        if queue["queue_running"] and (server.base / "output" / "rrdpo_runs" / "interrupted").exists():
            break
        time.sleep(0.5)
    time.sleep(2)
    started = time.time()
    server.interrupt()
    entry = server.wait(pid, timeout=120)
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    assert time.time() - started < 60, "the trainer stopped promptly"
