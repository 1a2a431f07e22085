"""Import the pack by path, as ComfyUI's loader does (shared by the node tests)."""
from __future__ import annotations

import importlib.util
import sys

from conftest import REPO_ROOT

PACK_NAME = "custom_nodes_x_region_reg_dpo"


def load_pack(name: str = PACK_NAME):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def node(node_id: str):
    """An instance of the pack's node class registered under ``node_id``."""
    return load_pack().NODE_CLASS_MAPPINGS[node_id]()
