"""The Markdown report and the ablation table: numbers read from the evaluator's files, figures, errors."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from lesionsam.data.io import read_image, write_image
from lesionsam.data.synthetic import LESION, write_synthetic_dataset
from lesionsam.evaluation.evaluate import EvaluationResult, evaluate_folder
from lesionsam.evaluation.metrics import case_metrics, summarise
from lesionsam.evaluation.report import (
    DASH,
    FIG_CURVES,
    FIG_DICE,
    FIG_GATES,
    FIG_SIZE,
    AblationEntry,
    MethodRun,
    ablation_table,
    read_train_log,
    write_ablation,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Demo:
    """A 3-case synthetic data set (the last without lesion) scored for two hand-made methods."""

    root: Path
    images: Path
    labels: Path
    finetune: MethodRun
    sgp: MethodRun


def _write_train_log(path: Path, epochs: int, *, val_every: int) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "step", "train_loss", "val_dice", "lr", "seconds"])
        step = 0
        for e in range(epochs):
            for _ in range(3):
                step += 1
                w.writerow([e, step, f"{1.0 / (1 + step):.4f}", "", "1e-4", f"{step * 0.5:.1f}"])
            if (e + 1) % val_every == 0:
                w.writerow([e, step, "", f"{0.2 + 0.1 * e:.3f}", "1e-4", f"{step * 0.5:.1f}"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    root = tmp_path_factory.mktemp("report")
    ds = write_synthetic_dataset(root / "data", cases=3, size=48, seed=0)
    images, labels = ds / "imagesTr", ds / "labelsTr"
    pred_ft, pred_sgp = root / "pred" / "finetune", root / "pred" / "sgp_sam"
    for path in sorted(labels.iterdir()):
        vol = read_image(path)
        gt = vol.array == LESION
        dilated = ndimage.binary_dilation(gt).astype(np.uint8)
        write_image(dilated, pred_sgp / path.name, reference=vol)  # SGP: every lesion found, a bit too large
        ft = ndimage.binary_dilation(gt, iterations=2).astype(np.uint8)
        if path.name.startswith("case_000"):
            ft[:] = 0  # fine-tune misses every lesion of case_000
        write_image(ft, pred_ft / path.name, reference=vol)
    evaluate_folder(pred_ft, labels, label=LESION, out_dir=root / "eval" / "finetune")
    evaluate_folder(pred_sgp, labels, label=LESION, out_dir=root / "eval" / "sgp_sam")

    # gates CSV: one row per GT lesion of the evaluator's lesion list, bigger lesions open more gates
    lesions = json.loads((root / "eval" / "sgp_sam" / "metrics.json").read_text())["lesions"]
    gates = root / "train" / "sgp_sam" / "gates.csv"
    gates.parent.mkdir(parents=True)
    with gates.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case", "lesion", "volume_ml", "size_bin", "gate_rate"])
        for i, les in enumerate(x for x in lesions if x["kind"] == "gt"):
            w.writerow([les["case"], les["index"], les["volume_ml"], les["size_bin"], [0.25, 0.5, 1.0][i % 3]])
    (root / "train" / "finetune").mkdir(parents=True)
    _write_train_log(root / "train" / "finetune" / "log.csv", 4, val_every=1)
    _write_train_log(root / "train" / "sgp_sam" / "log.csv", 5, val_every=2)
    return Demo(
        root=root,
        images=images,
        labels=labels,
        finetune=MethodRun(
            "finetune", root / "eval" / "finetune", pred_dir=pred_ft, train_log=root / "train" / "finetune" / "log.csv"
        ),
        sgp=MethodRun(
            "sgp_sam",
            root / "eval" / "sgp_sam",
            pred_dir=pred_sgp,
            train_log=root / "train" / "sgp_sam" / "log.csv",
            gates_csv=gates,
        ),
    )


def _metrics(run: MethodRun) -> dict:
    return json.loads((run.eval_dir / "metrics.json").read_text())


def _links(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def _row(text: str, name: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, f"{path} is only {len(data)} bytes"


def test_report_numbers_come_from_the_evaluator_files(demo: Demo) -> None:
    out = demo.root / "out_full"
    report = write_report(
        out,
        [demo.finetune, demo.sgp],
        images_dir=demo.images,
        labels_dir=demo.labels,
        label=LESION,
        title="report test",
        notes=["trained 40 s per method on 2 CPU cores"],
    )
    text = report.read_text()
    assert report == out / "report.md"
    assert text.startswith("# report test\n\n- trained 40 s per method on 2 CPU cores\n")

    for run in (demo.finetune, demo.sgp):
        s = _metrics(run)["summary"]
        row = _row(text, run.name)
        assert row[1] == str(s["n_cases"])
        assert row[2] == f"{s['dice']['mean']:.3f} ± {s['dice']['std']:.3f}"
        assert row[3] == f"{s['nsd']['mean']:.3f} ± {s['nsd']['std']:.3f}"
        assert row[4].startswith(f"{s['hd95_mm']['mean']:.2f} ± {s['hd95_mm']['std']:.2f}")
        assert row[5] == f"{s['lesion_detection']['f1']:.3f}"
        small = s["lesion_dice_by_volume_coarse"]["<1 cm3"]
        assert row[6] == f"{small['mean_dice']:.3f} ({small['count']})"
    # the two methods really differ (fine-tune misses case_000), so the test can tell them apart
    assert _row(text, "finetune")[2] != _row(text, "sgp_sam")[2]
    assert "1 undefined" in _row(text, "finetune")[4]

    with demo.sgp.gates_csv.open() as fh:
        rates = [float(r["gate_rate"]) for r in csv.DictReader(fh)]
    assert _row(text, "sgp_sam")[7] == f"{np.mean(rates):.3f} (n={len(rates)})"
    assert _row(text, "finetune")[7] == DASH

    links = _links(text)
    for name in (FIG_DICE, FIG_SIZE, FIG_GATES, FIG_CURVES, "overlay_worst.png", "overlay_best.png"):
        assert f"figures/{name}" in links
    for link in links:
        assert not Path(link).is_absolute()
        _check_png(out / link)

    # worst / best case by the last run's (sgp_sam) Dice among cases with a lesion
    cases = [c for c in _metrics(demo.sgp)["cases"] if c["gt_lesions"] > 0]
    worst = min(cases, key=lambda c: c["dice"])["case"]
    best = max(cases, key=lambda c: c["dice"])["case"]
    assert f"![worst case {worst}](figures/overlay_worst.png)" in text
    assert f"![best case {best}](figures/overlay_best.png)" in text

    # sources: relative paths that exist
    sources = text.split("## Sources", 1)[1]
    paths = re.findall(r"`([^`]+)`", sources)
    assert "../eval/sgp_sam/metrics.json" in paths and "../train/sgp_sam/gates.csv" in paths
    for p in paths:
        assert (out / p).exists(), p


def test_overlays_are_chosen_per_method(demo: Demo) -> None:
    out = demo.root / "out_overlays"
    text = write_report(
        out, [demo.finetune, demo.sgp], images_dir=demo.images, labels_dir=demo.labels, label=LESION
    ).read_text()
    for run, prefix in ((demo.finetune, "overlay_finetune_"), (demo.sgp, "overlay_")):
        cases = [c for c in _metrics(run)["cases"] if c["gt_lesions"] > 0]
        worst = min(cases, key=lambda c: (c["dice"], c["case"]))["case"]
        best = max(cases, key=lambda c: (c["dice"], c["case"]))["case"]
        section = text.split(f"### {run.name}\n", 1)[1].split("\n##", 1)[0]
        assert f"![worst case {worst}](figures/{prefix}worst.png)" in section
        assert f"![best case {best}](figures/{prefix}best.png)" in section
        _check_png(out / "figures" / f"{prefix}worst.png")
    assert _metrics(demo.finetune)["cases"][0]["dice"] == 0.0  # fine-tune's own worst: the case it misses


def test_report_without_logs_or_gates(demo: Demo, caplog: pytest.LogCaptureFixture) -> None:
    out = demo.root / "out_plain"
    runs = [
        MethodRun("finetune", demo.finetune.eval_dir, pred_dir=demo.finetune.pred_dir),
        MethodRun("baseline", demo.sgp.eval_dir, train_log=demo.root / "missing_log.csv"),
    ]
    text = write_report(out, runs, images_dir=demo.images, labels_dir=demo.labels, label=LESION).read_text()
    assert "missing_log.csv` not found" in text
    assert "No training log given: curves omitted." in text
    assert "No run has a gates CSV" in text
    assert not (out / "figures" / FIG_CURVES).exists() and not (out / "figures" / FIG_GATES).exists()
    assert _row(text, "finetune")[7] == DASH and _row(text, "baseline")[7] == DASH
    for link in _links(text):
        _check_png(out / link)
    assert "training log" in caplog.text


def test_report_shows_every_size_bin_and_the_small_large_split(demo: Demo) -> None:
    out = demo.root / "out_sizes"
    text = write_report(
        out, [demo.finetune, demo.sgp], images_dir=demo.images, labels_dir=demo.labels, label=LESION
    ).read_text()
    section = text.split("## Lesion Dice by lesion size\n", 1)[1].split("\n## ", 1)[0]
    labels = ["< 0.5 cm³", "0.5–1 cm³", "1–5 cm³", "5–10 cm³", "≥ 10 cm³"]
    head = next(ln for ln in section.splitlines() if ln.startswith("| method |"))
    assert head == "| method | " + " | ".join(f"{b}: Dice (detected/n)" for b in labels) + " |"
    for run in (demo.finetune, demo.sgp):
        s = _metrics(run)["summary"]
        bins = s["lesion_dice_by_volume"]
        expected = [
            f"{DASH if b['mean_dice'] is None else format(b['mean_dice'], '.3f')} ({b['detected']}/{b['count']})"
            for b in bins.values()
        ]
        assert _row(section, run.name)[1:] == expected
        for name, label in (("<1 cm3", "< 1 cm³"), (">=1 cm3", "≥ 1 cm³")):
            c = s["lesion_dice_by_volume_coarse"][name]
            column = [run.name for run in (demo.finetune, demo.sgp)].index(run.name) + 1
            dice = _row(section, f"{label}: lesion Dice")[column]
            found = _row(section, f"{label}: found")[column]
            if c["count"]:
                assert dice.startswith(f"{c['mean_dice']:.3f} (") and found.startswith(
                    f"{c['detected']}/{c['count']} = "
                )
            else:
                assert dice == found == DASH
    assert "(95% CI)" in section and "lower bound inclusive" in section


def test_report_errors(demo: Demo, tmp_path: Path) -> None:
    kw = {"images_dir": demo.images, "labels_dir": demo.labels, "label": LESION}
    with pytest.raises(ValueError, match="empty list"):
        write_report(tmp_path, [], **kw)
    with pytest.raises(ValueError, match="'finetune' is used twice"):
        write_report(tmp_path, [demo.finetune, demo.finetune], **kw)
    with pytest.raises(FileNotFoundError, match=r"run 'nothing': metrics.json not found"):
        write_report(tmp_path, [demo.finetune, MethodRun("nothing", tmp_path / "nowhere")], **kw)
    with pytest.raises(ValueError, match="computed for label 2"):
        write_report(tmp_path, [demo.finetune], images_dir=demo.images, labels_dir=demo.labels, label=1)
    bad = tmp_path / "bad_gates.csv"
    bad.write_text("case,lesion,volume_ml,gate_rate\ncase_000,1,0.1,0.5\n")
    with pytest.raises(ValueError, match="lacks column.*size_bin"):
        write_report(tmp_path, [MethodRun("sgp", demo.sgp.eval_dir, gates_csv=bad)], **kw)
    assert not (tmp_path / "report.md").exists()


def test_report_refuses_runs_scored_with_different_nsd_modes(demo: Demo, tmp_path: Path) -> None:
    voxel_eval = tmp_path / "eval_voxel"
    evaluate_folder(demo.finetune.pred_dir, demo.labels, label=LESION, out_dir=voxel_eval, nsd_mode="voxel")
    assert _metrics(demo.sgp)["settings"]["nsd_mode"] == "area"  # the default
    kw = {"images_dir": demo.images, "labels_dir": demo.labels, "label": LESION}
    with pytest.raises(ValueError, match=r"different NSD settings \(sgp_sam: 2.0 mm, area, finetune: 2.0 mm, voxel"):
        write_report(tmp_path / "r", [demo.sgp, MethodRun("finetune", voxel_eval)], **kw)
    assert not (tmp_path / "r").exists()


def test_read_train_log_skips_empty_cells(demo: Demo) -> None:
    curve = read_train_log(demo.sgp.train_log)
    assert curve.loss_epochs == (0, 1, 2, 3, 4)
    assert curve.val_epochs == (1, 3)
    assert curve.val_dice == pytest.approx((0.3, 0.5))
    assert curve.loss[0] == pytest.approx(np.mean([1 / 2, 1 / 3, 1 / 4]), abs=1e-4)


# ------------------------------------------------------------------------------------------------- ablation
def _fake_eval(out: Path, shift: int, extra_fp: bool) -> None:
    """An evaluator output (the real writer) of two 20³ cases: a cube lesion and a small one, prediction shifted."""
    cases = []
    for c in range(2):
        gt = np.zeros((20, 20, 20), bool)
        gt[4:12, 4:12, 4:12] = True
        gt[15:17, 15:17, 15 : 17 + c] = True  # < 1 cm³ lesion
        pred = np.roll(gt, shift + c, axis=2)
        if extra_fp:
            pred[0:2, 18:20, 0:2] = True
        cases.append(case_metrics(pred, gt, (1.0, 1.0, 1.0), case=f"case_{c}"))
    settings = {"label": 1, "nsd_tolerance_mm": 2.0, "pred_label": None}
    EvaluationResult(cases=cases, summary=summarise(cases), settings=settings).write(out)


def _gates(path: Path, rates: list[float]) -> Path:
    lines = ["case,lesion,volume_ml,size_bin,gate_rate"] + [f"case_0,{i},0.5,<1 cm3,{r}" for i, r in enumerate(rates)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def ablation_rows(tmp_path_factory: pytest.TempPathFactory) -> list[AblationEntry]:
    root = tmp_path_factory.mktemp("ablation")
    rows = []
    for seed in range(3):
        _fake_eval(root / f"ft_{seed}", shift=seed + 1, extra_fp=seed == 1)
        rows.append(AblationEntry("finetune", seed, root / f"ft_{seed}", None))
        _fake_eval(root / f"sgp_{seed}", shift=seed % 2, extra_fp=False)
        gates = _gates(root / f"gates_{seed}.csv", [0.2 * seed, 0.5, 1.0])
        rows.append(AblationEntry("sgp_sam", seed, root / f"sgp_{seed}", gates))
    return rows


def _expected(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def test_ablation_table_mean_sd_over_seeds(ablation_rows: list[AblationEntry], tmp_path: Path) -> None:
    table = ablation_table(ablation_rows)
    lines = table.splitlines()
    assert lines[0].startswith("| method | seeds |") and len(lines) == 4
    assert lines[2].startswith("| finetune |") and lines[3].startswith("| sgp_sam |")  # order first seen
    for method in ("finetune", "sgp_sam"):
        summaries = [
            json.loads((r.eval_dir / "metrics.json").read_text())["summary"]
            for r in ablation_rows
            if r.method == method
        ]
        row = _row(table, method)
        assert row[1] == "3"
        assert row[2] == _expected([s["dice"]["mean"] for s in summaries])
        assert row[3] == _expected([s["lesion_dice_by_volume_coarse"]["<1 cm3"]["mean_dice"] for s in summaries])
        assert row[4] == _expected([s["lesion_detection"]["f1"] for s in summaries])
    assert _row(table, "finetune")[5] == DASH
    gate_means = [np.mean([0.2 * seed, 0.5, 1.0]) for seed in range(3)]
    assert _row(table, "sgp_sam")[5] == _expected(gate_means)
    assert len({_row(table, "finetune")[2], _row(table, "sgp_sam")[2]}) == 2

    md = write_ablation(tmp_path / "abl", ablation_rows)
    assert md.read_text().count("| sgp_sam |") == 1 and table in md.read_text()
    data = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert [m["method"] for m in data["methods"]] == ["finetune", "sgp_sam"]
    sgp = data["methods"][1]
    assert sgp["gate_rate"]["mean"] == pytest.approx(np.mean(gate_means))
    assert sgp["gate_rate"]["sd"] == pytest.approx(np.std(gate_means, ddof=1))
    assert data["methods"][0]["gate_rate"] is None and sgp["seeds"] == [0, 1, 2]


def test_ablation_single_seed_and_errors(ablation_rows: list[AblationEntry], tmp_path: Path) -> None:
    one = ablation_table([ablation_rows[1]])
    assert _row(one, "sgp_sam")[1] == "1" and _row(one, "sgp_sam")[2].endswith(f" ± {DASH}")
    with pytest.raises(ValueError, match="empty list"):
        ablation_table([])
    with pytest.raises(ValueError, match="seed 0 twice"):
        ablation_table([ablation_rows[0], ablation_rows[0]])
    mixed = [ablation_rows[1], AblationEntry("sgp_sam", 7, ablation_rows[3].eval_dir, None)]
    with pytest.raises(ValueError, match="gates CSV given for seed"):
        ablation_table(mixed)
    with pytest.raises(FileNotFoundError, match="metrics.json not found"):
        ablation_table([AblationEntry("x", 0, tmp_path / "none")])
