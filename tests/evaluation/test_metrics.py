"""Per-case metrics against hand-computable cases (cubes shifted by k voxels, anisotropic spacing)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice

from lesionsam.evaluation.metrics import (
    CONVENTIONS,
    VOLUME_BINS_ML,
    case_metrics,
    coarse_volume_bin,
    empty_case_scores,
    spacing_dhw,
    summarise,
    volume_bin,
)

# A 10³ cube has 10³ - 8³ = 488 surface voxels. Shifted by one voxel along an axis, 164 of the prediction's
# surface voxels lie one voxel from the reference surface (the far face, 100, and the 8×8 interior of the
# near face, 64) and 324 lie on it; the same holds the other way round.
N_SURFACE = 488


def cube(shape: tuple[int, int, int] = (32, 32, 32), lo: int = 10, size: int = 10) -> np.ndarray:
    a = np.zeros(shape, dtype=bool)
    a[lo : lo + size, lo : lo + size, lo : lo + size] = True
    return a


def shifted(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    return np.roll(a, k, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_dice_of_shifted_cubes_matches_monai(axis: int, k: int) -> None:
    gt = cube()
    pred = shifted(gt, k, axis)
    m = case_metrics(pred, gt, (1.0, 1.0, 1.0))
    assert m.dice == pytest.approx((10 - k) / 10)  # 2·(10-k)·100 / 2000
    ref = compute_dice(torch.from_numpy(pred)[None, None].float(), torch.from_numpy(gt)[None, None].float())
    assert m.dice == pytest.approx(float(ref.item()))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_hd95_is_shift_times_spacing_isotropic(axis: int, k: int) -> None:
    gt = cube()
    m = case_metrics(shifted(gt, k, axis), gt, (1.5, 1.5, 1.5))
    assert m.hd95_mm == pytest.approx(1.5 * k)


@pytest.mark.parametrize(
    ("axis", "expected_mm"),
    [(0, 2 * 3.0), (1, 2 * 0.5), (2, 2 * 1.0)],  # spacing (D, H, W) = (3, 0.5, 1) mm
)
def test_hd95_honours_anisotropic_spacing_on_the_shifted_axis(axis: int, expected_mm: float) -> None:
    gt = cube()
    m = case_metrics(shifted(gt, 2, axis), gt, (3.0, 0.5, 1.0))
    assert m.hd95_mm == pytest.approx(expected_mm)


def test_voxel_nsd_hand_computed_isotropic() -> None:
    gt = cube()
    pred = shifted(gt, 1, 0)
    # tolerance below one voxel: only the 324 + 324 coinciding surface voxels count
    m = case_metrics(pred, gt, (1, 1, 1), nsd_tolerance_mm=0.5, nsd_mode="voxel")
    assert m.nsd == pytest.approx(648 / (2 * N_SURFACE))
    assert case_metrics(pred, gt, (1, 1, 1), nsd_tolerance_mm=1.0, nsd_mode="voxel").nsd == pytest.approx(1.0)


def test_voxel_nsd_tolerance_is_in_mm_along_the_right_axis() -> None:
    gt = cube()
    spacing = (3.0, 1.0, 1.0)  # D is 3 mm
    # Shift along W (1 mm): every surface distance is <= 1 mm.
    m = case_metrics(shifted(gt, 1, 2), gt, spacing, nsd_tolerance_mm=2.0, nsd_mode="voxel")
    assert m.nsd == pytest.approx(1.0)
    # Shift along D (3 mm): the far face (100 voxels) is 3 mm away, and so are the 4×4 voxels in the middle of
    # the near face (at least 3 voxels × 1 mm from the side walls); per direction 116 of 488 are wrong.
    m = case_metrics(shifted(gt, 1, 0), gt, spacing, nsd_tolerance_mm=2.0, nsd_mode="voxel")
    assert m.nsd == pytest.approx(1 - 2 * 116 / (2 * N_SURFACE))


def test_spacing_dhw_reverses_itk_order() -> None:
    assert spacing_dhw((0.7, 0.8, 2.5)) == (2.5, 0.8, 0.7)
    with pytest.raises(ValueError, match="3D spacing"):
        spacing_dhw((1.0, 1.0))


@pytest.mark.parametrize(
    ("gt_empty", "pred_empty", "expected"),
    [(True, True, (1.0, 1.0, 0.0)), (True, False, (0.0, 0.0, math.nan)), (False, True, (0.0, 0.0, math.nan))],
)
def test_empty_conventions(gt_empty: bool, pred_empty: bool, expected: tuple[float, float, float]) -> None:
    gt = np.zeros((16, 16, 16), bool) if gt_empty else cube((16, 16, 16), 4, 5)
    pred = np.zeros((16, 16, 16), bool) if pred_empty else cube((16, 16, 16), 6, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MONAI "empty mask" warnings: empties never reach MONAI
        m = case_metrics(pred, gt, (1, 1, 1))
    assert (m.dice, m.nsd) == expected[:2]
    assert (math.isnan(m.hd95_mm) and math.isnan(expected[2])) or m.hd95_mm == expected[2]
    assert (math.isnan(m.assd_mm) and math.isnan(expected[2])) or m.assd_mm == expected[2]  # ASSD as HD95
    assert m.hd95_defined is not math.isnan(expected[2])
    assert empty_case_scores(gt_empty=gt_empty, pred_empty=pred_empty) is not None
    assert "Dice 1, NSD 1, HD95 0" in CONVENTIONS["empty"]


def test_no_empty_mask_gives_none_from_empty_case_scores() -> None:
    assert empty_case_scores(gt_empty=False, pred_empty=False) is None


def lesion_map() -> tuple[np.ndarray, np.ndarray]:
    """3 GT lesions (A found whole, B found by two components, C missed) and one false-positive blob."""
    gt = np.zeros((20, 40, 40), bool)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = True  # A: 64 voxels
    pred[2:6, 2:6, 2:6] = True
    gt[10:14, 10:18, 10:14] = True  # B: 128 voxels
    pred[10:14, 10:13, 10:14] = True  # B1: 48 voxels inside B
    pred[10:14, 15:20, 10:14] = True  # B2: 80 voxels, 48 inside B
    gt[2:5, 30:33, 30:33] = True  # C: 27 voxels, missed
    pred[15:18, 30:32, 2:4] = True  # FP: 12 voxels
    return pred, gt


def test_lesion_wise_detection_three_lesions_one_false_positive() -> None:
    pred, gt = lesion_map()
    m = case_metrics(pred, gt, (1.0, 1.0, 1.0), case="c1")
    assert (m.gt_lesions, m.pred_lesions, m.tp, m.fp, m.fn) == (3, 4, 2, 1, 1)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    by_voxels = {les.voxels: les for les in m.lesions}
    assert by_voxels[64].detected and by_voxels[64].dice == pytest.approx(1.0)
    # B vs the union of B1 and B2: 2 · 96 / (128 + 128)
    assert by_voxels[128].detected and by_voxels[128].dice == pytest.approx(2 * 96 / 256)
    assert not by_voxels[27].detected and by_voxels[27].dice == 0.0
    assert [(fp.kind, fp.voxels, fp.detected) for fp in m.false_positives] == [("fp", 12, False)]
    assert math.isnan(m.false_positives[0].dice)
    assert all(les.case == "c1" and les.kind == "gt" for les in m.lesions)


def test_centroid_is_reported_in_itk_ijk_order() -> None:
    gt = np.zeros((10, 20, 30), bool)
    gt[2, 5, 7] = True  # (k, j, i) = (2, 5, 7)
    m = case_metrics(gt, gt, (1, 1, 1))
    assert m.lesions[0].centroid_ijk == pytest.approx((7.0, 5.0, 2.0))


def test_components_are_26_connected() -> None:
    gt = np.zeros((8, 8, 8), bool)
    gt[2, 2, 2] = gt[3, 3, 3] = True  # touch at a corner only: one lesion
    gt[6, 6, 6] = True  # separate
    m = case_metrics(gt, gt, (1, 1, 1))
    assert m.gt_lesions == 2


def test_prediction_merging_two_lesions_detects_both() -> None:
    gt = np.zeros((8, 8, 16), bool)
    gt[2:5, 2:5, 2:5] = True
    gt[2:5, 2:5, 9:12] = True
    pred = np.zeros_like(gt)
    pred[3, 3, 3:11] = True  # one bar through both lesions
    m = case_metrics(pred, gt, (1, 1, 1))
    assert (m.tp, m.fp, m.fn, m.pred_lesions) == (2, 0, 0, 1)


@pytest.mark.parametrize(
    ("gt_on", "pred_on", "prf"),
    [(False, False, (1.0, 1.0, 1.0)), (True, False, (1.0, 0.0, 0.0)), (False, True, (0.0, 1.0, 0.0))],
)
def test_detection_ratio_conventions_for_zero_denominators(gt_on: bool, pred_on: bool, prf: tuple) -> None:
    blob = cube((12, 12, 12), 3, 4)
    empty = np.zeros_like(blob)
    m = case_metrics(blob if pred_on else empty, blob if gt_on else empty, (1, 1, 1))
    assert (m.precision, m.recall, m.f1) == prf


def strat_map() -> np.ndarray:
    gt = np.zeros((24, 40, 40), bool)
    gt[0:4, 0:10, 0:10] = True  # 400 voxels
    gt[6:16, 0:10, 20:30] = True  # 1000 voxels
    gt[0:15, 18:38, 18:38] = True  # 6000 voxels
    return gt


def test_volume_stratification_uses_the_voxel_volume() -> None:
    gt = strat_map()
    pred = gt.copy()
    pred[0:4, 0:10, 0:10] = False  # miss the smallest lesion
    # 2 mm along D → 2 mm³ voxels: 0.8 ml, 2 ml, 12 ml → one lesion per bin
    m = case_metrics(pred, gt, (2.0, 1.0, 1.0))
    bins = {les.voxels: (les.size_bin, les.volume_ml) for les in m.lesions}
    assert bins == {400: ("0.5-1 cm3", pytest.approx(0.8)), 1000: ("1-5 cm3", 2.0), 6000: (">=10 cm3", 12.0)}
    s = summarise([m])["lesion_dice_by_volume"]
    assert [s[name]["count"] for name, *_ in VOLUME_BINS_ML] == [0, 1, 1, 0, 1]
    assert (s["0.5-1 cm3"]["mean_dice"], s["0.5-1 cm3"]["detected"], s["0.5-1 cm3"]["recall"]) == (0.0, 0, 0.0)
    assert s[">=10 cm3"]["mean_dice"] == 1.0
    # isotropic 1 mm: 0.4, 1.0 and 6.0 ml → two small-ish bins, nothing above 10 ml
    iso = summarise([case_metrics(pred, gt, (1.0, 1.0, 1.0))])["lesion_dice_by_volume"]
    assert [iso[name]["count"] for name, *_ in VOLUME_BINS_ML] == [1, 0, 1, 1, 0]
    assert iso[">=10 cm3"]["mean_dice"] is None


@pytest.mark.parametrize(
    ("ml", "name"),
    [
        (0.0, "<0.5 cm3"),
        (0.499, "<0.5 cm3"),
        (0.5, "0.5-1 cm3"),
        (0.999, "0.5-1 cm3"),
        (1.0, "1-5 cm3"),
        (4.999, "1-5 cm3"),
        (5.0, "5-10 cm3"),
        (9.999, "5-10 cm3"),
        (10.0, ">=10 cm3"),
        (10.001, ">=10 cm3"),
    ],
)
def test_volume_bin_edges(ml: float, name: str) -> None:
    """The lower bound is inclusive: a lesion of exactly 0.5, 1, 5 or 10 cm³ goes to the bin above."""
    assert volume_bin(ml) == name
    assert coarse_volume_bin(ml) == ("<1 cm3" if ml < 1.0 else ">=1 cm3")
    assert [lo <= ml < hi for n, lo, hi in VOLUME_BINS_ML] == [n == name for n, _, _ in VOLUME_BINS_ML]


@pytest.mark.parametrize("ml", [-0.1, math.nan, math.inf])
def test_volume_bin_refuses_an_impossible_volume(ml: float) -> None:
    with pytest.raises(ValueError, match="finite number >= 0 ml"):
        volume_bin(ml)


@pytest.mark.parametrize(
    ("voxels", "name"), [(250, "0.5-1 cm3"), (500, "1-5 cm3"), (2500, "5-10 cm3"), (5000, ">=10 cm3")]
)
def test_a_lesion_of_exactly_a_bin_edge_lands_in_the_bin_above(voxels: int, name: str) -> None:
    """A lesion of exactly 0.5, 1, 5 and 10 cm³ (2 mm³ voxels) through the evaluator, its summary and coarse split."""
    gt = np.ones((voxels // 50, 5, 10), bool)
    m = case_metrics(gt, gt, (2.0, 1.0, 1.0))
    (les,) = m.lesions
    assert les.volume_ml == voxels * 2 / 1000 and les.size_bin == name
    summary = summarise([m])
    assert [k for k, b in summary["lesion_dice_by_volume"].items() if b["count"]] == [name]
    assert summary["lesion_dice_by_volume"][name]["min_ml"] == les.volume_ml  # its lower bound
    coarse = summary["lesion_dice_by_volume_coarse"]
    assert (coarse["<1 cm3"]["count"], coarse[">=1 cm3"]["count"]) == ((1, 0) if voxels < 500 else (0, 1))


def test_summarise_excludes_and_counts_undefined_hd95_and_sums_lesions_micro() -> None:
    gt = cube()
    pred, gt2 = lesion_map()
    cases = [
        case_metrics(shifted(gt, 2, 0), gt, (1, 1, 1), case="a"),  # HD95 2
        case_metrics(np.zeros_like(gt), gt, (1, 1, 1), case="b"),  # missed: HD95 undefined
        case_metrics(pred, gt2, (1, 1, 1), case="c"),
    ]
    s = summarise(cases)
    assert s["n_cases"] == 3
    assert s["hd95_mm"]["n"] == 2 and s["hd95_mm"]["n_undefined"] == 1
    assert s["hd95_mm"]["mean"] == pytest.approx((2.0 + cases[2].hd95_mm) / 2)
    assert s["dice"]["mean"] == pytest.approx((0.8 + 0.0 + cases[2].dice) / 3)
    det = s["lesion_detection"]
    assert (det["tp"], det["fp"], det["fn"]) == (3, 1, 2)
    assert det["f1"] == pytest.approx(6 / (6 + 1 + 2))
    assert det["f1_case_mean"] == pytest.approx((1.0 + 0.0 + 2 / 3) / 3)


def test_bad_inputs_raise_value_errors() -> None:
    a = cube((8, 8, 8), 2, 3)
    with pytest.raises(ValueError, match="differs from ground truth shape"):
        case_metrics(a, a[:-1], (1, 1, 1))
    with pytest.raises(ValueError, match="3D"):
        case_metrics(a[0], a[0], (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(a, a, (1, 0, 1))
    with pytest.raises(ValueError, match="nsd_tolerance_mm"):
        case_metrics(a, a, (1, 1, 1), nsd_tolerance_mm=-1)
    with pytest.raises(ValueError, match="NSD mode"):
        case_metrics(a, a, (1, 1, 1), nsd_mode="voxels")
    with pytest.raises(ValueError, match="matching rule"):
        case_metrics(a, a, (1, 1, 1), lesion_matching="dice")
    with pytest.raises(ValueError, match="IoU threshold"):
        case_metrics(a, a, (1, 1, 1), lesion_iou_threshold=0.0)


def test_one_dice_for_numpy_torch_and_batches() -> None:
    """The evaluator's Dice (:func:`lesionsam.evaluation.metrics.dice`) scores NumPy masks exactly, batches of tensors
    with the training's float32 arithmetic (bit for bit the formula it replaced), and empty pairs as 1."""
    from lesionsam.evaluation.metrics import dice

    gt = cube()
    pred = shifted(gt, 3, 0)
    assert dice(pred, gt) == 2 * 700 / 2000 == case_metrics(pred, gt, (1.0, 1.0, 1.0)).dice
    assert dice(np.zeros_like(gt), np.zeros_like(gt)) == 1.0 and dice(gt, np.zeros_like(gt)) == 0.0
    np.testing.assert_array_equal(
        dice(np.stack([pred, gt, 0 * gt]), np.stack([gt, gt, 0 * gt]), batch=True), [0.7, 1, 1]
    )
    rng = np.random.default_rng(0)
    p = torch.from_numpy(rng.random((4, 1, 9, 9, 9)) > 0.6)
    g = torch.from_numpy(rng.random((4, 1, 9, 9, 9)) > 0.7)
    p[3], g[3] = False, False
    pf, gf = p.flatten(1).float(), g.flatten(1).float()  # the training's dice_score before the one Dice
    inter, denom = (pf * gf).sum(1), pf.sum(1) + gf.sum(1)
    before = torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-8), torch.ones_like(denom))
    got = dice(p, g)
    assert got.dtype == torch.float32 and torch.equal(got, before) and float(got[3]) == 1.0
    np.testing.assert_allclose(got.numpy(), dice(p.numpy(), g.numpy(), batch=True), rtol=1e-6)
    with pytest.raises(ValueError, match="different shapes"):
        dice(gt, gt[1:])


def test_class_dice_is_the_mean_over_the_classes_present() -> None:
    from lesionsam.training.steps import class_dice

    target = torch.zeros(2, 1, 4, 4, 4, dtype=torch.int64)
    target[0, 0, :2] = 1  # 32 voxels of class 1
    target[0, 0, 3, 0, 0] = 2
    pred = target.clone()
    pred[0, 0, 0] = 0  # 16 of class 1 found; class 2 exact; sample 1: nothing anywhere
    got = class_dice(pred, target, num_classes=3)  # class 3: in neither, left out
    torch.testing.assert_close(got, torch.tensor([(2 * 16 / 48 + 1.0) / 2, 1.0]))
