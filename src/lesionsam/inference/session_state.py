"""What an interactive session uses of its engine (:class:`Engine`), keeps per lesion (its states, for undo/redo)
and what an interaction answers (:class:`Update`), with the slice arithmetic of regions on the input grid."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from lesionsam.data.io import Volume
from lesionsam.data.transforms import Preprocessed, Preprocessor
from lesionsam.inference.windows import Bound, ChainState, EmbeddingCache, WindowRunner
from lesionsam.inference.zoom import ZoomPolicy, ZoomView
from lesionsam.models import SegModel

#: (D, H, W) slices of the input grid.
Slices3 = tuple[slice, slice, slice]
EMPTY: Slices3 = (slice(0, 0), slice(0, 0), slice(0, 0))


class Engine(Protocol):
    """What an interactive session uses of the model and its settings: a
    :class:`~lesionsam.inference.predictor.Predictor` is one."""

    model: SegModel
    device: torch.device
    threshold: float
    clicked_only: bool
    preprocessor: Preprocessor
    zoom: ZoomPolicy | None

    def prepare(self, image: Volume | str | os.PathLike[str]) -> Preprocessed:
        """The image checked and preprocessed onto the model's grid."""
        ...

    def runner(self, pre: Preprocessed | None = None) -> WindowRunner:
        """The window engine on ``pre``."""
        ...

    def check_text(self, text: str | None) -> None:
        """``ValueError`` unless ``text`` fits the model's prompts."""
        ...


@dataclass(frozen=True)
class Update:
    """What one interaction changed, for a viewer to patch its overlay.

    Attributes:
        lesion: the lesion's id (1, 2, ...; never reused in a session).
        region: (D, H, W) slices of the input grid that changed (may be empty).
        labels: (D, H, W) uint16 label-map patch for ``region``: 0 or lesion ids.
        volume_ml: this lesion's volume after the update, mL.
    """

    lesion: int
    region: Slices3
    labels: np.ndarray
    volume_ml: float


@dataclass(frozen=True)
class LesionInfo:
    """One lesion of a session: its id, volume (mL), number of prompts and bounding slices (None when empty)."""

    id: int
    volume_ml: float
    n_prompts: int
    bbox: Slices3 | None


@dataclass(frozen=True)
class LesionState:
    """One lesion after some prompts (immutable: undo/redo move between these).

    Attributes:
        prompts: the prompts as recorded (JSON-able), in order.
        center: canonical (d, h, w) centre of the first window.
        dhw: (N, 3) canonical clicks, in order; labels: (N,) 1 positive / 0 negative.
        chain: where the first window's click chain stands.
        bound: a 3D box's canonical extent the lesion is cut to, or None.
        region: input-grid slices of ``score``; score: the lesion's probability there (0 where not covered).
        windows: how many model windows the last segmentation ran.
        view: the lesion's zoomed view (:mod:`lesionsam.inference.zoom`), or None: the session's usual grid.
            ``center``, ``dhw``, ``bound`` and ``chain`` are on the grid of the lesion's frame (the view's, or the
            usual one).
        framed: whether the frame is chosen (by the first segmentation of the lesion's first prompt; refining
            prompts keep it, so that they decode from its cached embedding).
    """

    prompts: tuple[dict[str, Any], ...] = ()
    center: np.ndarray | None = None
    dhw: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    chain: ChainState = field(default_factory=ChainState)
    bound: Bound | None = None
    region: Slices3 = EMPTY
    score: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    windows: int = 0
    view: ZoomView | None = None
    framed: bool = False


@dataclass
class LesionEntry:
    """A lesion's history of states (``position`` is the current one) and its windows' cached embeddings."""

    history: list[LesionState]
    position: int = 0
    cache: EmbeddingCache = field(default_factory=dict)

    @property
    def state(self) -> LesionState:
        return self.history[self.position]


def union(a: Slices3, b: Slices3) -> Slices3:
    """The smallest slices holding both (an empty one is ignored)."""
    if size(a) == 0:
        return b
    if size(b) == 0:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def intersect(a: Slices3, b: Slices3) -> Slices3 | None:
    """The common part, or None when there is none."""
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True))
    return None if any(s.stop <= s.start for s in out) else out  # type: ignore[return-value]


def size(region: Slices3) -> int:
    """Voxels in ``region``."""
    return int(np.prod([max(0, s.stop - s.start) for s in region]))
