"""The interactive protocol: hand-computed click curves, AUC and NoC; a tiny seeded model end to end."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import lesionsam.cli.evaluate  # noqa: F401  (registers the sub-commands)
from lesionsam.cli.main import main
from lesionsam.data.io import Volume, write_image
from lesionsam.data.transforms import PreprocessConfig
from lesionsam.evaluation.interactive import (
    LesionCurve,
    case_click_curves,
    clicks_to_reach,
    curve_auc,
    lesion_click_curve,
    summarise_curves,
)
from lesionsam.inference.predictor import Predictor
from lesionsam.models import Prompts, SegOutput
from lesionsam.workflows.clicks import evaluate_clicks
from stand_ins import StandInModel

SHAPE = (24, 40, 40)
CUBE = (slice(9, 15), slice(17, 23), slice(17, 23))  # a 6³ lesion


def test_auc_and_noc_hand_computed() -> None:
    assert curve_auc([0.5, 0.7, 0.9]) == pytest.approx(((0.5 + 0.7) / 2 + (0.7 + 0.9) / 2) / 2)
    assert curve_auc([0.42]) == 0.42
    assert clicks_to_reach([0.5, 0.85, 0.95], 0.8) == (2, True)
    assert clicks_to_reach([0.5, 0.85, 0.95], 0.9) == (3, True)
    assert clicks_to_reach([0.5, 0.6], 0.9) == (2, False)
    curves = [LesionCurve("a", 1, 10, 0.01, [0.5, 0.85, 0.95]), LesionCurve("b", 1, 10, 0.01, [0.9, 0.9, 0.9])]
    s = summarise_curves(curves)
    assert s["dice_mean"] == pytest.approx([0.7, 0.875, 0.925])
    assert s["noc80"] == {"mean": 1.5, "failed": 0}
    assert s["noc90"] == {"mean": 2.0, "failed": 0}
    assert s["auc_mean"] == pytest.approx((curve_auc([0.5, 0.85, 0.95]) + 0.9) / 2)


class _Result:
    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels


class OverSegmenter:
    """A stand-in with the predictor's ``predict`` API: the lesion plus a stray blob until a negative click."""

    def __init__(self, gt: np.ndarray, extra: np.ndarray) -> None:
        self.gt, self.extra, self.calls = gt, extra, []

    def predict(self, lesions: list) -> _Result:
        les = lesions[0]
        self.calls.append((les.points.copy(), les.labels.copy()))
        out = self.gt | (self.extra if not (les.labels == 0).any() else np.zeros_like(self.extra))
        return _Result(out.astype(np.uint16))


def test_a_false_positive_gets_a_negative_click_and_clicks_accumulate() -> None:
    gt = np.zeros(SHAPE, bool)
    gt[CUBE] = True  # 216 voxels
    extra = np.zeros(SHAPE, bool)
    extra[2:5, 2:5, 2:5] = True  # 27 voxels
    fake = OverSegmenter(gt, extra)
    values, clicks = lesion_click_curve(fake, gt, n_clicks=4, mode="center")
    assert values == pytest.approx([2 * 216 / (2 * 216 + 27), 1.0, 1.0, 1.0])
    assert [c[3] for c in clicks] == [1, 0]  # positive inside, then negative on the false positive
    i, j, k, _ = clicks[1]
    assert extra[k, j, i]  # ITK (i, j, k) of the array voxel (k, j, i)
    assert len(fake.calls) == 2 and len(fake.calls[1][0]) == 2  # click 2 was decoded with click 1 before it


class SlabThenWhole(StandInModel):
    """Known behaviour: bright region of the last positive click, only the 3 slices around the click (first axis)
    while there is one positive click, all of it from the second positive click on."""

    accepted_prompts = frozenset({"points", "mask"})

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        bright = (image > 1.0).numpy()
        keep = np.zeros_like(bright)
        for b in range(image.shape[0]):
            comps, _ = ndimage.label(bright[b, 0])
            pos = prompts.points[b][prompts.labels[b] == 1].round().long()
            d, h, w = pos[-1].tolist()
            region = comps == comps[d, h, w]
            if len(pos) == 1:
                slab = np.zeros_like(region)
                slab[max(d - 1, 0) : d + 2] = True
                region &= slab
            keep[b, 0] = region
        logits = torch.where(torch.from_numpy(keep), 10.0, -10.0)
        low = F.interpolate(logits, scale_factor=0.25, mode="trilinear", align_corners=False)
        return SegOutput(low_res_logits=low, logits=logits, iou=torch.ones(image.shape[0], 1))


def _case() -> tuple[Volume, Volume]:
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 5, SHAPE).astype(np.float32)
    arr[CUBE] = 200.0
    lab = np.zeros(SHAPE, np.uint8)
    lab[CUBE] = 2
    ref = Volume(arr, (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return ref, ref.with_array(lab)


def test_click_curve_through_the_predictor_hand_computed() -> None:
    image, labels = _case()
    predictor = Predictor(SlabThenWhole(), preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)))
    (curve,) = case_click_curves(predictor, image, labels, label=2, n_clicks=4, mode="center", case="c")
    # click 1 at the cube's centre: a 3 × 6 × 6 slab of the 6³ cube, Dice 2·108 / (108 + 216) = 2/3; click 2 on
    # the larger missed part (positive): the whole cube, Dice 1; then nothing is left to click on.
    assert curve.dice == pytest.approx([2 / 3, 1.0, 1.0, 1.0])
    assert [c[3] for c in curve.clicks] == [1, 1]
    assert curve.auc == pytest.approx(((2 / 3 + 1) / 2 + 1 + 1) / 3)
    assert curve.noc(0.8) == (2, True) and curve.noc(0.9) == (2, True)
    assert (curve.voxels, curve.volume_ml) == (216, pytest.approx(216 * 1.5**3 / 1000))


def _folder(tmp_path: Path) -> tuple[Path, Path]:
    image, labels = _case()
    lab2 = labels.array.copy()
    lab2[2:5, 2:5, 2:5] = 2  # a second, small lesion in the second case
    img2 = image.array.copy()
    img2[2:5, 2:5, 2:5] = 200.0
    for cid, img, lab in (("c1", image.array, labels.array), ("c2", img2, lab2), ("c3", image.array, lab2 * 0)):
        write_image(img, tmp_path / "imagesTr" / f"{cid}_0000.nii.gz", reference=image)
        write_image(lab, tmp_path / "labelsTr" / f"{cid}.nii.gz", reference=image)
    return tmp_path / "imagesTr", tmp_path / "labelsTr"


def test_tiny_seeded_model_end_to_end_is_reproducible(tmp_path: Path) -> None:
    images, labels = _folder(tmp_path)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.manual_seed(0)  # the tiny model's random weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = evaluate_clicks(
                images, labels, out=tmp_path / name, checkpoint=None, preset="tiny", label=2, n_clicks=3, seed=seed
            )
        runs[name] = json.loads((tmp_path / name / "clicks.json").read_text())
        assert res.summary["n_lesions"] == 3 and res.lesion_free == ["c3"]
    lesions = runs["a"]["lesions"]
    assert [(x["case"], x["lesion"], x["voxels"]) for x in lesions] == [("c1", 1, 216), ("c2", 1, 27), ("c2", 2, 216)]
    for x in lesions:
        dice = [x[f"dice_{k}"] for k in (1, 2, 3)]
        assert all(0.0 <= v <= 1.0 for v in dice)
        assert x["auc"] == pytest.approx(curve_auc(dice))
        i, j, k, lab = x["clicks"][0]
        assert lab == 1  # the first click is inside its lesion
    assert runs["a"]["lesions"] == runs["b"]["lesions"]  # same seeds, same curves
    assert [x["clicks"] for x in runs["a"]["lesions"]] != [x["clicks"] for x in runs["c"]["lesions"]]
    header = (tmp_path / "a" / "clicks.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["case", "lesion", "voxels", "volume_ml", "dice_1", "dice_2", "dice_3"]
    assert runs["a"]["summary"]["n_clicks"] == 3


def test_cli_refuses_bad_options_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, labels = _folder(tmp_path)
    code = main(["evaluate-clicks", str(images), str(labels), "--out", str(tmp_path / "o"), "--clicks", "0"])
    assert code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["lesionsam evaluate-clicks: error: --clicks must be >= 1, got 0"]
    assert not (tmp_path / "o").exists()
