"""Atomic file writes, the one implementation every writer of the package uses.

Write a temporary file in the target's folder, fsync, then ``os.replace``: a process killed at any
moment leaves either the old file or the new one, never half of one. Temporary names start with a
dot and hold ``.tmp<pid>`` so a resumed job can sweep leftovers (:func:`remove_temp_files`); they
keep the target's extension, so writers that pick a format by extension (ffmpeg, OpenCV) work.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

__all__ = [
    "atomic_path",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_safetensors",
    "atomic_torch_save",
    "fsync_dir",
    "is_temp_name",
    "remove_temp_files",
]

TMP_MARK = ".tmp"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TMP_MARK in name


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path`` atomically, on error it is removed.

    ``durable`` also fsyncs the file and the folder, so the new file survives a power cut; writers of
    many small files (video frames) that only need kill-safety turn it off.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp: a unique name even for two threads of one process writing the same target.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result gets a normal file's mode
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success its files are fsynced and it replaces the folder ``path``
    (an existing one is removed first), on error it is removed."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = True,
                      default: Callable[[Any], Any] | None = None) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=default) + "\n")


def atomic_save_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(tmp),
            metadata=dict(metadata) if metadata else None,
        )
    return Path(path)


def atomic_torch_save(path: str | os.PathLike, obj: Any, save: Callable[[Any, str], None] | None = None) -> Path:
    """``torch.save`` (only tensors / plain containers: they load back with ``weights_only=True``)."""
    with atomic_path(path) as tmp:
        (save or torch.save)(obj, str(tmp))
    return Path(path)


def remove_temp_files(folder: str | os.PathLike) -> int:
    """Delete leftovers of interrupted atomic writes directly inside ``folder``; returns the count."""
    folder = Path(folder)
    count = 0
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        if is_temp_name(p.name):
            if p.is_dir():
                import shutil

                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            count += 1
    return count
