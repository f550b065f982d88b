"""An interactive segmentation session on one image: clicks and boxes in, a label map patched lesion by lesion.

The image is preprocessed once (:meth:`Predictor.set_image`). Each lesion keeps

* its **window** (centred on its first prompt: the first positive click, or the box's centre), the windows' cached
  **image embeddings** (``model.encode``, once per window), and its first window's click chain (the previous
  low-res logits, :class:`~lesionsam.inference.windows.ChainState`): a refining click decodes one more step
  (prompt encoder + mask decoder only; a window grown for the first time is encoded once);
* its **prompt history** (undo / redo restore the exact earlier state);
* its probability on the **input grid, only inside its region** (the input voxels its canonical windows reach,
  :func:`~lesionsam.inference.regions.invert_region`): a click resamples that region, never the whole volume.

The segmentation engine is the one-shot :class:`~lesionsam.inference.predictor.Predictor`'s
(:class:`~lesionsam.inference.windows.WindowRunner`): a lesion clicked here gives the same mask as
``Predictor.predict`` with the same clicks in the same order. Where two lesions overlap, a voxel goes to the more
confident one (ties: the lower id). A box on an existing lesion starts it again from the box (undo brings the
earlier prompts back).

Coordinates are 0-based voxel indices (i, j, k) of the input image (ITK order, 3D Slicer's IJK); arrays are NumPy in
SimpleITK order (D, H, W) = (k, j, i). Errors a user can act on raise ``ValueError`` with one clear message.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.data.io import IMAGE_SUFFIXES, Volume, image_suffix, write_image
from lesionsam.inference.boxes import BOX_PRIOR_LOGIT, Box, box_prompt
from lesionsam.inference.predictor import Predictor
from lesionsam.inference.regions import invert_region
from lesionsam.inference.windows import Bound, ChainState, WindowRunner, bounding_box, lesion_probability
from lesionsam.utils.dataclass_io import atomic_write_bytes
from lesionsam.utils.paths import check_can_create, refuse_inputs_as_outputs

Slices3 = tuple[slice, slice, slice]
_EMPTY: Slices3 = (slice(0, 0), slice(0, 0), slice(0, 0))


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
class _State:
    """One lesion after some prompts (immutable: undo/redo move between these)."""

    prompts: tuple[dict[str, Any], ...] = ()
    center: np.ndarray | None = None  # canonical (d, h, w) centre of the first window
    dhw: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # canonical clicks, in order
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    chain: ChainState = field(default_factory=ChainState)
    bound: Bound | None = None  # a 3D box's canonical extent the lesion is cut to
    region: Slices3 = _EMPTY  # input-grid slices
    score: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))  # prob where covered, else 0


@dataclass
class _Lesion:
    history: list[_State]
    position: int = 0  # index of the current state in ``history``
    cache: dict[tuple[int, int, int], object] = field(default_factory=dict)  # window start → embedding

    @property
    def state(self) -> _State:
        return self.history[self.position]


def _union(a: Slices3, b: Slices3) -> Slices3:
    if _size(a) == 0:
        return b
    if _size(b) == 0:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _intersect(a: Slices3, b: Slices3) -> Slices3 | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True))
    return None if any(s.stop <= s.start for s in out) else out  # type: ignore[return-value]


def _size(region: Slices3) -> int:
    return int(np.prod([max(0, s.stop - s.start) for s in region]))


class InteractiveSession:
    """Interactive lesion segmentation on one image (see the module docstring).

    Args:
        predictor: a click-promptable predictor (its model, preprocessing, threshold, windows, logit offset and
            dtype are used; its current image is left alone, so several sessions may share one predictor).
        image: the image (a :class:`~lesionsam.data.io.Volume` or a file path).
        text: a text prompt given with every decode (text-referred methods that need one).
        box_prior_logit: the magnitude of a box's prior mask (:mod:`lesionsam.inference.boxes`); None gives a box
            as its window and centre click only.

    Example:
        >>> session = InteractiveSession(Predictor.from_checkpoint("turbo.pth"), "ct.nii.gz")
        >>> session.click((120, 88, 40))                 # lesion 1
        >>> session.click((125, 90, 40), positive=False, lesion=1)
        >>> session.save("mask.nii.gz", "prompts.json")
    """

    def __init__(
        self,
        predictor: Predictor,
        image: Volume | str | os.PathLike[str],
        *,
        text: str | None = None,
        box_prior_logit: float | None = BOX_PRIOR_LOGIT,
    ) -> None:
        self.predictor = predictor
        self.text = text
        self.box_prior_logit = box_prior_logit
        predictor._check_text(text)
        self._image_path = None if isinstance(image, Volume) else Path(image)
        self.pre = predictor.prepare(image)  # the predictor's own current image is left alone
        self.runner: WindowRunner = predictor.runner(self.pre)
        self.shape_ijk: tuple[int, int, int] = tuple(int(s) for s in self.pre.source.size_ijk)  # type: ignore[assignment]
        self.spacing: tuple[float, float, float] = tuple(float(s) for s in self.pre.source.spacing)  # type: ignore[assignment]
        self._voxel_ml = float(np.prod(self.spacing)) / 1000.0
        self._lesions: dict[int, _Lesion] = {}
        self._next_id = 1

    # ------------------------------------------------------------------------------------------ prompts
    def click(self, point: tuple[int, int, int], *, positive: bool = True, lesion: int | None = None) -> Update:
        """A click at voxel ``point`` (i, j, k). ``lesion=None`` starts a new lesion (the click must be positive);
        otherwise it refines that lesion (decoder only, from its cached embedding and previous low-res logits)."""
        ijk = self._check_point(point)
        record = {"kind": "point", "point": [float(v) for v in ijk], "positive": bool(positive)}
        dhw = self.predictor.preprocessor.to_canonical_index(ijk[None], self.pre, world=False).reshape(1, 3)
        label = np.array([1 if positive else 0], dtype=np.int64)
        if lesion is None or not self._get(lesion).state.prompts:
            if not positive:
                raise ValueError("a lesion starts with a positive click inside it; a negative click needs lesion=<id>")
            entry = self._new_lesion() if lesion is None else self._get(lesion)
            start = _State(prompts=(record,), center=dhw[0], dhw=dhw, labels=label)
            return self._apply(entry, start, created=lesion is None)
        entry = self._get(lesion)
        old = entry.state
        new = _State(
            prompts=(*old.prompts, record),
            center=old.center,
            dhw=np.concatenate([old.dhw, dhw]),
            labels=np.concatenate([old.labels, label]),
            chain=old.chain,
            bound=old.bound,
        )
        return self._apply(entry, new)

    def box(self, box: Box, *, lesion: int | None = None) -> Update:
        """A 3D box, or a 2D box on one slice (see :mod:`lesionsam.inference.boxes`). ``lesion=None`` starts a new
        lesion; an existing lesion starts again from the box (undo restores its earlier prompts)."""
        model = self.predictor.model
        takes_mask = "mask" in model.accepted_prompts | model.required_prompts  # else no prior mask
        centre, prior, bound = box_prompt(
            box,
            self.pre,
            self.runner.crop,
            model.low_res_size,
            prior_logit=self.box_prior_logit if takes_mask else None,
        )
        entry = self._get(lesion) if lesion is not None else self._new_lesion()
        record = {"kind": "box", "lo": list(box.lo), "hi": list(box.hi)}
        state = _State(
            prompts=(record,),
            center=centre,
            dhw=centre[None],
            labels=np.array([1], dtype=np.int64),
            chain=ChainState(last=prior.to(self.predictor.device) if prior is not None else None),
            bound=bound,
        )
        return self._apply(entry, state, created=lesion is None)

    def undo(self, lesion: int) -> Update:
        """Go back one prompt on ``lesion`` (to an empty lesion after its first prompt)."""
        entry = self._get(lesion)
        if entry.position == 0:
            raise ValueError(f"lesion {lesion}: nothing to undo")
        return self._move(lesion, entry, entry.position - 1)

    def redo(self, lesion: int) -> Update:
        """Redo the prompt last undone on ``lesion``."""
        entry = self._get(lesion)
        if entry.position == len(entry.history) - 1:
            raise ValueError(f"lesion {lesion}: nothing to redo")
        return self._move(lesion, entry, entry.position + 1)

    def delete(self, lesion: int) -> Update:
        """Remove ``lesion`` (its id is not given again)."""
        entry = self._get(lesion)
        region = entry.state.region
        del self._lesions[lesion]
        return Update(lesion=lesion, region=region, labels=self._compose(region), volume_ml=0.0)

    def reset(self) -> None:
        """Remove every lesion (ids keep counting up)."""
        self._lesions.clear()

    # ------------------------------------------------------------------------------------------ results
    def lesions(self) -> list[LesionInfo]:
        """Every lesion, by id."""
        out = []
        for lid, entry in sorted(self._lesions.items()):
            region = entry.state.region
            mine = self._compose(region) == lid if _size(region) else np.zeros((0, 0, 0), bool)
            bbox = None
            box = bounding_box(mine) if mine.size else None
            if box is not None:
                bbox = tuple(slice(r.start + b.start, r.start + b.stop) for r, b in zip(region, box, strict=True))
            out.append(
                LesionInfo(
                    id=lid,
                    volume_ml=float(mine.sum()) * self._voxel_ml,
                    n_prompts=len(entry.state.prompts),
                    bbox=bbox,  # type: ignore[arg-type]
                )
            )
        return out

    def label_map(self) -> np.ndarray:
        """(D, H, W) uint16 label map on the input grid: 0 background, else lesion ids."""
        full = tuple(slice(0, n) for n in self.pre.source.spatial_shape)
        return self._compose(full)  # type: ignore[arg-type]

    def prompts_record(self) -> dict[str, Any]:
        """Every lesion's prompts in order, JSON-able. Also a valid ``lesionsam predict --prompts`` file: each
        lesion carries ``box`` (when it starts with one), ``points`` and ``labels`` as that format reads them."""
        lesions = []
        for lid, entry in sorted(self._lesions.items()):
            prompts = [dict(p) for p in entry.state.prompts]
            if not prompts:
                continue
            item: dict[str, Any] = {"id": lid, "prompts": prompts}
            if prompts[0]["kind"] == "box":
                item["box"] = [*prompts[0]["lo"], *prompts[0]["hi"]]
            points = [p for p in prompts if p["kind"] == "point"]
            item["points"] = [p["point"] for p in points]
            item["labels"] = [1 if p["positive"] else 0 for p in points]
            lesions.append(item)
        return {
            "coordinates": "voxel",
            "image": {"size_ijk": list(self.shape_ijk), "spacing": list(self.spacing)},
            "lesions": lesions,
        }

    def save(self, mask_path: str | os.PathLike[str], prompts_path: str | os.PathLike[str]) -> None:
        """Write the label map on the input's exact geometry (uint8 when it fits) and the prompts JSON, each
        atomically (temp file + rename), after checking both paths (nothing is written if either is bad)."""
        mask_p, json_p = Path(mask_path), Path(prompts_path)
        if image_suffix(mask_p) not in IMAGE_SUFFIXES:
            raise ValueError(
                f"mask path {mask_p}: unknown image file ending; use one of {', '.join(IMAGE_SUFFIXES[:5])}"
            )
        if mask_p.resolve() == json_p.resolve():
            raise ValueError(f"the mask and the prompts file must be different paths, got {mask_p} twice")
        check_can_create(mask_p, what="mask path")
        check_can_create(json_p, what="prompts path")
        refuse_inputs_as_outputs([("mask path", mask_p), ("prompts path", json_p)], [("image", self._image_path)])
        labels = self.label_map()
        if labels.max(initial=0) < 256:
            labels = labels.astype(np.uint8)
        payload = (json.dumps(self.prompts_record(), indent=1) + "\n").encode()
        write_image(labels, mask_p, reference=self.pre.source)
        atomic_write_bytes(json_p, payload)

    # ------------------------------------------------------------------------------------------ internals
    def _check_point(self, point: tuple[int, int, int]) -> np.ndarray:
        try:
            ijk = np.asarray(point, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"a point must be three numbers (i, j, k), got {point!r}") from None
        if ijk.shape != (3,) or not np.isfinite(ijk).all():
            raise ValueError(f"a point must be three finite numbers (i, j, k), got {point!r}")
        size = np.asarray(self.shape_ijk, dtype=float)
        if np.any((ijk < -0.5) | (ijk > size - 0.5)):
            raise ValueError(
                f"click {ijk.round(2).tolist()} (voxel index i, j, k) is outside the image of size {self.shape_ijk}; "
                "voxel indices run from 0 to size-1"
            )
        return ijk

    def _get(self, lesion: int) -> _Lesion:
        if isinstance(lesion, bool) or not isinstance(lesion, (int, np.integer)) or int(lesion) not in self._lesions:
            known = ", ".join(str(k) for k in sorted(self._lesions)) or "none"
            raise ValueError(f"unknown lesion {lesion!r} (lesions in this session: {known})")
        return self._lesions[int(lesion)]

    def _new_lesion(self) -> _Lesion:
        if self._next_id > 65535:
            raise ValueError("this session has used all 65535 lesion ids; start a new session")
        entry = _Lesion(history=[_State()])
        self._lesions[self._next_id] = entry
        self._next_id += 1
        return entry

    def _id_of(self, entry: _Lesion) -> int:
        return next(k for k, v in self._lesions.items() if v is entry)

    def _apply(self, entry: _Lesion, state: _State, *, created: bool = False) -> Update:
        """Segment ``state``'s prompts, make it the lesion's current state (dropping what could be redone)."""
        lid = self._id_of(entry)
        try:
            state = self._segment(entry, state)
        except BaseException:
            if created:
                del self._lesions[lid]  # a lesion that failed to start does not stay behind
            raise
        del entry.history[entry.position + 1 :]
        entry.history.append(state)
        return self._move(lid, entry, len(entry.history) - 1, previous=entry.state)

    def _move(self, lid: int, entry: _Lesion, position: int, previous: _State | None = None) -> Update:
        old = previous if previous is not None else entry.state
        entry.position = position
        new = entry.state
        region = _union(old.region, new.region)
        labels = self._compose(region)
        volume = float((labels == lid).sum()) * self._voxel_ml
        return Update(lesion=lid, region=region, labels=labels, volume_ml=volume)

    def _segment(self, entry: _Lesion, state: _State) -> _State:
        """The lesion's windows for ``state``'s prompts and its score on its input-grid region."""
        assert state.center is not None
        windows, chain = self.runner.segment(
            state.center, state.dhw, state.labels, state.chain, text=self.text, cache=entry.cache, bound=state.bound
        )
        canon = lesion_probability(
            windows,
            state.dhw[state.labels == 1],
            self.runner.shape,
            threshold=self.predictor.threshold,
            clicked_only=self.predictor.clicked_only,
        )
        region, score = invert_region(canon.prob, canon.region, self.pre, interpolation="linear")
        if not canon.covered.all():  # (the usual case is a region inside the lesion's windows)
            _, covered = invert_region(canon.covered.astype(np.uint8), canon.region, self.pre, interpolation="nearest")
            score[covered == 0] = 0.0
        # Keep only the bounding box of the voxels above the threshold: no other voxel can ever be labelled
        # this lesion, nor take a voxel from another lesion (whose score there would be below it too).
        tight = bounding_box(score > self.predictor.threshold) if score.size else None
        if tight is not None:
            score = np.ascontiguousarray(score[tight])
            region = tuple(slice(r.start + t.start, r.start + t.stop) for r, t in zip(region, tight, strict=True))
        else:
            region, score = _EMPTY, np.zeros((0, 0, 0), np.float32)
        return _State(
            prompts=state.prompts,
            center=state.center,
            dhw=state.dhw,
            labels=state.labels,
            chain=chain,
            bound=state.bound,
            region=region,
            score=score,
        )

    def _compose(self, region: Slices3) -> np.ndarray:
        """The label map on ``region`` of the input grid: each voxel to the most confident lesion above the
        threshold (ties: the lower id)."""
        shape = tuple(max(0, s.stop - s.start) for s in region)
        best = np.zeros(shape, dtype=np.float32)
        labels = np.zeros(shape, dtype=np.uint16)
        if 0 in shape:
            return labels
        for lid, entry in sorted(self._lesions.items()):
            st = entry.state
            common = _intersect(region, st.region) if _size(st.region) else None
            if common is None:
                continue
            dst = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(common, region, strict=True))
            src = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(common, st.region, strict=True))
            s = st.score[src]
            better = s > best[dst]
            best[dst][better] = s[better]
            labels[dst][better] = lid
        labels[best <= self.predictor.threshold] = 0
        return labels


__all__ = ["Box", "InteractiveSession", "LesionInfo", "Update"]
