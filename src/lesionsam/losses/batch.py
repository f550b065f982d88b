"""Every training loss called one way by the training steps: ``loss(output, batch)``.

The registry's losses (:func:`~lesionsam.losses.build_loss`) take ``(logits, target)``; H-SAM's staged loss also
takes the method's stage-1 logits and the training progress. :func:`batch_loss` wraps any of them (or any callable
``loss(logits, target)``) so that a step hands over the model's output and its batch, and the loss takes what it
needs: the output's float logits, the batch's ``label`` and, for the staged loss, ``extras["stage1_logits"]`` and
the batch's ``progress``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from lesionsam.losses.hierarchical import StagedLoss

__all__ = ["BatchLoss", "LossBatch", "LossOutput", "batch_loss"]


class LossOutput(Protocol):
    """What a loss reads of a model's output (:class:`~lesionsam.models.SegOutput`)."""

    logits: torch.Tensor
    extras: dict[str, Any]


class LossBatch(Protocol):
    """What a loss reads of a step's batch: the target (B, 1, D, H, W) and the share of training done, in [0, 1]."""

    label: torch.Tensor
    progress: float


class BatchLoss(nn.Module):
    """``loss(output, batch)`` = the wrapped ``loss(output.logits.float(), batch.label)``.

    Args:
        loss: a loss called as ``loss(logits, target)`` (a registry loss or any callable).
    """

    def __init__(self, loss: nn.Module | Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, output: LossOutput, batch: LossBatch) -> torch.Tensor:
        """output.logits (B, C, D, H, W), batch.label (B, 1, D, H, W) → the wrapped loss."""
        return self.loss(output.logits.float(), batch.label)


class StagedBatchLoss(BatchLoss):
    """H-SAM's staged loss: also the output's stage-1 logits (float) and the batch's training progress."""

    def forward(self, output: LossOutput, batch: LossBatch) -> torch.Tensor:
        stage1 = output.extras.get("stage1_logits")
        return self.loss(
            output.logits.float(),
            batch.label,
            stage1_logits=None if stage1 is None else stage1.float(),
            progress=batch.progress,
        )


def batch_loss(loss: nn.Module | Callable[..., torch.Tensor]) -> BatchLoss:
    """``loss`` as a :class:`BatchLoss` (returned as it is when it already is one)."""
    if isinstance(loss, BatchLoss):
        return loss
    if isinstance(loss, StagedLoss):
        return StagedBatchLoss(loss)
    return BatchLoss(loss)
