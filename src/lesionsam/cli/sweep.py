"""``lesionsam sweep``: the validation-split sweeps that choose the Zoom Loss's and SGP-SAM's defaults."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lesionsam.cli.main import command


@command("sweep")
def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="choose defaults on held-out selection cases: Zoom Loss readings (--stage loss), gate budgets (gate), "
        "zoom-in and multi-scale training for small lesions (scale)",
        description=(
            "Transfers the demo's anatomy-pretrained tiny model with every variant of a stage under the demo's "
            "budget and scores each on the validation split of the demo's training data (one centre click per "
            "tumour, whole volume); the test cases are never used. Writes OUT/sweep.md and .json; an interrupted "
            "sweep continues where it stopped."
        ),
    )
    p.add_argument(
        "--stage", choices=("loss", "gate", "scale"), default="loss", help="which defaults to sweep (default loss)"
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/sweep_<stage>)")
    p.add_argument("--quick", action="store_true", help="smoke-run sizes")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument(
        "--only", default=None, metavar="NAME,...", help="run these variants of the stage only (default: all)"
    )

    def run(a: argparse.Namespace) -> int:
        from lesionsam.workflows.sweep import STAGES, sweep

        variants, title = STAGES[a.stage]
        if a.only:
            wanted = [n.strip() for n in a.only.split(",") if n.strip()]
            known = [v.name for v in variants]
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise ValueError(f"--only: unknown {a.stage} variant(s) {unknown}; known: {', '.join(known)}")
            variants = tuple(v for v in variants if v.name in wanted)
        out = a.out or Path(f"runs/sweep_{a.stage}")
        print(sweep(out, variants=variants, seed=a.seed, quick=a.quick, progress=sys.stderr.isatty(), title=title))
        return 0

    p.set_defaults(func=run)
