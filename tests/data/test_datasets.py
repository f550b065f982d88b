"""Data set layouts, splits, integrity checks and training crops (lesionsam.data.datasets)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lesionsam.data.crops import crop_around_label, take
from lesionsam.data.dataset_json import dataset_labels
from lesionsam.data.datasets import ClassCropDataset, LesionCropDataset
from lesionsam.data.io import Volume, write_image
from lesionsam.data.layouts import Case, load_msd_cases, load_sam_med3d_cases
from lesionsam.data.splits import make_splits, read_splits, write_splits
from lesionsam.data.transforms import PreprocessConfig, Preprocessor
from lesionsam.data.verify import verify_dataset

SHAPE = (8, 12, 14)  # (D, H, W)
GEOM = Volume(np.zeros(SHAPE, np.int16), (1.2, 1.0, 2.0), (5.0, -3.0, 10.0), tuple(np.eye(3).ravel()))


def _ct(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    body = np.full(SHAPE, -1000.0)
    body[1:-1, 2:-2, 2:-2] = 40.0
    return (body + rng.normal(0, 10, SHAPE)).astype(np.int16)


def _label(lesion: bool = True, value: int = 2) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:-1, 2:-2, 2:-2] = 1
    if lesion:
        lab[3:6, 4:8, 5:9] = value
    return lab


def _msd(root: Path, n: int = 4, *, json_training: bool = True) -> Path:
    """An MSD-style liver data set: 0 background, 1 liver, 2 tumour (case 0 has no tumour)."""
    for i in range(n):
        write_image(_ct(i), root / "imagesTr" / f"liver_{i}.nii.gz", reference=GEOM)
        write_image(_label(lesion=i > 0), root / "labelsTr" / f"liver_{i}.nii.gz", reference=GEOM)
    meta = {"name": "Liver", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"}}
    if json_training:
        meta["training"] = [
            {"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"} for i in range(n)
        ]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_layout_with_dataset_json(tmp_path):
    root = _msd(tmp_path / "Task03_Liver")
    (root / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"mac junk")  # ignored, as in the real MSD archives
    cases = load_msd_cases(root)
    assert [c.case_id for c in cases] == ["liver_0", "liver_1", "liver_2", "liver_3"]
    assert cases[1].images == ((root / "imagesTr" / "liver_1.nii.gz").resolve(),)
    assert cases[1].label.name == "liver_1.nii.gz" and cases[1].dataset == "Task03_Liver"
    vol = cases[1].read_image()
    assert vol.spatial_shape == SHAPE and vol.same_geometry(GEOM)
    assert dataset_labels(json.loads((root / "dataset.json").read_text())) == {0: "background", 1: "liver", 2: "cancer"}
    assert dataset_labels({"labels": {"background": 0, "tumour": 1, "whole": [1, 2]}}) == {
        0: "background",
        1: "tumour",
        2: "whole",
    }


def test_msd_layout_without_dataset_json_and_errors(tmp_path):
    root = _msd(tmp_path / "liver", 3, json_training=False)
    (root / "dataset.json").unlink()
    assert [c.case_id for c in load_msd_cases(root)] == ["liver_0", "liver_1", "liver_2"]
    # Unpaired images are listed.
    write_image(_ct(9), root / "imagesTr" / "liver_9.nii.gz", reference=GEOM)
    with pytest.raises(ValueError, match=r"1 image\(s\).*no label.*liver_9"):
        load_msd_cases(root)
    unlabelled = load_msd_cases(root, require_labels=False)
    assert [c.label for c in unlabelled if c.case_id == "liver_9"] == [None]
    with pytest.raises(FileNotFoundError, match="no imagesTr"):
        load_msd_cases(root / "imagesTr")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_msd_cases(tmp_path / "missing")
    # dataset.json naming a missing file.
    (root / "dataset.json").write_text(
        json.dumps({"training": [{"image": "./imagesTr/nope.nii.gz", "label": "./labelsTr/nope.nii.gz"}]})
    )
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        load_msd_cases(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_msd_cases(root)


def test_multichannel_mri_4d_nifti_and_nnunet_channel_files(tmp_path):
    rng = np.random.default_rng(0)
    chans = rng.normal(100, 20, (4, *SHAPE)).astype(np.float32)
    lab = _label(value=3)
    # MSD: one 4D NIfTI (x, y, z, channel); nibabel's (x, y, z) is ITK's (i, j, k) = reversed (D, H, W).
    msd = tmp_path / "Task01_BrainTumour"
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS of an LPS identity direction, 1 mm
    (msd / "imagesTr").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.transpose(chans, (3, 2, 1, 0)), affine), msd / "imagesTr" / "BRATS_001.nii.gz")
    ref = Volume(lab, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    write_image(lab, msd / "labelsTr" / "BRATS_001.nii.gz", reference=ref)
    (case,) = load_msd_cases(msd)
    assert case.read_image().array.shape == (4, *SHAPE)
    np.testing.assert_allclose(case.read_image(channel=2).array, chans[2])
    assert verify_dataset(msd, target_label=3, channel=2) == []

    # nnU-Net v2: _0000.._0003 files and a dataset.json without a training list.
    nn = tmp_path / "Dataset001_BrainTumour"
    for c in range(4):
        write_image(chans[c], nn / "imagesTr" / f"BRATS_001_{c:04d}.nii.gz", reference=ref)
        write_image(chans[c], nn / "imagesTr" / f"BRATS_002_{c:04d}.nii.gz", reference=ref)
    write_image(lab, nn / "labelsTr" / "BRATS_001.nii.gz", reference=ref)
    write_image(lab, nn / "labelsTr" / "BRATS_002.nii.gz", reference=ref)
    (nn / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2w"},
                "labels": {"background": 0, "edema": 1, "non-enhancing": 2, "enhancing": 3},
                "file_ending": ".nii.gz",
            }
        )
    )
    cases = load_msd_cases(nn)
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002"]
    assert [p.name for p in cases[0].images] == [f"BRATS_001_{c:04d}.nii.gz" for c in range(4)]
    np.testing.assert_allclose(cases[0].read_image(channel=3).array, chans[3])
    assert cases[0].read_image().array.shape == (4, *SHAPE)
    # The same files without dataset.json are recognised as channel files (their full stems have no label).
    (nn / "dataset.json").unlink()
    assert [len(c.images) for c in load_msd_cases(nn)] == [4, 4]
    (nn / "imagesTr" / "BRATS_002_0003.nii.gz").unlink()
    with pytest.raises(ValueError, match="different numbers of channel files"):
        load_msd_cases(nn)


def test_sam_med3d_layout(tmp_path):
    root = tmp_path / "medical_preprocessed"
    for ds in ("CT_abdomen/word", "MR_brain/brats"):
        for i in range(2):
            write_image(_ct(i), root / ds / "imagesTr" / f"case_{i}.nii.gz", reference=GEOM)
            write_image(_label(), root / ds / "labelsTr" / f"case_{i}.nii.gz", reference=GEOM)
    write_image(_ct(0), root / "flat" / "imagesTr" / "a.nii.gz", reference=GEOM)
    write_image(_label(), root / "flat" / "labelsTr" / "a.nii.gz", reference=GEOM)
    cases = load_sam_med3d_cases(root)
    assert [c.case_id for c in cases] == [
        "CT_abdomen/word/case_0",
        "CT_abdomen/word/case_1",
        "MR_brain/brats/case_0",
        "MR_brain/brats/case_1",
        "flat/a",
    ]
    assert cases[0].dataset == "CT_abdomen/word" and cases[0].label.parent.name == "labelsTr"
    assert [c.case_id for c in load_sam_med3d_cases(root / "flat")] == ["a"]
    (root / "MR_brain/brats/labelsTr/case_1.nii.gz").unlink()
    with pytest.raises(ValueError, match="case_1"):
        load_sam_med3d_cases(root)
    with pytest.raises(FileNotFoundError, match="no imagesTr"):
        load_sam_med3d_cases(root / "CT_abdomen" / "word" / "imagesTr")


def test_splits_are_reproducible_and_round_trip(tmp_path):
    ids = [f"case_{i:02d}" for i in range(20)]
    a = make_splits(ids, seed=3, val_fraction=0.2, test_fraction=0.1)
    b = make_splits(list(reversed(ids)), seed=3, val_fraction=0.2, test_fraction=0.1)
    assert a == b
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (14, 4, 2)
    assert sorted(a["train"] + a["val"] + a["test"]) == ids
    assert make_splits(ids, seed=4)["val"] != a["val"]
    assert make_splits([Case("x", (Path("x"),)), Case("y", (Path("y"),))], seed=0)["val"] in (["x"], ["y"])
    path = write_splits(a, tmp_path / "sub" / "splits.json")
    assert read_splits(path) == a
    with pytest.raises(ValueError, match="both"):
        write_splits({"train": ["a"], "val": ["a"]}, tmp_path / "bad.json")
    with pytest.raises(ValueError, match="duplicate"):
        make_splits(["a", "a", "b"], seed=0)
    with pytest.raises(ValueError, match="none for training"):
        make_splits(["a"], seed=0, val_fraction=0.5)
    with pytest.raises(FileNotFoundError):
        read_splits(tmp_path / "nope.json")


def test_verify_dataset_finds_problems(tmp_path):
    root = _msd(tmp_path / "Task03_Liver", 3)
    assert verify_dataset(root, target_label=2) == []
    problems = verify_dataset(root, target_label=5)
    assert any("not in dataset.json's labels" in p for p in problems)
    # Geometry mismatch, unknown label value, missing label.
    moved = Volume(GEOM.array, GEOM.spacing, (0.0, 0.0, 0.0), GEOM.direction)
    write_image(_label(), root / "labelsTr" / "liver_1.nii.gz", reference=moved)
    write_image(_label(value=7), root / "labelsTr" / "liver_2.nii.gz", reference=GEOM)
    write_image(_ct(5), root / "imagesTr" / "liver_5.nii.gz", reference=GEOM)
    (root / "dataset.json").unlink()
    problems = verify_dataset(root, target_label=2)
    text = "\n".join(problems)
    assert "liver_1: label and image are on different grids (origin" in text
    assert "liver_5: no label" in text
    assert "target label 2 occurs in no case" not in text  # liver_1 still has it
    with pytest.raises(ValueError, match="problem"):
        verify_dataset(root, target_label=9, strict=True)


def test_lesion_crop_dataset(tmp_path):
    root = _msd(tmp_path / "Task03_Liver", 3)
    cases = load_msd_cases(root)
    pre = Preprocessor(PreprocessConfig(spacing=(2.0, 2.0, 2.0), crop_size=16))
    ds = LesionCropDataset(cases, pre, target_label=2, cache=True)
    assert len(ds) == 3
    torch.manual_seed(0)
    item = ds[1]
    assert item["case_id"] == "liver_1"
    assert item["image"].shape == item["label"].shape == (1, 16, 16, 16)
    assert item["image"].dtype == item["label"].dtype == torch.float32
    assert set(torch.unique(item["label"]).tolist()) == {0.0, 1.0}
    # The whole (resampled) lesion is inside the crop.
    assert item["label"].sum().item() == (ds.preprocessed(1).label == 2).sum()
    # No tumour in case 0: a random crop with an empty target.
    assert ds[0]["label"].sum().item() == 0
    # Reproducible with torch's seed; cached volumes are reused without reading the files again.
    torch.manual_seed(7)
    a = ds[2]["image"]
    for p in (root / "imagesTr").iterdir():
        p.unlink()
    torch.manual_seed(7)
    assert torch.equal(ds[2]["image"], a)
    with pytest.raises(ValueError, match="positive label"):
        LesionCropDataset(cases, pre, target_label=0)
    with pytest.raises(ValueError, match="no label"):
        LesionCropDataset([Case("t", (root / "x.nii.gz",))], pre, target_label=2)


def _two_class_case(root: Path) -> list[Case]:
    """One 40³ CT case at 1 mm with a tumour (2) near a larger cyst (4), so a crop on the cyst cuts the tumour."""
    shape = (40, 40, 40)
    ref = Volume(np.zeros(shape, np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    rng = np.random.default_rng(0)
    image = (np.full(shape, 40.0) + rng.normal(0, 10, shape)).astype(np.int16)
    label = np.ones(shape, np.uint8)
    label[8:16, 8:16, 8:16] = 2
    label[18:26, 18:26, 18:26] = 4
    write_image(image, root / "imagesTr" / "c_0.nii.gz", reference=ref)
    write_image(label, root / "labelsTr" / "c_0.nii.gz", reference=ref)
    meta = {"name": "two", "modality": {"0": "CT"}, "labels": {"0": "background", "2": "tumour", "4": "cyst"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return load_msd_cases(root)


def test_negative_crops_centre_on_the_distractor_and_keep_the_target(tmp_path):
    cases = _two_class_case(tmp_path / "two")
    pre = Preprocessor(PreprocessConfig(spacing=(1.0, 1.0, 1.0), crop_size=16))
    ds = LesionCropDataset(cases, pre, target_label=2, negatives=1.0, distractors=(2, 4), lesion="largest", jitter=0)
    assert ds.distractors == (4,)  # the target itself is never a distractor
    p = ds.preprocessed(0)
    image, cyst, box = crop_around_label(p.image, p.label == 4, 16, rng=np.random.default_rng(0), lesion="largest")
    item = ds[0]
    # Centred on the (whole) cyst; the target is the tumour's part inside that crop, not the cyst.
    assert cyst[4:12, 4:12, 4:12].all() and cyst.sum() == (p.label == 4).sum()
    np.testing.assert_array_equal(item["image"][0].numpy(), image)
    expected = take(p.label == 2, box)
    assert 0 < expected.sum() < (p.label == 2).sum()
    np.testing.assert_array_equal(item["label"][0].numpy(), expected.astype(np.float32))
    # A share of 1/2 mixes whole-lesion positives with negatives (on the cyst or anywhere).
    mixed = LesionCropDataset(cases, pre, target_label=2, negatives=0.5, distractors=(4,))
    torch.manual_seed(0)
    sums = [mixed[0]["label"].sum().item() for _ in range(40)]
    whole = (p.label == 2).sum()
    assert 10 < sum(s == whole for s in sums) < 30 and any(s < whole for s in sums)
    # Without negatives nothing changes: every crop holds the whole tumour.
    plain = LesionCropDataset(cases, pre, target_label=2, distractors=(4,))
    assert all(plain[0]["label"].sum().item() == whole for _ in range(5))
    with pytest.raises(ValueError, match=r"negatives must be a share in \[0, 1\]"):
        LesionCropDataset(cases, pre, target_label=2, negatives=1.5)


def test_class_crops_map_label_values_to_class_indices_and_sample_both_classes(tmp_path):
    cases = _two_class_case(tmp_path / "two")
    pre = Preprocessor(PreprocessConfig(spacing=(1.0, 1.0, 1.0), crop_size=16))
    ds = ClassCropDataset(cases, pre, classes=(4, 2), foreground=1.0, lesion="largest", jitter=0)
    p = ds.preprocessed(0)
    item = ds[0]
    assert item["label"].dtype == torch.int64 and item["label"].shape == (1, 16, 16, 16)
    # Centred on the cyst (the first class): all of it is class 1; the tumour's part inside is class 2; liver is 0.
    image, _, box = crop_around_label(p.image, p.label == 4, 16, rng=np.random.default_rng(0), lesion="largest")
    np.testing.assert_array_equal(item["image"][0].numpy(), image)
    lab = item["label"][0].numpy()
    assert (lab == 1).sum() == (p.label == 4).sum()
    np.testing.assert_array_equal(lab == 2, take(p.label == 2, box))
    assert set(np.unique(lab)) == {0, 1, 2}
    # Random lesion crops centre on either class about equally often; foreground=0 gives uniform random crops.
    mixed = ClassCropDataset(cases, pre, classes=(2, 4), foreground=1.0)
    torch.manual_seed(0)
    whole_tumour = sum((mixed[0]["label"] == 1).sum().item() == (p.label == 2).sum() for _ in range(30))
    assert 5 < whole_tumour < 30
    anywhere = ClassCropDataset(cases, pre, classes=(2, 4), foreground=0.0)
    torch.manual_seed(1)
    assert any(anywhere[0]["label"].max().item() == 0 for _ in range(20))
    with pytest.raises(ValueError, match="distinct positive label values"):
        ClassCropDataset(cases, pre, classes=(2, 2))
    with pytest.raises(ValueError, match=r"foreground must be a probability in \[0, 1\]"):
        ClassCropDataset(cases, pre, classes=(2,), foreground=2.0)
