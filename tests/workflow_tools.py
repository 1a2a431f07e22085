"""Read, check and convert the shipped UI-format workflows.

``node_specs()`` gives ``/object_info``-style signatures for the pack's nodes (read from the node
classes) and for the ComfyUI core nodes the workflows use (tests/data/comfyui_core_nodes.json).
``validate_workflow`` checks node types, links and widget values; ``ui_to_api`` converts a UI
workflow to the API format that ``/prompt`` takes (ComfyUI's frontend does this in the browser).
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from conftest import REPO_ROOT
from pack import load_pack

CORE_NODES_FILE = Path(__file__).parent / "data" / "comfyui_core_nodes.json"
# Node sizes ComfyUI's frontend (1.27.10) gave our nodes once their media loaded, read off the canvas by
# tools/screenshot_workflows.py: {type: [width, height]}.
FRONTEND_SIZES_FILE = Path(__file__).parent / "data" / "frontend_node_sizes.json"
WORKFLOWS_DIR = REPO_ROOT / "workflows"
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}
# Combos that list the user's files: any file name is valid in a shipped workflow.
FILE_INPUTS = {
    ("LoadVideo", "file"), ("LoadImage", "image"), ("VAELoader", "vae_name"), ("CLIPLoader", "clip_name"),
    ("RRDPOLoadDiffuEraser", "model_name"), ("RRDPOLoadDiffuEraser", "pcm_lora"),
    ("RRDPOApplyRegionDPOLoRA", "lora_name"), ("RRDPOBuildPreferencePairs", "source_folder"),
    ("RRDPOProPainterPrior", "propainter"), ("RRDPOProPainterPrior", "flow_completion"),
    ("RRDPOProPainterPrior", "raft"),
}


def _pack_specs() -> dict:
    specs = {}
    for node_id, cls in load_pack().NODE_CLASS_MAPPINGS.items():
        inputs = cls.INPUT_TYPES()
        specs[node_id] = {
            "input": {k: {n: list(v) for n, v in inputs.get(k, {}).items()} for k in ("required", "optional")},
            "input_order": {k: list(inputs.get(k, {})) for k in ("required", "optional")},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        }
    return specs


def node_specs() -> dict:
    specs = json.loads(CORE_NODES_FILE.read_text())["nodes"]
    specs.update(_pack_specs())
    return specs


def _kind(entry) -> tuple[str, dict]:
    kind = entry[0]
    opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if isinstance(kind, list):
        return "COMBO", dict(opts, options=kind)
    return kind, opts


def input_entries(spec: dict) -> list[tuple[str, str, dict]]:
    """(name, kind, opts) of every input in declaration order (required, then optional)."""
    out = []
    for section in ("required", "optional"):
        order = spec.get("input_order", {}).get(section) or list(spec["input"].get(section, {}))
        for name in order:
            kind, opts = _kind(spec["input"][section][name])
            out.append((name, kind, dict(opts, _required=section == "required")))
    return out


def widget_entries(spec: dict) -> list[tuple[str, str, dict]]:
    return [e for e in input_entries(spec) if e[1] in WIDGET_TYPES and not e[2].get("forceInput")]


def _has_control_widget(name: str, kind: str, opts: dict) -> bool:
    return kind == "INT" and (opts.get("control_after_generate") or name in SEED_NAMES)


def widget_values_by_name(node: dict, spec: dict) -> dict:
    """Map a UI node's positional ``widgets_values`` to input names (skipping seed-control values).

    Optional widgets added to a node after the workflow was saved have no value yet; like the
    frontend, they take their default (only trailing optional ones: anything else is an error).
    """
    values = list(node.get("widgets_values") or [])
    out, i = {}, 0
    for name, kind, opts in widget_entries(spec):
        if i >= len(values) and not opts["_required"] and "default" in opts:
            out[name] = opts["default"]
            continue
        if i >= len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): no widget value for {name!r}")
        out[name] = values[i]
        i += 1
        if _has_control_widget(name, kind, opts):
            i += 1  # the frontend's "fixed/randomize" value follows the seed
    if i != len(values):
        raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values, expected {i}")
    return out


def check_widget_value(name: str, kind: str, opts: dict, value) -> str | None:
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name}: {value!r} is not an integer"
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{name}: {value!r} is not a number"
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            return f"{name}: {value!r} is not a boolean"
    elif kind == "STRING":
        if not isinstance(value, str):
            return f"{name}: {value!r} is not a string"
    elif kind == "COMBO":
        options = opts.get("options") or []
        if options and value not in options:
            return f"{name}: {value!r} is not one of {options}"
        if not options and not isinstance(value, str):  # a file list: any file name
            return f"{name}: {value!r} is not a file name"
    if kind in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            return f"{name}: {value} < min {opts['min']}"
        if "max" in opts and value > opts["max"]:
            return f"{name}: {value} > max {opts['max']}"
    return None


def validate_workflow(wf: dict, specs: dict) -> list[str]:
    """Every problem found in a UI-format workflow (empty list = valid)."""
    problems = []
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf.get("links", [])}
    for link_id, from_id, from_slot, to_id, to_slot, ltype in links.values():
        src, dst = nodes.get(from_id), nodes.get(to_id)
        if src is None or dst is None:
            problems.append(f"link {link_id}: missing node")
            continue
        out_type = specs[src["type"]]["output"][from_slot] if src["type"] in specs else None
        dst_input = dst["inputs"][to_slot] if to_slot < len(dst.get("inputs", [])) else None
        if dst_input is None or dst_input.get("link") != link_id:
            problems.append(f"link {link_id}: target slot {to_slot} of node {to_id} does not reference it")
            continue
        if dst["type"] in specs:
            entries = {n: (k, o) for n, k, o in input_entries(specs[dst["type"]])}
            if dst_input["name"] not in entries:
                problems.append(f"link {link_id}: {dst['type']} has no input {dst_input['name']!r}")
                continue
            in_type = entries[dst_input["name"]][0]
            if out_type is not None and in_type != "*" and out_type != in_type:
                problems.append(f"link {link_id}: {src['type']}[{from_slot}] gives {out_type}, "
                                f"{dst['type']}.{dst_input['name']} takes {in_type}")
        if ltype != out_type:
            problems.append(f"link {link_id}: declared type {ltype} but the source gives {out_type}")
    for node in nodes.values():
        if node["type"] in FRONTEND_ONLY:
            continue
        spec = specs.get(node["type"])
        if spec is None:
            problems.append(f"node {node['id']}: unknown node type {node['type']!r}")
            continue
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, kind, opts in input_entries(spec):
            if kind not in WIDGET_TYPES and opts["_required"] and name not in linked:
                problems.append(f"node {node['id']} ({node['type']}): required input {name!r} is not connected")
        try:
            values = widget_values_by_name(node, spec)
        except ValueError as e:
            problems.append(str(e))
            continue
        for name, kind, opts in widget_entries(spec):
            if (node["type"], name) in FILE_INPUTS:
                opts = dict(opts, options=[])
            err = check_widget_value(name, kind, opts, values[name])
            if err:
                problems.append(f"node {node['id']} ({node['type']}): {err}")
    return problems


def ui_to_api(wf: dict, specs: dict, overrides: dict | None = None) -> dict:
    """Convert a UI-format workflow to the API format.

    ``overrides`` maps ``node title or type -> {input: value}`` to replace widget values (e.g. the
    file names a test wrote).
    """
    overrides = overrides or {}
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf.get("links", [])}
    prompt = {}
    for node in nodes.values():
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        spec = specs[node["type"]]
        inputs = dict(widget_values_by_name(node, spec))
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                _, from_id, from_slot, _, _, _ = links[inp["link"]]
                inputs[inp["name"]] = [str(from_id), from_slot]
        for key in (node.get("title"), node["type"]):
            if key in overrides:
                inputs.update(overrides[key])
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def load_workflows() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(WORKFLOWS_DIR.glob("*.json"))}


# -- layout ------------------------------------------------------------------------------------
# Nodes whose size the frontend grows once media are shown (issue 11: Load Video grows to about
# 340x263 with a 16:9 clip's preview; 300 px leaves room for 4:3); floors on top of the measured sizes.
MEDIA_MIN_SIZE = {
    "LoadVideo": (340, 300), "SaveVideo": (340, 300), "PreviewImage": (340, 263), "SaveImage": (340, 290),
    "LoadImage": (340, 330), "PreviewAny": (340, 160), "MarkdownNote": (400, 200), "Note": (400, 200),
}
MIN_GAP = 40  # px the layout keeps between any two nodes
TITLE_H = 30  # LiteGraph draws the title bar above a node's pos


def workflow_uuid(name: str) -> str:
    """A stable, valid UUID for a workflow's ``id`` (the frontend's zod schema rejects anything else)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/region-reg-dpo/workflows/{name}"))


def frontend_sizes() -> dict[str, tuple[int, int]]:
    if FRONTEND_SIZES_FILE.exists():
        return {k: tuple(v) for k, v in json.loads(FRONTEND_SIZES_FILE.read_text())["sizes"].items()}
    return {}


def estimated_size(node: dict) -> tuple[int, int]:
    """LiteGraph's size for a node from its slots and widgets: title bar, one row per slot pair, one per widget."""
    n_in = sum(1 for i in node.get("inputs", []) if "widget" not in i)
    n_out = len(node.get("outputs", []))
    n_widgets = len(node.get("widgets_values") or [])
    title = node.get("title") or node["type"]
    width = max(300, 9 * len(title) + 60)
    height = 30 + 22 * max(n_in, n_out) + 28 * n_widgets + 16
    return width, height


def display_size(node: dict, measured: dict | None = None) -> tuple[int, int]:
    """The size the node has on the canvas once its media loaded: the largest of the estimate, the
    media floor and what the frontend was measured to give this node type."""
    measured = frontend_sizes() if measured is None else measured
    w, h = estimated_size(node)
    for floor in (MEDIA_MIN_SIZE.get(node["type"]), measured.get(node["type"])):
        if floor:
            w, h = max(w, floor[0]), max(h, floor[1])
    return int(w), int(h)


def overlaps(boxes: dict, gap: int = MIN_GAP) -> list[str]:
    """Pairs of boxes ``{name: (x, y, w, h)}`` closer than ``gap`` px (on both axes)."""
    items, problems = list(boxes.items()), []
    for i, (a, (ax, ay, aw, ah)) in enumerate(items):
        for b, (bx, by, bw, bh) in items[i + 1:]:
            if ax < bx + bw + gap and bx < ax + aw + gap and ay < by + bh + gap and by < ay + ah + gap:
                problems.append(f"{a} at {(ax, ay, aw, ah)} and {b} at {(bx, by, bw, bh)} are closer than {gap} px")
    return problems


def layout_boxes(wf: dict, measured: dict | None = None) -> dict:
    """{node label: (x, y, w, h)} with each node at its on-canvas size (``display_size``)."""
    measured = frontend_sizes() if measured is None else measured
    boxes = {}
    for node in wf["nodes"]:
        w, h = display_size(node, measured)
        w, h = max(w, node["size"][0]), max(h, node["size"][1])
        boxes[f"{node['id']}:{node.get('title') or node['type']}"] = (node["pos"][0], node["pos"][1] - TITLE_H,
                                                                     w, h + TITLE_H)
    return boxes
