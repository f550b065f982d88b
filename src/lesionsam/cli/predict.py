"""``lesionsam predict``: segment lesions from clicks; masks are written on the input's own grid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lesionsam.cli.main import add_runtime_flag, add_zoom_flag, command

_DESCRIPTION = """\
Segment lesions in IMAGE (NIfTI, NRRD, MHA, a DICOM folder) or in every image of a folder, from clicks.

Coordinates: --point i,j,k is a 0-based voxel index in ITK order: i runs along the image's first axis (the
one that varies fastest on disk), as 3D Slicer shows it as IJK. With --world the three numbers are physical
millimetres in LPS, as ITK and DICOM use (3D Slicer displays RAS: negate x and y). The output label map has
the input's exact size, spacing, origin and direction: one value per lesion (1, 2, ...) or 0/1 with --binary.

A box (--box, or "box" in a prompt file) works with the official SAM-Med3D weights, which have no box embedding:
the lesion's window is centred on the box, a positive click goes to its centre and the ellipsoid inscribed in the
box is given as the prior mask (a 2D box is as deep as the mean of its two sides).

Clicks come from exactly one of: --point/--negative (one lesion), --box, --prompts FILE.json (several lesions, see
the README), --clicks-from LABELS (one centre click per connected lesion of --label in a label map; the
standard first-click benchmark). A text-referred model (RefSAM3D) takes --text "liver tumour", alone (the
whole volume is searched with sliding windows; each connected component becomes one lesion) or with clicks.
Text alone that names one of the classes the checkpoint was trained on is decided against the others (a voxel
is the text's where its class beats background and every other class); --no-compete turns that off.

--auto needs no prompt: a prompt-free model (H-SAM, method hsam) segments every lesion class it was trained on
in the whole volume (sliding windows, Gaussian blending); the mask holds the classes' label values (e.g. 2
tumour, 4 cyst), each connected component one lesion. --auto with clicks and --refine-checkpoint CKPT
re-segments the clicked lesions with that promptable model and puts them in place of what --auto found there.
"""


@command("predict")
def _predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment lesions from clicks, text or nothing (--auto); one image or a folder",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, metavar="IMAGE|INPUT_DIR", help="an image file, DICOM folder or folder")
    p.add_argument("--out", type=Path, required=True, metavar="MASK|OUTPUT_DIR", help="output mask or folder")
    model = p.add_argument_group("model")
    model.add_argument("--checkpoint", default=None, help="lesionsam checkpoint or official SAM-Med3D(-turbo) .pth")
    model.add_argument("--preset", default=None, help="backbone preset of an official file (default sam_med3d_vit_b)")
    prompts = p.add_argument_group(
        "what to segment by",
        "one source of clicks (--point/--negative/--box, --prompts or --clicks-from), or none with --text or --auto",
    )
    prompts.add_argument("--point", action="append", default=[], metavar="i,j,k", help="positive click (repeatable)")
    prompts.add_argument("--negative", action="append", default=[], metavar="i,j,k", help="negative click (repeatable)")
    prompts.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="i0,j0,k0,i1,j1,k1",
        help="a box around a lesion: inclusive voxel indices of two opposite corners (k0 == k1: a 2D box drawn on "
        "slice k); one lesion per --box (repeatable); --point/--negative with one --box refine it",
    )
    prompts.add_argument(
        "--world", action="store_true", help="--point/--negative are LPS millimetres, not voxel indices"
    )
    # The rules between these flags are checked in one place, Prompting.check (also for library calls), so that a
    # wrong combination is one error line like every other (argparse's own exclusive groups print the usage).
    prompts.add_argument("--prompts", type=Path, default=None, metavar="FILE", help="JSON prompts (several lesions)")
    prompts.add_argument("--clicks-from", type=Path, default=None, metavar="LABELS", help="label map (or folder)")
    whole = prompts.add_mutually_exclusive_group()
    whole.add_argument(
        "--text", default=None, help='text prompt for a text-referred model (RefSAM3D), e.g. "liver tumour"'
    )
    prompts.add_argument("--auto", action="store_true", help="no prompt: a prompt-free model (hsam) finds every lesion")
    prompts.add_argument(
        "--refine-checkpoint",
        default=None,
        metavar="CKPT",
        help="with --auto and clicks: promptable checkpoint that re-segments the clicked lesions",
    )
    prompts.add_argument(
        "--min-lesion-mm3",
        type=float,
        default=0.0,
        metavar="V",
        help="--auto / --text alone: drop found components under V mm³ (default 0: keep all)",
    )
    prompts.add_argument(
        "--no-compete",
        action="store_true",
        help="--text alone: threshold the text's own mask instead of deciding it against the checkpoint's other "
        "trained class texts",
    )
    prompts.add_argument(
        "--label",
        type=int,
        default=None,
        metavar="N",
        help="lesion value in the --clicks-from label maps; default: the one label of their dataset.json named like "
        "a lesion (tumour, lesion, cancer...), else the checkpoint's data.target_label, else required",
    )
    output = p.add_argument_group("output")
    output.add_argument("--channel", type=int, default=None, metavar="C", help="channel of a multi-channel image")
    output.add_argument("--probabilities", type=Path, default=None, metavar="PATH", help="also write probabilities")
    output.add_argument("--binary", action="store_true", help="write 0/1 instead of one value per lesion")
    running = p.add_argument_group("how the model runs")
    running.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    add_runtime_flag(running)
    running.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="compute dtype of the click/box model windows: bfloat16 runs them under autocast (default float32)",
    )
    running.add_argument(
        "--modality",
        default=None,
        choices=["CT", "MRI"],
        help="intensity normalisation (default: the checkpoint's training setting, else CT)",
    )
    running.add_argument(
        "--spacing",
        type=float,
        default=None,
        metavar="MM",
        help="isotropic model spacing in mm (default: the checkpoint's training setting, else 1.5)",
    )
    running.add_argument("--max-windows", type=int, default=8, help="most crops per lesion when growing (default 8)")
    add_zoom_flag(running)
    running.add_argument(
        "--all-components",
        action="store_true",
        help="keep every component the clicked windows found (default: only those a positive click touches)",
    )

    def run(a: argparse.Namespace) -> int:
        from lesionsam.inference.zoom import parse_zoom
        from lesionsam.workflows.predict import ModelChoice, PredictRequest, Prompting, predict

        request = PredictRequest(
            a.input,
            a.out,
            Prompting(
                points=tuple(a.point),
                negatives=tuple(a.negative),
                boxes=tuple(a.box),
                world=a.world,
                prompts=a.prompts,
                clicks_from=a.clicks_from,
                label=a.label,
                text=a.text,
                auto=a.auto,
                refine_checkpoint=a.refine_checkpoint,
                compete=not a.no_compete,
                min_lesion_mm3=a.min_lesion_mm3,
            ),
            ModelChoice(
                checkpoint=a.checkpoint,
                preset=a.preset,
                device=a.device,
                modality=a.modality,
                spacing=(a.spacing,) * 3 if a.spacing else None,
                max_windows=a.max_windows,
                all_components=a.all_components,
                dtype=a.dtype,
                zoom=parse_zoom(a.zoom),
                runtime=a.runtime,
            ),
            channel=a.channel,
            probabilities=a.probabilities,
            binary=a.binary,
        )
        cases = predict(
            request,
            announce=lambda note: print(f"lesionsam predict: {note}", file=sys.stderr),
            progress=sys.stderr.isatty(),
        )
        for c in cases:
            print(f"{c.mask}  ({c.lesions} lesion(s), {c.windows} crop(s), {c.seconds:.1f} s)")
        return 0

    p.set_defaults(func=run)
