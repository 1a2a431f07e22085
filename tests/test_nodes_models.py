"""Missing models: with empty model folders the shipped names stay selectable and running them says
which folder to fill and where the files come from (instead of ComfyUI's "Value not in list")."""
from __future__ import annotations

import json

import pytest

from conftest import REPO_ROOT
from pack import load_pack, node


def _choices(node_id: str) -> dict[str, list]:
    spec = load_pack().NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
    return {k: v[0] for section in ("required", "optional") for k, v in spec.get(section, {}).items()
            if isinstance(v[0], list)}


def test_empty_model_folders_keep_the_shipped_names_listed(comfy_stubs):
    load = _choices("RRDPOLoadDiffuEraser")
    assert load["model_name"] == ["diffuEraser"]
    assert "pcm_sd15_smallcfg_2step_converted.safetensors" in load["pcm_lora"] and "none" in load["pcm_lora"]
    assert _choices("RRDPOApplyRegionDPOLoRA")["lora_name"] == ["rrdpo/region_dpo_lora.safetensors"]
    pro = _choices("RRDPOProPainterPrior")
    for key, name in (("propainter", "ProPainter.pth"), ("flow_completion", "recurrent_flow_completion.pth"),
                      ("raft", "raft-things.pth")):
        assert name in pro[key]
        spec = load_pack().NODE_CLASS_MAPPINGS["RRDPOProPainterPrior"].INPUT_TYPES()["required"][key]
        assert spec[1]["default"] == name


def test_placeholders_raise_the_packs_message_with_folder_and_source(comfy_stubs):
    with pytest.raises(FileNotFoundError, match=r"(?s)diffuEraser.*diffueraser.*huggingface.co/lixiaowen/diffuEraser"):
        node("RRDPOLoadDiffuEraser").load("diffuEraser", "auto", "none")


def test_missing_pcm_and_region_lora_name_the_folder_and_source(comfy_stubs):
    from rrdpo_core.models.testing import write_tiny_diffueraser

    write_tiny_diffueraser(comfy_stubs.models_dir / "diffueraser" / "tiny", seed=0)
    loras = str(comfy_stubs.models_dir / "loras")
    with pytest.raises(FileNotFoundError) as info:
        node("RRDPOLoadDiffuEraser").load("tiny", "auto", "pcm_sd15_smallcfg_2step_converted.safetensors")
    assert loras in str(info.value) and "huggingface.co/wangfuyun/PCM_Weights" in str(info.value)
    (handle,) = node("RRDPOLoadDiffuEraser").load("tiny", "auto", "none")
    with pytest.raises(FileNotFoundError) as info:
        node("RRDPOApplyRegionDPOLoRA").apply(handle, "rrdpo/region_dpo_lora.safetensors", 1.0)
    assert loras in str(info.value) and "Trainer" in str(info.value)
    frames = __import__("torch").rand(2, 16, 16, 3)
    with pytest.raises(FileNotFoundError) as info:
        node("RRDPOProPainterPrior").run(frames, frames[..., 0] > 2, "ProPainter.pth", "recurrent_flow_completion.pth",
                                         "raft-things.pth", 4, 20, 1.0)
    assert "propainter" in str(info.value) and "github.com/sczhou/ProPainter" in str(info.value)


def test_shipped_workflows_validate_with_empty_model_folders(comfy_stubs):
    """Every model combo of our nodes in workflows/*.json names a value the node lists with no models
    installed, so ComfyUI lets the graph run and the node's own message appears."""
    checked = 0
    for path in sorted((REPO_ROOT / "workflows").glob("*.json")):
        graph = json.loads(path.read_text())
        for n in graph.get("nodes", []):
            if n["type"] not in ("RRDPOLoadDiffuEraser", "RRDPOApplyRegionDPOLoRA", "RRDPOProPainterPrior"):
                continue
            spec = load_pack().NODE_CLASS_MAPPINGS[n["type"]].INPUT_TYPES()["required"]
            widgets = [k for k, v in spec.items() if isinstance(v[0], list) or v[0] in ("INT", "FLOAT", "STRING",
                                                                                         "BOOLEAN")]
            for name, value in zip(widgets, n.get("widgets_values", [])):
                if isinstance(spec[name][0], list):
                    assert value in spec[name][0], f"{path.name}: {n['type']}.{name}={value!r} is not listed"
                    checked += 1
    assert checked >= 3
