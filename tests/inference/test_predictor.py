"""The predictor: clicks land where the user clicked, lesions larger than a crop are covered, and the
mask comes back on the input's exact grid."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from lesionsam.data.io import ImageIOError, Volume, read_image, write_image
from lesionsam.data.transforms import PreprocessConfig
from lesionsam.inference.predictor import LesionClicks, Predictor
from lesionsam.inference.whole_volume import WholeVolume
from lesionsam.models import Prompts, SegOutput
from lesionsam.workflows.predict import PredictRequest, predict
from stand_ins import StandInModel, oblique_volume


def predict_of(image, out, *, predictor=None, **options):  # noqa: ANN001, ANN003, ANN201
    """The predict workflow called with flat options (as the command line gives them)."""
    return predict(PredictRequest.of(image, out, **options), predictor=predictor)


class ThresholdModel(StandInModel):
    """A stand-in segmenter with known behaviour: lesion = voxels brighter than 1 (normalised units),
    restricted to the connected bright region containing the last positive click, or, with no click
    inside a bright region, to everything bright. It lets the tests check the predictor's geometry and
    window logic exactly, independently of learned weights."""

    accepted_prompts = frozenset({"points", "mask"})

    def __init__(self, size: int = 32) -> None:
        super().__init__(size)
        self.calls = 0

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        self.calls += 1
        bright = (image > 1.0).numpy()
        keep = np.zeros_like(bright)
        for b in range(image.shape[0]):
            comps, _ = ndimage.label(bright[b, 0])
            click = prompts.points[b][prompts.labels[b] == 1][-1].round().long().tolist()
            comp = comps[tuple(click)]
            keep[b, 0] = comps == comp if comp else bright[b, 0]
        logits = torch.where(torch.from_numpy(keep), 10.0, -10.0)
        low = F.interpolate(logits, scale_factor=0.25, mode="trilinear", align_corners=False)
        return SegOutput(low_res_logits=low, logits=logits, iou=torch.ones(image.shape[0], 1))


def _predictor(size: int = 32, max_windows: int = 8) -> Predictor:
    cfg = PreprocessConfig(spacing=(1.5, 1.5, 1.5))
    return Predictor(ThresholdModel(size), preprocess=cfg, max_windows=max_windows)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_mask_lands_on_the_clicked_lesion_on_the_original_grid() -> None:
    image, label = oblique_volume()
    pred = _predictor()
    pred.set_image(image)
    out = pred.predict([LesionClicks(points=[[30, 35, 15]], labels=[1])])  # (i, j, k) = (w, h, d)
    assert out.labels.shape == image.spatial_shape and out.labels.dtype == np.uint16
    assert _dice(out.labels, label.array) > 0.85


def test_world_clicks_equal_voxel_clicks() -> None:
    image, _ = oblique_volume()
    pred = _predictor()
    pred.set_image(image)
    ijk = np.array([[30.0, 35.0, 15.0]])
    voxel = pred.predict([LesionClicks(points=ijk, labels=[1])]).labels
    world = pred.predict([LesionClicks(points=image.index_to_world(ijk), labels=[1])], world=True).labels
    np.testing.assert_array_equal(voxel, world)


def test_lesion_larger_than_one_crop_is_covered_by_growing_windows() -> None:
    # A 36 mm-radius blob at 1.5 mm model spacing spans 48 voxels: more than one 32³ crop.
    image, label = oblique_volume(shape=(50, 100, 100), spacing=(1.0, 1.0, 2.0), blobs=((25, 50, 50, 36),))
    grown = _predictor(max_windows=16)
    grown.set_image(image)
    full = grown.predict([LesionClicks(points=[[50, 50, 25]], labels=[1])])
    single = _predictor(max_windows=1)
    single.set_image(image)
    one = single.predict([LesionClicks(points=[[50, 50, 25]], labels=[1])])
    assert full.windows[1] > 1 and one.windows[1] == 1
    assert _dice(full.labels, label.array) > 0.97
    assert _dice(one.labels, label.array) < 0.8


def test_several_lesions_get_their_own_values() -> None:
    image, label = oblique_volume(blobs=((10, 20, 15, 5), (20, 50, 45, 6)))
    pred = _predictor()
    pred.set_image(image)
    out = pred.predict(
        [
            LesionClicks(points=[[15, 20, 10]], labels=[1], lesion_id=1),
            LesionClicks(points=[[45, 50, 20]], labels=[1], lesion_id=2),
        ],
        probabilities=True,
    )
    assert set(np.unique(out.labels)) == {0, 1, 2}
    assert _dice(out.labels == 1, label.array == 1) > 0.8 and _dice(out.labels == 2, label.array == 2) > 0.8
    assert out.probabilities is not None and out.probabilities.shape == image.spatial_shape


def test_click_outside_the_image_is_refused() -> None:
    image, _ = oblique_volume()
    pred = _predictor()
    pred.set_image(image)
    with pytest.raises(ValueError, match=r"click \[60.0, 10.0, 3.0\] .* outside the image of size \(60, 70, 30\)"):
        pred.predict([LesionClicks(points=[[60, 10, 3]], labels=[1])])


def test_lesion_clicks_validation() -> None:
    with pytest.raises(ValueError, match="at least one positive"):
        LesionClicks(points=[[1, 2, 3]], labels=[0])
    with pytest.raises(ValueError, match="1 \\(positive\\) or 0"):
        LesionClicks(points=[[1, 2, 3]], labels=[2])


# ------------------------------------------------------------------------------------------- workflow on files
def _write_case(tmp_path: Path, suffix: str = ".nrrd") -> tuple[Path, Path, Volume]:
    image, label = oblique_volume()
    img = write_image(image.array.astype(np.int16), tmp_path / f"case{suffix}", reference=image)
    lab = write_image(label.array * 2, tmp_path / f"label{suffix}", reference=image)  # lesion value 2
    return img, lab, image


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_predict_file_writes_mask_with_the_input_geometry(tmp_path: Path, suffix: str) -> None:
    img, lab, image = _write_case(tmp_path, suffix)
    out = tmp_path / "out" / f"mask{suffix}"
    cases = predict_of(img, out, clicks_from=lab, label=2, predictor=_predictor(), probabilities=tmp_path / "p.nii.gz")
    mask = read_image(out)
    assert mask.same_geometry(read_image(img), atol=1e-6)
    assert cases[0].lesions == 1 and _dice(mask.array, read_image(lab).array) > 0.85
    assert read_image(tmp_path / "p.nii.gz").array.dtype == np.float32


def test_predict_from_prompt_file_with_two_lesions(tmp_path: Path) -> None:
    image, _ = oblique_volume(blobs=((10, 20, 15, 5), (20, 50, 45, 6)))
    img = write_image(image.array, tmp_path / "img.nii.gz", reference=image)
    world = image.index_to_world([45.0, 50.0, 20.0]).tolist()
    prompts = tmp_path / "p.json"
    prompts.write_text(
        json.dumps({"lesions": [{"id": 3, "points": [[15, 20, 10]]}, {"id": 7, "points": [[45, 50, 20]]}]})
    )
    predict_of(img, tmp_path / "m.nii.gz", prompts=prompts, predictor=_predictor())
    assert set(np.unique(read_image(tmp_path / "m.nii.gz").array)) == {0, 3, 7}
    prompts.write_text(json.dumps({"coordinates": "world", "lesions": [{"points": [world]}]}))
    predict_of(img, tmp_path / "w.nii.gz", prompts=prompts, predictor=_predictor(), binary=True)
    assert set(np.unique(read_image(tmp_path / "w.nii.gz").array)) == {0, 1}


def test_unwritable_output_fails_before_any_work(tmp_path: Path) -> None:
    img, lab, _ = _write_case(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model = ThresholdModel()
    pred = Predictor(model)
    with pytest.raises(ValueError, match="cannot create it because .*file is a file"):
        predict_of(img, blocker / "sub" / "m.nii.gz", clicks_from=lab, label=2, predictor=pred)
    assert model.calls == 0


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", "NaN or infinite"),
        ("constant", "constant"),
        ("absent_label", r"label value 5 not found; values present: \[0, 2\]"),
        ("geometry", "different geometry"),
    ],
)
def test_bad_inputs_are_refused_and_nothing_is_written(tmp_path: Path, kind: str, message: str) -> None:
    img, lab, image = _write_case(tmp_path)
    label = 2
    if kind == "nan":
        arr = image.array.copy()
        arr[3, 3, 3] = np.nan
        img = write_image(arr, tmp_path / "nan.nrrd", reference=image)
    elif kind == "constant":
        img = write_image(np.zeros_like(image.array), tmp_path / "c.nrrd", reference=image)
    elif kind == "absent_label":
        label = 5
    elif kind == "geometry":
        moved = Volume(image.array, image.spacing, (0.0, 0.0, 0.0), image.direction)
        lab = write_image(read_image(lab).array, tmp_path / "moved.nrrd", reference=moved)
    out = tmp_path / "out"
    with pytest.raises((ValueError, ImageIOError), match=message):
        predict_of(img, out / "m.nii.gz", clicks_from=lab, label=label, predictor=_predictor())
    assert not list(out.glob("*")) if out.exists() else True


def test_folder_prediction(tmp_path: Path) -> None:
    image, label = oblique_volume()
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for n in range(2):
        write_image(image.array, tmp_path / "img" / f"case_{n}.nii.gz", reference=image)
        write_image(label.array, tmp_path / "lab" / f"case_{n}.nii.gz", reference=image)
    cases = predict_of(
        tmp_path / "img", tmp_path / "pred", clicks_from=tmp_path / "lab", label=1, predictor=_predictor()
    )
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["case_0.nii.gz", "case_1.nii.gz"]
    assert len(cases) == 2


def test_real_tiny_model_runs_end_to_end(tmp_path: Path) -> None:
    img, lab, _ = _write_case(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = Predictor.from_checkpoint(None, preset="tiny", max_windows=2)
    predict_of(img, tmp_path / "m.nii.gz", clicks_from=lab, label=2, predictor=pred)
    assert read_image(tmp_path / "m.nii.gz").same_geometry(read_image(img), atol=1e-6)


class TextModel(ThresholdModel):
    """Stand-in text-referred model: "bright ..." segments voxels above 1, "dark ..." voxels in (-30, -1)."""

    required_prompts = frozenset({"text"})
    accepted_prompts = frozenset({"text", "points", "mask"})

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        self.calls += 1
        bright = torch.tensor([t.startswith("bright") for t in prompts.text])[:, None, None, None, None]
        keep = torch.where(bright, image > 1.0, (image < -1.0) & (image > -30.0))
        logits = torch.where(keep, 10.0, -10.0)
        low = F.interpolate(logits, scale_factor=0.25, mode="trilinear", align_corners=False)
        return SegOutput(low_res_logits=low, logits=logits, iou=torch.ones(image.shape[0], 1))


def test_text_alone_searches_the_whole_volume_and_selects_by_text(tmp_path: Path) -> None:
    image, _ = oblique_volume(shape=(40, 80, 70), blobs=((12, 25, 20, 6), (28, 55, 50, 7)))
    arr = image.array.copy()
    dd, hh, ww = np.meshgrid(*(np.arange(n) for n in arr.shape), indexing="ij")
    dark = ((dd - 28) * 2.0) ** 2 + ((hh - 55) * 0.9) ** 2 + ((ww - 50) * 0.8) ** 2 < 7.0**2
    arr[dark] = -200.0  # the second blob becomes dark
    image = image.with_array(arr)
    bright = image.with_array(((dd - 12) * 2.0) ** 2 + ((hh - 25) * 0.9) ** 2 + ((ww - 20) * 0.8) ** 2 < 6.0**2)
    model = TextModel()
    pred = Predictor(model, preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)))
    pred.set_image(image)
    out_bright = WholeVolume(pred).predict_text("bright lesion")
    out_dark = WholeVolume(pred).predict_text("dark lesion")
    assert _dice(out_bright.labels, bright.array) > 0.85 and _dice(out_dark.labels, dark) > 0.85
    assert set(np.unique(out_bright.labels)) == {0, 1}
    with pytest.raises(ValueError, match="needs a text prompt"):
        pred.predict([LesionClicks(points=[[20, 25, 12]], labels=[1])])
    img = write_image(arr, tmp_path / "img.nii.gz", reference=image)
    predict_of(img, tmp_path / "m.nii.gz", text="dark lesion", predictor=pred)
    assert _dice(read_image(tmp_path / "m.nii.gz").array, dark) > 0.85
    with pytest.raises(ValueError, match="exactly one of"):
        predict_of(img, tmp_path / "n.nii.gz", predictor=pred)
    with pytest.raises(ValueError, match="does not take text"):
        plain = _predictor()
        plain.set_image(image)
        plain.predict([LesionClicks(points=[[20, 25, 12]], labels=[1])], text="bright")


class OverlappingTextModel(TextModel):
    """Stand-in whose "tumour" text also fires on the dark blob, weaker than "cyst" does: "...tumour" logits
    +2 on bright voxels, +1 on dark ones; "...cyst" +3 on dark voxels; -10 elsewhere. Encoding is counted."""

    def decode(self, encoded: torch.Tensor, prompts: Prompts, *, multimask_output: bool = False) -> SegOutput:
        self.calls += 1
        bright, dark = encoded > 1.0, (encoded < -1.0) & (encoded > -30.0)
        rows = []
        for b, text in enumerate(prompts.text):
            if text.endswith("tumour"):
                rows.append(torch.where(bright[b], 2.0, torch.where(dark[b], 1.0, -10.0)))
            else:
                rows.append(torch.where(dark[b], 3.0, -10.0))
        logits = torch.stack(rows)
        low = F.interpolate(logits, scale_factor=0.25, mode="trilinear", align_corners=False)
        return SegOutput(low_res_logits=low, logits=logits, iou=torch.ones(encoded.shape[0], 1))

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        return self.decode(self.encode(image), prompts)


def test_text_alone_naming_a_trained_class_is_decided_against_the_other_classes(tmp_path: Path) -> None:
    """ "liver tumour" alone also fires (weaker) on cysts; decided against "liver cyst" it keeps only its class,
    while a free text or compete=False (``--no-compete``) threshold the text's own logits."""
    image, bright, dark = _bright_and_dark()
    model = OverlappingTextModel()
    texts = {2: ["liver tumour", "tumour"], 4: ["liver cyst", "hepatic cyst"]}
    pred = Predictor(model, preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)), class_texts=texts)
    assert WholeVolume(pred).competitors("Liver  TUMOUR") == ("liver cyst",)
    assert WholeVolume(pred).competitors("hepatic cyst") == ("liver tumour",)
    assert WholeVolume(pred).competitors("kidney tumour") == ()  # not a trained class: nothing to decide against
    pred.set_image(image)
    plain = WholeVolume(pred).predict_text("liver tumour", compete=False)
    assert plain.competitors == () and _dice(plain.labels, bright | dark) > 0.85
    model.encodes = model.calls = 0
    tumour = WholeVolume(pred).predict_text("liver tumour")
    assert tumour.competitors == ("liver cyst",)
    assert model.calls == 2 * model.encodes  # each window encoded once, decoded with both texts
    assert _dice(tumour.labels, bright) > 0.85 and not (tumour.labels[dark] > 0).any()
    cyst = WholeVolume(pred).predict_text("hepatic cyst")
    assert _dice(cyst.labels, dark) > 0.85 and not (cyst.labels[bright] > 0).any()
    free = WholeVolume(pred).predict_text("kidney tumour")
    assert free.competitors == () and np.array_equal(free.labels > 0, plain.labels > 0)
    # Through the workflow: decided by default; compete=False thresholds the text's own mask.
    img = write_image(image.array, tmp_path / "img.nii.gz", reference=image)
    cases = predict_of(img, tmp_path / "t.nii.gz", text="liver tumour", predictor=pred)
    assert cases[0].lesions == 1 and _dice(read_image(tmp_path / "t.nii.gz").array, bright) > 0.85
    cases = predict_of(img, tmp_path / "p.nii.gz", text="liver tumour", compete=False, predictor=pred)
    assert cases[0].lesions == 2 and _dice(read_image(tmp_path / "p.nii.gz").array, bright | dark) > 0.85


class RegionTextModel(OverlappingTextModel):
    """OverlappingTextModel with a region classifier: a region is "...tumour" when its mean (normalised)
    intensity is positive, "...cyst" otherwise; it records the texts and region sizes it scores."""

    scores_regions = True

    def __init__(self) -> None:
        super().__init__()
        self.scored: list[tuple[list[str], int]] = []

    def region_scores(self, encoded: torch.Tensor, crop: int, masks: torch.Tensor, texts: list[str]) -> torch.Tensor:
        m = masks[:, 0].float()
        mean = (encoded[crop, 0] * m).sum((1, 2, 3)) / m.sum((1, 2, 3))
        self.scored += [(list(texts), int(n)) for n in m.sum((1, 2, 3)).tolist()]
        return torch.stack([mean if t.endswith("tumour") else -mean for t in texts], dim=1)


def test_text_alone_with_a_region_classifier_decides_lesion_by_lesion() -> None:
    """The text's own mask finds both blobs; each component is scored once, in a window centred on it, against
    the text and its competitor, and only the ones its class wins are kept (probabilities too)."""
    image, bright, dark = _bright_and_dark()
    model = RegionTextModel()
    texts = {2: ["liver tumour"], 4: ["liver cyst"]}
    pred = Predictor(model, preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)), class_texts=texts)
    pred.set_image(image)
    tumour = WholeVolume(pred).predict_text("liver tumour", probabilities=True)
    assert [t for t, _ in model.scored] == [["liver tumour", "liver cyst"]] * 2  # two components, one decision each
    assert all(n > 50 for _, n in model.scored)
    assert _dice(tumour.labels, bright) > 0.85 and not (tumour.labels[dark] > 0).any()
    assert tumour.probabilities is not None and tumour.probabilities[dark].max() == 0.0
    cyst = WholeVolume(pred).predict_text("liver cyst")
    assert _dice(cyst.labels, dark) > 0.85 and not (cyst.labels[bright] > 0).any()
    model.scored.clear()
    plain = WholeVolume(pred).predict_text("liver tumour", compete=False)
    assert model.scored == [] and _dice(plain.labels, bright | dark) > 0.85


class AutoModel(StandInModel):
    """A prompt-free stand-in with known behaviour: class 1 = voxels brighter than 1, class 2 = darker than −1
    (normalised units), as (B, 3, S³) logits."""

    prompt_free = True

    @property
    def num_classes(self) -> int:
        return 2

    def forward(self, image: torch.Tensor, prompts: Prompts | None = None) -> SegOutput:
        self.check_prompts(prompts or Prompts())
        bright, dark = (image > 1.0).float(), (image < -1.0).float()
        logits = 10.0 * torch.cat([1 - bright - dark, bright, dark], dim=1)
        low = F.interpolate(logits, scale_factor=0.25, mode="trilinear", align_corners=False)
        return SegOutput(low_res_logits=low, logits=logits, iou=torch.ones(image.shape[0], 3))


def _bright_and_dark() -> tuple[Volume, np.ndarray, np.ndarray]:
    image, _ = oblique_volume(shape=(40, 80, 70), blobs=((12, 25, 20, 6), (28, 55, 50, 7)))
    arr = image.array.copy()
    dd, hh, ww = np.meshgrid(*(np.arange(n) for n in arr.shape), indexing="ij")
    dark = ((dd - 28) * 2.0) ** 2 + ((hh - 55) * 0.9) ** 2 + ((ww - 50) * 0.8) ** 2 < 7.0**2
    bright = ((dd - 12) * 2.0) ** 2 + ((hh - 25) * 0.9) ** 2 + ((ww - 20) * 0.8) ** 2 < 6.0**2
    arr[dark] = -200.0
    return image.with_array(arr), bright, dark


def test_auto_finds_every_class_with_its_label_value_on_the_input_grid(tmp_path: Path) -> None:
    image, bright, dark = _bright_and_dark()
    pred = Predictor(AutoModel(), preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)), class_values=(2, 4))
    pred.set_image(image)
    out = WholeVolume(pred).predict_auto(probabilities=True, batch_size=3)
    assert out.labels.shape == image.array.shape and set(np.unique(out.labels)) == {0, 2, 4}
    assert _dice(out.labels == 2, bright) > 0.85 and _dice(out.labels == 4, dark) > 0.85
    assert out.probabilities is not None and out.probabilities[bright].mean() > 0.9
    assert out.probabilities[~(bright | dark)].mean() < 0.05
    # Through the workflow: the file has the input's exact geometry and the class values.
    img = write_image(image.array, tmp_path / "img.nii.gz", reference=image)
    cases = predict_of(img, tmp_path / "auto.nii.gz", auto=True, predictor=pred)
    written = read_image(tmp_path / "auto.nii.gz")
    assert written.same_geometry(read_image(img)) and cases[0].lesions == 2
    assert _dice(written.array == 2, bright) > 0.85 and _dice(written.array == 4, dark) > 0.85
    # Prompt-free models take no prompt, and --auto needs one.
    with pytest.raises(ValueError, match="is prompt-free"):
        pred.predict([LesionClicks(points=[[20, 25, 12]], labels=[1])])
    with pytest.raises(ValueError, match="is prompt-free"):
        WholeVolume(pred).predict_text("bright")
    clicky = _predictor()
    clicky.set_image(image)
    with pytest.raises(ValueError, match="needs clicks or text; --auto needs the checkpoint of a prompt-free method"):
        WholeVolume(clicky).predict_auto()
    with pytest.raises(ValueError, match="class_values must be 2 distinct label values"):
        Predictor(AutoModel(), class_values=(2, 2))


def test_auto_with_clicks_replaces_the_clicked_lesion_by_the_promptable_model(tmp_path: Path) -> None:
    image, bright, dark = _bright_and_dark()
    img = write_image(image.array, tmp_path / "img.nii.gz", reference=image)
    auto = Predictor(AutoModel(), preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)), class_values=(2, 4))
    refine = tmp_path / "refine.json"
    centre = np.argwhere(bright).mean(axis=0)[::-1].round().astype(int)  # (i, j, k) of the bright blob
    refine.write_text(json.dumps({"lesions": [{"id": 1, "points": [centre.tolist()]}]}))
    # The refined lesion replaces the automatic one with the class --auto gave it; an empty refinement removes it.
    from lesionsam.inference.modes import refine_auto

    auto.set_image(image)
    first = WholeVolume(auto).predict_auto()
    refiner = _predictor()
    refiner.set_image(image)
    refined = refiner.predict([LesionClicks(points=[centre], labels=[1])])
    merged = refine_auto(first, refined, [LesionClicks(points=[centre], labels=[1])], (2, 4), refiner, world=False)
    assert _dice(merged.labels == 2, refined.labels > 0) == 1.0 and _dice(merged.labels == 4, dark) > 0.85
    empty = type(refined)(np.zeros_like(refined.labels), None, refined.reference)
    gone = refine_auto(first, empty, [LesionClicks(points=[centre], labels=[1])], (2, 4), refiner, world=False)
    assert not (gone.labels == 2).any()
    assert (gone.labels == 4).sum() == (first.labels == 4).sum()
    with pytest.raises(ValueError, match="give --refine-checkpoint"):
        predict_of(img, tmp_path / "x.nii.gz", auto=True, prompts=refine, predictor=auto)
    with pytest.raises(ValueError, match="--refine-checkpoint goes with --auto and clicks"):
        predict_of(img, tmp_path / "x.nii.gz", auto=True, refine_checkpoint="r.pt", predictor=auto)
    with pytest.raises(ValueError, match="--auto and --text exclude each other"):
        predict_of(img, tmp_path / "x.nii.gz", auto=True, text="lesion", predictor=auto)


def test_small_components_are_dropped_by_volume_in_mm3() -> None:
    from lesionsam.inference.postprocess import drop_small_components

    mask = np.zeros((10, 10, 10), bool)
    mask[0:2, 0:2, 0:2] = True  # 8 voxels
    mask[5:9, 5:9, 5:9] = True  # 64 voxels
    spacing = (0.5, 1.0, 2.0)  # 1 mm³ per voxel
    assert drop_small_components(mask, spacing, 0).sum() == 72
    kept = drop_small_components(mask, spacing, 10.0)
    assert kept.sum() == 64 and kept[6, 6, 6] and not kept[0, 0, 0]
    assert drop_small_components(mask, spacing, 64.0).sum() == 64  # a component of exactly the volume stays
    with pytest.raises(ValueError, match=">= 0 mm³"):
        drop_small_components(mask, spacing, -1)
    # In automatic mode the filter works per class, on the input grid.
    image, bright, dark = _bright_and_dark()
    pred = Predictor(AutoModel(), preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)), class_values=(2, 4))
    pred.set_image(image)
    bright_mm3 = bright.sum() * float(np.prod(image.spacing))
    out = WholeVolume(pred).predict_auto(
        min_lesion_mm3=bright_mm3 * 1.3
    )  # the dark blob (7 mm radius) is 1.6× the bright (6 mm)
    assert not (out.labels == 2).any() and _dice(out.labels == 4, dark) > 0.85


# ------------------------------------------------------------------------------------------- logit adjustment
class SmoothModel(ThresholdModel):
    """Stand-in with graded logits ``3 * (image - 1) - shift`` (normalised units), so that an offset moves the mask."""

    def __init__(self, size: int = 32, shift: float = 0.0) -> None:
        super().__init__(size)
        self.shift = shift

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        self.calls += 1
        logits = 3.0 * (image - 1.0) - self.shift
        low = F.interpolate(logits, scale_factor=0.25, mode="trilinear", align_corners=False)
        return SegOutput(low_res_logits=low, logits=logits, iou=torch.ones(image.shape[0], 1))


@pytest.mark.parametrize("offset", [2.5, -1.5])
def test_logit_offset_equals_a_model_whose_logits_are_shifted_by_minus_the_offset(offset: float) -> None:
    image, _ = oblique_volume(blobs=((15, 35, 30, 8),))
    cfg = PreprocessConfig(spacing=(1.5, 1.5, 1.5))
    clicks = [LesionClicks(points=[[30, 35, 15]], labels=[1])]
    outs = {}
    for name, model, d in (
        ("adjusted", SmoothModel(), offset),
        ("shifted", SmoothModel(shift=offset), 0.0),
        ("plain", SmoothModel(), 0.0),
    ):
        pred = Predictor(model, preprocess=cfg, logit_offset=d)
        pred.set_image(image)
        outs[name] = pred.predict(clicks, probabilities=True)
    np.testing.assert_allclose(outs["adjusted"].probabilities, outs["shifted"].probabilities, atol=1e-6)
    np.testing.assert_array_equal(outs["adjusted"].labels, outs["shifted"].labels)
    assert outs["adjusted"].windows == outs["shifted"].windows
    moved = (outs["adjusted"].labels > 0).sum() - (outs["plain"].labels > 0).sum()
    assert moved < 0 if offset > 0 else moved > 0  # the offset does change the mask


def test_logit_offset_must_be_finite() -> None:
    with pytest.raises(ValueError, match=r"logit_offset must be a finite number .*got nan"):
        Predictor(ThresholdModel(), logit_offset=float("nan"))


# --------------------------------------------------------------------------------------- clicked components only
class AllBrightModel(ThresholdModel):
    """Stand-in that segments everything bright in its window, wherever the click is."""

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        self.calls += 1
        logits = torch.where(image > 1.0, 10.0, -10.0)
        low = F.interpolate(logits, scale_factor=0.25, mode="trilinear", align_corners=False)
        return SegOutput(low_res_logits=low, logits=logits, iou=torch.ones(image.shape[0], 1))


def test_clicked_only_drops_the_lesions_nobody_clicked() -> None:
    """The stand-in returns both bright blobs of the window: the predictor keeps the clicked one and drops the
    other, unless ``clicked_only=False``."""
    image, label = oblique_volume(blobs=((10, 20, 15, 5), (15, 40, 35, 6)))  # both in one window
    cfg = PreprocessConfig(spacing=(1.5, 1.5, 1.5))
    masks = {}
    for clicked_only in (True, False):
        pred = Predictor(AllBrightModel(32), preprocess=cfg, clicked_only=clicked_only)
        pred.set_image(image)
        masks[clicked_only] = pred.predict([LesionClicks(points=[[15, 20, 10]], labels=[1])]).labels > 0
    assert _dice(masks[True], label.array == 1) > 0.75 and not (masks[True] & (label.array == 2)).any()
    assert _dice(masks[False], label.array > 0) > 0.75


def test_a_mask_and_its_probabilities_are_written_both_or_neither(tmp_path: Path) -> None:
    """A probabilities file that cannot be written (float DICOM) leaves no mask behind either (it used to)."""
    img, lab, _ = _write_case(tmp_path)
    pred = _predictor()
    pred.set_image(read_image(img))
    out = pred.predict([LesionClicks(points=[[30, 35, 15]], labels=[1])], probabilities=True)
    from lesionsam.inference.predictor import write_prediction

    with pytest.raises(ImageIOError, match="p.dcm: could not write"):
        write_prediction(out, tmp_path / "m.nii.gz", probabilities_path=tmp_path / "p.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([img.name, lab.name])  # no mask, no temp file
    write_prediction(out, tmp_path / "m.nii.gz", probabilities_path=tmp_path / "p.nrrd")
    assert read_image(tmp_path / "m.nii.gz").array.max() == 1 and read_image(tmp_path / "p.nrrd").array.max() > 0.5


def test_predict_reads_the_checkpoint_once(tmp_path: Path, monkeypatch) -> None:
    """``predict --clicks-from`` without ``--label`` (the label from the checkpoint) reads the checkpoint file once
    (it was read three times: the label, the format check, the weights)."""
    from lesionsam.cli.main import main
    from lesionsam.models import ModelConfig, build_model
    from lesionsam.models.checkpoint import save_checkpoint

    img, lab, _ = _write_case(tmp_path)
    ckpt = save_checkpoint(
        tmp_path / "run" / "best.pt",
        model=build_model(ModelConfig.from_preset("tiny")),
        config={"model": ModelConfig.from_preset("tiny"), "data": {"target_label": 2}},
        method="sam_med3d",
    )
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    code = main(
        ["predict", str(img), "--out", str(tmp_path / "m.nii.gz"), "--clicks-from", str(lab)]
        + ["--checkpoint", str(ckpt), "--max-windows", "1"]
    )
    assert code == 0 and read_image(tmp_path / "m.nii.gz").same_geometry(read_image(img), atol=1e-6)
    assert [Path(p).name for p in loads] == ["best.pt"]
