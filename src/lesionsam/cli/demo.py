"""``lesionsam demo`` (the main job), ``lesionsam ablate`` (the ablation table) and the studies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lesionsam.cli.main import add_zoom_flag, command


@command("demo")
def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job on embedded synthetic data: pretrain, transfer (fine-tune vs SGP-SAM), evaluate, report",
        description=(
            "Writes a synthetic CT data set, pretrains a tiny SAM-Med3D on its anatomy (cached for later runs), "
            "transfers it to the tumours with the fine-tuning baseline and with SGP-SAM under an equal budget, "
            "evaluates both on a held-out test set and writes OUT/report/report.md with figures. Under 8 minutes "
            "on a 2-core CPU (6.5 measured); --quick is a smoke run of about a minute. Nothing is downloaded."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and training (default 0)")

    def run(a: argparse.Namespace) -> int:
        from lesionsam.workflows.demo import demo

        report = demo(a.out, quick=a.quick, seed=a.seed, progress=sys.stderr.isatty())
        print(report)
        return 0

    p.set_defaults(func=run)


@command("ablate")
def _ablate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate",
        help="the SGP-SAM ablation (methods × seeds): on the demo's synthetic data, or on any run config",
        description=(
            "Trains every method (default: finetune, finetune_zoom, sgp_dice, sgp_sam) with every seed, each in "
            "OUT/<method>_seed<seed>/, evaluates each on the test set (one centre click per lesion) and writes "
            "OUT/ablation.md and .json (mean ± sd over seeds, paired comparison with the first method, gate "
            "activation rate by lesion size). Without CONFIG: the demo's synthetic data and pretrained tiny model. "
            "With CONFIG (a YAML or a preset such as liver_sgp_sam, with key=value overrides, e.g. "
            "data.root=/data/Task03_Liver model.checkpoint=/weights/sam_med3d_turbo.pth): every run uses that "
            "config but for model.method and train.seed; the test set is data.splits' test list, else a seeded "
            "--test-fraction of the cases (OUT/splits.json), used for nothing else. A second call skips finished "
            "runs and resumes a half-finished one from its last.pt; --only-run / --shard spread runs over processes "
            "or GPUs, and a call without them collects the table."
        ),
    )
    p.add_argument("config", nargs="?", default=None, help="run config YAML or packaged preset (default: the demo)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config changes (with CONFIG)")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/ablation, or runs/ablation_<config name>)"
    )
    p.add_argument("--methods", default="finetune,finetune_zoom,sgp_dice,sgp_sam", help="comma-separated methods")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated training seeds (default 0,1,2,3,4)")
    p.add_argument("--quick", action="store_true", help="smoke-run sizes (demo data only)")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="with CONFIG and no data.splits: share of the cases held out as the test set (default 0.2)",
    )
    p.add_argument(
        "--clicks",
        type=int,
        default=None,
        help="with CONFIG: clicks per test lesion of the interactive protocol (default 10; 0: none)",
    )
    p.add_argument(
        "--only-run", action="append", default=[], metavar="METHOD:SEED", help="make only this run (repeatable)"
    )
    p.add_argument("--shard", default=None, metavar="I/N", help="make every N-th run from the I-th (from 0)")
    add_zoom_flag(p, default=None)
    p.add_argument(
        "--repeat-check",
        default=None,
        metavar="METHOD:SEED",
        help="retrain this finished run of the ablation in --out (same CONFIG/overrides or --quick) from its recorded "
        "config and say whether it reproduces bit for bit, and if not how much its test metrics move",
    )

    def run(a: argparse.Namespace) -> int:
        if a.repeat_check is not None:
            return _repeat_check(a)
        from lesionsam.inference.zoom import parse_zoom
        from lesionsam.models import known_methods
        from lesionsam.utils.options import look_up_option
        from lesionsam.workflows.ablate import (
            CLICKS,
            TEST_FRACTION,
            ablate,
            ablate_config,
            parse_run,
            parse_seeds,
            parse_shard,
        )

        methods = [look_up_option(m.strip(), known_methods(), what="method") for m in a.methods.split(",") if m]
        seeds = parse_seeds(a.seeds)
        only = [parse_run(r) for r in a.only_run]
        shard = parse_shard(a.shard) if a.shard is not None else None
        progress = sys.stderr.isatty()
        if a.config is None or "=" in a.config:
            if a.config is not None or a.overrides:
                raise ValueError("key=value overrides need a CONFIG first (e.g. lesionsam ablate liver_sgp_sam ...)")
            if a.test_fraction is not None or a.clicks is not None:
                raise ValueError("--test-fraction and --clicks are for a CONFIG's ablation, not the demo's")
            out = a.out or Path("runs/ablation")
            result = ablate(
                out, methods=methods, seeds=seeds, quick=a.quick, progress=progress, only=only, shard=shard, zoom=a.zoom
            )
        else:
            from lesionsam.configs import resolve_config

            if a.quick:
                raise ValueError("--quick sets the demo's sizes; with CONFIG set train.epochs=... instead")
            result = ablate_config(
                resolve_config(a.config),
                overrides=a.overrides,
                out=a.out,
                methods=methods,
                seeds=seeds,
                test_fraction=TEST_FRACTION if a.test_fraction is None else a.test_fraction,
                clicks=CLICKS if a.clicks is None else a.clicks,
                only=only,
                shard=shard,
                progress=progress,
                zoom=parse_zoom(a.zoom or "off"),
            )
        if result is not None:
            print(result)
        return 0

    p.set_defaults(func=run)


def _repeat_check(a: argparse.Namespace) -> int:
    """``lesionsam ablate --repeat-check METHOD:SEED``: one run retrained and compared (no ablation is made)."""
    from lesionsam.workflows.ablate import parse_run
    from lesionsam.workflows.repeat_check import repeat_check

    run = parse_run(a.repeat_check, "--repeat-check")
    if a.only_run or a.shard is not None:
        raise ValueError("--repeat-check retrains one run: leave out --only-run and --shard")
    config = None if a.config is None or "=" in a.config else a.config
    if config is None and (a.config is not None or a.overrides):
        raise ValueError("key=value overrides need a CONFIG first (e.g. lesionsam ablate liver_sgp_sam ...)")
    if config is not None:
        from lesionsam.configs import resolve_config

        if a.quick:
            raise ValueError("--quick sets the demo's sizes; with CONFIG give the ablation's key=value overrides")
        config = resolve_config(config)
    out = a.out or (Path("runs/ablation") if config is None else None)
    if out is None:
        from lesionsam.config import load_run_config

        out = Path("runs") / f"ablation_{load_run_config(config, a.overrides).name}"
    print(repeat_check(out, run, config=config, overrides=a.overrides, quick=a.quick, progress=sys.stderr.isatty()))
    return 0


@command("text-study")
def _text_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "text-study",
        help="RefSAM3D on synthetic tumours + cysts: per-class Dice with text, clicks and both",
        description=(
            "Trains a tiny RefSAM3D (from the demo's anatomy-pretrained model) on a synthetic data set with two lesion "
            "classes and reports per-class Dice for text alone, one centre click per lesion alone, and both; writes "
            "OUT/text_study.md and .json."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("runs/text_study"), help="output folder")
    p.add_argument("--quick", action="store_true", help="smoke-run sizes")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")

    def run(a: argparse.Namespace) -> int:
        from lesionsam.workflows.text_study import text_study

        print(text_study(a.out, quick=a.quick, seed=a.seed, progress=sys.stderr.isatty()))
        return 0

    p.set_defaults(func=run)


@command("auto-study")
def _auto_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "auto-study",
        help="H-SAM with no prompt vs a promptable method with one oracle click per lesion (tumours + cysts)",
        description=(
            "Trains a tiny H-SAM (two lesion classes, no prompt) and a promptable baseline under the same budget on "
            "synthetic tumours + cysts, from the demo's anatomy-pretrained model, and reports per class the Dice and "
            "lesion-wise detection F1 of H-SAM --auto against the baseline given one centre click per lesion; "
            "writes OUT/auto_study.md and .json."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("runs/auto_study"), help="output folder")
    p.add_argument("--baseline", default="finetune", help="promptable method to compare with (default finetune)")
    p.add_argument("--quick", action="store_true", help="smoke-run sizes")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")

    def run(a: argparse.Namespace) -> int:
        from lesionsam.workflows.auto_study import auto_study

        print(auto_study(a.out, quick=a.quick, seed=a.seed, baseline=a.baseline, progress=sys.stderr.isatty()))
        return 0

    p.set_defaults(func=run)
