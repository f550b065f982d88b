"""The ablation report's section on what the numbers depend on, from the runs' ``provenance.json`` and repeat checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lesionsam.evaluation.provenance import provenance_section, reproducibility
from lesionsam.training.provenance import write_provenance


def _record(**changes: Any) -> dict[str, Any]:
    base = {
        "format": "lesionsam-provenance",
        "version": 1,
        "lesionsam": "0.1.0",
        "torch": "2.3.0",
        "device": "cpu",
        "threads": 1,
        "seed": 0,
        "initial_weights": {"source": "/cache/last.pt", "sha256": "c" * 64},
        "data": {"sha256": "d" * 64, "files": 9, "bytes": 2_000_000, "contents": "every file in full", "splits": "s"},
        "written": "2025-01-01T00:00:00",
    }
    return {**base, **changes}


def _check(seed: int, identical: bool, recorded: dict[str, Any], **differ: list[Any]) -> dict[str, Any]:
    now = {**recorded, **{k: v[1] for k, v in differ.items()}}
    change = None if identical else -0.01
    metrics = {k: {"recorded": 0.5, "repeat": 0.5, "change": 0.0 if identical else change} for k in ("dice",)}
    metrics |= {k: {"recorded": None, "repeat": None, "change": None} for k in ("lesion_case_dice", "lesion_f1")}
    metrics["small_lesion_dice"] = {"recorded": 0.3, "repeat": 0.3, "change": 0.0}
    return {
        "format": "lesionsam-repeat-check",
        "method": "finetune",
        "seed": seed,
        "bit_identical": identical,
        "checkpoints": {},
        "settings_differ": differ,
        "recorded": recorded,
        "now": now,
        "metrics": metrics,
    }


def test_settings_equal_across_runs_are_printed_once_and_the_others_per_run(tmp_path: Path) -> None:
    write_provenance(tmp_path / "finetune_seed0", _record(seed=0))
    write_provenance(tmp_path / "finetune_seed1", _record(seed=1, threads=2))
    (tmp_path / "sgp_sam_seed0").mkdir()  # made before provenance.json
    runs = [(n, tmp_path / n) for n in ("finetune_seed0", "finetune_seed1", "sgp_sam_seed0")]
    body, data = provenance_section(runs)
    assert "- torch version: 2.3.0" in body and "- device: cpu" in body
    assert f"- initial-weights hash: `/cache/last.pt` (sha256 {'c' * 12})" in body
    assert f"- data hash: sha256 {'d' * 12} over 9 files (2.0 MB, every file in full)" in body
    assert "| run | threads | seed |" in body
    assert "| finetune_seed1 | 2 | 1 |" in body and "- threads:" not in body
    assert "different thread counts or devices" in body
    assert "Not recorded (made before lesionsam wrote provenance.json): sgp_sam_seed0." in body
    assert data["per_run"]["finetune_seed1"] == {"threads": 2, "seed": 1} and data["not_recorded"] == ["sgp_sam_seed0"]
    assert "Bit-identity not checked by a re-run" in body


def test_the_report_says_bit_identical_only_at_the_same_thread_count_when_the_checks_show_it(tmp_path: Path) -> None:
    rec = _record()
    write_provenance(tmp_path / "finetune_seed0", rec)
    same = _check(0, True, rec)
    other = _check(0, False, rec, threads=[1, 2])
    body, data = provenance_section([("finetune_seed0", tmp_path / "finetune_seed0")], [same, other])
    assert "**Bit-identical only at the same thread count and device" in body
    assert "| finetune seed 0 | cpu, 2 | differ | threads 1 → 2 | -0.0100 |" in body
    assert len(data["repeat_checks"]) == 2 and "recorded" not in data["repeat_checks"][0]
    # A check of the run as it was before it was made again is left out.
    stale = _check(0, False, {**rec, "written": "2024-01-01T00:00:00"})
    body, data = provenance_section([("finetune_seed0", tmp_path / "finetune_seed0")], [same, stale])
    assert len(data["repeat_checks"]) == 1 and "another thread count or device was not checked" in body


def test_every_reading_of_the_checks_is_stated() -> None:
    rec = _record()
    assert reproducibility([_check(0, False, rec)]).startswith("Not bit-identical even at the same settings")
    assert reproducibility([_check(0, True, rec), _check(0, True, rec, threads=[1, 2])]).startswith(
        "Bit-identical at the same settings (1 repeat check(s)) and in 1 of 1"
    )
    data_changed = _check(0, False, rec, data=["d" * 64, "e" * 64])
    assert reproducibility([data_changed]).startswith("No repeat check ran at the recorded settings")
    assert reproducibility([_check(0, True, rec), data_changed]).startswith("Bit-identical at the same thread count")
