"""The pack imports the way ComfyUI imports it, and the library never needs ComfyUI."""
from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from pack import load_pack


def test_pack_imports_by_path_outside_comfyui():
    pack = load_pack()
    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)
    assert isinstance(pack.NODE_DISPLAY_NAME_MAPPINGS, dict)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) <= set(pack.NODE_CLASS_MAPPINGS)


def test_core_library_never_imports_comfyui():
    # A fresh interpreter: import every rrdpo_core module and check no ComfyUI module came along.
    code = (
        "import importlib, pkgutil, sys, rrdpo_core\n"
        "skipped = []\n"
        "for m in pkgutil.walk_packages(rrdpo_core.__path__, 'rrdpo_core.'):\n"
        "    if m.name.endswith('__main__'):\n"
        "        continue\n"
        "    importlib.import_module(m.name)\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('comfy', 'folder_paths', 'comfy_api', 'server', 'nodes')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10, which requires-python allows: tomli is the same parser
        tomllib = pytest.importorskip("tomli", reason="Python 3.10 reads TOML with tomli (requirements-test.txt)")
    return tomllib


def test_registry_metadata():
    meta = _toml().loads((REPO_ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] and "comfyui" not in project["name"].lower()
    major, minor, patch = project["version"].split(".")
    assert all(p.isdigit() for p in (major, minor, patch))
    assert project["description"]
    assert (REPO_ROOT / project["license"]["file"]).is_file()
    assert project["urls"]["Repository"].startswith("https://")
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    # torch belongs to ComfyUI; torchvision must never be pulled in
    reqs = (REPO_ROOT / "requirements.txt").read_text().lower().splitlines()
    names = [r.split("#")[0].strip() for r in reqs if r.split("#")[0].strip()]
    assert not any(n.startswith(("torch", "torchvision")) for n in names)


def test_tests_run_from_a_checkout_whose_folder_name_has_a_hyphen(tmp_path):
    # Packs are cloned as "ComfyUI-Something"; pytest then imports the root __init__.py as a lone
    # module (no package), where the relative import of the nodes used to fail every collection.
    import shutil

    clone = tmp_path / "ComfyUI-Region-Reg-DPO"
    shutil.copytree(REPO_ROOT, clone, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.png", "*.mp4"))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_zones.py",
                          "-k", "threshold"], cwd=clone, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout


def test_sources_parse_as_the_oldest_python_requires_python_allows():
    """requires-python and the code agree: no syntax newer than the minimum version (read without a TOML parser)."""
    found = re.search(r'^requires-python\s*=\s*">=\s*3\.(\d+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert found, "pyproject.toml: requires-python should read \">=3.N\""
    oldest = (3, int(found.group(1)))
    files = [p for p in REPO_ROOT.rglob("*.py") if not {".git", ".venv", ".comfyui"} & set(p.parts)]
    assert len(files) > 50
    for path in files:
        try:
            ast.parse(path.read_text(), filename=str(path), feature_version=oldest)
        except SyntaxError as err:
            pytest.fail(f"{path.relative_to(REPO_ROOT)} does not parse as Python {oldest[0]}.{oldest[1]}: {err}")
