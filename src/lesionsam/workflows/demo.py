"""``lesionsam demo`` and ``lesionsam ablate``: the main job on embedded synthetic data.

With nothing downloaded:

1. write a synthetic CT data set (MSD layout: liver, vessels, small irregular tumours) and a held-out test set;
2. **pretrain** a tiny SAM-Med3D on the anatomy (liver and vessel crops) — the stand-in for SAM-Med3D's general
   pre-training; the result is cached (``~/.cache/lesionsam`` or ``$LESIONSAM_CACHE``) and reused by later runs;
3. **transfer** it to the tumours with each method under an equal budget (same epochs, steps, batch, seed);
4. predict the test set with one centre click per tumour, **evaluate** with ``lesionsam evaluate``'s evaluator,
   measure SGP-SAM's gate activation per tumour, and write a report (Markdown + PNG figures).

``lesionsam ablate`` (:mod:`lesionsam.workflows.ablate`) runs step 3–4 for several methods and seeds on the same
data and pretrained model and writes an ablation table (mean ± sd over seeds).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesionsam import __version__
from lesionsam.config import DataConfig, RunConfig, TrainConfig
from lesionsam.configs import packaged_sweep
from lesionsam.data.io import is_image_path, read_image
from lesionsam.data.synthetic import LESION, ORGAN, VESSEL, write_synthetic_dataset
from lesionsam.evaluation.metrics import volume_bin
from lesionsam.evaluation.report import MethodRun, write_report
from lesionsam.evaluation.sweeps import read_sweep_rows, sweep_summary
from lesionsam.inference.gates import gate_activation
from lesionsam.inference.predictor import Predictor
from lesionsam.inference.zoom import ZoomPolicy, parse_zoom
from lesionsam.models import ModelConfig
from lesionsam.models.backbone import Sam3DConfig, get_preset
from lesionsam.models.checkpoint import load_checkpoint
from lesionsam.training.trainer import Trainer
from lesionsam.utils.console import say
from lesionsam.utils.dataclass_io import apply_overrides, atomic_write_bytes, from_dict, to_dict
from lesionsam.workflows.evaluate import evaluate
from lesionsam.workflows.predict import PredictRequest, case_id, predict

log = logging.getLogger(__name__)

DEMO_METHODS = ("finetune", "sgp_sam")
#: Run-config settings of a method in the demo and the ablation beyond its registered defaults. None: the gate
#: budget chosen by validation Dice in ``lesionsam sweep --stage gate`` is no budget
#: (``train.options.gate_cost=0``; every budget tried gave constant gates and a lower validation Dice; README).
#: The small-lesion settings ``lesionsam sweep --stage scale`` chose on the selection set (docs/results.md): zoom-in
#: at inference (``--zoom auto``: fill 0.6, at most 3x), multi-scale training of the transfers (half the crops zoomed;
#: not the anatomy pretraining), the full-resolution decoder path, and for SGP-SAM its SGPMs on that path's features.
CHOSEN_ZOOM = "auto"
CHOSEN_TRAINING: tuple[str, ...] = ("data.zoom.fraction=0.5", "model.full_res_channels=8")
METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "sgp_sam": ("model.options.high_res=true",),
    "sgp_dice": ("model.options.high_res=true",),
}
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
    crop_size: int = 64
    patch_size: int = 16
    window_size: int = 3
    selection_cases: int = 0
    #: small lesions (issue 23), chosen by ``lesionsam sweep --stage scale``: the test predictions' ``--zoom`` and the
    #: transfers' run-config overrides (multi-scale training); sweeps train without the latter (their variants say).
    zoom: str = "off"
    transfer_overrides: tuple[str, ...] = ()

    def backbone(self) -> Sam3DConfig:
        """The tiny SAM-Med3D sizes of this recipe (``tiny`` with this crop, patch and window size)."""
        return replace(
            get_preset("tiny"), img_size=self.crop_size, patch_size=self.patch_size, window_size=self.window_size
        )

    def model(self, method: str, *, checkpoint: str | os.PathLike[str] | None = None, **kw: Any) -> ModelConfig:
        """The model section of a run of this recipe."""
        return ModelConfig(
            method=method,
            preset="tiny",
            backbone=self.backbone(),
            checkpoint=str(checkpoint) if checkpoint is not None else None,
            **kw,
        )

    def data_config(self, root: str | os.PathLike[str], **changes: object) -> DataConfig:
        """The data section of a demo run on the synthetic set at ``root`` (tumours, 20% validation)."""
        return replace(
            DataConfig(root=str(root), target_label=LESION, spacing=(self.spacing,) * 3, val_fraction=0.2),
            **changes,  # type: ignore[arg-type]
        )

    def train_config(self, *, epochs: int, seed: int) -> TrainConfig:
        """The train section of a demo run: this recipe's batch, learning rate and click iterations."""
        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            num_clicks=self.num_clicks,
            mask_only_iterations=1 if self.num_clicks > 1 else 0,
            warmup_steps=5,
            seed=seed,
            device="auto",
        )

    @classmethod
    def full(cls) -> DemoSettings:
        """The demo's recipe (also ``ablate`` and ``sweep``): 48³ crops of 8³ patches, so that the decoder's
        low-res logits are 24³ at 2 mm instead of 16³ at 4 mm (most test tumours are under 1 cm³).

        Evaluated on 48 test cases (47 with tumours, 122 tumours, 83 of them under 1 cm³ with seed 0), enough to
        resolve a difference of about 0.03 Dice (issue 22); sweeps choose settings on another 48 cases, the
        *selection* set (never the test set). Training is the same as with the studies' 8 test cases."""
        return replace(
            cls.studies(),
            crop_size=48,
            patch_size=8,
            window_size=3,
            transfer_epochs=40,
            minutes_per_transfer=2.5,
            test_cases=48,
            selection_cases=48,
            zoom=CHOSEN_ZOOM,
            transfer_overrides=CHOSEN_TRAINING,
        )

    @classmethod
    def studies(cls) -> DemoSettings:
        """The recipe of ``text-study`` and ``auto-study`` (their README tables were measured with it)."""
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
            zoom=CHOSEN_ZOOM,
            transfer_overrides=CHOSEN_TRAINING,
        )


def epoch_lines(what: str, epochs: int, *, every: int = 10) -> Callable[[Any, str, dict[str, Any]], None]:
    """A trainer callback that prints one line every ``every`` epochs (and at the last): what the progress bars
    show on a terminal, for a log file or a pipe."""
    t0 = time.perf_counter()
    done = 0

    def callback(trainer: Any, event: str, info: dict[str, Any]) -> None:
        nonlocal done
        if event != "epoch":
            return
        done += 1
        epoch = int(info["epoch"])
        if epoch % every and epoch != epochs:
            return
        elapsed = time.perf_counter() - t0
        val = info.get("val_dice")
        say(
            f"    {what}: epoch {epoch}/{epochs}, loss {info['train_loss']:.3f}"
            + (f", validation Dice {val:.3f}" if val is not None else "")
            + f", {elapsed:.0f} s, ETA {elapsed / done * (epochs - epoch):.0f} s"
        )

    return callback


def cache_dir() -> Path:
    """Where pretrained demo models are kept (``$LESIONSAM_CACHE`` or ``~/.cache/lesionsam``)."""
    env = os.environ.get("LESIONSAM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lesionsam"


def prepare_data(out: Path, s: DemoSettings, *, seed: int, test: bool = True) -> tuple[Path, Path]:
    """Write the training and (unless ``test`` is False) the test data sets; returns their roots."""
    train_root, test_root = out / "data" / "train", out / "data" / "test"
    write_synthetic_dataset(train_root, cases=s.train_cases, seed=seed, size=s.size)
    if test:
        write_synthetic_dataset(test_root, cases=s.test_cases, seed=seed + 10_000, size=s.size)
    return train_root, test_root


def prepare_selection(out: Path, s: DemoSettings, *, seed: int) -> Path:
    """The selection set (``out/data/selection``): held-out cases that sweeps choose settings on, drawn with another
    seed than the training and test sets (``s.selection_cases``; the trainer's own validation split when 0)."""
    root = out / "data" / "selection"
    write_synthetic_dataset(root, cases=s.selection_cases, seed=seed + 20_000, size=s.size)
    return root


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
        model=s.model("sam_med3d"),
        data=s.data_config(train_root, target_labels=(ORGAN, VESSEL)),
        train=s.train_config(epochs=s.pretrain_epochs, seed=seed),
    )
    # What the pretrained weights depend on (not the test set, the transfer nor the time estimates).
    unrelated = (
        "test_cases",
        "selection_cases",
        "transfer_epochs",
        "expected_minutes",
        "minutes_per_transfer",
        "zoom",
        "transfer_overrides",
    )
    settings = {k: v for k, v in asdict(s).items() if k not in unrelated}
    key = hashlib.sha256(
        json.dumps({"v": __version__, "settings": settings, "seed": seed, "model": "tiny"}, sort_keys=True).encode()
    ).hexdigest()[:16]
    cached = cache_dir() / f"demo_pretrain_{key}" / "last.pt"
    resume = cached.is_file()
    if resume and load_checkpoint(cached)["epoch"] >= s.pretrain_epochs:
        say(f"  pretrained anatomy model found in the cache: {cached}")
        return cached
    if resume:
        say(f"  resuming an interrupted pretraining in {cached.parent}")
    say(f"  pretraining a tiny SAM-Med3D on the anatomy: {s.pretrain_epochs} epochs (cached in {cached.parent})")
    t0 = time.perf_counter()
    lines = () if progress else (epoch_lines("pretraining", s.pretrain_epochs),)
    result = Trainer(cfg, cached.parent, progress=progress, callbacks=lines).fit(resume=resume)
    say(f"  pretrained on anatomy in {time.perf_counter() - t0:.0f} s (cached in {cached.parent})")
    assert result.last_checkpoint is not None
    return result.last_checkpoint


def transfer_config(
    method: str,
    train_root: Path,
    pretrained: str | os.PathLike[str],
    s: DemoSettings,
    *,
    seed: int,
    overrides: Sequence[str] = (),
    method_settings: bool = True,
) -> RunConfig:
    """The run config of a transfer of the pretrained model to the tumours with ``method``: with its
    :data:`METHOD_SETTINGS` and the recipe's ``transfer_overrides`` unless ``method_settings`` is False (sweeps),
    then ``key=value`` run-config ``overrides``, e.g. ``train.loss_options={balance: partial}``."""
    chosen = (*METHOD_SETTINGS.get(method, ()), *s.transfer_overrides) if method_settings else ()
    overrides = (*chosen, *overrides)
    cfg = RunConfig(
        name=method,
        model=s.model(method, checkpoint=pretrained),
        data=s.data_config(train_root),
        train=s.train_config(epochs=s.transfer_epochs, seed=seed),
    )
    if overrides:
        cfg = from_dict(RunConfig, apply_overrides(to_dict(cfg), overrides))
    return cfg


def transfer(
    method: str,
    train_root: Path,
    pretrained: Path,
    run_dir: Path,
    s: DemoSettings,
    *,
    seed: int,
    progress: bool,
    overrides: Sequence[str] = (),
    method_settings: bool = True,
) -> Path:
    """Transfer the pretrained model to the tumours with ``method`` (the run config of :func:`transfer_config`);
    returns the best checkpoint."""
    cfg = transfer_config(
        method, train_root, pretrained, s, seed=seed, overrides=overrides, method_settings=method_settings
    )
    lines = () if progress else (epoch_lines(run_dir.name, s.transfer_epochs),)
    result = Trainer(cfg, run_dir, progress=progress, callbacks=lines).fit()
    assert result.best_checkpoint is not None
    return result.best_checkpoint


def gate_rates(
    checkpoint: Path,
    test_root: Path,
    out_csv: Path,
    *,
    label: int = LESION,
    channel: int | None = None,
    device: str = "cpu",
) -> Path | None:
    """SGP-SAM's gate activation by crop content (None for gate-less models):
    :func:`~lesionsam.inference.gates.gate_activation` of every test case, written as ``case, lesion, volume_ml,
    size_bin, gate_rate`` (``lesion`` and ``volume_ml`` 0 and size bin ``"no lesion"`` for the lesion-free crops).
    ``channel``: of multi-channel images; ``device``: where the model runs."""
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    if not predictor.model.has_gates:
        return None
    rows = []
    rng = np.random.default_rng(0)
    for lab_path in sorted(p for p in (test_root / "labelsTr").iterdir() if is_image_path(p)):
        cid = case_id(lab_path)
        image_path = next(p for p in (test_root / "imagesTr").iterdir() if case_id(p) == cid)
        image, label_map = read_image(image_path, channel=channel), read_image(lab_path)
        for g in gate_activation(predictor, image, label_map, label=label, rng=rng):
            size_bin = volume_bin(g.volume_ml) if g.lesion else "no lesion"
            rows.append((cid, g.lesion, g.volume_ml, size_bin, g.gate_rate))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "lesion", "volume_ml", "size_bin", "gate_rate"])
    writer.writerows(rows)
    return atomic_write_bytes(out_csv, buf.getvalue().encode())


def evaluate_method(
    checkpoint: Path,
    root: Path,
    run_dir: Path,
    *,
    split: str = "test",
    label: int = LESION,
    channel: int | None = None,
    device: str = "cpu",
    zoom: ZoomPolicy | None = None,
) -> tuple[Path, Path, Path | None]:
    """Predict the cases of data set ``root`` (one centre click per lesion of ``label``), measure the gates, evaluate;
    writes ``<split>_predictions/``, the gates CSV (``gates.csv`` for the test split, else ``<split>_gates.csv``)
    and ``<split>_metrics/`` (last: it marks the run done); returns (predictions, metrics folder, gates CSV or
    None). ``channel``: of multi-channel images; ``device``: where the model runs; ``zoom``: zoom-in for small
    lesions (None: off)."""
    pred_dir, eval_dir = run_dir / f"{split}_predictions", run_dir / f"{split}_metrics"
    request = PredictRequest.of(
        root / "imagesTr",
        pred_dir,
        checkpoint=checkpoint,
        clicks_from=root / "labelsTr",
        label=label,
        channel=channel,
        device=device,
        zoom=zoom,
    )
    predict(request, progress=False)
    gates_csv = run_dir / ("gates.csv" if split == "test" else f"{split}_gates.csv")
    gates = gate_rates(checkpoint, root, gates_csv, label=label, channel=channel, device=device)
    evaluate(pred_dir, root / "labelsTr", label=label, out=eval_dir, progress=False)  # last: marks it done
    return pred_dir, eval_dir, gates


def defaults_notes() -> list[str]:
    """How the defaults the demo uses were chosen: one line per packaged validation sweep (every reading tried,
    with its validation Dice, volume ratio and gate activation)."""
    lines = []
    for stage, what in (
        ("loss", "Zoom Loss readings (finetune_zoom)"),
        ("gate", "SGP-SAM gate budgets"),
        ("scale", "Small-lesion settings (zoom-in, multi-scale training, the full-resolution path; sgp_sam)"),
    ):
        path = packaged_sweep(stage)
        if path is not None:
            lines.append(sweep_summary(read_sweep_rows(path), what=what))
    return lines


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
    say(
        f"lesionsam demo{' --quick' if quick else ''}: synthetic CT → pretrain a tiny SAM-Med3D on anatomy → "
        f"transfer to tumours with {', '.join(methods)} (equal budget) → evaluate → report in {root / 'report'}.\n"
        f"  expected: under {s.expected_minutes:.0f} min on a 2-core CPU ({threads} threads here)"
    )
    t_all = time.perf_counter()
    train_root, test_root = prepare_data(root, s, seed=seed)
    say(f"  data: {s.train_cases} training and {s.test_cases} test cases of {s.size}³ in {root / 'data'}")
    pretrained = pretrain(train_root, s, seed=seed, progress=progress)
    runs = []
    timings = []
    for method in methods:
        t0 = time.perf_counter()
        run_dir = root / method
        best = transfer(method, train_root, pretrained, run_dir, s, seed=seed, progress=progress)
        t_train = time.perf_counter() - t0
        pred_dir, eval_dir, gates = evaluate_method(best, test_root, run_dir, zoom=parse_zoom(s.zoom))
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
        say(f"  {method}: trained in {t_train:.0f} s, evaluated in {time.perf_counter() - t0 - t_train:.0f} s")
    notes = [
        f"Synthetic CT: {s.train_cases} training cases, {s.test_cases} test cases, {s.size}³ voxels; "
        f"model: tiny SAM-Med3D ({s.spacing:g} mm voxels, {s.crop_size}³ crops, {s.patch_size}³ patches, "
        f"{s.backbone().low_res_size}³ decoder output) pretrained on liver + vessel crops "
        f"({s.pretrain_epochs} epochs), then transferred to tumours for {s.transfer_epochs} epochs per method "
        f"(batch {s.batch_size}, {s.num_clicks} click iterations, seed {seed}).",
        "Test predictions: one centre click per tumour (lesionsam predict --clicks-from"
        + (f" --zoom {s.zoom}" if s.zoom != "off" else "")
        + "); metrics from lesionsam evaluate."
        + (f" Transfers trained with {', '.join(s.transfer_overrides)}." if s.transfer_overrides else ""),
        *timings,
        f"Total time {time.perf_counter() - t_all:.0f} s on {threads} CPU thread(s).",
        *defaults_notes(),
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
    say(f"done in {time.perf_counter() - t_all:.0f} s: {report}")
    return report
