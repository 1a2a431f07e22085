"""Screenshot every shipped workflow in the real ComfyUI frontend and check its layout there.

Starts ComfyUI (``COMFYUI_DIR``, ``COMFYUI_PYTHON``) with the tiny test models and small clips put
under the file names the workflows ship with, loads each workflows/*.json unchanged in headless
Chromium, waits for the video previews (``--run`` also queues each workflow and waits for its
results, so Preview/Save nodes show their pictures), reads every node's position and size off the
canvas, fails if two nodes are closer than 40 px, and saves docs/workflows/<name>.png.
``--record-sizes`` writes the largest size seen per node type to tests/data/frontend_node_sizes.json,
which tools/build_workflows.py lays out with and tests/test_workflows.py checks against.

Not run in CI (it needs Chromium and playwright-core)::

    apt-get install -y chromium && (cd /tmp/pw && npm install playwright-core)
    NODE_PATH=/tmp/pw/node_modules COMFYUI_DIR=... COMFYUI_PYTHON=... python3 tools/screenshot_workflows.py \\
        --run a_object_removal_flow_prior,b_diffueraser_object_removal_lora,e_ab_base_vs_lora_metrics
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from comfyui_server import comfyui_dir, prepare_base, running_comfyui  # noqa: E402
from workflow_tools import FRONTEND_SIZES_FILE, MIN_GAP, TITLE_H, WORKFLOWS_DIR, overlaps  # noqa: E402


def canvas_boxes(nodes: list[dict]) -> dict:
    return {f"{n['id']}:{n['title'] or n['type']}": (n["pos"][0], n["pos"][1] - TITLE_H, n["size"][0],
                                                      n["size"][1] + TITLE_H) for n in nodes}


def _browser(url: str, files: list[Path], out: Path, run: list[str]) -> None:
    cmd = ["node", str(REPO / "tools" / "screenshot_workflows.cjs"), url, ",".join(str(f) for f in files), str(out),
           ",".join(run)]
    subprocess.run(cmd, check=True, env=dict(os.environ))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "docs" / "workflows"))
    ap.add_argument("--only", default="", help="comma-separated workflow names (default: all)")
    ap.add_argument("--run", default="", help="comma-separated workflows to queue before their screenshot "
                                              "(they must run as shipped on the test clips: a, b, e)")
    ap.add_argument("--record-sizes", action="store_true", help="update tests/data/frontend_node_sizes.json")
    args = ap.parse_args()
    if comfyui_dir() is None:
        sys.exit("set COMFYUI_DIR (and COMFYUI_PYTHON) to a ComfyUI checkout and its interpreter")
    files = sorted(WORKFLOWS_DIR.glob("*.json"))
    if args.only:
        files = [f for f in files if f.stem in args.only.split(",")]
    run = [n for n in args.run.split(",") if n]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rrdpo_shots_") as tmp:
        base = Path(tmp)
        clips = prepare_base(base)
        # the workflows ship with these input names: give them real clips so the previews load
        shutil.copy(base / "input" / clips["video"], base / "input" / "input_video.mp4")
        shutil.copy(base / "input" / clips["mask"], base / "input" / "input_mask.mp4")
        with running_comfyui(base, listen=False) as server:
            # no template browser on first load, no minimap, and full detail at the zoom that fits a graph
            for key, value in (("Comfy.TutorialCompleted", True), ("Comfy.Minimap.Visible", False),
                               ("LiteGraph.Canvas.MinFontSizeForLOD", 1),
                               ("LiteGraph.Canvas.LowQualityRenderingZoomThreshold", 0.1)):
                server.post(f"/settings/{key}", value)
            if args.record_sizes:
                # first pass: the workflows with every node shrunk, so the frontend sizes each node itself
                natural = base / "natural"
                natural.mkdir()
                for f in files:
                    wf = json.loads(f.read_text())
                    for n in wf["nodes"]:
                        n["size"] = [10, 10]
                    (natural / f.name).write_text(json.dumps(wf))
                shrunk = [natural / f.name for f in files]
                _browser(server.url, shrunk, natural, run)
                natural_report = json.loads((natural / "canvas_nodes.json").read_text())
                for name, entry in natural_report.items():
                    print(f"{name} (natural sizes): run={entry['ran']}")
            _browser(server.url, files, out, run)
    report = json.loads((out / "canvas_nodes.json").read_text())
    (out / "canvas_nodes.json").unlink()
    failed = False
    sizes: dict[str, list[int]] = {}
    for entry in (natural_report if args.record_sizes else report).values():
        for n in entry["nodes"]:
            w, h = sizes.get(n["type"], [0, 0])
            sizes[n["type"]] = [max(w, round(n["size"][0])), max(h, round(n["size"][1]))]
    for name, entry in report.items():
        problems = overlaps(canvas_boxes(entry["nodes"]), MIN_GAP)
        print(f"{name}: {len(entry['nodes'])} nodes, run={entry['ran']}, toasts={entry['toasts']}, "
              f"overlaps={len(problems)}")
        for p in problems + entry["console"]:
            print("   ", p)
        failed |= bool(problems) or any("uuid" in t.lower() or "zod" in t.lower() for t in entry["toasts"])
        if entry["ran"] and entry["ran"]["status"] != "success":
            failed = True
    if args.record_sizes:
        FRONTEND_SIZES_FILE.write_text(json.dumps({
            "_comment": "Largest size ComfyUI's frontend (1.27.10) gave each node type of the shipped workflows when "
                        "loaded at a tiny size, after media loaded" + (f" and {args.run} ran" if run else "")
                        + "; measured by tools/screenshot_workflows.py --record-sizes",
            "sizes": dict(sorted(sizes.items()))}, indent=1) + "\n")
        print("wrote", FRONTEND_SIZES_FILE)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
