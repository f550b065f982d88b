"""Shared base of the tests' stand-in models (deterministic models with known behaviour, no training)."""

from __future__ import annotations

import torch

from lesionsam.models import SegModel


class StandInModel(SegModel):
    """A :class:`SegModel` on cubic crops of side ``size`` with S/4 low-res logits and one dummy parameter (so that
    ``.to(device)``, ``.eval()`` and parameter counts work); subclasses give ``forward`` and their prompt kinds."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        self._size = size
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @property
    def img_size(self) -> int:
        return self._size

    @property
    def low_res_size(self) -> int:
        return self._size // 4
