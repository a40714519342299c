"""The processes of a build from raw videos: under torchrun or `accelerate launch` (WORLD_SIZE > 1) each process
takes a contiguous share of the videos, on its own GPU; process 0 gathers what the others report."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from processing.video.clip_encoders import resolve_device


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environment(cls) -> Processes:
        """torchrun and accelerate launch set these; a plain run is process 0 of 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        processes = cls(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
        if world_size > 1 and not torch.distributed.is_initialized():
            # gloo whatever the device: only small Python objects travel; a long timeout, since process 0 waits
            # for the slowest share
            torch.distributed.init_process_group("gloo", timeout=timedelta(days=7))
        return processes

    def device(self, requested: str) -> torch.device:
        if requested == "auto" and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return resolve_device(requested)

    def share(self, items: list) -> list:
        """A contiguous share, so that process order is annotation order."""
        count = len(items)
        return items[self.rank * count // self.world_size : (self.rank + 1) * count // self.world_size]

    def broadcast(self, value):
        if self.world_size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list | None:
        """Every process's value on process 0 (None elsewhere)."""
        if self.world_size == 1:
            return [value]
        gathered = [None] * self.world_size if self.rank == 0 else None
        torch.distributed.gather_object(value, gathered, dst=0)
        return gathered

    def close(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
