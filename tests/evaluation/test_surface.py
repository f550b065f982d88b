"""Surface metrics (NSD area/voxel, HD95, ASSD) against closed forms on shifted cubes, MONAI and DeepMind's code."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from lesionsam.evaluation.metrics import case_metrics
from lesionsam.evaluation.surface import (
    area_surface_distances,
    surface_dice,
    surface_scores,
    voxel_surface,
    voxel_surface_distances,
)

N = 10  # cube side in voxels


def cube(shape: tuple[int, int, int] = (16, 16, 16), lo: int = 3) -> np.ndarray:
    a = np.zeros(shape, dtype=bool)
    a[lo : lo + N, lo : lo + N, lo : lo + N] = True
    return a


def cube_surface_area(s: tuple[float, float, float]) -> float:
    """Marching-cubes area (mm²) of an N³ voxel cube: flat faces, chamfered edges, corner triangles.

    The surface runs half-way between inside and outside voxel centres. A face element has the area of the
    voxel face; an edge element along axis k is a strip of length s_k and width ½√(s_i² + s_j²); a corner
    element is the triangle through three half-edge points, of area √((s₁s₂)² + (s₀s₂)² + (s₀s₁)²) / 8.
    """
    faces = 2 * (N - 1) ** 2 * (s[1] * s[2] + s[0] * s[2] + s[0] * s[1])
    edges = 4 * (N - 1) * sum(s[k] * math.hypot(*(s[i] for i in range(3) if i != k)) / 2 for k in range(3))
    corners = math.sqrt((s[1] * s[2]) ** 2 + (s[0] * s[2]) ** 2 + (s[0] * s[1]) ** 2)
    return faces + edges + corners


def cube_nsd_after_one_slice_shift_on_d(s: tuple[float, float, float], tol: float) -> float:
    """Area NSD of a cube against itself shifted one voxel along D, for a tolerance below s₀.

    Per mask, out of tolerance are the whole far face (s₀ away: its (N-1)² face elements, the 4 rim edges along
    H and W, the 4 corners) and the near face's interior elements whose in-plane distance to the side walls
    (b·s₁, c·s₂ from each wall) exceeds the tolerance (their distance is min(s₀, walls)); the rest coincide.
    """
    far = (N - 1) ** 2 * s[1] * s[2]
    far += 2 * (N - 1) * (s[1] * math.hypot(s[0], s[2]) + s[2] * math.hypot(s[0], s[1])) / 2
    far += 4 * math.sqrt((s[1] * s[2]) ** 2 + (s[0] * s[2]) ** 2 + (s[0] * s[1]) ** 2) / 8
    near = sum(
        s[1] * s[2]
        for b, c in itertools.product(range(1, N), repeat=2)
        if min(s[0], b * s[1], c * s[2], (N - b) * s[1], (N - c) * s[2]) > tol
    )
    return 1.0 - (far + near) / cube_surface_area(s)


def test_area_of_a_cube_matches_the_closed_form() -> None:
    for s in [(1.0, 1.0, 1.0), (3.0, 1.0, 1.0), (5.0, 0.8, 0.7)]:
        d = area_surface_distances(cube(), cube(), s)
        assert d.gt_weights.sum() == pytest.approx(cube_surface_area(s), rel=1e-12)
        assert d.pred_weights.sum() == pytest.approx(cube_surface_area(s), rel=1e-12)
        assert np.all(d.pred_to_gt == 0) and np.all(d.gt_to_pred == 0)


@pytest.mark.parametrize(
    ("spacing", "tol"),
    [((1.0, 1.0, 1.0), 0.5), ((3.0, 1.0, 1.0), 2.0), ((3.0, 1.0, 1.0), 1.0), ((5.0, 0.8, 0.7), 2.0)],
)
def test_area_nsd_of_a_cube_shifted_by_one_slice_matches_the_closed_form(
    spacing: tuple[float, float, float], tol: float
) -> None:
    gt = cube()
    pred = np.roll(gt, 1, axis=0)
    m = case_metrics(pred, gt, spacing, nsd_tolerance_mm=tol)  # area-weighted is the default
    assert m.nsd == pytest.approx(cube_nsd_after_one_slice_shift_on_d(spacing, tol), rel=1e-12)
    # the whole shifted surface is within one slice thickness
    assert case_metrics(pred, gt, spacing, nsd_tolerance_mm=spacing[0]).nsd == pytest.approx(1.0)


def test_area_and_voxel_nsd_differ_on_thick_slices() -> None:
    gt = cube()
    pred = np.roll(gt, 1, axis=0)
    area = case_metrics(pred, gt, (5.0, 0.8, 0.7), nsd_tolerance_mm=2.0).nsd
    voxel = case_metrics(pred, gt, (5.0, 0.8, 0.7), nsd_tolerance_mm=2.0, nsd_mode="voxel").nsd
    # voxel count: per direction the 100 far-face voxels (5 mm away) and the near-face inside voxels farther than
    # 2 mm from every side wall are out of tolerance, of 488 boundary voxels
    near_out = sum(
        min(5.0, b * 0.8, c * 0.7, (9 - b) * 0.8, (9 - c) * 0.7) > 2.0 for b in range(1, 9) for c in range(1, 9)
    )
    assert voxel == pytest.approx(1 - (100 + near_out) / 488)
    assert area == pytest.approx(cube_nsd_after_one_slice_shift_on_d((5.0, 0.8, 0.7), 2.0))
    assert abs(area - voxel) > 0.05


@pytest.mark.parametrize(("axis", "spacing"), [(0, (3.0, 1.0, 1.0)), (2, (3.0, 1.0, 1.0)), (0, (1.5, 1.5, 1.5))])
def test_assd_of_a_shifted_cube_is_hand_computed(axis: int, spacing: tuple[float, float, float]) -> None:
    gt = cube()
    pred = np.roll(gt, 1, axis=axis)
    # Per direction: 488 boundary voxels; the far face (100) is one voxel (s_axis) away, each of the 8×8 inside
    # voxels of the near face is min(s_axis, distance to a side wall) away, all others are on the other surface.
    other = [a for a in range(3) if a != axis]
    s_ax, s1, s2 = spacing[axis], spacing[other[0]], spacing[other[1]]
    near = sum(min(s_ax, b * s1, c * s2, (9 - b) * s1, (9 - c) * s2) for b in range(1, 9) for c in range(1, 9))
    expected = 2 * (100 * s_ax + near) / (2 * 488)
    assert case_metrics(pred, gt, spacing).assd_mm == pytest.approx(expected, rel=1e-12)


def test_voxel_surface_is_the_6_connected_boundary() -> None:
    a = cube((12, 12, 12), 1)
    assert voxel_surface(a).sum() == N**3 - (N - 2) ** 3
    edge = np.zeros((4, 4, 4), bool)
    edge[:2] = True  # touches the array border: outside counts as background
    assert voxel_surface(edge).sum() == 32


def _blobs(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.random(shape), 1.5)
    return ndimage.binary_opening(noise > np.quantile(noise, 0.7))


def _monai(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...], tol: float) -> tuple[float, ...]:
    yp = torch.from_numpy(pred)[None, None].float()
    yt = torch.from_numpy(gt)[None, None].float()
    sp = list(spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            compute_surface_dice(yp, yt, [tol], include_background=True, spacing=sp, use_subvoxels=True).item(),
            compute_surface_dice(yp, yt, [tol], include_background=True, spacing=sp).item(),
            compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=sp).item(),
            compute_average_surface_distance(yp, yt, include_background=True, symmetric=True, spacing=sp).item(),
        )


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.7), (5.0, 1.0, 1.0), (0.7, 3.0, 1.1)])
def test_nsd_hd95_assd_agree_with_monai_on_random_blobs(spacing: tuple[float, float, float]) -> None:
    rng = np.random.default_rng(7)
    for _ in range(3):
        gt, pred = _blobs(rng, (18, 26, 22)), _blobs(rng, (18, 26, 22))
        for tol in (1.0, 2.0, 5.0):  # 5 mm hits exact ties on the 0.8 × 0.7 grid (4.8² + 1.4² = 5²)
            nsd_area, hd95, assd = surface_scores(pred, gt, spacing, tolerance_mm=tol)
            nsd_voxel, _, _ = surface_scores(pred, gt, spacing, tolerance_mm=tol, nsd_mode="voxel")
            ref_area, ref_voxel, ref_hd95, ref_assd = _monai(pred, gt, spacing, tol)
            assert nsd_area == pytest.approx(ref_area, abs=1e-6)
            assert nsd_voxel == pytest.approx(ref_voxel, abs=1e-6)
            assert hd95 == pytest.approx(ref_hd95, rel=1e-5)
            assert assd == pytest.approx(ref_assd, rel=1e-5)


def test_area_nsd_agrees_with_deepminds_surface_distance() -> None:
    """The published implementation (its distance and area code, not only its table), off exact ties."""
    import surface_distance

    rng = np.random.default_rng(3)
    for spacing in [(1.0, 1.0, 1.0), (2.5, 0.8, 0.7), (6.5, 0.9, 0.9)]:
        gt, pred = _blobs(rng, (16, 24, 20)), _blobs(rng, (16, 24, 20))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its scipy.ndimage.filters/morphology namespaces
            ref = surface_distance.compute_surface_distances(gt, pred, spacing)
        ours = area_surface_distances(pred, gt, spacing)
        assert np.sort(ours.gt_to_pred) == pytest.approx(ref["distances_gt_to_pred"])
        assert ours.pred_weights.sum() == pytest.approx(ref["surfel_areas_pred"].sum())
        for tol in (0.9, 1.7, 3.3):
            expected = surface_distance.compute_surface_dice_at_tolerance(ref, tol)
            assert surface_dice(ours, tol) == pytest.approx(expected, abs=1e-12)


def test_hd95_and_assd_use_the_voxel_surface_whatever_the_nsd_mode() -> None:
    rng = np.random.default_rng(11)
    gt, pred = _blobs(rng, (12, 20, 20)), _blobs(rng, (12, 20, 20))
    a = surface_scores(pred, gt, (3.0, 1.0, 1.0), tolerance_mm=2.0, nsd_mode="area")
    v = surface_scores(pred, gt, (3.0, 1.0, 1.0), tolerance_mm=2.0, nsd_mode="voxel")
    assert a[1:] == v[1:]
    d = voxel_surface_distances(pred, gt, (3.0, 1.0, 1.0))
    assert a[1] == max(np.percentile(d.pred_to_gt, 95), np.percentile(d.gt_to_pred, 95))


def test_surface_functions_refuse_empty_masks_and_bad_modes() -> None:
    a = cube()
    with pytest.raises(ValueError, match="non-empty"):
        area_surface_distances(a, np.zeros_like(a), (1, 1, 1))
    with pytest.raises(ValueError, match="NSD mode"):
        surface_scores(a, a, (1, 1, 1), tolerance_mm=1.0, nsd_mode="mesh")
