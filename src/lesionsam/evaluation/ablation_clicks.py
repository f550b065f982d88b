"""The ablation's interactive-protocol section: Dice after 1…N clicks per method, its area, NoC@80/90, over seeds.

Each run's ``clicks.json`` (written by :func:`lesionsam.workflows.clicks.evaluate_clicks`, see
:mod:`lesionsam.evaluation.interactive` for the protocol) holds a ``summary`` over that run's test lesions: the mean
Dice after click k (k = 1…N), the mean AUC (area under Dice(k) / (N − 1)) and the mean NoC@80/90 with the number of
lesions that never reached the target (counted as N), and the same per lesion size bin (``summary.by_size``; files
written before it have none). Per method, this module averages those per-seed means over the seeds (mean ± sample
sd, ddof=1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.evaluation.figures import size_bin_label
from lesionsam.evaluation.lesions import VOLUME_BINS_ML
from lesionsam.evaluation.report_io import DASH, fmt_mean_sd, md_table


def _stat(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    return {
        "mean": float(arr.mean()) if arr.size else None,
        "sd": float(arr.std(ddof=1)) if arr.size > 1 else None,
        "values": [float(v) for v in arr],
    }


def click_summary(runs: Sequence[tuple[str, int, str | os.PathLike[str] | None]]) -> list[dict[str, Any]]:
    """Per method (order first seen), the interactive protocol over its seeds.

    Args:
        runs: ``(method, seed, clicks.json path or None)``; a run without the file is listed in ``missing_seeds``.

    Returns:
        ``[{"method", "seeds", "missing_seeds", "n_clicks", "n_lesions", "dice_after", "auc", "noc80", "noc90",
        "noc80_failed", "noc90_failed", "by_size"}]``: ``dice_after`` one ``{"mean", "sd", "values"}`` per click
        k = 1…N, ``auc``/``noc80``/``noc90`` the same of the per-seed means, ``*_failed`` and ``n_lesions`` per seed;
        ``by_size`` per size bin (every bin) ``{"n_lesions", "dice_first", "dice_last", "auc"}``: lesions per seed
        and the per-seed means after the first and the last click and of the AUC over the seeds with such lesions
        (empty when no file has a ``by_size``).

    Raises:
        ValueError: one method's seeds have different numbers of clicks, or a file is not a ``lesionsam-clicks``
            JSON.
    """
    by_method: dict[str, list[tuple[int, dict[str, Any] | None]]] = {}
    for method, seed, path in runs:
        summary = None
        if path is not None and Path(path).is_file():
            data = json.loads(Path(path).read_text())
            if data.get("format") != "lesionsam-clicks":
                raise ValueError(f"{path} is not a lesionsam clicks.json (lesionsam evaluate-clicks writes one)")
            summary = data["summary"]
        by_method.setdefault(method, []).append((seed, summary))
    out = []
    for method, rows in by_method.items():
        have = [(seed, s) for seed, s in rows if s is not None and s["n_lesions"]]
        lengths = {s["n_clicks"] for _, s in have}
        if len(lengths) > 1:
            raise ValueError(f"method {method!r}: seeds were scored with different numbers of clicks {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        out.append(
            {
                "method": method,
                "seeds": [seed for seed, _ in have],
                "missing_seeds": [seed for seed, s in rows if s is None or not s["n_lesions"]],
                "n_clicks": n,
                "n_lesions": [s["n_lesions"] for _, s in have],
                "dice_after": [_stat([s["dice_mean"][k] for _, s in have]) for k in range(n)],
                "auc": _stat([s["auc_mean"] for _, s in have]),
                "noc80": _stat([s["noc80"]["mean"] for _, s in have]),
                "noc90": _stat([s["noc90"]["mean"] for _, s in have]),
                "noc80_failed": [s["noc80"]["failed"] for _, s in have],
                "noc90_failed": [s["noc90"]["failed"] for _, s in have],
                "by_size": _by_size([s for _, s in have]),
            }
        )
    return out


def _by_size(summaries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per size bin over the seeds' ``by_size`` (see :func:`click_summary`); {} when no summary has one."""
    with_sizes = [s["by_size"] for s in summaries if "by_size" in s]
    if not with_sizes:
        return {}
    out = {}
    for name, *_ in VOLUME_BINS_ML:
        bins = [b.get(name, {"n_lesions": 0}) for b in with_sizes]
        scored = [b for b in bins if b["n_lesions"]]
        out[name] = {
            "n_lesions": [b["n_lesions"] for b in bins],
            "dice_first": _stat([b["dice_mean"][0] for b in scored]),
            "dice_last": _stat([b["dice_mean"][-1] for b in scored]),
            "auc": _stat([b["auc_mean"] for b in scored]),
        }
    return out


def _size_table(scored: Sequence[dict[str, Any]]) -> str | None:
    """Rows = size bins, one column per method: Dice after 1 and N clicks (n = lesions per seed); None without sizes."""
    sized = [m for m in scored if m["by_size"]]
    if not sized:
        return None
    rows = []
    for name, *_ in VOLUME_BINS_ML:
        cells = []
        for m in sized:
            e = m["by_size"][name]
            counts = sorted(set(e["n_lesions"]))
            lesions = "n=" + "/".join(str(c) for c in e["n_lesions"]) if len(counts) > 1 else f"n={counts[0]}"
            if e["dice_first"]["mean"] is None:
                cells.append(f"{DASH} ({lesions})")
                continue
            first = fmt_mean_sd(e["dice_first"]["mean"], e["dice_first"]["sd"])
            last = fmt_mean_sd(e["dice_last"]["mean"], e["dice_last"]["sd"])
            cells.append(f"{first} → {last} ({lesions})")
        rows.append((size_bin_label(name), *cells))
    head = ("lesion size", *(f"Dice after 1 → {m['n_clicks']} clicks: {m['method']}" for m in sized))
    return md_table(head, rows)


#: The note under the by-size table.
SIZES_TEXT = (
    "By ground-truth lesion volume (lower bound inclusive): per seed the mean over its lesions of that size, then "
    "mean ± sample sd over the seeds with such lesions; n = lesions per seed."
)


def _failed(counts: Sequence[int], lesions: Sequence[int]) -> str:
    return ", ".join(f"{c}/{n}" for c, n in zip(counts, lesions, strict=True)) or DASH


def click_markdown(summary: Sequence[dict[str, Any]]) -> str | None:
    """The section's Markdown (None when no run has click curves): a summary table and the curve table."""
    scored = [m for m in summary if m["seeds"]]
    if not scored:
        return None
    n = max(m["n_clicks"] for m in scored)
    head = ("method", "seeds", "Dice after 1 click", f"Dice after {n} clicks", "AUC", "NoC@80", "NoC@90")
    rows = []
    for m in scored:
        last = m["dice_after"][-1]
        rows.append(
            (
                m["method"],
                ", ".join(map(str, m["seeds"])),
                fmt_mean_sd(m["dice_after"][0]["mean"], m["dice_after"][0]["sd"]),
                fmt_mean_sd(last["mean"], last["sd"]),
                fmt_mean_sd(m["auc"]["mean"], m["auc"]["sd"]),
                fmt_mean_sd(m["noc80"]["mean"], m["noc80"]["sd"], ".2f")
                + f" (not reached: {_failed(m['noc80_failed'], m['n_lesions'])})",
                fmt_mean_sd(m["noc90"]["mean"], m["noc90"]["sd"], ".2f")
                + f" (not reached: {_failed(m['noc90_failed'], m['n_lesions'])})",
            )
        )
    curve_rows = [
        (
            str(k + 1),
            *(
                fmt_mean_sd(m["dice_after"][k]["mean"], m["dice_after"][k]["sd"]) if k < m["n_clicks"] else DASH
                for m in scored
            ),
        )
        for k in range(n)
    ]
    missing = [
        f"{m['method']} seed(s) {', '.join(map(str, m['missing_seeds']))}" for m in summary if m["missing_seeds"]
    ]
    sizes = _size_table(scored)
    lines = [md_table(head, rows), "", md_table(("clicks", *(f"Dice: {m['method']}" for m in scored)), curve_rows), ""]
    lines += [
        "Per seed: the mean over its test lesions of Dice after k clicks, of the AUC (area under Dice(k), "
        "k = 1…N, / (N − 1)) and of NoC@80/90 (clicks to reach Dice 0.8 / 0.9, N when never reached: "
        '"not reached" counts those lesions per seed); then mean ± sample sd over seeds. Protocol: the first click '
        "inside the lesion, each later one on the error region of the previous prediction (seeded per lesion), the "
        "previous low-res logits fed back (`lesionsam evaluate-clicks`).",
    ]
    if sizes is not None:
        lines += ["", sizes, "", SIZES_TEXT]
    if missing:
        lines += ["", f"No click curves (or no lesion) for: {'; '.join(missing)}."]
    return "\n".join(lines)
