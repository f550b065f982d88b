"""The console script's entry points."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_lists_every_command() -> None:
    """``python -m lesionsam.cli.main`` (what ``torchrun -m`` runs) knows the same commands as ``lesionsam``."""
    out = subprocess.run(
        [sys.executable, "-m", "lesionsam.cli.main", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("demo", "train", "predict", "evaluate", "bench", "text-study"):
        assert name in out, f"{name!r} missing from `python -m lesionsam.cli.main --help`:\n{out}"
