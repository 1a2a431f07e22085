"""Progress reporting and cancellation, as every long job of the package does them.

A job takes ``progress(done, total)`` and ``cancel() -> bool`` callables (ComfyUI's progress bar
and interrupt flag, the command line's bars, a test's recorder). :class:`Progress` counts the
job's units of work, reports each one and polls ``cancel``; a True answer raises
:class:`rrdpo_core.errors.Cancelled` with a message that says what stopped and how to go on.
:class:`ProgressBars` is the terminal side of the same callbacks (tqdm bars, one per stage).
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable

from .errors import Cancelled

__all__ = ["ProgressFn", "CancelFn", "check_cancel", "Progress", "ProgressBars"]

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


def check_cancel(cancel: CancelFn | None, message: str = "cancelled by the user") -> None:
    """Raise :class:`Cancelled` (with ``message``) if ``cancel()`` says so."""
    if cancel is not None and cancel():
        raise Cancelled(message)


class Progress:
    """``total`` units of work: :meth:`advance` reports one more, :meth:`check` polls ``cancel``.

    Reports never exceed ``total`` (a job whose plan was an estimate stays within its bar).
    Worker threads of one job may share it: counting and reporting hold a lock, so no unit is
    lost and the callback sees the counts in order.
    """

    def __init__(self, total: int, callback: ProgressFn | None = None, cancel: CancelFn | None = None,
                 message: str = "cancelled by the user"):
        self.total, self.done = int(total), 0
        self.callback, self.cancel, self.message = callback, cancel, message
        self._lock = threading.Lock()

    def check(self) -> None:
        check_cancel(self.cancel, self.message)

    def advance(self) -> None:
        with self._lock:
            self.done += 1
            if self.callback is not None:
                self.callback(min(self.done, self.total), self.total)

    def step(self) -> None:
        """One unit done, then a cancel poll."""
        self.advance()
        self.check()


class ProgressBars:
    """tqdm bars on stderr driven by ``progress(done, total)`` callbacks; one bar per stage."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar: Any = None

    def stage(self, name: str) -> ProgressFn:
        """Close the current bar and return the callback of a new one named ``name``."""
        self.close()
        if self.quiet:
            return lambda done, total: None
        from tqdm import tqdm

        self.bar = tqdm(total=1, desc=name, unit="step", leave=False, file=sys.stderr)

        def update(done: int, total: int) -> None:
            if self.bar.total != total:
                self.bar.total = total
            self.bar.update(done - self.bar.n)  # update() throttles redraws

        return update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
