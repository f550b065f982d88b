"""``lesionsam demo`` (the main job) and ``lesionsam ablate`` (the ablation table)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lesionsam.cli.main import command


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
        help="the SGP-SAM ablation (methods × seeds) on the demo's synthetic data",
        description=(
            "Trains every method (default: finetune, finetune_zoom, sgp_dice, sgp_sam) with every seed on the demo's "
            "data and pretrained model, evaluates each on the test set and writes OUT/ablation.md and .json "
            "(mean ± sd over seeds of Dice, Dice of lesions < 1 cm³, lesion F1, gate activation rate)."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("runs/ablation"), help="output folder (default runs/ablation)")
    p.add_argument("--methods", default="finetune,finetune_zoom,sgp_dice,sgp_sam", help="comma-separated methods")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--quick", action="store_true", help="smoke-run sizes")

    def run(a: argparse.Namespace) -> int:
        from lesionsam.models import known_methods
        from lesionsam.utils.options import look_up_option
        from lesionsam.workflows.demo import ablate

        methods = [look_up_option(m.strip(), known_methods(), what="method") for m in a.methods.split(",") if m]
        try:
            seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {a.seeds!r}") from None
        print(ablate(a.out, methods=methods, seeds=seeds, quick=a.quick, progress=sys.stderr.isatty()))
        return 0

    p.set_defaults(func=run)


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
