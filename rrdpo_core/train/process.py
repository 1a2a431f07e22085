"""Training in a separate process, so a crash or an out-of-memory there cannot take the host down.

:func:`run_training_in_process` starts ``python -m rrdpo_core.train.process JOB.json`` and waits
for it. The child loads the model, pairs, text embedding and VAE from the paths in the
:class:`~rrdpo_core.train.TrainConfig` (``model_dir``, ``pcm_lora``, ``pairs_dir``,
``text_embeds``, ``vae_path``), exactly as the command line does, and runs the same
:func:`~rrdpo_core.train.run_training`, so checkpoints, resume and the log are the same.

Talking to the child:

* progress and each step's log record come back as JSON lines on its stdout (marked with
  :data:`MARK`, so anything else printed there is ignored);
* cancel: the parent creates a flag file the child's ``cancel`` callback polls; the child saves
  a checkpoint and stops as the in-process trainer does, and the parent raises
  :class:`~rrdpo_core.errors.Cancelled` with the child's message;
* an error in the child comes back with its type and message (input errors keep their type:
  ValueError, FileNotFoundError, NonFiniteLossError); a child that dies without a word (killed,
  out of memory, a segfault) raises :class:`TrainingProcessError` with its exit status and the
  end of its stderr, which is kept in ``<out_dir>/train_process.log``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import Cancelled
from ..fsutil import atomic_write_text
from .config import TrainConfig

__all__ = ["MARK", "TrainingProcessError", "run_training_in_process"]

MARK = "@@rrdpo-train "
STDERR_LOG = "train_process.log"
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds rrdpo_core/


class TrainingProcessError(RuntimeError):
    """The training process failed or died; the message says how and where its log is."""


def _result_from(data: Mapping[str, Any]):
    from .trainer import TrainResult

    path = lambda v: Path(v) if v is not None else None  # noqa: E731
    return TrainResult(lora_path=Path(data["lora_path"]), log_path=Path(data["log_path"]),
                       plots={k: Path(v) for k, v in data.get("plots", {}).items()},
                       diagnostics=dict(data.get("diagnostics", {})), steps=int(data["steps"]),
                       checkpoint=path(data.get("checkpoint")), out_dir=Path(data["out_dir"]),
                       resumed_from=int(data.get("resumed_from", 0)))


_KEEP_TYPES = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError, "TypeError": TypeError}


def _raise_child_error(message: Mapping[str, Any], log_path: Path) -> None:
    kind, text = str(message.get("kind", "Error")), str(message.get("message", ""))
    if kind == "NonFiniteLossError":
        from .trainer import NonFiniteLossError

        raise NonFiniteLossError(text)
    if kind == "RrdpoInputError" or kind in _KEEP_TYPES:
        raise _KEEP_TYPES.get(kind, ValueError)(text)
    raise TrainingProcessError(f"training failed in its process: {kind}: {text} (traceback in {log_path})")


def run_training_in_process(
    config: TrainConfig | Mapping[str, Any],
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    poll_s: float = 0.2,
):
    """Run :func:`rrdpo_core.train.run_training` in a child process and return its ``TrainResult``.

    ``config`` must name ``model_dir``, ``pairs_dir`` and ``out_dir`` (and ``vae_path`` when the
    pairs hold no latents). ``progress``/``cancel``/``on_log`` behave as for the in-process
    trainer; ``cancel`` is polled every ``poll_s`` seconds. ``on_start`` gets the child's process
    id; ``python`` is the interpreter (default: this one).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    missing = [name for name in ("model_dir", "pairs_dir", "out_dir") if not getattr(cfg, name)]
    if missing:
        raise ValueError(f"training in a separate process loads everything from disk: set {missing} in the config")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = out / f".train_job.{os.getpid()}.json"
    flag = out / f".train_cancel.{os.getpid()}"
    flag.unlink(missing_ok=True)
    atomic_write_text(job, json.dumps({"config": cfg.to_dict(), "cancel_flag": str(flag)}))
    log_path = out / STDERR_LOG
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join([str(_PACKAGE_ROOT)] + [p for p in child_env.get("PYTHONPATH", "")
                                                                      .split(os.pathsep) if p])
    messages: list[dict[str, Any]] = []
    lock = threading.Lock()

    def reader(stream) -> None:
        for line in stream:
            if line.startswith(MARK):
                try:
                    msg = json.loads(line[len(MARK):])
                except json.JSONDecodeError:
                    continue
                with lock:
                    messages.append(msg)

    with open(log_path, "w", encoding="utf-8") as err:
        proc = subprocess.Popen([python or sys.executable, "-m", "rrdpo_core.train.process", str(job)],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=child_env, cwd=str(out))
        thread = threading.Thread(target=reader, args=(proc.stdout,), daemon=True)
        thread.start()
        if on_start is not None:
            on_start(proc.pid)
        final: dict[str, Any] | None = None
        try:
            while True:
                done = proc.poll() is not None
                if done:
                    thread.join()
                with lock:
                    batch, messages[:] = list(messages), []
                for msg in batch:
                    kind = msg.get("type")
                    if kind == "progress" and progress is not None:
                        progress(int(msg["done"]), int(msg["total"]))
                    elif kind == "log" and on_log is not None:
                        on_log(dict(msg["record"]))
                    elif kind in ("result", "cancelled", "error"):
                        final = msg
                if done:
                    break
                if cancel is not None and not flag.exists() and cancel():
                    flag.touch()
                time.sleep(poll_s)
        except BaseException:
            # The host is going away (or a callback failed): do not leave the child running.
            flag.touch()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            job.unlink(missing_ok=True)
            flag.unlink(missing_ok=True)
    if final is not None and final["type"] == "result":
        return _result_from(final["result"])
    if final is not None and final["type"] == "cancelled":
        raise Cancelled(str(final["message"]))
    if final is not None and final["type"] == "error":
        _raise_child_error(final, log_path)
    tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
    how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with code {proc.returncode}"
    raise TrainingProcessError(
        f"the training process {how} without a result (out of memory or a crash?). Checkpoints written so far are "
        f"in {out} and a re-run resumes from the newest; its stderr is in {log_path}"
        + (":\n  " + "\n  ".join(tail) if tail else ""))


# ------------------------------------------------------------------------------------------
# The child


def _emit(msg: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(msg, default=str) + "\n")
    sys.stdout.flush()


def _child(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    cfg = TrainConfig.from_dict(job["config"])
    flag = Path(job["cancel_flag"])
    try:
        from .__main__ import checked_pairs, load_training_inputs
        from .trainer import run_training

        dataset = checked_pairs(cfg)
        _, model, text, vae = load_training_inputs(cfg, dataset)
        result = run_training(
            model, dataset, text, cfg, out_dir=cfg.out_dir, vae=vae,
            progress=lambda done, total: _emit({"type": "progress", "done": done, "total": total}),
            cancel=flag.exists,
            on_log=lambda record: _emit({"type": "log", "record": record}))
        _emit({"type": "result", "result": {
            "lora_path": str(result.lora_path), "log_path": str(result.log_path),
            "plots": {k: str(v) for k, v in result.plots.items()}, "diagnostics": result.diagnostics,
            "steps": result.steps, "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "out_dir": str(result.out_dir), "resumed_from": result.resumed_from}})
        return 0
    except Cancelled as exc:
        _emit({"type": "cancelled", "message": str(exc)})
        return 3
    except Exception as exc:  # reported to the parent with its type; the traceback goes to stderr
        traceback.print_exc()
        _emit({"type": "error", "kind": type(exc).__name__, "message": str(exc)})
        return 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m rrdpo_core.train.process JOB.json (written by run_training_in_process)")
    sys.exit(_child(sys.argv[1]))
