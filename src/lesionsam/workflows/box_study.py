"""``python -m lesionsam.workflows.box_study CHECKPOINT DATA_ROOT``: box prompts against one centre click.

Parses the arguments, runs the study of :mod:`lesionsam.benchmarking.box_study` (per-lesion Dice of each prompt, or
with ``--bfloat16`` bfloat16 masks against float32 ones), prints its summary and writes the JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from lesionsam.benchmarking import box_study as study
from lesionsam.data.synthetic import LESION
from lesionsam.inference.predictor import Predictor
from lesionsam.utils.dataclass_io import atomic_write_bytes


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lesionsam.workflows.box_study CHECKPOINT ROOT``: print the summary table (and write JSON)."""
    p = argparse.ArgumentParser(description=study.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("root", type=Path, help="MSD-layout data set (imagesTr/, labelsTr/)")
    p.add_argument("--label", type=int, default=LESION)
    p.add_argument("--cases", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the per-lesion results as JSON")
    p.add_argument("--bfloat16", action="store_true", help="instead: compare bfloat16 masks with float32 masks")
    a = p.parse_args(argv)
    if a.bfloat16:
        result = study.compare_dtypes(a.checkpoint, a.root, label=a.label, cases=a.cases)
        print(study.format_dtype_comparison(result))
    else:
        predictor = Predictor.from_checkpoint(a.checkpoint)
        result = study.box_vs_click(predictor, a.root, label=a.label, cases=a.cases)
        print(study.format_box_table(result))
    if a.out is not None:
        atomic_write_bytes(a.out, (json.dumps(result, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
