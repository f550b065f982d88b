"""A process's place in a ``torchrun`` job and the per-epoch seeding that makes resume exact."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DistContext:
    """This process's place in a ``torchrun`` job (world size 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def seed_everything(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed torch, NumPy and Python for one epoch of one process; returns the seed used."""
    value = (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**31 - 1)
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
    return value
