"""``lesionsam sweep``: choose the Zoom Loss's and SGP-SAM's defaults on the validation split, never the test set.

Each :class:`Variant` (a method plus run-config overrides, e.g. a reading of the voxel-balanced focal term or a
gate budget) is transferred from the demo's anatomy-pretrained tiny model under the demo's budget and recipe
(:class:`~lesionsam.workflows.demo.DemoSettings`), then scored on the **selection set** — 48 synthetic cases drawn
with another seed than the training and test sets (``<out>/data/selection``), enough to resolve about 0.03 Dice
(issue 22); the quick recipe, which has none, uses the validation split the trainer held out (``splits.json`` in
its run folder) — with the demo's test protocol: one centre click per tumour, whole-volume prediction,
``lesionsam evaluate``. The trainer still picks ``best.pt`` on its own validation split. The demo's test cases are
not written, read or scored by a sweep.

Writes ``sweep.md`` (the table the README quotes) and ``sweep.json``; every variant keeps its run folder
(``<out>/<variant>/``: checkpoints, training log, validation predictions and metrics). A variant whose
``sweep_row.json`` exists is not trained again, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.data.io import image_suffix
from lesionsam.data.layouts import load_msd_cases
from lesionsam.data.splits import read_splits
from lesionsam.evaluation.sweeps import SweepRow, sweep_markdown
from lesionsam.inference.zoom import ZoomPolicy, parse_zoom
from lesionsam.utils.console import say
from lesionsam.utils.dataclass_io import atomic_write_bytes
from lesionsam.workflows.demo import (
    DemoSettings,
    evaluate_method,
    prepare_data,
    prepare_selection,
    pretrain,
    transfer,
)


@dataclass(frozen=True)
class Variant:
    """One configuration of a sweep: a name (its run folder), a method and ``key=value`` run-config overrides."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()
    note: str = ""
    zoom: str = "off"
    trained: str | None = None


def _scale(name: str, zoom: str, note: str, trained: str | None = None, overrides: tuple[str, ...] = ()) -> Variant:
    return Variant(name, "sgp_sam", overrides, note, zoom=zoom, trained=trained)


#: Small lesions (issue 23): zoom-in at inference (``--zoom``: off, size-adaptive with its fill and largest factor,
#: measured twice, or one fixed factor), multi-scale training (``data.zoom``). A variant with ``trained`` scores the
#: model of that earlier variant with another zoom (one training, several inference settings). Chosen by the mean of
#: the lesion Dice of tumours < 1 cm³ and ≥ 1 cm³ (small and large count alike).
MS50 = ("data.zoom.fraction=0.5",)
MS100 = ("data.zoom.fraction=1.0",)
FULL_RES = ("model.full_res_channels=8",)
SCALE_VARIANTS: tuple[Variant, ...] = (
    _scale("plain_off", "off", "model's spacing, no zoom (today)"),
    _scale("plain_x2", "2", "every lesion zoomed 2x", "plain_off"),
    _scale("plain_x3", "3", "every lesion zoomed 3x", "plain_off"),
    _scale("plain_fill40", "auto,fill=0.4,max=3", "size-adaptive, fill 0.4, at most 3x", "plain_off"),
    _scale("plain_fill60", "auto,fill=0.6,max=3", "size-adaptive, fill 0.6, at most 3x", "plain_off"),
    _scale("plain_fill60_max4", "auto,fill=0.6,max=4", "size-adaptive, fill 0.6, at most 4x", "plain_off"),
    _scale("plain_fill70", "auto,fill=0.7,max=3", "size-adaptive, fill 0.7, at most 3x", "plain_off"),
    _scale("plain_fill60_2p", "auto,fill=0.6,max=3,passes=2", "size-adaptive, fill 0.6, measured twice", "plain_off"),
    _scale("ms50_off", "off", "half the crops zoomed in training, no zoom", overrides=MS50),
    _scale("ms50_fill60", "auto,fill=0.6,max=3", "half the crops zoomed in training, fill 0.6", "ms50_off"),
    _scale("ms50_fill60_2p", "auto,fill=0.6,max=3,passes=2", "half zoomed in training, measured twice", "ms50_off"),
    _scale("ms100_fill60", "auto,fill=0.6,max=3", "every crop zoomed in training, fill 0.6", overrides=MS100),
    _scale("ms100_fill60_2p", "auto,fill=0.6,max=3,passes=2", "every crop zoomed, measured twice", "ms100_fill60"),
    _scale("fullres_fill60", "auto,fill=0.6,max=3", "full-resolution decoder path, fill 0.6", overrides=FULL_RES),
    _scale("fullres_off", "off", "full-resolution decoder path, no zoom", "fullres_fill60"),
    _scale("ms50_fullres_fill60", "auto,fill=0.6,max=3", "half zoomed in training + path", overrides=MS50 + FULL_RES),
    _scale(
        "ms50_fullres_hires_fill60",
        "auto,fill=0.6,max=3",
        "half zoomed + path + SGPM on the path's features",
        overrides=(*MS50, *FULL_RES, "model.options.high_res=true"),
    ),
)


#: The readings of "voxel-balanced focal" (with the Zoom Loss's Dice term, lambda 1, gamma 2) compared for the
#: ``finetune_zoom`` / ``sgp_sam`` default (the DiceCE baseline is in ``lesionsam ablate``).
LOSS_VARIANTS: tuple[Variant, ...] = (
    Variant("zoom_full", "finetune_zoom", ("train.loss_options={balance: full}",), "full balance (as published)"),
    Variant(
        "zoom_full_la",
        "finetune_zoom",
        ("train.loss_options={balance: full}", "train.logit_adjustment=1.0"),
        "full balance, prior shift removed at inference (tau 1)",
    ),
    Variant(
        "zoom_full_la50",
        "finetune_zoom",
        ("train.loss_options={balance: full}", "train.logit_adjustment=0.5"),
        "full balance, half the prior shift removed at inference (tau 0.5)",
    ),
    Variant(
        "zoom_partial",
        "finetune_zoom",
        ("train.loss_options={balance: partial, beta: 0.5}",),
        "partial balance, beta 0.5",
    ),
    Variant("zoom_alpha", "finetune_zoom", ("train.loss_options={balance: alpha, alpha: 0.25}",), "alpha 0.25"),
    Variant("zoom_zoomed", "finetune_zoom", ("train.loss_options={balance: zoomed, margin: 4}",), "zoomed box"),
    Variant("zoom_none", "finetune_zoom", ("train.loss_options={balance: none}",), "plain focal"),
)


#: SGP-SAM's gate budget (with the Zoom Loss's default reading, chosen by the loss stage): none, a linear compute
#: cost, and target activation rates.
GATE_VARIANTS: tuple[Variant, ...] = (
    Variant("sgp_free", "sgp_sam", note="no budget: nothing rewards a closed gate"),
    Variant("sgp_cost", "sgp_sam", ("train.options.gate_cost=0.1",), "linear compute cost 0.1 x mean keep probability"),
    Variant(
        "sgp_target50",
        "sgp_sam",
        ("train.options.gate_cost=1.0", "train.options.gate_target=0.5"),
        "target activation rate 0.5",
    ),
    Variant(
        "sgp_target50_pool",
        "sgp_sam",
        ("train.options.gate_cost=1.0", "train.options.gate_target=0.5", "model.options={gate_pool: [mean, max, std]}"),
        "target rate 0.5, gate sees mean, max and sd of the tokens",
    ),
    # A small linear cost: a gate stays open only where its straight-through utility <dL/dtokens, msff(tokens)>
    # outweighs the cost, so between 0 (all open) and 0.1 (all closed) the decision can depend on the crop.
    Variant("sgp_cost001", "sgp_sam", ("train.options.gate_cost=0.001",), "linear compute cost 0.001"),
    Variant("sgp_cost003", "sgp_sam", ("train.options.gate_cost=0.003",), "linear compute cost 0.003"),
    Variant("sgp_cost01", "sgp_sam", ("train.options.gate_cost=0.01",), "linear compute cost 0.01"),
    Variant("sgp_cost03", "sgp_sam", ("train.options.gate_cost=0.03",), "linear compute cost 0.03"),
    Variant(
        "sgp_cost03_pool",
        "sgp_sam",
        ("train.options.gate_cost=0.03", "model.options={gate_pool: [mean, max, std]}"),
        "linear cost 0.03, gate sees mean, max and sd of the tokens",
    ),
)

#: ``lesionsam sweep --stage NAME``: the variants and the table's title.
STAGES: dict[str, tuple[tuple[Variant, ...], str]] = {
    "loss": (LOSS_VARIANTS, "Zoom Loss readings"),
    "gate": (GATE_VARIANTS, "SGP-SAM gate budgets"),
    "scale": (SCALE_VARIANTS, "small lesions: zoom-in and multi-scale training"),
}


def validation_folder(train_root: Path, run_dir: Path) -> Path:
    """``run_dir/validation`` holding links (``imagesTr``, ``labelsTr``) to the validation cases of the run's
    ``splits.json``; returns it. Links, not copies: nothing is written into the data set."""
    ids = set(read_splits(run_dir / "splits.json").get("val", []))
    if not ids:
        raise ValueError(f"{run_dir / 'splits.json'} has no validation case: set data.val_fraction > 0")
    folder = run_dir / "validation"
    for case in load_msd_cases(train_root):
        if case.case_id not in ids:
            continue
        assert case.label is not None
        for sub, src in (("imagesTr", case.images[0]), ("labelsTr", case.label)):
            link = folder / sub / f"{case.case_id}{image_suffix(src)}"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(src.resolve())
    return folder


def score_validation(
    checkpoint: Path, folder: Path, run_dir: Path, *, zoom: ZoomPolicy | None = None
) -> dict[str, Any]:
    """One centre click per lesion on every case of ``folder`` (the selection set, or :func:`validation_folder`;
    the demo's test protocol; ``zoom``: zoom-in for small lesions); Dice over the cases, the median
    predicted/ground-truth volume ratio, the lesion Dice of tumours < 1 cm³ (and the share found) and ≥ 1 cm³, and
    (SGP-SAM) the mean gate activation over its gate crops (lesions and lesion-free crops)."""
    _, eval_dir, gates_csv = evaluate_method(checkpoint, folder, run_dir, split="val", zoom=zoom)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    coarse = metrics["summary"].get("lesion_dice_by_volume_coarse") or {}
    small, large = coarse.get("<1 cm3") or {}, coarse.get(">=1 cm3") or {}
    cases = [c for c in metrics["cases"] if c["gt_volume_ml"] > 0]
    dice = [c["dice"] for c in cases]
    ratios = [c["pred_volume_ml"] / c["gt_volume_ml"] for c in cases]
    gate_rate, by_bin = None, None
    if gates_csv is not None:
        rows = list(csv.DictReader(gates_csv.open(newline="")))
        gate_rate = float(np.mean([float(r["gate_rate"]) for r in rows])) if rows else None
        by_bin = {}
        for r in rows:
            by_bin.setdefault(r["size_bin"], []).append(float(r["gate_rate"]))
        by_bin = {k: float(np.mean(v)) for k, v in by_bin.items()}
    return {
        "val_cases": len(dice),
        "dice_mean": float(np.mean(dice)) if dice else float("nan"),
        "dice_sd": float(np.std(dice, ddof=1)) if len(dice) > 1 else float("nan"),
        "volume_ratio_median": float(np.median(ratios)) if ratios else float("nan"),
        "gate_rate": gate_rate,
        "gate_rates": by_bin,
        "small_dice": small.get("mean_dice"),
        "small_found": small.get("recall"),
        "large_dice": large.get("mean_dice"),
    }


def best_crop_dice(train_log: Path) -> float:
    """The best ``val_dice`` of a training log (NaN when it has none)."""
    with open(train_log, newline="") as fh:
        values = [float(r["val_dice"]) for r in csv.DictReader(fh) if r.get("val_dice") not in (None, "")]
    return max(values) if values else float("nan")


def sweep(
    out: str | os.PathLike[str] = "runs/sweep",
    *,
    variants: Sequence[Variant] = LOSS_VARIANTS,
    seed: int = 0,
    quick: bool = False,
    progress: bool = False,
    title: str = "Zoom Loss readings",
) -> Path:
    """Train and score every variant on the validation split (see the module docstring); returns ``sweep.md``."""
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep variant names must be distinct, got {names}")
    s = DemoSettings.quick() if quick else DemoSettings.full()
    root = Path(out)
    where = f"{s.selection_cases} selection cases" if s.selection_cases else "the validation split"
    trainings = sum(1 for v in variants if not v.trained)  # the others score an earlier variant's model
    say(
        f"lesionsam sweep: {len(variants)} variants ({trainings} trainings) scored on {where}, about "
        f"{2 + s.minutes_per_transfer * trainings + 0.5 * (len(variants) - trainings):.0f} min on a 2-core CPU"
    )
    train_root, _ = prepare_data(root, s, seed=0, test=False)  # no test case is written
    selection = prepare_selection(root, s, seed=0) if s.selection_cases else None
    pretrained = pretrain(train_root, s, seed=0, progress=progress)
    rows = []
    for v in variants:
        run_dir = root / v.name
        done = run_dir / "sweep_row.json"
        if done.is_file():
            rows.append(SweepRow(**{**json.loads(done.read_text()), "overrides": _settings(variants, v)}))
            say(f"  {v.name}: already done ({done})")
            continue
        t0 = time.perf_counter()
        trained_dir = root / v.trained if v.trained else run_dir
        if v.trained:  # another variant's model, scored with this variant's zoom
            if v.trained not in names[: names.index(v.name)]:
                raise ValueError(f"sweep variant {v.name}: its model {v.trained!r} is not an earlier variant")
            best = trained_dir / "best.pt"
        else:
            best = transfer(
                v.method,
                train_root,
                pretrained,
                run_dir,
                s,
                seed=seed,
                progress=progress,
                overrides=v.overrides,
                method_settings=False,
            )
        crop_dice = best_crop_dice(trained_dir / "train_log.csv")
        folder = selection if selection is not None else validation_folder(train_root, trained_dir)
        scores = score_validation(best, folder, run_dir, zoom=parse_zoom(v.zoom))
        row = SweepRow(
            name=v.name,
            method=v.method,
            overrides=_settings(variants, v),
            note=v.note,
            crop_val_dice=crop_dice,
            minutes=(time.perf_counter() - t0) / 60,
            **scores,
        )
        atomic_write_bytes(done, json.dumps(row.__dict__, indent=2).encode())
        rows.append(row)
        say(
            f"  {v.name}: validation Dice {row.dice_mean:.3f}, volume ratio {row.volume_ratio_median:.2f}"
            + (f", gates open {row.gate_rate:.2f}" if row.gate_rate is not None else "")
            + f" ({row.minutes:.1f} min)"
        )
    return write_sweep(root, rows, title=title, quick=quick)


def _settings(variants: Sequence[Variant], v: Variant) -> tuple[str, ...]:
    """A variant's settings as the table shows them: its model's run-config overrides, then its ``--zoom``."""
    trained = next(t.overrides for t in variants if t.name == v.trained) if v.trained else v.overrides
    return (*trained, *((f"--zoom {v.zoom}",) if v.zoom != "off" else ()))


def write_sweep(root: Path, rows: Sequence[SweepRow], *, title: str, quick: bool) -> Path:
    """``sweep.md`` (:func:`~lesionsam.evaluation.sweeps.sweep_markdown`) and ``sweep.json``; returns the Markdown
    path."""
    atomic_write_bytes(root / "sweep.json", json.dumps([r.__dict__ for r in rows], indent=2).encode())
    return atomic_write_bytes(root / "sweep.md", sweep_markdown(rows, title=title, quick=quick).encode())
