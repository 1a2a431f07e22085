"""Seeds and random streams: every random draw of the package comes from a seed, never from the global RNG.

* :func:`derive_seed` turns a run seed and a label (``(seed, "pair", 17)``) into an unrelated
  63-bit seed; the pair builder and the trainer seed one generator per pair, epoch or init with it,
  so a resumed job draws exactly what an uninterrupted one would.
* :class:`SamplerStreams` is the sampler's set of generators, one per use.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["derive_seed", "SamplerStreams"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (their ``str``), e.g. ``derive_seed(run_seed, "pair", index)``."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class SamplerStreams:
    """One generator per use, so each draw depends only on the seed and not on what ran before it.

    That keeps :meth:`DiffuEraserPipeline.prepare_latents` followed by ``__call__(init=...)`` with
    the same seed identical to one ``__call__``: both encode the same condition, which the DDIM
    inversion relies on. All draws are made on the CPU, so a seed means the same on every device.
    """

    prior: torch.Generator  # VAE posterior samples of the prior
    noise: torch.Generator  # the 22-frame base noise
    cond: torch.Generator  # VAE posterior samples of the masked frames
    step: torch.Generator  # scheduler noise (eta > 0 only)
    seed: int | None

    @classmethod
    def make(cls, seed: int | None, generator: torch.Generator | None) -> "SamplerStreams":
        if generator is not None:  # derive the streams from the caller's generator, in a fixed order
            subseeds = torch.randint(0, 2**62, (4,), generator=generator, device=generator.device).tolist()
        else:
            if seed is None:
                seed = int.from_bytes(os.urandom(8), "little") >> 1
            # Any integer seed (ComfyUI's go up to 2**64 - 1) -> four unrelated 63-bit seeds.
            subseeds = [int.from_bytes(hashlib.blake2b(f"{int(seed)}:{k}".encode(), digest_size=8).digest(), "little")
                        >> 1 for k in range(4)]
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in subseeds]
        return cls(*gens, seed=None if generator is not None else int(seed))

