"""The prompt embedding DiffuEraser is conditioned on, without ComfyUI: files and CLIP encoding.

DiffuEraser runs on the empty prompt's CLIP embedding ``(1, 77, 768)``. ComfyUI encodes it with its
own CLIP; the command line and the trainer read it from a ``.safetensors`` file or encode it once
with a local SD1.5 text encoder.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import RrdpoInputError
from .fsutil import atomic_save_safetensors

__all__ = ["EMPTY_PROMPT_EMBEDS_FILE", "load_text_embeds", "save_text_embeds", "encode_prompt", "resolve_text_embeds"]

EMPTY_PROMPT_EMBEDS_FILE = "empty_prompt_embeds.safetensors"
_TEXT_KEY = "text_embeds"


def load_text_embeds(path: str | os.PathLike) -> torch.Tensor:
    """A precomputed prompt embedding from a ``.safetensors`` file (key ``text_embeds``, or its only tensor)."""
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"text embedding file not found: {p}")
    tensors = load_file(str(p))
    if _TEXT_KEY in tensors:
        emb = tensors[_TEXT_KEY]
    elif len(tensors) == 1:
        emb = next(iter(tensors.values()))
    else:
        raise RrdpoInputError(f"{p}: holds {sorted(tensors)}; expected one tensor or a '{_TEXT_KEY}' key")
    emb = emb[None] if emb.ndim == 2 else emb
    if emb.ndim != 3 or emb.shape[0] != 1:
        raise RrdpoInputError(f"{p}: expected a (1, 77, D) embedding, got {tuple(emb.shape)}")
    return emb.float()


def save_text_embeds(path: str | os.PathLike, text_embeds: torch.Tensor) -> Path:
    """Write a prompt embedding for :func:`load_text_embeds` (atomically)."""
    return atomic_save_safetensors(Path(path).expanduser(), {_TEXT_KEY: text_embeds.detach().float()})


def encode_prompt(text_encoder: str | os.PathLike, prompt: str = "", device: torch.device | str = "cpu") -> torch.Tensor:
    """Encode ``prompt`` with a local SD1.5 CLIP text encoder (last hidden state, as DiffuEraser).

    ``text_encoder`` is the SD1.5 folder (with ``tokenizer/`` and ``text_encoder/``) or a folder
    holding both the tokenizer and the text encoder files. Nothing is downloaded.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(text_encoder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"text encoder folder not found: {root}; pass the SD1.5 folder that holds "
                                "tokenizer/ and text_encoder/")
    tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
    enc_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(str(enc_dir), local_files_only=True).to(device).eval()
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"could not load a CLIP tokenizer and text encoder from {root}: {exc}") from exc
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        return encoder(ids).last_hidden_state.float().cpu()


def resolve_text_embeds(text_embeds: torch.Tensor | str | os.PathLike | None = None,
                        text_encoder: str | os.PathLike | None = None,
                        model_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """The empty-prompt embedding for a run without ComfyUI, from (first that applies):

    1. ``text_embeds``: a tensor, or a ``.safetensors`` file (:func:`load_text_embeds`);
    2. ``text_encoder``: an SD1.5 folder with ``tokenizer/`` and ``text_encoder/`` (encoded once);
    3. ``<model_dir>/empty_prompt_embeds.safetensors`` if it exists.
    """
    if isinstance(text_embeds, torch.Tensor):
        return text_embeds
    if text_embeds is not None:
        return load_text_embeds(text_embeds)
    if text_encoder is not None:
        return encode_prompt(text_encoder, "")
    if model_dir is not None and (Path(model_dir) / EMPTY_PROMPT_EMBEDS_FILE).is_file():
        return load_text_embeds(Path(model_dir) / EMPTY_PROMPT_EMBEDS_FILE)
    raise FileNotFoundError(
        "DiffuEraser needs the empty prompt's CLIP embedding. Pass text_encoder=<SD1.5 folder with tokenizer/ and "
        f"text_encoder/>, or text_embeds=<file .safetensors> (make one once with save_text_embeds(path, "
        f"encode_prompt(<SD1.5 folder>))), or put it at <model_dir>/{EMPTY_PROMPT_EMBEDS_FILE}")

