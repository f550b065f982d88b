"""Paired comparison: bootstrap interval against a direct loop, Wilcoxon against SciPy, edge cases, errors; the
two-level (seeds and cases) bootstrap: one seed = the case bootstrap, a direct loop, crossed design, seed-dominated
data, calibration on null data, monotone in the seed spread."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lesionsam.evaluation.statistics import (
    BETTER,
    CASES_RESAMPLED,
    NO_DIFFERENCE,
    SEEDS_AND_CASES_RESAMPLED,
    TOO_FEW,
    UNPAIRED_SEEDS_AND_CASES_RESAMPLED,
    WORSE,
    bootstrap_mean_ci,
    paired_comparison,
    paired_comparison_over_seeds,
    seed_case_bootstrap_ci,
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


# ------------------------------------------------------------------------------------ several seeds: seeds and cases
def _scores(m: np.ndarray) -> dict[int, dict[str, float]]:
    """``{seed: {case: score}}`` of a ``(seeds, cases)`` array (case ids zero-padded, so sorted = column order)."""
    return {s: {f"c{c:03d}": float(m[s, c]) for c in range(m.shape[1])} for s in range(m.shape[0])}


def _two_level(b_minus_a_seed: float, sd_seed: float, noise: float, *, data_seed: int, s: int = 5, c: int = 40):
    """Per-seed, per-case Dice of a and b: b = a + a seed offset N(b_minus_a_seed, sd_seed) + case noise."""
    g = np.random.default_rng(data_seed)
    a = np.tile(g.uniform(0.3, 0.8, c), (s, 1)) + g.normal(0.0, 0.02, (s, c))
    b = a + g.normal(b_minus_a_seed, sd_seed, (s, 1)) + g.normal(0.0, noise, (s, c))
    return a, b


def test_one_seed_reduces_to_the_case_bootstrap() -> None:
    g = np.random.default_rng(1)
    a, d = g.uniform(0.3, 0.8, 40), g.normal(0.02, 0.05, 40)
    assert seed_case_bootstrap_ci(d[None], n_boot=2000, seed=3) == bootstrap_mean_ci(d, n_boot=2000, seed=3)
    by_id = {7: {f"c{i:03d}": float(x) for i, x in enumerate(d)}}  # a mapping: one seed (any id), cases by id
    assert seed_case_bootstrap_ci(by_id, n_boot=500) == bootstrap_mean_ci(d, n_boot=500)
    ma, mb = _scores(a[None]), _scores((a + d)[None])
    one = paired_comparison_over_seeds(ma, mb, n_boot=2000, seed=3)
    assert one == paired_comparison(ma[0], mb[0], n_boot=2000, seed=3)  # every field, bit for bit
    assert one.n_seeds == 1 and one.resampled == CASES_RESAMPLED and not one.covers_seed_noise
    assert (one.case_ci_low, one.case_ci_high) == (one.ci_low, one.ci_high)
    assert (
        one.interval_text() == "cases resampled, 1 seed × 40 cases: covers case noise only, not the seed-to-seed spread"
    )


def test_two_level_bootstrap_matches_a_direct_loop() -> None:
    m = np.random.default_rng(5).normal(0.02, 0.06, (3, 7))
    n_boot = 400
    rng = np.random.default_rng(11)
    cases = rng.integers(0, 7, size=(n_boot, 7))  # the case draws first (as the case bootstrap), then the seeds
    seeds = rng.integers(0, 3, size=(n_boot, 3))
    means = [np.mean([m[s, c] for s in seeds[r] for c in cases[r]]) for r in range(n_boot)]
    lo, hi = np.percentile(means, [5.0, 95.0])
    got = seed_case_bootstrap_ci(m, n_boot=n_boot, seed=11, confidence=0.9)
    assert got == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert seed_case_bootstrap_ci(_scores(m), n_boot=n_boot, seed=11, confidence=0.9) == got  # mapping = array
    assert seed_case_bootstrap_ci(m, n_boot=n_boot, seed=11, confidence=0.9) == got  # deterministic
    assert seed_case_bootstrap_ci(m, n_boot=n_boot, seed=12, confidence=0.9) != got


def test_one_case_draw_for_every_seed_crossed_not_nested() -> None:
    """Every seed is tested on the same cases, so a case's effect is shared: one case draw for all drawn seeds.

    Without any seed effect (identical rows) the crossed interval is the case bootstrap's; drawing new cases for
    each drawn seed (nested) would shrink the shared case effect by 1/S, an interval about 1/√5 as wide."""
    d = np.random.default_rng(2).normal(0.02, 0.05, 40)
    rows = np.tile(d, (5, 1))
    crossed = seed_case_bootstrap_ci(rows, n_boot=4000, seed=0)
    case = bootstrap_mean_ci(d, n_boot=4000, seed=0)
    assert crossed == (pytest.approx(case[0], abs=1e-12), pytest.approx(case[1], abs=1e-12))
    rng = np.random.default_rng(0)
    nested = [
        rows[rng.integers(0, 5, 5)][np.arange(5)[:, None], rng.integers(0, 40, (5, 40))].mean() for _ in range(4000)
    ]
    lo, hi = np.percentile(nested, [2.5, 97.5])
    assert hi - lo < 0.6 * (crossed[1] - crossed[0])


def test_seed_effect_dominates_old_interval_excludes_zero_new_does_not() -> None:
    # data seed 2: its five offsets average +0.030, the population mean (the next test measures all data sets)
    a, b = _two_level(0.03, 0.08, 0.002, data_seed=2)
    # the old pooled comparison: per-case differences averaged over the seeds, the cases resampled
    old = paired_comparison(_scores(a.mean(axis=0)[None])[0], _scores(b.mean(axis=0)[None])[0], n_boot=4000)
    assert old.verdict == BETTER and old.ci_low > 0
    new = paired_comparison_over_seeds(_scores(a), _scores(b), n_boot=4000)
    assert new.ci_low < 0 < new.ci_high and new.verdict == NO_DIFFERENCE
    assert (new.case_ci_low, new.case_ci_high) == (old.ci_low, old.ci_high)  # kept alongside, same case draws
    assert new.mean_diff == pytest.approx(old.mean_diff) and new.p_wilcoxon == old.p_wilcoxon  # secondary statistic
    assert new.n_seeds == 5 and new.n == 40 and new.resampled == SEEDS_AND_CASES_RESAMPLED and new.covers_seed_noise
    assert new.interval_text() == "seeds and cases resampled, 5 seeds × 40 cases"
    assert new.to_dict()["interval"] == new.interval_text() and new.to_dict()["n_seeds"] == 5

    # a real, consistent effect: every seed +0.05, small noise: better under both
    a, b = _two_level(0.05, 0.0, 0.01, data_seed=1)
    new = paired_comparison_over_seeds(_scores(a), _scores(b), n_boot=4000)
    assert new.verdict == BETTER and new.ci_low > 0.04 and new.case_ci_low > 0.04
    assert paired_comparison_over_seeds(_scores(b), _scores(a), n_boot=4000).verdict == WORSE


def test_false_positives_when_seeds_dominate() -> None:
    """No true effect, seed offsets N(0, 0.08): how often does each 95% interval exclude 0 over 100 data sets?"""
    old = new = 0
    for k in range(100):
        a, b = _two_level(0.0, 0.08, 0.005, data_seed=100 + k)
        lo, hi = bootstrap_mean_ci((b - a).mean(axis=0), n_boot=1000)
        old += not lo <= 0 <= hi
        lo, hi = seed_case_bootstrap_ci(b - a, n_boot=1000)
        new += not lo <= 0 <= hi
    assert old >= 85 and new <= 25  # measured: 96 and 19 (5 seeds: the percentile interval is a bit narrow)


def test_interval_widens_with_the_seed_spread_and_tends_to_the_case_interval() -> None:
    g = np.random.default_rng(4)
    case_effect, z, noise = g.normal(0.02, 0.05, 40), g.standard_normal(5), g.normal(0.0, 0.002, (5, 40))
    widths, gaps = [], []
    for sd in (0.0, 0.005, 0.01, 0.03, 0.1, 0.3):
        r = paired_comparison_over_seeds(_scores(np.zeros((5, 40))), _scores(case_effect + sd * z[:, None] + noise))
        widths.append(r.ci_high - r.ci_low)
        gaps.append(max(abs(r.ci_low - r.case_ci_low), abs(r.ci_high - r.case_ci_high)))
    assert all(w1 < w2 for w1, w2 in zip(widths, widths[1:], strict=False)), widths
    assert gaps[0] < 0.02 * widths[0] and gaps[-1] > widths[0]  # sd → 0: the cases-only interval


def test_seeds_not_paired() -> None:
    a, b = _two_level(0.02, 0.03, 0.01, data_seed=6)
    sa, sb = {0: _scores(a)[0], 1: _scores(a)[1]}, {2: _scores(b)[2], 3: _scores(b)[3], 4: _scores(b)[4]}
    r = paired_comparison_over_seeds(sa, sb, n_boot=1000)
    assert r.resampled == UNPAIRED_SEEDS_AND_CASES_RESAMPLED and r.n_seeds == 2 and r.covers_seed_noise
    assert r.mean_diff == pytest.approx(b[2:].mean() - a[:2].mean())
    assert r == paired_comparison_over_seeds(sa, sb, n_boot=1000)
    # one seed each: the case bootstrap of the differences (up to rounding: b̄ − ā of the draws, not (b − a)̄)
    one = paired_comparison_over_seeds({0: sa[0]}, {2: sb[2]}, n_boot=1000)
    ref = paired_comparison(sa[0], sb[2], n_boot=1000)
    assert (one.ci_low, one.ci_high) == (pytest.approx(ref.ci_low, abs=1e-12), pytest.approx(ref.ci_high, abs=1e-12))
    assert one.resampled == CASES_RESAMPLED


def test_over_seeds_errors_and_too_few() -> None:
    with pytest.raises(ValueError, match=r"method a: seed 1 was scored on other cases than seed 0 \(e.g. \['y'\]\)"):
        paired_comparison_over_seeds({0: {"x": 0.1}, 1: {"x": 0.2, "y": 0.3}}, {0: {"x": 0.1}, 1: {"x": 0.2}})
    with pytest.raises(ValueError, match=r"different cases.*only in a: \['y'\]; only in b: \['z'\]"):
        paired_comparison_over_seeds({0: {"x": 0.1, "y": 0.2}}, {0: {"x": 0.1, "z": 0.2}})
    with pytest.raises(ValueError, match="no seed given"):
        paired_comparison_over_seeds({}, {0: {"x": 0.1}})
    with pytest.raises(ValueError, match="finite"):
        paired_comparison_over_seeds({0: {"x": 0.1, "y": float("nan")}}, {0: {"x": 0.1, "y": 0.2}})
    with pytest.raises(ValueError, match=r"seeds × cases array \(2-D\), got shape \(3,\)"):
        seed_case_bootstrap_ci([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least one seed and one case"):
        seed_case_bootstrap_ci(np.zeros((2, 0)))
    with pytest.raises(ValueError, match="n_boot"):
        seed_case_bootstrap_ci(np.zeros((2, 2)), n_boot=0)
    few = paired_comparison_over_seeds({0: {"x": 0.1}, 1: {"x": 0.3}}, {0: {"x": 0.4}, 1: {"x": 0.2}})
    assert few.verdict == TOO_FEW and few.ci_low is None and few.case_ci_low is None and few.n_seeds == 2
    assert few.mean_diff == pytest.approx(0.1)
