"""The DiffuEraser sampler end to end on CPU: tiny random networks, tiny VAE.

Behaviour that does not depend on what the network computes (window scheduling, keyframe pass,
progress, cancel, input checks) runs on a cheap stand-in with the same ``predict_eps``
signature; what does (shapes, determinism, context preservation, the one-call entry point) runs
on the tiny random DiffuEraser.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rrdpo_core.errors import Cancelled, RrdpoInputError
from rrdpo_core.api import remove_objects
from rrdpo_core.inputs import check_inputs, pad_to_multiple
from rrdpo_core.pipeline import DiffuEraserPipeline
from rrdpo_core.text_embeddings import save_text_embeds
from rrdpo_core.vae import make_tiny_vae, write_tiny_vae
from rrdpo_core.windows import context_windows, keyframe_indices


class FakeDenoiser(torch.nn.Module):
    """A cheap epsilon model with DiffuEraserModel's interface that records its calls."""

    cross_attention_dim = 8
    max_frames = 32

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[dict] = []

    @property
    def dtype(self):
        return self.anchor.dtype

    @property
    def device(self):
        return self.anchor.device

    def predict_eps(self, latents, timestep, text_embeds, cond_latents, num_frames, brushnet_scale=1.0):
        self.calls.append(dict(frames=num_frames, rows=latents.shape[0], t=int(timestep),
                               known=cond_latents[:, 4].detach().clone()))
        clips = latents.shape[0] // num_frames
        text = text_embeds.expand(clips, -1, -1).mean(dim=(1, 2)).repeat_interleave(num_frames)[:, None, None, None]
        return 0.5 * latents + 0.2 * cond_latents[:, :4] * cond_latents[:, 4:] + 0.1 * text


def _video(n, size=32, seed=0, hole=True):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, size, size, 3, generator=gen)
    masks = torch.zeros(n, size, size)
    if hole:
        masks[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return frames, masks


@pytest.fixture(scope="module")
def vae():
    return make_tiny_vae(seed=0)


@pytest.fixture
def fake(vae):
    model = FakeDenoiser()
    return model, DiffuEraserPipeline(model, vae), torch.randn(1, 77, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """The tiny VAE as a folder on disk: remove_objects loads its VAE from a path."""
    return write_tiny_vae(tmp_path_factory.mktemp("vae"), seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rrdpo_core.models.testing import write_tiny_diffueraser

    return write_tiny_diffueraser(tmp_path_factory.mktemp("diffueraser"), seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir, vae):
    from rrdpo_core.models import load_diffueraser

    model = load_diffueraser(tiny_dir)
    text = torch.randn(1, 77, model.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    return DiffuEraserPipeline(model, vae), text


# ------------------------------------------------------------------------------------------
# tiny DiffuEraser


def test_end_to_end_shapes_and_determinism(tiny):
    pipe, text = tiny
    frames, masks = _video(5)
    prior = frames.flip(1)
    first = pipe(frames, masks, prior, text, seed=3)
    assert first.frames.shape == (5, 32, 32, 3) and first.frames.dtype == torch.float32
    assert first.latents.shape == (5, 4, 4, 4)
    assert first.timesteps == [999, 499] and first.keyframes == [] and first.seed == 3
    assert 0 <= float(first.frames.min()) and float(first.frames.max()) <= 1
    again = pipe(frames.numpy(), masks.numpy(), prior, text, seed=3)
    assert torch.equal(first.latents, again.latents) and torch.equal(first.frames, again.frames)
    other = pipe(frames, masks, prior, text, seed=4)
    assert not torch.allclose(first.latents, other.latents)


def test_one_call_entry_point_preserves_the_context_exactly(tiny_dir, vae_dir, tmp_path):
    from rrdpo_core import blend
    from rrdpo_core.models import load_diffueraser

    frames, masks = _video(4, size=48)
    frames, masks = frames[:, :, :44], masks[:, :, :44]  # width 44: not a multiple of 8
    text = torch.randn(1, 77, load_diffueraser(tiny_dir).cross_attention_dim)
    embeds = save_text_embeds(tmp_path / "empty.safetensors", text)
    calls = []
    with pytest.warns(UserWarning, match="padded"):
        out = remove_objects(frames, masks, model_dir=tiny_dir, vae_path=vae_dir, text_embeds=embeds,
                             pcm_lora=None, scheduler="ddim", seed=0, device="cpu",
                             progress=lambda d, t: calls.append((d, t)))
    assert out.shape == frames.shape and torch.isfinite(out).all()
    generated_alpha = torch.as_tensor(blend.blend_into_video(torch.zeros_like(frames), torch.ones_like(frames), masks))
    untouched = generated_alpha.float().amax(dim=-1) == 0  # pixels the blend takes from the input alone
    assert bool(untouched.any()) and bool((~untouched).any())
    assert torch.equal(out[untouched[..., None].expand_as(out)], frames[untouched[..., None].expand_as(out)])
    inside = masks.bool()
    assert not torch.allclose(out[inside], frames[inside])
    assert calls and calls[-1][0] == calls[-1][1]


def test_missing_weights_and_missing_text_embedding_are_clear_errors(tiny_dir, vae_dir, tmp_path):
    frames, masks = _video(2)
    with pytest.raises(FileNotFoundError, match="not found"):
        remove_objects(frames, masks, model_dir=tmp_path / "nope", vae_path=vae_dir, device="cpu")
    with pytest.raises(FileNotFoundError, match="empty prompt"):
        remove_objects(frames, masks, model_dir=tiny_dir, vae_path=vae_dir, device="cpu", pcm_lora=None,
                       prior_frames=frames)
    with pytest.raises(FileNotFoundError, match="VAE"):
        remove_objects(frames, masks, model_dir=tiny_dir, vae_path=tmp_path / "vae", device="cpu",
                       text_embeds=torch.zeros(1, 77, 32), pcm_lora=None, prior_frames=frames)


# ------------------------------------------------------------------------------------------
# orchestration (stand-in network)


def test_keyframe_pass_runs_for_more_than_44_frames(fake):
    model, pipe, text = fake
    n = 45
    frames, masks = _video(n, size=16)
    out = pipe(frames, masks, frames, text, seed=0)
    keys = keyframe_indices(n)
    assert out.keyframes == keys
    # the keyframe pass: one 22-frame window per step, holes present in its condition
    assert [c["frames"] for c in model.calls[:2]] == [22, 22]
    assert float(model.calls[0]["known"].min()) == 0
    # the main pass: keyframes are fully known in the condition, the other frames keep their holes
    sets = context_windows(n)
    main = model.calls[2:]
    assert [c["frames"] for c in main] == [len(w) for w in sets.a + sets.b]
    known = torch.zeros(n, 2, 2)
    for call, w in zip(main, sets.a):
        known[w.start:w.stop] = call["known"]
    is_key = torch.zeros(n, dtype=torch.bool)
    is_key[keys] = True
    assert bool((known[is_key] == 1).all()) and float(known[~is_key].min()) == 0

    model.calls.clear()
    out = pipe(frames[:44], masks[:44], frames[:44], text, seed=0)
    assert out.keyframes == [] and all(c["frames"] == 22 for c in model.calls)


class RecordingCodec:
    """Wraps a codec and keeps what it was asked to encode and what it decoded, in call order."""

    def __init__(self, codec):
        self.codec, self.encoded, self.decoded = codec, [], []

    def encode(self, images, generator=None):
        self.encoded.append(images.detach().clone())
        return self.codec.encode(images, generator=generator)

    def decode(self, latents):
        images = self.codec.decode(latents)
        self.decoded.append(images.detach().clone())
        return images


def test_keyframes_are_rounded_to_8_bit_before_they_become_the_condition():
    # Released behaviour (reference §1.7): the keyframe result is decoded, post-processed to 8-bit PIL
    # frames ((x/2 + 0.5).clamp(0, 1) * 255, rounded), and those frames - read back as k/255 and mapped
    # to [-1, 1] - are what BrushNet's condition encodes for the keyframes of the main pass.
    codec = RecordingCodec(make_tiny_vae(seed=0, sample=False))
    pipe = DiffuEraserPipeline(FakeDenoiser(), codec)
    n = 45
    frames, masks = _video(n, size=16)
    out = pipe(frames, masks, frames, torch.randn(1, 77, 8, generator=torch.Generator().manual_seed(0)), seed=0)
    keys = out.keyframes
    assert len(keys) == 22
    encoded = torch.cat(codec.encoded)  # prior (n), condition (n), then the keyframes' new condition
    assert encoded.shape[0] == 2 * n + len(keys)
    reencoded = encoded[2 * n:]
    decoded = torch.cat(codec.decoded)[: len(keys)]  # the keyframe pass is decoded before the main pass
    eight_bit = torch.round((decoded / 2 + 0.5).clamp(0, 1) * 255)
    expected = (eight_bit / 255) * 2 - 1
    torch.testing.assert_close(reencoded, expected, rtol=0, atol=0)
    # The float frames would differ: the test can tell the two paths apart.
    assert float((decoded.clamp(-1, 1) - expected).abs().max()) > 1e-4


def test_prepared_latents_give_the_same_result_as_one_call(fake):
    model, pipe, text = fake
    for n in (30, 45):  # without and with the keyframe pass
        frames, masks = _video(n, size=16)
        init = pipe.prepare_latents(frames, masks, frames, text, seed=1)
        assert init.timesteps == [999, 499] and init.noise.shape == (22, 4, 2, 2) and init.seed == 1
        staged = pipe(frames, masks, None, text, init=init, seed=99)  # init's seed wins
        direct = pipe(frames, masks, frames, text, seed=1)
        assert torch.allclose(staged.latents, direct.latents, atol=1e-6)
    with pytest.raises(RrdpoInputError, match="timesteps"):
        pipe(frames, masks, None, text, init=init, num_inference_steps=4)


class _LoggingCodec:
    """The tiny VAE, writing "vae" into a shared log on every encode/decode call."""

    def __init__(self, inner, log):
        self.inner, self.log, self.scaling_factor = inner, log, inner.scaling_factor

    def encode(self, images, generator=None):
        self.log.append("vae")
        return self.inner.encode(images, generator=generator)

    def decode(self, latents):
        self.log.append("vae")
        return self.inner.decode(latents)


def _progress_log(model, vae, run):
    """Run ``run(pipe, progress)``; return the log of VAE calls, window evaluations and ticks."""
    log = []
    pipe = DiffuEraserPipeline(model, _LoggingCodec(vae, log))
    original = model.predict_eps

    def predict_eps(*a, **k):
        log.append("window")
        return original(*a, **k)

    model.predict_eps = predict_eps
    try:
        run(pipe, lambda d, t: log.append((d, t)))
    finally:
        model.predict_eps = original
    return log


def _check_ticks(log):
    """Every VAE call and window evaluation is followed by its own tick; ticks count up to the total."""
    ticks = [e for e in log if isinstance(e, tuple)]
    work = [e for e in log if not isinstance(e, tuple)]
    assert len(ticks) == len(work) and ticks, log
    total = ticks[-1][1]
    assert ticks == [(i, total) for i in range(1, total + 1)]
    for i, e in enumerate(log):
        if not isinstance(e, tuple):
            assert isinstance(log[i + 1], tuple), f"no tick after {e} at {i}: {log}"
    return work


def test_progress_ticks_after_every_window_and_every_vae_batch(fake, vae):
    model, pipe, text = fake
    for n, windows in ((30, 4), (40, 6), (3, 2)):
        frames, masks = _video(n, size=16)
        work = _check_ticks(_progress_log(model, vae, lambda p, cb: p(frames, masks, frames, text, seed=0, progress=cb)))
        batches = -(-n // pipe.vae_batch)
        assert work.count("window") == windows and work.count("vae") == 3 * batches  # prior, condition, decode
        assert work[:batches] == ["vae"] * batches and work[-batches:] == ["vae"] * batches
    frames, masks = _video(30, size=16)
    work = _check_ticks(_progress_log(model, vae, lambda p, cb: p(frames, masks, frames, text, seed=0,
                                                                   init_mode="ddim_inversion", refine_iters=1,
                                                                   progress=cb)))
    assert work.count("window") == 12  # 4 sampling + 4 x (1 + 1) inversion windows
    # a keyframe pass decodes and re-encodes the keyframes as well
    frames, masks = _video(60, size=16)
    work = _check_ticks(_progress_log(model, vae, lambda p, cb: p(frames, masks, frames, text, seed=0, progress=cb)))
    assert work.count("vae") > 3 * -(-60 // pipe.vae_batch)


def test_prepare_latents_in_noise_mode_ticks_while_encoding_the_prior(fake, vae):
    model, pipe, text = fake
    frames, masks = _video(30, size=16)
    work = _check_ticks(_progress_log(model, vae, lambda p, cb: p.prepare_latents(frames, masks, frames, text, seed=0,
                                                                                   progress=cb)))
    assert work == ["vae"] * -(-30 // pipe.vae_batch)


def test_cancel_stops_before_the_next_window(fake):
    model, pipe, text = fake
    frames, masks = _video(40, size=16)
    done = []
    batches = -(-40 // pipe.vae_batch)  # the prior and the condition are encoded first, one tick per batch
    with pytest.raises(Cancelled):
        pipe(frames, masks, frames, text, seed=0, progress=lambda d, t: done.append(d),
             cancel=lambda: len(done) >= 2 * batches + 2)
    assert len(model.calls) == 2
    model.calls.clear()
    with pytest.raises(Cancelled):
        pipe(frames, masks, frames, text, seed=0, cancel=lambda: True)
    assert model.calls == []


def test_empty_mask_returns_the_input_without_running_anything(fake):
    model, pipe, text = fake
    frames, masks = _video(6, hole=False)
    out = pipe(frames, masks, None, text)
    assert torch.equal(out.frames, frames) and out.latents is None and model.calls == []
    result = remove_objects(frames.numpy(), masks.numpy(), model_dir="/nonexistent", vae_path="/nonexistent")
    assert isinstance(result, np.ndarray) and np.array_equal(result, frames.numpy())


def test_full_mask_short_video_and_other_schedulers_run(fake):
    model, pipe, text = fake
    frames = torch.rand(1, 16, 16, 3)
    out = pipe(frames, torch.ones(1, 16, 16), None, text, seed=0)
    assert out.frames.shape == (1, 16, 16, 3) and torch.isfinite(out.frames).all()
    frames, masks = _video(7, size=16)
    for name in ("ddim", "unipc"):
        out = pipe(frames, masks, frames, text, scheduler=name, num_inference_steps=3, seed=0)
        assert len(out.timesteps) == 3 and out.timesteps[0] >= 900 and torch.isfinite(out.latents).all()
    weak = pipe(frames, masks, frames, text, seed=0, t_start=400)
    assert weak.timesteps[0] <= 400 and len(weak.timesteps) == 2


def test_guidance_with_an_equal_negative_changes_nothing_and_needs_a_negative(fake):
    model, pipe, text = fake
    frames, masks = _video(5, size=16)
    plain = pipe(frames, masks, frames, text, seed=2)
    guided = pipe(frames, masks, frames, text, seed=2, guidance_scale=5.0, negative_embeds=text)
    assert torch.allclose(plain.latents, guided.latents, atol=1e-5)
    assert model.calls[-1]["rows"] == 10  # conditional and unconditional in one batch
    other = pipe(frames, masks, frames, text, seed=2, guidance_scale=5.0, negative_embeds=text * 0)
    assert not torch.allclose(plain.latents, other.latents)
    with pytest.raises(RrdpoInputError, match="negative_embeds"):
        pipe(frames, masks, frames, text, guidance_scale=5.0)


def test_bad_inputs_are_clear_errors(fake):
    model, pipe, text = fake
    frames, masks = _video(4, size=16)
    with pytest.raises(RrdpoInputError, match="masks for 4 frames"):
        pipe(frames, masks[:3], None, text)
    with pytest.raises(RrdpoInputError, match="resize the masks"):
        pipe(frames, masks[:, :8], None, text)
    with pytest.raises(RrdpoInputError, match="multiples of 8"):
        pipe(frames[:, :12], masks[:, :12], None, text)
    bad = frames.clone()
    bad[2, 0, 0, 0] = float("nan")
    with pytest.raises(RrdpoInputError, match="NaN"):
        pipe(bad, masks, None, text)
    with pytest.raises(RrdpoInputError, match="prior frames for 4 frames"):
        pipe(frames, masks, frames[:2], text)
    with pytest.raises(RrdpoInputError, match="text_embeds"):
        pipe(frames, masks, None, torch.zeros(1, 77, 5))
    with pytest.raises(ValueError, match="unknown scheduler"):
        pipe(frames, masks, None, text, scheduler="euler")
    assert model.calls == []


def test_padding_keeps_pixels_and_prior_is_resized():
    frames, masks = _video(2, size=20)
    inputs = check_inputs(frames, masks, torch.rand(2, 10, 10, 3), multiple=None)
    assert inputs.prior.shape == frames.shape
    padded, (h, w) = pad_to_multiple(inputs)
    assert padded.frames.shape == (2, 24, 24, 3) and (h, w) == (20, 20)
    assert torch.equal(padded.frames[:, :20, :20], frames) and not bool(padded.holes[:, 20:].any())


def test_fp32_on_cpu_whatever_is_asked():
    from rrdpo_core.precision import resolve_device_dtype as _resolve_device_dtype

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _resolve_device_dtype("cpu", "fp16") == (torch.device("cpu"), torch.float32)
    assert _resolve_device_dtype("cpu", None)[1] == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        _resolve_device_dtype("cpu", "int8")


# ------------------------------------------------------------------------------------------
# the latent codec (rrdpo_core.vae)


def _to_ldm_names(state: dict, num_blocks: int) -> dict:
    """diffusers AutoencoderKL keys -> the original (LDM / ComfyUI models/vae) naming, 4-d attention."""
    import re

    out = {}
    for key, value in state.items():
        k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                   lambda m: f"decoder.up.{num_blocks - 1 - int(m.group(1))}.block.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{num_blocks - 1 - int(m.group(1))}.upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", k)
        if "mid_block.attentions.0." in k:
            k = k.replace("mid_block.attentions.0.", "mid.attn_1.").replace("group_norm", "norm")
            k = k.replace("to_q", "q").replace("to_k", "k").replace("to_v", "v").replace("to_out.0", "proj_out")
            if value.ndim == 2:
                value = value[:, :, None, None]
        out["first_stage_model." + k] = value
    return out


def test_codec_keeps_8x_downscale_and_samples_reproducibly(vae):
    from rrdpo_core.vae import AutoencoderKLCodec, LatentCodec

    assert isinstance(vae, LatentCodec) and vae.downscale == 8
    images = torch.rand(5, 3, 32, 24) * 2 - 1
    a = vae.encode(images, generator=torch.Generator().manual_seed(0))
    b = vae.encode(images, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 4, 4, 3) and torch.equal(a, b)
    assert not torch.equal(a, vae.encode(images, generator=torch.Generator().manual_seed(1)))
    mode = AutoencoderKLCodec(vae.vae, sample=False, encode_chunk=2)
    with torch.no_grad():  # the reference: diffusers' AutoencoderKL itself, whole batch, distribution mode, scaled
        reference = vae.vae.encode(images).latent_dist.mode() * vae.vae.config.scaling_factor
    torch.testing.assert_close(mode.encode(images), reference, rtol=0, atol=1e-5)
    whole = AutoencoderKLCodec(vae.vae, sample=False, encode_chunk=5, decode_chunk=5)
    assert torch.allclose(mode.encode(images), whole.encode(images), atol=1e-5)  # chunking changes nothing
    assert vae.decode(a).shape == (5, 3, 32, 24)
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode(torch.zeros(1, 3, 30, 24))


def test_vae_loads_from_folder_and_single_files_offline(vae, tmp_path):
    from safetensors.torch import save_file

    from rrdpo_core.vae import load_vae

    reference = {k: v.clone() for k, v in vae.vae.state_dict().items()}
    config = {k: v for k, v in vae.vae.config.items() if not k.startswith("_")}
    vae.vae.save_pretrained(tmp_path / "folder")
    save_file(reference, str(tmp_path / "diffusers.safetensors"))
    save_file(_to_ldm_names(reference, 4), str(tmp_path / "ldm.safetensors"))
    loaded = [load_vae(tmp_path / "folder"), load_vae(tmp_path / "diffusers.safetensors", config=config),
              load_vae(tmp_path / "ldm.safetensors", config=config)]
    for codec in loaded:
        state = codec.vae.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
        assert codec.scaling_factor == pytest.approx(0.18215)
    save_file({"something.else": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="VAE"):
        load_vae(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="VAE not found"):
        load_vae(tmp_path / "missing")


def test_one_rule_says_when_tcd_needs_the_pcm_lora():
    # The sampler node refuses and remove_objects warns by this one rule (they used to disagree at 8 steps).
    from rrdpo_core.schedulers import TCD_STEPS_WITHOUT_PCM, needs_pcm_lora

    assert needs_pcm_lora("tcd", 2) and needs_pcm_lora("tcd", TCD_STEPS_WITHOUT_PCM - 1)
    assert not needs_pcm_lora("tcd", TCD_STEPS_WITHOUT_PCM)
    assert not needs_pcm_lora("unipc", 2) and not needs_pcm_lora("ddim", 4)
