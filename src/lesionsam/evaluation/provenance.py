"""What an ablation's numbers depend on, in its report, and the repeat check of one run.

:func:`provenance_section` turns the runs' ``provenance.json`` (:mod:`lesionsam.training.provenance`) into a section
of ``ablation.md``: each setting once when every run recorded the same, else per run; and what the repeat checks
(``lesionsam ablate --repeat-check``) in ``<out>/repeat_check/`` show about bit-identity. :func:`repeat_check_result`
compares a run with its re-training: every weight of ``best.pt`` and ``last.pt`` (``torch.equal``), the recorded
settings, and the test metrics of the ablation table (mean Dice, Dice of the cases with a lesion, Dice of lesions
< 1 cm³, lesion F1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.evaluation.findings import lesion_case_dice
from lesionsam.evaluation.report_io import DASH, fmt_value, is_num, load_metrics, md_table, small_bin
from lesionsam.training.provenance import (
    SETTINGS,
    describe,
    differences,
    differing_weights,
    read_provenance,
    setting,
    short,
)

#: Format tag and version of a repeat check's JSON.
REPEAT_FORMAT = ("lesionsam-repeat-check", 1)
#: The test metrics a repeat check compares (key → name), as in the ablation table.
METRICS: dict[str, str] = {
    "dice": "mean Dice",
    "lesion_case_dice": "Dice, cases with a lesion",
    "small_lesion_dice": "Dice < 1 cm³",
    "lesion_f1": "lesion F1",
}
#: Settings that may differ between two runs of one config on one installation (machine and threading).
MACHINE = ("device", "threads", "omp_num_threads", "world_size", "cuda", "cudnn")
CHECKPOINTS = ("best.pt", "last.pt")


def run_metrics(eval_dir: str | os.PathLike[str]) -> dict[str, float | None]:
    """The :data:`METRICS` of one run's ``metrics.json`` (None where one does not exist, e.g. no lesion < 1 cm³)."""
    metrics = load_metrics(eval_dir)
    s = metrics["summary"]
    per_case = lesion_case_dice(metrics)
    small = small_bin(s, Path(eval_dir) / "metrics.json").get("mean_dice")
    values = {
        "dice": s["dice"]["mean"],
        "lesion_case_dice": float(np.mean(list(per_case.values()))) if per_case else None,
        "small_lesion_dice": small,
        "lesion_f1": s["lesion_detection"]["f1"],
    }
    return {k: float(v) if is_num(v) else None for k, v in values.items()}


def repeat_check_result(method: str, seed: int, run_dir: Path, repeat_dir: Path) -> dict[str, Any]:
    """Compare run ``run_dir`` with its re-training ``repeat_dir`` (both with ``best.pt``, ``last.pt``,
    ``provenance.json`` and ``test_metrics/metrics.json``).

    Returns:
        ``{"format", "version", "method", "seed", "run", "repeat", "bit_identical", "checkpoints": {name:
        {"equal", "differing_tensors"}}, "settings_differ": {key: [recorded, now]}, "recorded", "now", "metrics":
        {key: {"recorded", "repeat", "change"}}}``; ``recorded`` is None for a run made before ``provenance.json``.
    """
    checkpoints = {}
    for name in CHECKPOINTS:
        diff = differing_weights(run_dir / name, repeat_dir / name)
        checkpoints[name] = {"equal": not diff, "differing_tensors": len(diff)}
    recorded, now = read_provenance(run_dir), read_provenance(repeat_dir)
    assert now is not None, f"{repeat_dir} has no provenance.json: it was trained by this lesionsam"
    diffs = differences(recorded, now) if recorded is not None else {}
    old, new = run_metrics(run_dir / "test_metrics"), run_metrics(repeat_dir / "test_metrics")
    metrics = {k: {"recorded": old[k], "repeat": new[k], "change": _change(old[k], new[k])} for k in METRICS}
    return {
        "format": REPEAT_FORMAT[0],
        "version": REPEAT_FORMAT[1],
        "method": method,
        "seed": seed,
        "run": str(run_dir),
        "repeat": str(repeat_dir),
        "bit_identical": all(c["equal"] for c in checkpoints.values()),
        "checkpoints": checkpoints,
        "settings_differ": {k: [a, b] for k, (a, b) in diffs.items()},
        "recorded": recorded,
        "now": now,
        "metrics": metrics,
    }


def _change(a: float | None, b: float | None) -> float | None:
    return b - a if a is not None and b is not None else None


def repeat_check_lines(result: Mapping[str, Any]) -> list[str]:
    """The verdict of :func:`repeat_check_result` in words, one line each."""
    name = f"{result['method']} seed {result['seed']}"
    now = result["now"]
    where = f"{now['device']}, {now['threads']} thread(s)"
    differ = {k: tuple(v) for k, v in result["settings_differ"].items()}
    if result["recorded"] is None:
        settings = "the run recorded no provenance.json (made before lesionsam recorded one): its settings are unknown"
    elif differ:
        settings = "recorded settings that differ now: " + describe(differ)
    else:
        settings = "every recorded setting is the same now"
    if result["bit_identical"]:
        return [f"{name} ({where}): bit-identical: every weight of best.pt and last.pt is equal; {settings}"]
    counts = ", ".join(f"{n} {c['differing_tensors']} tensor(s) differ" for n, c in result["checkpoints"].items())
    moves = ", ".join(
        f"{METRICS[k]} {fmt_value(m['recorded'], '.4f')} → {fmt_value(m['repeat'], '.4f')} ({_signed(m['change'])})"
        for k, m in result["metrics"].items()
    )
    return [f"{name} ({where}): NOT bit-identical ({counts}); {settings}", f"  test metrics: {moves}"]


def _signed(x: float | None) -> str:
    return f"{x:+.4f}" if x is not None else DASH


def read_repeat_checks(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every repeat check's JSON in ``folder`` (``<out>/repeat_check``), by file name; none when it does not exist."""
    out = []
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("format") == REPEAT_FORMAT[0]:
            out.append(data)
    return out


def reproducibility(checks: Sequence[Mapping[str, Any]]) -> str:
    """One sentence: what the repeat checks show about bit-identity (see the module docstring)."""
    if not checks:
        return (
            "Bit-identity not checked by a re-run: `lesionsam ablate --repeat-check METHOD:SEED` (same `--out`) "
            "retrains one run from its recorded settings and compares every weight."
        )
    same = [c for c in checks if c["recorded"] is not None and not c["settings_differ"]]
    machine = [c for c in checks if c["settings_differ"] and set(c["settings_differ"]) <= set(MACHINE)]
    if same and not all(c["bit_identical"] for c in same):
        bad = sum(not c["bit_identical"] for c in same)
        return f"Not bit-identical even at the same settings: {bad} of {len(same)} repeat check(s) gave other weights."
    if same and machine and not any(c["bit_identical"] for c in machine):
        return (
            f"Bit-identical only at the same thread count and device: {len(same)} repeat check(s) at the recorded "
            f"settings reproduced every weight, {len(machine)} at another thread count or device did not."
        )
    if same and machine:
        ok = sum(c["bit_identical"] for c in machine)
        return (
            f"Bit-identical at the same settings ({len(same)} repeat check(s)) and in {ok} of {len(machine)} at "
            "another thread count or device."
        )
    if same:
        return (
            f"Bit-identical at the same thread count and device ({len(same)} repeat check(s)); another thread count "
            "or device was not checked."
        )
    return "No repeat check ran at the recorded settings; see the table for what differed and what it changed."


def _checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for c in checks:
        now = c["now"]
        differ = {k: tuple(v) for k, v in c["settings_differ"].items()}
        rows.append(
            (
                f"{c['method']} seed {c['seed']}",
                f"{now['device']}, {now['threads']}",
                "bit-identical" if c["bit_identical"] else "differ",
                describe(differ) if differ else ("not recorded" if c["recorded"] is None else "none"),
                *(_signed(c["metrics"][k]["change"]) for k in METRICS),
            )
        )
    head = ("run", "device, threads", "weights", "settings that differ", *(f"Δ {v}" for v in METRICS.values()))
    return md_table(head, rows)


def provenance_section(
    runs: Sequence[tuple[str, Path]], checks: Sequence[Mapping[str, Any]] = ()
) -> tuple[str, dict[str, Any]]:
    """The report section on what the numbers depend on, and its JSON.

    Args:
        runs: (name, run folder) of every run of the ablation; each folder's ``provenance.json`` is read (a run made
            before it was recorded is listed as such).
        checks: the repeat checks (:func:`read_repeat_checks`); those of other runs, or of a run since made again,
            are left out.

    Returns:
        (Markdown body, ``{"same": {key: value}, "per_run": {name: {key: value}}, "not_recorded": [names],
        "reproducibility": sentence, "repeat_checks": checks}``).
    """
    records = {name: read_provenance(folder) for name, folder in runs}
    checks = [c for c in checks if _current(c, records)]
    known = {n: r for n, r in records.items() if r is not None}
    missing = [n for n, r in records.items() if r is None]
    keys = [k for k in SETTINGS if any(k in r for r in known.values())]
    same = {k: next(iter(known.values())).get(k) for k in keys if len({_key(r, k) for r in known.values()}) == 1}
    varying = [k for k in keys if k not in same]
    lines = ["Recorded by each run in its `provenance.json` before training."]
    if known:
        lines += ["", "Equal for every run" + (f" ({len(known)})" if len(known) > 1 else "") + ":", ""]
        lines += [f"- {SETTINGS[k]}: {_words(k, v)}" for k, v in same.items()]
        if varying:
            rows = [(n, *(short(setting(r, k)) for k in varying)) for n, r in known.items()]
            lines += ["", md_table(("run", *(SETTINGS[k] for k in varying)), rows)]
            if set(varying) & {"threads", "device", "world_size"}:
                lines += [
                    "",
                    "The runs were made at different thread counts or devices: re-run each at its own setting to "
                    "reproduce it.",
                ]
    if missing:
        lines += ["", f"Not recorded (made before lesionsam wrote provenance.json): {', '.join(missing)}."]
    sentence = reproducibility(checks)
    lines += ["", f"**{sentence}**"]
    if checks:
        lines += ["", _checks_table(checks), "", "Δ: repeat minus recorded run, on the same test cases."]
    data = {
        "same": same,
        "per_run": {n: {k: r.get(k) for k in varying} for n, r in known.items()},
        "not_recorded": missing,
        "reproducibility": sentence,
        "repeat_checks": [{k: v for k, v in c.items() if k not in ("recorded", "now")} for c in checks],
    }
    return "\n".join(lines), data


def _current(check: Mapping[str, Any], records: Mapping[str, Mapping[str, Any] | None]) -> bool:
    """Whether ``check`` re-made a run of this ablation as it is now (not one since deleted and made again)."""
    name = f"{check['method']}_seed{check['seed']}"
    if name not in records:
        return False
    now, then = records[name], check.get("recorded")
    if now is None or then is None:
        return now is None and then is None
    return now.get("written") == then.get("written")


def _key(record: Mapping[str, Any], key: str) -> str:
    return json.dumps(record.get(key), sort_keys=True)


def _words(key: str, value: Any) -> str:
    if key == "initial_weights" and isinstance(value, Mapping):
        return f"`{value.get('source')}` (sha256 {short(value.get('sha256'))})"
    if key == "data" and isinstance(value, Mapping):
        mb = float(value.get("bytes", 0)) / 1e6
        return (
            f"sha256 {short(value.get('sha256'))} over {value.get('files')} files ({mb:.1f} MB, "
            f"{value.get('contents')}) and the split ({value.get('splits')})"
        )
    return short(value)
