"""Preprocessing with an exact inverse (lesionsam.data.transforms) on real, oblique, anisotropic geometry."""

from __future__ import annotations

import numpy as np
import pytest

from lesionsam.data.crops import CropBox, crop_around_label, crop_or_pad, paste
from lesionsam.data.geometry import orientation_code, ras_affine
from lesionsam.data.io import ImageIOError, Volume, read_image, write_image
from lesionsam.data.transforms import PreprocessConfig, Preprocessor

SPACING = (0.7, 0.9, 2.5)  # (i, j, k) mm
SIZE_IJK = (96, 80, 30)


def _rotation(deg_x: float, deg_y: float) -> np.ndarray:
    ax, ay = np.deg2rad(deg_x), np.deg2rad(deg_y)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return ry @ rx


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _phantom(direction: np.ndarray, *, spacing=SPACING, size_ijk=SIZE_IJK, seed: int = 0):
    """A CT-like body (HU ≈ 40) in air with an ellipsoidal lesion (label 1) at a known world centre."""
    geom = Volume(np.zeros(size_ijk[::-1], np.int16), spacing, (12.0, -25.0, 40.0), tuple(direction.ravel()))
    k, j, i = np.meshgrid(*[np.arange(n) for n in size_ijk[::-1]], indexing="ij")
    xyz = geom.index_to_world(np.stack([i, j, k], axis=-1))
    centre = geom.index_to_world((np.asarray(size_ijk) - 1) / 2.0) + np.array([4.0, -3.0, 2.0])
    r = np.linalg.norm((xyz - centre) / np.array([20.0, 16.0, 18.0]), axis=-1)
    rng = np.random.default_rng(seed)
    body = np.linalg.norm((xyz - centre) / np.array([32.0, 30.0, 40.0]), axis=-1) < 1.0
    hu = np.where(body, 40.0, -1000.0) + np.where(r < 1.0, 60.0, 0.0) + rng.normal(0.0, 15.0, r.shape)
    image = geom.with_array(hu.astype(np.int16))
    label = geom.with_array((r < 1.0).astype(np.uint8))
    return image, label, centre


@pytest.fixture(scope="module")
def oblique():
    return _phantom(_rotation(20.0, 20.0))


def test_round_trip_oblique_anisotropic_on_disk(tmp_path, oblique):
    image, label, _ = oblique
    write_image(image.array, tmp_path / "img.nii.gz", reference=image)
    write_image(label.array, tmp_path / "lab.nii.gz", reference=label)
    img_disk, lab_disk = read_image(tmp_path / "img.nii.gz"), read_image(tmp_path / "lab.nii.gz")
    assert not np.allclose(img_disk.direction_matrix, np.eye(3), atol=0.1)  # really oblique after NIfTI

    proc = Preprocessor(PreprocessConfig(spacing=(1.5, 1.5, 1.5)))
    pre = proc(img_disk, lab_disk)
    assert pre.image.dtype == np.float32 and pre.image.shape == pre.label.shape == pre.grid.spatial_shape
    assert pre.grid.spacing == (1.5, 1.5, 1.5)
    assert orientation_code(pre.grid) == "RAS"

    back = proc.invert(pre.label, pre, interpolation="nearest")
    assert back.shape == lab_disk.spatial_shape and back.dtype == lab_disk.array.dtype
    write_image(back, tmp_path / "pred.nii.gz", reference=pre.source)
    pred = read_image(tmp_path / "pred.nii.gz")
    assert pred.size_ijk == img_disk.size_ijk
    np.testing.assert_allclose(pred.spacing, img_disk.spacing, atol=1e-6)
    np.testing.assert_allclose(pred.origin, img_disk.origin, atol=1e-5)
    np.testing.assert_allclose(pred.direction, img_disk.direction, atol=1e-6)
    assert pred.geometry_difference(img_disk, atol=1e-5) == ""
    assert _dice(pred.array, lab_disk.array) >= 0.95

    # Probabilities go back with linear interpolation; thresholding gives the label again.
    prob = proc.invert(pre.label.astype(np.float32), pre, interpolation="linear")
    assert prob.dtype == np.float32 and prob.shape == lab_disk.spatial_shape
    assert _dice(prob > 0.5, lab_disk.array) >= 0.95


def test_world_click_maps_to_same_anatomy(oblique):
    image, label, centre = oblique
    proc = Preprocessor()
    pre = proc(image, label)
    dhw = proc.to_canonical_index(centre, pre, world=True)
    assert pre.label[tuple(np.floor(dhw + 0.5).astype(int))] == 1
    # The lesion's centroid in the canonical grid is the same world point (within a canonical voxel).
    cz = np.argwhere(pre.label > 0).mean(axis=0)
    np.testing.assert_allclose(pre.grid.index_to_world(cz[::-1]), centre, atol=1.0)
    np.testing.assert_allclose(dhw, cz, atol=1.0)
    # A click as an original (i, j, k) index gives the same canonical point; batches and the inverse work.
    ijk = image.world_to_index(centre)
    np.testing.assert_allclose(proc.to_canonical_index(ijk, pre, world=False), dhw, atol=1e-9)
    both = proc.to_canonical_index(np.stack([ijk, ijk + 1]), pre, world=False)
    assert both.shape == (2, 3)
    np.testing.assert_allclose(proc.from_canonical_index(dhw, pre, world=False), ijk, atol=1e-9)
    np.testing.assert_allclose(proc.from_canonical_index(dhw, pre, world=True), centre, atol=1e-9)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0]), np.eye(3)[:, [2, 0, 1]]])
def test_orientation_becomes_canonical_without_interpolation(direction):
    image, label, centre = _phantom(direction, size_ijk=(20, 16, 12), spacing=(1.0, 2.0, 3.0))
    assert orientation_code(image) != "RAS"
    proc = Preprocessor(PreprocessConfig(spacing=None))
    pre = proc(image, label)
    assert orientation_code(pre.grid) == "RAS"
    np.testing.assert_allclose(pre.grid.direction_matrix, np.diag([-1.0, -1.0, 1.0]), atol=1e-12)
    # Every canonical voxel is an original voxel: the label is a permutation, and the inverse is exact.
    assert pre.label.sum() == label.array.sum()
    assert np.array_equal(proc.invert(pre.label, pre), label.array)
    values = (np.clip(image.array.astype(np.float64), -1000, 1000) - pre.mean) / pre.std
    np.testing.assert_allclose(np.sort(pre.image.ravel()), np.sort(values.ravel()), atol=1e-4)
    # Same world point ↔ same voxel value.
    ijk = np.floor(image.world_to_index(centre) + 0.5)
    dhw = np.floor(proc.to_canonical_index(ijk, pre, world=False) + 0.5).astype(int)
    expected = (np.clip(float(image.array[tuple(ijk[::-1].astype(int))]), -1000, 1000) - pre.mean) / pre.std
    assert pre.image[tuple(dhw)] == pytest.approx(expected, abs=1e-4)


def test_orientation_matches_monai_reference():
    monai_transforms = pytest.importorskip("monai.transforms")
    from monai.data import MetaTensor

    image, _, _ = _phantom(_rotation(15.0, -25.0) @ np.diag([1.0, -1.0, -1.0]), size_ijk=(14, 12, 10))
    pre = Preprocessor(PreprocessConfig(spacing=None))(image)
    # MONAI: channel-first (1, i, j, k) with the RAS affine.
    x = MetaTensor(np.transpose(image.array.astype(np.float32), (2, 1, 0))[None], affine=ras_affine(image))
    ref = monai_transforms.Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(x)
    np.testing.assert_allclose(np.asarray(ref.affine), ras_affine(pre.grid), atol=1e-5)
    expected = (np.clip(np.transpose(ref[0].numpy(), (2, 1, 0)), -1000, 1000) - pre.mean) / pre.std
    np.testing.assert_allclose(pre.image, expected, atol=1e-4)


def test_native_spacing_resampling_agrees_with_permutation():
    image, label, _ = _phantom(np.diag([1.0, -1.0, 1.0]), size_ijk=(18, 14, 10), spacing=(1.0, 1.5, 2.0))
    exact = Preprocessor(PreprocessConfig(spacing=None))(image, label)
    # A target spacing that only differs by float noise from the native one still takes the exact path.
    same = Preprocessor(PreprocessConfig(spacing=(1.0, 1.5 + 1e-9, 2.0)))(image, label)
    np.testing.assert_array_equal(exact.label, same.label)
    # The resampling path (here to a finer grid along one axis) keeps the geometry's world mapping.
    fine = Preprocessor(PreprocessConfig(spacing=(1.0, 0.75, 2.0)))(image, label)
    assert fine.image.shape == (10, 28, 18)
    np.testing.assert_allclose(fine.grid.index_to_world((0, 0.5, 0)), exact.grid.index_to_world((0, 0, 0)), atol=1e-9)


def test_intensity_normalisation_ct_and_mri(oblique):
    image, _, _ = oblique
    pre = Preprocessor(PreprocessConfig(modality="CT"))(image)
    body = pre.image * pre.std + pre.mean > -500.0
    assert abs(float(pre.image[body].mean())) < 1e-3
    assert float(pre.image[body].std()) == pytest.approx(1.0, abs=1e-3)
    assert pre.background == pytest.approx((-1000.0 - pre.mean) / pre.std)
    assert pre.image.min() >= pre.background - 1e-4  # clipped to the window

    mri = image.with_array(np.where(image.array > -500, image.array + 300, 0).astype(np.float32))
    pre_m = Preprocessor(PreprocessConfig(modality="MRI"))(mri)
    fg = np.abs(pre_m.image - pre_m.background) > 1e-3
    assert abs(float(pre_m.image[fg].mean())) < 0.02
    assert float(pre_m.image[fg].std()) == pytest.approx(1.0, abs=0.02)


def test_clear_errors():
    geom = Volume(np.zeros((6, 7, 8), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    ramp = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    proc = Preprocessor()
    nan = ramp.copy()
    nan[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        proc(geom.with_array(nan))
    with pytest.raises(ImageIOError, match="constant"):
        proc(geom.with_array(np.full((6, 7, 8), 5.0, np.float32)))
    with pytest.raises(ValueError, match="no contrast"):  # all above the CT window
        proc(geom.with_array(ramp + 5000.0))
    moved = Volume(np.zeros((6, 7, 8), np.uint8), (1.0, 1.0, 1.0), (0.0, 2.0, 0.0), geom.direction)
    with pytest.raises(ValueError, match="different grids.*origin"):
        proc(geom.with_array(ramp), moved)
    with pytest.raises(ValueError, match="channel"):
        proc(geom.with_array(np.stack([ramp, ramp])))
    pre = proc(geom.with_array(ramp))
    with pytest.raises(ValueError, match="not on the canonical grid"):
        proc.invert(np.zeros((3, 3, 3)), pre)
    with pytest.raises(ValueError, match="Did you mean 'linear'"):
        proc.invert(pre.image, pre, interpolation="lineer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="modality"):
        PreprocessConfig(modality="PET")
    with pytest.raises(ValueError, match="axis code"):
        PreprocessConfig(orientation="RAR")
    with pytest.raises(ValueError, match="spacing"):
        PreprocessConfig(spacing=(1.5, 0.0, 1.5))


def test_crop_or_pad_and_paste_round_trip_with_padding():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(10, 12, 14)).astype(np.float32)
    crop, box = crop_or_pad(vol, (1, 11, 7.4), 8, pad_value=-9.0)
    assert crop.shape == (8, 8, 8) and crop.dtype == np.float32
    assert box.start == (-3, 7, 3) and box.stop == (5, 15, 11)
    assert isinstance(box, CropBox)
    assert np.all(crop[:3] == -9.0) and np.all(crop[:, 5:] == -9.0)  # padding before d=0 and after h=11
    np.testing.assert_array_equal(crop[3:, :5], vol[0:5, 7:12, 3:11])
    # The centre voxel lands at size // 2; indices convert both ways.
    np.testing.assert_array_equal(box.to_crop(np.array([1, 11, 7])), [4, 4, 4])
    np.testing.assert_array_equal(box.to_volume(box.to_crop(np.array([2.5, 9.0, 4.0]))), [2.5, 9.0, 4.0])
    assert box.contains((0, 11, 3)) and not box.contains((5, 11, 3))
    # Paste writes back only the part inside the volume.
    out = np.zeros_like(vol)
    paste(crop, box, out)
    np.testing.assert_array_equal(out[0:5, 7:12, 3:11], vol[0:5, 7:12, 3:11])
    assert out.sum() == vol[0:5, 7:12, 3:11].sum()
    # Channels-first arrays share the box; a crop entirely outside pastes nothing.
    multi = np.stack([vol, -vol])
    mcrop, mbox = crop_or_pad(multi, (9, 0, 13), 6)
    assert mcrop.shape == (2, 6, 6, 6) and mbox.start == (6, -3, 10)
    np.testing.assert_array_equal(paste(mcrop, mbox, np.zeros_like(multi))[:, 6:, :3, 10:], multi[:, 6:, :3, 10:])
    far, fbox = crop_or_pad(vol, (-20, -20, -20), 4)
    assert np.all(far == 0) and not paste(far + 1, fbox, np.zeros_like(vol)).any()
    with pytest.raises(ValueError, match="box size"):
        paste(np.zeros((3, 3, 3)), box, out)


def test_crop_around_label():
    mask = np.zeros((40, 40, 40), np.uint8)
    mask[2:6, 2:8, 30:36] = 1  # small lesion near a corner
    mask[20:32, 18:30, 10:22] = 1  # large lesion
    image = np.arange(mask.size, dtype=np.float32).reshape(mask.shape)
    rng = np.random.default_rng(1)
    _, mcrop, box = crop_around_label(image, mask, 16, rng=rng, lesion="largest", jitter=0)
    assert mcrop.sum() == 12**3 and box.start == (18, 16, 8)
    for _ in range(20):
        icrop, mcrop, box = crop_around_label(image, mask, 16, rng=rng, lesion="random", jitter=5, pad_value=-1.0)
        assert icrop.shape == mcrop.shape == (16, 16, 16)
        assert mcrop.sum() in (4 * 6 * 6, 12**3)  # a whole lesion is inside every crop
        vol_sl, crop_sl = box.overlap()
        np.testing.assert_array_equal(icrop[crop_sl], image[vol_sl])
    _, empty, box = crop_around_label(image, np.zeros_like(mask), 16, rng=rng)
    assert empty.sum() == 0 and box.size == (16, 16, 16)
    with pytest.raises(ValueError, match="same"):
        crop_around_label(image, mask[:-1], 16, rng=rng)
