"""The shipped workflows load in ComfyUI: known node types, type-correct links, valid widget values."""
from __future__ import annotations

import copy

import pytest

from workflow_tools import load_workflows, node_specs, ui_to_api, validate_workflow

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
