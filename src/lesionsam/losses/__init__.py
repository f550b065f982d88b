"""Training losses for lesion segmentation: the SGP-SAM Zoom Loss and a registry of the losses the ablations use.

Every loss is called as ``loss(logits, target)`` with raw logits and a same-shape mask ``(B, C, D, H, W)``.
The training steps call every loss as ``loss(output, batch)`` through :func:`batch_loss` (the trainer wraps it).

Example:
    >>> from lesionsam.losses import build_loss, known_losses
    >>> known_losses()
    ['dice', 'dice_ce', 'focal_balanced', 'hsam', 'zoom']
    >>> loss = build_loss("zoom", lambda_focal=1.0, gamma=2.0)
"""

from __future__ import annotations

from lesionsam.losses.balance import BALANCES, FocalBalance, estimate_prior_shift, lesion_box_mask, prior_shift
from lesionsam.losses.batch import BatchLoss, batch_loss
from lesionsam.losses.hierarchical import SoftmaxDiceCE, StagedLoss
from lesionsam.losses.registry import (
    SigmoidLoss,
    build_loss,
    known_losses,
    loss_options,
    loss_prior_shift,
    register_loss,
)
from lesionsam.losses.zoom import BalancedFocalLoss, ZoomLoss, check_binary_inputs, voxel_focal_terms

__all__ = [
    "BALANCES",
    "BalancedFocalLoss",
    "BatchLoss",
    "FocalBalance",
    "SigmoidLoss",
    "SoftmaxDiceCE",
    "StagedLoss",
    "ZoomLoss",
    "batch_loss",
    "build_loss",
    "check_binary_inputs",
    "estimate_prior_shift",
    "known_losses",
    "lesion_box_mask",
    "loss_options",
    "loss_prior_shift",
    "prior_shift",
    "register_loss",
    "voxel_focal_terms",
]
