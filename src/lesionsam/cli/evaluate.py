"""``lesionsam evaluate``: Dice, NSD, HD95, ASSD, lesion-wise detection and panoptic quality of a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lesionsam.cli.main import add_zoom_flag, command


@command("evaluate")
def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predicted masks against ground truth (CSV + JSON + printed table)",
        description=(
            "Pair PRED_DIR and GT_DIR files by case id (file name without .nii.gz/.nii/.nrrd/.mha; predictions may "
            "add _pred or nnU-Net's _0000) and report Dice, normalised surface Dice (area-weighted by default), "
            "HD95 and ASSD (mm, from the image spacing), lesion-wise detection (26-connected components: TP/FP/FN, "
            "F1, Dice and detection by lesion volume <0.5, 0.5-1, 1-5, 5-10, >=10 cm3, lower bound inclusive, and "
            "<1, >=1 cm3) and panoptic quality (RQ, SQ, PQ; one-to-one IoU "
            "matching). Empty masks: both empty = Dice 1, NSD 1, HD95 0, ASSD 0; one empty = Dice 0, NSD 0, HD95 and "
            "ASSD undefined (left out of their means and counted). Lesion-free cases are reported apart."
        ),
    )
    p.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="folder of predicted masks")
    p.add_argument("gt_dir", type=Path, metavar="GT_DIR", help="folder of ground-truth label maps (e.g. labelsTr)")
    p.add_argument(
        "--label",
        type=int,
        default=None,
        metavar="N",
        help="ground-truth value of the lesion (MSD liver tumour = 2, MSD brain enhancing tumour = 3); default: the "
        "one label of GT_DIR's dataset.json (beside it or in it) named like a lesion (tumour, lesion, cancer...), "
        "else required",
    )
    p.add_argument(
        "--pred-label",
        type=int,
        default=None,
        metavar="N",
        help="only this prediction value is lesion (default: any value > 0, e.g. one value per lesion)",
    )
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (default: PRED_DIR/metrics)")
    p.add_argument(
        "--nsd-tolerance",
        type=float,
        default=2.0,
        metavar="MM",
        help="normalised surface Dice tolerance in mm (default 2)",
    )
    p.add_argument(
        "--nsd",
        choices=("area", "voxel"),
        default="area",
        help="NSD surface: 'area' weights each surface element by its area (the published surface Dice, as "
        "DeepMind's surface-distance and MONAI use_subvoxels=True; default); 'voxel' counts boundary voxels",
    )
    p.add_argument(
        "--lesion-matching",
        choices=("overlap", "iou"),
        default="overlap",
        help="lesion detection rule: 'overlap' = a GT lesion is found if any predicted voxel touches it (default); "
        "'iou' = one-to-one matching by IoU >= --iou-threshold, as panoptica",
    )
    p.add_argument(
        "--iou-threshold",
        type=float,
        default=0.5,
        metavar="T",
        help="IoU threshold of --lesion-matching iou and of panoptic quality, in (0, 1] (default 0.5)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="skip ground-truth cases that have no prediction (default: error)",
    )

    def run(a: argparse.Namespace) -> int:
        from lesionsam.workflows.evaluate import evaluate

        result = evaluate(
            a.pred_dir,
            a.gt_dir,
            label=a.label,
            announce=lambda note: print(f"lesionsam evaluate: {note}", file=sys.stderr),
            pred_label=a.pred_label,
            out=a.out,
            nsd_tolerance_mm=a.nsd_tolerance,
            nsd_mode=a.nsd,
            lesion_matching=a.lesion_matching,
            lesion_iou_threshold=a.iou_threshold,
            allow_missing=a.allow_missing,
            progress=sys.stderr.isatty(),  # no bar in logs or captured output
        )
        print(result.table())
        print(f"\nwrote {result.csv_path} and {result.json_path}")
        return 0

    p.set_defaults(func=run)


@command("evaluate-clicks")
def _evaluate_clicks_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-clicks",
        help="the interactive protocol: Dice after 1..N simulated clicks per lesion, AUC, NoC@80/90",
        description=(
            "For every lesion (26-connected component of the lesion label) of every case in LABELS_DIR: a first "
            "click inside it, then one click per round on the error region of the current prediction (as in "
            "training: false negative = positive click, false positive = negative click; seeded per case and "
            "lesion), the previous mask fed back to the model. Reports Dice after each click, the area under the "
            "Dice-vs-clicks curve (divided by N-1) and the clicks needed to reach Dice 0.8 / 0.9 (NoC@80/90; N when "
            "not reached, counted as failed). Writes clicks.csv and clicks.json into --out. With --protocol cvpr25: "
            "the CVPR 2025 interactive challenge's procedure on the lesion label as one target (a box on the middle "
            "ground-truth slice, then 5 clicks each at the centre of the largest error); Dice and NSD (2 mm) after "
            "every step, DSC_AUC and NSD_AUC over the clicks, final DSC and NSD, time per case; writes cvpr25.csv "
            "and cvpr25.json."
        ),
    )
    p.add_argument("images_dir", type=Path, metavar="IMAGES_DIR", help="folder of scans (e.g. imagesTr)")
    p.add_argument("labels_dir", type=Path, metavar="LABELS_DIR", help="folder of label maps (e.g. labelsTr)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--checkpoint", type=Path, default=None, metavar="CKPT", help="lesionsam or SAM-Med3D checkpoint")
    p.add_argument("--preset", default=None, metavar="NAME", help="backbone preset for official SAM-Med3D files")
    p.add_argument("--label", type=int, default=None, metavar="N", help="lesion label (default: from dataset.json)")
    p.add_argument(
        "--protocol",
        choices=("lesionsam", "cvpr25"),
        default="lesionsam",
        help="lesionsam: per lesion, N clicks (default); cvpr25: the CVPR 2025 challenge's box + 5 clicks",
    )
    p.add_argument(
        "--clicks", type=int, default=None, metavar="N", help="clicks per lesion (default 10; lesionsam protocol)"
    )
    p.add_argument(
        "--click-mode",
        choices=("random", "center"),
        default=None,
        help="click simulation (default random; lesionsam protocol)",
    )
    p.add_argument(
        "--box",
        choices=("2d", "3d"),
        default=None,
        help="cvpr25 protocol: the box given to the model, on the middle slice (2d, default) or over the z-range (3d)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated clicks (default 0)")
    p.add_argument("--channel", type=int, default=None, metavar="C", help="channel of multi-channel images")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="cases in N processes on the CPU, torch's threads shared among them (default 1; the same results as "
        "one process with that many threads each)",
    )
    add_zoom_flag(p)

    def run(a: argparse.Namespace) -> int:
        from lesionsam.inference.zoom import parse_zoom
        from lesionsam.workflows.clicks import evaluate_clicks

        if a.protocol == "cvpr25" and (a.clicks is not None or a.click_mode is not None):
            raise ValueError("--clicks and --click-mode are for --protocol lesionsam; cvpr25 gives a box and 5 clicks")
        if a.protocol == "lesionsam" and a.box is not None:
            raise ValueError("--box is for --protocol cvpr25")
        result = evaluate_clicks(
            a.images_dir,
            a.labels_dir,
            out=a.out,
            checkpoint=a.checkpoint,
            preset=a.preset,
            label=a.label,
            n_clicks=10 if a.clicks is None else a.clicks,
            click_mode=a.click_mode or "random",
            seed=a.seed,
            channel=a.channel,
            device=a.device,
            zoom=parse_zoom(a.zoom),
            announce=lambda note: print(f"lesionsam evaluate-clicks: {note}", file=sys.stderr),
            progress=sys.stderr.isatty(),
            protocol=a.protocol,
            box=a.box or "2d",
            workers=a.workers,
        )
        print(result.table())
        print(f"\nwrote {result.csv_path} and {result.json_path}")
        return 0

    p.set_defaults(func=run)
