"""Zoom-in for small lesions: a zoomed view shows the input image at a finer spacing with the image's own
normalisation, its result maps back onto the input grid exactly, a model that cannot see small lesions finds them
only through it, refining clicks reuse its embedding, and prompts given one by one equal the same prompts at once."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.special import expit

from lesionsam.cli.main import main
from lesionsam.data.geometry import placeholder, resample
from lesionsam.data.io import Volume, read_image, write_image
from lesionsam.data.transforms import PreprocessConfig, Preprocessor
from lesionsam.inference.boxes import Box
from lesionsam.inference.predictor import LesionClicks, Predictor
from lesionsam.inference.session import InteractiveSession
from lesionsam.inference.zoom import ZoomPolicy, parse_zoom, zoom_spec
from lesionsam.models import Prompts, SegOutput
from stand_ins import StandInModel, bright_blob_output, oblique_volume

SMALL = ((20, 45, 40, 3.5),)  # one ball of radius 3.5 mm (180 mm³: about 53 voxels of the usual 1.5 mm grid)


class LargeOnlyModel(StandInModel):
    """Sees a bright blob only when it holds at least ``min_voxels`` voxels of its crop (as a model trained on
    lesions of at least some size): the blob holding the last positive click, else nothing."""

    accepted_prompts = frozenset({"points", "mask"})

    def __init__(self, size: int = 32, min_voxels: int = 200) -> None:
        super().__init__(size)
        self.min_voxels = min_voxels

    def decode(self, encoded: torch.Tensor, prompts: Prompts, *, multimask_output: bool = False) -> SegOutput:
        out = bright_blob_output(encoded, prompts)
        if int((out.logits > 0).sum()) < self.min_voxels:
            out = bright_blob_output(encoded, prompts)  # the same shapes, then emptied
            out = SegOutput(
                low_res_logits=torch.full_like(out.low_res_logits, -10.0),
                logits=torch.full_like(out.logits, -10.0),
                iou=out.iou,
            )
        return out

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        return self.decode(self.encode(image), prompts)


def _predictor(zoom: ZoomPolicy | None, **kwargs: object) -> Predictor:
    return Predictor(LargeOnlyModel(), preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)), zoom=zoom, **kwargs)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_the_view_is_the_input_resampled_with_the_images_own_normalisation() -> None:
    image, _ = oblique_volume(shape=(40, 90, 80), blobs=SMALL)
    usual = Preprocessor(PreprocessConfig(spacing=(1.5, 1.5, 1.5)))(image)
    fine = Preprocessor(PreprocessConfig(spacing=(0.5, 0.5, 0.5)))(image)  # its own statistics
    view = Preprocessor(PreprocessConfig(spacing=(1.5, 1.5, 1.5))).onto(image, fine.grid, usual)
    assert view.grid.same_geometry(fine.grid) and view.source.same_geometry(usual.source)
    hu = fine.image * np.float32(fine.std) + np.float32(fine.mean)  # back to the clipped HU, then the usual z-score
    np.testing.assert_allclose(view.image, (hu - np.float32(usual.mean)) / np.float32(usual.std), atol=2e-4)
    assert (view.mean, view.std, view.background) == (usual.mean, usual.std, usual.background)


def test_a_small_lesion_is_found_only_through_the_zoomed_view() -> None:
    image, label = oblique_volume(shape=(40, 90, 80), blobs=SMALL)
    click = (40, 45, 20)  # (i, j, k): the ball's centre
    plain = InteractiveSession(_predictor(None), image)
    plain.click(click)
    assert not plain.label_map().any()  # the usual grid: 53 voxels, below what the model sees
    session = InteractiveSession(_predictor(ZoomPolicy(max_factor=3.0, finest_spacing=0.5)), image)
    session.click(click)
    state = session._lesions[1].state
    assert state.view is not None and state.view.factor == pytest.approx(3.0)  # nothing found: the largest factor
    assert _dice(session.label_map(), label.array) > 0.8


def test_the_zoomed_result_maps_back_onto_the_input_grid_exactly() -> None:
    image, _ = oblique_volume(shape=(40, 90, 80), blobs=SMALL)
    pred = _predictor(ZoomPolicy(max_factor=3.0, finest_spacing=0.5))
    session = InteractiveSession(pred, image)
    session.click((40, 45, 20))
    view = session._lesions[1].state.view
    assert view is not None
    # The reference: the model on the whole view (one window), its connected component at the click, resampled
    # linearly onto the whole input grid and thresholded: what any whole-volume inversion does.
    click = pred.preprocessor.to_canonical_index(np.array([[40, 45, 20]]), view.pre, world=False)
    crop = torch.from_numpy(view.pre.image)[None, None]
    prompts = Prompts(points=torch.tensor(click[None], dtype=torch.float32), labels=torch.tensor([[1]]))
    prob = expit(pred.model.decode(crop, prompts).logits[0, 0].numpy()).astype(np.float32)
    comps, _ = ndimage.label(prob > 0.5)
    prob[comps != comps[tuple(np.round(click[0]).astype(int))]] = 0.0
    target = image.with_array(placeholder(image.spatial_shape, np.float32))
    whole = resample(prob, view.pre.grid, target, interpolator="linear", default=0, output_float=True)
    np.testing.assert_array_equal(session.label_map(), (whole > 0.5).astype(np.uint16))
    assert session.label_map().any()


def test_refining_clicks_decode_from_the_zoomed_views_cached_embedding() -> None:
    image, _ = oblique_volume(shape=(40, 90, 80), blobs=SMALL)
    pred = _predictor(ZoomPolicy(max_factor=3.0, finest_spacing=0.5))
    session = InteractiveSession(pred, image)
    session.click((40, 45, 20))
    assert pred.model.encodes == 2  # the first pass on the usual grid, then the view
    session.click((41, 45, 20), positive=False, lesion=1)
    session.click((40, 44, 20), lesion=1)
    assert pred.model.encodes == 2
    entry = session._lesions[1]
    assert entry.history[1].view is not None and entry.state.view is entry.history[1].view  # one view, kept


def test_large_lesions_stay_on_the_usual_grid() -> None:
    image, label = oblique_volume(shape=(40, 90, 80), blobs=((20, 45, 40, 14),))
    session = InteractiveSession(_predictor(ZoomPolicy()), image)
    session.click((40, 45, 20))
    assert session._lesions[1].state.view is None
    assert _dice(session.label_map(), label.array) > 0.9


def test_a_small_box_is_zoomed_by_its_own_size() -> None:
    image, label = oblique_volume(shape=(40, 90, 80), blobs=SMALL)
    i, j, k = np.nonzero(label.array.transpose(2, 1, 0))
    box = Box(lo=(int(i.min()), int(j.min()), int(k.min())), hi=(int(i.max()), int(j.max()), int(k.max())))
    session = InteractiveSession(_predictor(ZoomPolicy(max_factor=3.0, finest_spacing=0.5)), image)
    session.box(box)
    assert session._lesions[1].state.view is not None
    assert _dice(session.label_map(), label.array) > 0.8


def test_prompts_one_by_one_equal_the_same_prompts_at_once_through_the_zoom() -> None:
    image, _ = oblique_volume(shape=(40, 90, 80), blobs=((20, 45, 40, 8),))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = Predictor.from_checkpoint(
            None,
            preset="tiny",
            max_windows=2,
            logit_offset=-1.0,
            spacing=(0.9,) * 3,
            zoom=ZoomPolicy(fixed=2.0),
        )
    clicks = [((40, 45, 20), True), ((44, 45, 20), False), ((38, 47, 21), True)]
    session = InteractiveSession(pred, image)
    for n, (point, positive) in enumerate(clicks, start=1):
        session.click(point, positive=positive, lesion=None if n == 1 else 1)
        pred.set_image(image)
        at_once = pred.predict([LesionClicks([c for c, _ in clicks[:n]], [int(p) for _, p in clicks[:n]])])
        np.testing.assert_array_equal(session.label_map(), at_once.labels)
    assert session._lesions[1].state.view is not None  # the lesion was zoomed: the test compares zoomed chains
    assert session.label_map().any()


def test_zoom_policy_rules() -> None:
    policy = ZoomPolicy(fill=0.4, max_factor=3.0, finest_spacing=0.5, min_factor=1.25)
    assert policy.factor(None, window_mm=96.0, spacing_mm=1.5) == 3.0  # nothing found: the largest
    assert policy.factor(96.0, window_mm=96.0, spacing_mm=1.5) == 1.0  # large: not zoomed
    assert policy.factor(20.0, window_mm=96.0, spacing_mm=1.5) == pytest.approx(1.92)
    assert policy.factor(5.0, window_mm=96.0, spacing_mm=1.0) == 2.0  # the finest spacing caps it
    fixed = ZoomPolicy(fixed=2.0, finest_spacing=1.0)
    assert (
        fixed.factor(96.0, window_mm=96.0, spacing_mm=1.5) == 1.5 and fixed.factor(None, window_mm=9, spacing_mm=1) == 1
    )
    for bad, message in (({"fill": 1.0}, "fill must be in"), ({"max_factor": 0.5}, "factors must be >= 1")):
        with pytest.raises(ValueError, match=message):
            ZoomPolicy(**bad)  # type: ignore[arg-type]


def test_the_zoom_flag_of_predict(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image, _ = oblique_volume(shape=(40, 90, 80), blobs=SMALL)
    img = write_image(image.array, tmp_path / "img.nii.gz", reference=image)
    base = ["predict", str(img), "--preset", "tiny", "--point", "40,45,20"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*base, "--out", str(tmp_path / "z.nii.gz"), "--zoom", "auto,fill=0.5,max=2"]) == 0
        assert read_image(tmp_path / "z.nii.gz").same_geometry(image, atol=1e-6)
        assert main([*base, "--out", str(tmp_path / "bad.nii.gz"), "--zoom", "auto,size=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lesionsam predict: error: --zoom 'auto,size=2': unknown setting 'size=2'")
    assert not (tmp_path / "bad.nii.gz").exists()


def test_without_the_input_image_the_view_resamples_the_normalised_one() -> None:
    image, label = oblique_volume(shape=(40, 90, 80), blobs=SMALL)
    pred = _predictor(ZoomPolicy(max_factor=3.0, finest_spacing=0.5))
    pre = pred.prepare(image)
    bare = dataclasses.replace(pre, raw=None)  # e.g. a session opened on a volume preprocessed elsewhere
    session = InteractiveSession(pred, bare)
    session.click((40, 45, 20))
    view = session._lesions[1].state.view
    assert view is not None and view.pre.mean == pre.mean and view.pre.std == pre.std
    usual = pre.grid.with_array(pre.image)
    grid = view.pre.grid
    expected = resample(pre.image, usual, grid, interpolator="linear", default=pre.background, output_float=True)
    np.testing.assert_array_equal(view.pre.image, expected)
    # found, but blurrier than a view of the input itself, whose 0.8 x 0.9 x 2 mm detail the 1.5 mm grid lost
    with_raw = InteractiveSession(pred, pre)
    with_raw.click((40, 45, 20))
    assert 0.5 < _dice(session.label_map(), label.array) < _dice(with_raw.label_map(), label.array)


def _noiseless(blobs: tuple[tuple[float, float, float, float], ...]) -> tuple[Volume, Volume]:
    """:func:`oblique_volume` without its noise (the bright-blob stand-in's blob then ends where the ball does,
    instead of running into noise voxels above its threshold)."""
    image, label = oblique_volume(shape=(40, 90, 80), blobs=blobs)
    return image.with_array(np.where(label.array > 0, 200.0, 0.0).astype(np.float32)), label


def test_zoomed_first_frames_a_small_lesion_with_one_encode() -> None:
    # first=zoomed: the first pass looks in the view at the largest factor around the click; a small lesion stays
    # there: one encode instead of two.
    image, label = _noiseless(((20, 45, 40, 2.5),))  # 5 mm across; 3.5 mm blurs to 14 mm along the 2 mm slices
    pred = _predictor(ZoomPolicy(max_factor=3.0, finest_spacing=0.5, first="zoomed"))
    session = InteractiveSession(pred, image)
    session.click((40, 45, 20))
    state = session._lesions[1].state
    assert pred.model.encodes == 1 and state.view is not None and state.view.factor == pytest.approx(3.0)
    usual = InteractiveSession(_predictor(ZoomPolicy(max_factor=3.0, finest_spacing=0.5)), image)
    usual.click((40, 45, 20))  # the usual pass finds nothing here: the same view, centred on the click, no prior
    np.testing.assert_array_equal(session.label_map(), usual.label_map())
    assert _dice(session.label_map(), label.array) > 0.6  # a 5 mm ball on 2 mm slices: partial volume
    session.click((41, 45, 20), positive=False, lesion=1)
    assert pred.model.encodes == 1  # refining clicks decode from the view's embedding


def test_zoomed_first_views_a_medium_lesion_again_at_its_own_factor() -> None:
    # A ball of 10 mm (longer along the 2 mm slices) fits in the 16 mm view at 3x but wants less (0.6 * 48 mm / its
    # extent): viewed again at that factor.
    image, label = _noiseless(((20, 45, 40, 5.0),))
    pred = _predictor(ZoomPolicy(max_factor=3.0, finest_spacing=0.5, first="zoomed"))
    session = InteractiveSession(pred, image)
    session.click((40, 45, 20))
    view = session._lesions[1].state.view
    assert view is not None and 2.0 < view.factor < 2.6 and pred.model.encodes == 2
    assert _dice(session.label_map(), label.array) > 0.8


def test_zoomed_first_sends_a_large_lesion_to_the_usual_grid() -> None:
    image, label = oblique_volume(shape=(40, 90, 80), blobs=((20, 45, 40, 14),))
    pred = _predictor(ZoomPolicy(first="zoomed"))
    session = InteractiveSession(pred, image)
    session.click((40, 45, 20))
    assert session._lesions[1].state.view is None and pred.model.encodes == 2  # the zoomed try, then the usual grid
    usual = InteractiveSession(_predictor(ZoomPolicy()), image)
    usual.click((40, 45, 20))
    np.testing.assert_array_equal(session.label_map(), usual.label_map())  # framed on the usual grid alike


def test_zoomed_first_prompts_one_by_one_equal_the_same_prompts_at_once() -> None:
    image, _ = oblique_volume(shape=(40, 90, 80), blobs=SMALL)
    clicks = [((40, 45, 20), True), ((42, 45, 20), False), ((39, 46, 20), True)]
    policy = ZoomPolicy(max_factor=3.0, finest_spacing=0.5, first="zoomed")
    session = InteractiveSession(_predictor(policy), image)
    lesion = None
    for point, positive in clicks:
        lesion = session.click(point, positive=positive, lesion=lesion).lesion
    pred = _predictor(policy)
    pred.set_image(image)
    at_once = pred.predict([LesionClicks(points=[p for p, _ in clicks], labels=[int(s) for _, s in clicks])])
    np.testing.assert_array_equal(session.label_map(), at_once.labels)
    assert session._lesions[1].state.view is not None and session.label_map().any()


def test_zoom_specs_round_trip() -> None:
    for spec in (
        "auto,fill=0.5,max=2,finest=0.25,min=1.25,prior=no,passes=1,first=zoomed",
        "2",
        "2,prior=no,first=zoomed",
    ):
        policy = parse_zoom(spec)
        assert policy is not None and zoom_spec(policy) == spec and parse_zoom(zoom_spec(policy)) == policy
    assert parse_zoom("auto,first=zoomed") == ZoomPolicy(first="zoomed")
    for bad, message in (
        ("auto,first=later", "first=usual or first=zoomed"),
        ("2,fill=0.5", "a fixed factor takes only prior= and first="),
        ("auto,first=zoomed,passes=2", "leave passes at 1"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_zoom(bad)
