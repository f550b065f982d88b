"""The ablation's click-curve section: per-seed ``clicks.json`` summaries averaged over seeds (hand-computed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lesionsam.evaluation.ablation_clicks import click_markdown, click_summary


def _clicks(path: Path, dice: list[float], auc: float, noc80: float, failed80: int, lesions: int = 2) -> Path:
    summary = {
        "n_lesions": lesions,
        "n_clicks": len(dice),
        "dice_mean": dice,
        "dice_sd": [0.0] * len(dice),
        "auc_mean": auc,
        "auc_sd": 0.0,
        "noc80": {"mean": noc80, "failed": failed80},
        "noc90": {"mean": 3.0, "failed": lesions},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": "lesionsam-clicks", "version": 1, "summary": summary}))
    return path


def test_seeds_are_averaged_per_click_and_missing_runs_are_named(tmp_path: Path) -> None:
    a0 = _clicks(tmp_path / "a0.json", [0.5, 0.7, 0.9], auc=0.7, noc80=2.0, failed80=0)
    a1 = _clicks(tmp_path / "a1.json", [0.3, 0.5, 0.7], auc=0.5, noc80=3.0, failed80=1)
    b0 = _clicks(tmp_path / "b0.json", [0.6, 0.6, 0.6], auc=0.6, noc80=3.0, failed80=2)
    summary = click_summary([("a", 0, a0), ("a", 1, a1), ("b", 0, b0), ("b", 1, None)])
    a, b = summary
    assert a["seeds"] == [0, 1] and a["missing_seeds"] == [] and a["n_clicks"] == 3
    assert [d["mean"] for d in a["dice_after"]] == pytest.approx([0.4, 0.6, 0.8])
    # sample sd of two values x, y = |x - y| / sqrt(2)
    assert [d["sd"] for d in a["dice_after"]] == pytest.approx([0.2 / 2**0.5] * 3)
    assert a["auc"]["mean"] == pytest.approx(0.6) and a["noc80"]["mean"] == pytest.approx(2.5)
    assert a["noc80_failed"] == [0, 1] and a["n_lesions"] == [2, 2]
    assert b["seeds"] == [0] and b["missing_seeds"] == [1] and b["auc"]["sd"] is None
    md = click_markdown(summary)
    assert md is not None
    row_a = next(line for line in md.splitlines() if line.startswith("| a |"))
    assert "0.400 ± 0.141" in row_a and "0.800 ± 0.141" in row_a and "2.50 ± 0.71 (not reached: 0/2, 1/2)" in row_a
    assert "| 2 | 0.600 ± 0.141 | 0.600 ± —" in md
    assert "No click curves (or no lesion) for: b seed(s) 1." in md


def test_no_curves_gives_no_section_and_unequal_lengths_are_refused(tmp_path: Path) -> None:
    assert click_markdown(click_summary([("a", 0, None)])) is None
    x = _clicks(tmp_path / "x.json", [0.5, 0.6], auc=0.55, noc80=2.0, failed80=1)
    y = _clicks(tmp_path / "y.json", [0.5, 0.6, 0.7], auc=0.6, noc80=3.0, failed80=1)
    with pytest.raises(ValueError, match="different numbers of clicks"):
        click_summary([("a", 0, x), ("a", 1, y)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a lesionsam clicks.json"):
        click_summary([("a", 0, bad)])
