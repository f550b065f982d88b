"""``lesionsam train``: train any registered method from a config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lesionsam.cli.main import command


@command("train")
def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a method (SAM-Med3D fine-tuning, SGP-SAM, ...) from a config",
        description=(
            "Train from CONFIG.yaml (see configs/ in the package: liver_sgp_sam.yaml, brats_sgp_sam.yaml, "
            "demo.yaml) with key=value overrides, e.g. train.epochs=50 model.method=finetune. The run folder gets "
            "config.yaml, splits.json, provenance.json, train_log.csv, last.pt and best.pt. Multi-GPU: torchrun "
            "--nproc_per_node N -m lesionsam.cli.main train CONFIG."
        ),
    )
    p.add_argument("config", help="run config YAML, or the name of a packaged preset (e.g. demo)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config changes")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue exactly from <out>/last.pt")

    def run(a: argparse.Namespace) -> int:
        import logging

        from lesionsam.configs import resolve_config

        # One line per epoch (loss, time, ETA) even when stderr is not a terminal (logs, batch jobs).
        logging.getLogger("lesionsam.training").setLevel(logging.INFO)
        from lesionsam.workflows.train import train

        result = train(
            resolve_config(a.config), out=a.out, overrides=a.overrides, resume=a.resume, progress=sys.stderr.isatty()
        )
        print(f"{result.out_dir}: best validation Dice {result.best_val_dice:.4f}; last {result.last_checkpoint}")
        return 0

    p.set_defaults(func=run)
