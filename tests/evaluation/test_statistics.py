"""Paired comparison: bootstrap interval against a direct loop, Wilcoxon against SciPy, edge cases, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lesionsam.evaluation.statistics import (
    BETTER,
    NO_DIFFERENCE,
    TOO_FEW,
    WORSE,
    bootstrap_mean_ci,
    paired_comparison,
    wilcoxon_p,
)


def _loop_bootstrap(d: list[float], n_boot: int, seed: int, confidence: float) -> tuple[float, float]:
    """The bootstrap by hand: the same generator, one resample of n case indices at a time, sorted means."""
    rng = np.random.default_rng(seed)
    n = len(d)
    means = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        means.append(sum(d[i] for i in idx) / n)
    means.sort()

    def percentile(q: float) -> float:  # NumPy's default "linear" definition, written out
        pos = q / 100.0 * (n_boot - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n_boot - 1)
        return means[lo] + (pos - lo) * (means[hi] - means[lo])

    return percentile(50 * (1 - confidence)), percentile(50 * (1 + confidence))


def test_bootstrap_matches_a_direct_loop() -> None:
    a = {"c1": 0.10, "c2": 0.40, "c3": 0.35, "c4": 0.80}
    b = {"c1": 0.30, "c2": 0.35, "c3": 0.60, "c4": 0.85}
    d = [b[c] - a[c] for c in sorted(a)]
    r = paired_comparison(a, b, n_boot=500, seed=3, confidence=0.9)
    lo, hi = _loop_bootstrap(d, 500, 3, 0.9)
    assert r.ci_low == pytest.approx(lo, abs=1e-12) and r.ci_high == pytest.approx(hi, abs=1e-12)
    assert r.n == 4 and r.mean_diff == pytest.approx(np.mean(d)) and r.cases == ("c1", "c2", "c3", "c4")
    assert r.mean_a == pytest.approx(np.mean(list(a.values()))) and r.mean_b == pytest.approx(np.mean(list(b.values())))
    assert bootstrap_mean_ci(d, n_boot=500, seed=3, confidence=0.9) == (r.ci_low, r.ci_high)
    # another seed gives another (reproducible) interval
    assert paired_comparison(a, b, n_boot=500, seed=4).ci_low != r.ci_low
    assert paired_comparison(a, b, n_boot=500, seed=3, confidence=0.9) == r


def test_cases_are_matched_by_id_not_order() -> None:
    a = {"x": 0.2, "y": 0.9}
    b = {"y": 0.7, "x": 0.6}  # other insertion order
    r = paired_comparison(a, b, n_boot=200)
    assert r.mean_diff == pytest.approx(((0.6 - 0.2) + (0.7 - 0.9)) / 2)
    assert paired_comparison([0.2, 0.9], [0.6, 0.7], n_boot=200).mean_diff == pytest.approx(r.mean_diff)


def test_wilcoxon_equals_scipy_for_a_known_vector() -> None:
    d = np.array([0.12, -0.03, 0.25, 0.07, 0.31, -0.08, 0.19, 0.04, 0.22, 0.15])
    a = np.linspace(0.1, 0.6, d.size)
    r = paired_comparison(a, a + d, n_boot=1000)
    assert r.p_wilcoxon == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    assert r.p_wilcoxon < 0.05 and r.verdict == BETTER and r.beyond_noise
    # lower is better (e.g. HD95): the same differences are "worse"
    assert paired_comparison(a, a + d, n_boot=1000, higher_is_better=False).verdict == WORSE
    assert paired_comparison(a + d, a, n_boot=1000).verdict == WORSE


def test_ties_and_zero_differences() -> None:
    d = np.array([0.0, 0.0, 0.1, -0.1, 0.1, 0.2, 0.2, -0.05])  # zeros and tied magnitudes
    assert wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    r = paired_comparison(np.zeros(d.size), d, n_boot=2000)
    assert r.verdict == NO_DIFFERENCE and not r.beyond_noise
    assert r.ci_low < 0 < r.ci_high

    same = paired_comparison({"a": 0.5, "b": 0.7, "c": 0.1}, {"a": 0.5, "b": 0.7, "c": 0.1}, n_boot=100)
    assert same.p_wilcoxon == 1.0 and same.mean_diff == 0.0 and same.verdict == NO_DIFFERENCE
    assert (same.ci_low, same.ci_high) == (0.0, 0.0)


def test_too_few_cases() -> None:
    one = paired_comparison({"a": 0.1}, {"a": 0.9})
    assert one.n == 1 and one.p_wilcoxon is None and one.ci_low is None and one.verdict == TOO_FEW
    assert one.mean_diff == pytest.approx(0.8)
    assert one.to_dict()["beyond_noise"] is False


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"different cases.*only in a: \['c3'\].*only in b: \['c4'\]"):
        paired_comparison({"c1": 0.1, "c3": 0.2}, {"c1": 0.1, "c4": 0.2})
    with pytest.raises(ValueError, match="same number of cases"):
        paired_comparison([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="mappings"):
        paired_comparison({"c1": 0.1}, [0.1])
    with pytest.raises(ValueError, match="finite"):
        paired_comparison([0.1, float("nan")], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least one case"):
        paired_comparison({}, {})
    with pytest.raises(ValueError, match="confidence"):
        paired_comparison([0.1, 0.2], [0.3, 0.4], confidence=1.5)
