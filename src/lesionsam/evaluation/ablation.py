"""The ablation table: every method × seed, mean ± sd over seeds (re-exported by :mod:`.report`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.evaluation.figures import size_bin_label
from lesionsam.evaluation.findings import (
    WARNING_SIGN,
    RatioSummary,
    comparison_sentence,
    lesion_case_dice,
    segmentation_warning,
    volume_ratios,
)
from lesionsam.evaluation.lesions import bins_named
from lesionsam.evaluation.report_io import (
    DASH,
    SMALL_BIN,
    AblationEntry,
    GateRow,
    fmt_mean_sd,
    is_num,
    load_metrics,
    md_table,
    read_gates_csv,
    rel_path,
    small_bin,
)
from lesionsam.evaluation.sizes import SIZES_HOW, bins_markdown, coarse_markdown, method_sizes
from lesionsam.evaluation.statistics import (
    UNPAIRED_SEEDS_AND_CASES_RESAMPLED,
    PairedComparison,
    paired_comparison_over_seeds,
)
from lesionsam.utils.dataclass_io import atomic_write_bytes


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample sd (ddof=1) of ``values``; sd None for fewer than two values, both None for none."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def ablation_summary(rows: Sequence[AblationEntry]) -> list[dict[str, Any]]:
    """The numbers of :func:`ablation_table`, one dict per method in the order first seen.

    Per seed also: the mean Dice over the cases with a lesion (``lesion_case_dice``), the median predicted/GT volume
    ratio over those cases
    (:func:`lesionsam.evaluation.findings.volume_ratios`) and, from the gates CSV, the mean ``gate_rate`` and the
    number of lesions (rows) per ``size_bin``; then mean and sample sd over seeds (``volume_ratio``;
    ``gate_rate_by_bin[bin]`` with ``counts`` per seed, None for a method without gates).

    Per seed, read from its ``metrics.json``: ``summary.dice.mean`` (mean case Dice),
    ``summary.lesion_dice_by_volume_coarse["<1 cm3"].mean_dice`` (seeds without such lesions are left out),
    ``summary.lesion_detection.f1``; from its gates CSV the mean ``gate_rate``. Then mean and sample sd (ddof=1)
    over seeds.

    Returns:
        ``[{"method", "n_seeds", "seeds", "dice", "small_lesion_dice", "lesion_f1", "gate_rate", "volume_ratio",
        "lesion_case_dice", "gate_rate_by_bin", "bins", "coarse", "sources"}]``
        where each metric is ``{"mean", "sd", "values"}`` (``sd`` None for one value; ``gate_rate`` None for a
        method without gates) and ``small_lesion_dice`` also holds ``counts`` (lesions < 1 cm³ per seed);
        ``bins`` / ``coarse``: lesion Dice and share found per size bin / for < 1 and ≥ 1 cm³, pooled over the
        seeds with a seed-and-case interval (:func:`lesionsam.evaluation.sizes.size_groups`).

    Raises:
        ValueError: no row, a (method, seed) pair twice, gates given for some seeds of a method but not others.
        FileNotFoundError: a missing ``metrics.json`` or gates CSV.
    """
    return _collect(rows)[0]


def _collect(
    rows: Sequence[AblationEntry], *, n_boot: int = 10000, seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, dict[int, dict[str, float]]]]:
    """(:func:`ablation_summary`, ``{method: {seed: {case: Dice}}}`` over the cases with a lesion); ``n_boot`` and
    ``seed`` of the size groups' intervals."""
    rows = list(rows)
    if not rows:
        raise ValueError("the ablation needs at least one AblationEntry; got an empty list")
    by_method: dict[str, list[AblationEntry]] = {}
    for row in rows:
        if not isinstance(row.method, str) or not row.method.strip():
            raise ValueError(f"every ablation entry needs a non-empty method name, got {row.method!r}")
        group = by_method.setdefault(row.method, [])
        if any(r.seed == row.seed for r in group):
            raise ValueError(f"method {row.method!r} has seed {row.seed} twice; give each seed once")
        group.append(row)

    out = []
    per_case: dict[str, dict[int, dict[str, float]]] = {}
    for method, group in by_method.items():
        with_gates = [r.seed for r in group if r.gates_csv is not None]
        if with_gates and len(with_gates) != len(group):
            raise ValueError(
                f"method {method!r}: gates CSV given for seed(s) {with_gates} but not for "
                f"{[r.seed for r in group if r.gates_csv is None]}; give it for every seed or none"
            )
        dice, small, small_n, f1, gates, sources = [], [], [], [], [], []
        ratios: list[float] = []
        lesion_dice: list[float] = []
        by_bin: dict[str, list[tuple[float, int]]] = {}
        all_metrics: dict[int, dict[str, Any]] = {}
        for r in group:
            metrics = all_metrics[r.seed] = load_metrics(r.eval_dir, what=f"method {method!r} seed {r.seed}")
            per_case.setdefault(method, {})[r.seed] = lesion_case_dice(metrics)
            if per_case[method][r.seed]:
                lesion_dice.append(float(np.mean(list(per_case[method][r.seed].values()))))
            median = RatioSummary.of(list(volume_ratios(metrics).values())).median
            if median is not None:
                ratios.append(median)
            s = metrics["summary"]
            dice.append(float(s["dice"]["mean"]))
            sb = small_bin(s, Path(r.eval_dir) / "metrics.json")
            small_n.append(int(sb.get("count", 0)))
            if is_num(sb.get("mean_dice")):
                small.append(float(sb["mean_dice"]))
            f1.append(float(s["lesion_detection"]["f1"]))
            src = {"seed": r.seed, "metrics": str(Path(r.eval_dir) / "metrics.json")}
            if r.gates_csv is not None:
                g = read_gates_csv(r.gates_csv)
                if not g:
                    raise ValueError(f"method {method!r} seed {r.seed}: gates CSV {r.gates_csv} has no rows")
                on_lesions = [x.gate_rate for x in g if x.size_bin != "no lesion"]  # lesion-free crops: by bin
                gates.append(float(np.mean(on_lesions)) if on_lesions else math.nan)
                for b in _bins_of(g):
                    vals = [x.gate_rate for x in g if x.size_bin == b]
                    by_bin.setdefault(b, []).append((float(np.mean(vals)) if vals else math.nan, len(vals)))
                src["gates"] = str(r.gates_csv)
            sources.append(src)

        def stat(values: list[float]) -> dict[str, Any]:
            m, sd = _mean_sd(values)
            return {"mean": m, "sd": sd, "values": values}

        out.append(
            {
                "method": method,
                "n_seeds": len(group),
                "seeds": [r.seed for r in group],
                "dice": stat(dice),
                "small_lesion_dice": {**stat(small), "counts": small_n},
                "lesion_f1": stat(f1),
                "gate_rate": stat(gates) if with_gates else None,
                "volume_ratio": stat(ratios),
                "lesion_case_dice": stat(lesion_dice),
                "gate_rate_by_bin": (
                    {
                        b: {**stat([v for v, _ in vals if not math.isnan(v)]), "counts": [n for _, n in vals]}
                        for b, vals in by_bin.items()
                    }
                    if with_gates
                    else None
                ),
                **method_sizes(all_metrics, n_boot=n_boot, seed=seed, what=f"method {method!r}"),
                "sources": sources,
            }
        )
    return out, per_case


def _bins_of(gates: Sequence[GateRow]) -> list[str]:
    """The evaluator's size bins (those of older results for a gates CSV written with them: :func:`bins_named`), then
    any other ``size_bin`` of ``gates`` (every seed gets every bin)."""
    order = [name for name, _, _ in bins_named(g.size_bin for g in gates)]
    return order + sorted({g.size_bin for g in gates} - set(order))


#: How the ablation pools the seeds in its paired comparison (written into ``ablation.md``).
POOLING = (
    "Pooling over seeds: the test cases are the independent units, and so are the training seeds. For the seeds both "
    "methods have, each case's paired difference (method − baseline) is taken per seed; the 95% interval resamples "
    "the seeds and the cases (a two-level bootstrap: per resample the seeds with replacement and, independently, the "
    "cases with replacement, one case draw for every drawn seed; the percentile interval of the mean difference over "
    "the drawn seed × case cells). It thus covers the seed-to-seed spread as well as the case-to-case variation, and "
    'the verdict is "better" or "worse" only when it excludes 0, else "no difference beyond noise"; with one seed it '
    "covers the case noise only. The Wilcoxon signed-rank p is a secondary statistic on the seed-averaged per-case "
    "differences (it knows nothing of the seeds); `ablation.json` also keeps the cases-only interval of those "
    "differences (`case_ci_low`, `case_ci_high`: the interval of earlier versions, never used for the verdict). "
    "Only cases with a lesion present in every used seed of both methods are paired."
)
#: The note under the comparison table when an interval resampled one seed only.
ONE_SEED = (
    "With fewer than 2 seeds (per method) an interval covers the case-to-case noise only, not the seed-to-seed "
    "spread: its verdict may not survive a re-run with other seeds."
)


def _ratio_cell(r: Mapping[str, Any]) -> str:
    if r["mean"] is None:
        return DASH
    sd = DASH if r["sd"] is None else format(r["sd"], ".2g")
    return f"{r['mean']:.3g}× ± {sd}"


def _ablation_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    head = (
        "method",
        "seeds",
        "Dice",
        "Dice < 1 cm³",
        "lesion F1",
        "gate activation rate",
        "pred/GT volume (median)",
        "Dice, cases with a lesion",
    )
    rows = []
    for m in summary:
        small = m["small_lesion_dice"]
        small_text = fmt_mean_sd(small["mean"], small["sd"])
        if small["values"] and len(small["values"]) < m["n_seeds"]:
            small_text += f" ({len(small['values'])} seeds)"
        gate = m["gate_rate"]
        rows.append(
            (
                m["method"],
                str(m["n_seeds"]),
                fmt_mean_sd(m["dice"]["mean"], m["dice"]["sd"]),
                small_text,
                fmt_mean_sd(m["lesion_f1"]["mean"], m["lesion_f1"]["sd"]),
                DASH if gate is None else fmt_mean_sd(gate["mean"], gate["sd"]),
                _ratio_cell(m["volume_ratio"]),
                fmt_mean_sd(m["lesion_case_dice"]["mean"], m["lesion_case_dice"]["sd"]),
            )
        )
    return md_table(head, rows)


def pooled_comparisons(
    per_case: Mapping[str, Mapping[int, Mapping[str, float]]],
    methods: Sequence[str],
    *,
    n_boot: int = 10000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each method after the first against the first (the baseline), paired per case and seed.

    Pooling (:data:`POOLING`): :func:`~lesionsam.evaluation.statistics.paired_comparison_over_seeds` on the seeds
    both methods have and the cases with a lesion in every one of them: the interval, and so the verdict, resamples
    the seeds and the cases; with one common seed it resamples the cases only. Without a common seed each method's
    own seeds are resampled independently (``"pairing": "per case, seeds not matched"``).

    Args:
        per_case: ``{method: {seed: {case: Dice}}}`` (cases with a lesion).
        methods: the methods in table order; the first is the baseline.
        n_boot, seed: of the bootstrap.

    Returns:
        ``[{"method", "vs", "seeds", "pairing", "n_cases", "n_seeds", "interval", "comparison"}]``: ``seeds`` the
        common seeds, ``n_seeds`` the seeds behind the interval, ``interval`` what it resampled in words
        (:meth:`~lesionsam.evaluation.statistics.PairedComparison.interval_text`), the comparison a
        :class:`~lesionsam.evaluation.statistics.PairedComparison` (``interval`` and it None without a common case).
    """
    out: list[dict[str, Any]] = []
    if not methods:
        return out
    base = methods[0]
    for m in methods[1:]:
        seeds = sorted(set(per_case[base]) & set(per_case[m]))
        pairing = "per case and seed"
        seeds_a, seeds_b = seeds, seeds
        if not seeds:
            pairing = "per case, seeds not matched"
            seeds_a, seeds_b = sorted(per_case[base]), sorted(per_case[m])
        tables = [per_case[base][s] for s in seeds_a] + [per_case[m][s] for s in seeds_b]
        cases = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
        comp = None
        if cases:
            a = {s: {c: float(per_case[base][s][c]) for c in cases} for s in seeds_a}
            b = {s: {c: float(per_case[m][s][c]) for c in cases} for s in seeds_b}
            comp = paired_comparison_over_seeds(a, b, n_boot=n_boot, seed=seed)
        out.append(
            {
                "method": m,
                "vs": base,
                "seeds": seeds,
                "pairing": pairing,
                "n_cases": len(cases),
                "n_seeds": min(len(seeds_a), len(seeds_b)),
                "interval": None if comp is None else comp.interval_text(),
                "comparison": comp,
            }
        )
    return out


def _resampled_cell(comp: PairedComparison) -> str:
    """E.g. ``"seeds and cases (5 seeds × 40 cases)"`` or ``"cases only (1 seed)"``."""
    if comp.covers_seed_noise:
        what = (
            "seeds (not paired) and cases"
            if comp.resampled == UNPAIRED_SEEDS_AND_CASES_RESAMPLED
            else "seeds and cases"
        )
        return f"{what} ({comp.n_seeds} seeds × {comp.n} cases)"
    return f"cases only ({comp.n_seeds} seed{'' if comp.n_seeds == 1 else 's'})"


def _comparison_table(comparisons: Sequence[Mapping[str, Any]]) -> str:
    head = (
        "method − baseline",
        "seeds paired",
        "cases",
        "mean Dice difference (95% CI)",
        "CI resamples",
        "Wilcoxon p (secondary)",
        "verdict",
    )
    rows = []
    for c in comparisons:
        comp = c["comparison"]
        if comp is None:
            rows.append((f"{c['method']} − {c['vs']}", DASH, "0", DASH, DASH, DASH, "no common case"))
            continue
        ci = DASH if comp.ci_low is None else f"{comp.ci_low:+.3f} to {comp.ci_high:+.3f}"
        p = DASH if comp.p_wilcoxon is None else f"{comp.p_wilcoxon:.3g}"
        seeds = ", ".join(str(s) for s in c["seeds"]) or "none (unpaired)"
        diff = f"{comp.mean_diff:+.3f} ({ci})"
        rows.append((f"{c['method']} − {c['vs']}", seeds, str(comp.n), diff, _resampled_cell(comp), p, comp.verdict))
    return md_table(head, rows)


def _gates_by_bin_table(summary: Sequence[Mapping[str, Any]]) -> str | None:
    """Rows = size bins, one column per gated method: ``mean ± sd over seeds (n=lesions)``."""
    gated = [m for m in summary if m.get("gate_rate_by_bin")]
    if not gated:
        return None
    bins: list[str] = []
    for m in gated:
        bins += [b for b in m["gate_rate_by_bin"] if b not in bins]
    rows = []
    for b in bins:
        cells = []
        for m in gated:
            e = m["gate_rate_by_bin"].get(b)
            if e is None:
                cells.append(DASH)
                continue
            counts = e["counts"]
            n = f"n={counts[0]}" if len(set(counts)) == 1 else "n=" + "/".join(str(x) for x in counts)
            cells.append(f"{fmt_mean_sd(e['mean'], e['sd'])} ({n})" if e["values"] else f"{DASH} ({n})")
        rows.append((size_bin_label(b), *cells))
    return md_table(("lesion size", *(f"gate activation rate: {m['method']}" for m in gated)), rows)


def ablation_table(rows: Sequence[AblationEntry]) -> str:
    """A Markdown table: one row per method (order first seen), mean ± sd over its seeds.

    Columns: number of seeds; mean case Dice (all cases, as the evaluator); Dice of lesions < 1 cm³; micro lesion
    F1; mean gate activation rate (:data:`DASH` for methods without gates); median predicted/GT volume ratio; mean
    Dice over the cases with a lesion. sd is the sample sd over seeds (ddof=1), :data:`DASH` for a single
    seed. The numbers: :func:`ablation_summary`.

    Raises:
        ValueError / FileNotFoundError: see :func:`ablation_summary`.
    """
    return _ablation_markdown(ablation_summary(rows))


def write_ablation(
    out_dir: str | os.PathLike[str],
    rows: Sequence[AblationEntry],
    *,
    n_boot: int = 10000,
    seed: int = 0,
    notes: Sequence[str] = (),
    sections: Sequence[tuple[str, str]] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/ablation.md`` (the :func:`ablation_table` with its sources) and ``ablation.json``.

    ``ablation.md`` also holds the paired comparison of each method with the first (the baseline), pooled over seeds
    (:func:`pooled_comparisons`: interval over seeds and cases, bootstrap with ``n_boot`` resamples and ``seed``;
    a warning line when an interval had one seed only), a warning line for a method whose
    median predicted/GT volume ratio (mean over seeds) leaves [0.5, 2], and the gate activation rate by lesion size
    with the number of lesions per bin; before it, the lesion Dice and share found for < 1 and ≥ 1 cm³ (with
    seed-and-case intervals) and per size bin (:mod:`lesionsam.evaluation.sizes`). ``sections`` (title, Markdown)
    follow (e.g. the click curves of :mod:`lesionsam.evaluation.ablation_clicks`); ``notes`` (the protocol: data,
    split, test clicks) go in a section of their own before the table's sources, one bullet each. ``extra`` adds
    keys to ``ablation.json``.

    ``ablation.json`` = ``{"format": "lesionsam-ablation", "version": 1, "sd": "...", "methods":
    ablation_summary(rows), "comparisons": pooled_comparisons(...)}`` (strict JSON; a missing value is null).

    Returns:
        The path of ``ablation.md``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder expected, but {out} is a file")
    summary, per_case = _collect(rows, n_boot=n_boot, seed=seed)
    comparisons = pooled_comparisons(per_case, [m["method"] for m in summary], n_boot=n_boot, seed=seed)
    payload = {
        "format": "lesionsam-ablation",
        "version": 1,
        "sd": "sample standard deviation over seeds (ddof=1); null for one seed",
        "methods": summary,
        "comparisons": [
            {**c, "comparison": None if c["comparison"] is None else c["comparison"].to_dict()} for c in comparisons
        ],
        **(extra or {}),
    }
    atomic_write_bytes(out / "ablation.json", (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())
    lines = [
        "# Ablation",
        "",
        _ablation_markdown(summary),
        "",
        "Mean ± sample sd (ddof=1) over seeds of each seed's value; "
        f"{DASH} where it does not exist. Per seed: Dice = `summary.dice.mean` (mean over cases), Dice < 1 cm³ = "
        f'`summary.lesion_dice_by_volume_coarse["{SMALL_BIN}"].mean_dice`, lesion F1 = `summary.lesion_detection.f1` '
        "(micro) of its `metrics.json`; gate activation rate = mean `gate_rate` of the lesion crops of its gates CSV "
        "(lesion-free crops in the by-size table); pred/GT volume = "
        "median over the cases with a lesion of `pred_volume_ml / gt_volume_ml` (`cases` of its `metrics.json`); "
        "Dice, cases with a lesion = mean case Dice over the cases with `gt_lesions > 0` (lesion-free cases left out).",
        "",
    ]
    warnings = [segmentation_warning(m["method"], m["volume_ratio"]["mean"]) for m in summary]
    warnings = [w for w in warnings if w is not None]
    if warnings:
        lines += [f"- {w} (mean over seeds of the per-seed median)" for w in warnings] + [""]
    lines += ["## Paired comparison with the baseline, pooled over seeds", ""]
    if comparisons:
        lines += [_comparison_table(comparisons), ""]
        for c in comparisons:
            if c["comparison"] is not None:
                lines.append("- " + comparison_sentence(c["method"], c["vs"], c["comparison"]))
        lines += ["", "Case Dice over the cases with a ground-truth lesion. " + POOLING]
        if any(c["comparison"] is not None and not c["comparison"].covers_seed_noise for c in comparisons):
            lines += ["", f"{WARNING_SIGN} {ONE_SEED}"]
    else:
        lines.append("One method only: nothing to compare.")
    names = [m["method"] for m in summary]
    lines += ["", "## Lesion Dice and detection by lesion size", ""]
    lines += [coarse_markdown(names, [m["coarse"] for m in summary])]
    lines += ["", bins_markdown(names, [m["bins"] for m in summary]), "", SIZES_HOW.format(n_boot=n_boot, seed=seed)]
    lines += ["", "## Gate activation rate by lesion size", ""]
    gates_table = _gates_by_bin_table(summary)
    if gates_table is None:
        lines += ["No method has a gates CSV.", ""]
    else:
        lines += [
            gates_table,
            "",
            "Per seed: mean `gate_rate` of the lesions of that size bin in its gates CSV; mean ± sample sd over seeds; "
            "n = lesions in the bin (per seed when the seeds differ).",
            "",
        ]
    for title, body in sections:
        lines += [f"## {title}", "", body, ""]
    if notes:
        lines += ["## Protocol", "", *(f"- {n}" for n in notes), ""]
    lines += ["## Sources", ""]
    for m in summary:
        for src in m["sources"]:
            extra = f", `{rel_path(Path(src['gates']), out)}`" if "gates" in src else ""
            lines.append(f"- {m['method']} seed {src['seed']}: `{rel_path(Path(src['metrics']), out)}`{extra}")
    return atomic_write_bytes(out / "ablation.md", ("\n".join(lines) + "\n").encode("utf-8"))
