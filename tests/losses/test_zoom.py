"""The Zoom Loss (SGP-SAM) and its voxel-balanced focal term, against hand arithmetic and MONAI references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss

from lesionsam.losses import BalancedFocalLoss, ZoomLoss, voxel_focal_terms

# A 1x1x2x2x2 volume: 3 foreground voxels, 5 background voxels.
LOGITS = [2.0, -1.0, 0.5, -3.0, 1.5, 0.0, -0.5, 3.0]
TARGET = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _volume(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).reshape(1, 1, 2, 2, 2)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _hand_dice(logits: list[float], target: list[float], nr: float = 1e-5, dr: float = 1e-5) -> float:
    p = [_sigmoid(x) for x in logits]
    inter = sum(pi * ti for pi, ti in zip(p, target, strict=True))
    return 1.0 - (2.0 * inter + nr) / (sum(p) + sum(target) + dr)


def _hand_focal(logits: list[float], target: list[float], gamma: float) -> float:
    p = [_sigmoid(x) for x in logits]
    fg = [-((1 - pi) ** gamma) * math.log(pi) for pi, ti in zip(p, target, strict=True) if ti == 1]
    bg = [-(pi**gamma) * math.log(1 - pi) for pi, ti in zip(p, target, strict=True) if ti == 0]
    if not fg:
        return sum(bg) / len(bg)
    if not bg:
        return sum(fg) / len(fg)
    return 0.5 * sum(fg) / len(fg) + 0.5 * sum(bg) / len(bg)


@pytest.mark.parametrize(("lambda_focal", "gamma"), [(1.0, 2.0), (0.7, 2.0), (2.0, 1.5), (1.0, 0.0)])
def test_zoom_loss_matches_hand_arithmetic(lambda_focal: float, gamma: float) -> None:
    loss = ZoomLoss(lambda_focal=lambda_focal, gamma=gamma)
    dice, focal = _hand_dice(LOGITS, TARGET), _hand_focal(LOGITS, TARGET, gamma)
    got_dice, got_focal = loss.terms(_volume(LOGITS), _volume(TARGET))
    assert got_dice.item() == pytest.approx(dice, abs=1e-6)
    assert got_focal.item() == pytest.approx(focal, abs=1e-6)
    assert loss(_volume(LOGITS), _volume(TARGET)).item() == pytest.approx(dice + lambda_focal * focal, abs=1e-6)


def test_batch_reductions_are_per_sample_then_over_the_batch() -> None:
    other_logits = [-2.0, 1.0, 0.25, -0.75, 4.0, -4.0, 0.5, 1.0]
    empty = [0.0] * 8
    logits = torch.cat([_volume(LOGITS), _volume(other_logits)])
    target = torch.cat([_volume(TARGET), _volume(empty)])
    want = [
        _hand_dice(LOGITS, TARGET) + 0.5 * _hand_focal(LOGITS, TARGET, 2.0),
        _hand_dice(other_logits, empty) + 0.5 * _hand_focal(other_logits, empty, 2.0),
    ]
    per_sample = ZoomLoss(lambda_focal=0.5, reduction="none")(logits, target)
    assert per_sample.shape == (2,)
    assert per_sample.tolist() == pytest.approx(want, abs=1e-6)
    assert ZoomLoss(lambda_focal=0.5)(logits, target).item() == pytest.approx(sum(want) / 2, abs=1e-6)
    assert ZoomLoss(lambda_focal=0.5, reduction="sum")(logits, target).item() == pytest.approx(sum(want), abs=1e-6)


def test_soft_targets_count_towards_both_classes() -> None:
    logits, soft = [0.3, -1.2], [0.25, 1.0]
    p = [_sigmoid(x) for x in logits]
    fl_pos = [-((1 - q) ** 2) * math.log(q) for q in p]
    fl_neg = [-(q**2) * math.log(1 - q) for q in p]
    fg = (soft[0] * fl_pos[0] + soft[1] * fl_pos[1]) / (soft[0] + soft[1])
    bg = fl_neg[0]  # the second voxel is pure foreground: weight 1 - 1.0 = 0 towards the background
    got = BalancedFocalLoss()(torch.tensor(logits).reshape(1, 1, 1, 1, 2), torch.tensor(soft).reshape(1, 1, 1, 1, 2))
    assert got.item() == pytest.approx(0.5 * fg + 0.5 * bg, abs=1e-6)


def test_voxel_terms_match_monai_focal_loss_for_binary_targets() -> None:
    torch.manual_seed(0)
    logits = 4 * torch.randn(2, 1, 6, 6, 6)
    target = (torch.rand(2, 1, 6, 6, 6) > 0.7).float()
    fl_pos, fl_neg = voxel_focal_terms(logits, 2.0)
    reference = FocalLoss(gamma=2.0, use_softmax=False, reduction="none")(logits, target)
    torch.testing.assert_close(target * fl_pos + (1 - target) * fl_neg, reference, atol=1e-6, rtol=1e-5)


def test_balanced_focal_is_half_foreground_mean_half_background_mean() -> None:
    torch.manual_seed(1)
    logits = 3 * torch.randn(3, 1, 8, 8, 8, dtype=torch.float64)
    target = (torch.rand(3, 1, 8, 8, 8) > 0.9).double()
    per_voxel = FocalLoss(gamma=2.0, use_softmax=False, reduction="none")(logits, target).double()
    want = torch.stack(
        [0.5 * per_voxel[b][target[b] == 1].mean() + 0.5 * per_voxel[b][target[b] == 0].mean() for b in range(3)]
    )
    got = BalancedFocalLoss(gamma=2.0, reduction="none")(logits, target)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def _lesion_gradients(loss_fn: object, target: torch.Tensor) -> torch.Tensor:
    logits = torch.zeros_like(target, requires_grad=True)
    loss_fn(logits, target).backward()  # type: ignore[operator]
    assert logits.grad is not None
    return logits.grad.abs()


def test_one_voxel_lesion_is_not_drowned_out() -> None:
    n = 32
    tiny = torch.zeros(1, 1, n, n, n)
    tiny[0, 0, 16, 16, 16] = 1
    large = torch.zeros(1, 1, n, n, n)
    large[0, 0, 8:24, 8:24, 8:24] = 1  # 4,096 voxels
    balanced = BalancedFocalLoss(gamma=2.0)
    plain_focal = FocalLoss(gamma=2.0, use_softmax=False, reduction="mean")
    plain_bce = F.binary_cross_entropy_with_logits
    lesion = tiny.bool()

    # Balanced: the one-voxel lesion pulls as hard as the whole large lesion, and as hard as its whole background.
    g_tiny, g_large = _lesion_gradients(balanced, tiny), _lesion_gradients(balanced, large)
    tiny_pull, large_pull = g_tiny[lesion].sum().item(), g_large[large.bool()].sum().item()
    assert 0.1 < tiny_pull / large_pull < 10
    assert 0.1 < tiny_pull / g_tiny[~lesion].sum().item() < 10
    # ... and each of its voxels far harder than one voxel of the large lesion (whose pull is shared by 4,096).
    assert g_tiny[lesion].item() / g_large[large.bool()].mean().item() > 1000

    # Plain voxel means: every voxel weighs 1/32,768, so the tiny lesion's pull is 4,096x smaller than the large
    # lesion's, 32,767x smaller than its background's, and >1,000x smaller than under the balanced loss.
    for plain in (plain_focal, plain_bce):
        p_tiny, p_large = _lesion_gradients(plain, tiny), _lesion_gradients(plain, large)
        plain_pull = p_tiny[lesion].sum().item()
        assert p_large[large.bool()].sum().item() / plain_pull > 1000
        assert p_tiny[~lesion].sum().item() / plain_pull > 10_000
        assert tiny_pull / plain_pull > 1000


def test_empty_foreground_puts_the_whole_weight_on_the_background() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 1, 8, 8, 8, requires_grad=True)
    empty = torch.zeros(2, 1, 8, 8, 8)
    _, fl_neg = voxel_focal_terms(logits, 2.0)
    got = BalancedFocalLoss(reduction="none")(logits, empty)
    torch.testing.assert_close(got, fl_neg.flatten(1).mean(dim=1))
    zoom = ZoomLoss()(logits, empty)
    assert torch.isfinite(zoom)
    zoom.backward()
    assert logits.grad is not None and bool((logits.grad > 0).all())  # gradient descent lowers every logit


def test_full_foreground_puts_the_whole_weight_on_the_foreground() -> None:
    logits = torch.linspace(-3, 3, 8).reshape(1, 1, 2, 2, 2)
    full = torch.ones(1, 1, 2, 2, 2, dtype=torch.bool)
    fl_pos, _ = voxel_focal_terms(logits, 2.0)
    assert BalancedFocalLoss()(logits, full).item() == pytest.approx(fl_pos.mean().item(), abs=1e-7)


def test_gamma_zero_is_class_balanced_bce() -> None:
    torch.manual_seed(3)
    logits = 2 * torch.randn(2, 1, 8, 8, 8)
    target = (torch.rand(2, 1, 8, 8, 8) > 0.8).float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    want = torch.stack([0.5 * bce[b][target[b] == 1].mean() + 0.5 * bce[b][target[b] == 0].mean() for b in range(2)])
    torch.testing.assert_close(BalancedFocalLoss(gamma=0.0, reduction="none")(logits, target), want)


def test_lambda_zero_is_monai_dice() -> None:
    torch.manual_seed(4)
    logits = torch.randn(2, 1, 8, 8, 8)
    target = (torch.rand(2, 1, 8, 8, 8) > 0.8).float()
    torch.testing.assert_close(ZoomLoss(lambda_focal=0.0)(logits, target), DiceLoss(sigmoid=True)(logits, target))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_extreme_logits_give_finite_values_and_gradients(gamma: float) -> None:
    signs = torch.tensor([1.0, -1.0]).repeat(4 * 4 * 4)
    logits = (100 * signs).reshape(2, 1, 4, 4, 4).requires_grad_()
    target = torch.zeros(2, 1, 4, 4, 4)
    target[0, 0, :2] = 1  # right and wrong answers at |logit| = 100; sample 1 has no foreground
    value = ZoomLoss(gamma=gamma)(logits, target)
    value.backward()
    assert torch.isfinite(value)
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lambda_focal": -1.0}, ValueError, r"ZoomLoss: lambda_focal must be a finite number >= 0, got -1\.0"),
        ({"gamma": -0.5}, ValueError, r"ZoomLoss: gamma must be a finite number >= 0"),
        ({"gamma": float("nan")}, ValueError, r"ZoomLoss: gamma must be a finite number >= 0"),
        ({"smooth_nr": -1e-5}, ValueError, r"smooth_nr must be a finite number >= 0"),
        ({"smooth_dr": 0.0}, ValueError, r"smooth_dr must be a finite number > 0"),
        ({"lambda_focal": "1"}, TypeError, r"ZoomLoss: lambda_focal must be a number, got str '1'"),
        ({"gamma": True}, TypeError, r"gamma must be a number"),
        ({"reduction": "avg"}, ValueError, r"Unknown reduction 'avg'\..*Known: mean, sum, none"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ZoomLoss(**kwargs)  # type: ignore[arg-type]


def test_balanced_focal_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match=r"BalancedFocalLoss: gamma must be a finite number >= 0"):
        BalancedFocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match=r"Unknown reduction 'mea'\. Did you mean 'mean'\?"):
        BalancedFocalLoss(reduction="mea")


@pytest.mark.parametrize(
    ("logits", "target", "error", "message"),
    [
        (
            torch.zeros(2, 1, 8, 8, 8),
            torch.zeros(2, 8, 8, 8),
            ValueError,
            r"ZoomLoss: logits and target must have the same shape \(B, C, D, H, W\), "
            r"got logits \(2, 1, 8, 8, 8\) and target \(2, 8, 8, 8\)",
        ),
        (
            torch.zeros(2, 1, 8, 8, 8),
            torch.zeros(2, 1, 8, 8, 4),
            ValueError,
            r"got logits \(2, 1, 8, 8, 8\) and target \(2, 1, 8, 8, 4\)",
        ),
        (
            torch.zeros(2, 8, 8, 8),
            torch.zeros(2, 8, 8, 8),
            ValueError,
            r"logits must have shape \(B, C, D, H, W\), got \(2, 8, 8, 8\); add a channel axis",
        ),
        (
            torch.zeros(1, 1, 2, 2, 2),
            torch.full((1, 1, 2, 2, 2), 2.0),
            ValueError,
            r"target must be a mask with values in \[0, 1\], got values in \[2\.0, 2\.0\]",
        ),
        (
            torch.zeros(1, 1, 2, 2, 2),
            torch.full((1, 1, 2, 2, 2), float("nan")),
            ValueError,
            r"values in \[0, 1\].*NaN included",
        ),
        (torch.zeros(1, 1, 2, 2, 2, dtype=torch.long), torch.zeros(1, 1, 2, 2, 2), TypeError, "floating point"),
        (torch.zeros(0, 1, 2, 2, 2), torch.zeros(0, 1, 2, 2, 2), ValueError, "empty"),
    ],
)
def test_bad_inputs_are_refused(
    logits: torch.Tensor, target: torch.Tensor, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ZoomLoss()(logits, target)


def test_bool_and_integer_masks_are_accepted() -> None:
    logits, target = _volume(LOGITS), _volume(TARGET)
    want = ZoomLoss()(logits, target)
    torch.testing.assert_close(ZoomLoss()(logits, target.bool()), want)
    torch.testing.assert_close(ZoomLoss()(logits, target.to(torch.uint8)), want)
