"""``lesionsam demo --quick``: the main job end to end; the report's numbers come from the evaluator's files."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from lesionsam.cli.main import main
from lesionsam.data.io import Volume, write_image
from lesionsam.evaluation.coverage import class_coverage


def test_quick_demo_writes_a_report_built_from_the_evaluator_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("LESIONSAM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "expected: under" in err  # says how long it takes at the start
    report = (out / "report" / "report.md").read_text()
    for method in ("finetune", "sgp_sam"):
        metrics = json.loads((out / method / "test_metrics" / "metrics.json").read_text())
        dice = metrics["summary"]["dice"]
        row = next(line for line in report.splitlines() if line.startswith(f"| {method} |"))
        assert f"{dice['mean']:.3f} ± {dice['std']:.3f}" in row
        assert (out / method / "best.pt").is_file() and (out / method / "train_log.csv").is_file()
    gates = (out / "sgp_sam" / "gates.csv").read_text().splitlines()
    assert gates[0] == "case,lesion,volume_ml,size_bin,gate_rate" and len(gates) > 1
    for link in re.findall(r"\]\((figures/[^)]+\.png)\)", report):
        assert (out / "report" / link).stat().st_size > 1000
    # The pretrained anatomy model is cached and reused by the next run.
    assert main(["demo", "--quick", "--out", str(tmp_path / "again")]) == 0
    assert "found in the cache" in capsys.readouterr().err


def test_ablate_rejects_unknown_methods(capsys: pytest.CaptureFixture) -> None:
    assert main(["ablate", "--methods", "finetune,sgp_sm", "--quick"]) == 2
    assert "Did you mean 'sgp_sam'" in capsys.readouterr().err


def test_quick_text_study_reports_per_class_dice_from_evaluator_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LESIONSAM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ts"
    assert main(["text-study", "--quick", "--out", str(out)]) == 0
    rows = json.loads((out / "text_study.json").read_text())
    assert {(r["class"], r["prompt"]) for r in rows} == {
        (c, p) for c in ("tumour", "cyst") for p in ("text", "text_own", "clicks", "both")
    }
    # Text alone is decided against the other class's first text (the checkpoint knows both classes).
    assert {r["class"]: r["competitors"] for r in rows if r["prompt"] == "text"} == {
        "tumour": ["liver cyst"],
        "cyst": ["liver tumour"],
    }
    table = (out / "text_study.md").read_text()
    for r in rows:
        metrics = json.loads((out / r["source"]).read_text())
        assert metrics["summary"]["dice"]["mean"] == r["dice_mean"]
        assert metrics["settings"]["label"] == r["label"]
        assert f"{r['dice_mean']:.3f} ± {r['dice_sd']:.3f}" in table
        other_label = ({2, 4} - {r["label"]}).pop()
        cross = json.loads((out / r["source"].replace("metrics/", "metrics_other_class/")).read_text())
        assert cross["settings"]["label"] == other_label
        assert cross["summary"]["dice"]["mean"] == r["dice_other_class"]
        own, other = class_coverage(
            out / Path(r["source"]).parent.parent, out / "data" / "test" / "labelsTr", (r["label"], other_label)
        ).values()
        assert (own, other) == (r["covers_own_class"], r["covers_other_class"])
        assert f"| {own:.0%} | {other:.0%} |" in table


def test_class_coverage_pools_voxels_over_cases(tmp_path: Path) -> None:
    """Known overlaps: case a covers 2 of 4 class-2 voxels and 1 of 2 class-4 voxels, case b 0 of 4 and 2 of 2."""
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    labels.mkdir()
    preds.mkdir()
    ref = Volume(
        array=np.zeros((4, 4, 4), np.uint8),
        spacing=(1.0, 1.0, 2.0),
        origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    label = np.zeros((4, 4, 4), np.uint8)
    label[0, 0, :] = 2
    label[1, 0, :2] = 4
    pred_a, pred_b = np.zeros_like(label), np.zeros_like(label)
    pred_a[0, 0, :2] = 2  # 2 of the 4 class-2 voxels
    pred_a[1, 0, 0] = 2  # 1 of the 2 class-4 voxels
    pred_a[3, 3, :] = 1  # outside both classes
    pred_b[1, 0, :] = 4  # both class-4 voxels, no class-2 voxel
    for case, pred in (("a", pred_a), ("b", pred_b)):
        write_image(label, labels / f"case_{case}.nii.gz", reference=ref)
        write_image(pred, preds / f"case_{case}.nii.gz", reference=ref)
    got = class_coverage(preds, labels, (2, 4, 7))
    assert got[2] == pytest.approx(2 / 8) and got[4] == pytest.approx(3 / 4) and math.isnan(got[7])


def test_quick_auto_study_compares_hsam_auto_with_one_click_per_lesion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LESIONSAM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "auto"
    assert main(["auto-study", "--quick", "--out", str(out)]) == 0
    rows = json.loads((out / "auto_study.json").read_text())
    assert {(r["class"], r["method"]) for r in rows} == {
        (c, m) for c in ("tumour", "cyst") for m in ("hsam", "finetune")
    }
    assert len(rows) == 6  # per class: H-SAM as it comes and with small components dropped, and the baseline
    table = (out / "auto_study.md").read_text()
    for r in rows:
        metrics = json.loads((out / r["source"]).read_text())
        assert metrics["summary"]["lesion_detection"]["f1"] == r["lesion_f1"]
        assert metrics["settings"]["label"] == r["label"]
        if r["method"] == "hsam":  # the automatic label map holds each class's own value
            assert metrics["settings"]["pred_label"] == r["label"]
        assert f"{r['dice_mean']:.3f} ± {r['dice_sd']:.3f} | {r['lesion_f1']:.3f}" in table
    # H-SAM and the baseline trained under the same budget.
    logs = {m: (out / m / "train_log.csv").read_text().splitlines() for m in ("hsam", "finetune")}
    assert len(logs["hsam"]) == len(logs["finetune"])
    steps = {m: int(lines[-1].split(",")[1]) for m, lines in logs.items()}
    assert steps["hsam"] == steps["finetune"]
