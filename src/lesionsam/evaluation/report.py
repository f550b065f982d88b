"""A Markdown report (tables + PNG figures) comparing methods, and an ablation table over seeds.

Every number in a report is **read** from files that other parts of lesionsam wrote, or derived from their
per-case rows (the paired comparisons and volume ratios); no mask is re-scored:

* the evaluator's ``metrics.json`` (:func:`lesionsam.evaluation.evaluate.evaluate_folder`): ``summary`` for the
  tables and the size-bin figure (``dice``/``nsd``/``hd95_mm`` mean and ``std`` — the evaluator's population sd
  over cases —, ``lesion_detection.f1`` — micro F1 over all lesions —, ``lesion_dice_by_volume[bin]`` with
  ``mean_dice``, ``detected`` and ``count``, ``lesion_dice_by_volume_coarse["<1 cm3"]``), ``cases[*].dice`` for
  the per-case Dice plot and the choice of the worst and best case, ``settings`` (``label``, ``pred_label``,
  ``nsd_tolerance_mm``) to check that runs are comparable;
* ``lesions[*]`` (ground-truth lesions: volume, detected, Dice) for the lesion Dice and share found of lesions
  < 1 cm³ and ≥ 1 cm³ with their intervals (:mod:`lesionsam.evaluation.sizes`);
* ``cases[*]`` also for the "Findings" and the table of cases with a lesion / lesion-free cases (``gt_lesions``,
  ``pred_lesions``, ``gt_volume_ml``, ``pred_volume_ml``; see :mod:`lesionsam.evaluation.findings`);
* a gates CSV per SGP run (columns :data:`GATES_COLUMNS`; ``gate_rate`` = fraction of the gates open for a crop
  around that lesion, 0..1): the mean gate activation rate is the mean of ``gate_rate`` over its rows, by size bin
  the mean over the rows of that ``size_bin``;
* a training log CSV per run (columns :data:`TRAIN_LOG_COLUMNS`; ``train_loss`` or ``val_dice`` may be empty on a
  row): only plotted, as the mean ``train_loss`` of each epoch and every non-empty ``val_dice``.

Only the overlays read images (:mod:`lesionsam.evaluation.overlays`): the image, the ground truth
(``gt == label``) and each method's prediction (the evaluator's foreground rule: ``pred > 0``, or
``pred == pred_label`` when the evaluation used one) of that method's own worst and best case, to draw contours and
the centre click. Slices are shown in array order (rows = j, columns = i of ITK's (i, j, k); no reorientation), with
the in-plane spacing as aspect ratio, a scale bar and the patient's sides read from the image's direction.

Every figure gives a method the same colour (:func:`lesionsam.evaluation.figures.method_colours`). Figures are
drawn with Matplotlib's non-interactive Agg canvas attached to each figure
(:class:`matplotlib.backends.backend_agg.FigureCanvasAgg`), so no pyplot state and no global backend is touched;
PNGs are rendered into memory and written atomically, like every file written here.

Example:
    >>> runs = [MethodRun("finetune", Path("runs/demo/eval/finetune")),
    ...         MethodRun("sgp_sam", Path("runs/demo/eval/sgp_sam"), gates_csv=Path("runs/demo/sgp_sam/gates.csv"))]
    >>> write_report("runs/demo/report", runs, images_dir=..., labels_dir=..., label=2)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.evaluation.ablation import (
    ablation_summary,
    ablation_table,
    pooled_comparisons,
    write_ablation,
)
from lesionsam.evaluation.figures import (
    DPI,
    FIG_CURVES,
    FIG_DICE,
    FIG_GATES,
    FIG_OVERLAY,
    FIG_SIZE,
    GT_COLOUR,
    METHOD_COLOURS,
    curves_figure,
    dice_per_case_figure,
    gates_figure,
    method_colours,
    save_png,
    size_bin_figure,
)
from lesionsam.evaluation.findings import (
    OVER_SEGMENTS,
    UNDER_SEGMENTS,
    LesionFree,
    RatioSummary,
    findings_lines,
    gate_finding,
    has_lesion,
    lesion_case_dice,
    ratio_text,
    volume_ratios,
)
from lesionsam.evaluation.metrics import VOLUME_BINS_ML
from lesionsam.evaluation.overlays import (
    CT_AIR_HU,
    CT_WINDOW_HU,
    PERCENTILE_WINDOW,
    ZOOM_MAX_FRACTION,
    ZOOM_MIN_HALF_MM,
    OverlayRun,
    write_overlays,
)
from lesionsam.evaluation.report_io import (
    DASH,
    GATES_COLUMNS,
    METRICS_FORMAT,
    SMALL_BIN,
    TRAIN_LOG_COLUMNS,
    AblationEntry,
    GateRow,
    MethodRun,
    TrainCurve,
    check_names,
    fmt_mean_sd,
    fmt_value,
    is_num,
    load_metrics,
    md_table,
    read_gates_csv,
    read_train_log,
    rel_path,
    small_bin,
)
from lesionsam.evaluation.sizes import SIZES_HOW, coarse_markdown, method_sizes, runs_bins_markdown
from lesionsam.utils.dataclass_io import atomic_write_bytes

__all__ = [
    "CT_AIR_HU",
    "CT_WINDOW_HU",
    "DASH",
    "DPI",
    "FIG_CURVES",
    "FIG_DICE",
    "FIG_GATES",
    "FIG_OVERLAY",
    "FIG_SIZE",
    "GATES_COLUMNS",
    "GT_COLOUR",
    "METHOD_COLOURS",
    "METRICS_FORMAT",
    "PERCENTILE_WINDOW",
    "SMALL_BIN",
    "TRAIN_LOG_COLUMNS",
    "ZOOM_MAX_FRACTION",
    "ZOOM_MIN_HALF_MM",
    "AblationEntry",
    "GateRow",
    "MethodRun",
    "TrainCurve",
    "ablation_summary",
    "ablation_table",
    "pooled_comparisons",
    "fmt_mean_sd",
    "fmt_value",
    "load_metrics",
    "read_gates_csv",
    "read_train_log",
    "write_ablation",
    "write_report",
]

logger = logging.getLogger(__name__)

#: How the "Findings" were computed (shown under them).
FINDINGS_HOW = (
    "How: each method against the first ({baseline!r}, the baseline) on the case Dice of the test cases with a "
    "ground-truth lesion that both were evaluated on; mean paired difference (method − baseline), percentile "
    "bootstrap 95% interval of it ({n_boot} resamples of the cases, seed {seed}), two-sided Wilcoxon signed-rank p; "
    "beyond noise = the interval excludes 0 (one run per method: case noise only, not the seed-to-seed spread; "
    "`lesionsam ablate` resamples seeds too). A warning marks a median predicted/GT volume ratio above {over:g}× "
    "(over-segmentation) or below {under:g}× (under-segmentation)."
)


# ------------------------------------------------------------------------------------------------- the report
@dataclass
class _Loaded:
    run: MethodRun
    metrics: dict[str, Any]
    dice_by_case: dict[str, float]
    gates: list[GateRow] | None
    curve: TrainCurve | None

    @property
    def summary(self) -> dict[str, Any]:
        return self.metrics["summary"]


def _load_run(run: MethodRun, label: int, notes: list[str]) -> _Loaded:
    what = f"run {run.name!r}"
    metrics = load_metrics(run.eval_dir, what=what)
    used = metrics["settings"].get("label")
    if used != label:
        raise ValueError(
            f"{what}: metrics.json in {run.eval_dir} was computed for label {used}, but the report is for label "
            f"{label}; re-run the evaluation with --label {label} or pass label={used}"
        )
    dice = {}
    for row in metrics["cases"]:
        if not is_num(row.get("dice")):
            raise ValueError(f"{what}: case {row.get('case')!r} in {run.eval_dir}/metrics.json has no Dice")
        dice[str(row["case"])] = float(row["dice"])
    gates = read_gates_csv(run.gates_csv) if run.gates_csv is not None else None
    curve = None
    if run.train_log is not None:
        if Path(run.train_log).is_file():
            curve = read_train_log(run.train_log)
        else:
            logger.warning("%s: training log %s not found; its curves are omitted", what, run.train_log)
            notes.append(f"{run.name}: training log `{run.train_log}` not found; its curves are omitted.")
    return _Loaded(run, metrics, dice, gates, curve)


def _bin_order(loaded: Sequence[_Loaded]) -> list[str]:
    """Size bins in the evaluator's order (from the first metrics.json), then any other bin seen."""
    order: list[str] = []
    for item in loaded:
        for key in item.summary.get("lesion_dice_by_volume", {}):
            if key not in order:
                order.append(key)
    if not order:
        order = [name for name, _, _ in VOLUME_BINS_ML]
    for item in loaded:
        for g in item.gates or []:
            if g.size_bin not in order:
                order.append(g.size_bin)
    return order


#: Size bin of the gates CSV's lesion-free crops (:func:`lesionsam.workflows.demo.gate_rates`).
NO_LESION = "no lesion"


def _main_table(loaded: Sequence[_Loaded], tol: Any) -> str:
    head = (
        "method",
        "cases",
        "Dice (all cases)",
        f"NSD @{fmt_value(tol, 'g')} mm",
        "HD95 (mm)",
        "lesion F1",
        "Dice < 1 cm³ (n lesions)",
        "gate activation rate",
    )
    rows = []
    for item in loaded:
        s = item.summary
        hd = s["hd95_mm"]
        hd_text = fmt_mean_sd(hd.get("mean"), hd.get("std"), ".2f")
        if hd.get("n_undefined"):
            hd_text += f" ({hd['n_undefined']} undefined)"
        small = small_bin(s, Path(item.run.eval_dir) / "metrics.json")
        gate = DASH
        if item.gates:
            # Crops centred on a lesion; lesion-free crops (size bin "no lesion") apart.
            on = [g.gate_rate for g in item.gates if g.size_bin != NO_LESION]
            off = [g.gate_rate for g in item.gates if g.size_bin == NO_LESION]
            gate = f"{np.mean(on):.3f} (n={len(on)})" if on else DASH
            if off:
                gate += f"; no lesion {np.mean(off):.3f} (n={len(off)})"
        rows.append(
            (
                item.run.name,
                str(s["n_cases"]),
                fmt_mean_sd(s["dice"].get("mean"), s["dice"].get("std")),
                fmt_mean_sd(s["nsd"].get("mean"), s["nsd"].get("std")),
                hd_text,
                fmt_value(s["lesion_detection"].get("f1")),
                f"{fmt_value(small.get('mean_dice'))} ({small.get('count', 0)})",
                gate,
            )
        )
    return md_table(head, rows)


def _cases_table(loaded: Sequence[_Loaded]) -> str:
    head = ("method", "Dice, cases with a lesion (n)", "pred/GT volume: median (range)", "lesion-free cases")
    rows = []
    for item in loaded:
        dice = list(lesion_case_dice(item.metrics).values())
        dice_text = DASH if not dice else f"{fmt_mean_sd(np.mean(dice), np.std(dice))} ({len(dice)})"
        ratio = ratio_text(RatioSummary.of(list(volume_ratios(item.metrics).values())))
        rows.append((item.run.name, dice_text, ratio, LesionFree.of(item.metrics).text()))
    return md_table(head, rows)


def _gate_stats(gates: Sequence[GateRow], bins: Sequence[str]) -> tuple[list[Any], list[int]]:
    rates, counts = [], []
    for b in bins:
        vals = [g.gate_rate for g in gates if g.size_bin == b]
        rates.append(float(np.mean(vals)) if vals else None)
        counts.append(len(vals))
    return rates, counts


def write_report(
    out_dir: str | os.PathLike[str],
    runs: Sequence[MethodRun],
    *,
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str],
    label: int,
    title: str = "lesionsam demo",
    notes: Sequence[str] = (),
    n_boot: int = 10000,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/report.md`` and its figures under ``out_dir/figures/`` comparing ``runs``.

    The report holds, in this order: the ``notes``; the "Findings"
    (:func:`lesionsam.evaluation.findings.findings_lines`: each run against the first, the baseline, by paired
    per-case Dice on the cases with a lesion; a warning line for a median predicted/GT volume ratio outside
    [0.5, 2]; the lesion-free cases); a metrics table (one row per run: cases, Dice, NSD and HD95 as mean ± sd over
    all cases, micro lesion F1, mean Dice of lesions < 1 cm³ with their count, mean gate activation rate for runs
    with a gates CSV); a table of the cases with a lesion (Dice, volume ratio) and of the lesion-free cases apart;
    a lesion-size table (every size bin) and the < 1 / ≥ 1 cm³ table (Dice, share found, intervals); the figures:
    per-case Dice, lesion Dice by size bin, gate activation by size bin (runs with gates only), training curves
    (runs with a training log) and axial overlays of the worst and best case;
    then the list of files every number came from (paths relative to ``out_dir``).
    Where to read each number: see the module docstring.

    Args:
        out_dir: output folder (created if missing).
        runs: one :class:`MethodRun` per method, in table order; the first is the baseline of the Findings, put
            the headline method last.
        images_dir: folder of the evaluated images (by case id, optionally with nnU-Net's ``_0000``).
        labels_dir: folder of the ground-truth label maps the evaluator used.
        label: ground-truth target value (must be the one in every ``metrics.json``).
        title: the report's heading.
        notes: lines shown at the top (e.g. ``"trained 40 s per method on 2 CPU cores"``).
        n_boot, seed: resamples and generator seed of the bootstrap intervals of the "Findings"
            (:func:`lesionsam.evaluation.statistics.paired_comparison`).

    Returns:
        The path of ``report.md``.

    Raises:
        ValueError: no run, a run name used twice, runs evaluated for another label or with different NSD
            tolerances or modes, a malformed metrics file or CSV.
        FileNotFoundError: a missing ``metrics.json``, gates CSV, image, label or prediction of an overlay case.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("write_report needs at least one MethodRun; got an empty list")
    check_names([r.name for r in runs], "run")
    out, fig_dir = Path(out_dir), Path(out_dir) / "figures"
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder expected, but {out} is a file")
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)

    auto_notes: list[str] = []
    loaded = [_load_run(r, label, auto_notes) for r in runs]
    settings = [item.metrics["settings"] for item in loaded]
    nsd = [(st.get("nsd_tolerance_mm"), st.get("nsd_mode", "voxel")) for st in settings]
    if len(set(nsd)) > 1:  # metrics.json files from before nsd_mode existed counted boundary voxels
        raise ValueError(
            "runs were evaluated with different NSD settings ("
            + ", ".join(f"{i.run.name}: {t} mm, {m}" for i, (t, m) in zip(loaded, nsd, strict=True))
            + "); re-run the evaluation with one --nsd-tolerance and one --nsd"
        )
    tols = {t for t, _ in nsd}
    case_sets = {tuple(sorted(item.dice_by_case)) for item in loaded}
    if len(case_sets) > 1:
        auto_notes.append(
            "Warning: the runs were evaluated on different sets of cases ("
            + ", ".join(f"{i.run.name}: {len(i.dice_by_case)}" for i in loaded)
            + "); their means are not directly comparable."
        )
    bins = _bin_order(loaded)
    names = [item.run.name for item in loaded]

    # ---- figures (one colour per method in every figure)
    colours = method_colours(names)
    free = [{str(r["case"]) for r in i.metrics["cases"] if not has_lesion(r)} for i in loaded]
    fig = dice_per_case_figure(names, [i.dice_by_case for i in loaded], free, colours)
    p_dice = save_png(fig, fig_dir / FIG_DICE)
    eval_bins = [b for b in bins if any(b in i.summary.get("lesion_dice_by_volume", {}) for i in loaded)]
    fig = size_bin_figure(eval_bins, names, [i.summary.get("lesion_dice_by_volume", {}) for i in loaded], colours)
    p_size = save_png(fig, fig_dir / FIG_SIZE)

    gated = [i for i in loaded if i.gates is not None]
    p_gates = None
    if gated:
        stats = [_gate_stats(i.gates or [], bins) for i in gated]
        names_g = [i.run.name for i in gated]
        fig = gates_figure(bins, names_g, [s[0] for s in stats], [s[1] for s in stats], colours)
        p_gates = save_png(fig, fig_dir / FIG_GATES)

    with_curves = [i for i in loaded if i.curve is not None and (i.curve.loss or i.curve.val_dice)]
    p_curves = None
    if with_curves:
        fig = curves_figure([i.run.name for i in with_curves], [i.curve for i in with_curves], colours)
        p_curves = save_png(fig, fig_dir / FIG_CURVES)
    overlay_runs = [
        OverlayRun(
            name=i.run.name,
            colour=colours[i.run.name],
            pred_dir=None if i.run.pred_dir is None else Path(i.run.pred_dir),
            settings=i.metrics["settings"],
            dice_by_case=i.dice_by_case,
            lesion_cases=sorted(lesion_case_dice(i.metrics)),
            headline=n == len(loaded) - 1,
        )
        for n, i in enumerate(loaded)
    ]
    overlays, overlay_notes = write_overlays(overlay_runs, fig_dir, images_dir, labels_dir, label)

    # ---- markdown
    def link(path: Path) -> str:
        return rel_path(path, out)

    tol = next(iter(tols))
    lines = [f"# {title}", ""]
    all_notes = [*notes, *auto_notes]
    if all_notes:
        lines += [f"- {n}" for n in all_notes] + [""]
    finding_lines, _ = findings_lines(names, [i.metrics for i in loaded], n_boot=n_boot, seed=seed)
    finding_lines += [line for i in loaded if i.gates and (line := gate_finding(i.run.name, i.gates))]
    lines += ["## Findings", "", *(f"- {n}" for n in finding_lines), ""]
    lines += [
        FINDINGS_HOW.format(baseline=names[0], n_boot=n_boot, seed=seed, over=OVER_SEGMENTS, under=UNDER_SEGMENTS),
        "",
        "## Metrics",
        "",
        _main_table(loaded, tol),
        "",
        f"Cases: evaluated cases (label {label}), lesion-free ones included. Dice, NSD (tolerance "
        f"{fmt_value(tol, 'g')} mm) and HD95: mean ± sd "
        "over cases as written by the evaluator (`summary.<metric>.mean` / `.std`, population sd); HD95 leaves out "
        "cases where exactly one mask is empty (counted as undefined). Lesion F1: micro F1 over all ground-truth "
        "lesions and predicted components, 26-connected (`summary.lesion_detection.f1`). Dice < 1 cm³: mean Dice of "
        "ground-truth lesions smaller than 1 cm³ and their number "
        f'(`summary.lesion_dice_by_volume_coarse["{SMALL_BIN}"]`)'
        ". Gate activation rate: mean of `gate_rate` over the lesions of the gates CSV (n lesions); "
        f"{DASH} for methods without gates.",
        "",
        "Cases with a lesion and lesion-free cases, apart:",
        "",
        _cases_table(loaded),
        "",
        "Over the cases with a ground-truth lesion: Dice mean ± sd (population sd, as the evaluator) and n; "
        "predicted/ground-truth volume ratio (`pred_volume_ml / gt_volume_ml` of `metrics.json`): median over "
        "those cases (min–max). Lesion-free cases (no ground-truth lesion; Dice 1 if predicted empty, else 0, "
        "by convention): how many were predicted empty, and the volume predicted on them (all false positive).",
        "",
        "## Dice per case",
        "",
        f"![Dice per case]({link(p_dice)})",
        "",
        "## Lesion Dice by lesion size",
        "",
        runs_bins_markdown(names, [i.summary for i in loaded], eval_bins),
        "",
        coarse_markdown(names, [method_sizes({0: i.metrics}, n_boot=n_boot, seed=seed)["coarse"] for i in loaded]),
        "",
        SIZES_HOW.format(n_boot=n_boot, seed=seed),
        "",
        f"![Lesion Dice by size]({link(p_size)})",
        "",
        "## Gate activation by lesion size",
        "",
    ]
    if p_gates is not None:
        lines += [f"![Gate activation rate by size]({link(p_gates)})", ""]
    else:
        lines += ["No run has a gates CSV (no SGP method in this report): figure omitted.", ""]
    lines += ["## Training curves", ""]
    if p_curves is not None:
        lines += [f"![Training curves]({link(p_curves)})", ""]
    else:
        lines += ["No training log given: curves omitted.", ""]
    lines += ["## Worst and best case, per method", ""]
    if overlays:
        lines += [
            "Each method's own worst and best case by its case Dice among the cases with a ground-truth lesion. "
            "Slice through the centre click of the largest lesion (the click of `lesionsam predict --clicks-from`: "
            "its interior-most voxel), drawn as a white star with every other click on that slice; contours: "
            "ground truth in green, the method in its colour; a scale bar in mm; letters: the patient's sides "
            "from the image's direction (R/L, A/P, S/I).",
            "",
        ]
        for name in names:
            mine = [o for o in overlays if o.method == name]
            if mine:
                lines += [f"### {name}", ""]
                lines += [f"![{o.which} case {o.case}]({link(o.path)})\n" for o in mine]
    lines += [*overlay_notes, ""] if overlay_notes else []

    lines += ["## Sources", "", "Every number above was read from these files (paths relative to this report):", ""]
    for item in loaded:
        r = item.run
        parts = [f"`{link(Path(r.eval_dir) / 'metrics.json')}` (tables, Dice per case, lesion size figure)"]
        if (Path(r.eval_dir) / "metrics.csv").is_file():
            parts.append(f"per-case table `{link(Path(r.eval_dir) / 'metrics.csv')}`")
        if r.gates_csv is not None:
            parts.append(f"gates `{link(Path(r.gates_csv))}`")
        if item.curve is not None and r.train_log is not None:
            parts.append(f"training log `{link(Path(r.train_log))}`")
        if r.pred_dir is not None and overlays:
            parts.append(f"predictions `{link(Path(r.pred_dir))}/` (overlays)")
        lines.append(f"- {r.name}: " + "; ".join(parts))
    if overlays:
        lines.append(f"- overlays: images `{link(images_dir)}/`, labels `{link(labels_dir)}/`")
    text = "\n".join(lines).rstrip() + "\n"
    return atomic_write_bytes(out / "report.md", text.encode("utf-8"))
