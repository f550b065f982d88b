"""``lesionsam serve``: a local web viewer (NiiVue) and HTTP API for interactive lesion segmentation."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lesionsam.cli.main import add_runtime_flag, add_zoom_flag, command

_DESCRIPTION = """\
Serve the images under --root in a web page (three planes and a 3D view): click on a lesion to segment it
(shift-click or the '−' mode removes), draw a box on a slice, undo/redo, delete, and save the mask on the input's
exact grid next to a JSON of the prompts used. The page uses only the HTTP API, which scripts and other viewers can
use too: http://HOST:PORT/docs documents it; coordinates are 0-based voxel indices (i, j, k) in ITK order.

Security: the server binds 127.0.0.1 (this machine only) unless --host says otherwise, and has no authentication.
It reads and writes only inside --root (paths with '..', absolute paths and symlinks leading out are refused);
uploads larger than --max-upload-mb are refused; no other web page may call the API unless --cors-origin allows it.

3D Slicer, napari and ITK-SNAP: the same server speaks nnInteractive's remote protocol at http://HOST:PORT (give
that URL to the viewer's remote mode; points, 2D/3D include boxes and undo work). --api-key (or the environment
variable LESIONSAM_API_KEY) makes that protocol ask for the key (the viewers' API-key field); the page does not.
"""


@command("serve")
def _serve_parser(sub: argparse._SubParsersAction) -> None:
    from lesionsam.serve.server import DEFAULT_PORT

    p = sub.add_parser(
        "serve",
        help="web viewer + HTTP API for interactive segmentation (clicks, boxes, undo, save)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", type=Path, required=True, metavar="FOLDER", help="folder whose images are served")
    p.add_argument("--checkpoint", default=None, help="lesionsam checkpoint or official SAM-Med3D(-turbo) .pth")
    p.add_argument("--preset", default=None, help="backbone preset of an official file (default sam_med3d_vit_b)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--max-upload-mb", type=float, default=1024.0, metavar="N", help="largest upload (default 1024)")
    p.add_argument("--max-sessions", type=int, default=4, metavar="N", help="most open images at once (default 4)")
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages of ORIGIN (e.g. http://localhost:3000) call the API (repeatable; default: none)",
    )
    p.add_argument(
        "--proposals",
        default=None,
        metavar="CKPT",
        help="a prompt-free (H-SAM) or text-referred (RefSAM3D) lesionsam checkpoint: the page can then propose "
        "lesions in the whole image (automatic, or from a text) and segment one with a click on 'accept'",
    )
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="bearer key nnInteractive's remote protocol requires (default: $LESIONSAM_API_KEY, else none; the "
        "environment variable keeps the key out of the process list)",
    )
    p.add_argument(
        "--model-license",
        default=None,
        metavar="TEXT",
        help="the model's licence as the remote protocol's /capabilities reports it (default: lesionsam code "
        "Apache-2.0; weights: the checkpoint owner's terms, official SAM-Med3D weights Apache-2.0)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="compute type of the clicks' and boxes' model windows (bfloat16: autocast, faster on recent CPUs)",
    )

    add_zoom_flag(p)
    add_runtime_flag(p)

    def run(a: argparse.Namespace) -> int:
        from lesionsam.inference.zoom import parse_zoom
        from lesionsam.serve.server import serve

        serve(
            a.root,
            checkpoint=a.checkpoint,
            preset=a.preset,
            host=a.host,
            port=a.port,
            max_upload_mb=a.max_upload_mb,
            max_sessions=a.max_sessions,
            cors_origins=a.cors_origin,
            proposals=a.proposals,
            api_key=a.api_key if a.api_key is not None else os.environ.get("LESIONSAM_API_KEY") or None,
            model_license=a.model_license,
            device=a.device,
            dtype=a.dtype,
            zoom=parse_zoom(a.zoom),
            runtime=a.runtime,
            warn=lambda line: print(f"lesionsam serve: {line}", file=sys.stderr),
        )
        return 0

    p.set_defaults(func=run)
