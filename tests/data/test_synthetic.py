"""Tests of the synthetic CT data set (``lesionsam.data.synthetic``, ``lesionsam synth``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from lesionsam.data.io import read_image
from lesionsam.data.synthetic import (
    LABELS,
    LESION,
    ORGAN,
    VESSEL,
    SyntheticCase,
    case_seed,
    make_case,
    write_synthetic_dataset,
)

CUBE = np.ones((3, 3, 3), bool)


@pytest.fixture(scope="module")
def case48() -> SyntheticCase:
    return make_case(size=48, seed=3, n_lesions=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "ds", cases=3, seed=5, size=48)


# ------------------------------------------------------------------------------------------------ make_case
def test_same_seed_same_case_different_seed_different_case(case48: SyntheticCase) -> None:
    again = make_case(size=48, seed=3, n_lesions=3)
    np.testing.assert_array_equal(case48.image.array, again.image.array)
    np.testing.assert_array_equal(case48.label.array, again.label.array)
    assert case48.lesion_volumes_mm3 == again.lesion_volumes_mm3
    assert case48.image.spacing == again.image.spacing and case48.image.origin == again.image.origin
    other = make_case(size=48, seed=4, n_lesions=3)
    assert not np.array_equal(case48.image.array, other.image.array)
    assert not np.array_equal(case48.label.array, other.label.array)


def test_arrays_dtypes_and_label_values(case48: SyntheticCase) -> None:
    image, label = case48.image.array, case48.label.array
    assert image.shape == label.shape == (48, 48, 48)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) == set(LABELS)
    # Air around the body, then the organ brighter than soft tissue, lesions darker, vessels brightest.
    assert image[0, 0, 0] < -900
    organ_hu = image[label == ORGAN].mean()
    assert 40 < organ_hu < 80
    assert image[label == LESION].mean() < organ_hu - 10
    assert image[label == VESSEL].mean() > organ_hu + 30


def test_non_cubic_size_is_d_h_w() -> None:
    case = make_case(size=(40, 48, 56), seed=0, n_lesions=1)
    assert case.image.array.shape == (40, 48, 56)
    assert case.image.size_ijk == (56, 48, 40)


def test_lesions_inside_the_organ_apart_and_measured(case48: SyntheticCase) -> None:
    label = case48.label.array
    lesion = label == LESION
    # No lesion voxel touches background (26-neighbourhood): lesions lie inside the organ.
    assert not (ndimage.binary_dilation(lesion, CUBE) & (label == 0)).any()
    # Each lesion is one connected component (26-connectivity), lesions never touch each other.
    components, n = ndimage.label(lesion, CUBE)
    assert n == case48.n_lesions == 3
    voxel_mm3 = float(np.prod(case48.image.spacing))
    measured = sorted(float(c) * voxel_mm3 for c in np.bincount(components.ravel())[1:])
    np.testing.assert_allclose(measured, sorted(case48.lesion_volumes_mm3))


def test_lesion_sizes_span_a_wide_range() -> None:
    volumes = []
    for seed in range(3):
        case = make_case(size=96, seed=seed, n_lesions=4)
        volumes += case.lesion_volumes_mm3
        voxel_mm3 = float(np.prod(case.image.spacing))
        assert min(case.lesion_volumes_mm3) >= 10 * voxel_mm3  # at least ten voxels each
    assert min(volumes) < 100.0  # < 0.1 cm³: tens of voxels
    assert max(volumes) > 1000.0  # > 1 cm³
    assert max(volumes) / min(volumes) > 50


def test_no_lesion_case() -> None:
    case = make_case(size=48, seed=1, n_lesions=0)
    assert case.lesion_volumes_mm3 == ()
    assert LESION not in case.label.array
    assert ORGAN in case.label.array


def test_geometry_anisotropic_shared_and_not_at_zero(case48: SyntheticCase) -> None:
    image, label = case48.image, case48.label
    assert image.same_geometry(label)
    sx, sy, sz = image.spacing
    assert sx == sy and 0.7 <= sx <= 0.9
    assert 1.5 <= sz <= 3.0 and sz > 1.5 * sx
    assert any(abs(o) > 1.0 for o in image.origin)
    np.testing.assert_allclose(image.direction_matrix, np.eye(3))


def test_spacings_vary_per_case_and_explicit_spacing_is_kept() -> None:
    spacings = {make_case(size=32, seed=s, n_lesions=0).image.spacing for s in range(3)}
    assert len(spacings) == 3
    case = make_case(size=48, seed=0, spacing=(0.8, 0.8, 2.5), n_lesions=1)
    assert case.image.spacing == (0.8, 0.8, 2.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 16}, "size must be between 32 and"),
        ({"size": (48, 48)}, "three integers"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"n_lesions": 99}, "n_lesions must be between 0 and"),
        ({"spacing": (0.8, 0.0, 2.0)}, "positive"),
    ],
)
def test_make_case_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_case(**kwargs)


def test_make_case_wrong_types() -> None:
    with pytest.raises(TypeError, match="seed must be an integer"):
        make_case(size=32, seed=1.5)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------------- data set
def test_dataset_json_is_msd_and_lists_existing_files(dataset: Path) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "tumour", "3": "vessel"}
    assert meta["numTraining"] == len(meta["training"]) == 3
    assert meta["numTest"] == 0 and meta["test"] == []
    assert [t["image"] for t in meta["training"]] == [f"./imagesTr/case_00{c}.nii.gz" for c in range(3)]
    for item in meta["training"]:
        assert (dataset / item["image"]).is_file() and (dataset / item["label"]).is_file()
    assert sorted(meta["lesion_volumes_mm3"]) == ["case_000", "case_001", "case_002"]
    assert meta["lesion_volumes_mm3"]["case_002"] == []  # the last case has no lesion
    assert all(meta["lesion_volumes_mm3"][c] for c in ("case_000", "case_001"))


def test_dataset_files_match_make_case(dataset: Path) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    for c, item in enumerate(meta["training"]):
        image, label = read_image(dataset / item["image"]), read_image(dataset / item["label"])
        assert image.same_geometry(label), image.geometry_difference(label)
        assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
        expected = make_case(size=48, seed=case_seed(5, c), n_lesions=0 if c == 2 else None)
        np.testing.assert_array_equal(image.array, expected.image.array)
        np.testing.assert_array_equal(label.array, expected.label.array)
        assert image.same_geometry(expected.image, atol=1e-4)
        volumes = meta["lesion_volumes_mm3"][f"case_00{c}"]
        np.testing.assert_allclose(volumes, expected.lesion_volumes_mm3, rtol=1e-5)
        voxel_mm3 = float(np.prod(label.spacing))
        assert (label.array == LESION).sum() * voxel_mm3 == pytest.approx(sum(volumes), rel=1e-4)


def test_nrrd_format(tmp_path: Path) -> None:
    out = write_synthetic_dataset(tmp_path / "nrrd", cases=1, seed=0, size=32, fmt="nrrd")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["training"] == [{"image": "./imagesTr/case_000.nrrd", "label": "./labelsTr/case_000.nrrd"}]
    assert meta["lesion_volumes_mm3"]["case_000"]  # a single case has lesions
    image = read_image(out / "imagesTr/case_000.nrrd")
    label = read_image(out / "labelsTr/case_000.nrrd")
    assert image.array.shape == (32, 32, 32) and image.same_geometry(label)
    assert LESION in label.array


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_synthetic_dataset(tmp_path / "ds", cases=1, size=32, progress=True)
    assert "synth" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cases": 0}, "cases must be >= 1"),
        ({"cases": 1, "size": 31}, "size must be between 32 and"),
        ({"cases": 1, "fmt": "nii"}, "Did you mean 'nii.gz'"),
        ({"cases": 1, "seed": -2}, "seed must be >= 0"),
    ],
)
def test_dataset_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_synthetic_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def test_dataset_refuses_a_file_and_stale_cases(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        write_synthetic_dataset(tmp_path / "file", cases=1, size=32)
    out = write_synthetic_dataset(tmp_path / "ds", cases=2, size=32)
    with pytest.raises(ValueError, match="choose an empty folder"):
        write_synthetic_dataset(out, cases=1, size=32)
    write_synthetic_dataset(out, cases=2, size=32, seed=1)  # same case names: overwritten in place
    assert json.loads((out / "dataset.json").read_text())["synthetic"]["seed"] == 1


# -------------------------------------------------------------------------------------------- workflow + CLI
def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import lesionsam.cli.synth  # noqa: F401  (registers the sub-command)
    from lesionsam.cli.main import main

    out = tmp_path / "cli"
    assert main(["synth", str(out), "--cases", "2", "--size", "32", "--seed", "7", "--format", "nrrd"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "2 case(s)" in printed and "1 case(s) without lesion" in printed
    assert (out / "imagesTr" / "case_001.nrrd").is_file()
    assert main(["synth", str(tmp_path / "bad"), "--cases", "0"]) == 2
    assert "cases must be >= 1" in capsys.readouterr().err


def test_workflow_synth(tmp_path: Path) -> None:
    from lesionsam.workflows.synth import synth

    out = synth(tmp_path / "wf", cases=1, size=32, progress=False)
    assert (out / "dataset.json").is_file() and (out / "labelsTr" / "case_000.nii.gz").is_file()
