"""Per-frame work of the flow prior spread over threads.

The prior's inner loops are OpenCV calls (DIS flow, remap, RANSAC) and NumPy operations on
arrays of tens of thousands of pixels, which release the GIL; its frames (flow pairs, the two
tracking sweeps, the fusion of each frame) are independent of each other. Threads therefore
use a second core without copying the clip into other processes.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import cv2

__all__ = ["default_workers", "ordered_map", "opencv_serial_while"]

T = TypeVar("T")
R = TypeVar("R")


# More threads than this mostly wait for the GIL between NumPy calls, and each running frame holds
# its candidate arrays (about 50 MB for a large hole in a 1080p frame).
MAX_DEFAULT_WORKERS = 8
# OpenCV's thread count while priors run (opencv_serial_while): the lock, how many priors are
# inside, and the count to restore when the last one leaves.
_cv_lock = threading.Lock()
_cv_users = 0
_cv_saved = 1


def default_workers() -> int:
    """OpenCV's thread count (``cv2.setNumThreads`` sets it; all cores by default), at most the cores and 8."""
    with _cv_lock:  # while a prior runs, OpenCV's own count is the one saved by opencv_serial_while
        threads = _cv_saved if _cv_users else cv2.getNumThreads()
    return max(1, min(threads, os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads; results in the order of ``items``.

    With one worker nothing is threaded. An exception in ``fn`` (a cancel, a bad frame) comes out
    of the iteration; the items not started yet are dropped and the running ones finish first.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rrdpo-prior") as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()



@contextmanager
def opencv_serial_while(threaded: bool) -> Iterator[None]:
    """While the prior's own threads run (``threaded``), OpenCV runs each call on the calling thread.

    The prior already keeps every core busy with its own threads; OpenCV's thread pool on top
    of them only contends for the same cores (and for the pool itself, which serves one caller at
    a time). With the pool off, bmx-trees squares (80 frames, 2 workers, 2 cores) took 4.50 s of
    wall clock instead of 5.09 s (medians of 4 runs alternated in one process) for the same CPU
    time. OpenCV's thread count is global: it is set to 1 by the first prior that enters and
    restored by the last one that leaves, so priors running side by side do not undo each other.
    The results do not depend on it.
    """
    global _cv_users, _cv_saved
    if not threaded:
        yield
        return
    with _cv_lock:
        if _cv_users == 0:
            _cv_saved = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _cv_users += 1
    try:
        yield
    finally:
        with _cv_lock:
            _cv_users -= 1
            if _cv_users == 0:
                cv2.setNumThreads(_cv_saved)
