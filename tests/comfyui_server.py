"""Start a real ComfyUI headless on the CPU with this pack installed, for integration tests and screenshots.

Set ``COMFYUI_DIR`` to a ComfyUI checkout (and ``COMFYUI_PYTHON`` to the interpreter of its
environment, default: this one). The server gets a private base directory (custom_nodes with a
link to this repository, models, input, output, temp), an in-memory database, a free loopback
port, and is killed at the end. A websocket listener records every event the server sends
(``executing``, ``progress``, ``execution_interrupted`` ...) so tests can see what ran and when.

``write_tiny_models`` puts tiny random models into ``<base>/models`` under the file names the
shipped workflows use, in the real on-disk layout; ``write_test_clips`` puts small real clips
(from ``../shared/data`` when present, synthetic otherwise) into ``<base>/input``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from conftest import REPO_ROOT

PACK_DIR_NAME = "region_reg_dpo"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def comfyui_dir() -> Path | None:
    value = os.environ.get("COMFYUI_DIR")
    return Path(value) if value else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base: Path, port: int, proc: subprocess.Popen, log_path: Path):
        self.base, self.port, self.proc, self.log_path = base, port, proc, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.client_id = uuid.uuid4().hex
        self.events: list[tuple[float, dict]] = []  # (arrival time, websocket message)
        self._ws = None

    # -- HTTP helpers ---------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict, timeout: float = 30) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else {})
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def object_info(self) -> dict:
        return self.get("/object_info", timeout=60)

    def queue_prompt(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise AssertionError(f"/prompt refused the workflow ({status}): {json.dumps(body, indent=1)[:4000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """Poll /history until the prompt finished; returns its history entry."""
        end = time.time() + timeout
        while time.time() < end:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited while running the prompt:\n{self.log()[-4000:]}")
            time.sleep(0.3)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log()[-4000:]}")

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    # -- websocket events -----------------------------------------------------------------
    def listen(self) -> None:
        """Record the server's websocket messages for this client in ``self.events`` (a daemon thread)."""
        import websocket  # websocket-client, from requirements-test.txt

        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=30)
        ws.settimeout(None)
        self._ws = ws

        def pump():
            while True:
                try:
                    msg = ws.recv()
                except Exception:  # closed at shutdown
                    return
                if not msg:  # the connection closed
                    return
                if isinstance(msg, str):  # binary messages are preview images
                    with contextlib.suppress(json.JSONDecodeError):
                        self.events.append((time.time(), json.loads(msg)))

        threading.Thread(target=pump, daemon=True).start()

    def prompt_events(self, prompt_id: str) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in list(self.events) if m.get("data", {}).get("prompt_id") == prompt_id]

    def wait_for_event(self, predicate, timeout: float = 600) -> tuple[float, dict]:
        """Block until an event satisfying ``predicate(message)`` arrived; returns (time, message)."""
        end, seen = time.time() + timeout, 0
        while time.time() < end:
            events = list(self.events)
            for t, m in events[seen:]:
                if predicate(m):
                    return t, m
            seen = len(events)
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise AssertionError(f"no matching websocket event within {timeout} s:\n{self.log()[-3000:]}")

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()


@contextlib.contextmanager
def running_comfyui(base: Path, startup_timeout: float = 180, listen: bool = True):
    """Run ComfyUI with ``base`` as its base directory; yields a :class:`ComfyServer`."""
    root = comfyui_dir()
    assert root is not None
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    port = _free_port()
    log_path = base / "comfyui.log"
    cmd = [python, str(root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
           "--disable-auto-launch"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ComfyServer(base, port, proc, log_path)
    try:
        end = time.time() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited at start-up:\n{server.log()[-4000:]}")
            try:
                server.get("/system_stats", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() > end:
                    raise AssertionError(f"ComfyUI did not start in {startup_timeout} s:\n{server.log()[-4000:]}")
                time.sleep(0.5)
        if listen:
            server.listen()
        yield server
    finally:
        server.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(base / "temp", ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Tiny models in the real layout, under the names the shipped workflows use
# --------------------------------------------------------------------------------------------
PCM_LORA_FILE = "pcm_sd15_smallcfg_2step_converted.safetensors"

# Run in a separate interpreter so the big random models never sit in the test process.
_MAKE_MODELS = r"""
import sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[1])
base = Path(sys.argv[2]); pcm_name = sys.argv[3]
from safetensors.torch import save_file
from rrdpo_core.models.testing import write_tiny_diffueraser, tiny_diffueraser
from rrdpo_core.region_lora import RegionLoraInfo, add_region_adapter, save_region_lora
torch.manual_seed(0)
write_tiny_diffueraser(base / "models/diffueraser/diffuEraser", seed=0, cross_attention_dim=768)

# PCM: a random kohya-format LoRA (fp16, lora_unet_<module path with _>) on the spatial layers PCM targets.
m = tiny_diffueraser(seed=0, cross_attention_dim=768)
targets = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2")
g = torch.Generator().manual_seed(1)
pcm = {}
for name, mod in m.unet.named_modules():
    if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) or not name.endswith(targets) or "motion_modules" in name:
        continue
    w, key, r = mod.weight, "lora_unet_" + name.replace(".", "_"), 4
    down = torch.randn(r, *w.shape[1:], generator=g) / w[0].numel() ** 0.5
    up = torch.randn(w.shape[0], r, *([1, 1] if w.ndim == 4 else []), generator=g) / r ** 0.5
    pcm[key + ".lora_down.weight"], pcm[key + ".lora_up.weight"] = (0.2 * down).half(), (0.2 * up).half()
    pcm[key + ".alpha"] = torch.tensor(float(r), dtype=torch.float16)
assert pcm, "no PCM target layer in the tiny UNet"
(base / "models/loras").mkdir(parents=True, exist_ok=True)
save_file(pcm, str(base / "models/loras" / pcm_name))

add_region_adapter(m.unet, rank=4, lora_alpha=8)
with torch.no_grad():
    for n, p in m.unet.named_parameters():
        if "lora_" in n:
            p.normal_(0, 0.2)
save_region_lora(base / "models/loras/rrdpo/region_dpo_lora.safetensors", m.unet, RegionLoraInfo(rank=4, lora_alpha=8))

# ComfyUI's VAELoader and CLIPLoader build the real SD1.5 shapes from the keys, so these are full size (random, fp16).
from diffusers import AutoencoderKL
vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
(base / "models/vae").mkdir(parents=True, exist_ok=True)
save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, str(base / "models/vae/sd-vae-ft-mse.safetensors"))
from transformers import CLIPTextConfig, CLIPTextModel
clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                    num_hidden_layers=12, max_position_embeddings=77, vocab_size=49408, projection_dim=768))
(base / "models/text_encoders").mkdir(parents=True, exist_ok=True)
# ComfyUI reads the original "text_model." key layout; transformers 5 drops that prefix
save_file({(k if k.startswith("text_model.") else "text_model." + k): v.half().contiguous()
           for k, v in clip.state_dict().items() if "position_ids" not in k},
          str(base / "models/text_encoders/clip_l.safetensors"))
"""


def write_tiny_models(base: Path) -> None:
    subprocess.run([sys.executable, "-c", _MAKE_MODELS, str(REPO_ROOT), str(base), PCM_LORA_FILE], check=True)


# --------------------------------------------------------------------------------------------
# Small clips; every size here is deliberately NOT a multiple of 8
# --------------------------------------------------------------------------------------------
CLIP_FRAMES = 10


def _resize(frames, w: int, h: int, nearest: bool = False):
    import cv2
    import numpy as np

    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])


def write_test_clips(base: Path) -> dict[str, str]:
    """Write the test inputs into ``<base>/input``; returns {role: file name}.

    Roles: ``video``/``mask`` (a clip and its per-frame mask video, 108x60), ``video2``/``mask_single``
    (another clip, 106x60, and ONE mask frame for the whole clip), ``clean`` (footage for pairs).
    Real footage comes from ``../shared/data`` when it is there; otherwise synthetic clips stand in.
    """
    import cv2
    import numpy as np

    from rrdpo_core.video_io import read_masks, read_video, write_video

    inp = base / "input"
    inp.mkdir(parents=True, exist_ok=True)
    bmx, example = SHARED_DATA / "bmx-trees", SHARED_DATA / "diffueraser-example1"
    if (bmx / "frames").is_dir() and (bmx / "masks").is_dir():
        frames = read_video(bmx / "frames", max_frames=CLIP_FRAMES).frames.numpy()
        masks = read_masks(bmx / "masks", max_frames=CLIP_FRAMES).numpy().astype(np.float32)
        frames, masks = _resize(frames, 108, 60), _resize(masks, 108, 60, nearest=True)
        source = "bmx-trees"
    else:
        from rrdpo_core.synthetic import make_synthetic_clip

        clip = make_synthetic_clip(num_frames=CLIP_FRAMES, height=60, width=108, seed=3)
        frames, masks, source = clip.frames.numpy(), clip.masks.numpy().astype(np.float32), "synthetic"
    if (example / "video.mp4").is_file() and (example / "mask.mp4").is_file():
        frames2 = _resize(read_video(example / "video.mp4", max_frames=CLIP_FRAMES).frames.numpy(), 106, 60)
        mask2 = _resize(read_masks(example / "mask.mp4", max_frames=1).numpy().astype(np.float32), 106, 60, nearest=True)
    else:
        from rrdpo_core.synthetic import make_synthetic_clip

        clip = make_synthetic_clip(num_frames=CLIP_FRAMES, height=60, width=106, seed=4)
        frames2, mask2 = clip.frames.numpy(), clip.masks.numpy()[:1].astype(np.float32)
    # the single mask must cover the object in every frame: widen it by the object's motion
    mask2 = cv2.dilate(mask2[0], np.ones((9, 9), np.uint8))[None]
    names = {"video": "clip_108x60.mp4", "mask": "clip_108x60_mask.mp4", "video2": "clip2_106x60.mp4",
             "mask_single": "clip2_106x60_one_mask.mp4", "source": source}
    write_video(inp / names["video"], frames, fps=8)
    write_video(inp / names["mask"], np.repeat(masks[..., None], 3, -1), fps=8)
    write_video(inp / names["video2"], frames2, fps=8)
    write_video(inp / names["mask_single"], np.repeat(mask2[..., None], 3, -1), fps=8)
    return names


def prepare_base(base: Path) -> dict[str, str]:
    """A ComfyUI base directory with the tiny models and the test clips; returns the clip names."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    write_tiny_models(base)
    return write_test_clips(base)
