"""The example workflows, as graphs. ``python3 tools/build_workflows.py`` writes them to workflows/."""
from __future__ import annotations

FILES_NOTE = """### Files this workflow needs
- **Video and mask**: upload your clip and a mask video (white = object to remove) with the two *Load Video* nodes.
- **DiffuEraser**: `models/diffueraser/diffuEraser/brushnet/` and `.../unet_main/` (config.json + diffusion_pytorch_model.safetensors each) from huggingface.co/lixiaowen/diffuEraser.
- **PCM LoRA**: `models/loras/pcm_sd15_smallcfg_2step_converted.safetensors` (huggingface.co/wangfuyun/PCM_Weights, sd15/).
- **VAE**: `models/vae/sd-vae-ft-mse.safetensors` (stabilityai/sd-vae-ft-mse).
- **Text encoder**: the SD1.5 CLIP-L text encoder in `models/text_encoders/` (type stable_diffusion); DiffuEraser uses the empty prompt.
Nothing is downloaded by the pack."""

PRIOR_NOTE = """### Object removal without any model file
The *Flow Propagation Prior* fills the hole with pixels that other frames saw (OpenCV optical flow), and fills never-seen pixels spatially. The *visibility* preview shows which is which: green = seen in another frame, magenta = never seen (where a generative model such as DiffuEraser helps most).
Upload a clip and a mask video (white = remove) in the two *Load Video* nodes and queue."""


def _video_and_mask(wf):
    video = wf.add("LoadVideo", title="Load Video (clip)", file="input_video.mp4")
    comps = wf.add("GetVideoComponents", video=video[0])
    mask_video = wf.add("LoadVideo", title="Load Video (mask)", file="input_mask.mp4")
    mask_comps = wf.add("GetVideoComponents", video=mask_video[0])
    raw_mask = wf.add("ImageToMask", image=mask_comps[0], channel="red")
    mask = wf.add("RRDPOPrepareVideoMask", mask=raw_mask[0], images=comps[0], dilation_iter=8, erode=True)
    return comps, mask


def _save(wf, images, fps, prefix):
    video = wf.add("CreateVideo", images=images, fps=fps)
    wf.add("SaveVideo", video=video[0], filename_prefix=prefix)


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
    comps, mask = _video_and_mask(wf)
    prior = wf.add("RRDPOFlowPrior", images=comps[0], mask=mask[0])
    wf.add("PreviewImage", images=prior[2])
    zones = wf.add("RRDPOZoneMasks", mask=mask[0], images=comps[0], band_px=8)
    wf.add("PreviewImage", images=zones[3])
    blended = wf.add("RRDPOBlendIntoVideo", original=comps[0], generated=prior[0], mask=mask[0])
    _save(wf, blended[0], comps[2], "rrdpo/flow_prior")
    return wf


def diffueraser_removal_with_lora(Workflow):
    wf = Workflow("b_diffueraser_object_removal_lora")
    wf.note("Read me", FILES_NOTE + "\n- **Region-DPO LoRA**: trained with workflow d, saved in `models/loras/rrdpo/`; set its strength (0 = base).")
    comps, mask = _video_and_mask(wf)
    _, model, vae, cond = _model_chain(wf, lora=True)
    prior = wf.add("RRDPOFlowPrior", images=comps[0], mask=mask[0])
    latent = wf.add("RRDPOPriorLatents", diffueraser=model[0], vae=vae[0], conditioning=cond[0], images=comps[0],
                    mask=mask[0], prior=prior[0], mode="noise", t_start=999, steps=2, scheduler="tcd", seed=0)
    sampled = wf.add("RRDPODiffuEraserSampler", diffueraser=model[0], vae=vae[0], conditioning=cond[0],
                     images=comps[0], mask=mask[0], latent=latent[0], steps=2, scheduler="tcd", seed=0)
    blended = wf.add("RRDPOBlendIntoVideo", original=comps[0], generated=sampled[0], mask=mask[0])
    _save(wf, blended[0], comps[2], "rrdpo/diffueraser")
    return wf


def build_pairs(Workflow):
    wf = Workflow("c_build_preference_pairs")
    wf.note("Read me", FILES_NOTE.replace("a mask video (white = object to remove)", "no mask (clean footage)")
            + "\n\n### Preference pairs\nUse clean clips (nothing to remove): random moving masks are cut into them; the "
            "truth is the winner, a model's completion is the loser. Pairs go to `output/rrdpo_pairs/<dataset_name>/`; "
            "queue again to add more (it resumes).")
    video = wf.add("LoadVideo", title="Load Video (clean clip)", file="input_video.mp4")
    comps = wf.add("GetVideoComponents", video=video[0])
    model, _, vae, cond = _model_chain(wf, lora=False)
    pairs = wf.add("RRDPOBuildPreferencePairs", diffueraser=model[0], vae=vae[0], conditioning=cond[0],
                   images=comps[0], dataset_name="rrdpo_pairs", count=16, num_frames=22, seed=0)
    wf.add("PreviewAny", source=pairs[1])
    return wf


def train_lora(Workflow):
    wf = Workflow("d_train_region_dpo_lora")
    wf.note("Read me", FILES_NOTE.replace("a mask video (white = object to remove)", "no mask (clean footage)")
            + "\n\n### Training\nBuilds pairs (or reuses the folder), then trains a Region-DPO LoRA with Region-Reg-DPO "
            "(design defaults: alpha 1 / 1.5 / 0.05, rho 100 / 200 / 5, beta 1000, band 8 px, rank 16, lr 2e-6). "
            "Checkpoints go to `output/rrdpo_runs/<lora_name>/` and a re-run resumes; the LoRA lands in "
            "`models/loras/rrdpo/`. Watch DGR and the DPO share in the plots.")
    video = wf.add("LoadVideo", title="Load Video (clean clip)", file="input_video.mp4")
    comps = wf.add("GetVideoComponents", video=video[0])
    model, _, vae, cond = _model_chain(wf, lora=False)
    pairs = wf.add("RRDPOBuildPreferencePairs", diffueraser=model[0], vae=vae[0], conditioning=cond[0],
                   images=comps[0], dataset_name="rrdpo_pairs", count=16, num_frames=22, seed=0)
    trainer = wf.add("RRDPOTrainer", diffueraser=model[0], conditioning=cond[0], pairs=pairs[0], vae=vae[0],
                     lora_name="region_dpo_lora", steps=200, seed=0)
    wf.add("PreviewImage", images=trainer[2])
    wf.add("PreviewAny", source=trainer[3])
    return wf


def ab_compare(Workflow):
    wf = Workflow("e_ab_base_vs_lora_metrics")
    wf.note("Read me", FILES_NOTE + "\n\n### A/B\nThe same clip, seed and prior through the base model and the model "
            "with your Region-DPO LoRA; side-by-side video (left base, right LoRA) and metrics for each.")
    comps, mask = _video_and_mask(wf)
    base, with_lora, vae, cond = _model_chain(wf, lora=True)
    prior = wf.add("RRDPOFlowPrior", images=comps[0], mask=mask[0])
    results = []
    for model in (base, with_lora):
        sampled = wf.add("RRDPODiffuEraserSampler", diffueraser=model[0], vae=vae[0], conditioning=cond[0],
                         images=comps[0], mask=mask[0], prior=prior[0], steps=2, scheduler="tcd", seed=0)
        blended = wf.add("RRDPOBlendIntoVideo", original=comps[0], generated=sampled[0], mask=mask[0])
        metrics = wf.add("RRDPOInpaintingMetrics", result=blended[0], mask=mask[0])
        wf.add("PreviewAny", source=metrics[0])
        wf.add("PreviewImage", images=metrics[1])
        results.append(blended)
    stitched = wf.add("ImageStitch", image1=results[0][0], image2=results[1][0], direction="right",
                      match_image_size=True, spacing_width=0, spacing_color="white")
    _save(wf, stitched[0], comps[2], "rrdpo/ab_base_vs_lora")
    return wf


ALL_WORKFLOWS = [object_removal_flow_prior, diffueraser_removal_with_lora, build_pairs, train_lora, ab_compare]
