"""``lesionsam sweep``: variants scored on the validation split only, numbers from the evaluator's files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lesionsam.cli.main import main
from lesionsam.data.io import case_id, is_image_path
from lesionsam.data.splits import read_splits
from lesionsam.inference.gates import NO_LESION_CROPS, lesion_free_centres
from lesionsam.workflows.sweep import Variant, sweep


def test_quick_sweep_scores_the_validation_split_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LESIONSAM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sweep"
    variants = (
        Variant("base", "finetune"),
        Variant("sgp_budget", "sgp_sam", ("train.gate_cost=0.5",), "a gate budget"),
    )
    table = sweep(out, variants=variants, quick=True).read_text()
    assert not (out / "data" / "test").exists()  # no test case is written, read or scored
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in rows] == ["base", "sgp_budget"]
    for row in rows:
        run = out / row["name"]
        val_ids = set(read_splits(run / "splits.json")["val"])
        predicted = {case_id(p) for p in (run / "val_predictions").iterdir() if is_image_path(p)}
        assert predicted == val_ids and val_ids
        metrics = json.loads((run / "val_metrics" / "metrics.json").read_text())
        cases = [c for c in metrics["cases"] if c["gt_volume_ml"] > 0]
        assert row["dice_mean"] == pytest.approx(np.mean([c["dice"] for c in cases]))
        ratios = [c["pred_volume_ml"] / c["gt_volume_ml"] for c in cases]
        assert row["volume_ratio_median"] == pytest.approx(np.median(ratios))
        assert f"{row['dice_mean']:.3f}" in table and row["name"] in table
    assert rows[0]["gate_rate"] is None and 0.0 <= rows[1]["gate_rate"] <= 1.0
    gates = (out / "sgp_budget" / "val_gates.csv").read_text().splitlines()
    assert gates[0] == "case,lesion,volume_ml,size_bin,gate_rate" and len(gates) > 1
    by_bin: dict[str, list[float]] = {}
    for line in gates[1:]:  # the quick volumes (48³) leave no room for a lesion-free 64³ crop
        _, lesion, _, size_bin, rate = line.split(",")
        assert (size_bin == "no lesion") == (lesion == "0")
        by_bin.setdefault(size_bin, []).append(float(rate))
    assert rows[0]["gate_rates"] is None
    assert rows[1]["gate_rates"] == pytest.approx({k: np.mean(v) for k, v in by_bin.items()})
    # A finished variant is not trained again.
    stamp = (out / "base" / "best.pt").stat().st_mtime_ns
    sweep(out, variants=variants, quick=True)
    assert (out / "base" / "best.pt").stat().st_mtime_ns == stamp


def test_sweep_rejects_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct"):
        sweep(tmp_path, variants=(Variant("a", "finetune"), Variant("a", "sgp_sam")), quick=True)


def test_sweep_cli_stages(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--stage", "nope"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["sweep", "--stage", "gate", "--only", "sgp_cost03,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown gate variant(s) ['nope']" in err and "sgp_cost03_pool" in err


def test_lesion_free_centres_hold_no_lesion_voxel() -> None:
    label = np.zeros((40, 40, 40), np.uint8)
    label[5:35, 5:35, 5:35] = 1  # the organ
    label[8:11, 8:11, 8:11] = 2  # a lesion in one corner
    pre = SimpleNamespace(label=label, image=np.zeros(label.shape, np.float32), background=-1.0)
    crop = 16
    centres = lesion_free_centres(pre, 2, crop, np.random.default_rng(0))
    assert len(centres) == NO_LESION_CROPS
    for c in centres.astype(int):
        lo = np.maximum(c - crop // 2, 0)
        window = label[lo[0] : c[0] + crop // 2, lo[1] : c[1] + crop // 2, lo[2] : c[2] + crop // 2]
        assert not (window == 2).any() and label[tuple(c)] == 1
    # No room for a lesion-free crop: none.
    label[20:23, 20:23, 20:23] = 2
    label[30:33, 30:33, 30:33] = 2
    assert len(lesion_free_centres(pre, 2, 40, np.random.default_rng(0))) == 0


def test_scale_variants_share_one_training_and_are_chosen_by_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LESIONSAM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sweep"
    variants = (
        Variant("plain", "finetune", ("data.zoom.fraction=0.5",), zoom="off"),
        Variant("zoomed", "finetune", note="zoomed", zoom="auto,fill=0.6,max=3", trained="plain"),
    )
    table = sweep(out, variants=variants, quick=True).read_text()
    rows = json.loads((out / "sweep.json").read_text())
    assert not (out / "zoomed" / "train_log.csv").exists()  # scored with the first variant's model
    assert (out / "zoomed" / "val_metrics" / "metrics.json").is_file()
    for row in rows:
        coarse = json.loads((out / row["name"] / "val_metrics" / "metrics.json").read_text())["summary"]
        small = coarse["lesion_dice_by_volume_coarse"]["<1 cm3"]
        assert row["small_dice"] == small["mean_dice"] and row["small_found"] == small["recall"]
    assert rows[1]["overrides"] == ["data.zoom.fraction=0.5", "--zoom auto,fill=0.6,max=3"]
    assert "< 1 cm³ (found)" in table and "--zoom auto,fill=0.6,max=3" in table
    with pytest.raises(ValueError, match="not an earlier variant"):
        sweep(tmp_path / "bad", variants=(Variant("z", "finetune", trained="plain"),), quick=True)
