"""``lesionsam evaluate`` stays lean: scoring a case never imports torch, MONAI or transformers (issue 13).

``import monai`` loads every MONAI sub-package (its networks import transformers when installed): seconds of
start-up for a command that needs NumPy and SciPy only. Checked in a fresh interpreter, through the CLI entry
point, on a real (tiny) case, so that any import on the way is caught.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from lesionsam.data.io import Volume, write_image

HEAVY = ("torch", "monai", "transformers")

SCRIPT = """
import json, sys
from lesionsam.cli.main import main
code = main(["evaluate", sys.argv[1], sys.argv[2], "--label", "1", "--out", sys.argv[3]])
print(json.dumps({"code": code, "loaded": [m for m in HEAVY_NAMES if m in sys.modules]}))
""".replace("HEAVY_NAMES", repr(HEAVY))


def test_evaluate_cli_imports_no_torch_monai_or_transformers(tmp_path: Path) -> None:
    ref = Volume(
        array=np.zeros((10, 12, 12), np.uint8),
        spacing=(0.8, 0.8, 2.5),
        origin=(0.0, 0.0, 0.0),
        direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
    )
    gt = np.zeros((10, 12, 12), np.uint8)
    gt[2:6, 3:8, 3:8] = 1
    pred = np.roll(gt, 1, axis=2)
    write_image(gt, tmp_path / "gt" / "c1.nii.gz", reference=ref)
    write_image(pred, tmp_path / "pred" / "c1.nii.gz", reference=ref)

    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "pred"), str(tmp_path / "gt"), str(tmp_path / "metrics")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    assert (tmp_path / "metrics" / "metrics.json").is_file()  # the case was really scored
    assert json.loads((tmp_path / "metrics" / "metrics.json").read_text())["cases"][0]["nsd"] is not None
    assert result["loaded"] == []
