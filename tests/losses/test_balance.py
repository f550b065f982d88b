"""The readings of the Zoom Loss's focal balance, each against a voxel-by-voxel float64 reference, and their prior
shifts against the optimum of the loss itself."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from lesionsam.losses import (
    BalancedFocalLoss,
    ZoomLoss,
    build_loss,
    estimate_prior_shift,
    lesion_box_mask,
    loss_prior_shift,
)

SIDE = 6
#: Lesion A: two face-adjacent voxels; lesion B: two voxels touching only at a corner (one 26-connected component).
LESION_A = [(1, 1, 1), (1, 1, 2)]
LESION_B = [(4, 4, 4), (5, 5, 5)]


def _crop(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, 6, 6, 6) float64 logits and a binary target with the two lesions."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, 1, SIDE, SIDE, SIDE, generator=gen, dtype=torch.float64) * 2
    target = torch.zeros(1, 1, SIDE, SIDE, SIDE, dtype=torch.float64)
    for v in LESION_A + LESION_B:
        target[(0, 0, *v)] = 1
    return logits, target


def _voxels() -> list[tuple[int, int, int]]:
    return list(product(range(SIDE), repeat=3))


def _fl(x: float, t: float, gamma: float) -> tuple[float, float]:
    """(FL_pos, FL_neg) of one voxel, by the textbook formula."""
    p = 1.0 / (1.0 + math.exp(-x))
    return -((1 - p) ** gamma) * math.log(p), -(p**gamma) * math.log(1 - p)


def _hand_boxes(margin: int) -> np.ndarray:
    """Region B, from the lesions' bounding boxes written out by hand."""
    box = np.zeros((SIDE,) * 3, dtype=bool)
    for (d0, h0, w0), (d1, h1, w1) in (((1, 1, 1), (1, 1, 2)), ((4, 4, 4), (5, 5, 5))):  # inclusive corners
        lo = [max(0, c - margin) for c in (d0, h0, w0)]
        hi = [min(SIDE - 1, c + margin) for c in (d1, h1, w1)]
        for d, h, w in _voxels():
            if lo[0] <= d <= hi[0] and lo[1] <= h <= hi[1] and lo[2] <= w <= hi[2]:
                box[d, h, w] = True
    return box


def _reference(logits: torch.Tensor, target: torch.Tensor, gamma: float, balance: str, **kw: float) -> float:
    """The focal term of the one sample, voxel by voxel in float64 with plain loops."""
    x, t = logits[0, 0].numpy(), target[0, 0].numpy()
    terms = {v: _fl(float(x[v]), float(t[v]), gamma) for v in _voxels()}
    fg = [terms[v][0] for v in _voxels() if t[v] == 1]
    bg = [terms[v][1] for v in _voxels() if t[v] == 0]
    n = len(_voxels())
    if balance == "none":
        return (sum(fg) + sum(bg)) / n
    if balance == "alpha":
        a = kw["alpha"]
        return (a * sum(fg) + (1 - a) * sum(bg)) / n
    if balance == "full":
        return 0.5 * sum(fg) / len(fg) + 0.5 * sum(bg) / len(bg)
    if balance == "partial":
        w = (len(bg) / len(fg)) ** kw["beta"]
        return (w * sum(fg) + sum(bg)) / (w * len(fg) + len(bg))
    box = _hand_boxes(int(kw["margin"]))
    bg_in = [terms[v][1] for v in _voxels() if t[v] == 0 and box[v]]
    outside = sum(terms[v][1] for v in _voxels() if not box[v])
    return 0.5 * sum(fg) / len(fg) + 0.5 * sum(bg_in) / len(bg_in) + outside / n


READINGS = [
    ("full", {}),
    ("partial", {"beta": 0.5}),
    ("partial", {"beta": 0.3}),
    ("alpha", {"alpha": 0.25}),
    ("alpha", {"alpha": 0.7}),
    ("none", {}),
    ("zoomed", {"margin": 1}),
    ("zoomed", {"margin": 0}),
]


@pytest.mark.parametrize(("balance", "kw"), READINGS)
@pytest.mark.parametrize("gamma", [2.0, 0.0, 0.5])
def test_each_reading_matches_a_voxel_by_voxel_reference(balance: str, kw: dict, gamma: float) -> None:
    logits, target = _crop()
    got = BalancedFocalLoss(gamma=gamma, balance=balance, **kw)(logits, target)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(_reference(logits, target, gamma, balance, **kw), rel=1e-10)


@pytest.mark.parametrize(("balance", "kw"), READINGS)
def test_zoom_loss_adds_lambda_times_the_reading_to_the_dice(balance: str, kw: dict) -> None:
    logits, target = _crop(seed=1)
    zoom = ZoomLoss(lambda_focal=0.7, balance=balance, **kw)
    dice, focal = zoom.terms(logits, target)
    assert float(focal) == pytest.approx(_reference(logits, target, 2.0, balance, **kw), rel=1e-10)
    torch.testing.assert_close(zoom(logits, target), (dice + 0.7 * focal).mean())
    torch.testing.assert_close(
        build_loss("zoom", lambda_focal=0.7, balance=balance, **kw)(logits, target), zoom(logits, target)
    )


def test_partial_balance_spans_plain_mean_to_full_balance_exactly() -> None:
    logits, target = _crop(seed=2)
    target = torch.cat([target, torch.zeros_like(target)])  # and a lesion-free sample
    logits = torch.cat([logits, logits.flip(2)])
    for gamma in (0.0, 2.0):
        full = BalancedFocalLoss(gamma=gamma, reduction="none")(logits, target)
        none = BalancedFocalLoss(gamma=gamma, balance="none", reduction="none")(logits, target)
        torch.testing.assert_close(
            BalancedFocalLoss(gamma=gamma, balance="partial", beta=1.0, reduction="none")(logits, target),
            full,
            rtol=1e-12,
            atol=0,
        )
        torch.testing.assert_close(
            BalancedFocalLoss(gamma=gamma, balance="partial", beta=0.0, reduction="none")(logits, target),
            none,
            rtol=1e-12,
            atol=0,
        )


def test_zoomed_box_is_the_union_of_dilated_bounding_boxes_of_26_connected_lesions() -> None:
    _, target = _crop()
    for margin in (0, 1, 2):
        got = lesion_box_mask(target, margin)
        assert got.dtype == torch.bool and got.shape == target.shape
        np.testing.assert_array_equal(got[0, 0].numpy(), _hand_boxes(margin))
    # margin 1: lesion A's box is 3 x 3 x 4, lesion B's (one component through a corner) 3 x 3 x 3, disjoint.
    assert int(lesion_box_mask(target, 1).sum()) == 36 + 27
    assert not lesion_box_mask(torch.zeros_like(target), 4).any()


def test_zoomed_with_a_box_over_the_whole_crop_is_full_balance() -> None:
    logits, target = _crop(seed=3)
    assert lesion_box_mask(target, 6).all()
    torch.testing.assert_close(
        BalancedFocalLoss(balance="zoomed", margin=6)(logits, target), BalancedFocalLoss()(logits, target)
    )


@pytest.mark.parametrize("balance", ["partial", "zoomed", "alpha"])
def test_a_lesion_free_crop_and_the_gradient(balance: str) -> None:
    logits, target = _crop(seed=4)
    empty = torch.zeros_like(target)
    loss = BalancedFocalLoss(balance=balance)
    if balance != "alpha":  # no foreground: the plain voxel mean
        torch.testing.assert_close(loss(logits, empty), BalancedFocalLoss(balance="none")(logits, empty))
    x = logits.clone().requires_grad_(True)
    loss(x, target).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _optimal_shared_logit(balance: str, kw: dict, region: list[tuple[int, int, int]]) -> float:
    """The minimiser of the reading (gamma = 0) over one logit shared by the voxels of ``region``, the other voxels
    holding fixed logits."""
    logits, target = _crop(seed=5)
    mask = torch.zeros_like(target, dtype=torch.bool)
    for v in region:
        mask[(0, 0, *v)] = True
    loss = BalancedFocalLoss(gamma=0.0, balance=balance, **kw)

    def f(x: float) -> float:
        return float(loss(torch.where(mask, torch.tensor(x, dtype=torch.float64), logits), target))

    return float(minimize_scalar(f, bounds=(-30, 30), method="bounded", options={"xatol": 1e-9}).x)


@pytest.mark.parametrize(
    ("balance", "kw"), [("full", {}), ("partial", {"beta": 0.5}), ("alpha", {"alpha": 0.25}), ("zoomed", {"margin": 1})]
)
def test_the_prior_shift_is_where_the_optimal_logit_of_an_ambiguous_region_moves(balance: str, kw: dict) -> None:
    # An ambiguous region: lesion A's two voxels and four background voxels beside them (inside B for margin 1),
    # sharing one logit. The plain voxel mean puts its optimum at log(q / (1 - q)) = log(2 / 4).
    region = LESION_A + [(1, 1, 0), (1, 1, 3), (0, 1, 1), (2, 1, 2)]
    plain = _optimal_shared_logit("none", {}, region)
    assert plain == pytest.approx(math.log(2 / 4), abs=1e-6)
    _, target = _crop(seed=5)
    shift = float(BalancedFocalLoss(balance=balance, **kw).prior_shift(target)[0])
    n_fg, n_bg = 4, SIDE**3 - 4
    n_bg_in = 36 + 27 - 4
    want = {
        "full": math.log(n_bg / n_fg),
        "partial": 0.5 * math.log(n_bg / n_fg),
        "alpha": math.log(0.25 / 0.75),
        "zoomed": math.log(n_bg_in / n_fg),
    }[balance]
    assert shift == pytest.approx(want, rel=1e-12)
    assert _optimal_shared_logit(balance, kw, region) - plain == pytest.approx(shift, abs=1e-5)


def test_prior_shift_of_each_loss_and_its_estimate() -> None:
    _, target = _crop()
    batch = torch.cat([target, torch.zeros_like(target)])  # the second crop has no lesion: undefined
    full = loss_prior_shift(build_loss("zoom"), batch)
    assert full.shape == (2,) and full.dtype == torch.float64
    assert float(full[0]) == pytest.approx(math.log((SIDE**3 - 4) / 4)) and math.isnan(float(full[1]))
    assert estimate_prior_shift([full, full[:1]]) == pytest.approx(float(full[0]))
    assert estimate_prior_shift([full[1:]]) == 0.0
    assert torch.equal(loss_prior_shift(build_loss("zoom", balance="none"), batch), torch.zeros(2, dtype=torch.float64))
    for name in ("dice", "dice_ce"):  # the two classes weigh alike: no shift
        assert torch.equal(loss_prior_shift(build_loss(name), batch), torch.zeros(2, dtype=torch.float64))
    # The shift does not depend on lambda_focal.
    torch.testing.assert_close(loss_prior_shift(build_loss("zoom", lambda_focal=0.1), batch), full, equal_nan=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"balance": "partal"},
            ValueError,
            r"Unknown ZoomLoss balance 'partal'\. Did you mean 'partial'\?.*Known: full",
        ),
        ({"balance": "partial", "beta": 1.5}, ValueError, r"ZoomLoss: beta must be in \[0, 1\]"),
        ({"beta": -0.1}, ValueError, r"beta must be in \[0, 1\]"),
        ({"beta": "0.5"}, TypeError, r"ZoomLoss: beta must be a number"),
        ({"alpha": 0.0}, ValueError, r"ZoomLoss: alpha must be in \(0, 1\)"),
        ({"alpha": 1.0}, ValueError, r"alpha must be in \(0, 1\)"),
        ({"margin": -1}, ValueError, r"ZoomLoss: margin must be an integer number of voxels >= 0, got -1"),
        ({"margin": 2.5}, ValueError, r"margin must be an integer"),
    ],
)
def test_bad_balance_options_are_refused(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ZoomLoss(**kwargs)
    with pytest.raises(error, match=message.replace("ZoomLoss", "BalancedFocalLoss")):
        build_loss("focal_balanced", **kwargs)
