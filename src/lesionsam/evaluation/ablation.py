"""The ablation table: every method × seed, mean ± sd over seeds (re-exported by :mod:`.report`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.evaluation.report_io import (
    DASH,
    SMALL_BIN,
    AblationEntry,
    fmt_mean_sd,
    is_num,
    load_metrics,
    md_table,
    read_gates_csv,
    rel_path,
    small_bin,
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

    Per seed, read from its ``metrics.json``: ``summary.dice.mean`` (mean case Dice),
    ``summary.lesion_dice_by_volume["<1 cm3"].mean_dice`` (seeds without such lesions are left out),
    ``summary.lesion_detection.f1``; from its gates CSV the mean ``gate_rate``. Then mean and sample sd (ddof=1)
    over seeds.

    Returns:
        ``[{"method", "n_seeds", "seeds", "dice", "small_lesion_dice", "lesion_f1", "gate_rate", "sources"}]``
        where each metric is ``{"mean", "sd", "values"}`` (``sd`` None for one value; ``gate_rate`` None for a
        method without gates) and ``small_lesion_dice`` also holds ``counts`` (lesions < 1 cm³ per seed).

    Raises:
        ValueError: no row, a (method, seed) pair twice, gates given for some seeds of a method but not others.
        FileNotFoundError: a missing ``metrics.json`` or gates CSV.
    """
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
    for method, group in by_method.items():
        with_gates = [r.seed for r in group if r.gates_csv is not None]
        if with_gates and len(with_gates) != len(group):
            raise ValueError(
                f"method {method!r}: gates CSV given for seed(s) {with_gates} but not for "
                f"{[r.seed for r in group if r.gates_csv is None]}; give it for every seed or none"
            )
        dice, small, small_n, f1, gates, sources = [], [], [], [], [], []
        for r in group:
            metrics = load_metrics(r.eval_dir, what=f"method {method!r} seed {r.seed}")
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
                gates.append(float(np.mean([x.gate_rate for x in g])))
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
                "sources": sources,
            }
        )
    return out


def _ablation_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    head = ("method", "seeds", "Dice", "Dice < 1 cm³", "lesion F1", "gate activation rate")
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
            )
        )
    return md_table(head, rows)


def ablation_table(rows: Sequence[AblationEntry]) -> str:
    """A Markdown table: one row per method (order first seen), mean ± sd over its seeds.

    Columns: number of seeds; mean case Dice; Dice of lesions < 1 cm³; micro lesion F1; mean gate activation
    rate (:data:`DASH` for methods without gates). sd is the sample sd over seeds (ddof=1), :data:`DASH` for a single
    seed. The numbers: :func:`ablation_summary`.

    Raises:
        ValueError / FileNotFoundError: see :func:`ablation_summary`.
    """
    return _ablation_markdown(ablation_summary(rows))


def write_ablation(out_dir: str | os.PathLike[str], rows: Sequence[AblationEntry]) -> Path:
    """Write ``out_dir/ablation.md`` (the :func:`ablation_table` with its sources) and ``ablation.json``.

    ``ablation.json`` = ``{"format": "lesionsam-ablation", "version": 1, "sd": "...", "methods":
    ablation_summary(rows)}`` (strict JSON; a missing value is null).

    Returns:
        The path of ``ablation.md``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder expected, but {out} is a file")
    summary = ablation_summary(rows)
    payload = {
        "format": "lesionsam-ablation",
        "version": 1,
        "sd": "sample standard deviation over seeds (ddof=1); null for one seed",
        "methods": summary,
    }
    atomic_write_bytes(out / "ablation.json", (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())
    lines = [
        "# Ablation",
        "",
        _ablation_markdown(summary),
        "",
        "Mean ± sample sd (ddof=1) over seeds of each seed's value; "
        f"{DASH} where it does not exist. Per seed: Dice = `summary.dice.mean` (mean over cases), Dice < 1 cm³ = "
        f'`summary.lesion_dice_by_volume["{SMALL_BIN}"].mean_dice`, lesion F1 = `summary.lesion_detection.f1` '
        "(micro) of its `metrics.json`; gate activation rate = mean `gate_rate` of its gates CSV.",
        "",
        "## Sources",
        "",
    ]
    for m in summary:
        for src in m["sources"]:
            extra = f", `{rel_path(Path(src['gates']), out)}`" if "gates" in src else ""
            lines.append(f"- {m['method']} seed {src['seed']}: `{rel_path(Path(src['metrics']), out)}`{extra}")
    return atomic_write_bytes(out / "ablation.md", ("\n".join(lines) + "\n").encode("utf-8"))
