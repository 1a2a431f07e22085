"""BrushNet's conditioning (rrdpo_core.conditioning): training sees exactly what sampling sees."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rrdpo_core.conditioning import encode_condition, known_mask_latent, masked_image
from rrdpo_core.pairs import LOSER_KINDS, LoserGenerator, PairDataset, build_preference_pairs
from rrdpo_core.pipeline import DiffuEraserPipeline
from rrdpo_core.train.config import TrainConfig
from rrdpo_core.train.batching import Batcher
from rrdpo_core.train.pair_step import PairStep
from rrdpo_core.vae import make_tiny_vae
from _helpers import drifting_clip as clip


def _darker(frames, hole, seeds):
    return frames * 0.5


class _RecordingModel:
    """Stands in for DiffuEraserModel in the trainer's pair step: records BrushNet's condition."""

    def __init__(self):
        self.conds: list[torch.Tensor] = []

    def predict_eps(self, x, t, text, cond, num_frames, brushnet_scale=1.0):
        self.conds.append(cond.detach().clone())
        return torch.zeros_like(x)


@pytest.fixture(scope="module")
def codec():
    # The posterior mean: the condition then depends on the frames and holes alone, not on which
    # random stream the sampler or the pair builder draws the VAE sample from.
    return make_tiny_vae(0, sample=False)


@pytest.mark.parametrize("store_latents", [True, False])
def test_training_condition_equals_sampling_condition_bitwise(tmp_path, codec, store_latents):
    gen = LoserGenerator(None, None, torch.zeros(1, 77, 32), overrides={k: _darker for k in LOSER_KINDS})
    build_preference_pairs(None, codec, torch.zeros(1, 77, 32), [clip(1, 4, 32), clip(2, 4, 32)], tmp_path / "pairs", count=2,
                           num_frames=4, generator=gen, store_latents=store_latents, composite="hard")
    ds = PairDataset(tmp_path / "pairs")
    assert ds.has_latents == store_latents
    cfg = TrainConfig(objective="sft", num_frames=4, batch_size=2, device="cpu", plots=False)
    batch = Batcher(ds, cfg, 0, 1, codec, max_frames=22).batch(0)
    model = _RecordingModel()
    PairStep(model, cfg, torch.device("cpu"), None, torch.zeros(1, 77, 32)).forward(batch)
    (trained,) = model.conds
    trained = trained.reshape(2, 4, 5, 4, 4)

    pipe = DiffuEraserPipeline(SimpleNamespace(device="cpu"), codec)
    for b, index in enumerate(batch.indices):
        pair = ds.load(index)
        winner = pair["winner"].float() / 255.0
        holes = pair["mask"].bool()
        assert holes.any() and not holes.all()
        sampled = pipe.encode_condition(winner, holes)
        assert sampled.shape == (4, 5, 4, 4)
        assert torch.equal(trained[b], sampled)


def test_condition_channels_are_masked_latents_then_known_mask(codec):
    frames = clip(3, 4, 32)
    holes = torch.zeros(4, 32, 32, dtype=torch.bool)
    holes[:, 8:24, 4:20] = True
    cond = encode_condition(codec, frames, holes)
    known = cond[:, 4]
    assert torch.equal(known, (~holes[:, ::8, ::8]).float())  # nearest: one pixel per 8x8 cell, 1 = known
    black = masked_image(frames, holes)
    assert float(black[holes].abs().max()) == 0 and torch.equal(black[~holes], frames[~holes])
    assert torch.equal(cond[:, :4], encode_condition(codec, black, torch.zeros_like(holes))[:, :4])
    # Float 0/1 holes (as stored with the pairs) and bool holes give the same mask channel.
    assert torch.equal(known_mask_latent(holes.float(), (4, 4)), known_mask_latent(holes, (4, 4)))
