"""Shared fixtures: the official-implementation fixture files in ../shared/spec."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch


def _spec_dir() -> Path:
    env = os.environ.get("LESIONSAM_SPEC_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "shared" / "spec"
        if cand.is_dir():
            return cand
        cand = parent.parent / "shared" / "spec"
        if cand.is_dir():
            return cand
    return here.parents[2] / "shared" / "spec"


SPEC = _spec_dir()


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    if not SPEC.is_dir():
        pytest.fail(f"shared/spec not found (looked for {SPEC}); set LESIONSAM_SPEC_DIR")
    return SPEC


@pytest.fixture(scope="session")
def official_io(spec_dir: Path) -> dict[str, torch.Tensor]:
    """Inputs and outputs of the official SAM-Med3D implementation on the tiny checkpoint."""
    data = np.load(spec_dir / "fixtures" / "tiny_official_io.npz")
    return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture(scope="session")
def official_ckpt(spec_dir: Path) -> Path:
    return spec_dir / "fixtures" / "tiny_official_ckpt.pth"


@pytest.fixture(scope="session")
def tiny_fixture_config(spec_dir: Path) -> dict:
    return json.loads((spec_dir / "fixtures" / "tiny_config.json").read_text())
