"""The CVPR 2025 challenge protocol: box, click placement and every score against hand-worked cases and references."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import integrate, ndimage

import lesionsam.cli.evaluate  # noqa: F401  (registers the sub-commands)
from lesionsam.cli.main import main
from lesionsam.data.io import Volume, write_image
from lesionsam.evaluation.cvpr25 import (
    CaseResult,
    case_cvpr25,
    challenge_box,
    challenge_nsd,
    click_auc,
    next_click,
    summarise_cvpr25,
)
from lesionsam.evaluation.dice import dice

SHAPE = (12, 20, 20)


def _cube(lo: tuple[int, int, int], size: int, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True
    return m


# ---------------------------------------------------------------------------------------------------- the box
def test_box_is_the_middle_voxels_slice_with_the_jitter_scaled_to_a_256_grid() -> None:
    gt = np.zeros((10, 100, 300), bool)
    gt[2, 40:45, 100:110] = True  # 50 voxels on slice 2
    gt[3, 41:43, 101:103] = True  # 4 voxels on slice 3
    gt[7, 50:60, 120:130] = True  # 100 voxels on slice 7: the middle voxel (index 77 of 154) lies here
    box = challenge_box(gt, shift=3)
    assert (box.z_min, box.z_max, box.z_mid) == (2, 7, 7)
    # shift 3 on 100 rows: int(3·100/256) = 1; on 300 columns: int(3·300/256) = 3
    assert (box.y_min, box.y_max, box.x_min, box.x_max) == (49, 60, 117, 132)
    engine2d, engine3d = box.engine_box("2d"), box.engine_box("3d")
    assert (engine2d.lo, engine2d.hi) == ((117, 49, 7), (132, 60, 7))  # ITK (i, j, k) = (x, y, z)
    assert (engine3d.lo, engine3d.hi) == ((117, 49, 2), (132, 60, 7))
    edge = challenge_box(_cube((0, 0, 0), 3), shift=5)  # clipped at the image's first voxel
    assert (edge.y_min, edge.x_min, edge.y_max, edge.x_max) == (0, 0, 2, 2)  # int(5·20/256) = 0
    with pytest.raises(ValueError, match="non-empty"):
        challenge_box(np.zeros(SHAPE, bool), 0)


# ---------------------------------------------------------------------------------------------------- the clicks
def test_click_goes_to_the_centre_of_the_largest_error_positive_where_gt() -> None:
    gt = _cube((2, 2, 2), 5) | _cube((2, 12, 12), 3)
    pred = np.zeros(SHAPE, bool)
    (dhw, positive) = next_click(pred, gt)  # type: ignore[misc]
    assert dhw == (4, 4, 4) and positive  # the 5³ cube's centre (distance 3), not the 3³ cube
    pred = gt | _cube((5, 12, 2), 6)  # a false positive larger than any miss
    (dhw, positive) = next_click(pred, _cube((2, 2, 2), 5))  # type: ignore[misc]
    assert not positive and dhw == (8, 15, 4)  # tie 6 of the 6³ cube's 8 central voxels (distance 3)
    assert next_click(gt, gt) is None


def test_ties_are_broken_as_the_script_seeds_them_and_the_image_border_is_background() -> None:
    gt = _cube((4, 4, 4), 2)  # every voxel of a 2³ cube has distance 1: 8 ties
    (dhw, positive) = next_click(np.zeros(SHAPE, bool), gt)  # type: ignore[misc]
    assert np.random.RandomState(42).choice(8) == 6  # C order: tie 6 is (1, 1, 0) of the cube
    assert dhw == (5, 5, 4) and positive
    slab = np.zeros(SHAPE, bool)
    slab[:3] = True  # touches the image's first slice: a slab 3 thick has its centre on slice 1
    (dhw, _) = next_click(np.zeros(SHAPE, bool), slab)  # type: ignore[misc]
    assert dhw[0] == 1


def _script_style_click(error_component: np.ndarray) -> tuple[int, ...]:
    """The challenge script's click, written from its description: the component cropped to its box, padded by 25%
    of the box (at least 1) with zeros, distance-transformed, pasted back; max-distance voxels, RandomState(42)."""
    coords = np.argwhere(error_component)
    lo, hi = coords.min(0), coords.max(0) + 1
    pad = np.maximum(((hi - lo) * 0.25).astype(int), 1)
    crop = np.zeros(tuple(hi - lo + 2 * pad), np.uint8)
    inner = tuple(slice(p, p + n) for p, n in zip(pad, hi - lo, strict=True))
    crop[inner] = error_component[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    full = np.zeros(error_component.shape)
    full[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = ndimage.distance_transform_edt(crop)[inner]
    ties = np.argwhere(full == full.max())
    return tuple(int(v) for v in ties[np.random.RandomState(42).choice(len(ties))])


def test_click_matches_the_script_style_reference_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        gt = ndimage.binary_dilation(rng.random(SHAPE) > 0.97, iterations=2)
        pred = ndimage.binary_dilation(rng.random(SHAPE) > 0.98, iterations=1)
        error = pred != gt
        comps, n = ndimage.label(error, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(comps.ravel())
        sizes[0] = 0
        expected = _script_style_click(comps == np.argmax(sizes))
        (dhw, positive) = next_click(pred, gt)  # type: ignore[misc]
        assert dhw == expected and positive == bool(gt[expected])


# ---------------------------------------------------------------------------------------------------- the scores
def test_nsd_is_monai_surface_dice_at_2mm_and_zero_when_dice_is_at_most_0_2() -> None:
    from monai.metrics import compute_surface_dice

    gt = _cube((3, 3, 3), 6)
    pred = _cube((4, 3, 5), 6)
    spacing = (2.5, 0.8, 0.7)  # (D, H, W) mm
    d = dice(pred, gt)
    ours = challenge_nsd(pred, gt, spacing, d)
    ref = compute_surface_dice(
        torch.from_numpy(pred)[None, None].float(),
        torch.from_numpy(gt)[None, None].float(),
        class_thresholds=[2.0],
        spacing=spacing,
        use_subvoxels=True,
        include_background=True,
    )
    assert 0.0 < ours < 1.0
    assert ours == pytest.approx(float(ref), abs=1e-6)
    assert challenge_nsd(gt, gt, spacing, 1.0) == 1.0
    assert challenge_nsd(pred, gt, spacing, 0.2) == 0.0  # Dice <= 0.2: counted 0, as scored


def test_auc_is_the_trapezoid_of_the_five_click_steps() -> None:
    values = [0.1, 0.5, 0.6, 0.7, 0.8, 0.9]  # box, then 5 clicks: the box's value does not count
    assert click_auc(values) == pytest.approx(0.55 + 0.65 + 0.75 + 0.85)
    assert click_auc(values) == pytest.approx(integrate.cumulative_trapezoid(values[-5:], np.arange(5))[-1])
    assert click_auc([1.0] * 6) == 4.0


# ---------------------------------------------------------------------------------------------------- one case
class ScriptedSession:
    """A stand-in with the session's API: ``box`` and each ``click`` give the next label map of ``maps``; ``calls``
    records (point (i, j, k), positive, lesion)."""

    def __init__(self, maps: list[np.ndarray]) -> None:
        self.maps, self.calls, self.current = list(maps), [], np.zeros(SHAPE, np.uint16)

    def box(self, box: object) -> None:
        self.calls.append(("box", box))
        self.current = self.maps.pop(0)

    def click(self, point: tuple, *, positive: bool, lesion: int | None) -> None:
        self.calls.append((point, positive, lesion))
        self.current = self.maps.pop(0)

    def label_map(self) -> np.ndarray:
        return self.current

    def lesions(self) -> list[SimpleNamespace]:
        ids = sorted(set(np.unique(self.current)) - {0})
        return [SimpleNamespace(id=int(i), bbox=(slice(0, 1),) * 3) for i in ids]


def _volumes(gt: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 2.0)) -> tuple[Volume, Volume]:
    ref = Volume(np.zeros(gt.shape, np.float32), spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return ref, ref.with_array(gt.astype(np.uint8) * 2)


def test_a_missed_lesion_opens_a_new_lesion_and_a_false_positive_refines_its_own() -> None:
    a, b, stray = _cube((2, 2, 2), 5), _cube((2, 14, 14), 3), _cube((8, 12, 2), 4)
    gt = a | b
    box_map = (a | stray).astype(np.uint16)  # lesion 1: A and a stray blob (64 voxels, larger than B's 27)
    after1 = a.astype(np.uint16)  # the negative click removed the stray blob
    after2 = after1 + 2 * b.astype(np.uint16)  # the positive click on B opened lesion 2
    fake = ScriptedSession([box_map, after1, after2])
    image, labels = _volumes(gt)
    res = case_cvpr25(None, image, labels, label=2, case="c", open_session=lambda _: fake)  # type: ignore[arg-type]
    assert res is not None
    (_, cbox), c1, c2 = fake.calls
    assert c1[1:] == (False, 1)  # negative, on lesion 1 (the label of its voxel)
    assert stray[c1[0][2], c1[0][1], c1[0][0]]
    assert c2 == ((15, 15, 3), True, None)  # B's centre (i, j, k), positive, a new lesion
    d0, d1 = dice(a | stray, gt), dice(a, gt)
    assert res.dsc == pytest.approx([d0, d1, 1.0, 1.0, 1.0, 1.0])
    assert res.nsd[2:] == [1.0] * 4
    assert res.dsc_auc == pytest.approx((d1 + 1) / 2 + 3.0)
    assert res.clicks == [(*c1[0], 0), (15, 15, 3, 1)]  # the clicks stop once the map is exact
    assert len(res.seconds) == 6 and res.seconds[3:] == [0.0, 0.0, 0.0]
    assert (cbox.lo[2], cbox.hi[2]) == (res.box.z_mid, res.box.z_mid)  # the 2D box on the middle slice
    summary = summarise_cvpr25([res, res])
    assert summary["dsc_auc"]["mean"] == pytest.approx(res.dsc_auc) and summary["n_cases"] == 2


def test_a_positive_click_refines_the_lesion_over_its_ground_truth_or_an_empty_one() -> None:
    a = _cube((2, 2, 2), 6)
    half = a.copy()
    half[:, :, 5:] = False
    fake = ScriptedSession([half.astype(np.uint16) * 3] + [a.astype(np.uint16) * 3] * 5)
    image, labels = _volumes(a)
    res = case_cvpr25(None, image, labels, label=2, open_session=lambda _: fake)  # type: ignore[arg-type]
    assert fake.calls[1][1:] == (True, 3)  # the click's GT lesion overlaps lesion 3 most
    assert res is not None and res.dsc[1:] == [1.0] * 5
    empty = ScriptedSession([np.zeros(SHAPE, np.uint16), a.astype(np.uint16)])
    empty.lesions = lambda: [SimpleNamespace(id=1, bbox=None)]  # type: ignore[method-assign]
    case_cvpr25(None, image, labels, label=2, open_session=lambda _: empty)  # type: ignore[arg-type]
    assert empty.calls[1][1:] == (True, 1)  # the box's lesion found nothing: the click grows it
    nothing = labels.with_array(np.zeros(SHAPE, np.uint8))
    assert case_cvpr25(None, image, nothing, label=2, open_session=lambda _: fake) is None  # type: ignore[arg-type]


def test_row_holds_the_challenge_numbers() -> None:
    r = CaseResult("c", 10, 0.01, challenge_box(_cube((1, 1, 1), 2), 0), [0.2, 0.5, 0.6, 0.7, 0.8, 0.9], [0.0] * 6)
    r.seconds = [0.5] * 6
    row = r.row()
    assert list(row)[:8] == ["case", "voxels", "volume_ml", "dsc_auc", "nsd_auc", "dsc_final", "nsd_final", "seconds"]
    assert (row["dsc_final"], row["seconds"], row["nsd_auc"]) == (0.9, 3.0, 0.0)


# ---------------------------------------------------------------------------------------------------- end to end
def _folder(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    ref = Volume(np.zeros((24, 40, 40), np.float32), (1.5, 1.5, 1.5), (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for cid, lo in (("c1", (9, 17, 17)), ("c2", (4, 6, 20))):
        img = rng.normal(0, 5, ref.spatial_shape).astype(np.float32)
        lab = np.zeros(ref.spatial_shape, np.uint8)
        lab[lo[0] : lo[0] + 6, lo[1] : lo[1] + 6, lo[2] : lo[2] + 6] = 2
        img[lab == 2] = 200.0
        write_image(img, tmp_path / "imagesTr" / f"{cid}_0000.nii.gz", reference=ref)
        write_image(lab, tmp_path / "labelsTr" / f"{cid}.nii.gz", reference=ref)
    write_image(img, tmp_path / "imagesTr" / "c3_0000.nii.gz", reference=ref)
    write_image(lab * 0, tmp_path / "labelsTr" / "c3.nii.gz", reference=ref)
    return tmp_path / "imagesTr", tmp_path / "labelsTr"


def test_cli_cvpr25_with_the_tiny_model_prints_and_writes_per_case_and_overall(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images, labels = _folder(tmp_path)
    outs = {}
    for name in ("a", "b"):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            argv = ["evaluate-clicks", str(images), str(labels), "--out", str(tmp_path / name), "--preset", "tiny"]
            assert main([*argv, "--label", "2", "--protocol", "cvpr25"]) == 0
        outs[name] = json.loads((tmp_path / name / "cvpr25.json").read_text())
    printed = capsys.readouterr().out
    assert "c1: DSC_AUC" in printed and "c2: DSC_AUC" in printed and "over 2 case(s)" in printed
    assert "final DSC" in printed and "cases without the target label (not scored): 1" in printed
    cases = outs["a"]["cases"]
    assert [c["case"] for c in cases] == ["c1", "c2"] and outs["a"]["settings"]["lesion_free_cases"] == ["c3"]
    for c in cases:
        dsc = [c[f"dsc_{k}"] for k in range(1, 7)]
        nsd = [c[f"nsd_{k}"] for k in range(1, 7)]
        assert c["dsc_auc"] == pytest.approx(click_auc(dsc)) and c["nsd_auc"] == pytest.approx(click_auc(nsd))
        assert all(n == 0.0 for d, n in zip(dsc, nsd, strict=True) if d <= 0.2)
        assert len(c["seconds_per_step"]) == 6 and c["seconds"] == pytest.approx(sum(c["seconds_per_step"]))
    summary = outs["a"]["summary"]
    assert summary["dsc_auc"]["mean"] == pytest.approx(np.mean([c["dsc_auc"] for c in cases]))
    strip = [{k: v for k, v in c.items() if "seconds" not in k} for c in cases]
    assert strip == [{k: v for k, v in c.items() if "seconds" not in k} for c in outs["b"]["cases"]]
    header = (tmp_path / "a" / "cvpr25.csv").read_text().splitlines()[0]
    assert header.startswith("case,voxels,volume_ml,dsc_auc,nsd_auc,dsc_final,nsd_final,seconds,dsc_1")
    assert not (tmp_path / "a" / "clicks.csv").exists()


def test_cli_refuses_options_of_the_other_protocol(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, labels = _folder(tmp_path)
    base = ["evaluate-clicks", str(images), str(labels), "--out", str(tmp_path / "o")]
    assert main([*base, "--protocol", "cvpr25", "--clicks", "3"]) == 2
    assert main([*base, "--box", "3d"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[0].startswith("lesionsam evaluate-clicks: error: --clicks and --click-mode are for")
    assert err[1] == "lesionsam evaluate-clicks: error: --box is for --protocol cvpr25"
    assert not (tmp_path / "o").exists()
