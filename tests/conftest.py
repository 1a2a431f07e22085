"""Shared test fixtures.

The repository root goes on ``sys.path`` so ``import rrdpo_core`` works from a fresh clone
without installing anything; the ComfyUI pack itself is imported by path in the node tests, as
ComfyUI does.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

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
