"""The processes of a training run: rank, world size and the few collectives the trainer needs.

Under ``accelerate launch`` (``WORLD_SIZE > 1``) every process takes its own pairs and the LoRA
gradients are averaged across processes (the model is not wrapped in DDP: only the small LoRA
gradients are reduced). A single process needs no process group at all.
"""
from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["Dist"]


class Dist:
    """Rank, world size and collectives; a single process needs no process group at all."""

    def __init__(self, device: torch.device | None, want_cpu: bool):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=want_cpu)
            self.rank, self.world = self.state.process_index, self.state.num_processes
            self.device = self.state.device
        else:
            self.state = None
            self.rank = 0
            if device is None:
                device = torch.device("cpu" if want_cpu or not torch.cuda.is_available() else "cuda")
            self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        if self.state is not None:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
            t /= self.world
        return t

    def any(self, flag: bool) -> bool:
        if self.state is None:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        if self.state is None:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])
