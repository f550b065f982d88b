"""Lesion Dice and detection by size: a hand-made case with lesions in three bins, the ablation's and the click
curves' size tables, intervals against the statistics module, and results written with the older three bins."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lesionsam.configs import packaged_sweep
from lesionsam.evaluation.ablation_clicks import click_markdown, click_summary
from lesionsam.evaluation.evaluate import EvaluationResult
from lesionsam.evaluation.figures import size_bin_label
from lesionsam.evaluation.interactive import LesionCurve, summarise_curves
from lesionsam.evaluation.lesions import COARSE_VOLUME_BINS_ML, LEGACY_VOLUME_BINS_ML, VOLUME_BINS_ML, bins_named
from lesionsam.evaluation.metrics import case_metrics, summarise
from lesionsam.evaluation.report import AblationEntry, write_ablation
from lesionsam.evaluation.report_io import small_bin
from lesionsam.evaluation.sizes import coarse_markdown, method_sizes, runs_bins_markdown, size_groups
from lesionsam.evaluation.statistics import bootstrap_mean_ci, seed_case_bootstrap_ci
from lesionsam.evaluation.sweeps import read_sweep_rows
from lesionsam.workflows.clicks import ClickEvaluation

SPACING = (2.0, 1.0, 1.0)  # 2 mm³ voxels: 500 voxels = 1 cm³
LABELS = ["< 0.5 cm³", "0.5–1 cm³", "1–5 cm³", "5–10 cm³", "≥ 10 cm³"]


def _case_a(miss_l2: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """L1: 100 voxels (0.2 cm³), half predicted → Dice 2·50/150; L2: 400 voxels (0.8 cm³), exact → Dice 1."""
    gt = np.zeros((20, 30, 30), bool)
    pred = np.zeros_like(gt)
    gt[0:4, 0:5, 0:5] = True
    pred[0:2, 0:5, 0:5] = True
    gt[8:12, 10:20, 10:20] = True
    if not miss_l2:
        pred[8:12, 10:20, 10:20] = True
    return pred, gt


def _case_b() -> tuple[np.ndarray, np.ndarray]:
    """L3: 1000 voxels (2 cm³), its first half predicted → Dice 2·500/1500; L4: 150 voxels (0.3 cm³), missed."""
    gt = np.zeros((20, 30, 30), bool)
    pred = np.zeros_like(gt)
    gt[0:10, 0:10, 0:10] = True
    pred[0:5, 0:10, 0:10] = True
    gt[14:20, 20:25, 20:25] = True
    return pred, gt


def _cases(miss_l2: bool = False) -> list:
    return [
        case_metrics(*_case_a(miss_l2), SPACING, case="a"),
        case_metrics(*_case_b(), SPACING, case="b"),
    ]


def test_hand_made_lesions_in_three_bins() -> None:
    cases = _cases()
    vols = sorted((les.volume_ml, les.size_bin) for c in cases for les in c.lesions)
    assert vols == [(0.2, "<0.5 cm3"), (0.3, "<0.5 cm3"), (0.8, "0.5-1 cm3"), (2.0, "1-5 cm3")]
    s = summarise(cases)
    fine, coarse = s["lesion_dice_by_volume"], s["lesion_dice_by_volume_coarse"]
    assert list(fine) == [n for n, _, _ in VOLUME_BINS_ML]  # every bin, empty ones too
    got = {k: (b["count"], b["detected"], b["recall"], b["mean_dice"]) for k, b in fine.items()}
    assert got == {
        "<0.5 cm3": (2, 1, 0.5, pytest.approx((2 / 3 + 0.0) / 2)),
        "0.5-1 cm3": (1, 1, 1.0, 1.0),
        "1-5 cm3": (1, 1, 1.0, pytest.approx(2 / 3)),
        "5-10 cm3": (0, 0, None, None),
        ">=10 cm3": (0, 0, None, None),
    }
    assert (coarse["<1 cm3"]["count"], coarse["<1 cm3"]["detected"]) == (3, 2)
    assert coarse["<1 cm3"]["mean_dice"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert (coarse[">=1 cm3"]["count"], coarse[">=1 cm3"]["detected"]) == (1, 1)
    assert coarse[">=1 cm3"]["mean_dice"] == pytest.approx(2 / 3)
    assert small_bin(s, Path("metrics.json")) is coarse["<1 cm3"]

    # the same from the per-lesion rows of metrics.json (what the ablation and the report read)
    data = EvaluationResult(cases=cases, summary=s, settings={}).to_dict()
    groups = method_sizes({0: data}, n_boot=200)
    for name, b in fine.items():
        g = groups["bins"][name]
        assert (g["counts"], g["detected"]) == ([b["count"]], [b["detected"]])
        assert g["dice"]["mean"] == (None if b["mean_dice"] is None else pytest.approx(b["mean_dice"]))
        assert g["found"]["mean"] == b["recall"]
    assert groups["coarse"]["<1 cm3"]["found"]["mean"] == pytest.approx(2 / 3)
    assert groups["bins"]["<0.5 cm3"]["n_cases"] == 2 and groups["bins"]["5-10 cm3"]["dice"]["ci_low"] is None

    # the run table: every bin, "—" for the empty ones
    table = runs_bins_markdown(["m"], [s], list(fine))
    assert table.splitlines()[0] == "| method | " + " | ".join(f"{b}: Dice (detected/n)" for b in LABELS) + " |"
    assert table.splitlines()[2] == "| m | 0.333 (1/2) | 1.000 (1/1) | 0.667 (1/1) | — (0/0) | — (0/0) |"


def test_ablation_shows_every_bin_and_the_coarse_split_over_seeds(tmp_path: Path) -> None:
    rows = []
    for seed in (0, 1):
        cases = _cases(miss_l2=seed == 1)
        d = tmp_path / f"m_{seed}"
        EvaluationResult(cases=cases, summary=summarise(cases), settings={"label": 1, "nsd_tolerance_mm": 2.0}).write(d)
        rows.append(AblationEntry("m", seed, d))
    md = write_ablation(tmp_path / "out", rows, n_boot=500).read_text()
    data = json.loads((tmp_path / "out" / "ablation.json").read_text())
    (m,) = data["methods"]
    mid = m["bins"]["0.5-1 cm3"]
    assert mid["counts"] == [1, 1] and mid["detected"] == [1, 0] and mid["dice"]["values"] == [1.0, 0.0]
    assert mid["dice"]["mean"] == 0.5 and mid["dice"]["sd"] == pytest.approx(math.sqrt(0.5))
    small = m["coarse"]["<1 cm3"]
    assert small["detected"] == [2, 1] and small["found"]["mean"] == pytest.approx(3 / 6)
    assert small["dice"]["mean"] == pytest.approx((2 / 3 + 1 + 0 + 2 / 3 + 0 + 0) / 6)
    assert small["dice"]["ci_low"] <= small["dice"]["mean"] <= small["dice"]["ci_high"]
    for label in LABELS:
        assert f"| {label} |" in md
    assert "| 0.5–1 cm³ | 0.500 ± 0.707; found 1/2 |" in md
    assert "| 5–10 cm³ | — (n=0) |" in md
    assert f"| < 1 cm³: found | 3/6 = 50% ({small['found']['ci_low']:.0%} to {small['found']['ci_high']:.0%}) |" in md
    assert "| ≥ 1 cm³: lesion Dice | 0.667 (0.667 to 0.667) |" in md


def test_one_lesion_per_case_gives_the_statistics_module_intervals() -> None:
    """With one lesion per case the pooled interval is the cases' (one seed) or seeds-and-cases' bootstrap."""
    g = np.random.default_rng(0)
    dice = g.uniform(0, 1, size=(3, 7))
    per_seed = {
        s: [{"case": f"c{c}", "volume_ml": 0.3, "dice": dice[s, c], "detected": dice[s, c] > 0.2} for c in range(7)]
        for s in range(3)
    }
    one = size_groups({0: per_seed[0]}, n_boot=400, seed=3)["<0.5 cm3"]["dice"]
    assert (one["ci_low"], one["ci_high"]) == pytest.approx(bootstrap_mean_ci(dice[0], n_boot=400, seed=3))
    three = size_groups(per_seed, n_boot=400, seed=3)["<0.5 cm3"]["dice"]
    assert (three["ci_low"], three["ci_high"]) == pytest.approx(seed_case_bootstrap_ci(dice, n_boot=400, seed=3))
    assert three["mean"] == pytest.approx(dice.mean()) and three["values"] == pytest.approx(dice.mean(axis=1))


def test_coarse_table_has_a_dash_for_an_empty_group() -> None:
    lesions = {0: [{"case": "a", "volume_ml": 0.2, "dice": 0.5, "detected": True}]}
    md = coarse_markdown(["x"], [size_groups(lesions, COARSE_VOLUME_BINS_ML, n_boot=50)])
    assert "| ≥ 1 cm³: lesion Dice | — |" in md and "| ≥ 1 cm³: found | — |" in md
    assert "| < 1 cm³: found | 1/1 = 100% (100% to 100%) |" in md


def test_click_curves_by_size() -> None:
    curves = [
        LesionCurve("a", 1, 10, 0.3, [0.2, 0.6]),
        LesionCurve("a", 2, 10, 0.4, [0.4, 0.8]),
        LesionCurve("b", 1, 10, 0.5, [0.9, 0.9]),
        LesionCurve("b", 2, 10, 12.0, [0.7, 1.0]),
    ]
    s = summarise_curves(curves)
    by = s["by_size"]
    assert list(by) == [n for n, _, _ in VOLUME_BINS_ML]
    assert [by[n]["n_lesions"] for n in by] == [2, 1, 0, 0, 1]
    assert by["<0.5 cm3"]["dice_mean"] == pytest.approx([0.3, 0.7])
    assert by["0.5-1 cm3"]["dice_mean"] == [0.9, 0.9] and by["1-5 cm3"]["auc_mean"] is None
    assert [c.row()["size_bin"] for c in curves] == ["<0.5 cm3", "<0.5 cm3", "0.5-1 cm3", ">=10 cm3"]
    text = ClickEvaluation(curves, s, {"click_mode": "random", "seed": 0}).table()
    assert "    <0.5 cm3  n=2    0.300 / 0.700  AUC 0.500" in text and "    1-5 cm3   n=0    n/a" in text


def test_ablation_click_section_by_size(tmp_path: Path) -> None:
    paths = []
    for seed, first in ((0, 0.2), (1, 0.4)):
        s = summarise_curves([LesionCurve("a", 1, 10, 0.3, [first, 0.8]), LesionCurve("a", 2, 10, 2.0, [0.5, 0.9])])
        paths.append(tmp_path / f"{seed}.json")
        paths[-1].write_text(json.dumps({"format": "lesionsam-clicks", "version": 1, "summary": s}))
    summary = click_summary([("m", 0, paths[0]), ("m", 1, paths[1])])
    assert summary[0]["by_size"]["<0.5 cm3"]["dice_first"]["mean"] == pytest.approx(0.3)
    md = click_markdown(summary)
    assert md is not None
    assert "| lesion size | Dice after 1 → 2 clicks: m |" in md
    assert "| < 0.5 cm³ | 0.300 ± 0.141 → 0.800 ± 0.000 (n=1) |" in md
    assert "| 5–10 cm³ | — (n=0) |" in md


def test_results_with_the_older_three_bins_still_read(tmp_path: Path) -> None:
    # the packaged sweeps keep their numbers and bin names
    rows = read_sweep_rows(packaged_sweep("gate"))
    names = {k for r in rows for k in (r.gate_rates or {})} - {"no lesion"}
    assert names == {"<1 cm3", "1-10 cm3"}
    assert bins_named(names) == LEGACY_VOLUME_BINS_ML and bins_named(["<0.5 cm3", "<1 cm3"]) == VOLUME_BINS_ML
    assert [size_bin_label(n) for n, _, _ in LEGACY_VOLUME_BINS_ML] == ["< 1 cm³", "1–10 cm³", "> 10 cm³"]
    assert [size_bin_label(n) for n, _, _ in VOLUME_BINS_ML] == LABELS
    # a summary written before: three bins, no coarse split
    old = {"lesion_dice_by_volume": {"<1 cm3": {"count": 4, "detected": 1, "mean_dice": 0.1}, "1-10 cm3": {}}}
    assert small_bin(old, tmp_path / "metrics.json")["count"] == 4
    assert runs_bins_markdown(["old"], [old], ["<1 cm3"]).splitlines()[2] == "| old | 0.100 (1/4) |"
