"""The inputs of the report and the ablation: run descriptions, readers of the files they read, formatting.

Shared by :mod:`lesionsam.evaluation.report`, :mod:`lesionsam.evaluation.figures`,
:mod:`lesionsam.evaluation.overlays`, :mod:`lesionsam.evaluation.findings` and :mod:`lesionsam.evaluation.ablation`
(all of it is re-exported by :mod:`lesionsam.evaluation.report`). What each file holds: see the docstring of
:mod:`lesionsam.evaluation.report`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.evaluation.lesions import COARSE_VOLUME_BINS_ML

#: Columns a training log must have (``step``, ``lr`` and ``seconds`` are not used by the report).
TRAIN_LOG_COLUMNS = ("epoch", "step", "train_loss", "val_dice", "lr", "seconds")
#: Columns a gates CSV must have (one row per ground-truth lesion of a case).
GATES_COLUMNS = ("case", "lesion", "volume_ml", "size_bin", "gate_rate")
#: The evaluator's format name and version that this module reads.
METRICS_FORMAT = ("lesionsam-metrics", 1)
#: The size bin of small lesions (the evaluator's first coarse bin, "<1 cm3"; the first bin of older results).
SMALL_BIN = COARSE_VOLUME_BINS_ML[0][0]
#: Placeholder for a value that does not exist.
DASH = "—"


# ------------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class MethodRun:
    """The outputs of one method, as inputs to :func:`write_report`.

    Attributes:
        name: method name shown in tables and legends (unique within a report), e.g. ``"finetune"``, ``"sgp_sam"``.
        eval_dir: folder holding the evaluator's ``metrics.json`` (and ``metrics.csv``).
        pred_dir: folder of predicted masks named by case id (as the evaluator pairs them); used for the overlays.
        train_log: training log CSV with :data:`TRAIN_LOG_COLUMNS`; None (or a missing file) omits the curves.
        gates_csv: SGP methods only: gates CSV with :data:`GATES_COLUMNS`.
    """

    name: str
    eval_dir: Path
    pred_dir: Path | None = None
    train_log: Path | None = None
    gates_csv: Path | None = None


@dataclass(frozen=True)
class AblationEntry:
    """One (method, seed) evaluation, as input to :func:`ablation_table` / :func:`write_ablation`.

    Attributes:
        method: method / ablation name; rows with the same name are the seeds of one method.
        seed: training seed (unique per method).
        eval_dir: folder holding the evaluator's ``metrics.json``.
        gates_csv: gates CSV (:data:`GATES_COLUMNS`) for methods with gates; None for the others.
    """

    method: str
    seed: int
    eval_dir: Path
    gates_csv: Path | None = None


@dataclass(frozen=True)
class GateRow:
    """One row of a gates CSV: the gate activation rate of the crop around one ground-truth lesion."""

    case: str
    lesion: str
    volume_ml: float
    size_bin: str
    gate_rate: float


@dataclass(frozen=True)
class TrainCurve:
    """A training log reduced for plotting: mean ``train_loss`` per epoch and every non-empty ``val_dice``."""

    loss_epochs: tuple[float, ...]
    loss: tuple[float, ...]
    val_epochs: tuple[float, ...]
    val_dice: tuple[float, ...]


# ------------------------------------------------------------------------------------------------- readers
def load_metrics(eval_dir: str | os.PathLike[str], *, what: str = "") -> dict[str, Any]:
    """Read and check the evaluator's ``metrics.json`` in ``eval_dir``.

    Args:
        eval_dir: the evaluator's output folder.
        what: a prefix for error messages (e.g. ``"run 'sgp_sam'"``).

    Returns:
        The parsed JSON (keys ``settings``, ``summary``, ``cases``, ...).

    Raises:
        FileNotFoundError: no ``metrics.json`` in ``eval_dir``.
        ValueError: not valid JSON, or not the evaluator's format.
    """
    path = Path(eval_dir) / "metrics.json"
    prefix = f"{what}: " if what else ""
    if not path.is_file():
        raise FileNotFoundError(
            f"{prefix}metrics.json not found in {Path(eval_dir)} (write it with `lesionsam evaluate PRED_DIR GT_DIR "
            f"--out {Path(eval_dir)}`)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{prefix}{path} is not valid JSON ({exc}); re-run the evaluation") from None
    fmt = (data.get("format"), data.get("version")) if isinstance(data, dict) else (None, None)
    if fmt != METRICS_FORMAT:
        raise ValueError(
            f"{prefix}{path} is not a lesionsam metrics file of format {METRICS_FORMAT[0]!r} version "
            f"{METRICS_FORMAT[1]} (found format {fmt[0]!r}, version {fmt[1]!r})"
        )
    for key in ("settings", "summary", "cases"):
        if key not in data:
            raise ValueError(f"{prefix}{path} has no {key!r} section; re-run the evaluation")
    return data


def _read_csv(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """Rows of a CSV with a header holding ``required`` (FileNotFoundError / ValueError otherwise)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(
                f"{what} {path} lacks column(s) {', '.join(missing)} (has: {', '.join(header) or 'no header'}); "
                f"expected {', '.join(required)}"
            )
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _number(text: str, path: Path, line: int, column: str) -> float | None:
    """A CSV cell as float; None for an empty cell or ``nan``; ValueError for anything else."""
    if text == "" or text.lower() == "nan":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path} line {line}: column {column!r} holds {text!r}, expected a number") from None
    return value if math.isfinite(value) else None


def read_gates_csv(path: str | os.PathLike[str]) -> list[GateRow]:
    """Read a gates CSV (:data:`GATES_COLUMNS`; ``gate_rate`` in [0, 1], one row per lesion).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a missing column, or a ``gate_rate`` that is empty, not a number or outside [0, 1].
    """
    p = Path(path)
    rows = _read_csv(p, GATES_COLUMNS, "gates CSV")
    out = []
    for line, row in enumerate(rows, start=2):
        rate = _number(row["gate_rate"], p, line, "gate_rate")
        if rate is None or not 0.0 <= rate <= 1.0:
            raise ValueError(f"{p} line {line}: gate_rate {row['gate_rate']!r} is not a fraction in [0, 1]")
        vol = _number(row["volume_ml"], p, line, "volume_ml")
        out.append(GateRow(row["case"], row["lesion"], math.nan if vol is None else vol, row["size_bin"], rate))
    return out


def read_train_log(path: str | os.PathLike[str]) -> TrainCurve:
    """Read a training log CSV (:data:`TRAIN_LOG_COLUMNS`) into a :class:`TrainCurve`.

    ``train_loss`` is averaged over the rows of each epoch (one row per step or per epoch both work); every row
    with a ``val_dice`` gives one validation point. Empty cells and ``nan`` are skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a missing column or a cell that is not a number.
    """
    p = Path(path)
    rows = _read_csv(p, ("epoch", "train_loss", "val_dice"), "training log")
    losses: dict[float, list[float]] = {}
    val_e, val_d = [], []
    for line, row in enumerate(rows, start=2):
        epoch = _number(row["epoch"], p, line, "epoch")
        if epoch is None:
            raise ValueError(f"{p} line {line}: empty epoch")
        loss = _number(row["train_loss"], p, line, "train_loss")
        if loss is not None:
            losses.setdefault(epoch, []).append(loss)
        dice = _number(row["val_dice"], p, line, "val_dice")
        if dice is not None:
            val_e.append(epoch)
            val_d.append(dice)
    epochs = sorted(losses)
    return TrainCurve(
        loss_epochs=tuple(epochs),
        loss=tuple(float(np.mean(losses[e])) for e in epochs),
        val_epochs=tuple(val_e),
        val_dice=tuple(val_d),
    )


# ------------------------------------------------------------------------------------------------- formatting
def is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_value(x: Any, spec: str = ".3f") -> str:
    """``format(x, spec)``, or :data:`DASH` for None / NaN."""
    return format(float(x), spec) if is_num(x) else DASH


def fmt_mean_sd(mean: Any, sd: Any, spec: str = ".3f") -> str:
    """``"mean ± sd"`` (each with ``spec``); :data:`DASH` for a missing mean, ``"mean ± —"`` for a missing sd."""
    if not is_num(mean):
        return DASH
    return f"{format(float(mean), spec)} ± {fmt_value(sd, spec)}"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rel_path(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` in POSIX form (absolute when no relative path exists)."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).resolve().as_posix()


def check_names(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"every {what} needs a non-empty name, got {name!r}")
        if name in seen:
            raise ValueError(f"{what} name {name!r} is used twice; give every {what} a distinct name")
        seen.add(name)


def small_bin(summary: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The evaluator's size bin of lesions < 1 cm³ (``count``, ``mean_dice``, ...): ``summary.
    lesion_dice_by_volume_coarse["<1 cm3"]``, or in results written before it ``lesion_dice_by_volume["<1 cm3"]``."""
    coarse = summary.get("lesion_dice_by_volume_coarse") or {}
    if SMALL_BIN in coarse:
        return coarse[SMALL_BIN]
    bins = summary.get("lesion_dice_by_volume") or {}
    if SMALL_BIN in bins:
        return bins[SMALL_BIN]
    for entry in bins.values():
        if entry.get("min_ml") == 0 and entry.get("max_ml") == 1:
            return entry
    raise ValueError(f"{path}: summary.lesion_dice_by_volume has no bin of lesions < 1 cm3 (bins: {list(bins)})")
