"""Exceptions shared by the library, the command line and the ComfyUI nodes."""
from __future__ import annotations

__all__ = ["Cancelled", "RrdpoInputError"]


class Cancelled(RuntimeError):
    """The user cancelled a long job (a ``cancel()`` callback returned True)."""


class RrdpoInputError(ValueError):
    """Bad user input (frames, masks, files); the message says what is wrong and how to fix it."""
