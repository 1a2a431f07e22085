"""Training and ProPainter nodes with ComfyUI stubs and tiny random models."""
from __future__ import annotations

import pytest
import torch

from pack import node
from test_nodes_pipeline import FakeComfyVAE, _clip, _cond


@pytest.fixture
def tiny_model(comfy_stubs):
    from rrdpo_core.models.testing import write_tiny_diffueraser

    write_tiny_diffueraser(comfy_stubs.models_dir / "diffueraser" / "tiny", seed=0)
    return comfy_stubs


def test_pairs_and_trainer_nodes_write_a_loadable_lora(tiny_model):
    from rrdpo_core.region_lora import load_region_lora

    frames, _ = _clip()
    (handle,) = node("RRDPOLoadDiffuEraser").load("tiny", "auto", "none")
    with pytest.raises(ValueError, match="dataset_name"):
        node("RRDPOBuildPreferencePairs").build(handle, FakeComfyVAE(), _cond(), "../escape", 2, 4, False, True,
                                                False, 0, images=frames)
    with pytest.raises(ValueError, match="kind"):
        node("RRDPOBuildPreferencePairs").build(handle, FakeComfyVAE(), _cond(), "p", 2, 4, False, False, False, 0,
                                                images=frames)
    pairs, summary, preview = node("RRDPOBuildPreferencePairs").build(handle, FakeComfyVAE(), _cond(), "p", 2, 4, False, True,
                                                            False, 0, images=frames)
    assert pairs.count == 2 and "blur 2" in summary
    assert preview.ndim == 4 and preview.shape[0] == 1 and preview.shape[-1] == 3  # IMAGE: two blur rows
    assert preview.shape[1] > 2 * 160 and 0 <= preview.min() and preview.max() <= 1
    assert (tiny_model.output_dir / "rrdpo_pairs" / "p").is_dir()
    out = node("RRDPOTrainer").train(handle, _cond(), pairs, "my_lora", 2, 1e-3, 4, 1000.0, 1.0, 1.5, 0.05,
                                     100.0, 200.0, 5.0, 8, 1, 1, 0)
    trained, path, plots, report = out["result"]
    assert path.endswith("my_lora.safetensors") and (tiny_model.models_dir / "loras" / "rrdpo" / "my_lora.safetensors").is_file()
    lora = load_region_lora(path)
    assert lora.info.rank == 4 and tuple(lora.info.rho) == (100.0, 200.0, 5.0)
    assert trained.loras == ((path, 1.0),) and handle.loras == ()
    assert plots.ndim == 4 and plots.shape[-1] == 3 and "dgr" in report.lower()
    assert tiny_model.progress, "training drives ComfyUI's progress bar"
    with pytest.raises(ValueError, match="base model"):
        node("RRDPOTrainer").train(trained, _cond(), pairs, "again", 1, 1e-3, 4, 1000.0, 1.0, 1.5, 0.05,
                                   100.0, 200.0, 5.0, 8, 1, 1, 0)


def test_propainter_node_says_where_the_weights_go(comfy_stubs):
    frames, mask = _clip()
    with pytest.raises(FileNotFoundError, match="models/propainter"):
        node("RRDPOProPainterPrior").run(frames, mask, "none", "none", "none", 4, 20, 1.0)


PCM_FILE = "pcm_sd15_smallcfg_2step_converted.safetensors"
TRAIN_ARGS = (1e-3, 4, 1000.0, 1.0, 1.5, 0.05, 100.0, 200.0, 5.0, 8, 1, 100, 0)  # checkpoint_every=100


@pytest.mark.parametrize("cancel_at", [2, 3, 4])
def test_cancel_during_training_always_leaves_a_checkpoint_a_rerun_resumes_from(tiny_model, cancel_at):
    """As in ComfyUI: every node call under inference_mode, PCM loaded, Cancel raised by the progress hook
    (which clears the flag the trainer polls) at progress update `cancel_at` of the run."""
    from safetensors.torch import load_file, save_file

    from rrdpo_core.models.testing import tiny_diffueraser
    from rrdpo_core.train.checkpoint import list_checkpoints
    from test_lora_pcm import kohya_lora, spatial_targets

    base = tiny_diffueraser(seed=0)
    save_file(kohya_lora(base.unet, spatial_targets(base.unet, every=2), seed=3),
              str(tiny_model.models_dir / "loras" / PCM_FILE))
    frames, _ = _clip()
    with torch.inference_mode():
        (handle,) = node("RRDPOLoadDiffuEraser").load("tiny", "auto", PCM_FILE)
        pairs = node("RRDPOBuildPreferencePairs").build(handle, FakeComfyVAE(), _cond(), "p", 2, 4, False, True,
                                                        False, 0, images=frames)[0]
        tiny_model.interrupt_after(len(tiny_model.progress) + cancel_at)
        with pytest.raises(Exception) as info:
            node("RRDPOTrainer").train(handle, _cond(), pairs, "cut", 4, *TRAIN_ARGS)
        assert type(info.value).__name__ == "InterruptProcessingException"
        run_dir = tiny_model.output_dir / "rrdpo_runs" / "cut"
        saved = [step for step, _ in list_checkpoints(run_dir)]
        assert saved == [cancel_at - 1], "the steps done before Cancel are kept"
        assert not tiny_model.is_interrupted()
        out = node("RRDPOTrainer").train(handle, _cond(), pairs, "cut", 4, *TRAIN_ARGS)["result"]
        assert f"resumed from the checkpoint of step {cancel_at - 1}" in out[3]
        whole = node("RRDPOTrainer").train(handle, _cond(), pairs, "whole", 4, *TRAIN_ARGS)["result"]
    resumed, uninterrupted = load_file(out[1]), load_file(whole[1])
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-5, atol=1e-7)
