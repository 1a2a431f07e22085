"""One builder per pair folder: a lock file that holds the owner's process id."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["LOCK_FILE", "FolderLock"]

LOCK_FILE = ".lock"


class FolderLock:
    """One builder per folder: a lock file holding the owner's pid; a dead owner's lock is taken over."""

    def __init__(self, root: Path):
        self.path = root / LOCK_FILE

    def __enter__(self) -> "FolderLock":
        for _ in range(2):
            try:
                fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise RuntimeError(
                        f"{self.path.parent} is being written by process {pid}; wait for it to finish (or stop it) "
                        f"before building pairs into the same folder"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale lock of a killed build
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise RuntimeError(f"could not lock {self.path.parent}")

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
