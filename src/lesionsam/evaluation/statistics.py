"""Paired comparison of two methods scored on the same cases: bootstrap interval and Wilcoxon signed-rank test.

The unit of resampling is the **case**: two methods evaluated on one test set give one paired difference per case,
``d_c = b_c − a_c``, and the question is whether the mean of ``d`` differs from 0 by more than the case-to-case
noise. Two answers are given, both on the same differences:

* a percentile bootstrap interval of the mean paired difference (Efron & Tibshirani 1993, ch. 13): ``n_boot``
  resamples of the n cases drawn with replacement by a seeded :func:`numpy.random.default_rng` (one
  ``integers(0, n, size=(n_boot, n))`` call, row r = resample r), the mean difference of each resample, and the
  ``(1 − confidence)/2`` and ``(1 + confidence)/2`` percentiles of those means (NumPy's default linear
  interpolation);
* the two-sided Wilcoxon signed-rank p value of ``d`` (:func:`scipy.stats.wilcoxon`, SciPy's defaults:
  ``zero_method="wilcox"`` drops zero differences, exact distribution for small n without ties, normal
  approximation otherwise). All differences zero → p = 1 (nothing differs); fewer than 2 cases → None.

The verdict reads the interval only: ``"better"`` / ``"worse"`` (for method b against method a) when the interval
excludes 0, else ``"no difference beyond noise"``; with fewer than 2 cases there is no interval and the verdict is
:data:`TOO_FEW`.

Example:
    >>> r = paired_comparison({"c1": 0.5, "c2": 0.6, "c3": 0.7}, {"c1": 0.7, "c2": 0.8, "c3": 0.8}, n_boot=1000)
    >>> r.n, round(r.mean_diff, 3), r.verdict
    (3, 0.167, 'better')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Verdict strings of :class:`PairedComparison`.
BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no difference beyond noise"
TOO_FEW = "too few cases to compare"


@dataclass(frozen=True)
class PairedComparison:
    """The paired comparison of method b against method a on ``n`` common cases.

    Attributes:
        n: number of paired cases.
        mean_a, mean_b: mean score of each method over those cases.
        mean_diff: mean paired difference b − a (= ``mean_b − mean_a``).
        ci_low, ci_high: percentile bootstrap interval of the mean difference (None for n < 2).
        confidence: the interval's confidence level (e.g. 0.95).
        p_wilcoxon: two-sided Wilcoxon signed-rank p (1.0 when every difference is 0; None for n < 2).
        verdict: :data:`BETTER`, :data:`WORSE`, :data:`NO_DIFFERENCE` or :data:`TOO_FEW`, for b against a.
        n_boot, seed: the bootstrap's resample count and generator seed.
        cases: the case ids in the order used (sorted for mappings; positions ``"0"``, ``"1"``, ... for sequences).
    """

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float | None
    ci_high: float | None
    confidence: float
    p_wilcoxon: float | None
    verdict: str
    n_boot: int
    seed: int
    cases: tuple[str, ...]

    @property
    def beyond_noise(self) -> bool:
        """True when the bootstrap interval excludes 0."""
        return self.verdict in (BETTER, WORSE)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``cases`` as a list)."""
        out = asdict(self)
        out["cases"] = list(self.cases)
        out["beyond_noise"] = self.beyond_noise
        return out


def _paired_arrays(
    a: Mapping[str, float] | Sequence[float], b: Mapping[str, float] | Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Aligned float arrays of ``a`` and ``b`` (by case id for mappings, by position for sequences)."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise ValueError("give both score sets as mappings {case: score} or both as sequences, not one of each")
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        if only_a or only_b:
            raise ValueError(
                "the two methods were scored on different cases (paired comparison needs the same cases): "
                f"only in a: {only_a[:5]}{' ...' if len(only_a) > 5 else ''}; "
                f"only in b: {only_b[:5]}{' ...' if len(only_b) > 5 else ''}"
            )
        cases = tuple(sorted(a))
        xa = np.array([float(a[c]) for c in cases], dtype=float)
        xb = np.array([float(b[c]) for c in cases], dtype=float)
    else:
        xa, xb = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
        if xa.shape != xb.shape:
            raise ValueError(f"paired scores need the same number of cases, got {xa.size} and {xb.size}")
        cases = tuple(str(i) for i in range(xa.size))
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise ValueError("paired scores must be finite numbers (a case has NaN or inf)")
    return xa, xb, cases


def bootstrap_mean_ci(
    diffs: Sequence[float] | np.ndarray, *, n_boot: int = 10000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (resampling its entries; see the module docstring).

    Raises:
        ValueError: fewer than one value, ``n_boot`` < 1 or ``confidence`` outside (0, 1).
    """
    d = np.asarray(diffs, dtype=float).ravel()
    if d.size < 1:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)])
    return float(lo), float(hi)


def wilcoxon_p(diffs: Sequence[float] | np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p of ``diffs`` (SciPy defaults); 1.0 if all are 0; None for fewer than 2."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float).ravel()
    if d.size < 2:
        return None
    if not np.any(d != 0):
        return 1.0
    p = float(stats.wilcoxon(d, alternative="two-sided").pvalue)
    return p if math.isfinite(p) else None


def paired_comparison(
    a: Mapping[str, float] | Sequence[float],
    b: Mapping[str, float] | Sequence[float],
    *,
    n_boot: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    higher_is_better: bool = True,
) -> PairedComparison:
    """Compare method b against method a on the same cases (see the module docstring for the statistics).

    Args:
        a, b: per-case scores, as ``{case id: score}`` (matched by case id; the case sets must be equal) or as two
            sequences of equal length already in the same case order.
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap's :func:`numpy.random.default_rng`.
        confidence: confidence level of the interval.
        higher_is_better: True for Dice-like scores; False (e.g. HD95) swaps "better" and "worse".

    Returns:
        A :class:`PairedComparison`.

    Raises:
        ValueError: different case sets or lengths, a non-finite score, no case at all, a bad ``n_boot`` or
            ``confidence``.
    """
    xa, xb, cases = _paired_arrays(a, b)
    if xa.size == 0:
        raise ValueError("paired_comparison needs at least one case; got none")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = xb - xa
    lo = hi = None
    verdict = TOO_FEW
    if d.size >= 2:
        lo, hi = bootstrap_mean_ci(d, n_boot=n_boot, seed=seed, confidence=confidence)
        if lo > 0 or hi < 0:
            up = lo > 0
            verdict = BETTER if up == higher_is_better else WORSE
        else:
            verdict = NO_DIFFERENCE
    return PairedComparison(
        n=int(d.size),
        mean_a=float(xa.mean()),
        mean_b=float(xb.mean()),
        mean_diff=float(d.mean()),
        ci_low=lo,
        ci_high=hi,
        confidence=float(confidence),
        p_wilcoxon=wilcoxon_p(d),
        verdict=verdict,
        n_boot=int(n_boot),
        seed=int(seed),
        cases=cases,
    )
