"""The click rounds of interactive segmentation, written once for training, validation and the click-curve protocol.

A lesion is segmented in rounds (SAM-Med3D's interactive protocol): the **first click** falls inside the lesion; each
later round adds one click on the **error region** of the previous round's prediction (a false-negative voxel gives a
positive click, a false-positive voxel a negative one: :class:`~lesionsam.data.clicks.ClickSimulator`), and the
previous round's **low-res logits are fed back** as the mask prompt. :class:`ClickRounds` runs that loop around a
caller's ``decode(round) -> Decoded``; the variants:

* ``text_first``: round 0 has no click (a text-referred step gives its text alone); the first click comes in round 1.
* ``mask_only``: rounds (chosen by the caller, never round 0) that add no click and give the previous mask alone.
* a crop without a lesion (``has_lesion=False``, a text-referred step's negative crop): its first click is placed on
  the error region of the prediction before it (a negative click on what the text found, or padding).
* ``stop_when_exact``: stop when the prediction equals the ground truth (the next click would be padding: nothing is
  left to click on); the evaluation protocol's rule. Training and validation go on (a padding click, label -1, keeps a
  batch rectangular).

Random numbers are drawn only by the click functions, in round order: the first click when the first click round
comes, then one error click at the start of every later click round (none after the last round).
:meth:`ClickRounds.batch` gives torch batches (training, validation), :meth:`ClickRounds.lesion` one NumPy lesion
(the click-curve evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from lesionsam.data.clicks import ClickSimulator, Generator, first_click, next_click

__all__ = ["ClickRounds", "Decoded", "Round"]

#: First clicks: ``() -> (points, labels)``.
FirstClicks = Callable[[], tuple[Any, Any]]
#: Error clicks: ``(prediction, points or None, labels or None) -> (points, labels)`` with one click appended.
NextClicks = Callable[[Any, Any, Any], tuple[Any, Any]]


@dataclass(frozen=True)
class Round:
    """The prompts of one round.

    Attributes:
        index: the round's number, 0-based.
        points, labels: every click so far, in order ((B, N, 3) float and (B, N) int64 tensors for a batch, (N, 3)
            int64 (d, h, w) and (N,) int64 arrays for a NumPy lesion); None in a round without clicks (text alone,
            or mask only).
        mask: the previous round's low-res logits, fed back (None in round 0 and wherever decode gave none).
        clicked: this round added a click (the last of ``points``).
    """

    index: int
    points: Any
    labels: Any
    mask: Tensor | None
    clicked: bool


@dataclass(frozen=True)
class Decoded:
    """What decoding one round gives the loop: the prediction the next click is placed on (a bool mask like the
    ground truth, (B, 1, D, H, W) tensor or (D, H, W) array) and the low-res logits fed back next round."""

    pred: Any
    low_res: Tensor | None = None


class ClickRounds:
    """The interactive loop of one lesion (or one batch of crops); see the module docstring.

    Args:
        first: the first clicks, inside the lesion.
        next: the clicks so far plus one on the errors of a prediction.
        rounds: how many rounds (decodes), N ≥ 0.
        has_lesion: every crop has a lesion voxel; otherwise the first click round clicks on the errors of the
            round before (which must then be a round without a click: ``text_first``).
        text_first: round 0 adds no click.
        mask_only: rounds (1 … N-1) that add no click and give the previous mask alone.
        stop_when_exact: stop before a round whose new click is padding (label < 0 for every sample).

    Attributes:
        stopped_early: after :meth:`run`, whether it stopped before round N because the prediction was exact.
    """

    def __init__(
        self,
        first: FirstClicks,
        next: NextClicks,
        *,
        rounds: int,
        has_lesion: bool = True,
        text_first: bool = False,
        mask_only: Collection[int] = (),
        stop_when_exact: bool = False,
    ) -> None:
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        if 0 in mask_only:
            raise ValueError("round 0 cannot be mask-only: there is no mask before it")
        if not has_lesion and not text_first:
            raise ValueError("a crop without a lesion has nothing for its first click: it needs a text-only round 0")
        self.first = first
        self.next = next
        self.rounds = rounds
        self.has_lesion = has_lesion
        self.text_first = text_first
        self.mask_only = frozenset(mask_only)
        self.stop_when_exact = stop_when_exact
        self.stopped_early = False

    @classmethod
    def batch(
        cls,
        simulator: ClickSimulator,
        gt: Tensor,
        generator: Generator,
        *,
        rounds: int,
        text_first: bool = False,
        mask_only: Collection[int] = (),
    ) -> ClickRounds:
        """The rounds of a batch of crops: ``gt`` (B, 1, S, S, S) bool, clicks from ``simulator`` drawing from
        ``generator`` (a batch has a lesion when every crop has one); padding clicks never stop it."""
        return cls(
            lambda: simulator.first(gt, generator),
            lambda pred, points, labels: simulator.next(pred, gt, points, labels, generator),
            rounds=rounds,
            has_lesion=bool(gt.flatten(1).any(1).all()),
            text_first=text_first,
            mask_only=mask_only,
        )

    @classmethod
    def lesion(cls, gt: np.ndarray, *, rounds: int, mode: str, rng: Generator) -> ClickRounds:
        """The rounds of one lesion, ``gt`` (D, H, W) bool, with :func:`~lesionsam.data.clicks.first_click` and
        :func:`~lesionsam.data.clicks.next_click` (``mode``, drawing from ``rng``); clicks are (N, 3) int64 (d, h, w)
        and (N,) labels; it stops when the prediction is exact."""

        def first() -> tuple[np.ndarray, np.ndarray]:
            dhw, label = first_click(gt, mode=mode, rng=rng)
            return dhw[None], np.array([label], dtype=np.int64)

        def later(pred: np.ndarray, points: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            dhw, label = next_click(pred, gt, mode=mode, rng=rng)
            return np.concatenate([points, dhw[None]]), np.append(labels, np.int64(label))

        return cls(first, later, rounds=rounds, stop_when_exact=True)

    def run(self, decode: Callable[[Round], Decoded]) -> Decoded | None:
        """Decode every round in order; returns the last round's :class:`Decoded` (None when no round ran)."""
        points = labels = None
        last: Decoded | None = None
        self.stopped_early = False
        for index in range(self.rounds):
            clicked = not (index == 0 and self.text_first) and index not in self.mask_only
            if clicked:
                if points is None and self.has_lesion:
                    points, labels = self.first()
                else:  # an error click (after a text-only round of a crop without a lesion: its first click)
                    assert last is not None
                    points, labels = self.next(last.pred, points, labels)
                    if self.stop_when_exact and bool((labels[..., -1] < 0).all()):
                        self.stopped_early = True
                        break
            mask = last.low_res if last is not None else None
            shown = (points, labels) if clicked else (None, None)
            last = decode(Round(index, shown[0], shown[1], mask, clicked))
        return last
