"""Fixtures of the ``lesionsam serve`` tests: a synthetic oblique, anisotropic case in a temporary served folder and
a stand-in promptable model whose masks are known (the bright blob holding the last positive click).

Every error answer any serve test provokes (TestClient or a real uvicorn server in this process) is recorded by
:func:`error_answers` and checked when the test ends: none may name the served folder's absolute path, the system
temp folder or a library's raw exception text.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi import FastAPI

from lesionsam.data.io import Volume, write_image
from lesionsam.data.transforms import PreprocessConfig
from lesionsam.inference.predictor import Predictor
from lesionsam.inference.session import InteractiveSession
from lesionsam.models import Prompts, SegOutput
from stand_ins import StandInModel, bright_blob_output, oblique_volume

#: Blobs of the synthetic case: (d, h, w, radius mm) in array order (k, j, i), placed off-centre on purpose so
#: that a swapped or flipped axis lands the click off the lesion.
BLOBS = ((10, 20, 42, 6.0), (20, 52, 15, 5.0))
SHAPE = (30, 70, 60)  # (D, H, W) = (nk, nj, ni)
SPACING = (0.8, 0.9, 2.0)  # (i, j, k) mm


class BrightBlobModel(StandInModel):
    """Stand-in promptable model: the lesion is the bright (> 1, normalised units) connected region holding the
    last positive click, minus a ball of radius 3 voxels around every negative click. Deterministic, so the server's
    answers can be compared with the library's, and meaningful, so a click on a blob must give that blob."""

    accepted_prompts = frozenset({"points", "mask"})

    def forward(self, image: torch.Tensor, prompts: Prompts) -> SegOutput:
        return bright_blob_output(image, prompts)


class BrightAuto(StandInModel):
    """Prompt-free stand-in: class 1 = voxels brighter than 1 (normalised units), as (B, 2, S³) logits."""

    prompt_free = True

    @property
    def num_classes(self) -> int:
        return 1

    def forward(self, image: torch.Tensor, prompts: Prompts | None = None) -> SegOutput:
        bright = (image > 1.0).float()
        logits = 10.0 * torch.cat([1 - bright, bright], dim=1)
        low = F.interpolate(logits, scale_factor=0.25, mode="trilinear", align_corners=False)
        return SegOutput(low_res_logits=low, logits=logits, iou=torch.ones(image.shape[0], 2))


def bright_predictor() -> Predictor:
    return Predictor(BrightBlobModel(), preprocess=PreprocessConfig(spacing=(1.5, 1.5, 1.5)), max_windows=4)


def tiny_predictor() -> Predictor:
    """The real tiny SAM-Med3D architecture with seeded random weights (a negative logit offset: non-empty masks)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Predictor.from_checkpoint(None, preset="tiny", max_windows=2, logit_offset=-1.0)


def oblique_case() -> tuple[Volume, np.ndarray]:
    """An int16 CT-like volume (HU), oblique direction, anisotropic spacing, with bright balls :data:`BLOBS`; and
    its (D, H, W) label array (blob n = n)."""
    volume, labels = oblique_volume(SHAPE, SPACING, BLOBS)
    return volume.with_array(volume.array.astype(np.int16)), labels.array


def blob_centre_ijk(n: int) -> tuple[int, int, int]:
    """The voxel (i, j, k) at the centre of blob ``n`` (1-based)."""
    d, h, w, _ = BLOBS[n - 1]
    return (w, h, d)


@dataclass
class ServedCase:
    """A served folder holding ``case.nii.gz`` (and ``labels.nii.gz`` outside it, for reference)."""

    root: Path
    image: Path
    volume: Volume
    labels: np.ndarray


@pytest.fixture
def served_case(tmp_path: Path) -> ServedCase:
    root = tmp_path / "root"
    root.mkdir()
    volume, labels = oblique_case()
    image = write_image(volume.array, root / "case.nii.gz", reference=volume)
    return ServedCase(root=root, image=image, volume=volume, labels=labels)


@pytest.fixture
def bright_sessions() -> Callable[[Volume], InteractiveSession]:
    """``make_session`` of a server: one stand-in predictor shared by every session (as ``lesionsam serve`` does)."""
    predictor = bright_predictor()
    return lambda volume: InteractiveSession(predictor, volume)


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above for the test modules (which cannot import this conftest by name)."""
    return SimpleNamespace(
        bright_predictor=bright_predictor,
        tiny_predictor=tiny_predictor,
        oblique_case=oblique_case,
        blob_centre_ijk=blob_centre_ijk,
        blobs=BLOBS,
        auto_model=BrightAuto,
        leaks=leaks,
    )


#: Words of raw exception text (Python's, SimpleITK's) that no error answer may carry.
RAW_EXCEPTION_TEXT = ("Traceback", "[Errno", "Exception thrown in", ".cxx", "is not in the subpath of")


def leaks(detail: str, tmp_path: Path) -> list[str]:
    """What ``detail`` (an error body) shows that only the server should know: the test's folders (the served
    root lies under ``tmp_path``), the system temp folder, raw exception text."""
    secret = {str(tmp_path), str(tmp_path.resolve()), tempfile.gettempdir(), *RAW_EXCEPTION_TEXT}
    return sorted(s for s in secret if s in detail)


@pytest.fixture(autouse=True)
def error_answers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[tuple[str, int, str]]]:
    """``(path, status, body)`` of every answer >= 400 that a FastAPI app gives during the test; when the test
    ends, none may leak (:func:`leaks`)."""
    seen: list[tuple[str, int, str]] = []
    original = FastAPI.__call__

    async def recording(self: FastAPI, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await original(self, scope, receive, send)
            return
        status, body = [0], []

        async def spy(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and status[0] >= 400:
                body.append(message.get("body", b""))
            await send(message)

        try:
            await original(self, scope, receive, spy)
        finally:
            if status[0] >= 400:
                seen.append((scope["path"], status[0], b"".join(body).decode("utf-8", "replace")))

    monkeypatch.setattr(FastAPI, "__call__", recording)
    yield seen
    leaked = [(path, status, body, leaks(body, tmp_path)) for path, status, body in seen if leaks(body, tmp_path)]
    assert not leaked, f"error answers show what only the server should know: {leaked}"
