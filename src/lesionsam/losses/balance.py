"""Readings of the Zoom Loss's "voxel-balanced" focal term, and the prior shift each one builds into the logits.

The focal term of SGP-SAM weighs foreground against background so that a small lesion is not drowned out. How much
it does so decides the calibration of the trained logits: a weighting in which a foreground voxel weighs ``w_fg`` and
a background voxel ``w_bg`` is minimised, for a voxel whose true lesion probability is ``q`` (with ``gamma = 0``, i.e.
weighted cross-entropy), by the logit ``log(q / (1 - q)) + log(w_fg / w_bg)``. The second part is the reading's
**prior shift**: at threshold 0.5 every voxel whose lesion odds exceed ``w_bg / w_fg`` becomes lesion. The readings
(``balance``; per sample and channel, ``FL`` the focal term of a voxel, see ``voxel_focal_terms``), each with its
prior shift:

- ``"full"`` (round 1, the default): ``0.5 * mean_fg(FL) + 0.5 * mean_bg(FL)``; shift ``log(n_bg / n_fg)``.
- ``"partial"``: ``sum(w * FL) / sum(w)`` with ``w_fg = (n_bg / n_fg) ** beta``, ``w_bg = 1``; shift
  ``beta * log(n_bg / n_fg)``.
- ``"alpha"`` (Lin et al., ICCV 2017): ``mean(alpha * t * FL_pos + (1 - alpha) * (1 - t) * FL_neg)``; shift
  ``log(alpha / (1 - alpha))`` (negative for ``alpha < 0.5``).
- ``"none"``: ``mean(FL)`` over all voxels; no shift.
- ``"zoomed"``: ``0.5 * mean_fg(FL) + 0.5 * mean_{bg in B}(FL) + sum_{outside B}(FL) / N``; shift
  ``log(n_{bg in B} / n_fg)`` inside ``B``, none outside.

``"partial"`` with ``beta = 1`` is ``"full"`` exactly, with ``beta = 0`` it is ``"none"``. In ``"zoomed"``, ``B`` is
the union of one box per lesion of the crop: each 26-connected component of the voxels with target ``> 0`` gets its
bounding box dilated by ``margin`` voxels and clipped to the crop; ``N`` counts every voxel of the sample. So the
balance acts where a lesion is and the rest of the crop is plain (calibrated) focal; for a binary mask every
foreground voxel lies in ``B``.

Conventions (as :class:`~lesionsam.losses.zoom.BalancedFocalLoss` has always had): counts of soft targets are sums of
``t`` and ``1 - t``. A sample with no foreground voxel gets the plain voxel mean in every count-based reading; one
with no background voxel (in ``B`` for ``"zoomed"``) puts the balanced part's whole weight on the foreground mean.
Channels are averaged, giving one value per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from lesionsam.utils.components import label_lesions
from lesionsam.utils.options import look_up_option

__all__ = ["BALANCES", "FocalBalance", "balanced_focal", "estimate_prior_shift", "lesion_box_mask", "prior_shift"]

#: The readings of the focal term's balance (see the module docstring).
BALANCES = ("full", "partial", "alpha", "none", "zoomed")


@dataclass(frozen=True)
class FocalBalance:
    """How the focal term weighs foreground against background (see the module docstring).

    Attributes:
        balance: one of :data:`BALANCES`; ``"full"`` by default.
        beta: ``"partial"`` only: exponent of the foreground weight ``(n_bg / n_fg) ** beta``, in ``[0, 1]``.
        alpha: ``"alpha"`` only: weight of the foreground term, in ``(0, 1)`` (Lin et al.: 0.25).
        margin: ``"zoomed"`` only: voxels added on every side of each lesion's bounding box, an integer ``>= 0``.
        owner: the loss's name, starting the error messages.

    Raises:
        ValueError: an unknown ``balance`` (with a "did you mean"), or ``beta``, ``alpha`` or ``margin`` out of
            range; TypeError: one of them is not a number (``margin``: not an integer).
    """

    balance: str = "full"
    beta: float = 0.5
    alpha: float = 0.25
    margin: int = 4
    owner: str = "loss"

    def __post_init__(self) -> None:
        look_up_option(self.balance, BALANCES, what=f"{self.owner} balance")
        for name in ("beta", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{self.owner}: {name} must be a number, got {type(value).__name__} {value!r}.")
            object.__setattr__(self, name, float(value))
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(
                f"{self.owner}: beta must be in [0, 1] (0 = plain voxel mean, 1 = full balance), got {self.beta!r}."
            )
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"{self.owner}: alpha must be in (0, 1) (Lin et al.: 0.25), got {self.alpha!r}.")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"{self.owner}: margin must be an integer number of voxels >= 0, got {self.margin!r}.")

    def describe(self) -> str:
        """The options that matter for this reading, for ``extra_repr``."""
        extra = {"partial": f", beta={self.beta}", "alpha": f", alpha={self.alpha}"}
        extra["zoomed"] = f", margin={self.margin}"
        return f"balance={self.balance!r}{extra.get(self.balance, '')}"


def lesion_box_mask(target: Tensor, margin: int) -> Tensor:
    """The zoomed reading's region ``B``: per sample and channel, the union of the lesions' dilated bounding boxes.

    Args:
        target: ``(B, C, D, H, W)`` mask in ``[0, 1]``; its lesions are the 26-connected components of ``target > 0``
            (``scipy.ndimage.label`` + ``find_objects`` on a detached CPU copy: the region carries no gradient).
        margin: voxels added on every side of each bounding box (clipped to the crop).

    Returns:
        ``(B, C, D, H, W)`` bool tensor on ``target``'s device; all False where a sample has no foreground.
    """
    fg = (target.detach() > 0).cpu().numpy()
    out = np.zeros(fg.shape, dtype=bool)
    for b in range(fg.shape[0]):
        for c in range(fg.shape[1]):
            mask = fg[b, c]
            where = np.nonzero(mask)
            if not where[0].size:
                continue
            # Label only inside the bounding box of all the foreground (lesions are small: much faster at 128³).
            lo = [int(i.min()) for i in where]
            hi = [int(i.max()) + 1 for i in where]
            components, _ = label_lesions(mask[tuple(map(slice, lo, hi))])
            for box in ndimage.find_objects(components):
                grown = tuple(
                    slice(max(0, s.start + o - margin), min(n, s.stop + o + margin))
                    for s, o, n in zip(box, lo, mask.shape, strict=True)
                )
                out[b, c][grown] = True
    return torch.from_numpy(out).to(target.device)


def _safe(n: Tensor, ok: Tensor) -> Tensor:
    return torch.where(ok, n, torch.ones_like(n))


def balanced_focal(fl_pos: Tensor, fl_neg: Tensor, target: Tensor, spec: FocalBalance) -> Tensor:
    """The focal term of each sample under the reading ``spec``, shape ``(B,)``.

    Args:
        fl_pos, fl_neg: ``(B, C, D, H, W)`` per-voxel focal terms of the two labels
            (:func:`~lesionsam.losses.zoom.voxel_focal_terms`).
        target: the mask, same shape, in the dtype of the terms.
        spec: the reading.

    Returns:
        ``(B,)``: the reading's value per sample (channels averaged); differentiable in the focal terms.
    """
    fg, bg = target, 1 - target
    spatial = tuple(range(2, target.ndim))
    voxel = fg * fl_pos + bg * fl_neg
    plain = voxel.mean(dim=spatial)  # (B, C)
    if spec.balance == "none":
        return plain.mean(dim=1)
    if spec.balance == "alpha":
        return (spec.alpha * fg * fl_pos + (1 - spec.alpha) * bg * fl_neg).mean(dim=spatial).mean(dim=1)
    n_fg, n_bg = fg.sum(dim=spatial), bg.sum(dim=spatial)
    has_fg, has_bg = n_fg > 0, n_bg > 0
    sum_fg, sum_bg = (fg * fl_pos).sum(dim=spatial), (bg * fl_neg).sum(dim=spatial)
    if spec.balance == "full":
        mean_fg, mean_bg = sum_fg / _safe(n_fg, has_fg), sum_bg / _safe(n_bg, has_bg)
        # 0.5 / 0.5; or 1 / 0 (0 / 1) when a sample has no background (foreground) voxel.
        w_fg = (torch.where(has_bg, 0.5, 1.0) * has_fg).to(mean_fg.dtype)
        w_bg = (torch.where(has_fg, 0.5, 1.0) * has_bg).to(mean_bg.dtype)
        return (w_fg * mean_fg + w_bg * mean_bg).mean(dim=1)
    if spec.balance == "partial":
        both = has_fg & has_bg
        weight = torch.where(both, n_bg / _safe(n_fg, has_fg), torch.ones_like(n_fg)) ** spec.beta
        per = (weight * sum_fg + sum_bg) / (weight * n_fg + n_bg)  # n_fg + n_bg > 0: the crop is not empty
        return per.mean(dim=1)
    # zoomed
    box = lesion_box_mask(target, spec.margin).to(target.dtype)
    bg_in = bg * box
    n_bg_in = bg_in.sum(dim=spatial)
    has_bg_in = n_bg_in > 0
    mean_fg = sum_fg / _safe(n_fg, has_fg)
    mean_bg_in = (bg_in * fl_neg).sum(dim=spatial) / _safe(n_bg_in, has_bg_in)
    outside = ((1 - box) * voxel).sum(dim=spatial) / voxel[0, 0].numel()
    w_fg = torch.where(has_bg_in, 0.5, 1.0).to(mean_fg.dtype)
    w_bg = 0.5 * has_bg_in.to(mean_fg.dtype)
    zoomed = w_fg * mean_fg + w_bg * mean_bg_in + outside
    return torch.where(has_fg, zoomed, plain).mean(dim=1)


def prior_shift(target: Tensor, spec: FocalBalance) -> Tensor:
    """The logit shift the reading ``spec`` builds in, per sample: ``log(w_fg / w_bg)`` (module docstring).

    Exact for the focal term alone with ``gamma = 0`` (weighted cross-entropy); with ``gamma > 0`` and with the Dice
    term of the Zoom Loss beside it, the trained logits are shifted by less, which is why logit adjustment scales it
    by a tunable ``tau`` (``train.logit_adjustment``).

    Args:
        target: ``(B, C, D, H, W)`` mask in ``[0, 1]``.
        spec: the reading.

    Returns:
        ``(B,)`` float64 shifts (channels averaged); NaN for a count-based reading where a sample lacks foreground
        or background (in ``B`` for ``"zoomed"``): no balance, no shift to estimate there.
    """
    t = target.detach().double()
    batch = t.shape[0]
    if spec.balance == "none":
        return t.new_zeros(batch)
    if spec.balance == "alpha":
        return t.new_full((batch,), math.log(spec.alpha / (1 - spec.alpha)))
    spatial = tuple(range(2, t.ndim))
    n_fg = t.sum(dim=spatial)
    bg = 1 - t
    if spec.balance == "zoomed":
        bg = bg * lesion_box_mask(target, spec.margin).to(t.dtype)
    n_bg = bg.sum(dim=spatial)
    ok = (n_fg > 0) & (n_bg > 0)
    shift = torch.where(ok, torch.log(_safe(n_bg, ok) / _safe(n_fg, ok)), torch.full_like(n_fg, math.nan))
    if spec.balance == "partial":
        shift = spec.beta * shift
    return shift.mean(dim=1)


def estimate_prior_shift(shifts: Sequence[Tensor]) -> float:
    """Mean of per-crop prior shifts (:func:`prior_shift` values), leaving out the undefined (NaN) ones.

    Returns 0.0 when no crop has a defined shift.
    """
    values = torch.cat([s.detach().double().flatten().cpu() for s in shifts]) if shifts else torch.zeros(0)
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else 0.0
