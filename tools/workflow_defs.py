"""The example workflows, as graphs. ``python3 tools/build_workflows.py`` writes them to workflows/.

Each note names the nodes it talks about in *italics*, exactly as their titles (or display names) read
on the canvas; tests/test_workflows.py checks that every such name is a node of that workflow.
"""
from __future__ import annotations

MODELS = """### Model files (nothing is downloaded by the pack)
- **DiffuEraser**: `models/diffueraser/diffuEraser/brushnet/` and `.../unet_main/` (config.json + diffusion_pytorch_model.safetensors each) from huggingface.co/lixiaowen/diffuEraser.
- **PCM LoRA**: `models/loras/pcm_sd15_smallcfg_2step_converted.safetensors` (huggingface.co/wangfuyun/PCM_Weights, sd15/).
- **VAE**: `models/vae/sd-vae-ft-mse.safetensors` (stabilityai/sd-vae-ft-mse).
- **Text encoder**: the SD1.5 CLIP-L text encoder in `models/text_encoders/` (type stable_diffusion); DiffuEraser uses the empty prompt."""

TWO_VIDEOS = """### Inputs
Upload your clip in *Load Video (clip)* and a mask video (white = object to remove) in *Load Video (mask)* — two *Load Video* nodes. A mask video with a single frame is one mask for the whole clip.
*Trim & Resize Clip* keeps at most 150 frames and scales the longest side down to 960 px (never up) so a long 1080p clip is not pushed through at full size; set max_frames or max_side to 0 to keep everything. Any frame size works: the nodes pad to multiples of 8 and crop back, and say so in their report."""

ONE_VIDEO = """### Input
Upload clean footage (nothing to remove) in the one *Load Video (clean clip)* node; no mask is needed.
*Trim & Resize Clip* keeps at most 150 frames and scales the longest side down to 960 px (never up); set max_frames or max_side to 0 to keep everything."""

OUTPUT = """### Output
*Save Video* writes an H.264 mp4 for viewing (ComfyUI 0.3.64's Save Video has no quality setting, so it is lossy); *Save Image (exact frames)* writes every frame as a lossless PNG to `output/{prefix}_frames_*.png`: use those when the untouched pixels must stay exact."""

PRIOR_NOTE = """### Object removal without any model file
The *Flow Propagation Prior* fills the hole with pixels that other frames saw (OpenCV optical flow), and fills never-seen pixels spatially. The *Preview Image (visibility)* shows where each hole pixel came from: green = copied from one other frame, blue = fused from several frames that agree, magenta = never seen and filled spatially (where a generative model such as DiffuEraser helps most). *Blend Into Video* puts the fill back into the original frames.

""" + TWO_VIDEOS + "\n\n" + OUTPUT.format(prefix="rrdpo/flow_prior")

REMOVAL_NOTE = """### DiffuEraser object removal with a Region-DPO LoRA
*Flow Propagation Prior* → *Prior Latents* (noise mode) → *DiffuEraser Sampler* (PCM 2-step LoRA, TCD) → *Blend Into Video*. *Preview Any (sampler report)* says what the sampler adjusted (padding to multiples of 8, one mask for all frames). *Apply Region-DPO LoRA* adds your trained LoRA (made with workflow d, in `models/loras/rrdpo/`); strength 0 = the base model.

""" + TWO_VIDEOS + "\n\n" + MODELS + "\n\n" + OUTPUT.format(prefix="rrdpo/diffueraser")

PAIRS_NOTE = """### Preference pairs
*Build Preference Pairs* cuts random moving masks into the clean clip: the truth is the winner, a model's completion the loser. Pairs go to `output/rrdpo_pairs/<dataset_name>/`; queue again to add more (it resumes).{preview}

""" + ONE_VIDEO + "\n\n" + MODELS

TRAIN_NOTE = """### Training a Region-DPO LoRA
*Build Preference Pairs* (or the existing folder), then the *Region-Reg-DPO Trainer* (design defaults: alpha 1 / 1.5 / 0.05, rho 100 / 200 / 5, beta 1000, band 8 px, rank 16, lr 2e-6). Checkpoints go to `output/rrdpo_runs/<lora_name>/`; Cancel saves one and a re-run resumes. The LoRA lands in `models/loras/rrdpo/`. Watch DGR and the DPO share in *Preview Image (training curves)*.

""" + ONE_VIDEO + "\n\n" + MODELS

AB_NOTE = """### A/B: base vs LoRA
The same clip, seed and prior through two branches: *Base: DiffuEraser Sampler* and *With Region-DPO LoRA: DiffuEraser Sampler*. Each branch has its own metrics (*Base: Metrics*, *With Region-DPO LoRA: Metrics*); *Image Stitch (left base, right LoRA)* puts the results side by side.

""" + TWO_VIDEOS + "\n\n" + MODELS + "\n\n" + OUTPUT.format(prefix="rrdpo/ab_base_vs_lora")


def _video_and_mask(wf):
    video = wf.add("LoadVideo", title="Load Video (clip)", file="input_video.mp4")
    comps = wf.add("GetVideoComponents", video=video[0])
    mask_video = wf.add("LoadVideo", title="Load Video (mask)", file="input_mask.mp4")
    mask_comps = wf.add("GetVideoComponents", title="Get Video Components (mask)", video=mask_video[0])
    raw_mask = wf.add("ImageToMask", image=mask_comps[0], channel="red")
    clip = wf.add("RRDPOTrimResizeClip", images=comps[0], mask=raw_mask[0])
    mask = wf.add("RRDPOPrepareVideoMask", mask=clip[1], images=clip[0], dilation_iter=8, erode=True)
    return comps, clip, mask


def _clean_clip(wf):
    video = wf.add("LoadVideo", title="Load Video (clean clip)", file="input_video.mp4")
    comps = wf.add("GetVideoComponents", video=video[0])
    return wf.add("RRDPOTrimResizeClip", images=comps[0])


def _save(wf, images, fps, prefix):
    video = wf.add("CreateVideo", images=images, fps=fps)
    wf.add("SaveVideo", video=video[0], filename_prefix=prefix)
    wf.add("SaveImage", title="Save Image (exact frames)", images=images, filename_prefix=prefix + "_frames")


def _model_chain(wf, lora: bool):
    model = wf.add("RRDPOLoadDiffuEraser", model_name="diffuEraser", dtype="auto",
                   pcm_lora="pcm_sd15_smallcfg_2step_converted.safetensors")
    vae = wf.add("VAELoader", vae_name="sd-vae-ft-mse.safetensors")
    clip = wf.add("CLIPLoader", clip_name="clip_l.safetensors", type="stable_diffusion")
    cond = wf.add("CLIPTextEncode", text="", clip=clip[0])
    out = model
    if lora:
        out = wf.add("RRDPOApplyRegionDPOLoRA", diffueraser=model[0], lora_name="rrdpo/region_dpo_lora.safetensors",
                     strength=1.0)
    return model, out, vae, cond


def object_removal_flow_prior(Workflow):
    wf = Workflow("a_object_removal_flow_prior")
    wf.note("Read me", PRIOR_NOTE)
    comps, clip, mask = _video_and_mask(wf)
    prior = wf.add("RRDPOFlowPrior", images=clip[0], mask=mask[0])
    wf.add("PreviewImage", title="Preview Image (visibility)", images=prior[2])
    zones = wf.add("RRDPOZoneMasks", mask=mask[0], images=clip[0], band_px=8)
    wf.add("PreviewImage", title="Preview Image (zones)", images=zones[3])
    blended = wf.add("RRDPOBlendIntoVideo", original=clip[0], generated=prior[0], mask=mask[0])
    _save(wf, blended[0], comps[2], "rrdpo/flow_prior")
    return wf


def diffueraser_removal_with_lora(Workflow):
    wf = Workflow("b_diffueraser_object_removal_lora")
    wf.note("Read me", REMOVAL_NOTE)
    comps, clip, mask = _video_and_mask(wf)
    _, model, vae, cond = _model_chain(wf, lora=True)
    prior = wf.add("RRDPOFlowPrior", images=clip[0], mask=mask[0])
    latent = wf.add("RRDPOPriorLatents", title="Prior Latents", diffueraser=model[0], vae=vae[0], conditioning=cond[0], images=clip[0],
                    mask=mask[0], prior=prior[0], mode="noise", t_start=999, steps=2, scheduler="tcd", seed=0)
    sampled = wf.add("RRDPODiffuEraserSampler", diffueraser=model[0], vae=vae[0], conditioning=cond[0],
                     images=clip[0], mask=mask[0], prior_latents=latent[0], steps=2, scheduler="tcd", seed=0)
    if len(wf.outputs("RRDPODiffuEraserSampler")) > 1:  # what the sampler adjusted: padding, a shared mask
        wf.add("PreviewAny", title="Preview Any (sampler report)", source=sampled[1])
    blended = wf.add("RRDPOBlendIntoVideo", original=clip[0], generated=sampled[0], mask=mask[0])
    _save(wf, blended[0], comps[2], "rrdpo/diffueraser")
    return wf


def build_pairs(Workflow):
    wf = Workflow("c_build_preference_pairs")
    preview = len(wf.outputs("RRDPOBuildPreferencePairs")) > 2
    wf.note("Read me", PAIRS_NOTE.format(preview=" *Preview Image (pairs)* shows a few pairs: masked input, winner, "
                                                  "and each kind of loser." if preview else ""))
    clip = _clean_clip(wf)
    model, _, vae, cond = _model_chain(wf, lora=False)
    pairs = wf.add("RRDPOBuildPreferencePairs", diffueraser=model[0], vae=vae[0], conditioning=cond[0],
                   images=clip[0], dataset_name="rrdpo_pairs", count=16, num_frames=22, seed=0)
    wf.add("PreviewAny", title="Preview Any (summary)", source=pairs[1])
    if preview:
        wf.add("PreviewImage", title="Preview Image (pairs)", images=pairs[2])
    return wf


def train_lora(Workflow):
    wf = Workflow("d_train_region_dpo_lora")
    wf.note("Read me", TRAIN_NOTE)
    clip = _clean_clip(wf)
    model, _, vae, cond = _model_chain(wf, lora=False)
    pairs = wf.add("RRDPOBuildPreferencePairs", diffueraser=model[0], vae=vae[0], conditioning=cond[0],
                   images=clip[0], dataset_name="rrdpo_pairs", count=16, num_frames=22, seed=0)
    trainer = wf.add("RRDPOTrainer", diffueraser=model[0], conditioning=cond[0], pairs=pairs[0], vae=vae[0],
                     lora_name="region_dpo_lora", steps=200, seed=0)
    wf.add("PreviewImage", title="Preview Image (training curves)", images=trainer[2])
    wf.add("PreviewAny", title="Preview Any (report)", source=trainer[3])
    return wf


def ab_compare(Workflow):
    wf = Workflow("e_ab_base_vs_lora_metrics")
    wf.note("Read me", AB_NOTE)
    comps, clip, mask = _video_and_mask(wf)
    base, with_lora, vae, cond = _model_chain(wf, lora=True)
    prior = wf.add("RRDPOFlowPrior", images=clip[0], mask=mask[0])
    results = []
    for branch, model in (("Base", base), ("With Region-DPO LoRA", with_lora)):
        sampled = wf.add("RRDPODiffuEraserSampler", title=f"{branch}: DiffuEraser Sampler", diffueraser=model[0],
                         vae=vae[0], conditioning=cond[0], images=clip[0], mask=mask[0], prior=prior[0], steps=2,
                         scheduler="tcd", seed=0)
        blended = wf.add("RRDPOBlendIntoVideo", title=f"{branch}: Blend Into Video", original=clip[0],
                         generated=sampled[0], mask=mask[0])
        metrics = wf.add("RRDPOInpaintingMetrics", title=f"{branch}: Metrics", result=blended[0], mask=mask[0])
        wf.add("PreviewAny", title=f"{branch}: metrics report", source=metrics[0])
        wf.add("PreviewImage", title=f"{branch}: metrics chart", images=metrics[1])
        results.append(blended)
    stitched = wf.add("ImageStitch", title="Image Stitch (left base, right LoRA)", image1=results[0][0],
                      image2=results[1][0], direction="right", match_image_size=True, spacing_width=0,
                      spacing_color="white")
    _save(wf, stitched[0], comps[2], "rrdpo/ab_base_vs_lora")
    return wf


ALL_WORKFLOWS = [object_removal_flow_prior, diffueraser_removal_with_lora, build_pairs, train_lora, ab_compare]
