"""One remote client's image and object, driven as nnInteractive's session is, through the one engine.

nnInteractive segments one object at a time into the client's target buffer; here that object is one lesion of an
:class:`~lesionsam.inference.session.InteractiveSession` on the image the client sent:

* **image**: the client's 4-D array (one channel) with the spacing of ``image_properties`` (in the array's axis
  order, 1 mm when absent). Its axes (a0, a1, a2) are taken as the engine's (D, H, W), so the engine's voxel
  (i, j, k) is (a2, a1, a0): every coordinate the client sends and every box it receives is in its own array order;
* a **positive point** or an **include box** on an empty object opens the lesion; later points refine it (the
  decoder only), a later include box starts it again from the box (as the engine's ``box`` does); **undo** goes
  back one prompt; **reset** empties the object. A negative point on an empty object and an exclude box are
  refused (400): the engine has no negative box, and a lesion starts from a positive prompt;
* each answer is the object's mask (0/1, in the target buffer's dtype) on the region that changed, with its box
  ``[[lo, hi] × 3]`` (half-open, array order): the client writes it into ``target_buffer[box]``. With
  ``run_prediction=false`` the prompt is applied and its region kept for the next ``/predict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lesionsam.data.io import Volume
from lesionsam.inference.session_state import EMPTY, Slices3, Update, size, union

if TYPE_CHECKING:
    from lesionsam.inference.session import InteractiveSession


@dataclass(frozen=True)
class Answer:
    """What an interaction sends back: whether it ran, the changed box (array order, half-open) and its patch."""

    ran: bool
    bbox: list[list[int]] | None = None
    patch: np.ndarray | None = None


def image_volume(image: np.ndarray, spacing: Sequence[float] | None) -> Volume:
    """The engine's volume of a client's (1, a0, a1, a2) image with spacing (s0, s1, s2) mm (None: 1 mm).

    Raises:
        ValueError: not 4-D with one channel, an empty axis, a spacing that is not three positive numbers.
    """
    if image.ndim != 4:
        raise ValueError(f"the image must be 4-D (channels, then 3 spatial axes), got shape {list(image.shape)}")
    if image.shape[0] != 1:
        raise ValueError(f"the image has {image.shape[0]} channels: send one channel (shape [1, X, Y, Z])")
    if min(image.shape[1:]) < 1:
        raise ValueError(f"the image of shape {list(image.shape)} is empty")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8)
    if spacing is None:
        spacing = (1.0, 1.0, 1.0)
    sp = list(spacing) if isinstance(spacing, (list, tuple)) else None
    if (
        sp is None
        or len(sp) != 3
        or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in sp)
        or not all(math.isfinite(float(s)) and float(s) > 0 for s in sp)
    ):
        raise ValueError(f"image_properties.spacing must be three positive numbers (mm, array order), got {spacing!r}")
    s0, s1, s2 = (float(s) for s in sp)
    return Volume(image[0], (s2, s1, s0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _integers(values: Any, n: int, what: str) -> list[int]:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        raise ValueError(f"{what} must be {n} numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{what} must be {n} finite numbers, got {values!r}")
        out.append(int(round(v)))
    return out


@dataclass
class RemoteObject:
    """A lease's image, engine session and current object (see the module docstring)."""

    volume: Volume | None = None
    session: InteractiveSession | None = None
    lesion: int | None = None
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.uint8))
    pending: Slices3 = EMPTY
    autozoom: bool = True
    #: The object's prompt count after each prompt (undo pops one): it mirrors the engine's history of the lesion.
    history: list[int] = field(default_factory=list)

    # ------------------------------------------------------------------------------------------ set-up
    def set_image(self, volume: Volume, make_session: Callable[[Volume], InteractiveSession]) -> None:
        """Open the engine on ``volume`` (the previous image and object are dropped)."""
        session = make_session(volume)
        self.volume, self.session, self.lesion, self.pending, self.history = volume, session, None, EMPTY, []

    def set_target_buffer(self, shape: Any, dtype: Any) -> None:
        """Check the client's buffer against the image and keep its dtype for the patches."""
        vol = self._volume()
        dims = _integers(shape, 3, "the target buffer's shape")
        if tuple(dims) != vol.spatial_shape:
            raise ValueError(f"the target buffer's shape {dims} differs from the image's {list(vol.spatial_shape)}")
        try:
            self.dtype = np.dtype(str(dtype))
        except TypeError:
            raise ValueError(f"the target buffer's dtype {dtype!r} is not a NumPy dtype name") from None
        if self.dtype.kind not in "biuf":
            raise ValueError(f"the target buffer's dtype {dtype!r} is not a number type")

    # ------------------------------------------------------------------------------------------ prompts
    def point(self, coordinates: Any, *, include: bool, run: bool) -> Answer:
        """A point (array order) including or excluding its voxel."""
        a0, a1, a2 = _integers(coordinates, 3, "coordinates")
        shape = self._volume().spatial_shape
        if not all(0 <= c < n for c, n in zip((a0, a1, a2), shape, strict=True)):
            raise ValueError(f"point {[a0, a1, a2]} is outside the image of shape {list(shape)} (array order)")
        session = self._session()
        prompts = self.history[-1] if self.history else 0
        if prompts == 0 and not include:
            raise ValueError("start an object with a positive point or a box; a negative point refines one")
        update = session.click((a2, a1, a0), positive=include, lesion=self.lesion)
        self.lesion = update.lesion
        self.history.append(prompts + 1)
        return self._answer(update, run)

    def bbox(self, coords: Any, *, include: bool, run: bool) -> Answer:
        """A box ``[[lo, hi] × 3]`` (array order, half-open; one axis of size 1 for a 2D box)."""
        from lesionsam.inference.boxes import Box

        if not include:
            raise ValueError("exclude boxes are not supported by lesionsam: use negative points to remove a region")
        if not isinstance(coords, (list, tuple)) or len(coords) != 3:
            raise ValueError(f"bbox_coords must be [[lo, hi], [lo, hi], [lo, hi]], got {coords!r}")
        ranges = [_integers(r, 2, "each bbox_coords axis") for r in coords]
        shape = self._volume().spatial_shape
        for (lo, hi), n in zip(ranges, shape, strict=True):
            if not 0 <= lo < hi <= n:
                raise ValueError(f"bbox_coords {ranges} leave the image of shape {list(shape)} or are empty")
        (lo0, hi0), (lo1, hi1), (lo2, hi2) = ranges
        update = self._session().box(Box(lo=(lo2, lo1, lo0), hi=(hi2 - 1, hi1 - 1, hi0 - 1)), lesion=self.lesion)
        self.lesion = update.lesion
        self.history.append(1)  # the engine starts the lesion again from the box
        return self._answer(update, run)

    def undo(self) -> Answer:
        """Back one prompt of the object (``ran`` false when there is nothing to undo)."""
        session = self._session()
        if self.lesion is None or not self.history:
            return Answer(ran=False)
        update = session.undo(self.lesion)
        self.history.pop()
        return self._answer(update, True)

    def reset(self) -> None:
        """Empty the object (the client empties its buffer itself)."""
        if self.session is not None:
            self.session.reset()
        self.lesion, self.pending, self.history = None, EMPTY, []

    def predict(self) -> Answer:
        """Send what prompts given with ``run_prediction=false`` changed (``ran`` false when none was)."""
        if size(self.pending) == 0:
            return Answer(ran=False)
        region, self.pending = self.pending, EMPTY
        return self._patch(region)

    # ------------------------------------------------------------------------------------------ internals
    def _volume(self) -> Volume:
        if self.volume is None:
            raise ValueError("no image yet: send one with set_image first")
        return self.volume

    def _session(self) -> InteractiveSession:
        self._volume()
        assert self.session is not None
        return self.session

    def _answer(self, update: Update, run: bool) -> Answer:
        region = union(self.pending, update.region)
        if not run:
            self.pending = region
            return Answer(ran=False)
        if size(self.pending) == 0:  # the usual case: the engine's patch is the answer
            self.pending = EMPTY
            return self._mask(update.region, update.labels)
        self.pending = EMPTY
        return self._patch(region)

    def _patch(self, region: Slices3) -> Answer:
        """The object's mask on ``region`` of the engine's label map."""
        return self._mask(region, self._session().label_map()[region] if size(region) else None)

    def _mask(self, region: Slices3, labels: np.ndarray | None) -> Answer:
        if labels is None or size(region) == 0:
            return Answer(ran=True)
        mask = labels == self.lesion if self.lesion is not None else np.zeros(labels.shape, bool)
        return Answer(ran=True, bbox=[[s.start, s.stop] for s in region], patch=mask.astype(self.dtype))
