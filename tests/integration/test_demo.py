"""``lesionsam demo --quick``: the main job end to end; the report's numbers come from the evaluator's files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lesionsam.cli.main import main


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
        (c, p) for c in ("tumour", "cyst") for p in ("text", "clicks", "both")
    }
    table = (out / "text_study.md").read_text()
    for r in rows:
        metrics = json.loads((out / r["source"]).read_text())
        assert metrics["summary"]["dice"]["mean"] == r["dice_mean"]
        assert metrics["settings"]["label"] == r["label"]
        assert f"{r['dice_mean']:.3f} ± {r['dice_sd']:.3f}" in table
        cross = json.loads((out / r["source"].replace("metrics/", "metrics_other_class/")).read_text())
        assert cross["settings"]["label"] == ({2, 4} - {r["label"]}).pop()
        assert cross["summary"]["dice"]["mean"] == r["dice_other_class"]


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
