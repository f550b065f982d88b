"""The click rounds: the prompts of every round and the random draws equal the loops written by hand before them
(training, validation, the click-curve protocol), and the variants (text first, mask-only rounds, a crop without a
lesion, stopping when the prediction is exact) behave as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionsam.data.click_rounds import ClickRounds, Decoded, Round
from lesionsam.data.clicks import ClickSimulator, first_click, next_click

S = 12


def _gt(empty: bool = False) -> torch.Tensor:
    gt = torch.zeros(2, 1, S, S, S, dtype=torch.bool)
    if not empty:
        gt[0, 0, 3:8, 3:8, 3:8] = True
        gt[1, 0, 5:10, 2:6, 4:9] = True
    return gt


def _prediction(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A known prediction per round: a box that moves with the round (errors of both kinds), low-res = the index."""
    pred = torch.zeros(2, 1, S, S, S, dtype=torch.bool)
    pred[:, :, 2 + index : 7 + index, 4:9, 3:7] = True
    return pred, torch.full((2, 1, 3, 3, 3), float(index))


def _hand_written(sim, gt, rng, n, *, text, mask_only, has_lesion):  # the training step's loop before ClickRounds
    points = labels = low = pred = None
    seen = []
    for it in range(n):
        if it == 0 and text:
            seen.append((None, None, low))
        elif it == 0:
            points, labels = sim.first(gt, rng)
            seen.append((points, labels, low))
        elif it in mask_only:
            seen.append((None, None, low))
        elif points is None:
            points, labels = sim.first(gt, rng) if has_lesion else sim.next(pred, gt, None, None, rng)
            seen.append((points, labels, low))
        else:
            points, labels = sim.next(pred, gt, points, labels, rng)
            seen.append((points, labels, low))
        pred, low = _prediction(it)
    return seen


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.mark.parametrize("mode", ["random", "center"])
@pytest.mark.parametrize(
    ("text", "mask_only", "empty"),
    [(False, set(), False), (False, {2, 4}, False), (True, set(), False), (True, {1}, False), (True, {2}, True)],
)
def test_batch_rounds_equal_the_hand_written_loop_and_draw_the_same_numbers(
    mode: str, text: bool, mask_only: set[int], empty: bool
) -> None:
    sim, gt, n = ClickSimulator(mode), _gt(empty), 6
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    expected = _hand_written(sim, gt, rng_a, n, text=text, mask_only=mask_only, has_lesion=not empty)
    got: list[Round] = []

    def decode(r: Round) -> Decoded:
        got.append(r)
        return Decoded(*_prediction(r.index))

    last = ClickRounds.batch(sim, gt, rng_b, rounds=n, text_first=text, mask_only=mask_only).run(decode)
    assert [r.index for r in got] == list(range(n))
    for r, (points, labels, low) in zip(got, expected, strict=True):
        assert _same(r.points, points) and _same(r.labels, labels) and _same(r.mask, low)
        assert r.clicked == (points is not None)
    assert last is not None and torch.equal(last.pred, _prediction(n - 1)[0])
    assert rng_a.bit_generator.state == rng_b.bit_generator.state  # as many draws, in the same order
    if empty:  # a crop without a lesion: its first click is on what the text-only round found (a false positive)
        assert got[1].points is not None and set(got[1].labels[:, 0].tolist()) == {0}


def test_lesion_rounds_equal_the_evaluations_hand_written_loop_and_stop_when_exact() -> None:
    gt = _gt()[0, 0].numpy()
    predictions = [np.roll(gt, 2, axis=0), np.roll(gt, 1, axis=1), gt.copy(), gt.copy()]
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    # the click-curve protocol's loop before ClickRounds
    dhw, label = first_click(gt, mode="random", rng=rng_a)
    expected = [(dhw, label)]
    for pred in predictions[:2]:
        dhw, label = next_click(pred, gt, mode="random", rng=rng_a)
        expected.append((dhw, label))
    next_click(predictions[2], gt, mode="random", rng=rng_a)  # exact: a padding click, and the loop stops
    got: list[Round] = []

    def decode(r: Round) -> Decoded:
        got.append(r)
        return Decoded(predictions[r.index])

    rounds = ClickRounds.lesion(gt, rounds=10, mode="random", rng=rng_b)
    rounds.run(decode)
    assert rounds.stopped_early and len(got) == 3
    assert [(tuple(r.points[-1]), int(r.labels[-1])) for r in got] == [(tuple(d), lab) for d, lab in expected]
    assert len(got[2].points) == 3 and got[2].points.dtype == np.int64 and all(r.mask is None for r in got)
    assert rng_a.bit_generator.state == rng_b.bit_generator.state


def test_no_click_is_drawn_after_the_last_round() -> None:
    gt = _gt()[0, 0].numpy()
    rng = np.random.default_rng(0)
    rounds = ClickRounds.lesion(gt, rounds=2, mode="random", rng=rng)
    rounds.run(lambda r: Decoded(np.zeros_like(gt)))
    reference = np.random.default_rng(0)
    reference.random(2)  # one draw for the first click, one for the second; none after round 2
    assert not rounds.stopped_early and rng.bit_generator.state == reference.bit_generator.state


def test_bad_rounds_are_refused_with_one_line() -> None:
    first = lambda: (None, None)  # noqa: E731
    later = lambda pred, points, labels: (points, labels)  # noqa: E731
    with pytest.raises(ValueError, match="round 0 cannot be mask-only"):
        ClickRounds(first, later, rounds=3, mask_only={0})
    with pytest.raises(ValueError, match="needs a text-only round 0"):
        ClickRounds(first, later, rounds=3, has_lesion=False)
    with pytest.raises(ValueError, match="rounds must be >= 0"):
        ClickRounds(first, later, rounds=-1)
    assert ClickRounds(first, later, rounds=0).run(lambda r: Decoded(None)) is None
