"""Write the example workflows in workflows/ (ComfyUI UI format) from compact graph descriptions.

The JSON files are what users drag into ComfyUI; this script is how maintainers keep them in
step with the node signatures. Run from the repository root::

    python3 tools/build_workflows.py

Widget values not given explicitly take the node's declared default. Nodes are laid out in
columns by graph depth.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from workflow_tools import (TITLE_H, WORKFLOWS_DIR, _has_control_widget, display_size, input_entries,  # noqa: E402
                            node_specs, widget_entries, workflow_uuid)

SPECS = node_specs()
GAP = 60  # px between nodes (the frontend's sizes below already include their media previews)
NOTE_W, NOTE_H = 520, 560


class Out:
    def __init__(self, node: "Node", slot: int):
        self.node, self.slot = node, slot

    @property
    def type(self) -> str:
        return SPECS[self.node.type]["output"][self.slot]


class Node:
    def __init__(self, wf: "Workflow", node_id: int, type_: str, title: str | None, kwargs: dict):
        self.wf, self.id, self.type, self.title, self.kwargs = wf, node_id, type_, title, kwargs

    def __getitem__(self, slot: int) -> Out:
        return Out(self, slot)


class Workflow:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[Node] = []
        self.notes: list[tuple[str, str]] = []

    def add(self, type_: str, title: str | None = None, **kwargs) -> Node:
        if type_ not in SPECS:
            raise KeyError(f"unknown node type {type_}")
        node = Node(self, len(self.nodes) + 1, type_, title, kwargs)
        self.nodes.append(node)
        return node

    def outputs(self, type_: str) -> list[str]:
        return SPECS[type_]["output"]

    def note(self, title: str, text: str) -> None:
        self.notes.append((title, text))

    def to_json(self) -> dict:
        links, depth = [], {}
        for node in self.nodes:  # nodes are added in dependency order
            ups = [v.node for v in node.kwargs.values() if isinstance(v, Out)]
            depth[node.id] = 1 + max((depth[u.id] for u in ups), default=-1)
        # a loader (no inputs) sits one column before its first consumer, so its wires stay short
        consumers: dict[int, list[int]] = {}
        for node in self.nodes:
            for v in node.kwargs.values():
                if isinstance(v, Out):
                    consumers.setdefault(v.node.id, []).append(node.id)
        for node in self.nodes:
            if not any(isinstance(v, Out) for v in node.kwargs.values()) and node.id in consumers:
                depth[node.id] = max(0, min(depth[c] for c in consumers[node.id]) - 1)
        out_links: dict[tuple[int, int], list[int]] = {}
        ui_nodes = []
        for order, node in enumerate(self.nodes):
            spec = SPECS[node.type]
            inputs, widgets = [], []
            for name, kind, opts in input_entries(spec):
                value = node.kwargs.get(name)
                if isinstance(value, Out):
                    link_id = len(links) + 1
                    slot = len(inputs)
                    links.append([link_id, value.node.id, value.slot, node.id, slot, value.type])
                    out_links.setdefault((value.node.id, value.slot), []).append(link_id)
                    entry = {"name": name, "type": kind, "link": link_id}
                    if kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                        entry["widget"] = {"name": name}
                    inputs.append(entry)
                elif kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                    inputs.append({"name": name, "type": kind, "link": None})
            for name, kind, opts in widget_entries(spec):
                value = node.kwargs.get(name)
                if value is None or isinstance(value, Out):
                    value = opts.get("default")
                    if value is None and kind == "COMBO":
                        value = (opts.get("options") or [""])[0]
                widgets.append(value)
                if _has_control_widget(name, kind, opts):
                    widgets.append("fixed")
            ui = {
                "id": node.id,
                "type": node.type,
                "pos": [0, 0],
                "size": [0, 0],
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": inputs,
                "outputs": [
                    {"name": n, "type": t, "links": out_links.get((node.id, i), []), "slot_index": i}
                    for i, (t, n) in enumerate(zip(spec["output"], spec.get("output_name") or spec["output"]))
                ],
                "properties": {"Node name for S&R": node.type},
                "widgets_values": widgets,
            }
            if node.title:
                ui["title"] = node.title
            ui_nodes.append(ui)
        # fix the outputs' link lists (links to later nodes were not known yet)
        for ui in ui_nodes:
            for i, out in enumerate(ui["outputs"]):
                out["links"] = out_links.get((ui["id"], i), []) or None
        self._layout(ui_nodes, depth, links)
        next_id = len(self.nodes) + 1
        for k, (title, text) in enumerate(self.notes):
            ui_nodes.append({
                "id": next_id + k, "type": "MarkdownNote", "pos": [k * (NOTE_W + GAP), -NOTE_H - GAP],  # above the graph
                "size": [NOTE_W, NOTE_H],
                "flags": {}, "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [],
                "title": title, "properties": {}, "widgets_values": [text],
                "color": "#432", "bgcolor": "#653",
            })
        return {
            "id": workflow_uuid(self.name),
            "revision": 0,
            "last_node_id": len(ui_nodes),
            "last_link_id": len(links),
            "nodes": ui_nodes,
            "links": links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [40, NOTE_H + 2 * GAP]}},
            "version": 0.4,
        }


    @staticmethod
    def _layout(ui_nodes: list[dict], depth: dict[int, int], links: list[list]) -> None:
        """Columns by graph depth; each column as wide as its widest node, nodes stacked with GAP between.

        Sizes are the ones the frontend gives the nodes once their media are loaded (``display_size``),
        so a Load Video with its preview or a Preview Image with its picture covers nothing.
        """
        columns: dict[int, list[dict]] = {}
        for ui in ui_nodes:
            ui["size"] = list(display_size(ui))
            columns.setdefault(depth[ui["id"]], []).append(ui)
        by_id = {ui["id"]: ui for ui in ui_nodes}
        source = {link[0]: link[1] for link in links}
        x = 0
        for col in sorted(columns):
            # order a column by where its inputs come from (fewer crossing wires); loaders keep their order
            def upstream_y(ui: dict) -> float:
                ups = [source[i["link"]] for i in ui["inputs"] if i.get("link") is not None]
                ys = [by_id[u]["pos"][1] for u in ups if depth[u] < col]
                return sum(ys) / len(ys) if ys else -1.0

            columns[col].sort(key=upstream_y)
            y = TITLE_H  # pos is the body's corner; the title bar sits above it
            for ui in columns[col]:
                ui["pos"] = [x, y]
                y += ui["size"][1] + TITLE_H + GAP
            x += max(ui["size"][0] for ui in columns[col]) + GAP


def write(wf: Workflow) -> Path:
    WORKFLOWS_DIR.mkdir(exist_ok=True)
    path = WORKFLOWS_DIR / f"{wf.name}.json"
    path.write_text(json.dumps(wf.to_json(), indent=1) + "\n")
    return path


def main() -> None:
    from workflow_defs import ALL_WORKFLOWS  # noqa: E402  (tools/workflow_defs.py)

    for build in ALL_WORKFLOWS:
        print("wrote", write(build(Workflow)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
