"""The method-dynamics benchmark (bench/method_dynamics.py) in its fast setting: a few steps of
every phase (pre-training, product-trainer fine-tuning, evaluation of the saved LoRAs), so the
script cannot rot. Checks that a seed fixes the result and that the JSON holds
every field the README's table and the figure are built from, with finite values."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def md():
    spec = importlib.util.spec_from_file_location("method_dynamics", REPO_ROOT / "bench" / "method_dynamics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def cli_result(md, tmp_path_factory):
    out = tmp_path_factory.mktemp("md")
    result = md.main(["--setting", "fast", "--out-dir", str(out), "--seed", "3"])
    return out, result


def _without_run_conditions(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("timing", "conditions")}


def _walk_numbers(obj, path="$"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, float):
        yield path, obj


def test_same_seed_same_result_and_other_seed_differs(md, cli_result):
    _, first = cli_result
    s = replace(md.SETTINGS["fast"], seed=3)
    again = md.run(s, log=lambda _: None)
    assert _without_run_conditions(again) == _without_run_conditions(first)
    # another seed changes the data, the initialisation and the noise (a cut-down run suffices)
    other = md.run(replace(s, seed=4, finetune_steps=1, eval_clips=1, pairs=2), log=lambda _: None)
    assert other["pretrain_l2"][0] != first["pretrain_l2"][0]
    assert other["history"]["diffusion_dpo"]["e_hole_ref"][0] != first["history"]["diffusion_dpo"]["e_hole_ref"][0]


def test_json_has_the_fields_and_finite_values(md, cli_result):
    out, result = cli_result
    data = json.loads((out / "method_dynamics.json").read_text())
    s = md.SETTINGS["fast"]
    assert set(data["history"]) == set(s.objectives) == set(data["per_objective"])
    assert set(data["psnr"]) == {"reference", *s.objectives}
    for name, hist in data["history"].items():
        for key in ("dgr", "win_gap", "lose_gap", "implicit_acc", "loser_dominant_ratio", "dgr_per_sample",
                    "e_hole_model", "e_boundary_model", "e_context_model", "e_hole_ref", "e_boundary_lose_model"):
            assert len(hist[key]) == s.finetune_steps, (name, key)
        # step 0: every policy equals the reference, so s = 0 and DGR = beta / 2 exactly
        assert hist["dgr"][0] == pytest.approx(s.beta / 2)
        assert hist["win_gap"][0] == 0.0
    assert len(data["timesteps"]) == s.finetune_steps
    # the trainer's log gives one timestep and one DGR per pair; every run shares the seed, so the same timesteps
    assert all(len(t) == s.batch for t in data["timesteps"])
    assert all(h["t_per_sample"] == data["timesteps"] for h in data["history"].values())
    assert all(len(d) == s.batch for h in data["history"].values() for d in h["dgr_per_sample"])
    assert data["parameters"]["trainable"] > 0
    for zone in ("hole", "boundary", "context"):
        assert zone in data["psnr"]["reference"]
        assert zone in data["heldout_eps_error"]["reference"]["win"]
    assert set(data["claims"]) == {"dgr_collapses", "cheat_path", "sft_anchor", "boundary_starved"}
    assert all(isinstance(c["holds"], bool) for c in data["claims"].values())
    numbers = list(_walk_numbers(data))
    assert numbers and all(math.isfinite(v) for _, v in numbers), [p for p, v in numbers if not math.isfinite(v)][:5]
    assert (out / "method_dynamics.png").stat().st_size > 0
    assert "| Diffusion-DPO |" in md.table(result)


def test_unknown_objective_is_a_clear_error(md):
    with pytest.raises(ValueError, match="unknown"):
        md.run(replace(md.SETTINGS["fast"], objectives=("dpo_typo",)), log=lambda _: None)
