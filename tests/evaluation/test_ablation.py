"""The ablation's paired comparison pooled over seeds, volume ratio and gates by size, against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lesionsam.evaluation.ablation import pooled_comparisons
from lesionsam.evaluation.evaluate import EvaluationResult
from lesionsam.evaluation.metrics import case_metrics, summarise
from lesionsam.evaluation.report import AblationEntry, write_ablation
from lesionsam.evaluation.statistics import (
    UNPAIRED_SEEDS_AND_CASES_RESAMPLED,
    bootstrap_mean_ci,
    paired_comparison,
    seed_case_bootstrap_ci,
)

SEEDS = (0, 1, 2)
CASES = 4  # case_3 is lesion-free


def _gt(c: int) -> np.ndarray:
    gt = np.zeros((20, 20, 20), bool)
    if c < CASES - 1:
        gt[4 : 10 + c, 4:10, 4:10] = True
    return gt


def _pred(method: str, seed: int, c: int) -> np.ndarray:
    gt = _gt(c)
    if method == "finetune":
        return np.roll(gt, 1 + (seed + c) % 2, axis=2)
    if method == "flood":
        pred = np.zeros_like(gt)
        pred[1:19, 1:19, 1:19] = True
        return pred
    return np.roll(gt, (seed * c) % 2, axis=1)  # "better"


def _dice(p: np.ndarray, g: np.ndarray) -> float:
    return 2.0 * (p & g).sum() / (p.sum() + g.sum())


def _gates_csv(path: Path, seed: int) -> Path:
    rows = ["case,lesion,volume_ml,size_bin,gate_rate"]
    rows += [f"case_0,{i},0.5,<1 cm3,{0.1 * (seed + i)}" for i in range(3)]
    rows += [f"case_1,{i},2.0,1-10 cm3,{0.9 - 0.1 * seed}" for i in range(2 if seed else 1)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[AblationEntry]:
    root = tmp_path_factory.mktemp("abl")
    out = []
    for method in ("finetune", "better", "flood"):
        for seed in SEEDS:
            cases = [case_metrics(_pred(method, seed, c), _gt(c), (1.0,) * 3, case=f"case_{c}") for c in range(CASES)]
            settings = {"label": 1, "nsd_tolerance_mm": 2.0, "pred_label": None}
            d = root / f"{method}_{seed}"
            EvaluationResult(cases=cases, summary=summarise(cases), settings=settings).write(d)
            gates = _gates_csv(root / f"gates_{method}_{seed}.csv", seed) if method == "better" else None
            out.append(AblationEntry(method, seed, d, gates))
    return out


def test_pooled_comparison_volume_ratio_and_gates(rows: list[AblationEntry], tmp_path: Path) -> None:
    md = write_ablation(tmp_path, rows, n_boot=3000, seed=1).read_text()
    data = json.loads((tmp_path / "ablation.json").read_text())

    # pooled: per case and seed the paired difference; the interval resamples the seeds and the cases; the
    # cases-only interval of the seed-averaged differences (the one of earlier versions) is kept alongside
    lesion = range(CASES - 1)
    per_seed = [[_dice(_pred("better", s, c), _gt(c)) - _dice(_pred("finetune", s, c), _gt(c)) for c in lesion]
                for s in SEEDS]  # fmt: skip
    diffs = np.mean(per_seed, axis=0)
    entry = next(c for c in data["comparisons"] if c["method"] == "better")
    comp = entry["comparison"]
    assert comp["n"] == 3 and comp["cases"] == ["case_0", "case_1", "case_2"]  # the lesion-free case is left out
    assert comp["mean_diff"] == pytest.approx(np.mean(diffs))
    lo, hi = bootstrap_mean_ci(diffs, n_boot=3000, seed=1)
    assert (comp["case_ci_low"], comp["case_ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    two_lo, two_hi = seed_case_bootstrap_ci(np.array(per_seed), n_boot=3000, seed=1)
    assert (comp["ci_low"], comp["ci_high"]) == (pytest.approx(two_lo), pytest.approx(two_hi))
    assert comp["resampled"] == "seeds and cases resampled" and comp["n_seeds"] == 3 and entry["n_seeds"] == 3
    assert entry["interval"] == comp["interval"] == "seeds and cases resampled, 3 seeds × 3 cases"
    assert comp["verdict"] == ("better" if two_lo > 0 else "worse" if two_hi < 0 else "no difference beyond noise")
    assert "| better − finetune | 0, 1, 2 | 3 |" in md
    assert f"{np.mean(diffs):+.3f} ({two_lo:+.3f} to {two_hi:+.3f}) | seeds and cases (3 seeds × 3 cases) |" in md
    assert any(ln.startswith("- **better vs finetune**") for ln in md.splitlines())
    assert "Pooling over seeds: the test cases are the independent units" in md
    assert "covers the case-to-case noise only" not in md  # every interval had 3 seeds

    # volume ratio: per seed the median over the cases with a lesion, then mean ± sd over seeds
    ratios = [np.median([_pred("flood", s, c).sum() / _gt(c).sum() for c in lesion]) for s in SEEDS]
    flood = next(m for m in data["methods"] if m["method"] == "flood")
    assert flood["volume_ratio"]["values"] == pytest.approx(ratios)
    flood_row = [c.strip() for c in next(ln for ln in md.splitlines() if ln.startswith("| flood |")).split("|")]
    assert flood_row[7] == f"{np.mean(ratios):.3g}× ± {np.std(ratios, ddof=1):.2g}"
    lesion_dice = [np.mean([_dice(_pred("flood", s, c), _gt(c)) for c in lesion]) for s in SEEDS]
    assert flood_row[8] == f"{np.mean(lesion_dice):.3f} ± {np.std(lesion_dice, ddof=1):.3f}"
    warnings = [ln for ln in md.splitlines() if ln.startswith("- ⚠")]
    assert len(warnings) == 1 and warnings[0].startswith("- ⚠ flood over-segments: median predicted/GT volume")

    # gates by size bin with counts
    better = next(m for m in data["methods"] if m["method"] == "better")
    small = better["gate_rate_by_bin"]["<1 cm3"]
    per_seed = [np.mean([0.1 * (s + i) for i in range(3)]) for s in SEEDS]
    assert small["values"] == pytest.approx(per_seed) and small["counts"] == [3, 3, 3]
    mid = better["gate_rate_by_bin"]["1-10 cm3"]
    assert mid["values"] == pytest.approx([0.9, 0.8, 0.7]) and mid["counts"] == [1, 2, 2]
    assert better["gate_rate_by_bin"][">10 cm3"]["counts"] == [0, 0, 0]
    assert f"| < 1 cm³ | {np.mean(per_seed):.3f} ± {np.std(per_seed, ddof=1):.3f} (n=3) |" in md
    assert "| 1–10 cm³ | 0.800 ± 0.100 (n=1/2/2) |" in md
    assert flood["gate_rate_by_bin"] is None


def test_pooled_comparisons_without_common_seeds() -> None:
    per_case = {"a": {0: {"x": 0.1, "y": 0.2}}, "b": {1: {"x": 0.3, "y": 0.6}, 2: {"x": 0.5, "y": 0.2}}}
    (c,) = pooled_comparisons(per_case, ["a", "b"], n_boot=100)
    assert c["pairing"] == "per case, seeds not matched" and c["seeds"] == []
    ref = paired_comparison({"x": 0.1, "y": 0.2}, {"x": 0.4, "y": 0.4}, n_boot=100)
    assert c["comparison"].mean_diff == pytest.approx(ref.mean_diff) and c["n_cases"] == 2
    assert c["comparison"].resampled == UNPAIRED_SEEDS_AND_CASES_RESAMPLED and c["n_seeds"] == 1
    assert not c["comparison"].covers_seed_noise and "covers case noise only" in c["interval"]
    assert pooled_comparisons(per_case, ["a"]) == []


def test_one_seed_says_case_noise_only_and_seed_noise_changes_the_verdict(tmp_path: Path) -> None:
    """5 seeds whose offsets dominate: the seed-averaged case interval excludes 0, the verdict does not."""
    g = np.random.default_rng(2)
    base = g.uniform(0.3, 0.8, 40)
    offsets = g.normal(0.03, 0.08, 5)
    per_case = {
        "finetune": {s: {f"c{c}": float(base[c]) for c in range(40)} for s in range(5)},
        "other": {s: {f"c{c}": float(base[c] + offsets[s] + g.normal(0, 0.002)) for c in range(40)} for s in range(5)},
    }
    (c,) = pooled_comparisons(per_case, ["finetune", "other"], n_boot=4000)
    comp = c["comparison"]
    assert comp.case_ci_low > 0 and comp.ci_low < 0 < comp.ci_high and comp.verdict == "no difference beyond noise"
    assert c["interval"] == "seeds and cases resampled, 5 seeds × 40 cases" and c["n_cases"] == 40
    (one,) = pooled_comparisons({m: {0: t[0]} for m, t in per_case.items()}, ["finetune", "other"], n_boot=4000)
    assert one["interval"].endswith("covers case noise only, not the seed-to-seed spread") and one["n_seeds"] == 1
    assert one["comparison"] == paired_comparison(per_case["finetune"][0], per_case["other"][0], n_boot=4000)


def test_ablation_with_one_seed_says_its_intervals_cover_case_noise_only(
    rows: list[AblationEntry], tmp_path: Path
) -> None:
    md = write_ablation(tmp_path, [r for r in rows if r.seed == 0], n_boot=500).read_text()
    assert "| better − finetune | 0 | 3 |" in md and "| cases only (1 seed) |" in md
    assert "⚠ With fewer than 2 seeds (per method) an interval covers the case-to-case noise only" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("- **better vs finetune**"))
    assert "paired by case)" in line and "cases resampled, 1 seed × 3 cases: covers case noise only" in line
    data = json.loads((tmp_path / "ablation.json").read_text())
    assert (
        data["comparisons"][0]["n_seeds"] == 1
        and data["comparisons"][0]["comparison"]["resampled"] == "cases resampled"
    )
