"""The interactive session: it agrees with the one-shot predictor, refines with the decoder only, patches only the
lesion's region, undoes exactly, and saves on the input's exact grid; box prompts (session, predictor, prompt files,
CLI) and the region-only inversion the session relies on."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lesionsam.cli.main import main
from lesionsam.data.crops import CropBox
from lesionsam.data.io import Volume, read_image, write_image
from lesionsam.data.transforms import PreprocessConfig, Preprocessor
from lesionsam.inference.boxes import Box, CanonicalBox, parse_box, prior_logits, to_canonical
from lesionsam.inference.predictor import LesionClicks, Predictor
from lesionsam.inference.prompt_files import read_prompt_file
from lesionsam.inference.regions import invert_region
from lesionsam.inference.session import InteractiveSession
from lesionsam.models import Prompts, SegOutput
from stand_ins import StandInModel, bright_blob_output, oblique_volume


class CachingBrightModel(StandInModel):
    """A stand-in promptable model with an encode/decode split and known behaviour: the lesion is the bright
    (> 1, normalised units) connected region holding the last positive click, minus a ball of radius 3 voxels
    around every negative click. ``encode`` counts its calls."""

    accepted_prompts = frozenset({"points", "mask"})

    def __init__(self, size: int = 32) -> None:
        super().__init__(size)
        self.encodes = 0
        self.decodes = 0

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encodes += 1
        return image.clone()

    def decode(self, encoded: torch.Tensor, prompts: Prompts, *, multimask_output: bool = False) -> SegOutput:
        self.decodes += 1
        return bright_blob_output(encoded, prompts, miss_keeps_bright=True)

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        return self.decode(self.encode(image), prompts)


def _bright(max_windows: int = 8) -> Predictor:
    cfg = PreprocessConfig(spacing=(1.5, 1.5, 1.5))
    return Predictor(CachingBrightModel(), preprocess=cfg, max_windows=max_windows)


def _tiny(max_windows: int = 4, spacing: float = 1.5) -> Predictor:
    """The real (tiny) SAM-Med3D architecture with seeded random weights; a negative logit offset widens its masks
    so that they are not empty."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Predictor.from_checkpoint(
            None, preset="tiny", max_windows=max_windows, logit_offset=-1.0, spacing=(spacing,) * 3
        )


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


# ------------------------------------------------------------------------------------------ agreement, caching
@pytest.mark.parametrize("max_windows", [1, 4])
def test_click_sequence_equals_the_one_shot_predictor(max_windows: int) -> None:
    image, _ = oblique_volume(shape=(40, 90, 80), blobs=((20, 45, 40, 14),))
    pred = _tiny(max_windows=max_windows, spacing=0.9)
    session = InteractiveSession(pred, image)
    clicks = [((40, 45, 20), True), ((47, 45, 20), False), ((36, 50, 21), True), ((40, 40, 19), False)]
    for n, (point, positive) in enumerate(clicks, start=1):
        session.click(point, positive=positive, lesion=None if n == 1 else 1)
        pred.set_image(image)
        one_shot = pred.predict(
            [LesionClicks(points=[c for c, _ in clicks[:n]], labels=[int(p) for _, p in clicks[:n]])]
        )
        got = session.label_map()
        assert got.any(), "the tiny model must segment something for this test to mean anything"
        np.testing.assert_array_equal(got, one_shot.labels)
    if max_windows > 1:
        assert one_shot.windows[1] > 1  # the lesion grew beyond its first window: growing is compared too


@pytest.mark.parametrize("max_windows", [1, 16])
def test_lesion_larger_than_its_windows_equals_the_predictor(max_windows: int) -> None:
    # A 36 mm-radius blob spans 48 voxels of the 1.5 mm grid: more than one 32³ crop. With one window the mask is
    # cut by the window (the coverage is resampled too); with 16 the windows grow over it.
    image, label = oblique_volume(shape=(50, 100, 100), spacing=(1.0, 1.0, 2.0), blobs=((25, 50, 50, 36),))
    pred = _bright(max_windows=max_windows)
    session = InteractiveSession(pred, image)
    session.click((50, 50, 25))
    pred.set_image(image)
    np.testing.assert_array_equal(session.label_map(), pred.predict([LesionClicks([[50, 50, 25]], [1])]).labels)
    assert (_dice(session.label_map(), label.array) > 0.97) == (max_windows > 1)


def test_refining_click_runs_the_decoder_only() -> None:
    image, _ = oblique_volume()
    pred = _tiny(max_windows=1)
    encoder_calls: list[int] = []
    decoder_calls: list[int] = []
    pred.model.image_encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    pred.model.mask_decoder.register_forward_hook(lambda *_: decoder_calls.append(1))
    session = InteractiveSession(pred, image)
    session.click((30, 35, 15))
    assert len(encoder_calls) == 1 and len(decoder_calls) == 1
    session.click((33, 35, 15), positive=False, lesion=1)
    session.click((28, 36, 15), lesion=1)
    assert len(encoder_calls) == 1  # the cached embedding is reused
    assert len(decoder_calls) == 3  # one decode per refining click (from the stored low-res logits)
    session.click((10, 10, 5))  # a new lesion elsewhere: its own window is encoded
    assert len(encoder_calls) == 2


def test_bfloat16_runs_the_model_in_bfloat16_and_agrees_with_float32() -> None:
    image, _ = oblique_volume(shape=(40, 90, 80), blobs=((20, 45, 40, 14),))
    logits = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = Predictor.from_checkpoint(None, preset="tiny", max_windows=1, spacing=(0.9,) * 3, dtype=dtype)
        seen: list[torch.dtype] = []
        hook = pred.model.image_encoder.patch_embed.register_forward_hook(
            lambda _m, _a, out, s=seen: s.append(out.dtype)
        )
        pred.set_image(image)
        runner = pred.runner()
        clicks, labels = np.array([[20.0, 30.0, 30.0], [25.0, 30.0, 34.0]]), np.array([1, 0])
        logits[dtype] = runner.run_window(runner.window((30, 40, 40)), clicks, labels, None)
        hook.remove()
        assert seen == [getattr(torch, dtype)]
        InteractiveSession(pred, image).click((40, 45, 20))  # the session runs through the same runner
        assert seen[-1] == getattr(torch, dtype)
    a, b = logits["float32"], logits["bfloat16"]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99 and np.abs(a - b).mean() < 0.05 * a.std()
    with pytest.raises(ValueError, match="dtype must be float32 or bfloat16"):
        Predictor(CachingBrightModel(), dtype="float16")


# ------------------------------------------------------------------------------------------ behaviour
def test_negative_click_removes_voxels_and_updates_only_its_region() -> None:
    image, label = oblique_volume()
    session = InteractiveSession(_bright(), image)
    first = session.click((30, 35, 15))
    assert first.lesion == 1 and _dice(session.label_map(), label.array) > 0.85
    before = session.label_map()
    upd = session.click((30, 35, 15), positive=False, lesion=1)
    after = session.label_map()
    outside = np.ones(after.shape, bool)
    outside[upd.region] = False
    assert np.array_equal(after[outside], before[outside])  # nothing outside the update's region changed
    np.testing.assert_array_equal(upd.labels, after[upd.region])
    assert (after > 0).sum() < (before > 0).sum() and after[15, 35, 30] == 0
    voxel_ml = float(np.prod(image.spacing)) / 1000
    assert upd.volume_ml == pytest.approx((after == 1).sum() * voxel_ml)


def test_two_lesions_undo_redo_delete() -> None:
    image, label = oblique_volume(blobs=((10, 20, 15, 5), (20, 50, 45, 6)))
    session = InteractiveSession(_bright(), image)
    session.click((15, 20, 10))
    maps = [session.label_map()]
    session.click((45, 50, 20))
    maps.append(session.label_map())
    session.click((45, 50, 20), positive=False, lesion=2)
    maps.append(session.label_map())
    assert set(np.unique(maps[1])) == {0, 1, 2} and _dice(maps[1] == 2, label.array == 2) > 0.8
    session.undo(2)
    np.testing.assert_array_equal(session.label_map(), maps[1])
    session.redo(2)
    np.testing.assert_array_equal(session.label_map(), maps[2])
    session.undo(2)
    session.undo(2)  # back to an empty lesion 2
    np.testing.assert_array_equal(session.label_map(), maps[0])
    with pytest.raises(ValueError, match="lesion 2: nothing to undo"):
        session.undo(2)
    session.redo(2)
    np.testing.assert_array_equal(session.label_map(), maps[1])
    session.click((45, 50, 20), lesion=2)  # a new prompt drops what could be redone
    with pytest.raises(ValueError, match="nothing to redo"):
        session.redo(2)
    info = {i.id: i for i in session.lesions()}
    assert info[2].n_prompts == 2 and info[1].bbox is not None
    assert info[1].volume_ml == pytest.approx((maps[1] == 1).sum() * np.prod(image.spacing) / 1000)
    upd = session.delete(1)
    assert not (session.label_map() == 1).any() and not (upd.labels == 1).any()
    assert session.click((15, 20, 10)).lesion == 3  # ids are never reused
    session.reset()
    assert session.lesions() == [] and not session.label_map().any()


def test_sessions_sharing_a_predictor_are_independent() -> None:
    image_a, label_a = oblique_volume()
    image_b, _ = oblique_volume(blobs=((10, 20, 15, 5),))
    pred = _bright()
    alone = InteractiveSession(pred, image_a)
    alone.click((30, 35, 15))
    a = InteractiveSession(pred, image_a)
    b = InteractiveSession(pred, image_b)  # opened after a, on another image, with the same predictor
    a.click((30, 35, 15))
    b.click((15, 20, 10))
    np.testing.assert_array_equal(a.label_map(), alone.label_map())
    assert _dice(a.label_map(), label_a.array) > 0.85 and b.lesions()[0].id == 1


def test_errors_are_one_clear_value_error() -> None:
    image, _ = oblique_volume()
    session = InteractiveSession(_bright(), image)
    with pytest.raises(ValueError, match=r"click \[60.0, 10.0, 3.0\] .*outside the image of size \(60, 70, 30\)"):
        session.click((60, 10, 3))
    with pytest.raises(ValueError, match="starts with a positive click"):
        session.click((30, 35, 15), positive=False)
    with pytest.raises(ValueError, match=r"unknown lesion 4 \(lesions in this session: none\)"):
        session.click((30, 35, 15), lesion=4)
    assert session.lesions() == []  # nothing was left behind by the refused prompts
    session.click((30, 35, 15))
    with pytest.raises(ValueError, match=r"unknown lesion 9 \(lesions in this session: 1\)"):
        session.undo(9)
    with pytest.raises(ValueError, match="leaves the image"):
        session.box(Box((50, 30, 10), (70, 40, 20)))
    with pytest.raises(ValueError, match="lo .* must not exceed hi"):
        Box((5, 5, 5), (4, 9, 9))
    with pytest.raises(ValueError, match="flat on 2 axes"):
        Box((5, 5, 5), (5, 5, 9))


# ------------------------------------------------------------------------------------------ boxes
def test_3d_and_2d_boxes_segment_the_boxed_lesion() -> None:
    image, label = oblique_volume(blobs=((10, 20, 15, 5), (20, 50, 45, 6)))
    session = InteractiveSession(_bright(), image)
    idx = np.argwhere(label.array == 2)  # (d, h, w)
    lo, hi = idx.min(axis=0)[::-1], idx.max(axis=0)[::-1]  # (i, j, k)
    upd = session.box(Box(tuple(lo), tuple(hi)))
    assert _dice(session.label_map() == upd.lesion, label.array == 2) > 0.85
    k = int(round((lo[2] + hi[2]) / 2))
    upd2 = session.box(Box((lo[0], lo[1], k), (hi[0], hi[1], k)), lesion=upd.lesion)  # restart from a 2D box
    assert upd2.lesion == upd.lesion and _dice(session.label_map(), label.array == 2) > 0.85
    record = session.prompts_record()["lesions"][0]
    assert record["box"] == [lo[0], lo[1], k, hi[0], hi[1], k] and record["points"] == []
    session.undo(upd.lesion)
    assert session.prompts_record()["lesions"][0]["box"] == [*map(int, lo), *map(int, hi)]


# ------------------------------------------------------------------------------------------ saving
def test_save_round_trips_the_geometry_and_the_prompts(tmp_path: Path) -> None:
    image, _ = oblique_volume(blobs=((10, 20, 15, 5), (20, 50, 45, 6)))
    session = InteractiveSession(_bright(), image)
    session.click((15, 20, 10))
    session.click((45, 50, 20))
    session.click((44, 50, 20), positive=False, lesion=2)
    session.save(tmp_path / "out" / "mask.nii.gz", tmp_path / "out" / "prompts.json")
    mask = read_image(tmp_path / "out" / "mask.nii.gz")
    assert mask.same_geometry(image, atol=1e-6)
    np.testing.assert_array_equal(mask.array, session.label_map())
    record = json.loads((tmp_path / "out" / "prompts.json").read_text())
    assert record == json.loads(json.dumps(session.prompts_record()))
    assert [les["labels"] for les in record["lesions"]] == [[1], [1, 0]]
    assert record["lesions"][1]["prompts"][1] == {"kind": "point", "point": [44.0, 50.0, 20.0], "positive": False}
    with pytest.raises(ValueError, match="different paths"):
        session.save(tmp_path / "x.nii.gz", tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match="unknown image file ending"):
        session.save(tmp_path / "x.txt", tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()


# ------------------------------------------------------------------------------------------ boxes, regions
def _blob_box(label: np.ndarray, value: int) -> Box:
    idx = np.argwhere(label == value)  # (d, h, w)
    return Box(tuple(int(v) for v in idx.min(axis=0)[::-1]), tuple(int(v) for v in idx.max(axis=0)[::-1]))


def test_parse_box_and_its_messages() -> None:
    assert parse_box("1, 2,3,4,5,6") == Box((1, 2, 3), (4, 5, 6))
    assert Box((1, 2, 7), (4, 5, 7)).flat_axis == 2 and Box((1, 2, 3), (4, 5, 6)).flat_axis is None
    with pytest.raises(ValueError, match="six comma-separated integer voxel indices"):
        parse_box("1,2,3,4,5")
    with pytest.raises(ValueError, match="six comma-separated integer"):
        parse_box("1,2,3,4,5,6.5")


def test_box_extent_on_an_unresampled_grid_and_the_depth_of_a_2d_box() -> None:
    # Identity direction, 1.5 mm isotropic (= the model spacing, RAS-flipped axes only): a box keeps its extent.
    arr = np.random.default_rng(0).normal(0, 100, (20, 30, 40)).astype(np.float32)
    image = Volume(arr, (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    pre = Preprocessor(PreprocessConfig(spacing=(1.5, 1.5, 1.5)))(image)
    cb = to_canonical(Box((5, 6, 7), (15, 12, 9)), pre)
    np.testing.assert_allclose(cb.hi - cb.lo, [2, 6, 10], atol=1e-6)  # (d, h, w) extents: k, j, i
    # A 2D box on slice k = 8, 10 x 6 voxels in plane: 8 voxels (the mean side) deep, centred on the slice.
    flat = to_canonical(Box((5, 6, 8), (14, 11, 8)), pre)
    np.testing.assert_allclose(flat.hi - flat.lo, [7, 5, 9], atol=1e-6)  # voxel-centre bounds: extent - 1
    canon_k = pre.grid.world_to_index(image.index_to_world([9.5, 8.5, 8.0]))[2]  # the box centre, canonical k
    assert flat.center[0] == pytest.approx(canon_k)


def test_prior_is_the_ellipsoid_inscribed_in_the_box() -> None:
    window = CropBox(start=(0, 0, 0), size=(32, 32, 32), volume_shape=(64, 64, 64))
    cb = CanonicalBox(lo=np.array([8.0, 4.0, 12.0]), hi=np.array([23.0, 27.0, 19.0]))
    prior = prior_logits(cb, window, 8, logit=3.0)
    centres = (np.arange(8) + 0.5) * 4 - 0.5  # crop coordinate of each low-res voxel
    expect = np.zeros((8, 8, 8), bool)
    for a, d in enumerate(centres):
        for b, h in enumerate(centres):
            for c, w in enumerate(centres):
                expect[a, b, c] = ((d - 15.5) / 8) ** 2 + ((h - 15.5) / 12) ** 2 + ((w - 15.5) / 4) ** 2 <= 1
    np.testing.assert_array_equal(prior > 0, expect)
    assert set(np.unique(prior)) == {-3.0, 3.0}


def test_a_3d_box_bounds_its_lesion_and_a_2d_box_does_not() -> None:
    image, label = oblique_volume(blobs=((15, 35, 30, 9),))
    session = InteractiveSession(_bright(), image)
    whole = _blob_box(label.array, 1)
    half = Box(whole.lo, (whole.hi[0], whole.hi[1], (whole.lo[2] + whole.hi[2]) // 2))  # the lower half in k
    lesion = session.box(half).lesion
    mask = session.label_map() == lesion
    inside = np.zeros(mask.shape, bool)
    inside[half.lo[2] : half.hi[2] + 2, half.lo[1] - 1 : half.hi[1] + 2, half.lo[0] - 1 : half.hi[0] + 2] = True
    assert mask.any() and not (mask & ~inside).any()  # nothing beyond the box (one voxel of interpolation)
    in_box = np.zeros(mask.shape, bool)
    in_box[half.lo[2] : half.hi[2] + 1, half.lo[1] : half.hi[1] + 1, half.lo[0] : half.hi[0] + 1] = True
    assert _dice(mask, in_box & (label.array > 0)) > 0.85  # the part of the blob inside the box
    session.reset()
    k = (whole.lo[2] + whole.hi[2]) // 2
    flat = session.box(Box((whole.lo[0], whole.lo[1], k), (whole.hi[0], whole.hi[1], k))).lesion
    assert _dice(session.label_map() == flat, label.array) > 0.85  # the whole blob, beyond the slice


def test_box_in_the_session_equals_the_predictor_and_refines_with_clicks() -> None:
    image, label = oblique_volume(shape=(40, 90, 80), blobs=((20, 45, 40, 14),))
    box = _blob_box(label.array, 1)
    pred = _tiny(max_windows=2, spacing=0.9)
    session = InteractiveSession(pred, image)
    session.box(box)
    session.click((47, 45, 20), positive=False, lesion=1)
    pred.set_image(image)
    one_shot = pred.predict([LesionClicks(points=[[47, 45, 20]], labels=[0], box=box)]).labels
    assert session.label_map().any()
    np.testing.assert_array_equal(session.label_map(), one_shot)


def test_saved_prompts_reproduce_the_session_through_the_predictor(tmp_path: Path) -> None:
    image, label = oblique_volume(blobs=((10, 20, 15, 5), (20, 50, 45, 6)))
    session = InteractiveSession(_bright(), image)
    session.box(_blob_box(label.array, 2))
    session.click((45, 50, 20), positive=False, lesion=1)
    session.click((15, 20, 10))
    assert _dice(session.label_map() == 2, label.array == 1) > 0.8
    session.save(tmp_path / "m.nii.gz", tmp_path / "p.json")
    (lesions, world) = read_prompt_file(tmp_path / "p.json")[None]
    assert not world and lesions[0].box == _blob_box(label.array, 2) and lesions[0].labels.tolist() == [0]
    pred = _bright()
    pred.set_image(image)
    np.testing.assert_array_equal(pred.predict(lesions).labels, read_image(tmp_path / "m.nii.gz").array)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"box": [1, 2, 3]}, "field 'box' must be six integers"),
        ({"box": [1, 2, 3, 0, 5, 6]}, "must not exceed hi"),
        ({"box": [1, 2, 3, 4.5, 5, 6]}, "must hold integers"),
        ({"box": ["a", 2, 3, 4, 5, 6]}, "must hold numbers"),
        ({"id": 2}, "needs a 'points' list .* or a 'box'"),
    ],
)
def test_prompt_file_box_is_validated(tmp_path: Path, item: dict, message: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"lesions": [item]}))
    with pytest.raises(ValueError, match=message):
        read_prompt_file(path)
    path.write_text(json.dumps({"coordinates": "world", "lesions": [{"box": [1, 2, 3, 4, 5, 6]}]}))
    with pytest.raises(ValueError, match="voxel indices; it cannot be used with 'coordinates': 'world'"):
        read_prompt_file(path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_box_and_bfloat16_write_masks_on_the_input_grid(tmp_path: Path) -> None:
    image, _ = oblique_volume()
    img = write_image(image.array, tmp_path / "img.nii.gz", reference=image)
    code = main(
        ["predict", str(img), "--out", str(tmp_path / "m.nii.gz"), "--preset", "tiny", "--box", "25,30,12,35,40,18"]
    )
    assert code == 0
    assert read_image(tmp_path / "m.nii.gz").same_geometry(image, atol=1e-6)
    out16 = tmp_path / "m16.nii.gz"
    argv = ["predict", str(img), "--out", str(out16), "--preset", "tiny", "--point", "30,35,15", "--dtype", "bfloat16"]
    assert main(argv) == 0 and read_image(out16).same_geometry(image, atol=1e-6)


@pytest.mark.parametrize("resampled", [True, False])
def test_region_inversion_equals_whole_volume_inversion(resampled: bool) -> None:
    image, _ = oblique_volume()
    spacing = (1.5, 1.5, 1.5) if resampled else None
    pre = Preprocessor(PreprocessConfig(spacing=spacing))(image)
    assert pre._resampled == resampled
    shape = pre.grid.spatial_shape
    rng = np.random.default_rng(1)
    region = (slice(3, min(shape[0], 14)), slice(5, 30), slice(8, 26))
    sub = np.zeros(tuple(s.stop - s.start for s in region), np.float32)
    sub[2:-2, 2:-2, 2:-2] = rng.random(tuple(n - 4 for n in sub.shape))  # two voxels of zeros around it
    full = np.zeros(shape, np.float32)
    full[region] = sub
    for interp, arr, whole in (
        ("linear", sub, full),
        # A block (as the union of a lesion's windows is): a random pattern would also test how ITK breaks
        # exact half-voxel ties, which float rounding decides differently for a sub-grid.
        ("nearest", (sub > 0).astype(np.uint8), (full > 0).astype(np.uint8)),
    ):
        reference = Preprocessor().invert(whole, pre, interpolation=interp)  # type: ignore[arg-type]
        out_region, values = invert_region(arr, region, pre, interpolation=interp)
        expected = np.zeros_like(reference)
        expected[out_region] = values
        np.testing.assert_allclose(expected, reference, atol=1e-6)
        assert values.size < reference.size / 4  # only a part of the volume was resampled


def test_predict_and_the_session_share_one_overlap_rule() -> None:
    """Two lesions whose windows overlap: ``Predictor.predict`` (a throwaway session, each lesion added at once) gives
    exactly the label map of an interactive session clicked one click at a time — one engine, one overlap rule (the
    more confident lesion on the input grid; it used to be decided on the model's grid by the predictor)."""
    image, _ = oblique_volume(shape=(40, 90, 80), blobs=((20, 45, 40, 14),))
    pred = _tiny(max_windows=2, spacing=0.9)
    first = [((40, 45, 20), 1), ((47, 45, 20), 0)]
    second = [((44, 47, 20), 1), ((36, 50, 21), 1)]
    session = InteractiveSession(pred, image)
    for n, (point, label) in enumerate(first):
        session.click(point, positive=bool(label), lesion=None if n == 0 else 1)
    for n, (point, label) in enumerate(second):
        session.click(point, positive=bool(label), lesion=None if n == 0 else 2)
    pred.set_image(image)
    lesions = [
        LesionClicks(points=[p for p, _ in clicks], labels=[lab for _, lab in clicks], lesion_id=lid)
        for lid, clicks in ((1, first), (2, second))
    ]
    out = pred.predict(lesions, probabilities=True)
    got = session.label_map()
    assert (got == 1).any() and (got == 2).any(), "both lesions must be found for this test to mean anything"
    np.testing.assert_array_equal(out.labels, got)
    assert out.windows == {1: session._lesions[1].state.windows, 2: session._lesions[2].state.windows}
    assert out.probabilities is not None and (out.probabilities[got > 0] > pred.threshold).all()
