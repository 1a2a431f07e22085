"""The import graph of rrdpo_core: layered, acyclic, and free of ComfyUI.

Every module of the package is parsed (``ast``, nothing is imported) and each of its imports,
module-level and inside functions alike, becomes an edge. The layering is written down here:
a module may import only from its own layer or a lower one, so a low-level module (the pair
format, the atomic writer) never reaches up into a higher one (the trainer, the pipeline).
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import rrdpo_core

PACKAGE = Path(rrdpo_core.__file__).resolve().parent

# Lower layers know nothing of higher ones. The most specific entry names a module's layer.
LAYERS: dict[str, int] = {
    # 0 - base helpers with no domain knowledge
    "": 0,  # the package's own __init__
    "errors": 0, "fsutil": 0, "rng": 0, "progress": 0, "membrane": 0, "windows": 0, "schedulers": 0,
    "masks": 0, "vae": 0, "synthetic": 0, "validate": 0, "precision": 0, "tensorfile": 0,
    # 1 - data conventions, checks and maths on frames, masks and latents
    "video_io": 1, "zones": 1, "inputs": 1, "inversion": 1, "lora": 1, "loss": 1, "metrics": 1,
    "conditioning": 1, "text_embeddings": 1, "visualize": 1,
    # 2 - networks, priors, blending and the adapters on the networks
    "streaming": 1, "models": 2, "memory": 2, "offload": 2, "prior": 2, "blend": 2, "region_lora": 2,
    # 3 - the sampler
    "pipeline": 3, "framing": 3,
    # 4 - preference pairs (format, building, preview)
    "pairs": 4, "pair_preview": 4,
    # 5 - training
    "train": 5,
    # 6 - entry points: the one-call API and the command lines
    "api": 6, "cli": 6, "__main__": 6, "train.__main__": 6, "train.process": 6,
}

# Top-level names of ComfyUI (and of this pack's node package) that the core must never import.
COMFY_MODULES = {"comfy", "comfy_extras", "comfy_execution", "comfy_api", "nodes", "folder_paths", "server",
                 "execution", "node_helpers", "latent_preview"}


def _modules() -> dict[str, Path]:
    """Dotted names relative to the package ("" for rrdpo_core itself, "train.trainer", ...)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package_of(name: str) -> list[str]:
    parts = name.split(".") if name else []
    return parts if MODULES[name].name == "__init__.py" else parts[:-1]


def _owner(name: str) -> str | None:
    """The module that ``name`` (relative dotted) lives in, or None if it is not ours."""
    while name not in MODULES:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(name: str, source: str) -> tuple[set[str], list[str]]:
    """(package modules ``name`` imports, ComfyUI/out-of-package imports) of module ``name``'s source."""
    inside: set[str] = set()
    outside_bad: list[str] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in COMFY_MODULES:
                    outside_bad.append(alias.name)
                elif top == "rrdpo_core":
                    targets.append(alias.name[len("rrdpo_core."):] if "." in alias.name else "")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                top = (node.module or "").split(".")[0]
                if top in COMFY_MODULES:
                    outside_bad.append(node.module)
                    continue
                if top != "rrdpo_core":
                    continue
                base = node.module.split(".")[1:]
            else:
                pkg = _package_of(name)
                if node.level - 1 > len(pkg):  # above rrdpo_core: the pack's nodes or ComfyUI
                    outside_bad.append("." * node.level + (node.module or ""))
                    continue
                base = pkg[: len(pkg) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            module = ".".join(base)
            assert module in MODULES, f"rrdpo_core.{name} imports rrdpo_core.{module}, which does not exist"
            for alias in node.names:
                sub = ".".join(base + [alias.name])
                targets.append(sub if sub in MODULES else module)
        for target in targets:
            owner = _owner(target)
            assert owner is not None, f"rrdpo_core.{name} imports rrdpo_core.{target}, which does not exist"
            if owner != name:
                inside.add(owner)
    return inside, outside_bad


def layer_of(name: str) -> int:
    parts = name.split(".") if name else [""]
    for k in range(len(parts), 0, -1):
        key = ".".join(parts[:k])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"rrdpo_core.{name} has no layer: add it to LAYERS in {__file__}")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"rrdpo_core.{a or '__init__'} (layer {layer_of(a)}) imports rrdpo_core.{b} (layer {layer_of(b)})"
            for a, deps in sorted(graph.items()) for b in sorted(deps) if layer_of(b) > layer_of(a)]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@functools.lru_cache(maxsize=1)
def _graph() -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    graph, comfy = {}, {}
    for name, path in MODULES.items():
        graph[name], bad = imports_of(name, path.read_text(encoding="utf-8"))
        if bad:
            comfy[name] = bad
    return graph, comfy


def test_core_never_imports_comfyui_or_the_nodes():
    _, comfy = _graph()
    assert not comfy, f"rrdpo_core must run without ComfyUI; these modules import it (or the nodes): {comfy}"


def test_every_module_has_a_layer_and_imports_only_its_layer_or_below():
    graph, _ = _graph()
    for name in graph:
        layer_of(name)
    assert not upward_imports(graph), "upward imports:\n" + "\n".join(upward_imports(graph))


def test_no_import_cycles():
    graph, _ = _graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(f"rrdpo_core.{m}" for m in cycle)


def test_the_checks_catch_what_they_are_for():
    # The checks themselves: an upward import (pairs reaching into the trainer, as it once did for
    # the atomic writer), a cycle, a ComfyUI import and an import of a module that is not there.
    graph = {name: set() for name in MODULES}
    deps, _ = imports_of("pairs.format", "from ..train.checkpoint import list_checkpoints\n")
    graph["pairs.format"] = deps
    assert upward_imports(graph) == ["rrdpo_core.pairs.format (layer 4) imports rrdpo_core.train.checkpoint (layer 5)"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert imports_of("pipeline", "import comfy.model_management\nfrom ..nodes import x\n")[1] == [
        "comfy.model_management", "..nodes"]
    try:
        imports_of("pairs.format", "from ..train.atomic import atomic_write_text\n")
    except AssertionError as err:
        assert "train.atomic" in str(err)
    else:
        raise AssertionError("an import of a missing module went unnoticed")
