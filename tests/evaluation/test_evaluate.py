"""Folder evaluation: pairing, CSV/JSON output, errors, the workflow function and the CLI sub-command."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

import lesionsam.cli.evaluate  # noqa: F401  (registers the sub-command)
from lesionsam.cli.main import main
from lesionsam.data.io import Volume, write_image
from lesionsam.evaluation.evaluate import CSV_COLUMNS, case_id, evaluate_folder, pair_cases
from lesionsam.evaluation.metrics import case_metrics
from lesionsam.workflows.evaluate import default_out_dir, evaluate

SHAPE = (12, 24, 24)  # (D, H, W) = (k, j, i)
SPACING_IJK = (1.0, 1.0, 3.0)  # 3 mm slices along k = array axis 0


def ref(spacing: tuple[float, float, float] = SPACING_IJK, origin: tuple[float, float, float] = (0.0, 0.0, 0.0)):
    return Volume(
        array=np.zeros(SHAPE, np.uint8), spacing=spacing, origin=origin, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)
    )


def box(lo: tuple[int, int, int], size: tuple[int, int, int], value: int = 1) -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    a[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = value
    return a


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """3 cases: a perfect one, one shifted by 1 slice (3 mm), one with GT lesion missed + a false positive."""
    gt_dir, pred_dir = tmp_path / "labelsTr", tmp_path / "pred"
    gt_a = box((3, 5, 5), (4, 6, 6))
    write_image(gt_a, gt_dir / "case_a.nii.gz", reference=ref())
    write_image(gt_a * 7, pred_dir / "case_a.nii.gz", reference=ref())  # any value > 0 is foreground

    gt_b = box((3, 5, 5), (4, 6, 6))
    write_image(gt_b, gt_dir / "case_b.nii.gz", reference=ref())
    write_image(box((4, 5, 5), (4, 6, 6)), pred_dir / "case_b_pred.nii.gz", reference=ref())

    gt_c = box((2, 2, 2), (2, 2, 2)) + box((8, 15, 15), (3, 4, 4), value=2)  # label 2 elsewhere: not a target
    write_image(gt_c, gt_dir / "case_c.nii.gz", reference=ref())
    write_image(box((8, 15, 15), (2, 2, 2)), pred_dir / "case_c_0000.nii.gz", reference=ref())
    (pred_dir / "notes.txt").write_text("not an image")
    return pred_dir, gt_dir


def test_case_id_strips_image_endings() -> None:
    assert case_id("a/liver_3.nii.gz") == "liver_3"
    assert case_id("x.NRRD") == "x"
    assert case_id("b.mha") == "b"


def test_pairing_accepts_pred_and_0000_suffixes(dataset: tuple[Path, Path]) -> None:
    pred_dir, gt_dir = dataset
    pairs, missing, ignored = pair_cases(pred_dir, gt_dir)
    assert [(p.case, p.pred.name) for p in pairs] == [
        ("case_a", "case_a.nii.gz"),
        ("case_b", "case_b_pred.nii.gz"),
        ("case_c", "case_c_0000.nii.gz"),
    ]
    assert missing == [] and ignored == []


def test_folder_evaluation_writes_csv_and_json(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    pred_dir, gt_dir = dataset
    out = tmp_path / "metrics"
    result = evaluate_folder(pred_dir, gt_dir, out_dir=out, nsd_tolerance_mm=2.0)

    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]  # no temp files left
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["case"] for r in rows] == ["case_a", "case_b", "case_c"]
    a, b, c = rows
    assert (float(a["dice"]), float(a["nsd"]), float(a["hd95_mm"])) == (1.0, 1.0, 0.0)
    assert float(b["dice"]) == pytest.approx(0.75)  # 3 of 4 slices overlap
    assert float(b["hd95_mm"]) == pytest.approx(3.0)  # 1 slice × 3 mm: the ITK spacing was reversed
    assert float(a["gt_volume_ml"]) == pytest.approx(4 * 6 * 6 * 3 / 1000)
    assert (c["gt_lesions"], c["pred_lesions"], c["tp"], c["fp"], c["fn"]) == ("1", "1", "0", "1", "1")
    assert float(c["dice"]) == 0.0

    data = json.loads((out / "metrics.json").read_text())
    assert data["settings"]["label"] == 1 and data["settings"]["prediction_foreground"] == "pred > 0"
    assert data["settings"]["connectivity"] == 26
    assert "empty" in data["conventions"]
    assert [row["case"] for row in data["cases"]] == ["case_a", "case_b", "case_c"]
    det = data["summary"]["lesion_detection"]
    assert (det["tp"], det["fp"], det["fn"]) == (2, 1, 1)
    assert det["f1"] == pytest.approx(4 / 6)
    assert data["summary"]["dice"]["mean"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert data["summary"]["dice"]["median"] == pytest.approx(0.75)
    by_vol = data["summary"]["lesion_dice_by_volume"]
    assert by_vol["<0.5 cm3"]["count"] == 3 and by_vol[">=10 cm3"]["count"] == 0  # 0.432 ml each
    kinds = [(les["case"], les["kind"], les["detected"]) for les in data["lesions"]]
    assert kinds == [("case_a", "gt", True), ("case_b", "gt", True), ("case_c", "gt", False), ("case_c", "fp", False)]
    assert data["lesions"][3]["dice"] is None  # NaN → null: strict JSON

    assert result.csv_path == out / "metrics.csv" and result.json_path == out / "metrics.json"
    table = result.table()
    assert "case_b" in table and "HD95" in table and "F1 0.667" in table


def test_undefined_hd95_is_nan_in_csv_null_in_json_and_counted(tmp_path: Path) -> None:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_image(box((3, 5, 5), (4, 6, 6)), gt_dir / "x.nii.gz", reference=ref())
    write_image(np.zeros(SHAPE, np.uint8), pred_dir / "x.nii.gz", reference=ref())
    write_image(np.zeros(SHAPE, np.uint8), gt_dir / "y.nii.gz", reference=ref())
    write_image(np.zeros(SHAPE, np.uint8), pred_dir / "y.nii.gz", reference=ref())
    result = evaluate_folder(pred_dir, gt_dir, out_dir=tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "metrics.csv", newline="")))
    assert rows[0]["hd95_mm"] == "nan" and float(rows[1]["hd95_mm"]) == 0.0
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["cases"][0]["hd95_mm"] is None
    assert data["summary"]["hd95_mm"]["n_undefined"] == 1 and data["summary"]["hd95_mm"]["mean"] == 0.0
    assert "1 undefined" in result.table()


def test_pred_label_selects_one_value(tmp_path: Path) -> None:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_image(box((3, 5, 5), (4, 6, 6)), gt_dir / "x.nii.gz", reference=ref())
    write_image(box((3, 5, 5), (4, 6, 6), 2) + box((9, 18, 18), (2, 2, 2), 1), pred_dir / "x.nii", reference=ref())
    assert evaluate_folder(pred_dir, gt_dir).cases[0].fp == 1
    only2 = evaluate_folder(pred_dir, gt_dir, pred_label=2)
    assert (only2.cases[0].fp, only2.cases[0].dice) == (0, 1.0)
    assert only2.settings["prediction_foreground"] == "pred == 2"


def test_geometry_mismatch_names_case_and_difference(dataset: tuple[Path, Path]) -> None:
    pred_dir, gt_dir = dataset
    write_image(box((3, 5, 5), (4, 6, 6)), pred_dir / "case_a.nii.gz", reference=ref(spacing=(1.0, 1.0, 2.0)))
    with pytest.raises(ValueError, match=r"case 'case_a'.*spacing \(1\.0, 1\.0, 3\.0\) vs \(1\.0, 1\.0, 2\.0\)"):
        evaluate_folder(pred_dir, gt_dir)


def test_missing_prediction_is_an_error_unless_allowed(dataset: tuple[Path, Path], caplog) -> None:
    pred_dir, gt_dir = dataset
    (pred_dir / "case_b_pred.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"1 of 3 ground-truth case\(s\) have no prediction .*: case_b"):
        evaluate_folder(pred_dir, gt_dir)
    with caplog.at_level(logging.WARNING):
        result = evaluate_folder(pred_dir, gt_dir, allow_missing=True)
    assert [c.case for c in result.cases] == ["case_a", "case_c"]
    assert result.missing == ["case_b"] and result.summary["missing_predictions"] == ["case_b"]
    assert "case_b" in caplog.text


def test_prediction_without_ground_truth_is_ignored_with_a_warning(dataset: tuple[Path, Path], caplog) -> None:
    pred_dir, gt_dir = dataset
    write_image(box((3, 5, 5), (4, 6, 6)), pred_dir / "stray.nii.gz", reference=ref())
    with caplog.at_level(logging.WARNING):
        result = evaluate_folder(pred_dir, gt_dir)
    assert len(result.cases) == 3 and result.ignored == ["stray.nii.gz"]
    assert "stray.nii.gz" in caplog.text


def test_absent_label_lists_values_present(dataset: tuple[Path, Path]) -> None:
    pred_dir, gt_dir = dataset
    with pytest.raises(ValueError, match=r"^label 3 not found in any ground truth; values present: \[0, 1, 2\]$"):
        evaluate_folder(pred_dir, gt_dir, label=3)


def test_folder_errors(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    pred_dir, gt_dir = dataset
    with pytest.raises(FileNotFoundError, match="prediction folder not found"):
        evaluate_folder(tmp_path / "nope", gt_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        evaluate_folder(pred_dir, empty)
    with pytest.raises(ValueError, match="did you mean"):
        evaluate_folder(pred_dir, tmp_path)  # the data set root holding labelsTr/
    with pytest.raises(ValueError, match="same folder"):
        evaluate_folder(gt_dir, gt_dir)


def test_probability_map_is_refused(tmp_path: Path) -> None:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_image(box((3, 5, 5), (4, 6, 6)), gt_dir / "x.nii.gz", reference=ref())
    write_image(box((3, 5, 5), (4, 6, 6)).astype(np.float32) * 0.7, pred_dir / "x.nii.gz", reference=ref())
    with pytest.raises(ValueError, match="non-integer values"):
        evaluate_folder(pred_dir, gt_dir)


def test_failed_write_keeps_old_file_and_leaves_no_temp(dataset: tuple[Path, Path], tmp_path, monkeypatch) -> None:
    pred_dir, gt_dir = dataset
    out = tmp_path / "out"
    result = evaluate_folder(pred_dir, gt_dir, out_dir=out)
    before = (out / "metrics.json").read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    result.cases = result.cases[:1]
    with pytest.raises(OSError, match="disk full"):
        result.write(out)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]
    assert (out / "metrics.json").read_bytes() == before


def test_workflow_default_out_is_not_read_as_predictions(dataset: tuple[Path, Path]) -> None:
    pred_dir, gt_dir = dataset
    first = evaluate(pred_dir, gt_dir, label=1, progress=False)
    assert first.json_path == default_out_dir(pred_dir) / "metrics.json"
    second = evaluate(pred_dir, gt_dir, label=1, progress=False)  # the metrics/ folder is skipped
    assert [c.case for c in second.cases] == ["case_a", "case_b", "case_c"]
    assert second.ignored == []


def test_cli_prints_table_and_output_paths(dataset: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    pred_dir, gt_dir = dataset
    out = tmp_path / "cli_out"
    code = main(["evaluate", str(pred_dir), str(gt_dir), "--out", str(out), "--nsd-tolerance", "1.5", "--label", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "NSD@1.5mm" in printed and "case_c" in printed and str(out / "metrics.json") in printed
    assert json.loads((out / "metrics.json").read_text())["settings"]["nsd_tolerance_mm"] == 1.5


def test_cli_nsd_mode_and_lesion_matching_reach_the_results(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    pred_dir, gt_dir = dataset
    runs = {
        "default": [],
        "voxel_iou": ["--nsd", "voxel", "--lesion-matching", "iou", "--iou-threshold", "0.6"],
        "strict": ["--lesion-matching", "iou", "--iou-threshold", "0.61"],
    }
    data = {}
    for name, extra in runs.items():
        assert (
            main(["evaluate", str(pred_dir), str(gt_dir), "--out", str(tmp_path / name), "--label", "1", *extra]) == 0
        )
        data[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert (data["default"]["settings"]["nsd_mode"], data["default"]["settings"]["lesion_matching"]) == (
        "area",
        "overlap",
    )
    assert data["voxel_iou"]["settings"]["nsd_mode"] == "voxel"
    assert data["voxel_iou"]["settings"]["lesion_iou_threshold"] == 0.6
    gt_b, pred_b = box((3, 5, 5), (4, 6, 6)), box((4, 5, 5), (4, 6, 6))  # case_b: one 3 mm slice off
    for name, mode in (("default", "area"), ("voxel_iou", "voxel")):
        expected = case_metrics(pred_b, gt_b, (3.0, 1.0, 1.0), nsd_mode=mode)
        row = data[name]["cases"][1]
        assert row["nsd"] == pytest.approx(expected.nsd) and row["assd_mm"] == pytest.approx(expected.assd_mm)
    assert data["default"]["cases"][1]["nsd"] != pytest.approx(data["voxel_iou"]["cases"][1]["nsd"])
    # case_b's IoU is 3/5: matched at 0.6, not at 0.61; case_c's prediction touches no lesion either way
    det = {name: data[name]["summary"]["lesion_detection"] for name in data}
    assert (det["voxel_iou"]["tp"], det["voxel_iou"]["fp"], det["voxel_iou"]["fn"]) == (2, 1, 1)
    assert (det["strict"]["tp"], det["strict"]["fp"], det["strict"]["fn"]) == (1, 2, 2)
    assert data["default"]["summary"]["panoptic"]["micro"]["pq"] == pytest.approx((1 + 0.6) / (2 + 0.5 + 0.5))
    assert data["default"]["summary"]["lesion_free_cases"]["n_cases"] == 0


@pytest.mark.parametrize(
    ("remove", "extra"), [(False, ["--label", "4"]), (True, ["--label", "1"])], ids=["label", "missing"]
)
def test_cli_user_errors_exit_2_with_one_line(
    dataset: tuple[Path, Path], tmp_path: Path, capsys, remove: bool, extra: list[str]
) -> None:
    pred_dir, gt_dir = dataset
    if remove:
        (pred_dir / "case_a.nii.gz").unlink()
    code = main(["evaluate", str(pred_dir), str(gt_dir), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("lesionsam evaluate: error:")
    assert ("label 4 not found" if not remove else "have no prediction") in err[0]
    assert not (tmp_path / "o").exists()


def test_binary_masks_need_no_label(dataset: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    """Ground truths holding only 0 and 1 (no dataset.json) are scored on value 1, said in one line; a folder whose
    maps hold several values still needs --label."""
    pred_dir, gt_dir = dataset
    binary = tmp_path / "binary"
    for name in ("case_a", "case_b"):
        binary.mkdir(exist_ok=True)
        (binary / f"{name}.nii.gz").write_bytes((gt_dir / f"{name}.nii.gz").read_bytes())
    code = main(["evaluate", str(pred_dir), str(binary), "--out", str(tmp_path / "m1"), "--allow-missing"])
    err = capsys.readouterr().err
    assert code == 0 and "lesion label 1 (from the only foreground value of the label maps" in err
    assert json.loads((tmp_path / "m1" / "metrics.json").read_text())["settings"]["label"] == 1
    code = main(["evaluate", str(pred_dir), str(gt_dir), "--out", str(tmp_path / "m2")])  # case_c holds 1 and 2
    assert code == 2 and "hold several foreground values: give --label N" in capsys.readouterr().err
