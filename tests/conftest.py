"""Shared fixtures: the official-implementation reference files in ``tests/fixtures`` (inside the repository)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The folder of reference files (see ``tests/fixtures/README.md``)."""
    return FIXTURES


@pytest.fixture(scope="session")
def official_keys_tsv() -> Path:
    """Every key and shape of the official SAM-Med3D ``vit_b_ori`` state dict."""
    return FIXTURES / "sam_med3d_vit_b_ori.keys.tsv"


@pytest.fixture(scope="session")
def official_io() -> dict[str, torch.Tensor]:
    """Inputs and outputs of the official SAM-Med3D implementation on the tiny checkpoint."""
    data = np.load(FIXTURES / "tiny_official_io.npz")
    return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture(scope="session")
def official_ckpt() -> Path:
    return FIXTURES / "tiny_official_ckpt.pth"


@pytest.fixture(scope="session")
def tiny_fixture_config() -> dict:
    return json.loads((FIXTURES / "tiny_config.json").read_text())
