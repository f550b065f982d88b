"""Defaults that must not silently do the wrong thing: the lesion label, ``-v`` after the sub-command, light imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lesionsam.cli.main import main
from lesionsam.data.io import read_image
from lesionsam.data.labels import resolve_lesion_label
from lesionsam.data.synthetic import write_synthetic_dataset
from lesionsam.models.checkpoint import FORMAT


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("defaults") / "ds"
    write_synthetic_dataset(root, cases=2, size=32, seed=5, progress=False)  # labels 1 liver, 2 tumour, 3 vessel
    return root


def test_evaluate_takes_the_tumour_label_from_dataset_json_and_says_so(ds: Path, tmp_path: Path, capsys) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in (ds / "labelsTr").iterdir():
        shutil.copy(f, pred / f.name)
    assert main(["evaluate", str(pred), str(ds / "labelsTr"), "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert f"lesion label 2 (from 'tumour' in {ds / 'dataset.json'}" in err  # not 1, the liver
    settings = json.loads((tmp_path / "m" / "metrics.json").read_text())["settings"]
    assert settings["label"] == 2


def test_predict_clicks_from_takes_the_tumour_label_and_says_so(ds: Path, tmp_path: Path, capsys) -> None:
    img, lab = ds / "imagesTr" / "case_000.nii.gz", ds / "labelsTr" / "case_000.nii.gz"
    out = tmp_path / "m.nii.gz"
    with pytest.warns(UserWarning, match="random weights"):
        code = main(["predict", str(img), "--out", str(out), "--clicks-from", str(lab), "--preset", "tiny"])
    assert code == 0
    captured = capsys.readouterr()
    assert "lesion label 2 (from 'tumour'" in captured.err
    tumours = int(json.loads((ds / "dataset.json").read_text())["lesion_volumes_mm3"]["case_000"].__len__())
    assert f"({tumours} lesion(s)" in captured.out  # one click per tumour, not one on the liver
    assert read_image(out).array.shape == read_image(img).array.shape


def test_the_label_rule(tmp_path: Path) -> None:
    def with_labels(name: str, labels: dict[str, str]) -> Path:
        folder = tmp_path / name / "labelsTr"
        folder.mkdir(parents=True)
        (folder.parent / "dataset.json").write_text(json.dumps({"labels": labels}))
        return folder

    liver = with_labels("liver", {"0": "background", "1": "liver", "2": "cancer"})
    assert resolve_lesion_label(None, liver)[0] == 2
    assert resolve_lesion_label(3, liver) == (3, "--label")
    brain = with_labels("brain", {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"})
    with pytest.raises(ValueError, match="several lesion labels.*--label N"):
        resolve_lesion_label(None, brain)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ValueError, match="give --label N"):
        resolve_lesion_label(None, bare)
    assert resolve_lesion_label(None, bare, checkpoint_label=lambda: 4)[0] == 4


def test_checkpoint_target_label(tmp_path: Path) -> None:
    from lesionsam.workflows.predict import checkpoint_target_label

    one = tmp_path / "one.pt"
    torch.save({"format": FORMAT, "config": {"data": {"target_label": 3, "target_labels": []}}}, one)
    assert checkpoint_target_label(one) == 3
    several = tmp_path / "several.pt"
    torch.save({"format": FORMAT, "config": {"data": {"target_label": 2, "target_labels": [1, 2]}}}, several)
    assert checkpoint_target_label(several) is None
    official = tmp_path / "official.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(1)}}, official)
    assert checkpoint_target_label(official) is None


def test_verbose_after_the_sub_command(ds: Path, tmp_path: Path, capsys) -> None:
    args = ["evaluate", str(ds / "labelsTr"), str(ds / "labelsTr"), "--label", "2"]
    # same folder: refused, but -v is parsed (argparse would exit 2 with "unrecognized arguments: -v")
    assert main([*args, "-v"]) == 2
    assert "same folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--no-such-flag"])


def test_negative_coordinates_parse(ds: Path, tmp_path: Path, capsys) -> None:
    img = ds / "imagesTr" / "case_000.nii.gz"
    for argv in (["--point", "-5,10,10"], ["--point=-5,10,10"]):
        with pytest.warns(UserWarning):
            code = main(["predict", str(img), "--out", str(tmp_path / "m.nii.gz"), *argv, "--preset", "tiny"])
        assert code == 2
        assert "outside the image" in capsys.readouterr().err


def test_evaluate_command_setup_imports_no_torch() -> None:
    """Parsing and setting up ``evaluate`` (label rule, path checks) stays free of torch, MONAI and matplotlib."""
    code = (
        "import sys; from lesionsam.cli.main import build_parser; build_parser(); "
        "import lesionsam.workflows.evaluate, lesionsam.data.labels, lesionsam.utils.paths; "
        "print(sorted(m for m in ('torch', 'monai', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_truncated_nifti_is_refused(ds: Path, tmp_path: Path) -> None:
    from lesionsam.data.io import ImageIOError, write_image

    vol = read_image(ds / "imagesTr" / "case_000.nii.gz")
    plain = write_image(vol.array, tmp_path / "a.nii", reference=vol, compress=False)
    gz = ds / "imagesTr" / "case_000.nii.gz"
    for src in (plain, gz):
        data = src.read_bytes()
        cut = tmp_path / f"cut_{src.name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageIOError, match="truncated"):
            read_image(cut)
    assert np.array_equal(read_image(plain).array, vol.array)  # complete files still read
