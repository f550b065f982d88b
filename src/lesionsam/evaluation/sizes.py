"""Lesion Dice and detection by lesion size, per run and pooled over seeds, with seed-and-case intervals.

Read from the evaluator's ``metrics.json``: its ground-truth lesion rows (``lesions`` with ``kind == "gt"``: ``case``,
``volume_ml``, ``detected``, ``dice`` — 0 when undetected), grouped by volume into the size bins
(:data:`~lesionsam.evaluation.lesions.VOLUME_BINS_ML`: < 0.5, 0.5–1, 1–5, 5–10, ≥ 10 cm³) or the coarse split
(:data:`~lesionsam.evaluation.lesions.COARSE_VOLUME_BINS_ML`: < 1, ≥ 1 cm³), each ``lower ≤ volume < upper``. No mask
is re-scored; results written with the older three bins are grouped the same way (their lesion volumes are in them).

Per group, over the runs (training seeds) of a method: the **lesion Dice** and the **share found** (detected / GT
lesions) pooled over every (seed, lesion) cell — with the same lesions in every seed, the mean over seeds of each
seed's mean —, their sample sd over the seeds' own means, and a 95% percentile bootstrap interval that resamples the
seeds and the cases (:func:`group_interval`; the cases only for one seed) as the ablation's headline comparison does
(:func:`lesionsam.evaluation.statistics.seed_case_bootstrap_ci`). Empty groups are kept, with None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lesionsam.evaluation.figures import size_bin_label
from lesionsam.evaluation.lesions import COARSE_VOLUME_BINS_ML, VOLUME_BINS_ML
from lesionsam.evaluation.report_io import DASH, fmt_mean_sd, fmt_value, md_table
from lesionsam.evaluation.statistics import _case_draws, _check_boot, _counts, _percentile_interval, _seed_draws

Bins = Sequence[tuple[str, float, float]]

#: How the size tables were computed (written under them).
SIZES_HOW = (
    "Lesion Dice and share found by ground-truth lesion volume (`lesions` of each `metrics.json`, `kind` gt; "
    "lower bound inclusive: a lesion of exactly 1 cm³ is in ≥ 1 cm³): each value pooled over every (seed, lesion) "
    "of the group, found = detected / lesions summed over seeds; 95% interval: percentile bootstrap resampling the "
    "seeds and the cases (one case draw for every drawn seed; the cases only with one seed), {n_boot} resamples, "
    f"seed {{seed}}. {DASH}: no lesion of that size."
)


def gt_lesions(metrics: Mapping[str, Any], *, what: str = "") -> list[Mapping[str, Any]]:
    """The ground-truth lesion rows of a ``metrics.json`` (``kind == "gt"``).

    Raises:
        ValueError: the file has no ``lesions`` list.
    """
    rows = metrics.get("lesions")
    if not isinstance(rows, list):
        prefix = f"{what}: " if what else ""
        raise ValueError(f"{prefix}metrics.json has no 'lesions' list; re-run `lesionsam evaluate` to write one")
    return [r for r in rows if r.get("kind") == "gt"]


def group_interval(
    dice: np.ndarray,
    found: np.ndarray,
    count: np.ndarray,
    *,
    n_boot: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile bootstrap intervals of the pooled lesion Dice and share found, resampling seeds and cases.

    Args:
        dice, found, count: ``(seeds, cases)`` float arrays: per seed and case the sum of the group's lesion Dice,
            the number of them detected, and their number (every case at least one lesion in some seed).
        n_boot, seed, confidence: of the bootstrap.

    Each resample draws the C cases with replacement and, independently, the S seeds (no seed draw for one seed;
    the draws of :func:`~lesionsam.evaluation.statistics.seed_case_bootstrap_ci`, crossed: one case draw for every
    drawn seed); its value is Σ W_s V_c dice[s, c] / Σ W_s V_c count[s, c] (W, V the draw counts): the pooled
    lesion mean of the drawn cells, lesions clustered in their case.

    Returns:
        ((Dice low, high), (found low, high)).
    """
    _check_boot(n_boot, confidence)
    n_seeds, n_cases = count.shape
    rng = np.random.default_rng(seed)
    v = _counts(_case_draws(rng, n_cases, n_boot), n_cases)
    seed_idx = _seed_draws(rng, n_seeds, n_boot)
    w = np.ones((n_boot, 1)) if seed_idx is None else _counts(seed_idx, n_seeds)

    def pooled(m: np.ndarray) -> np.ndarray:
        per_case = np.zeros((n_boot, n_cases))
        for k in range(n_seeds):
            per_case += w[:, k : k + 1] * m[k]
        return (per_case * v).sum(axis=1)

    den = pooled(count)
    ok = den > 0
    return (
        _percentile_interval(pooled(dice)[ok] / den[ok], confidence),
        _percentile_interval(pooled(found)[ok] / den[ok], confidence),
    )


def size_groups(
    per_seed: Mapping[int, Sequence[Mapping[str, Any]]],
    bins: Bins = VOLUME_BINS_ML,
    *,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Lesion Dice and share found per bin of ``bins``, pooled over the seeds of one method (see the module).

    Args:
        per_seed: ``{seed: ground-truth lesion rows}`` (:func:`gt_lesions` of each seed's ``metrics.json``).
        bins: :data:`VOLUME_BINS_ML` or :data:`COARSE_VOLUME_BINS_ML`.
        n_boot, seed: of the bootstrap interval.

    Returns:
        ``{bin: {"min_ml", "max_ml", "counts", "detected", "n_cases", "dice", "found"}}`` for every bin, empty ones
        too: ``counts``/``detected`` per seed (in seed order), ``n_cases`` the cases with a lesion of the bin,
        ``dice``/``found`` each ``{"mean", "sd", "ci_low", "ci_high", "values"}`` (pooled mean, sample sd of the
        per-seed means, the interval, per-seed means; None where there is no lesion, sd None for one seed).
    """
    seeds = sorted(per_seed)
    out: dict[str, dict[str, Any]] = {}
    for name, lo, hi in bins:
        cells = {s: [r for r in per_seed[s] if lo <= float(r["volume_ml"]) < hi] for s in seeds}
        cases = sorted({str(r["case"]) for s in seeds for r in cells[s]})
        at = {c: i for i, c in enumerate(cases)}
        dice, found, count = (np.zeros((len(seeds), len(cases))) for _ in range(3))
        for i, s in enumerate(seeds):
            for r in cells[s]:
                j = at[str(r["case"])]
                dice[i, j] += float(r["dice"])
                found[i, j] += bool(r["detected"])
                count[i, j] += 1
        ci: tuple[tuple[float | None, float | None], ...] = ((None, None), (None, None))
        if cases:
            ci = group_interval(dice, found, count, n_boot=n_boot, seed=seed)
        entry: dict[str, Any] = {
            "min_ml": lo,
            "max_ml": None if math.isinf(hi) else hi,
            "counts": [int(x) for x in count.sum(axis=1)],
            "detected": [int(x) for x in found.sum(axis=1)],
            "n_cases": len(cases),
        }
        n = count.sum(axis=1)
        for key, m, (c_lo, c_hi) in (("dice", dice, ci[0]), ("found", found, ci[1])):
            values = [float(x / k) for x, k in zip(m.sum(axis=1), n, strict=True) if k > 0]
            entry[key] = {
                "mean": float(m.sum() / n.sum()) if n.sum() > 0 else None,
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "ci_low": c_lo,
                "ci_high": c_hi,
                "values": values,
            }
        out[name] = entry
    return out


def method_sizes(
    per_seed_metrics: Mapping[int, Mapping[str, Any]], *, n_boot: int = 10000, seed: int = 0, what: str = ""
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"bins": size_groups(five bins), "coarse": size_groups(< 1 / ≥ 1 cm³)}`` of one method's ``metrics.json``
    per seed (``{seed: parsed metrics.json}``)."""
    lesions = {s: gt_lesions(m, what=f"{what} seed {s}" if what else "") for s, m in per_seed_metrics.items()}
    return {
        "bins": size_groups(lesions, VOLUME_BINS_ML, n_boot=n_boot, seed=seed),
        "coarse": size_groups(lesions, COARSE_VOLUME_BINS_ML, n_boot=n_boot, seed=seed),
    }


def _found(e: Mapping[str, Any]) -> str:
    return f"{sum(e['detected'])}/{sum(e['counts'])}"


def _ci(v: Mapping[str, Any], spec: str) -> str:
    if v["mean"] is None:
        return DASH
    if v["ci_low"] is None:
        return format(v["mean"], spec)
    return f"{format(v['mean'], spec)} ({format(v['ci_low'], spec)} to {format(v['ci_high'], spec)})"


def bins_markdown(names: Sequence[str], groups: Sequence[Mapping[str, Mapping[str, Any]]]) -> str:
    """Rows = size bins (every one), one column per method: ``Dice mean ± sd over seeds; found detected/lesions``."""
    bins = list(groups[0]) if groups else []
    rows = []
    for b in bins:
        cells = []
        for g in groups:
            e = g[b]
            dice = fmt_mean_sd(e["dice"]["mean"], e["dice"]["sd"])
            cells.append(f"{DASH} (n=0)" if e["dice"]["mean"] is None else f"{dice}; found {_found(e)}")
        rows.append((size_bin_label(b), *cells))
    return md_table(("lesion size", *(f"lesion Dice; found: {n}" for n in names)), rows)


def coarse_markdown(names: Sequence[str], groups: Sequence[Mapping[str, Mapping[str, Any]]]) -> str:
    """Rows = lesion Dice and share found for < 1 cm³ and ≥ 1 cm³, one column per method: ``value (95% CI)``."""
    rows = []
    for b, _, _ in COARSE_VOLUME_BINS_ML:
        label = size_bin_label(b)
        rows.append((f"{label}: lesion Dice", *(_ci(g[b]["dice"], ".3f") for g in groups)))
        found = [
            DASH if g[b]["found"]["mean"] is None else f"{_found(g[b])} = {_ci(g[b]['found'], '.0%')}" for g in groups
        ]
        rows.append((f"{label}: found", *found))
    rows.append(("seeds; cases with a lesion < 1 cm³, ≥ 1 cm³", *(_design(g) for g in groups)))
    return md_table(("lesion size", *(f"{n} (95% CI)" for n in names)), rows)


def _design(g: Mapping[str, Mapping[str, Any]]) -> str:
    small, large = (g[b] for b, _, _ in COARSE_VOLUME_BINS_ML)
    return f"{len(small['counts'])}; {small['n_cases']}, {large['n_cases']}"


def runs_bins_markdown(names: Sequence[str], summaries: Sequence[Mapping[str, Any]], bins: Sequence[str]) -> str:
    """One row per run, one column per bin of ``bins``: ``mean Dice (detected/n)`` from each evaluator ``summary``'s
    ``lesion_dice_by_volume`` (:data:`DASH` for an empty bin or one the run's file does not have)."""
    rows = []
    for name, s in zip(names, summaries, strict=True):
        by_bin = s.get("lesion_dice_by_volume", {})
        cells = []
        for b in bins:
            e = by_bin.get(b)
            cells.append(DASH if e is None else f"{fmt_value(e.get('mean_dice'))} ({e['detected']}/{e['count']})")
        rows.append((name, *cells))
    return md_table(("method", *(f"{size_bin_label(b)}: Dice (detected/n)" for b in bins)), rows)
