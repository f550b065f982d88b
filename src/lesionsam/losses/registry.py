"""One registry of training losses: ``build_loss(name, **options)``, every loss called as ``loss(logits, target)``.

Every binary loss built here takes raw logits and a mask of the same shape ``(B, C, D, H, W)`` (``C == 1``),
applies a sigmoid itself, checks its inputs (same shape, mask values in ``[0, 1]``) and returns a scalar (or, with
``reduction="none"`` where allowed, one value per sample, shape ``(B,)``). Dice terms are per sample (MONAI's
``batch=False``) in every loss, so the ablations differ only by the term added to the Dice. The multi-class loss of
prompt-free methods (``"hsam"``, :mod:`lesionsam.losses.hierarchical`) takes ``(B, K+1, D, H, W)`` logits and
``(B, 1, D, H, W)`` class indices, plus the stage-1 logits and the training progress.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from lesionsam.losses.hierarchical import SoftmaxDiceCE, StagedLoss
from lesionsam.losses.zoom import BalancedFocalLoss, ZoomLoss, check_binary_inputs, check_number
from lesionsam.utils.options import look_up_option

__all__ = ["SigmoidLoss", "build_loss", "known_losses", "loss_options", "loss_prior_shift", "register_loss"]

LossFactory = Callable[..., nn.Module]


class SigmoidLoss(nn.Module):
    """Wraps a MONAI sigmoid loss so that it checks ``(logits, target)`` like the lesionsam losses do.

    The target is checked by :func:`~lesionsam.losses.zoom.check_binary_inputs` and converted to the logits' dtype
    (MONAI wants a float target of the input's shape); with ``reduction="none"`` the MONAI ``(B, C, 1, 1, 1)`` output
    is averaged over channels to ``(B,)``.

    Args:
        loss: a MONAI loss built with ``sigmoid=True``.
        name: the registry name, used in error messages.
        reduction: the reduction ``loss`` was built with.
    """

    def __init__(self, loss: nn.Module, *, name: str, reduction: str) -> None:
        super().__init__()
        self.loss = loss
        self.name = name
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"name={self.name!r}, reduction={self.reduction!r}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` float ``(B, C, D, H, W)``, ``target`` the same shape in ``[0, 1]``; see the module docstring."""
        target = check_binary_inputs(logits, target, owner=f"loss {self.name!r}")
        out: torch.Tensor = self.loss(logits, target)
        if self.reduction == "none":
            out = out.flatten(1).mean(dim=1)
        return out


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its factory (keyword-only arguments = the allowed options) and a one-line description."""

    name: str
    factory: LossFactory
    description: str

    def options(self) -> dict[str, object]:
        """The allowed option names and their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.factory).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }


_LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, *, description: str = "") -> Callable[[LossFactory], LossFactory]:
    """Decorator registering ``factory(**options) -> nn.Module`` under ``name``.

    The factory's keyword arguments are the options ``build_loss`` accepts; the module it returns must be called
    as ``loss(logits, target)``.

    Example:
        >>> @register_loss("my_loss", description="Dice with a twist")
        ... def _build(*, reduction: str = "mean") -> nn.Module:
        ...     ...
    """

    def deco(factory: LossFactory) -> LossFactory:
        if name in _LOSSES and _LOSSES[name].factory is not factory:
            raise ValueError(f"loss {name!r} is registered twice")
        _LOSSES[name] = LossSpec(name, factory, description)
        return factory

    return deco


def _flag(value: object, what: str, owner: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {what} must be True or False, got {value!r}.")
    return value


@register_loss("dice", description="per-sample soft Dice (monai.losses.DiceLoss, sigmoid)")
def _build_dice(
    *,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    squared_pred: bool = False,
    jaccard: bool = False,
    reduction: str = "mean",
) -> nn.Module:
    owner = "loss 'dice'"
    reduction = look_up_option(reduction, ("mean", "sum", "none"), what="reduction")
    loss = DiceLoss(
        sigmoid=True,
        batch=False,
        smooth_nr=check_number(smooth_nr, "smooth_nr", owner),
        smooth_dr=check_number(smooth_dr, "smooth_dr", owner, positive=True),
        squared_pred=_flag(squared_pred, "squared_pred", owner),
        jaccard=_flag(jaccard, "jaccard", owner),
        reduction=reduction,
    )
    return SigmoidLoss(loss, name="dice", reduction=reduction)


@register_loss("dice_ce", description="per-sample soft Dice + voxel-mean BCE (monai.losses.DiceCELoss, sigmoid)")
def _build_dice_ce(
    *,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    squared_pred: bool = False,
    reduction: str = "mean",
) -> nn.Module:
    # MONAI 1.6's DiceCELoss takes BCEWithLogitsLoss (not CrossEntropyLoss) when the input has one channel, and
    # wants a float target of the input's shape: SigmoidLoss checks and converts it.
    owner = "loss 'dice_ce'"
    reduction = look_up_option(reduction, ("mean", "sum"), what="reduction")  # MONAI's DiceCE has no "none"
    loss = DiceCELoss(
        sigmoid=True,
        batch=False,
        lambda_dice=check_number(lambda_dice, "lambda_dice", owner),
        lambda_ce=check_number(lambda_ce, "lambda_ce", owner),
        smooth_nr=check_number(smooth_nr, "smooth_nr", owner),
        smooth_dr=check_number(smooth_dr, "smooth_dr", owner, positive=True),
        squared_pred=_flag(squared_pred, "squared_pred", owner),
        reduction=reduction,
    )
    return SigmoidLoss(loss, name="dice_ce", reduction=reduction)


@register_loss("zoom", description="SGP-SAM Zoom Loss: per-sample soft Dice + lambda x voxel-balanced focal")
def _build_zoom(
    *,
    lambda_focal: float = 1.0,
    gamma: float = 2.0,
    balance: str = "full",
    beta: float = 0.5,
    alpha: float = 0.25,
    margin: int = 4,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    reduction: str = "mean",
) -> nn.Module:
    return ZoomLoss(
        lambda_focal=lambda_focal,
        gamma=gamma,
        balance=balance,
        beta=beta,
        alpha=alpha,
        margin=margin,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        reduction=reduction,
    )


@register_loss("focal_balanced", description="voxel-balanced focal alone (the Zoom Loss's second term)")
def _build_focal_balanced(
    *,
    gamma: float = 2.0,
    balance: str = "full",
    beta: float = 0.5,
    alpha: float = 0.25,
    margin: int = 4,
    reduction: str = "mean",
) -> nn.Module:
    return BalancedFocalLoss(gamma=gamma, balance=balance, beta=beta, alpha=alpha, margin=margin, reduction=reduction)


@register_loss(
    "hsam",
    description="H-SAM: (1-w)*L(stage 1) + w*L(stage 2), L = (1-d)*CE + d*Dice over K+1 softmax channels, w rising",
)
def _build_hsam(
    *, dice_weight: float = 0.8, w_start: float = 0.2, w_end: float = 0.8, include_background: bool = False
) -> nn.Module:
    stage = SoftmaxDiceCE(
        dice_weight=dice_weight, include_background=_flag(include_background, "include_background", "loss 'hsam'")
    )
    return StagedLoss(stage, w_start=w_start, w_end=w_end)


def loss_prior_shift(loss: nn.Module, target: torch.Tensor) -> torch.Tensor:
    """The logit shift a training loss builds into the logits of each crop, ``(B,)`` float64 (NaN: undefined).

    The focal losses (``"zoom"``, ``"focal_balanced"``) give their reading's shift (``ZoomLoss.prior_shift``,
    :mod:`lesionsam.losses.balance`); every other loss here weighs the two classes alike (Dice, voxel-mean BCE) and
    gives 0. Logit adjustment (``train.logit_adjustment``) subtracts ``tau`` times its mean over the training crops.
    """
    if isinstance(loss, (ZoomLoss, BalancedFocalLoss)):
        return loss.prior_shift(target)
    return torch.zeros(target.shape[0], dtype=torch.float64)


def known_losses() -> list[str]:
    """The registered loss names, sorted."""
    return sorted(_LOSSES)


def loss_options(name: str) -> dict[str, object]:
    """The options loss ``name`` accepts and their defaults.

    Raises:
        ValueError: when ``name`` is not a registered loss (with a "did you mean").
    """
    return _LOSSES[look_up_option(name, known_losses(), what="loss")].options()


def build_loss(name: str, **options: object) -> nn.Module:
    """Build the training loss ``name`` with ``options``; call it as ``loss(logits, target)``.

    Args:
        name: one of :func:`known_losses`: ``"dice"``, ``"dice_ce"``, ``"zoom"``, ``"focal_balanced"``.
        options: keyword options of that loss (see :func:`loss_options`), e.g. ``lambda_focal=0.5, gamma=2``.

    Returns:
        An ``nn.Module`` taking logits ``(B, C, D, H, W)`` and a same-shape mask in ``[0, 1]``.

    Raises:
        ValueError: when ``name`` is unknown (with a "did you mean" and the known names), an option name is unknown
            for that loss (naming the loss and its allowed options), or an option value is out of range.
        TypeError: when an option value has the wrong type.

    Example:
        >>> loss = build_loss("zoom", lambda_focal=1.0, gamma=2.0)
        >>> value = loss(torch.zeros(1, 1, 4, 4, 4), torch.ones(1, 1, 4, 4, 4))
    """
    spec = _LOSSES[look_up_option(name, known_losses(), what="loss")]
    allowed = list(spec.options())
    for key in options:
        look_up_option(key, allowed, what=f"option of loss {spec.name!r}:")
    return spec.factory(**options)
