"""``lesionsam demo`` and ``lesionsam ablate``: the main job on embedded synthetic data.

With nothing downloaded:

1. write a synthetic CT data set (MSD layout: liver, vessels, small irregular tumours) and a held-out test set;
2. **pretrain** a tiny SAM-Med3D on the anatomy (liver and vessel crops) — the stand-in for SAM-Med3D's general
   pre-training; the result is cached (``~/.cache/lesionsam`` or ``$LESIONSAM_CACHE``) and reused by later runs;
3. **transfer** it to the tumours with each method under an equal budget (same epochs, steps, batch, seed);
4. predict the test set with one centre click per tumour, **evaluate** with ``lesionsam evaluate``'s evaluator,
   measure SGP-SAM's gate activation per tumour, and write a report (Markdown + PNG figures).

``ablate`` runs step 3–4 for several methods and seeds on the same data and pretrained model and writes an
ablation table (mean ± sd over seeds).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from lesionsam import __version__
from lesionsam.config import DataConfig, RunConfig, TrainConfig
from lesionsam.data.io import is_image_path, read_image
from lesionsam.data.synthetic import CYST, LESION, ORGAN, VESSEL, write_synthetic_dataset
from lesionsam.data.transforms import crop_or_pad
from lesionsam.evaluation.evaluate import pair_cases
from lesionsam.evaluation.metrics import volume_bin
from lesionsam.evaluation.report import AblationEntry, MethodRun, write_ablation, write_report
from lesionsam.inference.predictor import Predictor
from lesionsam.models import ModelConfig, Prompts
from lesionsam.models.checkpoint import load_checkpoint, load_model
from lesionsam.training.trainer import Trainer
from lesionsam.utils.dataclass_io import atomic_write_bytes
from lesionsam.workflows.evaluate import evaluate
from lesionsam.workflows.predict import case_id, predict

log = logging.getLogger(__name__)

DEMO_METHODS = ("finetune", "sgp_sam")
ABLATION_METHODS = ("finetune", "finetune_zoom", "sgp_dice", "sgp_sam")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and budgets of a demo run (``full()`` for the real thing, ``quick()`` for a smoke run)."""

    train_cases: int
    test_cases: int
    size: int
    spacing: float
    pretrain_epochs: int
    transfer_epochs: int
    batch_size: int
    num_clicks: int
    lr: float
    expected_minutes: float
    minutes_per_transfer: float

    @classmethod
    def full(cls) -> DemoSettings:
        return cls(
            train_cases=24,
            test_cases=8,
            size=96,
            spacing=1.0,
            pretrain_epochs=30,
            transfer_epochs=60,
            batch_size=2,
            num_clicks=3,
            lr=1e-3,
            expected_minutes=8,
            minutes_per_transfer=1.7,
        )

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            train_cases=4,
            test_cases=2,
            size=48,
            spacing=1.0,
            pretrain_epochs=1,
            transfer_epochs=1,
            batch_size=2,
            num_clicks=2,
            lr=1e-3,
            expected_minutes=1,
            minutes_per_transfer=0.1,
        )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where pretrained demo models are kept (``$LESIONSAM_CACHE`` or ``~/.cache/lesionsam``)."""
    env = os.environ.get("LESIONSAM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lesionsam"


def _data_config(root: Path, s: DemoSettings, **changes: object) -> DataConfig:
    return replace(
        DataConfig(root=str(root), target_label=LESION, spacing=(s.spacing,) * 3, val_fraction=0.2),
        **changes,  # type: ignore[arg-type]
    )


def _train_config(s: DemoSettings, *, epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        num_clicks=s.num_clicks,
        mask_only_iterations=1 if s.num_clicks > 1 else 0,
        warmup_steps=5,
        seed=seed,
        device="auto",
    )


def prepare_data(out: Path, s: DemoSettings, *, seed: int) -> tuple[Path, Path]:
    """Write the training and test data sets; returns their roots."""
    train_root, test_root = out / "data" / "train", out / "data" / "test"
    write_synthetic_dataset(train_root, cases=s.train_cases, seed=seed, size=s.size)
    write_synthetic_dataset(test_root, cases=s.test_cases, seed=seed + 10_000, size=s.size)
    return train_root, test_root


def prepare_two_class_data(out: Path, s: DemoSettings, *, seed: int) -> tuple[Path, Path]:
    """Training and test sets with two lesion classes (tumours = 2, cysts = 4) in ``out/data``; returns their roots."""
    train_root, test_root = out / "data" / "train", out / "data" / "test"
    write_synthetic_dataset(train_root, cases=s.train_cases, seed=seed, size=s.size, lesion_classes=2)
    write_synthetic_dataset(test_root, cases=s.test_cases, seed=seed + 10_000, size=s.size, lesion_classes=2)
    return train_root, test_root


def two_class_setup(root: Path, s: DemoSettings, *, seed: int, progress: bool) -> tuple[Path, Path, Path]:
    """What the two-class studies start from: the anatomy-pretrained tiny model (cached) and the tumour + cyst
    training and test sets; returns (pretrained checkpoint, train root, test root)."""
    anatomy_root, _ = prepare_data(root / "anatomy", s, seed=seed)
    pretrained = pretrain(anatomy_root, s, seed=seed, progress=progress)
    train_root, test_root = prepare_two_class_data(root, s, seed=seed)
    return pretrained, train_root, test_root


def pretrain(train_root: Path, s: DemoSettings, *, seed: int, progress: bool) -> Path:
    """Pretrain a tiny SAM-Med3D on liver and vessel crops (cached); returns its checkpoint."""
    cfg = RunConfig(
        name="pretrain_anatomy",
        model=ModelConfig.from_preset("tiny", method="sam_med3d"),
        data=_data_config(train_root, s, target_labels=(ORGAN, VESSEL)),
        train=_train_config(s, epochs=s.pretrain_epochs, seed=seed),
    )
    key = hashlib.sha256(
        json.dumps({"v": __version__, "settings": asdict(s), "seed": seed, "model": "tiny"}, sort_keys=True).encode()
    ).hexdigest()[:16]
    cached = cache_dir() / f"demo_pretrain_{key}" / "last.pt"
    resume = cached.is_file()
    if resume and load_checkpoint(cached)["epoch"] >= s.pretrain_epochs:
        _say(f"  pretrained anatomy model found in the cache: {cached}")
        return cached
    if resume:
        _say(f"  resuming an interrupted pretraining in {cached.parent}")
    t0 = time.perf_counter()
    result = Trainer(cfg, cached.parent, progress=progress).fit(resume=resume)
    _say(f"  pretrained on anatomy in {time.perf_counter() - t0:.0f} s (cached in {cached.parent})")
    assert result.last_checkpoint is not None
    return result.last_checkpoint


def transfer(
    method: str, train_root: Path, pretrained: Path, run_dir: Path, s: DemoSettings, *, seed: int, progress: bool
) -> Path:
    """Transfer the pretrained model to the tumours with ``method``; returns the best checkpoint."""
    cfg = RunConfig(
        name=method,
        model=ModelConfig.from_preset("tiny", method=method, checkpoint=str(pretrained)),
        data=_data_config(train_root, s),
        train=_train_config(s, epochs=s.transfer_epochs, seed=seed),
    )
    result = Trainer(cfg, run_dir, progress=progress).fit()
    assert result.best_checkpoint is not None
    return result.best_checkpoint


def gate_rates(checkpoint: Path, test_root: Path, out_csv: Path, *, label: int = LESION) -> Path | None:
    """Per test tumour: the share of SGP-SAM gates open for a crop centred on it (None for gate-less models).

    Writes ``case, lesion, volume_ml, size_bin, gate_rate``.
    """
    model, _ = load_model(checkpoint)
    if not hasattr(model, "sgpm"):
        return None
    predictor = Predictor.from_checkpoint(checkpoint)
    rows = []
    labels_dir = test_root / "labelsTr"
    for lab_path in sorted(p for p in labels_dir.iterdir() if is_image_path(p)):
        cid = case_id(lab_path)
        label_vol = read_image(lab_path)
        image_path = next(p for p in (test_root / "imagesTr").iterdir() if case_id(p) == cid)
        pre = predictor.set_image(image_path)
        comps, n = ndimage.label(label_vol.array == label, structure=np.ones((3,) * 3, bool))
        voxel_ml = float(np.prod(label_vol.spacing)) / 1000.0
        for idx in range(1, n + 1):
            where = np.argwhere(comps == idx)
            centre_ijk = where.mean(axis=0)[::-1]
            dhw = predictor.preprocessor.to_canonical_index(centre_ijk, pre, world=False)
            crop, box = crop_or_pad(pre.image, dhw, predictor.crop, pad_value=pre.background)
            click = torch.as_tensor(box.to_crop(dhw), dtype=torch.float32).clamp(0, predictor.crop - 1)
            with torch.inference_mode():
                out = predictor.model(
                    torch.from_numpy(np.ascontiguousarray(crop))[None, None],
                    Prompts(points=click[None, None], labels=torch.ones(1, 1, dtype=torch.int64)),
                )
            volume = len(where) * voxel_ml
            rows.append((cid, idx, volume, volume_bin(volume), float(out.extras["gates"].float().mean())))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "lesion", "volume_ml", "size_bin", "gate_rate"])
    writer.writerows(rows)
    return atomic_write_bytes(out_csv, buf.getvalue().encode())


def evaluate_method(checkpoint: Path, test_root: Path, run_dir: Path) -> tuple[Path, Path, Path | None]:
    """Predict the test set (one centre click per tumour), evaluate, measure gates; returns (pred, eval, gates)."""
    pred_dir, eval_dir = run_dir / "test_predictions", run_dir / "test_metrics"
    predict(
        test_root / "imagesTr",
        pred_dir,
        checkpoint=checkpoint,
        clicks_from=test_root / "labelsTr",
        label=LESION,
        progress=False,
    )
    evaluate(pred_dir, test_root / "labelsTr", label=LESION, out=eval_dir, progress=False)
    gates = gate_rates(checkpoint, test_root, run_dir / "gates.csv")
    return pred_dir, eval_dir, gates


def demo(
    out: str | os.PathLike[str] = "runs/demo",
    *,
    quick: bool = False,
    seed: int = 0,
    methods: Sequence[str] = DEMO_METHODS,
    progress: bool = True,
) -> Path:
    """Run the demo (see the module docstring); returns the report's path."""
    s = DemoSettings.quick() if quick else DemoSettings.full()
    root = Path(out)
    threads = torch.get_num_threads()
    _say(
        f"lesionsam demo{' --quick' if quick else ''}: synthetic CT → pretrain a tiny SAM-Med3D on anatomy → "
        f"transfer to tumours with {', '.join(methods)} (equal budget) → evaluate → report in {root / 'report'}.\n"
        f"  expected: under {s.expected_minutes:.0f} min on a 2-core CPU ({threads} threads here)"
    )
    t_all = time.perf_counter()
    train_root, test_root = prepare_data(root, s, seed=seed)
    _say(f"  data: {s.train_cases} training and {s.test_cases} test cases of {s.size}³ in {root / 'data'}")
    pretrained = pretrain(train_root, s, seed=seed, progress=progress)
    runs = []
    timings = []
    for method in methods:
        t0 = time.perf_counter()
        run_dir = root / method
        best = transfer(method, train_root, pretrained, run_dir, s, seed=seed, progress=progress)
        t_train = time.perf_counter() - t0
        pred_dir, eval_dir, gates = evaluate_method(best, test_root, run_dir)
        runs.append(
            MethodRun(
                name=method,
                eval_dir=eval_dir,
                pred_dir=pred_dir,
                train_log=run_dir / "train_log.csv",
                gates_csv=gates,
            )
        )
        timings.append(f"{method}: trained {s.transfer_epochs} epochs in {t_train:.0f} s")
        _say(f"  {method}: trained in {t_train:.0f} s, evaluated in {time.perf_counter() - t0 - t_train:.0f} s")
    notes = [
        f"Synthetic CT: {s.train_cases} training cases, {s.test_cases} test cases, {s.size}³ voxels; "
        f"model: tiny SAM-Med3D ({s.spacing:g} mm, 64³ crops) pretrained on liver + vessel crops "
        f"({s.pretrain_epochs} epochs), then transferred to tumours for {s.transfer_epochs} epochs per method "
        f"(batch {s.batch_size}, {s.num_clicks} click iterations, seed {seed}).",
        "Test predictions: one centre click per tumour (lesionsam predict --clicks-from); "
        "metrics from lesionsam evaluate.",
        *timings,
        f"Total time {time.perf_counter() - t_all:.0f} s on {threads} CPU thread(s).",
    ]
    report = write_report(
        root / "report",
        runs,
        images_dir=test_root / "imagesTr",
        labels_dir=test_root / "labelsTr",
        label=LESION,
        title="lesionsam demo: fine-tuning vs SGP-SAM on synthetic liver tumours",
        notes=notes,
    )
    _say(f"done in {time.perf_counter() - t_all:.0f} s: {report}")
    return report


def ablate(
    out: str | os.PathLike[str] = "runs/ablation",
    *,
    methods: Sequence[str] = ABLATION_METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    quick: bool = False,
    progress: bool = True,
) -> Path:
    """Every method × seed on the demo's data and pretrained model; writes ``ablation.md`` and ``.json``."""
    s = DemoSettings.quick() if quick else DemoSettings.full()
    root = Path(out)
    _say(
        f"lesionsam ablate: {len(methods)} methods × {len(seeds)} seeds, about "
        f"{2 + s.minutes_per_transfer * len(methods) * len(seeds):.0f} min on a 2-core CPU"
    )
    train_root, test_root = prepare_data(root, s, seed=0)
    pretrained = pretrain(train_root, s, seed=0, progress=progress)
    entries = []
    for method in methods:
        for seed in seeds:
            run_dir = root / f"{method}_seed{seed}"
            best = transfer(method, train_root, pretrained, run_dir, s, seed=seed, progress=progress)
            _, eval_dir, gates = evaluate_method(best, test_root, run_dir)
            entries.append(AblationEntry(method=method, seed=seed, eval_dir=eval_dir, gates_csv=gates))
            _say(f"  {method} seed {seed}: done")
    path = write_ablation(root, entries)
    _say(f"ablation table: {path}")
    return path


#: Text prompts per synthetic lesion class (label value → prompts; the first is used at test time).
TEXT_PROMPTS: dict[int, list[str]] = {
    LESION: ["liver tumour", "tumour", "liver tumor", "hepatic lesion"],
    CYST: ["liver cyst", "cyst", "hepatic cyst"],
}


#: Share of RefSAM3D's training crops centred away from the referred class (on the other class or anywhere): text
#: alone searches whole volumes, so the model must learn to find nothing where the referred class is absent.
TEXT_NEGATIVE_FRACTION = 0.5
#: Weight of the per-lesion class term (``train.region_classes``) in the text study: text alone decides each
#: found lesion's class with RefSAM3D's region classifier, so training teaches it on every lesion of a crop.
REGION_CLASSES = 0.5
#: The prompts of the text study: text alone (decided against the other class), text alone thresholding its own
#: mask, one centre click per lesion, and both.
STUDY_PROMPTS = ("text", "text_own", "clicks", "both")
#: Measured wall time of the full ``text-study`` on a 2-core CPU (pretrained model cached, text pairs): 42 min.
TEXT_STUDY_MINUTES = 42


def class_coverage(
    pred_dir: str | os.PathLike[str], labels_dir: str | os.PathLike[str], values: Sequence[int]
) -> dict[int, float]:
    """Share of each class's voxels (pooled over the cases) that the predicted masks (non-zero voxels) cover.

    Whether a text selects its class, voxel by voxel: a selective "liver cyst" mask covers most cyst voxels and
    few tumour voxels. Cases are paired by file name as :func:`lesionsam.evaluation.evaluate.pair_cases` does;
    a class absent from every case gets NaN.
    """
    hits = dict.fromkeys(values, 0)
    totals = dict.fromkeys(values, 0)
    pairs, _, _ = pair_cases(pred_dir, labels_dir)
    for pair in pairs:
        pred = read_image(pair.pred).array != 0
        label = read_image(pair.gt).array
        if pred.shape != label.shape:
            raise ValueError(f"case {pair.case}: prediction {pred.shape} and label {label.shape} differ in shape")
        for v in values:
            cls = label == v
            totals[v] += int(cls.sum())
            hits[v] += int((cls & pred).sum())
    return {v: hits[v] / totals[v] if totals[v] else float("nan") for v in values}


def text_study(
    out: str | os.PathLike[str] = "runs/text_study",
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """RefSAM3D on synthetic data with two lesion classes (tumours = 2, cysts = 4): per-class Dice with the text
    alone, with one centre click per lesion alone, and with both. Writes ``text_study.md`` and ``.json``.

    The model starts from the demo's anatomy-pretrained tiny SAM-Med3D and trains on both classes, one text per
    crop drawn from :data:`TEXT_PROMPTS` (one batch in four without text, so clicks alone also work).
    """
    s = DemoSettings.quick() if quick else DemoSettings.full()
    root = Path(out)
    _say(
        f"lesionsam text-study{' --quick' if quick else ''}: RefSAM3D on tumours + cysts; per-class Dice for text, "
        f"clicks and both; about {1 if quick else TEXT_STUDY_MINUTES:.0f} min on a 2-core CPU"
    )
    t0 = time.perf_counter()
    pretrained, train_root, test_root = two_class_setup(root, s, seed=seed, progress=progress)
    cfg = RunConfig(
        name="refsam3d",
        model=ModelConfig.from_preset("tiny", method="refsam3d", checkpoint=str(pretrained)),
        data=_data_config(
            train_root,
            s,
            target_labels=(LESION, CYST),
            label_texts={str(k): v for k, v in TEXT_PROMPTS.items()},
            negative_fraction=TEXT_NEGATIVE_FRACTION,
        ),
        train=replace(
            _train_config(s, epochs=s.transfer_epochs, seed=seed),
            lr_new=s.lr,
            text_pairs=True,
            region_classes=REGION_CLASSES,
        ),
    )
    result = Trainer(cfg, root / "refsam3d", progress=progress).fit()
    assert result.best_checkpoint is not None
    _say(f"  trained RefSAM3D in {time.perf_counter() - t0:.0f} s")
    predictor = Predictor.from_checkpoint(result.best_checkpoint)
    rows = []
    for value, prompts in TEXT_PROMPTS.items():
        name = "tumour" if value == LESION else "cyst"
        for mode in STUDY_PROMPTS:
            pred_dir = root / "predictions" / f"{name}_{mode}"
            alone = mode.startswith("text")
            predict(
                test_root / "imagesTr",
                pred_dir,
                clicks_from=None if alone else test_root / "labelsTr",
                text=prompts[0] if mode != "clicks" else None,
                compete=mode != "text_own",
                label=value,
                predictor=predictor,
                progress=False,
            )
            metrics = evaluate(pred_dir, test_root / "labelsTr", label=value, out=pred_dir / "metrics", progress=False)
            summary = metrics.summary
            # Does the text select its class? Score the same masks against the *other* class's labels too.
            other = next(v for v in TEXT_PROMPTS if v != value)
            cross = evaluate(
                pred_dir, test_root / "labelsTr", label=other, out=pred_dir / "metrics_other_class", progress=False
            ).summary
            coverage = class_coverage(pred_dir, test_root / "labelsTr", (value, other))
            rows.append(
                {
                    "class": name,
                    "label": value,
                    "prompt": mode,
                    "text": prompts[0] if mode != "clicks" else None,
                    "competitors": list(predictor.competitors(prompts[0])) if mode == "text" else [],
                    "dice_mean": summary["dice"]["mean"],
                    "dice_sd": summary["dice"]["std"],
                    "lesion_f1": summary["lesion_detection"]["f1"],
                    "dice_other_class": cross["dice"]["mean"],
                    "covers_own_class": coverage[value],
                    "covers_other_class": coverage[other],
                    "cases": summary["n_cases"],
                    "source": str(Path("predictions") / f"{name}_{mode}" / "metrics" / "metrics.json"),
                }
            )
    lines = [
        "# RefSAM3D: text, clicks or both (synthetic tumours and cysts)",
        "",
        f"Made by `lesionsam text-study{' --quick' if quick else ''}`: tiny RefSAM3D from the anatomy-pretrained tiny "
        f"SAM-Med3D, {s.transfer_epochs} epochs on {s.train_cases} cases with both classes, evaluated on "
        f"{s.test_cases} held-out cases with lesionsam evaluate (mean ± sd over cases). Text alone searches the whole "
        "volume with sliding windows and is decided against the other class's text (each found lesion is kept only "
        "where RefSAM3D's region classifier gives it to the text's class); *own mask* is the text's own mask, "
        "undecided (`--no-compete`). Clicks = one centre click per lesion of that class. *Dice vs the other class*: "
        "the same masks scored against the other class's labels — text selects its class only where it is well "
        "below the Dice. *Covers*: share of that class's voxels (all test cases pooled) inside the masks — a "
        "selective text covers much more of its own class than of the other.",
        "",
        "| class | prompt | Dice | lesion F1 | Dice vs the other class | covers own class | covers other class |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        prompt = {
            "text": f'text "{r["text"]}"',
            "text_own": f'text "{r["text"]}", own mask',
            "clicks": "clicks",
            "both": f'clicks + "{r["text"]}"',
        }[r["prompt"]]
        lines.append(
            f"| {r['class']} | {prompt} | {r['dice_mean']:.3f} ± {r['dice_sd']:.3f} | {r['lesion_f1']:.3f} | "
            f"{r['dice_other_class']:.3f} | {r['covers_own_class']:.0%} | {r['covers_other_class']:.0%} |"
        )
    lines += ["", f"Numbers read from the evaluator's files: {', '.join(r['source'] for r in rows)}.", ""]
    atomic_write_bytes(root / "text_study.json", json.dumps(rows, indent=2).encode())
    path = atomic_write_bytes(root / "text_study.md", "\n".join(lines).encode())
    _say(f"done in {time.perf_counter() - t0:.0f} s: {path}")
    return path
