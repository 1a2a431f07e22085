"""The pack inside a real ComfyUI: every shipped workflow run AS SHIPPED, repeated runs, Cancel.

Runs when ``COMFYUI_DIR`` points at a ComfyUI checkout (``COMFYUI_PYTHON``: the interpreter of its
environment, with this pack's requirements installed); skipped otherwise, except in CI (``CI=true``),
where a missing checkout is an error: CI must run these tests.

Each workflows/*.json is converted to the API format with every widget at its shipped value (PCM
LoRA on, LoRA strength 1, TCD, 2 steps, noise-mode prior latents). Only these inputs change:
- file names: the Load Video nodes get small real clips (``tests/comfyui_server.write_test_clips``:
  108x60 and 106x60, not multiples of 8; one of them with ONE mask frame for the whole clip). The
  model files are tiny random models written under the shipped names, so the model widgets keep
  their shipped values;
- ``REDUCED`` below, each with its reason.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from comfyui_server import PCM_LORA_FILE, comfyui_dir, prepare_base, running_comfyui
from pack import load_pack
from workflow_tools import FILE_INPUTS, load_workflows, ui_to_api

if comfyui_dir() is None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("CI is set but COMFYUI_DIR is not: .ci/run must build ComfyUI and point COMFYUI_DIR and "
                    "COMFYUI_PYTHON at it; the real-ComfyUI tests may not be skipped in CI", pytrace=False)
    pytest.skip("set COMFYUI_DIR (and COMFYUI_PYTHON) to a ComfyUI checkout to run", allow_module_level=True)

WORKFLOWS = load_workflows()

# Counts reduced from the shipped values, and why:
REDUCED = {
    # The shipped pair length is DiffuEraser's 22-frame window and needs clips of >= 22 frames; 16 pairs of 22
    # frames through the full-size SD VAE take many minutes on 2 CPU cores. Two 6-frame pairs run every code path.
    "RRDPOBuildPreferencePairs": {"count": 2, "num_frames": 6},
    # 2 optimizer steps run the same code as the shipped 200 (checkpoint, LoRA file, plots) in seconds.
    "RRDPOTrainer": {"steps": 2},
}
LONG_NODES = {"RRDPOPriorLatents", "RRDPODiffuEraserSampler", "RRDPOBuildPreferencePairs", "RRDPOTrainer"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    clips = prepare_base(base)
    with running_comfyui(base) as srv:
        srv.clips = clips
        yield srv


def _inputs(server, video: str, mask: str | None = None) -> dict:
    files = {"Load Video (clip)": {"file": server.clips[video]},
             "Load Video (clean clip)": {"file": server.clips[video]}}
    if mask:
        files["Load Video (mask)"] = {"file": server.clips[mask]}
    return files


def _prompt(server, name: str, files: dict, extra: dict | None = None) -> dict:
    """The shipped workflow in API format; only file inputs, REDUCED and ``extra`` differ from the JSON."""
    info = server.object_info()
    wf = WORKFLOWS[name]
    overrides = {k: dict(v) for k, v in files.items()}
    for source in (REDUCED, extra or {}):
        for key, values in source.items():
            overrides.setdefault(key, {}).update(values)
    by_key = {}
    for node in wf["nodes"]:
        for key in (node.get("title"), node["type"]):
            if key in overrides:
                for inp in overrides[key]:
                    by_key[(node["type"], inp)] = key
    for (node_type, inp), key in by_key.items():
        allowed = (node_type, inp) in FILE_INPUTS or inp in REDUCED.get(node_type, {}) or key in (extra or {})
        assert allowed, f"{name}: {node_type}.{inp} may not differ from the shipped workflow"
    return ui_to_api(wf, info, overrides=overrides)


def _node_id(name: str, title: str) -> str:
    return next(str(n["id"]) for n in WORKFLOWS[name]["nodes"] if (n.get("title") or n["type"]) == title)


def _run(server, name: str, files: dict, extra: dict | None = None, timeout: float = 900) -> dict:
    pid = server.queue_prompt(_prompt(server, name, files, extra))
    entry = server.wait(pid, timeout=timeout)
    assert entry["status"]["status_str"] == "success", (
        json.dumps(entry["status"], indent=1)[:4000] + "\n" + server.log()[-3000:])
    entry["prompt_id"] = pid
    return entry


def _saved_frames(server, entry: dict, node_id: str) -> np.ndarray:
    import cv2

    images = entry["outputs"][node_id]["images"]
    frames = [cv2.imread(str(server.base / "output" / i["subfolder"] / i["filename"]))[..., ::-1] for i in images]
    return np.stack(frames)


def _decoded_input(server, role: str) -> np.ndarray:
    from rrdpo_core.video_io import read_video

    return (read_video(server.base / "input" / server.clips[role]).frames.numpy() * 255).round().astype(np.uint8)


def _executed_types(server, pid: str, prompt: dict) -> set[str]:
    """Node types that ran in this prompt (not served from ComfyUI's cache)."""
    return {prompt[m["data"]["node"]]["class_type"] for _, m in server.prompt_events(pid)
            if m["type"] == "executing" and m["data"].get("node") in prompt}


def _progress_by_node(server, pid: str, prompt: dict) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for _, m in server.prompt_events(pid):
        if m["type"] == "progress":
            node = m["data"]["node"]
            out.setdefault(prompt[node]["class_type"], []).append(m["data"]["value"])
    return out


def test_object_info_lists_every_node_without_import_failure(server):
    info = server.object_info()
    ours = set(load_pack().NODE_CLASS_MAPPINGS)
    assert ours <= set(info), f"missing from /object_info: {sorted(ours - set(info))}"
    log = server.log()
    assert "region_reg_dpo" not in "".join(l for l in log.splitlines() if "IMPORT FAILED" in l), log[-3000:]
    load = info["RRDPOLoadDiffuEraser"]["input"]["required"]
    assert "diffuEraser" in load["model_name"][0]
    assert PCM_LORA_FILE in load["pcm_lora"][0]


def test_a_flow_prior_keeps_untouched_pixels_exact(server):
    name = "a_object_removal_flow_prior"
    entry = _run(server, name, _inputs(server, "video", "mask"))
    frames = _saved_frames(server, entry, _node_id(name, "Save Image (exact frames)"))
    src = _decoded_input(server, "video")
    assert frames.shape == src.shape == (10, 60, 108, 3), "any frame size: the output keeps the input's size"
    from rrdpo_core.video_io import read_masks

    hole = read_masks(server.base / "input" / server.clips["mask"]).numpy()
    import cv2

    # the blend touches the dilated hole plus its feather band; everything well outside must be the input's pixels
    far = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((41, 41), np.uint8)) == 0 for m in hole])
    assert far.sum() > 0.1 * far.size
    diff = np.abs(frames.astype(int) - src.astype(int))[far]
    # the PNG frames are lossless: what differs is only the two decoders' YUV->RGB rounding (<= 2 levels)
    assert diff.max() <= 2 and diff.mean() < 0.5, (diff.max(), diff.mean())
    assert list((server.base / "output" / "rrdpo").glob("flow_prior*.mp4")), "Save Video wrote no mp4"


def test_e_base_and_lora_branches_differ(server):
    name = "e_ab_base_vs_lora_metrics"
    entry = _run(server, name, _inputs(server, "video", "mask"))
    stitched = _saved_frames(server, entry, _node_id(name, "Save Image (exact frames)"))
    assert stitched.shape == (10, 60, 216, 3), "left base, right LoRA, each at the input's 108x60"
    base, lora = stitched[..., :108, :].astype(int), stitched[..., 108:, :].astype(int)
    assert np.abs(base - lora).mean() > 0.5, "the Region-DPO LoRA (strength 1) changed nothing"
    for branch in ("Base: metrics report", "With Region-DPO LoRA: metrics report"):
        assert entry["outputs"].get(_node_id(name, branch)), f"{branch} shows nothing"


def _wait_then_cancel(server, pid: str, prompt: dict, node_type: str, min_value: int = 1) -> None:
    """Press Cancel once ``node_type`` reported progress >= min_value."""
    def started(m):
        d = m.get("data", {})
        return (m["type"] == "progress" and d.get("prompt_id") == pid and d.get("node") in prompt
                and prompt[d["node"]]["class_type"] == node_type and d["value"] >= min_value)

    server.wait_for_event(started, timeout=600)
    server.interrupt()
    entry = server.wait(pid, timeout=300)
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]


def test_b_twice_then_after_cancel_gives_the_same_result(server):
    """Adapters that stay behind on the cached model after a run or a Cancel would change the next result."""
    name = "b_diffueraser_object_removal_lora"
    one_mask = _inputs(server, "video2", "mask_single")  # 106x60 clip, ONE mask frame for all 10 frames
    save = _node_id(name, "Save Image (exact frames)")
    first = _run(server, name, one_mask)
    result = _saved_frames(server, first, save)
    assert result.shape == (10, 60, 106, 3)
    prompt = _prompt(server, name, one_mask)
    progress = _progress_by_node(server, first["prompt_id"], prompt)
    for node_type in ("RRDPOPriorLatents", "RRDPODiffuEraserSampler"):
        values = progress.get(node_type, [])
        assert len(values) >= 3, f"{node_type}: progress {values} (VAE encode, steps and decode each report)"
    report = " ".join(first["outputs"][_node_id(name, "Preview Any (sampler report)")]["text"])
    assert "106x60 padded" in report and "cropped back" in report, f"the sampler does not say it padded: {report}"
    src = _decoded_input(server, "video2")
    assert np.abs(result.astype(int) - src.astype(int)).max() > 20, "nothing was removed"

    second = _run(server, name, _inputs(server, "video", "mask"))  # another clip through the same cached model
    assert _saved_frames(server, second, save).shape == (10, 60, 108, 3)

    pid = server.queue_prompt(prompt)
    _wait_then_cancel(server, pid, prompt, "RRDPODiffuEraserSampler")

    again = _saved_frames(server, _run(server, name, one_mask), save)
    assert np.array_equal(again, result), (
        f"the same workflow gave another result after a second run and a Cancel: mean |diff| "
        f"{np.abs(again.astype(int) - result.astype(int)).mean():.3f}")


# After b and e: d's trainer writes models/loras/rrdpo/region_dpo_lora.safetensors, the LoRA b and e apply
# (that is the shipped flow), replacing the random test LoRA by a 2-step one that is still almost zero.
@pytest.mark.parametrize("name", ["c_build_preference_pairs", "d_train_region_dpo_lora"])
def test_training_workflow_runs_as_shipped(server, name):
    entry = _run(server, name, _inputs(server, "video"))
    prompt = _prompt(server, name, _inputs(server, "video"))
    assert entry["outputs"], "the workflow produced outputs"
    progress = _progress_by_node(server, entry["prompt_id"], prompt)
    ran = _executed_types(server, entry["prompt_id"], prompt)
    assert "RRDPOTrainer" in ran or name == "c_build_preference_pairs"
    for node_type in LONG_NODES & ran:  # d reuses c's pairs from ComfyUI's cache: same clip, same settings
        assert len(progress.get(node_type, [])) >= 2, f"{node_type} showed no progress: {progress}"
    if name == "c_build_preference_pairs":
        preview = entry["outputs"].get(_node_id(name, "Preview Image (pairs)"), {}).get("images")
        assert preview, "the pair builder shows no pairs"
    if name == "d_train_region_dpo_lora":
        assert list((server.base / "output" / "rrdpo_runs" / "region_dpo_lora" / "checkpoints").glob("step_*"))


def test_trainer_cancel_leaves_a_checkpoint_that_a_rerun_resumes(server):
    name = "d_train_region_dpo_lora"
    files = _inputs(server, "video")
    run_dir = server.base / "output" / "rrdpo_runs" / "cancelled_run"
    # A run that is still going when Cancel is pressed; its own name keeps it apart from the as-shipped run.
    long_run = {"RRDPOTrainer": {"steps": 100000, "lora_name": "cancelled_run"}}
    prompt = _prompt(server, name, files, long_run)
    pid = server.queue_prompt(prompt)
    _wait_then_cancel(server, pid, prompt, "RRDPOTrainer", min_value=2)
    steps = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))
    assert steps and steps[-1] >= 2, f"Cancel left no checkpoint in {run_dir}: {list(run_dir.rglob('*'))[:20]}"
    k = steps[-1]

    resume = {"RRDPOTrainer": {"steps": k + 2, "lora_name": "cancelled_run"}}
    prompt = _prompt(server, name, files, resume)
    entry = _run(server, name, files, resume)
    values = _progress_by_node(server, entry["prompt_id"], prompt)["RRDPOTrainer"]
    assert values[0] == k and values[-1] == k + 2, f"the re-run did not resume from step {k}: progress {values}"
    report = " ".join(entry["outputs"][_node_id(name, "Preview Any (report)")]["text"])
    assert report.startswith(f"resumed from the checkpoint of step {k}"), report[:300]
    assert (run_dir / "checkpoints" / f"step_{k + 2:08d}").is_dir()
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in log]
    assert logged == sorted(set(logged)) and logged[-1] >= k + 1, logged


def test_every_shipped_workflow_is_covered():
    covered = {"a_object_removal_flow_prior", "b_diffueraser_object_removal_lora", "c_build_preference_pairs",
               "d_train_region_dpo_lora", "e_ab_base_vs_lora_metrics"}
    assert set(WORKFLOWS) == covered, "a new workflow needs a test here that runs it as shipped"
