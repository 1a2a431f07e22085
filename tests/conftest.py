"""Shared test fixtures.

The repository root goes on ``sys.path`` so ``import rrdpo_core`` works from a fresh clone
without installing anything; the ComfyUI pack itself is imported by path in the node tests, as
ComfyUI does.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# One compute thread everywhere (set before torch is imported): results that compare a run in
# this process with one in a subprocess, or one process with two, must reduce in the same order,
# and the CI machine has 2 cores shared by the test and the processes it starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The two real clips live beside the checkout in ../shared/data on the development machines;
# a user's clone has no such folder, so tests that use them skip.
SHARED_DATA = Path(os.environ.get("RRDPO_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real clips not found at {SHARED_DATA} (set RRDPO_SHARED_DATA to use them)")
    return SHARED_DATA


# ------------------------------------------------------------------------------------------
# Small stand-ins for ComfyUI's runtime modules, so node classes can be unit-tested without
# ComfyUI. They implement only what nodes/_comfy.py calls.


class _ProgressBar:
    """Like comfy.utils.ProgressBar with the hook main.py installs: every update is recorded and
    is an interrupt point, exactly as in a running ComfyUI server."""

    updates: list = []
    hook = None  # set by the fixture: the server hook's interrupt check

    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0

    def update(self, value):
        self.update_absolute(self.current + value, self.total)

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        _ProgressBar.updates.append((self.current, self.total))
        if _ProgressBar.hook is not None:
            _ProgressBar.hook()


class InterruptProcessingException(Exception):
    pass


@pytest.fixture
def comfy_stubs(tmp_path, monkeypatch):
    """Install fake ``folder_paths`` / ``comfy.utils`` / ``comfy.model_management`` /
    ``comfy.model_patcher`` / ``comfy.weight_adapter`` modules (the last two: tests/comfy_patcher_stub.py).

    Yields a namespace with ``models_dir``, ``output_dir``, ``temp_dir``, ``progress`` (list of
    (value, total) updates) and ``interrupt()`` to simulate the user pressing Cancel.
    """
    import types

    import comfy_patcher_stub

    models_dir = tmp_path / "models"
    out_dir, tmp_dir = tmp_path / "output", tmp_path / "temp"
    for d in (models_dir / "loras", out_dir, tmp_dir):
        d.mkdir(parents=True, exist_ok=True)

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.folder_names_and_paths = {"loras": ([str(models_dir / "loras")], {".safetensors"})}

    def get_folder_paths(name):
        return list(fp.folder_names_and_paths[name][0])

    def get_filename_list(name):
        paths, exts = fp.folder_names_and_paths[name]
        found = []
        for base in paths:
            base = Path(base)
            if not base.is_dir():
                continue
            for p in sorted(base.rglob("*")):
                if p.is_file() and (not exts or p.suffix in exts):
                    found.append(str(p.relative_to(base)))
        return sorted(found)

    def get_full_path(name, filename):
        for base in fp.folder_names_and_paths.get(name, ([], set()))[0]:
            p = Path(base) / filename
            if p.exists():
                return str(p)
        return None

    fp.get_folder_paths = get_folder_paths
    fp.get_filename_list = get_filename_list
    fp.get_full_path = get_full_path
    fp.get_output_directory = lambda: str(out_dir)
    fp.get_temp_directory = lambda: str(tmp_dir)

    state = {"interrupted": False, "after": None}
    comfy = types.ModuleType("comfy")
    utils = types.ModuleType("comfy.utils")
    _ProgressBar.updates = []
    utils.ProgressBar = _ProgressBar
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.processing_interrupted = lambda: state["interrupted"]

    def throw():
        # As ComfyUI's: raising clears the flag, so whoever checks after the hook sees no cancel.
        if state["interrupted"]:
            state["interrupted"] = False
            raise InterruptProcessingException()

    def hook():
        if state["after"] is not None and len(_ProgressBar.updates) >= state["after"]:
            state["interrupted"], state["after"] = True, None
        throw()

    _ProgressBar.hook = hook

    mm.throw_exception_if_processing_interrupted = throw
    mm.get_torch_device = lambda: __import__("torch").device("cpu")
    mm.unet_offload_device = lambda: __import__("torch").device("cpu")
    mm.intermediate_device = lambda: __import__("torch").device("cpu")
    mm.free_memory = lambda *a, **k: None
    mm.soft_empty_cache = lambda *a, **k: None
    model_patcher, weight_adapter = comfy_patcher_stub.install(mm)  # load_models_gpu and a minimal ModelPatcher
    comfy.utils, comfy.model_management = utils, mm
    comfy.model_patcher, comfy.weight_adapter = model_patcher, weight_adapter
    for name, mod in (("folder_paths", fp), ("comfy", comfy), ("comfy.utils", utils), ("comfy.model_management", mm),
                      ("comfy.model_patcher", model_patcher), ("comfy.weight_adapter", weight_adapter)):
        monkeypatch.setitem(sys.modules, name, mod)

    ns = types.SimpleNamespace(
        models_dir=models_dir,
        output_dir=out_dir,
        temp_dir=tmp_dir,
        progress=_ProgressBar.updates,
        interrupt=lambda: state.__setitem__("interrupted", True),
        # Press Cancel once the n-th progress update (counted from the fixture's start) has been made.
        interrupt_after=lambda n: state.__setitem__("after", int(n)),
        is_interrupted=lambda: state["interrupted"],
        # What ComfyUI does when it needs the memory: unload every model (weight patches taken out).
        unload_all=mm.unload_all_models,
        folder_paths=fp,
    )
    yield ns
    _ProgressBar.hook = None
