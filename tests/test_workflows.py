"""The shipped workflows load in ComfyUI: known node types, type-correct links, valid widget values."""
from __future__ import annotations

import copy
import re

import pytest

from pack import load_pack
from workflow_tools import (MIN_GAP, TITLE_H, layout_boxes, load_workflows, node_specs, overlaps, ui_to_api,
                            validate_workflow, widget_values_by_name)

WORKFLOWS = load_workflows()
EXPECTED = {"a_object_removal_flow_prior", "b_diffueraser_object_removal_lora", "c_build_preference_pairs",
            "d_train_region_dpo_lora", "e_ab_base_vs_lora_metrics"}


def test_the_five_workflows_ship():
    assert EXPECTED <= set(WORKFLOWS)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_is_valid(name):
    wf = WORKFLOWS[name]
    assert wf.get("version") == 0.4 and wf["nodes"] and wf["links"]
    problems = validate_workflow(wf, node_specs())
    assert not problems, "\n".join(problems)
    notes = [n for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes and all(n["widgets_values"][0].strip() for n in notes), "each workflow tells the user what to do"


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_converts_to_api_format(name):
    prompt = ui_to_api(WORKFLOWS[name], node_specs())
    ids = set(prompt)
    for node_id, entry in prompt.items():
        for value in entry["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                assert value[0] in ids, f"node {node_id} links to a node that is not in the prompt"
    assert any(e["class_type"].startswith("Save") or e["class_type"].startswith("Preview") for e in prompt.values())


def test_validator_catches_broken_workflows():
    specs = node_specs()
    wf = copy.deepcopy(WORKFLOWS["a_object_removal_flow_prior"])
    # a link whose types do not match
    link = wf["links"][0]
    link[5] = "LATENT"
    assert validate_workflow(wf, specs)
    # an unknown node type
    wf = copy.deepcopy(WORKFLOWS["a_object_removal_flow_prior"])
    wf["nodes"][1]["type"] = "NoSuchNode"
    assert any("unknown node type" in p for p in validate_workflow(wf, specs))
    # a widget value out of range
    wf = copy.deepcopy(WORKFLOWS["a_object_removal_flow_prior"])
    prep = next(n for n in wf["nodes"] if n["type"] == "RRDPOPrepareVideoMask")
    prep["widgets_values"][0] = 10_000
    assert any("max" in p for p in validate_workflow(wf, specs))


# -- what a person sees (issue 11) ------------------------------------------------------------------
UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
CORE_DISPLAY_NAMES = {"LoadVideo": "Load Video", "SaveVideo": "Save Video", "SaveImage": "Save Image",
                      "PreviewImage": "Preview Image", "PreviewAny": "Preview Any", "ImageStitch": "Image Stitch",
                      "GetVideoComponents": "Get Video Components", "CreateVideo": "Create Video"}


def _shown_names(wf: dict) -> set[str]:
    """Names a note may use for a node: its title, and the display name of its type."""
    pack = load_pack().NODE_DISPLAY_NAME_MAPPINGS
    types = {pack.get(n["type"]) or CORE_DISPLAY_NAMES.get(n["type"], n["type"]) for n in wf["nodes"]}
    return types | {n["title"] for n in wf["nodes"] if n.get("title")}


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_id_is_a_uuid_the_frontend_accepts(name):
    # the frontend's zod schema toasts "Invalid uuid at id" otherwise
    assert re.match(UUID_RE, WORKFLOWS[name]["id"]), WORKFLOWS[name]["id"]


def test_workflow_ids_are_distinct():
    assert len({wf["id"] for wf in WORKFLOWS.values()}) == len(WORKFLOWS)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_no_node_covers_another_at_its_on_canvas_size(name):
    wf = WORKFLOWS[name]
    boxes = layout_boxes(wf)
    problems = overlaps(boxes, MIN_GAP)
    assert not problems, "\n".join(problems)
    load_video = [b for k, b in boxes.items() if "Load Video" in k]
    assert load_video and all(b[2] >= 340 and b[3] >= 263 + TITLE_H for b in load_video), \
        "Load Video is laid out at least at the size its preview gives it"


def test_overlap_check_catches_a_grown_load_video():
    wf = copy.deepcopy(WORKFLOWS["a_object_removal_flow_prior"])
    clip, mask = (n for n in wf["nodes"] if n["type"] == "LoadVideo")
    # the old layout: the mask's Load Video 200 px under the clip's, which a 263 px preview covers
    mask["pos"] = [clip["pos"][0], clip["pos"][1] + 200]
    mask["size"] = clip["size"] = [300, 100]
    assert overlaps(layout_boxes(wf), MIN_GAP)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_every_load_video_is_trimmed_and_resized(name):
    wf = WORKFLOWS[name]
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf["links"]}
    clips = [n for n in wf["nodes"] if n["type"] == "LoadVideo" and "mask" not in (n.get("title") or "")]
    assert clips
    for clip in clips:
        comps = [nodes[links[l][3]] for l in clip["outputs"][0]["links"]]
        frames_users = [nodes[links[l][3]] for c in comps for l in (c["outputs"][0]["links"] or [])]
        assert frames_users and all(u["type"] == "RRDPOTrimResizeClip" for u in frames_users), \
            f"{clip.get('title')}: the frames go straight into {[u['type'] for u in frames_users]}"
        for trim in frames_users:
            values = widget_values_by_name(trim, node_specs()["RRDPOTrimResizeClip"])
            assert 0 < values["max_frames"] <= 300 and 0 < values["max_side"] <= 1280, values


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_video_results_are_also_saved_losslessly(name):
    wf = WORKFLOWS[name]
    links = {l[0]: l for l in wf["links"]}
    saves = [n for n in wf["nodes"] if n["type"] == "SaveVideo"]
    for save in saves:
        create = next(n for n in wf["nodes"] if n["id"] == links[save["inputs"][0]["link"]][1])
        source = links[create["inputs"][0]["link"]][1:3]
        pngs = [n for n in wf["nodes"] if n["type"] == "SaveImage"
                and links[n["inputs"][0]["link"]][1:3] == source]
        assert pngs, "the mp4 is lossy (SaveVideo in ComfyUI 0.3.64 has no quality option): save PNG frames too"


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_notes_name_only_nodes_of_the_graph(name):
    wf = WORKFLOWS[name]
    shown = _shown_names(wf)
    text = "\n".join(n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "MarkdownNote")
    named = set(re.findall(r"\*([A-Z][^*\n]+?)\*", text.replace("**", "")))
    assert named, "the note names the nodes it talks about"
    assert named <= shown, f"the note names nodes this workflow does not have: {sorted(named - shown)}"
    n_load = sum(n["type"] == "LoadVideo" for n in wf["nodes"])
    assert ("two *Load Video*" in text) == (n_load == 2), f"{n_load} Load Video node(s); the note says otherwise"


def test_ab_branches_are_titled():
    wf = WORKFLOWS["e_ab_base_vs_lora_metrics"]
    branch_types = ("RRDPODiffuEraserSampler", "RRDPOBlendIntoVideo", "RRDPOInpaintingMetrics", "PreviewAny",
                    "PreviewImage")
    for n in wf["nodes"]:
        if n["type"] in branch_types:
            assert (n.get("title") or "").startswith(("Base:", "With Region-DPO LoRA:")), n
    titles = [n.get("title", "") for n in wf["nodes"]]
    assert sum(t.startswith("Base:") for t in titles) == sum(t.startswith("With Region-DPO LoRA:") for t in titles)


def test_shipped_defaults_are_the_real_ones():
    """The integration tests run these values; they must be what the README and the design say."""
    specs = node_specs()
    b = WORKFLOWS["b_diffueraser_object_removal_lora"]
    values = {n["type"]: widget_values_by_name(n, specs[n["type"]]) for n in b["nodes"] if n["type"] in specs}
    assert values["RRDPOLoadDiffuEraser"]["pcm_lora"] == "pcm_sd15_smallcfg_2step_converted.safetensors"
    assert values["RRDPOApplyRegionDPOLoRA"]["strength"] == 1.0
    assert values["RRDPODiffuEraserSampler"]["scheduler"] == "tcd"
