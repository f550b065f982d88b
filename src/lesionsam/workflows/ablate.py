"""``lesionsam ablate``: every method × seed under one protocol, each in its own run folder, and the ablation report.

Two sources of runs:

* **no config** (:func:`ablate`): the demo's synthetic data and anatomy-pretrained tiny model, the demo's recipe
  (:class:`~lesionsam.workflows.demo.DemoSettings`) and per-method settings (``METHOD_SETTINGS``);
* **a run config** (:func:`ablate_config`, e.g. the ``liver_sgp_sam`` preset with ``data.root=...`` and
  ``model.checkpoint=...``): every run uses that config unchanged except ``model.method``, ``train.seed`` and
  ``data.splits``.

The test set of a config ablation (never used for choosing anything): the ``test`` list of ``data.splits`` when the
config gives one; otherwise a seeded split of **all** labelled cases of ``data.root`` (lesion-free ones included) by
:func:`~lesionsam.data.splits.make_splits` with ``data.split_seed``, ``data.val_fraction`` and ``test_fraction``,
written once to ``<out>/splits.json`` and given to every run as ``data.splits``. The trainer trains on the ``train``
cases and picks ``best.pt`` by validation Dice on the ``val`` cases (each with the target label); the test cases are
only predicted (one centre click per lesion of ``data.target_label``) and scored, after training. A view of the test
cases (symbolic links, ``<out>/test_data/imagesTr`` and ``labelsTr``) is what prediction and evaluation read.

Run folders: ``<out>/<method>_seed<seed>/`` (``config.yaml``, ``splits.json``, ``provenance.json``, ``train_log.csv``,
``last.pt``, ``best.pt``, ``test_predictions/``, ``gates.csv`` for gated methods, ``test_clicks/`` — the interactive
protocol, Dice after 1…``clicks`` error-region clicks per test lesion — and ``test_metrics/metrics.json`` written last).
A run whose ``test_metrics/metrics.json`` exists is done and skipped; one with a ``last.pt`` resumes exactly from it
(:meth:`Trainer.fit(resume=True) <lesionsam.training.trainer.Trainer.fit>`); a run folder whose ``config.yaml``
differs from the planned config is refused. ``only`` / ``shard`` restrict a call to some runs (one process or GPU
each); such a call writes no table, and a later call without them collects every run into ``ablation.md``/``.json``,
with what the numbers depend on (each run's ``provenance.json``) and what the repeat checks in ``<out>/repeat_check/``
(:mod:`lesionsam.workflows.repeat_check`, ``--repeat-check``) showed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lesionsam.config import RunConfig, load_run_config
from lesionsam.data.io import image_suffix
from lesionsam.data.layouts import Case, listing
from lesionsam.data.splits import make_splits, read_splits, write_splits
from lesionsam.evaluation.ablation_clicks import click_markdown, click_summary
from lesionsam.evaluation.provenance import provenance_section, read_repeat_checks
from lesionsam.evaluation.report import AblationEntry, write_ablation
from lesionsam.inference.zoom import ZoomPolicy, parse_zoom, zoom_spec
from lesionsam.models.checkpoint import load_checkpoint
from lesionsam.training.data import load_cases
from lesionsam.training.distributed import DistContext
from lesionsam.training.trainer import Callback, Trainer
from lesionsam.utils.console import say
from lesionsam.utils.paths import check_can_create
from lesionsam.workflows.clicks import evaluate_clicks
from lesionsam.workflows.demo import (
    ABLATION_METHODS,
    DemoSettings,
    epoch_lines,
    evaluate_method,
    prepare_data,
    pretrain,
    transfer,
)

__all__ = [
    "ABLATION_METHODS",
    "ablate",
    "ablate_config",
    "held_out_split",
    "link_test_cases",
    "parse_run",
    "parse_seeds",
    "parse_shard",
    "run_config",
    "select_runs",
]

#: Share of the cases held out as the test set when the config gives no ``data.splits``.
TEST_FRACTION = 0.2
#: Clicks per test lesion of the interactive protocol (SAM-Med3D reports Dice after 1 and 10 clicks).
CLICKS = 10
#: Training seeds of every method by default: 5, so that the comparison's interval can resample seeds (issue 22).
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
#: Where ``--repeat-check`` retrains a run and writes its verdicts (:mod:`lesionsam.workflows.repeat_check`).
REPEAT_FOLDER = "repeat_check"

Run = tuple[str, int]


# ---------------------------------------------------------------------------------------------- run selection
def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]`` (``ValueError`` for no seed, a non-integer, a negative or a repeated one)."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct non-negative integers (e.g. 0,1,2), got {text!r}")
    return seeds


def parse_run(text: str, flag: str = "--only-run") -> Run:
    """``"sgp_sam:1"`` → ``("sgp_sam", 1)``; ``flag`` names the option in the error."""
    method, sep, seed = text.rpartition(":")
    if not sep or not method or not seed.strip().isdigit():
        raise ValueError(f"{flag} takes METHOD:SEED (e.g. sgp_sam:1), got {text!r}")
    return method.strip(), int(seed)


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` → ``(1, 4)``: shard 1 of 4, counted from 0."""
    i, sep, n = text.partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit() or not 0 <= int(i) < int(n):
        raise ValueError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(i), int(n)


def select_runs(
    methods: Sequence[str], seeds: Sequence[int], *, only: Sequence[Run] = (), shard: tuple[int, int] | None = None
) -> list[Run]:
    """The (method, seed) runs of this call: all of ``methods`` × ``seeds`` (method-major), or those named in
    ``only``, then every ``n``-th from ``i`` for ``shard=(i, n)``."""
    runs = [(m, s) for m in methods for s in seeds]
    if only:
        unknown = [f"{m}:{s}" for m, s in only if (m, s) not in runs]
        if unknown:
            raise ValueError(f"--only-run {', '.join(unknown)} is not one of the planned runs (--methods × --seeds)")
        runs = [r for r in runs if r in set(only)]
    if shard is not None:
        runs = runs[shard[0] :: shard[1]]
    return runs


def _check_methods_seeds(methods: Sequence[str], seeds: Sequence[int]) -> None:
    if not methods:
        raise ValueError("--methods names no method")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods names a method twice: {','.join(methods)}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct integers, got {list(seeds)}")


# ---------------------------------------------------------------------------------------------- demo data
def ablate(
    out: str | os.PathLike[str] = "runs/ablation",
    *,
    methods: Sequence[str] = ABLATION_METHODS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    quick: bool = False,
    progress: bool = True,
    only: Sequence[Run] = (),
    shard: tuple[int, int] | None = None,
    zoom: str | None = None,
) -> Path | None:
    """Every method × seed on the demo's data and pretrained model; writes ``ablation.md`` and ``.json``.
    ``zoom``: the ``--zoom`` of the test predictions (None: the recipe's chosen one, ``DemoSettings.zoom``).

    A (method, seed) whose run folder already holds its test metrics (``test_metrics/metrics.json``, written
    last) is not trained again, so an interrupted ablation continues where it stopped and runs made by
    several processes into one folder are collected by a last call. With ``only`` or ``shard`` only those runs
    are made and no table is written (returns None).
    """
    _check_methods_seeds(methods, seeds)
    chosen = select_runs(methods, seeds, only=only, shard=shard)
    s = DemoSettings.quick() if quick else DemoSettings.full()
    zoom_policy = parse_zoom(s.zoom if zoom is None else zoom)
    root = Path(out)
    check_can_create(root, what="--out", folder=True)
    say(
        f"lesionsam ablate: {len(methods)} methods × {len(seeds)} seeds, about "
        f"{2 + s.minutes_per_transfer * len(methods) * len(seeds):.0f} min on a 2-core CPU"
    )
    train_root, test_root = prepare_data(root, s, seed=0)
    pretrained = pretrain(train_root, s, seed=0, progress=progress)
    entries = []
    for method in methods:
        for seed in seeds:
            run_dir = root / f"{method}_seed{seed}"
            eval_dir, gates = run_dir / "test_metrics", run_dir / "gates.csv"
            if (eval_dir / "metrics.json").is_file():
                say(f"  {method} seed {seed}: already done ({eval_dir})")
            elif (method, seed) in chosen:
                best = transfer(method, train_root, pretrained, run_dir, s, seed=seed, progress=progress)
                evaluate_method(best, test_root, run_dir, zoom=zoom_policy)
                say(f"  {method} seed {seed}: done")
            entries.append(
                AblationEntry(method=method, seed=seed, eval_dir=eval_dir, gates_csv=gates if gates.is_file() else None)
            )
    if only or shard is not None:
        say("  runs of this call done; collect the table with the same command without --only-run/--shard")
        return None
    section, provenance = provenance_report(root, [(m, s) for m in methods for s in seeds])
    provenance["zoom"] = zoom_spec(zoom_policy)
    provenance["transfer_overrides"] = list(s.transfer_overrides)
    zoom_line = (
        "Small lesions: the test cases predicted with "
        f"`--zoom {zoom_spec(zoom_policy)}` (runs predicted before this call keep the setting they were predicted "
        "with); the transfers trained with "
        + (", ".join(f"`{o}`" for o in s.transfer_overrides) or "the recipe alone")
        + "."
    )
    section = (section[0], section[1] + "\n\n" + zoom_line)
    path = write_ablation(root, entries, sections=[section], extra={"provenance": provenance})
    say(f"ablation table: {path}")
    return path


def provenance_report(root: Path, runs: Sequence[Run]) -> tuple[tuple[str, str], dict[str, Any]]:
    """The report's section on what the numbers depend on (the runs' ``provenance.json`` and the repeat checks in
    ``root/repeat_check``) as (title, Markdown), and its JSON for ``ablation.json``."""
    folders = [(f"{m}_seed{s}", root / f"{m}_seed{s}") for m, s in runs]
    body, data = provenance_section(folders, read_repeat_checks(root / REPEAT_FOLDER))
    return ("What the numbers depend on", body), data


# ---------------------------------------------------------------------------------------------- any run config
def run_config(base: RunConfig, method: str, seed: int, splits: str) -> RunConfig:
    """The config of one run: ``base`` for ``method`` (:meth:`RunConfig.for_method`: the training options of
    another method left out) with ``train.seed``, ``data.splits`` and its name set."""
    cfg = base.for_method(method)
    return replace(
        cfg, name=f"{method}_seed{seed}", train=replace(cfg.train, seed=seed), data=replace(cfg.data, splits=splits)
    )


def held_out_split(cfg: RunConfig, cases: Sequence[Case], test_fraction: float) -> dict[str, list[str]]:
    """The split of an ablation (see the module docstring): ``data.splits`` (which must have a ``test`` list of
    known cases), else a seeded split of ``cases`` with ``test_fraction`` of them held out for testing."""
    d = cfg.data
    ids = {c.case_id for c in cases}
    if d.splits:
        splits = read_splits(d.splits)
        if not splits.get("test"):
            raise ValueError(
                f"data.splits {d.splits} has no 'test' list: the ablation scores its test cases only; add one, or "
                "leave data.splits out and the ablation holds out --test-fraction of the cases"
            )
        unknown = sorted(set(splits["test"]) - ids)
        if unknown:
            raise ValueError(f"data.splits {d.splits}: test case(s) not in {d.root}: {listing(unknown)}")
        return splits
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    return make_splits(list(cases), seed=d.split_seed, val_fraction=d.val_fraction, test_fraction=test_fraction)


def _same_config(path: Path, cfg: RunConfig) -> bool:
    return load_run_config(path) == cfg


def _link(target: Path, link: Path) -> None:
    """``link`` → ``target`` (absolute), replaced atomically unless it already points there."""
    target = target.resolve()
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def link_test_cases(cases: Sequence[Case], out: Path, channel: int | None) -> Path:
    """``out/imagesTr`` and ``out/labelsTr`` of symbolic links to the test ``cases`` (one image per case: the file
    itself, or its ``channel`` file for one-file-per-channel cases); returns ``out``."""
    for c in cases:
        assert c.label is not None
        image = c.images[(channel or 0) if len(c.images) > 1 else 0]
        _link(image, out / "imagesTr" / f"{c.case_id}{image_suffix(image)}")
        _link(c.label, out / "labelsTr" / f"{c.case_id}{image_suffix(c.label)}")
    return out


def _view_channel(cases: Sequence[Case], channel: int | None) -> int | None:
    """The channel prediction still picks in the test view: none for one-file-per-channel cases (their view holds
    the channel's own file), else ``channel`` of the multi-channel images."""
    return None if cases and len(cases[0].images) > 1 else channel


def _device(cfg: RunConfig) -> str:
    return "cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu"


#: How long the other ranks of a ``torchrun`` ablation wait at a barrier while rank 0 tests a run.
BARRIER_TIMEOUT = timedelta(hours=12)


def _process_group(cfg: RunConfig) -> DistContext:
    """Under ``torchrun``: join the process group now (NCCL on GPUs, else gloo) with a long timeout, since the other
    ranks wait while rank 0 predicts and scores each run's test set; the trainer then uses this group."""
    ctx = DistContext.from_env()
    if ctx.enabled and not dist.is_initialized():
        cuda = _device(cfg) == "cuda"
        if cuda:
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT)
    return ctx


def _barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def _train_and_test(
    cfg: RunConfig,
    run_dir: Path,
    test_root: Path,
    channel: int | None,
    *,
    progress: bool,
    callbacks: Sequence[Callback],
    clicks: int,
    main: bool = True,
    device: str | None = None,
    zoom: ZoomPolicy | None = None,
) -> None:
    """Train (or resume) one run, then (on the main process only) predict and score its test cases (metrics
    last) on ``device`` (default: the run's, CUDA when there is one)."""
    last = run_dir / "last.pt"
    resume = last.is_file()
    if resume and int(load_checkpoint(last)["epoch"]) >= cfg.train.epochs:
        say(f"  {run_dir.name}: trained already, testing")
    else:
        if resume:
            say(f"  {run_dir.name}: resuming from {last}")
        lines = () if progress else (epoch_lines(run_dir.name, cfg.train.epochs),)
        Trainer(cfg, run_dir, progress=progress, callbacks=(*lines, *callbacks)).fit(resume=resume)
    if not main:
        return
    best = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else last
    label, device = cfg.data.target_label, device or _device(cfg)
    if clicks:
        evaluate_clicks(
            test_root / "imagesTr",
            test_root / "labelsTr",
            out=run_dir / "test_clicks",
            checkpoint=best,
            label=label,
            n_clicks=clicks,
            click_mode=cfg.train.click_mode,
            seed=0,
            channel=channel,
            device=device,
            zoom=zoom,
        )
    # Predictions, gates, then the metrics, written last: they mark the run done.
    evaluate_method(best, test_root, run_dir, label=label, channel=channel, device=device, zoom=zoom)


def ablate_config(
    config: str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
    methods: Sequence[str] = ABLATION_METHODS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    test_fraction: float = TEST_FRACTION,
    clicks: int = CLICKS,
    only: Sequence[Run] = (),
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    zoom: ZoomPolicy | None = None,
) -> Path | None:
    """Every method × seed under the run config ``config`` (a YAML path) with ``overrides``; see the module docstring.

    Everything is checked before the first write (methods, seeds, config, data root and its cases, the split, the
    output folder, run folders made with another config). ``callbacks`` go to every run's trainer.

    Returns:
        ``<out>/ablation.md`` (default ``out``: ``runs/ablation_<config name>``), or None when ``only``/``shard``
        restrict the call (no table is written then).
    """
    _check_methods_seeds(methods, seeds)
    if clicks < 0:
        raise ValueError(f"--clicks must be >= 0 (0: no click curves), got {clicks}")
    base = load_run_config(config, overrides)
    if base.data.target_labels:
        raise ValueError("ablate scores one lesion label: set data.target_label and leave data.target_labels empty")
    chosen = select_runs(methods, seeds, only=only, shard=shard)
    root = Path(out) if out is not None else Path("runs") / f"ablation_{base.name}"
    check_can_create(root, what="--out", folder=True)
    cases = [c for c in load_cases(base) if c.label is not None]
    if not cases:
        raise ValueError(f"data.root {base.data.root} has no labelled case")
    splits = held_out_split(base, cases, test_fraction)
    splits_path = Path(base.data.splits) if base.data.splits else (root / "splits.json").resolve()
    if not base.data.splits and splits_path.is_file() and read_splits(splits_path) != splits:
        raise ValueError(f"{splits_path} holds another split (other data or settings): use another --out")
    plan = {(m, s): run_config(base, m, s, str(splits_path)) for m in methods for s in seeds}
    for (m, s), cfg in plan.items():
        own = root / f"{m}_seed{s}" / "config.yaml"
        if own.is_file() and not _same_config(own, cfg):
            raise ValueError(f"{own.parent} was made with another config; use another --out or remove that folder")
    # Every input is checked: from here on files are written (by rank 0 of a torchrun job).
    ctx = _process_group(base)
    if ctx.is_main and not base.data.splits:
        write_splits(splits, splits_path)
    by_id = {c.case_id: c for c in cases}
    test_cases = [by_id[i] for i in splits["test"]]
    if ctx.is_main:
        link_test_cases(test_cases, root / "test_data", base.data.channel)
    test_root, channel = root / "test_data", _view_channel(test_cases, base.data.channel)
    _barrier(ctx)
    say(
        f"lesionsam ablate {base.name}: {len(methods)} methods × {len(seeds)} seeds ({len(chosen)} in this call); "
        f"{len(splits.get('train', []))} training, {len(splits.get('val', []))} validation and "
        f"{len(splits['test'])} test cases (split: {splits_path})"
    )
    entries = []
    for (m, s), cfg in plan.items():
        run_dir = root / f"{m}_seed{s}"
        metrics = run_dir / "test_metrics" / "metrics.json"
        if metrics.is_file():
            say(f"  {run_dir.name}: already done ({metrics.parent})")
        elif (m, s) in chosen:
            main = ctx.is_main
            _train_and_test(
                cfg,
                run_dir,
                test_root,
                channel,
                progress=progress,
                callbacks=callbacks,
                clicks=clicks,
                main=main,
                zoom=zoom,
            )
            _barrier(ctx)
            say(f"  {run_dir.name}: done")
        gates = run_dir / "gates.csv"
        entries.append(AblationEntry(m, s, metrics.parent, gates if gates.is_file() else None))
    if only or shard is not None or not ctx.is_main:
        say("  runs of this call done; collect the table with the same command without --only-run/--shard")
        return None
    notes = _protocol(base, splits, splits_path, root, clicks)
    curves = click_summary([(m, s, root / f"{m}_seed{s}" / "test_clicks" / "clicks.json") for m, s in plan])
    body = click_markdown(curves)
    sections = [] if body is None else [("Interactive protocol: Dice after 1…N clicks", body)]
    section, provenance = provenance_report(root, list(plan))
    extra = {"clicks": curves, "provenance": provenance}
    path = write_ablation(root, entries, notes=notes, sections=[*sections, section], extra=extra)
    say(f"ablation table: {path}")
    return path


def _protocol(cfg: RunConfig, splits: dict[str, list[str]], splits_path: Path, root: Path, clicks: int) -> list[str]:
    """The report's protocol lines."""
    d, t = cfg.data, cfg.train
    return [
        f"Run config `{cfg.name}` (each run's own `config.yaml` is in its folder): backbone `{cfg.model.preset}`, "
        f"initial weights `{cfg.model.checkpoint or 'none (random)'}`, {t.epochs} epochs, batch "
        f"{t.batch_size}, {t.num_clicks} click iterations; only `model.method` and `train.seed` differ between runs.",
        f"Data `{d.root}`, label {d.target_label}" + (f", channel {d.channel}" if d.channel is not None else "") + ".",
        f"Split `{os.path.relpath(splits_path, root)}`: {len(splits.get('train', []))} training, "
        f"{len(splits.get('val', []))} validation (choice of `best.pt`) and {len(splits['test'])} test cases; the "
        "test cases are used for nothing but these numbers.",
        "Test protocol: `best.pt` of each run predicts every test case with one click at the centre of each lesion "
        "(`lesionsam predict --clicks-from`), scored by `lesionsam evaluate`"
        + (
            f"; and per test lesion {clicks} clicks of the interactive protocol (`lesionsam evaluate-clicks`, "
            f"{cfg.train.click_mode} error-region clicks as in training, seed 0)."
            if clicks
            else "."
        ),
    ]
