"""Load time and peak memory of ``load_diffueraser`` on a full-size checkpoint.

Writes a random checkpoint with the released architecture and layout (``brushnet/`` 3.54 GB and
``unet_main/`` 5.25 GB in fp32) to a temporary folder, then loads it in fresh processes and prints:

* the files' size and the load time;
* the peak resident memory (``ru_maxrss``) of the loading process as a ratio of the checkpoint
  size, raw and minus the process's footprint before loading (interpreter + torch + diffusers);
* the same after reading every weight once ("touch"), because the baseline, diffusers' own
  ``from_pretrained`` on the same folder (run the same way in the same session), leaves CPU
  weights memory-mapped from the file and only reads them on first use.

Goal: peak RSS <= 1.2x the checkpoint size. Figures only, no assertions. The files are written
just before loading, so they are read from a warm page cache (the disk is not what is measured).

Usage::

    python3 bench/bench_load.py                      # full size, fp32 (~8.8 GB in /tmp, removed after)
    python3 bench/bench_load.py --dtype fp16         # load the fp32 files converted to fp16
    python3 bench/bench_load.py --size tiny          # the tiny test configs (seconds)
    python3 bench/bench_load.py --device cuda --dtype fp16   # to the GPU: CPU RSS stays small
    python3 bench/bench_load.py --dir /big/disk --keep --no-baseline
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from rrdpo_core.models import BrushNetModel, DiffuEraserUNetMotionModel, packaged_config  # noqa: E402

GB = 1e9
_MEASURE = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import torch
from rrdpo_core.models import load_diffueraser, BrushNetModel, DiffuEraserUNetMotionModel
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
before = rss()
dtype = getattr(torch, {dtype!r})
t0 = time.perf_counter()
if {how!r} == "ours":
    model = load_diffueraser({path!r}, dtype=dtype, device={device!r})
    n = sum(t.numel() for t in model.state_dict().values())
else:
    b = BrushNetModel.from_pretrained({path!r}, subfolder="brushnet", torch_dtype=dtype).to({device!r})
    u = DiffuEraserUNetMotionModel.from_pretrained({path!r}, subfolder="unet_main", torch_dtype=dtype).to({device!r})
    n = sum(t.numel() for m in (b, u) for t in m.state_dict().values())
if {device!r} != "cpu":
    torch.cuda.synchronize()
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
# diffusers leaves same-dtype CPU weights memory-mapped from the file and reads them on first use;
# touching every weight once makes the two comparable (what the first forward pass would do).
modules = [model] if {how!r} == "ours" else [b, u]
t1 = time.perf_counter()
with torch.no_grad():
    for m in modules:
        for t in m.state_dict().values():
            t.sum()
touch = time.perf_counter() - t1
peak_touched = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
gpu = torch.cuda.max_memory_allocated() if {device!r} != "cpu" else 0
print(json.dumps(dict(seconds=seconds, peak=peak, before=before, numel=n, touch=touch, peak_touched=peak_touched,
                      gpu=gpu)))
"""


def write_random_checkpoint(root: Path, size: str, seed: int = 0) -> int:
    """Random weights with the released keys and shapes, one component at a time (peak ~ one file)."""
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for name, cls in (("brushnet", BrushNetModel), ("unet_main", DiffuEraserUNetMotionModel)):
        config = packaged_config(name if size == "full" else f"{name}_tiny")
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in cls.from_config(config).state_dict().items()}
        state = {k: torch.empty(s).normal_(std=0.02, generator=gen) for k, s in shapes.items()}
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        total += (folder / "diffusion_pytorch_model.safetensors").stat().st_size
        del state
    return total


def _mem_available() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def measure(path: Path, how: str, dtype: str, min_free: float, device: str = "cpu") -> dict | None:
    """Run one load in a fresh process; stop it (and return None) if the machine runs short of memory."""
    code = _MEASURE.format(repo=str(REPO_ROOT), path=str(path), how=how, dtype=dtype, device=device)
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.DEVNULL, text=True)
        while proc.poll() is None:
            if _mem_available() < min_free * GB:  # shared machine: never push others into the OOM killer
                proc.kill()
                proc.wait()
                return None
            time.sleep(0.2)
        if proc.returncode:
            raise RuntimeError(f"{how} load failed with exit code {proc.returncode}")
        out.seek(0)
        return json.loads(out.read().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="dtype to load into (the files are fp32, like the release)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the temporary checkpoint goes")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoint")
    parser.add_argument("--no-baseline", action="store_true", help="skip diffusers' from_pretrained")
    parser.add_argument("--device", default="cpu", help="load onto this device (e.g. cuda)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per method, interleaved")
    parser.add_argument("--min-free-gb", type=float, default=1.5,
                        help="stop a load when the machine's available memory falls below this")
    args = parser.parse_args()
    dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[args.dtype]

    need = 8.8 * GB if args.size == "full" else 0.1 * GB
    free = shutil.disk_usage(args.dir).free
    if free < need * 1.1:
        sys.exit(f"not enough disk in {args.dir}: {free / GB:.1f} GB free, ~{need / GB:.1f} GB needed (use --dir)")
    root = Path(tempfile.mkdtemp(prefix="bench_load_", dir=args.dir)) / "diffuEraser"
    try:
        t0 = time.perf_counter()
        file_bytes = write_random_checkpoint(root, args.size)
        print(f"wrote {file_bytes / GB:.3f} GB ({args.size}, fp32) to {root} in {time.perf_counter() - t0:.1f} s")
        # Each method runs twice, interleaved, so that neither profits alone from what the other
        # left in the page cache.
        plan = [("load_diffueraser", "ours")]
        if not args.no_baseline:
            plan.append(("diffusers from_pretrained (baseline)", "diffusers"))
        runs = []
        for rep in range(args.repeat):
            for label, how in plan:
                runs.append((f"{label} #{rep + 1}", measure(root, how, dtype, args.min_free_gb, args.device)))
        for label, r in runs:
            if r is None:
                print(f"{label}: stopped, free memory fell below {args.min_free_gb} GB")
        runs = [(label, r) for label, r in runs if r is not None]
        if not runs:
            return
        loaded_bytes = runs[0][1]["numel"] * torch.finfo(getattr(torch, dtype)).bits // 8
        print(f"loading into {dtype}: {loaded_bytes / GB:.3f} GB of tensors")
        print(f"{'method':42s} {'load s':>7s} {'+touch s':>8s} {'peak RSS GB':>11s} {'peak/file':>9s} "
              f"{'(peak-start)/file':>17s} {'touched peak/file':>17s}")
        for label, r in runs:
            print(f"{label:42s} {r['seconds']:7.2f} {r['touch']:8.2f} {r['peak'] / GB:11.3f} "
                  f"{r['peak'] / file_bytes:9.3f} {(r['peak'] - r['before']) / file_bytes:17.3f} "
                  f"{r['peak_touched'] / file_bytes:17.3f}"
                  + (f"  GPU peak {r['gpu'] / GB:.2f} GB" if r["gpu"] else ""))
        ours = [r for label, r in runs if label.startswith("load_diffueraser")]
        base = [r for label, r in runs if label.startswith("diffusers")]
        if ours and base:
            o, b = ours[-1], base[-1]
            print(f"ours vs baseline (last runs): load+touch time x{(o['seconds'] + o['touch']) / (b['seconds'] + b['touch']):.2f}, "
                  f"touched peak RSS x{o['peak_touched'] / b['peak_touched']:.2f}")
        print("goal: peak RSS <= 1.2x checkpoint size")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
