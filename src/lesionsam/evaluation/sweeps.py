"""What a validation sweep (``lesionsam sweep``) measured, as rows, a Markdown table and one-line summaries.

The summaries let a report say how its defaults were chosen, with the numbers of every reading tried: the demo's
report quotes the sweeps packaged with the defaults (``lesionsam/configs/sweeps/*.json``, written by
``lesionsam sweep`` and copied there when the defaults were chosen).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SweepRow:
    """What a sweep measured for one variant (validation split only).

    Attributes:
        name, method, overrides, note: the variant (its run folder, method, ``key=value`` settings, description).
        val_cases: validation cases with a lesion that were scored.
        dice_mean, dice_sd: Dice over those cases (one centre click per lesion, whole volume).
        crop_val_dice: the trainer's best validation score (one click on the largest lesion's crop).
        volume_ratio_median: median predicted / ground-truth lesion volume over the cases.
        gate_rate: mean share of open gates over the gate crops (None: the model has no gate).
        minutes: wall time of the variant (training and scoring).
        gate_rates: share of open gates per lesion size bin and for lesion-free crops (``"no lesion"``).
    """

    name: str
    method: str
    overrides: tuple[str, ...]
    note: str
    val_cases: int
    dice_mean: float
    dice_sd: float
    crop_val_dice: float
    volume_ratio_median: float
    gate_rate: float | None
    minutes: float
    gate_rates: dict[str, float] | None = None
    small_dice: float | None = None
    small_found: float | None = None
    large_dice: float | None = None

    @property
    def size_score(self) -> float | None:
        """The mean of the lesion Dice of tumours < 1 cm³ and ≥ 1 cm³ (None when either is missing)."""
        if self.small_dice is None or self.large_dice is None:
            return None
        return (self.small_dice + self.large_dice) / 2.0


def read_sweep_rows(path: str | os.PathLike[str]) -> list[SweepRow]:
    """The rows of a ``sweep.json``."""
    rows = json.loads(Path(path).read_text())
    return [SweepRow(**{**r, "overrides": tuple(r.get("overrides", ()))}) for r in rows]


def best_row(rows: Sequence[SweepRow]) -> int:
    """Index of the row a sweep chooses: the best size score (:attr:`SweepRow.size_score`) when every row has one
    (the small-lesion sweep), else the best validation Dice."""
    if rows and all(r.size_score is not None for r in rows):
        return max(range(len(rows)), key=lambda i: rows[i].size_score)  # type: ignore[arg-type,return-value]
    return max(range(len(rows)), key=lambda i: rows[i].dice_mean if np.isfinite(rows[i].dice_mean) else -1)


def sweep_markdown(rows: Sequence[SweepRow], *, title: str, quick: bool = False) -> str:
    """``sweep.md``: the table, best validation Dice in bold."""
    best = best_row(rows) if rows else -1
    lines = [
        f"# Sweep: {title} (held-out selection cases)",
        "",
        f"Made by `lesionsam sweep{' --quick' if quick else ''}`. Scored on held-out cases that are not the test set "
        f"(the selection set; the quick recipe: the trainer's validation split): {rows[0].val_cases if rows else 0} "
        "cases with a tumour, one centre click per tumour, whole volume. Crop Dice: the trainer's best validation "
        "score (one click on the largest lesion's crop).",
        "",
        "| variant | method | settings | validation Dice | crop Dice | median volume ratio | gates open "
        "| gates open by size bin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sized = any(r.small_dice is not None or r.large_dice is not None for r in rows)
    if sized:
        lines[2] += (
            " By size: lesion Dice of tumours < 1 cm³ (share found) and ≥ 1 cm³ (— where the cases hold none); when "
            "every row has both, the choice is the best mean of the two (in bold)."
        )
        lines[4] = lines[4].replace("| validation Dice |", "| validation Dice | < 1 cm³ (found) | ≥ 1 cm³ |")
        lines[5] = lines[5] + "---|---|"
    for i, r in enumerate(rows):
        scores = [f"{r.dice_mean:.3f} ± {r.dice_sd:.3f}"]
        if sized:
            found = f" ({r.small_found:.0%})" if r.small_found is not None else ""
            small = f"{r.small_dice:.3f}{found}" if r.small_dice is not None else "—"
            scores += [small, f"{r.large_dice:.3f}" if r.large_dice is not None else "—"]
        if i == best:
            scores = [f"**{c}**" for c in scores]
        gate = "—" if r.gate_rate is None else f"{r.gate_rate:.2f}"
        bins = "; ".join(f"{k} {v:.2f}" for k, v in (r.gate_rates or {}).items()) or "—"
        settings = "; ".join(r.overrides) or "defaults"
        lines.append(
            f"| {r.name} | {r.method} | {r.note or settings} (`{settings}`) | {' | '.join(scores)} "
            f"| {r.crop_val_dice:.3f} | {r.volume_ratio_median:.2f} | {gate} | {bins} |"
        )
    return "\n".join([*lines, ""])


def _gates_text(r: SweepRow) -> str:
    if r.gate_rate is None:
        return ""
    rates = sorted({round(v, 2) for v in (r.gate_rates or {}).values()})
    same = len(rates) <= 1
    return f", gates open {r.gate_rate:.2f}" + (" on every crop" if same else f" (by crop: {r.gate_rates})")


def sweep_summary(rows: Sequence[SweepRow], *, what: str) -> str:
    """One line: every variant's validation Dice, volume ratio and (with gates) its gate activation, the chosen one
    named. ``what`` names the sweep (e.g. ``"gate budgets"``)."""
    if not rows:
        return f"{what}: no sweep rows."
    best = rows[best_row(rows)]
    parts = []
    for r in rows:
        ratio = "" if not math.isfinite(r.volume_ratio_median) else f", {r.volume_ratio_median:.2f}× volume"
        parts.append(f"{r.note or r.name}: Dice {r.dice_mean:.3f}{ratio}{_gates_text(r)}")
    sized = all(r.size_score is not None for r in rows)
    rule = "the mean of the lesion Dice < 1 cm³ and ≥ 1 cm³" if sized else "validation Dice"
    if sized:
        parts = [
            f"{p}, lesion Dice < 1 cm³ {r.small_dice:.3f} / ≥ 1 cm³ {r.large_dice:.3f}"
            for p, r in zip(parts, rows, strict=True)
        ]
    return (
        f"{what} tried on {'held-out selection cases' if sized else 'the validation split'} ({best.val_cases} cases; "
        "`lesionsam sweep`): " + "; ".join(parts) + f". Chosen by {rule}: {best.note or best.name}."
    )
