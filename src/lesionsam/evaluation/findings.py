"""What the report says in words: paired comparisons against the baseline, lesion-free cases, volume ratios.

Everything here is read from the per-case rows (``cases``) of the evaluator's ``metrics.json``
(:mod:`lesionsam.evaluation.evaluate`): ``case``, ``dice``, ``gt_lesions``, ``pred_lesions``, ``gt_volume_ml`` and
``pred_volume_ml`` (foreground volumes in ml = cm³). Definitions:

* a **case with a lesion** has ``gt_lesions > 0``; a **lesion-free case** has none. Lesion-free cases score Dice 1
  (prediction empty) or 0 (anything predicted) by the evaluator's convention, so they are kept out of the Dice
  means and comparisons here and reported apart: how many, how many were predicted empty, and the predicted
  (false-positive) volume on them;
* the **volume ratio** of a case with a lesion is ``pred_volume_ml / gt_volume_ml``; a method's ratio is the
  median over its cases with a lesion (with the range). A median above :data:`OVER_SEGMENTS` (2×) or below
  :data:`UNDER_SEGMENTS` (0.5×) gives a warning line;
* a **comparison** of a method against the baseline (the first method of a report) is
  :func:`lesionsam.evaluation.statistics.paired_comparison` of the case Dice on the cases with a lesion that both
  were evaluated on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lesionsam.evaluation.figures import size_bin_label
from lesionsam.evaluation.report_io import DASH, GateRow, fmt_value, is_num
from lesionsam.evaluation.statistics import SEEDS_AND_CASES_RESAMPLED, TOO_FEW, PairedComparison, paired_comparison

#: A median predicted/ground-truth volume ratio above this is over-segmentation (warning line).
OVER_SEGMENTS = 2.0
#: ... and below this under-segmentation.
UNDER_SEGMENTS = 0.5
#: Wilcoxon p at or above which a bootstrap "beyond noise" verdict is marked tentative.
SIGNIFICANCE = 0.05
#: The warning sign that starts a warning line.
WARNING_SIGN = "⚠"


def _rows(metrics: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(metrics.get("cases", []))


def has_lesion(row: Mapping[str, Any]) -> bool:
    """True for a case row with a ground-truth lesion (``gt_lesions > 0``, else ``gt_volume_ml > 0``)."""
    if "gt_lesions" in row and row["gt_lesions"] is not None:
        return int(row["gt_lesions"]) > 0
    return is_num(row.get("gt_volume_ml")) and float(row["gt_volume_ml"]) > 0


def lesion_case_dice(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{case: Dice}`` of the cases with a lesion of one ``metrics.json``."""
    return {str(r["case"]): float(r["dice"]) for r in _rows(metrics) if has_lesion(r) and is_num(r.get("dice"))}


def volume_ratios(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{case: pred_volume_ml / gt_volume_ml}`` of the cases with a lesion (rows without volumes are skipped)."""
    out = {}
    for r in _rows(metrics):
        gt, pred = r.get("gt_volume_ml"), r.get("pred_volume_ml")
        if has_lesion(r) and is_num(gt) and is_num(pred) and float(gt) > 0:
            out[str(r["case"])] = float(pred) / float(gt)
    return out


@dataclass(frozen=True)
class RatioSummary:
    """Median and range of the per-case predicted/ground-truth volume ratios (None when there is no case)."""

    n: int
    median: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, ratios: Sequence[float]) -> RatioSummary:
        """The summary of ``ratios``."""
        if not ratios:
            return cls(0, None, None, None)
        arr = np.asarray(ratios, dtype=float)
        return cls(int(arr.size), float(np.median(arr)), float(arr.min()), float(arr.max()))


@dataclass(frozen=True)
class LesionFree:
    """The lesion-free cases of one run: how many, how many predicted empty, the predicted volume on them (ml)."""

    n: int
    predicted_empty: int
    fp_volume_ml: float
    fp_volume_max_ml: float

    @classmethod
    def of(cls, metrics: Mapping[str, Any]) -> LesionFree:
        """From the case rows of one ``metrics.json``."""
        free = [r for r in _rows(metrics) if not has_lesion(r)]
        vols = [float(r["pred_volume_ml"]) if is_num(r.get("pred_volume_ml")) else 0.0 for r in free]
        empty = sum(1 for r, v in zip(free, vols, strict=True) if v == 0 and int(r.get("pred_lesions", 0) or 0) == 0)
        return cls(len(free), empty, float(sum(vols)), float(max(vols, default=0.0)))

    def text(self) -> str:
        """E.g. ``"1/2 predicted empty; 0.42 cm³ predicted (max 0.42)"``, or :data:`DASH` without such cases."""
        if self.n == 0:
            return DASH
        return (
            f"{self.predicted_empty}/{self.n} predicted empty; {self.fp_volume_ml:.2f} cm³ predicted "
            f"(max {self.fp_volume_max_ml:.2f} per case)"
        )


def fmt_ratio(x: float | None) -> str:
    """A volume ratio as ``"45×"`` (>= 10), ``"1.35×"`` / ``"0.031×"`` (3 significant digits); :data:`DASH`."""
    if x is None or not is_num(x):
        return DASH
    return f"{x:.0f}×" if x >= 10 else f"{x:.3g}×"


def ratio_text(r: RatioSummary) -> str:
    """``"median (low–high)"`` of a :class:`RatioSummary`."""
    if r.n == 0:
        return DASH
    return f"{fmt_ratio(r.median)} ({fmt_ratio(r.low)}–{fmt_ratio(r.high)})"


def segmentation_warning(name: str, median_ratio: float | None) -> str | None:
    """``"⚠ NAME over-segments: median predicted/GT volume 45×"`` (or under-), None within [0.5, 2]."""
    if median_ratio is None or not is_num(median_ratio):
        return None
    if median_ratio > OVER_SEGMENTS:
        kind = "over-segments"
    elif median_ratio < UNDER_SEGMENTS:
        kind = "under-segments"
    else:
        return None
    return f"{WARNING_SIGN} {name} {kind}: median predicted/GT volume {fmt_ratio(median_ratio)}"


def _signed(x: float | None, spec: str = "+.3f") -> str:
    return DASH if x is None else format(x, spec)


def fmt_p(p: float | None) -> str:
    """A p value as ``"p = 0.016"``, ``"p < 0.001"`` or ``"p = —"``."""
    if p is None:
        return f"p = {DASH}"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def comparison_sentence(name: str, baseline: str, c: PairedComparison, *, what: str = "Dice") -> str:
    """One sentence: which of ``name`` and ``baseline`` is better, the paired difference, its CI and what the CI
    resampled (:meth:`PairedComparison.interval_text`: one seed covers the case noise only), p, the verdict."""
    paired = "paired by case and seed" if c.resampled == SEEDS_AND_CASES_RESAMPLED else "paired by case"
    head = f"**{name} vs {baseline}** ({what} over {c.n} case(s) with a lesion, {paired}): "
    means = f"mean {what} {name} {fmt_value(c.mean_b)} vs {baseline} {fmt_value(c.mean_a)}"
    if c.verdict == TOO_FEW:
        return head + f"{TOO_FEW} (difference {_signed(c.mean_diff)}; {means})."
    if c.mean_diff > 0:
        lead = f"{name} is higher"
    elif c.mean_diff < 0:
        lead = f"{baseline} is higher"
    else:
        lead = "equal means"
    ci = f"{100 * c.confidence:g}% bootstrap CI {_signed(c.ci_low)} to {_signed(c.ci_high)}; {c.interval_text()}"
    secondary = " (secondary: on the seed-averaged differences)" if c.n_seeds > 1 else ""
    verdict = (
        f"beyond noise: {name} is {c.verdict} than {baseline}"
        if c.beyond_noise
        else "no difference beyond noise (the interval includes 0)"
    )
    units = f"{c.n_seeds} seeds and {c.n} cases" if c.covers_seed_noise else f"{c.n} cases"
    if c.beyond_noise and (c.p_wilcoxon is None or c.p_wilcoxon >= SIGNIFICANCE):
        verdict += (
            f" (tentative: Wilcoxon p >= {SIGNIFICANCE:g}; with {units} the percentile bootstrap interval is "
            "optimistic)"
        )
    return (
        head
        + f"{lead}; {means}; mean paired difference {_signed(c.mean_diff)} ({ci}), "
        + f"Wilcoxon {fmt_p(c.p_wilcoxon)}{secondary}: {verdict}."
    )


def compare_to_baseline(
    baseline: Mapping[str, float], other: Mapping[str, float], *, n_boot: int, seed: int
) -> PairedComparison | None:
    """:func:`paired_comparison` of ``other`` against ``baseline`` on their common cases (None if none)."""
    common = sorted(set(baseline) & set(other))
    if not common:
        return None
    return paired_comparison({c: baseline[c] for c in common}, {c: other[c] for c in common}, n_boot=n_boot, seed=seed)


def findings_lines(
    names: Sequence[str], metrics: Sequence[Mapping[str, Any]], *, n_boot: int = 10000, seed: int = 0
) -> tuple[list[str], list[dict[str, Any]]]:
    """The "Findings" bullet lines of a report and the numbers behind them.

    One line per method after the first (the baseline): :func:`comparison_sentence` of its Dice on the cases with
    a lesion; one warning line per method whose median volume ratio leaves [0.5, 2]; a line on the lesion-free
    cases when there are any.

    Returns:
        (markdown lines without the leading ``"- "``, ``[{"method", "vs", "comparison"}]`` with
        :meth:`PairedComparison.to_dict` or None).
    """
    lines: list[str] = []
    numbers: list[dict[str, Any]] = []
    dice = [lesion_case_dice(m) for m in metrics]
    if len(names) < 2:
        lines.append(f"One method only ({names[0]}): nothing to compare it with.")
    for name, d in zip(names[1:], dice[1:], strict=True):
        c = compare_to_baseline(dice[0], d, n_boot=n_boot, seed=seed)
        if c is None:
            lines.append(f"**{name} vs {names[0]}**: no common case with a lesion; no comparison.")
        else:
            lines.append(comparison_sentence(name, names[0], c))
        numbers.append({"method": name, "vs": names[0], "comparison": None if c is None else c.to_dict()})
    for name, m in zip(names, metrics, strict=True):
        r = RatioSummary.of(list(volume_ratios(m).values()))
        warning = segmentation_warning(name, r.median)
        if warning is not None:
            lines.append(f"{warning} over {r.n} case(s) with a lesion (range {fmt_ratio(r.low)}–{fmt_ratio(r.high)}).")
    free = [LesionFree.of(m) for m in metrics]
    if any(f.n for f in free):
        parts = [f"{name}: {f.text()}" for name, f in zip(names, free, strict=True)]
        lines.append(
            f"Lesion-free test cases ({max(f.n for f in free)}), kept out of the Dice above: " + "; ".join(parts) + "."
        )
    return lines, numbers


def gate_finding(name: str, gates: Sequence[GateRow]) -> str:
    """One line on whether a method's gates decide: the activation rate per size bin (lesion-free crops included)
    and whether it differs between them."""
    by_bin: dict[str, list[float]] = {}
    for g in gates:
        by_bin.setdefault(g.size_bin, []).append(g.gate_rate)
    means = {b: float(np.mean(v)) for b, v in by_bin.items()}
    parts = ", ".join(f"{size_bin_label(b)} {m:.2f} (n={len(by_bin[b])})" for b, m in means.items())
    spread = max(means.values()) - min(means.values())
    if spread < 0.05:
        verdict = "the same for every crop content: the gates do not depend on the input"
    else:
        verdict = f"differs by {spread:.2f} between crop contents"
    return f"**{name} gates**: activation {parts} — {verdict}."
