"""The report's Findings, lesion-free cases and volume ratios, checked against a direct computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionsam.evaluation.evaluate import EvaluationResult
from lesionsam.evaluation.findings import (
    LesionFree,
    RatioSummary,
    fmt_ratio,
    lesion_case_dice,
    segmentation_warning,
    volume_ratios,
)
from lesionsam.evaluation.metrics import case_metrics, summarise
from lesionsam.evaluation.report import MethodRun, load_metrics, write_report
from lesionsam.evaluation.statistics import paired_comparison

N_CASES = 6  # case_5 is lesion-free


def _gt(c: int) -> np.ndarray:
    gt = np.zeros((20, 20, 20), bool)
    if c < N_CASES - 1:
        s = 4 + c  # cubes of 4..8 voxels a side
        gt[5 : 5 + s, 5 : 5 + s, 5 : 5 + s] = True
    return gt


def _pred(method: str, c: int) -> np.ndarray:
    gt = _gt(c)
    if method == "finetune":
        pred = np.roll(gt, 2, axis=2)
        if not gt.any():
            pred[0:2, 0:2, 0:2] = True  # 8 false-positive voxels on the lesion-free case
    elif method == "good":
        pred = np.roll(gt, 1, axis=2)
    else:  # "flood": a block over most of the volume, on every case
        pred = np.zeros_like(gt)
        pred[2:18, 2:18, 2:18] = True
    return pred


def _dice(p: np.ndarray, g: np.ndarray) -> float:
    return 2.0 * (p & g).sum() / (p.sum() + g.sum())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[MethodRun]:
    root = tmp_path_factory.mktemp("findings")
    out = []
    for method in ("finetune", "good", "flood"):
        cases = [case_metrics(_pred(method, c), _gt(c), (1.0, 1.0, 1.0), case=f"case_{c}") for c in range(N_CASES)]
        settings = {"label": 2, "nsd_tolerance_mm": 2.0, "pred_label": None}
        EvaluationResult(cases=cases, summary=summarise(cases), settings=settings).write(root / method)
        out.append(MethodRun(method, root / method))
    return out


def _cases_table_row(text: str, name: str) -> list[str]:
    part = text.split("Cases with a lesion and lesion-free cases, apart:", 1)[1]
    line = next(ln for ln in part.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _findings(text: str) -> list[str]:
    part = text.split("## Findings\n\n", 1)[1].split("\n\n", 1)[0]
    return [ln[2:] for ln in part.splitlines()]


def test_findings_match_a_direct_computation(runs: list[MethodRun], tmp_path: Path) -> None:
    text = write_report(tmp_path, runs, images_dir=tmp_path, labels_dir=tmp_path, label=2, n_boot=2000).read_text()
    lines = _findings(text)
    lesion_cases = range(N_CASES - 1)
    direct = {m: {f"case_{c}": _dice(_pred(m, c), _gt(c)) for c in lesion_cases} for m in ("finetune", "good", "flood")}

    good = next(ln for ln in lines if ln.startswith("**good vs finetune**"))
    ref = paired_comparison(direct["finetune"], direct["good"], n_boot=2000, seed=0)
    assert ref.verdict == "better" and ref.n == 5
    assert "over 5 case(s) with a lesion" in good
    assert f"mean paired difference {ref.mean_diff:+.3f}" in good
    assert f"95% bootstrap CI {ref.ci_low:+.3f} to {ref.ci_high:+.3f}" in good
    assert f"Wilcoxon p = {ref.p_wilcoxon:.3g}" in good
    assert "beyond noise: good is better than finetune (tentative: Wilcoxon p >= 0.05; with 5 cases" in good

    flood = next(ln for ln in lines if ln.startswith("**flood vs finetune**"))
    ref = paired_comparison(direct["finetune"], direct["flood"], n_boot=2000, seed=0)
    assert f"mean paired difference {ref.mean_diff:+.3f}" in flood
    assert f"flood is {ref.verdict} than finetune" in flood and ref.verdict == "worse"

    # the warning: present for the flood, absent for the two others
    median = float(np.median([_pred("flood", c).sum() / _gt(c).sum() for c in lesion_cases]))
    warnings = [ln for ln in lines if ln.startswith("⚠")]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"⚠ flood over-segments: median predicted/GT volume {median:.0f}×")

    # lesion-free cases apart; Dice over cases with a lesion in the second table
    for m in ("finetune", "good", "flood"):
        row = _cases_table_row(text, m)
        d = list(direct[m].values())
        assert row[1] == f"{np.mean(d):.3f} ± {np.std(d):.3f} (5)"
        ratios = [_pred(m, c).sum() / _gt(c).sum() for c in lesion_cases]
        assert row[2] == f"{fmt_ratio(np.median(ratios))} ({fmt_ratio(min(ratios))}–{fmt_ratio(max(ratios))})"
    assert _cases_table_row(text, "good")[3].startswith("1/1 predicted empty; 0.00 cm³")
    assert _cases_table_row(text, "finetune")[3].startswith("0/1 predicted empty; 0.01 cm³")  # 8 voxels of 1 mm³
    assert _cases_table_row(text, "flood")[3].startswith(f"0/1 predicted empty; {16**3 / 1000:.2f} cm³")
    assert any(ln.startswith("Lesion-free test cases (1), kept out of the Dice above") for ln in lines)


def test_findings_helpers(runs: list[MethodRun]) -> None:
    m = load_metrics(runs[2].eval_dir)
    assert set(lesion_case_dice(m)) == {f"case_{c}" for c in range(N_CASES - 1)}
    ratios = volume_ratios(m)
    assert ratios["case_0"] == pytest.approx(16**3 / 4**3)
    free = LesionFree.of(m)
    assert (free.n, free.predicted_empty) == (1, 0) and free.fp_volume_ml == pytest.approx(4.096)
    r = RatioSummary.of([1.0, 3.0, 2.0])
    assert (r.n, r.median, r.low, r.high) == (3, 2.0, 1.0, 3.0)
    assert segmentation_warning("x", 45.2) == "⚠ x over-segments: median predicted/GT volume 45×"
    assert segmentation_warning("x", 0.31) == "⚠ x under-segments: median predicted/GT volume 0.31×"
    assert segmentation_warning("x", 2.0) is None and segmentation_warning("x", 0.5) is None
    assert segmentation_warning("x", None) is None


def test_one_run_and_few_cases(runs: list[MethodRun], tmp_path: Path) -> None:
    text = write_report(tmp_path, runs[:1], images_dir=tmp_path, labels_dir=tmp_path, label=2).read_text()
    assert "One method only (finetune): nothing to compare it with." in text


def test_gate_finding_says_whether_the_gates_depend_on_the_input() -> None:
    from lesionsam.evaluation.findings import gate_finding
    from lesionsam.evaluation.report_io import GateRow

    def rows(rates: dict[str, list[float]]) -> list[GateRow]:
        return [
            GateRow(case="c", lesion=i, volume_ml=0.5, size_bin=b, gate_rate=r)
            for b, rs in rates.items()
            for i, r in enumerate(rs)
        ]

    fixed = gate_finding("sgp_sam", rows({"<1 cm3": [0.5, 0.5], "no lesion": [0.5]}))
    assert "do not depend on the input" in fixed and "(n=2)" in fixed and "no lesion 0.50 (n=1)" in fixed
    varying = gate_finding("sgp_sam", rows({"<1 cm3": [1.0, 0.5], "no lesion": [0.0]}))
    assert "differs by 0.75" in varying
