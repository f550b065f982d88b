"""``lesionsam synth``: a synthetic CT data set in the Medical Segmentation Decathlon layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesionsam.cli.main import command


@command("synth")
def _synth_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic CT data set (MSD layout) with an organ, vessels and small lesions",
        description=(
            "Write OUT/dataset.json, OUT/imagesTr/case_000.nii.gz, ... and OUT/labelsTr/case_000.nii.gz, ...: "
            "CT-like volumes (int16 HU, anisotropic spacing) with labels 0 background, 1 liver, 2 tumour, "
            "3 vessel (and 4 cyst with --lesion-classes 2). Lesions are irregular and range from tens of voxels to "
            "several cm³; with 2 or more cases the last one has no lesion. The same arguments write identical data."
        ),
    )
    p.add_argument("out", type=Path, metavar="OUT", help="folder to write the data set to (created if missing)")
    p.add_argument("--cases", type=int, required=True, metavar="N", help="number of cases (>= 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--size", type=int, default=96, help="edge length of the cubic volumes in voxels (default 96)")
    p.add_argument(
        "--format", dest="fmt", default="nii.gz", choices=["nii.gz", "nrrd"], help="file format (default nii.gz)"
    )

    p.add_argument(
        "--lesion-classes",
        type=int,
        default=1,
        choices=[1, 2],
        help="1: tumours only (default, output unchanged); 2: also round, water-like cysts (label 4 'cyst')",
    )

    def run(a: argparse.Namespace) -> int:
        import json

        from lesionsam.workflows.synth import synth

        out = synth(
            a.out, cases=a.cases, seed=a.seed, size=a.size, fmt=a.fmt, progress=True, lesion_classes=a.lesion_classes
        )
        meta = json.loads((out / "dataset.json").read_text())
        volumes = meta["lesion_volumes_mm3"]
        n_lesions = sum(len(v) for v in volumes.values())
        n_empty = sum(1 for v in volumes.values() if not v)
        cysts = ""
        if "cyst_volumes_mm3" in meta:
            cysts = f", {sum(len(v) for v in meta['cyst_volumes_mm3'].values())} cyst(s)"
        print(f"{out}: {a.cases} case(s), {n_lesions} lesion(s){cysts}, {n_empty} case(s) without lesion")
        return 0

    p.set_defaults(func=run)
