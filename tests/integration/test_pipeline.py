"""synth → predict → evaluate through the command line, on NIfTI and NRRD."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lesionsam.cli.main import main
from lesionsam.data.io import read_image


@pytest.mark.parametrize("fmt", ["nii.gz", "nrrd"])
def test_synth_predict_evaluate(tmp_path: Path, official_ckpt: Path, fmt: str, capsys: pytest.CaptureFixture) -> None:
    ds, preds = tmp_path / "ds", tmp_path / "preds"
    assert main(["synth", str(ds), "--cases", "3", "--size", "64", "--seed", "1", "--format", fmt]) == 0
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["labels"]["2"] == "tumour" and meta["numTraining"] == 3
    # Official-layout weights (the tiny fixture) + the matching preset, one centre click per lesion.
    args = ["predict", str(ds / "imagesTr"), "--out", str(preds), "--checkpoint", str(official_ckpt)]
    args += ["--preset", "tiny", "--clicks-from", str(ds / "labelsTr"), "--label", "2", "--max-windows", "2"]
    assert main(args) == 0
    images = sorted((ds / "imagesTr").iterdir())
    masks = sorted(p for p in preds.iterdir() if p.is_file())
    assert [m.name for m in masks] == [i.name for i in images]
    for img, mask in zip(images, masks, strict=True):
        assert read_image(mask).same_geometry(read_image(img), atol=1e-6)
    # The case without lesions gets an empty mask.
    assert not read_image(masks[-1]).array.any()
    capsys.readouterr()
    assert main(["evaluate", str(preds), str(ds / "labelsTr"), "--label", "2", "--out", str(tmp_path / "m")]) == 0
    table = capsys.readouterr().out
    assert "dice" in table.lower()
    rows = list(csv.DictReader((tmp_path / "m" / "metrics.csv").open()))
    assert len(rows) == 3
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    empty = rows[-1]
    assert float(empty["dice"]) == 1.0 and int(empty["gt_lesions"]) == 0  # both empty: Dice 1 by convention
    summary = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert "conventions" in summary


def test_predict_single_file_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = tmp_path / "ds"
    assert main(["synth", str(ds), "--cases", "1", "--size", "48"]) == 0
    img = ds / "imagesTr" / "case_000.nii.gz"
    cases = [
        (["--point", "1000,1,1"], "outside the image"),
        (["--point", "1,2"], "three comma-separated numbers"),
        (["--clicks-from", str(ds / "labelsTr" / "case_000.nii.gz"), "--label", "9"], "label value 9 not found"),
        (["--point", "1,1,1", "--prompts", str(tmp_path / "p.json")], "exactly one of"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        code = main(["predict", str(img), "--out", str(tmp_path / "o" / "m.nii.gz"), "--preset", "tiny", *extra])
        err = capsys.readouterr().err
        assert code == 2, extra
        assert message in err and err.startswith("lesionsam predict: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    missing = main(["predict", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "m.nii.gz"), "--point", "1,1,1"])
    assert missing == 2 and "input not found" in capsys.readouterr().err
    corrupt = tmp_path / "bad.nii.gz"
    corrupt.write_bytes(b"not an image")
    assert main(["predict", str(corrupt), "--out", str(tmp_path / "m.nii.gz"), "--point", "1,1,1"]) == 2
    assert "not a readable image" in capsys.readouterr().err


def test_predict_2d_image_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(20, 20).astype(np.float32)), str(tmp_path / "slice.nrrd"))
    code = main(["predict", str(tmp_path / "slice.nrrd"), "--out", str(tmp_path / "m.nrrd"), "--point", "1,1,0"])
    assert code == 2 and "2D image" in capsys.readouterr().err
