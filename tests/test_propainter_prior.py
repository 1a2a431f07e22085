"""ProPainter prior: loading the official checkpoint layouts, clear errors, end-to-end inference
with random weights."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rrdpo_core.errors import Cancelled
from rrdpo_core.prior.propainter import (
    DIFFUERASER_SETTINGS,
    ProPainterModels,
    load_propainter,
    propainter_prior,
)
from rrdpo_core.prior.propainter.flow_completion import RecurrentFlowCompletion
from rrdpo_core.prior.propainter.model import ProPainterGenerator
from rrdpo_core.prior.propainter.raft import RAFT

DATA = Path(__file__).parent / "data"
FILES = {"raft": "raft-things.pth", "flow_completion": "recurrent_flow_completion.pth", "generator": "ProPainter.pth"}


class NotATensor:  # pickled by reference: weights_only loading must refuse it
    pass


def _manifest(name: str) -> dict:
    return json.loads((DATA / f"propainter_{name}_keys.json").read_text())["tensors"]


def _fake_checkpoint(name: str, drop: str | None = None, extra: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict in the official layout; tensor i is filled with i (a one-element storage
    expanded, so the files stay a few kB)."""
    state = {}
    for i, (key, spec) in enumerate(_manifest(name).items()):
        if key == drop:
            continue
        dtype = getattr(torch, spec["dtype"])
        one = torch.full((1,), i, dtype=dtype)
        state[key] = one.expand(spec["shape"]) if spec["shape"] else one[0].clone()
    if extra:
        state[extra] = torch.zeros(3)
    return state


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "propainter"
    folder.mkdir()
    for name, filename in FILES.items():
        torch.save(_fake_checkpoint(name), folder / filename)
    return folder


def test_loads_official_layouts_key_for_key(weights_dir):
    models = load_propainter(weights_dir, "cpu")
    keys = list(_manifest("raft"))
    i = keys.index("module.update_block.gru.convq2.weight")
    assert (models.raft.update_block.gru.convq2.weight == i).all()  # DataParallel prefix stripped
    keys = list(_manifest("generator"))
    i = keys.index("transformers.transformer.7.mlp.fc2.1.bias")
    assert (models.generator.transformers.transformer[7].mlp.fc2[1].bias == i).all()
    i = keys.index("feat_prop_module.deform_align.forward_1.conv_offset.6.weight")
    assert (models.generator.feat_prop_module.deform_align["forward_1"].conv_offset[6].weight == i).all()
    assert not any(p.requires_grad for p in models.generator.parameters())
    assert not models.flow_completion.training


def test_loads_from_explicit_files(weights_dir):
    files = {"raft": weights_dir / FILES["raft"], "flow_completion": weights_dir / FILES["flow_completion"],
             "propainter": weights_dir / FILES["generator"]}
    models = load_propainter(files, "cpu", torch.float16)  # half falls back to float32 on CPU
    assert models.dtype == torch.float32


def test_missing_file_names_it_and_says_where_to_get_it(weights_dir):
    (weights_dir / "recurrent_flow_completion.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"recurrent_flow_completion\.pth.*releases"):
        load_propainter(weights_dir)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_propainter(weights_dir / "ProPainter.pth")


def test_wrong_file_in_a_slot_is_identified(weights_dir):
    files = {"raft": weights_dir / FILES["raft"], "flow_completion": weights_dir / FILES["flow_completion"],
             "propainter": weights_dir / FILES["raft"]}
    with pytest.raises(ValueError, match=r"raft-things\.pth.*choose ProPainter\.pth") as err:
        load_propainter(files)
    assert str(weights_dir / FILES["raft"]) in str(err.value)


def test_key_differences_are_listed(weights_dir):
    path = weights_dir / FILES["generator"]
    torch.save(_fake_checkpoint("generator", drop="sc.bias_conv.weight", extra="sc.surprise"), path)
    with pytest.raises(ValueError) as err:
        load_propainter(weights_dir)
    msg = str(err.value)
    assert str(path) in msg
    assert "1 missing key(s): sc.bias_conv.weight" in msg and "1 unexpected key(s): sc.surprise" in msg


def test_shape_mismatch_is_reported(weights_dir):
    state = _fake_checkpoint("flow_completion")
    state["feat_prop_module.fusion.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, weights_dir / FILES["flow_completion"])
    expected = r"(?s)shape mismatch.*feat_prop_module\.fusion\.weight \(1, 1, 1, 1\) \(expected \(128, 256, 1, 1\)\)"
    with pytest.raises(ValueError, match=expected):
        load_propainter(weights_dir)


def test_foreign_files_give_clear_errors(weights_dir):
    path = weights_dir / FILES["raft"]
    path.write_text("this is not a checkpoint")
    with pytest.raises(ValueError, match=r"not a readable PyTorch checkpoint.*raft-things\.pth"):
        load_propainter(weights_dir)
    torch.save({"model": NotATensor()}, path)
    with pytest.raises(ValueError, match="refused to load"):
        load_propainter(weights_dir)
    torch.save({"conv.weight": torch.zeros(2)}, path)  # some other network's weights
    with pytest.raises(ValueError, match=r"(?s)not the RAFT optical flow checkpoint.*179 missing"):
        load_propainter(weights_dir)


# ------------------------------------------------------------------------------------------
# End to end with random weights


@pytest.fixture(scope="module")
def models() -> ProPainterModels:
    torch.manual_seed(0)
    return ProPainterModels(RAFT(), RecurrentFlowCompletion(),
                            ProPainterGenerator(hidden=64, depths=2, num_heads=2, ffn_hidden=98))


def _clip(t: int = 6, h: int = 64, w: int = 64):
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(t, h, w, 3, generator=g)
    masks = torch.zeros(t, h, w)
    for i in range(t):
        masks[i, 20:36, 12 + 3 * i: 30 + 3 * i] = 1
    return frames, masks


def test_prior_end_to_end(models):
    frames, masks = _clip()
    updates = []
    result = propainter_prior(frames, masks, models, raft_iter=4, mask_dilation=2,
                              progress=lambda done, total: updates.append((done, total)))
    assert result.frames.shape == (6, 64, 64, 3) and result.frames.dtype == torch.float32
    assert result.visibility.shape == (6, 64, 64)
    assert torch.isfinite(result.frames).all() and result.frames.min() >= 0 and result.frames.max() <= 1
    # Outside the dilated hole the input comes back untouched and counts as visible.
    from rrdpo_core.prior.propainter.inference import dilate_masks

    hole = dilate_masks(masks[:, None], 2)[:, 0].bool()
    assert torch.equal(result.frames[~hole], frames[~hole])
    assert (result.visibility[~hole] == 1).all()
    assert not torch.allclose(result.frames[hole], frames[hole])
    # Progress counts up to its total once per chunk / window.
    total = updates[0][1]
    assert [d for d, _ in updates] == list(range(1, total + 1)) and all(t == total for _, t in updates)
    # RAFT chunking only bounds memory: overlapping chunks give the same flows, hence the same prior.
    chunked = propainter_prior(frames, masks, models, raft_iter=4, mask_dilation=2, raft_chunk=2)
    torch.testing.assert_close(chunked.frames, result.frames, atol=1e-4, rtol=0)


def test_prior_resizes_for_processing_and_returns_input_size(models):
    frames, masks = _clip(t=3, h=70, w=83)
    result = propainter_prior(frames, masks[0], models, raft_iter=2, mask_dilation=0)  # one mask for all
    assert result.frames.shape == (3, 70, 83, 3)
    outside = masks[0].expand(3, 70, 83) == 0
    # Pixels far from the hole are the input's exactly, even though processing ran at 64x80.
    far = outside.clone()
    far[:, 14:42, 6:40] = False
    assert torch.equal(result.frames[far], frames[far])


def test_diffueraser_settings_with_pre_propagation(models):
    frames, masks = _clip(t=7)
    settings = dict(DIFFUERASER_SETTINGS, subvideo_length=4, resize_ratio=1.0, max_side=None, raft_iter=2)
    updates = []
    result = propainter_prior(frames, masks, models, progress=lambda d, t: updates.append(t), **settings)
    plain = dict(settings, pre_propagation=False)
    plain_updates = []
    propainter_prior(frames, masks, models, progress=lambda d, t: plain_updates.append(t), **plain)
    assert updates[0] > plain_updates[0]  # the sparse pre-pass adds flow / completion / propagation steps
    assert result.frames.shape == frames.shape and torch.isfinite(result.frames).all()


def test_empty_mask_returns_the_input_without_running_the_networks():
    frames, masks = _clip(t=3)
    result = propainter_prior(frames, torch.zeros_like(masks), None)  # no models needed
    assert torch.equal(result.frames, frames) and (result.visibility == 1).all()


def test_cancel_stops_between_chunks(models):
    frames, masks = _clip(t=4)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        propainter_prior(frames, masks, models, raft_iter=2, cancel=cancel)
    assert len(calls) == 3


@pytest.mark.parametrize("bad,match", [
    (lambda f, m: (f[:1], m[:1]), "at least 2 frames"),
    (lambda f, m: (f, m[:3]), "3 masks for 6 frames"),
    (lambda f, m: (f, m[:, :32]), "resize the masks"),
    (lambda f, m: (f[:, :40, :40], m[:, :40, :40]), "at least 64x64"),
    (lambda f, m: (f[..., 0], m), r"\(T, H, W, 3\)"),
    (lambda f, m: (f, torch.ones_like(m)), "every pixel of every frame is hole"),
])
def test_bad_inputs_are_rejected(models, bad, match):
    frames, masks = bad(*_clip())
    with pytest.raises(ValueError, match=match):
        propainter_prior(frames, masks, models, raft_iter=1)
