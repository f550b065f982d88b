"""The interactive protocol: hand-computed click curves, AUC and NoC; a tiny seeded model end to end."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import lesionsam.cli.evaluate  # noqa: F401  (registers the sub-commands)
from lesionsam.cli.main import main
from lesionsam.data.io import Volume, write_image
from lesionsam.data.transforms import PreprocessConfig
from lesionsam.evaluation.dice import dice
from lesionsam.evaluation.interactive import (
    LesionCurve,
    case_click_curves,
    clicks_to_reach,
    curve_auc,
    lesion_click_curve,
    summarise_curves,
)
from lesionsam.inference.predictor import Predictor
from lesionsam.inference.session import InteractiveSession
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


class OverSegmenter:
    """A stand-in with the interactive session's API (``click`` and its update, ``label_map``, ``reset``): the lesion
    plus a stray blob until a negative click; ``calls`` holds the lesion's clicks so far after each click."""

    def __init__(self, gt: np.ndarray, extra: np.ndarray) -> None:
        self.gt, self.extra, self.calls = gt, extra, []
        self.reset()

    def reset(self) -> None:
        self.points: list[np.ndarray] = []
        self.labels: list[int] = []

    def click(self, point: tuple, *, positive: bool = True, lesion: int | None = None) -> SimpleNamespace:
        if lesion is None:
            self.reset()
        self.points.append(np.asarray(point, dtype=float))
        self.labels.append(int(positive))
        self.calls.append((np.stack(self.points), np.asarray(self.labels)))
        labels = self.label_map()  # an update of the whole map, as the session's covers what changed
        return SimpleNamespace(lesion=1, region=tuple(slice(0, n) for n in labels.shape), labels=labels)

    def label_map(self) -> np.ndarray:
        out = self.gt | (self.extra if 0 not in self.labels else np.zeros_like(self.extra))
        return out.astype(np.uint16)


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


class BallAroundClicks(StandInModel):
    """Known, never exact masks: a ball of radius 4 voxels around the last positive click, minus a ball of radius 3
    around every negative click (so a 6³ cube always has errors of both kinds). ``encode`` counts its calls."""

    accepted_prompts = frozenset({"points", "mask"})

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        grid = np.stack(np.meshgrid(*(np.arange(self.img_size),) * 3, indexing="ij"), axis=-1)
        keep = np.zeros((image.shape[0], 1, *(self.img_size,) * 3), dtype=bool)
        for b in range(image.shape[0]):
            pts, labs = prompts.points[b].numpy(), prompts.labels[b].numpy()
            keep[b, 0] = ((grid - pts[labs == 1][-1]) ** 2).sum(-1) <= 16
            for neg in pts[labs == 0]:
                keep[b, 0] &= ((grid - neg) ** 2).sum(-1) > 9
        logits = torch.where(torch.from_numpy(keep), 10.0, -10.0)
        low = F.interpolate(logits, scale_factor=0.25, mode="trilinear", align_corners=False)
        return SegOutput(low_res_logits=low, logits=logits, iou=torch.ones(image.shape[0], 1))


def _per_click_predictor_curve(
    predictor: Predictor, gt: np.ndarray, *, n_clicks: int, mode: str, rng: np.random.Generator
) -> tuple[list[float], list[tuple[int, int, int, int]]]:
    """The protocol as it was before the session: ``predictor.predict`` with clicks 1…k after every click."""
    from lesionsam.data.clicks import first_click, next_click
    from lesionsam.evaluation.dice import dice
    from lesionsam.inference.predictor import LesionClicks

    dhw, label = first_click(gt, mode=mode, rng=rng)
    points, labels = [dhw[::-1].astype(float)], [label]
    values: list[float] = []
    while len(values) < n_clicks:
        pred = predictor.predict([LesionClicks(points=np.stack(points), labels=np.asarray(labels))]).labels > 0
        values.append(dice(pred, gt))
        if len(values) == n_clicks:
            break
        dhw, label = next_click(pred, gt, mode=mode, rng=rng)
        if label < 0:
            values += [values[-1]] * (n_clicks - len(values))
            break
        points.append(dhw[::-1].astype(float))
        labels.append(label)
    clicks = [(int(p[0]), int(p[1]), int(p[2]), int(lab)) for p, lab in zip(points, labels, strict=True)]
    return values, clicks[: len(values)]


@pytest.mark.parametrize(
    ("model", "mode"), [(BallAroundClicks, "random"), (BallAroundClicks, "center"), (SlabThenWhole, "center")]
)
def test_session_curves_equal_the_per_click_predictor_lesion_by_lesion(model: type, mode: str) -> None:
    """Two lesions in one case: each curve equals clicking that lesion alone through ``predictor.predict`` (so the
    first lesion's mask does not count in the second's Dice), click for click and Dice for Dice."""
    image, labels = _case()
    lab = labels.array.copy()
    lab[2:5, 2:5, 2:5] = 2
    arr = image.array.copy()
    arr[2:5, 2:5, 2:5] = 200.0
    image, labels = image.with_array(arr), labels.with_array(lab)
    predictor = Predictor(model(), preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)))
    curves = case_click_curves(predictor, image, labels, label=2, n_clicks=6, mode=mode, seed=4, case="c")
    assert len(curves) == 2
    from lesionsam.evaluation.interactive import _seed_for
    from lesionsam.utils.components import label_lesions

    comps, _ = label_lesions(lab == 2)
    predictor.set_image(image)
    for curve in curves:
        values, clicks = _per_click_predictor_curve(
            predictor, comps == curve.lesion, n_clicks=6, mode=mode, rng=_seed_for(4, "c", curve.lesion)
        )
        assert curve.dice == values and curve.clicks == clicks
    assert any(len(set(c.dice)) > 1 for c in curves)  # real, changing masks were compared
    if model is BallAroundClicks:
        assert {c[3] for c in curves[1].clicks} == {0, 1}  # positive and negative clicks were compared


def test_ten_clicks_in_one_window_encode_the_image_once() -> None:
    image, labels = _case()
    predictor = Predictor(BallAroundClicks(), preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)))
    (curve,) = case_click_curves(predictor, image, labels, label=2, n_clicks=10, mode="random", case="c")
    assert len(curve.clicks) == 10 and curve.dice[-1] < 1.0  # ten clicks, never exact
    assert predictor.model.encodes == 1  # the window's embedding is cached: the decoder alone refines
    predictor.model.encodes = 0
    predictor.set_image(image)
    from lesionsam.evaluation.interactive import _seed_for

    values, _ = _per_click_predictor_curve(
        predictor, labels.array == 2, n_clicks=10, mode="random", rng=_seed_for(0, "c", 1)
    )
    assert values == curve.dice and predictor.model.encodes == 10  # one encode per click without the session


def test_each_clicks_dice_is_that_of_the_sessions_whole_label_map() -> None:
    # The curve keeps the prediction from the session's updates and counts the Dice on the box they touched; the
    # reference: the whole label map of the session after each click, scored on the whole volume. A tiny model with
    # seeded random weights floods far beyond the lesion (windows grow) and shrinks click by click.
    image, labels = _case()
    torch.manual_seed(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        predictor = Predictor.from_checkpoint(None, preset="tiny")
    session = InteractiveSession(predictor, image)
    maps: list[np.ndarray] = []
    click = session.click

    def recorded(*args: Any, **kwargs: Any) -> Any:
        update = click(*args, **kwargs)
        maps.append(session.label_map() > 0)
        return update

    session.click = recorded  # type: ignore[method-assign]
    gt = labels.array == 2
    values, _ = lesion_click_curve(session, gt, n_clicks=5, rng=np.random.default_rng(0))
    sizes = [int(m.sum()) for m in maps]
    assert len(sizes) == 5 and min(sizes) > 20 * gt.sum() and sizes[-1] < sizes[0]  # a flood that shrinks
    assert values[: len(maps)] == [dice(m, gt) for m in maps]
