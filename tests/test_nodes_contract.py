"""Every node of the pack follows the V1 contract the way ComfyUI reads it."""
from __future__ import annotations

import inspect

import pytest

from pack import load_pack

COMFY_TYPES = {"IMAGE", "MASK", "LATENT", "VAE", "CONDITIONING", "STRING", "INT", "FLOAT", "BOOLEAN", "MODEL",
               "DIFFUERASER", "RRDPO_PAIRS", "RRDPO_PRIOR_MODEL", "RRDPO_PRIOR_LATENTS"}


def _nodes():
    return sorted(load_pack().NODE_CLASS_MAPPINGS.items())


def test_every_node_has_a_display_name_and_category():
    pack = load_pack()
    assert pack.NODE_CLASS_MAPPINGS, "the pack registers nodes"
    for node_id, cls in _nodes():
        assert node_id.startswith("RRDPO"), node_id
        assert pack.NODE_DISPLAY_NAME_MAPPINGS.get(node_id), f"{node_id} has no display name"
        assert cls.CATEGORY.startswith("Region-Reg-DPO/"), node_id
        assert getattr(cls, "DESCRIPTION", ""), f"{node_id} has no description"


@pytest.mark.parametrize("node_id,cls", _nodes())
def test_inputs_are_declarative_with_tooltips(node_id, cls):
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    fn = getattr(cls, cls.FUNCTION)
    params = inspect.signature(fn).parameters
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 else {}
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            assert isinstance(kind, list) or kind in COMFY_TYPES, f"{node_id}.{name}: unknown type {kind}"
            if isinstance(kind, list) and kind and "default" in opts:
                assert opts["default"] in kind, f"{node_id}.{name}: default not among the choices"
            if kind in ("INT", "FLOAT"):
                assert opts["min"] <= opts["default"] <= opts["max"], f"{node_id}.{name}: default out of range"
            assert name in params, f"{node_id}.{cls.FUNCTION} does not take input {name!r}"
            if section == "optional":
                assert params[name].default is not inspect.Parameter.empty, f"{node_id}.{name} needs a default"
    assert len(cls.RETURN_TYPES) == len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
