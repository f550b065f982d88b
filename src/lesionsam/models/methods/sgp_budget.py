"""SGP-SAM's gate budget: its training options (``train.options.gate_cost``, ``train.options.gate_target``) and the
budget term.

The presets and the demo train with no budget (``gate_cost: 0``), chosen on the validation split by
``lesionsam sweep --stage gate`` (README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from lesionsam.models.interface import SegOutput, TrainOptions


@dataclass(frozen=True)
class SGPTrainOptions(TrainOptions):
    """SGP-SAM's own training options (the run config's ``train.options``).

    Attributes:
        gate_cost: weight of the gate budget term added to the loss (:func:`gate_budget`; 0 = none): without
            ``gate_target`` the mean gate-open probability (a linear compute cost), with it
            ``(mean - gate_target) ** 2``.
        gate_target: a target activation rate of the gates in [0, 1] (None: the linear cost); needs
            ``gate_cost > 0``.
    """

    gate_cost: float = 0.0
    gate_target: float | None = None

    def __post_init__(self) -> None:
        if not self.gate_cost >= 0:  # NaN too
            raise ValueError(f"train.options.gate_cost must be >= 0, got {self.gate_cost}")
        if not math.isfinite(self.gate_cost):
            raise ValueError(f"train.options.gate_cost must be finite, got {self.gate_cost}")
        if self.gate_target is not None:
            if not 0.0 <= self.gate_target <= 1.0:  # NaN too
                raise ValueError(
                    f"train.options.gate_target is a share of open gates and must be in [0, 1], got {self.gate_target}"
                )
            if not self.gate_cost > 0:
                raise ValueError(
                    "train.options.gate_target needs train.options.gate_cost > 0 (the weight of the budget term)"
                )

    def extra_loss(self, out: SegOutput) -> Tensor | None:
        """``gate_cost`` × :func:`gate_budget` of the output's gate-open probabilities (None when ``gate_cost`` is
        0)."""
        if not self.gate_cost:
            return None
        return self.gate_cost * gate_budget(out.extras["gate_probs"], self.gate_target)


def gate_budget(gate_probs: Tensor, target: float | None = None) -> Tensor:
    """The budget term on the gates (unweighted; ``train.options.gate_cost`` is its weight), a scalar.

    With ``m`` the mean keep probability over the samples and modules (``gate_probs``, (B, n_modules), the
    differentiable ``softmax(gate logits)[:, 1]`` of every gating unit):

    - ``target=None``: ``m``, a linear compute cost (in [0, 1]): every open gate costs, so a gate opens only where
      the fusion lowers the segmentation loss by more than the weight;
    - ``target=t`` in [0, 1]: ``(m - t) ** 2``, a target activation rate: the gates are pushed towards opening on a
      share ``t`` of the crops, and the segmentation loss decides which.

    0 when there is no gate (no module). This is the one place the budget is computed: training adds
    ``train.options.gate_cost * gate_budget(...)`` to the loss (:meth:`SGPTrainOptions.extra_loss`).
    """
    if not gate_probs.numel():
        return gate_probs.new_zeros(())
    mean = gate_probs.float().mean()
    if target is None:
        return mean
    if not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"gate_budget: target must be an activation rate in [0, 1], got {target!r}")
    return (mean - float(target)) ** 2
