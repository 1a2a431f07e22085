"""Per-frame work of the flow prior spread over threads.

The prior's inner loops are OpenCV calls (DIS flow, remap, RANSAC) and NumPy operations on
arrays of tens of thousands of pixels, which release the GIL; its frames (flow pairs, the two
tracking sweeps, the fusion of each frame) are independent of each other. Threads therefore
use a second core without copying the clip into other processes.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import cv2

__all__ = ["default_workers", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


# More threads than this mostly wait for the GIL between NumPy calls, and each running frame holds
# its candidate arrays (about 50 MB for a large hole in a 1080p frame).
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """OpenCV's thread count (``cv2.setNumThreads`` sets it; all cores by default), at most the cores and 8."""
    return max(1, min(cv2.getNumThreads(), os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


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
