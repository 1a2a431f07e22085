"""The training log: one JSON object per optimizer step, appended to ``train_log.jsonl``.

Each record holds ``step`` (how many updates the LoRA had received when these numbers were
measured, so the first record is step 0, the untrained adapter), the learning rate, gradient
norm, timing, and every diagnostic of spec/METHOD.md §4 (``RegionDPOOutput.scalars()``).

A killed run can leave records newer than its last checkpoint; :meth:`JsonlLog.truncate_after`
drops them on resume so the resumed run's records replace them and no step appears twice.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from ..fsutil import atomic_write_text

__all__ = ["JsonlLog", "read_log"]


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so a broken step stays visible in the log."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a log (a torn last line from a killed writer is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


class JsonlLog:
    """Append-only JSONL writer (each line flushed and fsynced: a crash loses at most one line)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Keep only records with ``record["step"] < step`` (rewritten atomically)."""
        kept = [r for r in read_log(self.path) if isinstance(r.get("step"), int) and r["step"] < step]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def reset(self) -> None:
        atomic_write_text(self.path, "")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(_clean(record), sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        return read_log(self.path)

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.write(r)
