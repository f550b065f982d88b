"""``lesionsam export``: the image encoder and the prompt encoder + mask decoder as ONNX files, with a manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from lesionsam.cli.main import command

_DESCRIPTION = """\
Write CHECKPOINT's SAM-Med3D parts into a new folder DIR for ONNX Runtime (no PyTorch needed to run them):
encoder.onnx (one crop of the model's size S, 1x1xSxSxS), decoder.onnx (prompt encoder + mask decoder + upsampling;
--max-points clicks, unused ones with label -1, and the previous low-res logits with a has_mask flag), optionally
encoder.int8.onnx (--int8: dynamic int8 quantisation) and manifest.json (crop size, preprocessing: spacing and
intensity normalisation, method, input and output shapes, lesionsam version, the checkpoint's sha256, and the
differences from PyTorch measured while exporting). Use the folder with --runtime onnxruntime in predict, serve and
bench. Methods whose parts cannot be exported (SGP-SAM, RefSAM3D, H-SAM) say why. Needs pip install 'lesionsam[onnx]'.
"""


@command("export")
def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write the encoder and decoder as ONNX files (+ manifest) for ONNX Runtime",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "checkpoint", type=Path, metavar="CHECKPOINT", help="lesionsam checkpoint or official SAM-Med3D .pth"
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to create (must not exist)")
    p.add_argument("--preset", default=None, help="backbone preset of an official file (default sam_med3d_vit_b)")
    p.add_argument("--max-points", type=int, default=16, metavar="P", help="clicks per window the decoder takes (16)")
    p.add_argument("--int8", action="store_true", help="also write encoder.int8.onnx (dynamic int8 quantisation)")
    p.add_argument("--modality", default=None, choices=["CT", "MRI"], help="recorded normalisation (default: ckpt's)")
    p.add_argument("--spacing", type=float, default=None, metavar="MM", help="recorded spacing (default: ckpt's)")

    def run(a: argparse.Namespace) -> int:
        from lesionsam.workflows.export import export

        m = export(
            a.checkpoint,
            a.out,
            preset=a.preset,
            max_points=a.max_points,
            int8=a.int8,
            modality=a.modality,
            spacing=(a.spacing,) * 3 if a.spacing else None,
        )
        files = ", ".join(g.file for g in (m.encoder, m.decoder, m.encoder_int8) if g is not None)
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in m.check.items())
        print(
            f"{a.out}: {files}, manifest.json (method {m.method}, crop {m.crop_size}, {m.max_points} clicks; {diffs})"
        )
        return 0

    p.set_defaults(func=run)
