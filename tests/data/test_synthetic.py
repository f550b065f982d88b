"""Tests of the synthetic CT data set (``lesionsam.data.synthetic``, ``lesionsam synth``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from lesionsam.data.io import read_image
from lesionsam.data.synthetic import (
    CYST,
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
    assert "cyst_volumes_mm3" not in meta and "lesion_classes" not in meta["synthetic"]  # nothing new by default


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


# ------------------------------------------------------------------------------------- second lesion class
CYST_SEEDS = (1, 2, 4, 5)  # with cysts at size 48 (0 and 3 draw none)


@pytest.fixture(scope="module")
def two_class_cases() -> list[SyntheticCase]:
    return [make_case(size=48, seed=s, lesion_classes=2) for s in CYST_SEEDS]


def test_default_equals_one_class() -> None:
    """``lesion_classes`` left at its default gives exactly the one-class output, with no cyst."""
    for seed in (0, 11):
        a, b = make_case(size=40, seed=seed), make_case(size=40, seed=seed, lesion_classes=1)
        assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.label.array, b.label.array)
        assert a.cyst_volumes_mm3 == () and CYST not in a.label.array


def test_default_dataset_json_is_pinned(tmp_path: Path) -> None:
    meta = json.loads((write_synthetic_dataset(tmp_path / "ds", cases=2, seed=5, size=32) / "dataset.json").read_text())
    assert list(meta) == [
        "name", "description", "reference", "release", "tensorImageSize", "modality", "labels",
        "numTraining", "numTest", "training", "test", "lesion_volumes_mm3", "synthetic",
    ]  # fmt: skip
    assert meta["labels"] == {str(k): v for k, v in LABELS.items()}
    assert len(meta["lesion_volumes_mm3"]["case_000"]) >= 1 and meta["lesion_volumes_mm3"]["case_001"] == []
    assert meta["synthetic"] == {"seed": 5, "size": 32, "format": "nii.gz", "cases": 2}


def test_cysts_leave_everything_else_untouched(two_class_cases: list[SyntheticCase]) -> None:
    for seed, case in zip(CYST_SEEDS, two_class_cases, strict=True):
        default = make_case(size=48, seed=seed)
        cyst = case.label.array == CYST
        assert cyst.any()
        np.testing.assert_array_equal(case.label.array[~cyst], default.label.array[~cyst])
        far = ~ndimage.binary_dilation(cyst, CUBE, iterations=3)  # beyond the blur's reach
        np.testing.assert_array_equal(case.image.array[far], default.image.array[far])
        assert case.lesion_volumes_mm3 == default.lesion_volumes_mm3
        assert case.image.spacing == default.image.spacing and case.image.origin == default.image.origin


def test_two_classes_labels_and_cysts(two_class_cases: list[SyntheticCase]) -> None:
    present: set[int] = set()
    cyst_hu, tumour_hu = [], []
    for case in two_class_cases:
        image, label = case.image.array, case.label.array
        present |= set(np.unique(label).tolist())
        assert set(np.unique(label).tolist()) <= {0, 1, 2, 3, 4}
        cyst = label == CYST
        assert 1 <= case.n_cysts <= 3
        # Each cyst is one connected component, inside the organ, touching neither tumours nor other cysts.
        components, n = ndimage.label(cyst, CUBE)
        assert n == case.n_cysts
        voxel_mm3 = float(np.prod(case.image.spacing))
        measured = sorted(float(c) * voxel_mm3 for c in np.bincount(components.ravel())[1:])
        np.testing.assert_allclose(measured, sorted(case.cyst_volumes_mm3))
        grown = ndimage.binary_dilation(cyst, CUBE)
        assert not (grown & ((label == 0) | (label == LESION))).any()
        cyst_hu.append(image[cyst])
        tumour_hu.append(image[label == LESION])
    assert {LESION, CYST} <= present
    assert np.concatenate(cyst_hu).mean() < np.concatenate(tumour_hu).mean() - 10


def test_no_lesion_case_has_no_cyst() -> None:
    case = make_case(size=48, seed=1, n_lesions=0, lesion_classes=2)
    assert case.lesion_volumes_mm3 == case.cyst_volumes_mm3 == ()
    assert LESION not in case.label.array and CYST not in case.label.array


def test_two_class_dataset(tmp_path: Path) -> None:
    out = write_synthetic_dataset(tmp_path / "ds2", cases=3, seed=5, size=48, lesion_classes=2)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"]["4"] == "cyst" and meta["labels"]["2"] == "tumour"
    assert meta["synthetic"]["lesion_classes"] == 2
    assert sorted(meta["cyst_volumes_mm3"]) == ["case_000", "case_001", "case_002"]
    assert meta["cyst_volumes_mm3"]["case_002"] == [] and meta["lesion_volumes_mm3"]["case_002"] == []
    assert meta["cyst_volumes_mm3"]["case_000"]  # seed 5 gives case 0 cysts
    for c, item in enumerate(meta["training"]):
        label = read_image(out / item["label"])
        expected = make_case(size=48, seed=case_seed(5, c), n_lesions=0 if c == 2 else None, lesion_classes=2)
        np.testing.assert_array_equal(label.array, expected.label.array)
        volumes = meta["cyst_volumes_mm3"][f"case_00{c}"]
        np.testing.assert_allclose(volumes, expected.cyst_volumes_mm3, rtol=1e-5)
        voxel_mm3 = float(np.prod(label.spacing))
        assert (label.array == CYST).sum() * voxel_mm3 == pytest.approx(sum(volumes), rel=1e-4, abs=1e-6)


def test_bad_lesion_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lesion_classes must be 1 .* or 2 .*got 3"):
        make_case(size=32, lesion_classes=3)
    with pytest.raises(ValueError, match="lesion_classes must be 1"):
        write_synthetic_dataset(tmp_path / "ds", cases=1, size=32, lesion_classes=3)
    assert not (tmp_path / "ds").exists()


def test_cli_synth_lesion_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import lesionsam.cli.synth  # noqa: F401  (registers the sub-command)
    from lesionsam.cli.main import main

    out = tmp_path / "cli2"
    assert main(["synth", str(out), "--cases", "2", "--size", "32", "--seed", "1", "--lesion-classes", "2"]) == 0
    assert "cyst(s)" in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"]["4"] == "cyst" and "cyst_volumes_mm3" in meta
    with pytest.raises(SystemExit):
        main(["synth", str(tmp_path / "bad"), "--cases", "1", "--lesion-classes", "3"])
    assert "--lesion-classes" in capsys.readouterr().err


def test_workflow_synth_lesion_classes(tmp_path: Path) -> None:
    from lesionsam.workflows.synth import synth

    meta = json.loads(
        (synth(tmp_path / "wf2", cases=1, size=32, progress=False, lesion_classes=2) / "dataset.json").read_text()
    )
    assert meta["labels"]["4"] == "cyst"
