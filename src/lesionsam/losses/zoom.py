"""The Zoom Loss of SGP-SAM: soft Dice plus a voxel-balanced focal term.

Both losses take raw logits and a binary (or soft) mask of the same shape ``(B, C, D, H, W)``; each channel is an
independent sigmoid (one-vs-rest) problem, and lesionsam's masks have ``C == 1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from lesionsam.losses.balance import FocalBalance, balanced_focal, prior_shift
from lesionsam.utils.options import look_up_option

__all__ = ["BalancedFocalLoss", "ZoomLoss", "check_binary_inputs", "voxel_focal_terms"]

REDUCTIONS = ("mean", "sum", "none")


def check_number(value: object, what: str, owner: str, *, positive: bool = False) -> float:
    """``value`` as a finite float that is ``>= 0`` (``> 0`` when ``positive``); otherwise raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {what} must be a number, got {type(value).__name__} {value!r}.")
    out = float(value)
    if not math.isfinite(out) or out < 0 or (positive and out == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{owner}: {what} must be a finite number {bound}, got {value!r}.")
    return out


def check_binary_inputs(logits: torch.Tensor, target: torch.Tensor, *, owner: str = "loss") -> torch.Tensor:
    """Check a (logits, mask) pair for a sigmoid segmentation loss and return the mask in the logits' dtype.

    Args:
        logits: raw scores, floating point, shape ``(B, C, D, H, W)`` (lesionsam: ``C == 1``).
        target: mask of the same shape; bool, integer or floating point, every value in ``[0, 1]``.
        owner: the loss's name, used to start the error messages.

    Returns:
        ``target`` converted to ``logits.dtype`` (on its own device).

    Raises:
        TypeError: when an input is not a tensor, or ``logits`` is not floating point.
        ValueError: when ``logits`` is not 5-D, the shapes differ (both are named), the tensors are empty, or the
            target has a value outside ``[0, 1]`` (NaN included).
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(
            f"{owner}: logits and target must be torch.Tensor, got {type(logits).__name__} and {type(target).__name__}."
        )
    if not logits.is_floating_point():
        raise TypeError(f"{owner}: logits must be floating point (raw scores before the sigmoid), got {logits.dtype}.")
    if logits.ndim != 5:
        raise ValueError(
            f"{owner}: logits must have shape (B, C, D, H, W), got {tuple(logits.shape)}; "
            "add a channel axis with .unsqueeze(1) to a (B, D, H, W) tensor."
        )
    if target.shape != logits.shape:
        raise ValueError(
            f"{owner}: logits and target must have the same shape (B, C, D, H, W), "
            f"got logits {tuple(logits.shape)} and target {tuple(target.shape)}."
        )
    if logits.numel() == 0:
        raise ValueError(f"{owner}: logits and target are empty, shape {tuple(logits.shape)}.")
    if target.dtype != torch.bool:
        bad = ~((target >= 0) & (target <= 1))  # NaN compares False, so it is caught too
        if bool(bad.any()):
            lo, hi = target.min().item(), target.max().item()
            raise ValueError(
                f"{owner}: target must be a mask with values in [0, 1], got values in [{lo}, {hi}] "
                f"({int(bad.sum())} voxels outside, NaN included); binarise label maps first, e.g. (label == k)."
            )
    return target.to(dtype=logits.dtype)


def voxel_focal_terms(logits: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-voxel sigmoid focal terms for the two classes, stable for any logit and any ``gamma >= 0``.

    With ``p = sigmoid(x)``: ``fl_pos = -(1 - p)^gamma * log(p)`` (the focal loss of a voxel labelled 1) and
    ``fl_neg = -p^gamma * log(1 - p)`` (labelled 0). Both are computed from ``log p = logsigmoid(x)`` and
    ``log(1 - p) = logsigmoid(-x)``; the modulating factor is ``exp(gamma * log(1 - p_t))``, so neither the value nor
    the gradient overflows where the sigmoid saturates (``|x| ~ 100``), also for ``0 < gamma < 1``. For a binary
    target ``t`` the focal term of a voxel is ``t * fl_pos + (1 - t) * fl_neg`` (what
    ``monai.losses.FocalLoss(use_softmax=False, reduction="none")`` gives); for a soft target it is the expected
    focal term under the label.

    Args:
        logits: any shape, floating point.
        gamma: focusing parameter, ``>= 0``; ``0`` gives binary cross-entropy.

    Returns:
        ``(fl_pos, fl_neg)``, each the shape and dtype of ``logits``.
    """
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    if gamma == 0:
        return -log_p, -log_not_p
    return -torch.exp(gamma * log_not_p) * log_p, -torch.exp(gamma * log_p) * log_not_p


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


class BalancedFocalLoss(nn.Module):
    """Voxel-balanced sigmoid focal loss: by default foreground and background each carry half the weight.

    Per sample and channel, with ``FL`` the focal term of each voxel (Lin et al., "Focal Loss for Dense Object
    Detection", ICCV 2017: ``FL = -(1 - p_t)^gamma * log(p_t)``)::

        focal = 0.5 * mean(FL over foreground voxels) + 0.5 * mean(FL over background voxels)

    whatever the two counts are, so a 30-voxel lesion in a 128³ crop weighs as much as the 2 million background voxels
    around it (a plain voxel mean would give it a weight of 1.4e-5). Channels are averaged, giving one value per
    sample, which is then reduced over the batch.

    Conventions:
        - A sample (channel) with no foreground voxel: the background carries the whole weight (its focal term is the
          mean over all voxels); a sample with no background voxel: the foreground carries it.
        - Soft targets: voxel ``v`` counts ``t_v`` towards the foreground mean and ``1 - t_v`` towards the background
          mean (weighted means); for a binary mask these are exactly the two plain means.
        - The per-voxel term is :func:`voxel_focal_terms` (stable for logits of any size).

    That full balance shifts the optimal logit by ``log(n_bg / n_fg)`` (about 7 for a lesion filling 0.1% of the
    crop) and so over-segments at threshold 0.5; ``balance`` chooses another reading (table and prior shifts:
    :mod:`lesionsam.losses.balance`): ``"partial"`` (foreground weight ``(n_bg / n_fg) ** beta``), ``"alpha"``
    (Lin et al.'s alpha-balanced focal), ``"none"`` (plain voxel mean) or ``"zoomed"`` (the balance inside a box of
    ``margin`` voxels around each lesion, plain focal elsewhere).

    Args:
        gamma: focusing parameter, ``>= 0``; ``0`` gives a class-balanced binary cross-entropy. Defaults to 2.
        balance: ``"full"`` (default), ``"partial"``, ``"alpha"``, ``"none"`` or ``"zoomed"``.
        beta: ``"partial"``: exponent in ``[0, 1]`` of the foreground weight (1 = full, 0 = none). Defaults to 0.5.
        alpha: ``"alpha"``: foreground weight in ``(0, 1)``, background ``1 - alpha``. Defaults to 0.25.
        margin: ``"zoomed"``: voxels (integer ``>= 0``) added around each lesion's bounding box. Defaults to 4.
        reduction: over the batch: ``"mean"`` (default), ``"sum"``, or ``"none"`` for a ``(B,)`` tensor.

    Raises:
        TypeError: when ``gamma``, ``beta`` or ``alpha`` is not a number.
        ValueError: when ``gamma`` is negative or not finite, ``balance`` or ``reduction`` is unknown, or ``beta``,
            ``alpha`` or ``margin`` is out of range.

    Example:
        >>> loss = BalancedFocalLoss(gamma=2.0)
        >>> logits = torch.zeros(2, 1, 8, 8, 8, requires_grad=True)
        >>> target = torch.zeros(2, 1, 8, 8, 8)
        >>> target[:, :, 4, 4, 4] = 1
        >>> loss(logits, target).backward()
    """

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        balance: str = "full",
        beta: float = 0.5,
        alpha: float = 0.25,
        margin: int = 4,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.gamma = check_number(gamma, "gamma", owner)
        self.reading = FocalBalance(balance, beta, alpha, margin, owner=owner)
        self.reduction = look_up_option(reduction, REDUCTIONS, what="reduction")

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, {self.reading.describe()}, reduction={self.reduction!r}"

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The balanced focal term of each sample, shape ``(B,)``, without argument checks (see :meth:`forward`)."""
        fl_pos, fl_neg = voxel_focal_terms(logits, self.gamma)
        return balanced_focal(fl_pos, fl_neg, target, self.reading)

    def prior_shift(self, target: torch.Tensor) -> torch.Tensor:
        """The logit shift this reading builds in, per sample, ``(B,)`` float64 (NaN where undefined): see
        :func:`lesionsam.losses.balance.prior_shift`. Exact for ``gamma = 0`` alone; smaller in practice."""
        return prior_shift(target, self.reading)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: raw scores, float, shape ``(B, C, D, H, W)``.
            target: mask of the same shape, bool or float with values in ``[0, 1]``.

        Returns:
            A scalar for ``reduction="mean"``/``"sum"``, else the ``(B,)`` per-sample values.

        Raises:
            ValueError: when the shapes differ (both are named) or the target leaves ``[0, 1]``.
        """
        target = check_binary_inputs(logits, target, owner=type(self).__name__)
        return _reduce(self.per_sample(logits, target), self.reduction)


class ZoomLoss(nn.Module):
    """Zoom Loss of SGP-SAM: per-sample soft Dice + ``lambda_focal`` x voxel-balanced focal loss.

    SGP-SAM (self-gated prompting + Zoom Loss for small-lesion segmentation with 3D SAM, 2026)::

        zoom = dice + lambda_focal * focal

    - ``dice`` is ``monai.losses.DiceLoss(sigmoid=True, batch=False)``: one soft Dice per sample (and channel,
      channels averaged), so a small lesion is not averaged away by a large one elsewhere in the batch. A sample with
      an empty mask has a Dice loss near 1 with almost no gradient (``smooth_nr / smooth_dr`` decide); the focal
      term, carried then wholly by the background, is what drives its false positives down.
    - ``focal`` is :class:`BalancedFocalLoss`: by default (``balance="full"``) foreground and background voxels each
      carry half of the focal weight whatever their counts (the whole weight goes to the class present when the other
      is absent); ``balance`` picks another reading (:mod:`lesionsam.losses.balance`) with its ``beta``, ``alpha`` or
      ``margin``. :meth:`prior_shift` gives the logit shift the reading builds in (for logit adjustment).

    The two terms are added per sample, then reduced over the batch.

    Args:
        lambda_focal: weight of the focal term, ``>= 0``; ``0`` gives the Dice loss alone. Defaults to 1.
        gamma: focal focusing parameter, ``>= 0``; ``0`` gives a class-balanced binary cross-entropy. Defaults to 2.
        balance, beta, alpha, margin: the focal term's reading, as in :class:`BalancedFocalLoss` (default ``"full"``).
        smooth_nr: added to the Dice numerator, ``>= 0``. Defaults to 1e-5.
        smooth_dr: added to the Dice denominator, ``> 0`` (avoids 0/0 on empty masks). Defaults to 1e-5.
        reduction: over the batch: ``"mean"`` (default), ``"sum"``, or ``"none"`` for a ``(B,)`` tensor.

    Raises:
        TypeError: when a numeric argument is not a number.
        ValueError: when ``lambda_focal``, ``gamma`` or ``smooth_nr`` is negative, ``smooth_dr`` is not positive,
            one is not finite, ``balance`` or ``reduction`` is unknown, or ``beta``, ``alpha``, ``margin`` is out of
            range.

    Example:
        >>> loss = ZoomLoss(lambda_focal=1.0, gamma=2.0)
        >>> logits = torch.randn(2, 1, 16, 16, 16, requires_grad=True)
        >>> target = torch.zeros(2, 1, 16, 16, 16)
        >>> target[:, :, 7:9, 7:9, 7:9] = 1
        >>> loss(logits, target).backward()
    """

    def __init__(
        self,
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
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.lambda_focal = check_number(lambda_focal, "lambda_focal", owner)
        self.gamma = check_number(gamma, "gamma", owner)
        FocalBalance(balance, beta, alpha, margin, owner=owner)  # errors name the Zoom Loss
        self.smooth_nr = check_number(smooth_nr, "smooth_nr", owner)
        self.smooth_dr = check_number(smooth_dr, "smooth_dr", owner, positive=True)
        self.reduction = look_up_option(reduction, REDUCTIONS, what="reduction")
        self.dice = DiceLoss(
            sigmoid=True, batch=False, smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr, reduction="none"
        )
        self.focal = BalancedFocalLoss(
            gamma=self.gamma, balance=balance, beta=beta, alpha=alpha, margin=margin, reduction="none"
        )

    def extra_repr(self) -> str:
        return (
            f"lambda_focal={self.lambda_focal}, gamma={self.gamma}, {self.focal.reading.describe()}, "
            f"reduction={self.reduction!r}"
        )

    def prior_shift(self, target: torch.Tensor) -> torch.Tensor:
        """The focal reading's logit shift per sample, ``(B,)`` float64 (NaN where undefined), independent of
        ``lambda_focal`` (:func:`lesionsam.losses.balance.prior_shift`). With the Dice term beside it the shift of the
        trained logits is smaller, which is why logit adjustment scales it by a tunable ``tau``."""
        return self.focal.prior_shift(target)

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two terms of each sample, for logging: ``(dice, focal)``, each of shape ``(B,)`` (focal unweighted).

        Checks its inputs like :meth:`forward`.
        """
        target = check_binary_inputs(logits, target, owner=type(self).__name__)
        dice = self.dice(logits, target).flatten(1).mean(dim=1)
        return dice, self.focal.per_sample(logits, target)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: raw scores, float, shape ``(B, C, D, H, W)`` (lesionsam: ``C == 1``).
            target: mask of the same shape, bool or float with values in ``[0, 1]``.

        Returns:
            A scalar for ``reduction="mean"``/``"sum"``, else the ``(B,)`` per-sample values.

        Raises:
            ValueError: when the shapes differ (both are named) or the target leaves ``[0, 1]``.
        """
        dice, focal = self.terms(logits, target)
        per_sample = dice if self.lambda_focal == 0 else dice + self.lambda_focal * focal
        return _reduce(per_sample, self.reduction)
