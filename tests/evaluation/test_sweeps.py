"""Sweep rows, their table and the one-line summaries a report quotes (with the numbers of every reading tried)."""

from __future__ import annotations

import json
from pathlib import Path

from lesionsam.configs import packaged_sweep
from lesionsam.evaluation.sweeps import SweepRow, best_row, read_sweep_rows, sweep_markdown, sweep_summary


def _row(name: str, dice: float, gates: dict[str, float] | None, note: str = "") -> SweepRow:
    rate = None if gates is None else sum(gates.values()) / len(gates)
    return SweepRow(name, "sgp_sam", ("train.gate_cost=0.1",), note, 5, dice, 0.2, 0.5, 0.9, rate, 1.5, gates)


def test_table_bolds_the_best_and_summary_names_every_reading(tmp_path: Path) -> None:
    rows = [
        _row("free", 0.517, {"<1 cm3": 1.0, "no lesion": 1.0}, "no budget"),
        _row("cost", 0.380, {"<1 cm3": 0.0, "no lesion": 0.0}, "cost 0.1"),
        _row("mixed", 0.450, {"<1 cm3": 1.0, "no lesion": 0.0}, "a gate that decides"),
    ]
    table = sweep_markdown(rows, title="gates")
    assert "**0.517 ± 0.200**" in table and "0.380 ± 0.200 |" in table
    line = sweep_summary(rows, what="Gate budgets")
    assert line.startswith("Gate budgets tried on the validation split (5 cases")
    for text in ("no budget: Dice 0.517", "gates open 1.00 on every crop", "cost 0.1: Dice 0.380", "0.90× volume"):
        assert text in line
    assert "a gate that decides: Dice 0.450, 0.90× volume, gates open 0.50 (by crop:" in line
    assert line.endswith("Chosen by validation Dice: no budget.")
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps([r.__dict__ for r in rows]))
    assert read_sweep_rows(path) == rows


def test_the_packaged_sweeps_that_chose_the_defaults_are_readable() -> None:
    for stage in ("loss", "gate"):
        path = packaged_sweep(stage)
        assert path is not None, f"configs/sweeps/{stage}.json is missing"
        rows = read_sweep_rows(path)
        assert rows and all(r.val_cases > 0 for r in rows)
    assert all(r.gate_rate is not None for r in read_sweep_rows(packaged_sweep("gate")))


def test_the_packaged_scale_sweep_is_chosen_by_size_and_names_its_rule() -> None:
    rows = read_sweep_rows(packaged_sweep("scale"))
    assert all(r.size_score is not None for r in rows)
    chosen = rows[best_row(rows)]
    assert chosen.size_score == max(r.size_score for r in rows)  # type: ignore[type-var]
    line = sweep_summary(rows, what="Small-lesion settings")
    assert line.endswith(f"Chosen by the mean of the lesion Dice < 1 cm³ and ≥ 1 cm³: {chosen.note}.")
    table = sweep_markdown(rows, title="scale")
    assert f"**{chosen.small_dice:.3f}" in table and "< 1 cm³ (found)" in table
