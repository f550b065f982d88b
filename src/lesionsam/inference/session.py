"""The interactive engine: one image, clicks and boxes in, a label map patched lesion by lesion.

Every click- or box-prompted prediction goes through it: ``lesionsam serve``, the click-curve evaluation, and
:meth:`Predictor.predict <lesionsam.inference.predictor.Predictor.predict>`, which opens a throwaway session, adds each
lesion's prompts (:meth:`InteractiveSession.add`) and returns its label map. So there is one overlap rule, one check
that a click lies in the image (:meth:`InteractiveSession.check_points`) and one cache of image embeddings.

The image is preprocessed once (or given preprocessed). Each lesion keeps

* its **window** (centred on its first prompt: the first positive click, or the box's centre), the windows' cached
  **image embeddings** (``model.encode``, once per window), and its first window's click chain (the previous
  low-res logits, :class:`~lesionsam.inference.windows.ChainState`): a refining click decodes one more step
  (prompt encoder + mask decoder only; a window grown for the first time is encoded once);
* its **prompt history** (undo / redo restore the exact earlier state);
* its probability on the **input grid, only inside its region** (the input voxels its canonical windows reach,
  :func:`~lesionsam.inference.regions.invert_region`): a click resamples that region, never the whole volume.

Windows are run by :class:`~lesionsam.inference.windows.WindowRunner`; clicks given one after another equal the same
clicks given at once. Where two lesions overlap, a voxel goes to the more confident one on the input grid (ties: the
lower id). A box on an existing lesion starts it again from the box (undo brings the earlier prompts back).

Coordinates are 0-based voxel indices (i, j, k) of the input image (ITK order, 3D Slicer's IJK); arrays are NumPy in
SimpleITK order (D, H, W) = (k, j, i). Errors a user can act on raise ``ValueError`` with one clear message.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.data.io import IMAGE_SUFFIXES, Volume, image_suffix, write_image
from lesionsam.data.transforms import Preprocessed
from lesionsam.inference.boxes import BOX_PRIOR_LOGIT, Box, box_prompt
from lesionsam.inference.framing import frame_lesion
from lesionsam.inference.prediction import LesionClicks, Prediction
from lesionsam.inference.regions import invert_region
from lesionsam.inference.session_state import (
    EMPTY,
    Engine,
    LesionEntry,
    LesionInfo,
    LesionState,
    Slices3,
    Update,
    intersect,
    size,
    union,
)
from lesionsam.inference.windows import ChainState, WindowRunner, first_center, lesion_probability
from lesionsam.utils.components import bounding_box
from lesionsam.utils.dataclass_io import atomic_write_bytes
from lesionsam.utils.paths import check_can_create, refuse_inputs_as_outputs


class InteractiveSession:
    """Interactive lesion segmentation on one image (see the module docstring).

    Args:
        predictor: a click-promptable :class:`~lesionsam.inference.predictor.Predictor` (what is used of it:
            :class:`~lesionsam.inference.session_state.Engine`; its current image is left alone, so several sessions
            may share one predictor).
        image: the image (a :class:`~lesionsam.data.io.Volume`, a file path, or a volume the predictor preprocessed).
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
        predictor: Engine,
        image: Volume | Preprocessed | str | os.PathLike[str],
        *,
        text: str | None = None,
        box_prior_logit: float | None = BOX_PRIOR_LOGIT,
    ) -> None:
        self.predictor = predictor
        self.text = text
        self.box_prior_logit = box_prior_logit
        predictor.check_text(text)
        self._image_path = None if isinstance(image, (Volume, Preprocessed)) else Path(image)
        # the predictor's own current image is left alone; an image already preprocessed by it is used as it is
        self.pre = image if isinstance(image, Preprocessed) else predictor.prepare(image)
        self.runner: WindowRunner = predictor.runner(self.pre)
        self.shape_ijk: tuple[int, int, int] = tuple(int(s) for s in self.pre.source.size_ijk)  # type: ignore[assignment]
        self.spacing: tuple[float, float, float] = tuple(float(s) for s in self.pre.source.spacing)  # type: ignore[assignment]
        self._voxel_ml = float(np.prod(self.spacing)) / 1000.0
        self._lesions: dict[int, LesionEntry] = {}
        self._next_id = 1

    # ------------------------------------------------------------------------------------------ prompts
    def click(self, point: tuple[int, int, int], *, positive: bool = True, lesion: int | None = None) -> Update:
        """A click at voxel ``point`` (i, j, k). ``lesion=None`` starts a new lesion (the click must be positive);
        otherwise it refines that lesion (decoder only, from its cached embedding and previous low-res logits)."""
        ijk = self._point(point)
        self.check_points(ijk[None])
        record = {"kind": "point", "point": [float(v) for v in ijk], "positive": bool(positive)}
        label = np.array([1 if positive else 0], dtype=np.int64)
        if lesion is None or not self._get(lesion).state.prompts:
            if not positive:
                raise ValueError("a lesion starts with a positive click inside it; a negative click needs lesion=<id>")
            dhw = self.predictor.preprocessor.to_canonical_index(ijk[None], self.pre, world=False).reshape(1, 3)
            entry = self._new_lesion() if lesion is None else self._get(lesion)
            start = LesionState(prompts=(record,), center=dhw[0], dhw=dhw, labels=label)
            return self._apply(entry, start, created=lesion is None)
        entry = self._get(lesion)
        old = entry.state
        frame = old.view.pre if old.view is not None else self.pre  # a refining click lands in the lesion's frame
        dhw = self.predictor.preprocessor.to_canonical_index(ijk[None], frame, world=False).reshape(1, 3)
        new = LesionState(
            prompts=(*old.prompts, record),
            center=old.center,
            dhw=np.concatenate([old.dhw, dhw]),
            labels=np.concatenate([old.labels, label]),
            chain=old.chain,
            bound=old.bound,
            view=old.view,
            framed=True,
        )
        return self._apply(entry, new)

    def box(self, box: Box, *, lesion: int | None = None) -> Update:
        """A 3D box, or a 2D box on one slice (see :mod:`lesionsam.inference.boxes`). ``lesion=None`` starts a new
        lesion; an existing lesion starts again from the box (undo restores its earlier prompts)."""
        centre, chain, bound = self._box_start(box)
        entry = self._get(lesion) if lesion is not None else self._new_lesion()
        record = {"kind": "box", "lo": list(box.lo), "hi": list(box.hi)}
        state = LesionState(
            prompts=(record,),
            center=centre,
            dhw=centre[None],
            labels=np.array([1], dtype=np.int64),
            chain=chain,
            bound=bound,
        )
        return self._apply(entry, state, created=lesion is None)

    def add(self, lesion: LesionClicks, *, world: bool = False) -> Update:
        """A new lesion with id ``lesion.lesion_id`` from all its prompts at once: its box (if any) then its clicks in
        order, decoded as one chain (the same as the box and then each click given one after another). ``world``: the
        clicks are LPS mm instead of voxel indices (a box is always voxel indices)."""
        lid = int(lesion.lesion_id)
        if lid in self._lesions:
            raise ValueError(f"lesion ids must be distinct: lesion {lid} exists already")
        self.check_prompts(lesion, world=world)
        dhw = self.predictor.preprocessor.to_canonical_index(lesion.points, self.pre, world=world).reshape(-1, 3)
        ijk = self.pre.source.world_to_index(lesion.points) if world else lesion.points
        records = [
            {"kind": "point", "point": [float(v) for v in p], "positive": bool(lab)}
            for p, lab in zip(ijk, lesion.labels, strict=True)
        ]
        labels = lesion.labels
        chain, bound = ChainState(), None
        if lesion.box is not None:
            centre, chain, bound = self._box_start(lesion.box)
            records.insert(0, {"kind": "box", "lo": list(lesion.box.lo), "hi": list(lesion.box.hi)})
            dhw = np.concatenate([centre[None], dhw])
            labels = np.concatenate([[1], labels]).astype(np.int64)
        state = LesionState(
            prompts=tuple(records),
            center=first_center(dhw, labels),
            dhw=dhw,
            labels=labels,
            chain=chain,
            bound=bound,
        )
        return self._apply(self._new_lesion(lid), state, created=True)

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
    def check_prompts(self, lesion: LesionClicks, *, world: bool = False) -> None:
        """``ValueError`` unless :meth:`add` can take ``lesion``: its clicks inside the image (:meth:`check_points`)
        and a box only with voxel coordinates."""
        if world and lesion.box is not None:
            raise ValueError("boxes are voxel indices (i, j, k): give them without --world / 'coordinates': 'world'")
        self.check_points(lesion.points, world=world, lesion=int(lesion.lesion_id))

    def has_lesion(self, lesion: int) -> bool:
        """Whether ``lesion`` is a lesion of this session (cheap: nothing is composed)."""
        return int(lesion) in self._lesions

    def lesion_ids(self) -> list[int]:
        """The ids of the session's lesions, in order."""
        return sorted(self._lesions)

    def lesions(self) -> list[LesionInfo]:
        """Every lesion, by id."""
        out = []
        for lid, entry in sorted(self._lesions.items()):
            region = entry.state.region
            mine = self._compose(region) == lid if size(region) else np.zeros((0, 0, 0), bool)
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

    def prediction(self, *, probabilities: bool = False, started: float | None = None) -> Prediction:
        """The whole label map as a :class:`~lesionsam.inference.prediction.Prediction` on the input grid, with the
        lesions' probabilities (each lesion's inside its region, 0 elsewhere) on request and the windows run per
        lesion; ``started``: the ``time.perf_counter()`` its seconds count from."""
        full = tuple(slice(0, n) for n in self.pre.source.spatial_shape)
        labels, best = self._scores(full)  # type: ignore[arg-type]
        return Prediction(
            labels=labels,
            probabilities=best if probabilities else None,
            reference=self.pre.source,
            windows={lid: entry.state.windows for lid, entry in sorted(self._lesions.items())},
            seconds=time.perf_counter() - started if started is not None else 0.0,
        )

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
    @staticmethod
    def _point(point: tuple[int, int, int]) -> np.ndarray:
        try:
            ijk = np.asarray(point, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"a point must be three numbers (i, j, k), got {point!r}") from None
        if ijk.shape != (3,) or not np.isfinite(ijk).all():
            raise ValueError(f"a point must be three finite numbers (i, j, k), got {point!r}")
        return ijk

    def check_points(self, points: np.ndarray, *, world: bool = False, lesion: int | None = None) -> None:
        """The one rule for a click inside the image: its voxel index (i, j, k) — LPS mm mapped to an index with
        ``world`` — lies within [-0.5, size - 0.5) on every axis (it rounds to a voxel of the image).

        Raises:
            ValueError: the first point outside, in the coordinates it was given in.
        """
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        ijk = self.pre.source.world_to_index(pts) if world else pts
        bound = np.asarray(self.shape_ijk, dtype=float)
        outside = np.any((ijk < -0.5) | (ijk > bound - 0.5), axis=1)
        if outside.any():
            n = int(np.argmax(outside))
            kind = "LPS mm" if world else "voxel index i, j, k"
            which = f"lesion {lesion}: " if lesion is not None else ""
            raise ValueError(
                f"{which}click {pts[n].round(2).tolist()} ({kind}) is outside the image of size {self.shape_ijk} "
                "(i, j, k); voxel indices run from 0 to size-1"
            )

    def _box_start(self, box: Box) -> tuple[np.ndarray, ChainState, Any]:
        """A box's canonical centre (its first, positive click), the chain start holding its prior mask, and its bound
        (:func:`~lesionsam.inference.boxes.box_prompt`; a model that takes no mask prompt gets no prior)."""
        model = self.predictor.model
        takes_mask = "mask" in model.accepted_prompts | model.required_prompts
        centre, prior, bound = box_prompt(
            box,
            self.pre,
            self.runner.crop,
            model.low_res_size,
            prior_logit=self.box_prior_logit if takes_mask else None,
        )
        return centre, ChainState(last=prior.to(self.predictor.device) if prior is not None else None), bound

    def _get(self, lesion: int) -> LesionEntry:
        if isinstance(lesion, bool) or not isinstance(lesion, (int, np.integer)) or int(lesion) not in self._lesions:
            known = ", ".join(str(k) for k in sorted(self._lesions)) or "none"
            raise ValueError(f"unknown lesion {lesion!r} (lesions in this session: {known})")
        return self._lesions[int(lesion)]

    def _new_lesion(self, lesion: int | None = None) -> LesionEntry:
        """A new, empty lesion: the next id, or ``lesion`` (ids are never given twice)."""
        lid = self._next_id if lesion is None else int(lesion)
        if not 1 <= lid <= 65535:
            raise ValueError(
                "this session has used all 65535 lesion ids; start a new session"
                if lesion is None
                else f"lesion id must be in 1..65535, got {lesion}"
            )
        entry = LesionEntry(history=[LesionState()])
        self._lesions[lid] = entry
        self._next_id = max(self._next_id, lid + 1)
        return entry

    def _id_of(self, entry: LesionEntry) -> int:
        return next(k for k, v in self._lesions.items() if v is entry)

    def _apply(self, entry: LesionEntry, state: LesionState, *, created: bool = False) -> Update:
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

    def _move(self, lid: int, entry: LesionEntry, position: int, previous: LesionState | None = None) -> Update:
        old = previous if previous is not None else entry.state
        entry.position = position
        new = entry.state
        region = union(old.region, new.region)
        labels = self._compose(region)
        volume = float((labels == lid).sum()) * self._voxel_ml
        return Update(lesion=lid, region=region, labels=labels, volume_ml=volume)

    def _segment(self, entry: LesionEntry, state: LesionState) -> LesionState:
        """The lesion's windows for ``state``'s prompts and its score on its input-grid region."""
        if not state.framed:  # the lesion's first prompt: the usual grid, or a zoomed view for a small lesion
            state = frame_lesion(
                state,
                engine=self.predictor,
                runner=self.runner,
                raw=self.pre.raw,
                cache=entry.cache,
                text=self.text,
                box_prior_logit=self.box_prior_logit,
            )
        assert state.center is not None
        view = state.view
        runner, pre = (view.runner, view.pre) if view is not None else (self.runner, self.pre)
        windows, chain = runner.segment(
            state.center,
            state.dhw,
            state.labels,
            state.chain,
            text=self.text,
            cache=view.cache if view is not None else entry.cache,
            bound=state.bound,
        )
        canon = lesion_probability(
            windows,
            state.dhw[state.labels == 1],
            runner.shape,
            threshold=self.predictor.threshold,
            clicked_only=self.predictor.clicked_only,
        )
        region, score = invert_region(canon.prob, canon.region, pre, interpolation="linear")
        if not canon.covered.all():  # (the usual case is a region inside the lesion's windows)
            _, covered = invert_region(canon.covered.astype(np.uint8), canon.region, pre, interpolation="nearest")
            score[covered == 0] = 0.0
        # Keep only the bounding box of the voxels above the threshold: no other voxel can ever be labelled
        # this lesion, nor take a voxel from another lesion (whose score there would be below it too).
        tight = bounding_box(score > self.predictor.threshold) if score.size else None
        if tight is not None:
            score = np.ascontiguousarray(score[tight])
            region = tuple(slice(r.start + t.start, r.start + t.stop) for r, t in zip(region, tight, strict=True))
        else:
            region, score = EMPTY, np.zeros((0, 0, 0), np.float32)
        return LesionState(
            prompts=state.prompts,
            center=state.center,
            dhw=state.dhw,
            labels=state.labels,
            chain=chain,
            bound=state.bound,
            region=region,
            score=score,
            windows=len(windows),
            view=view,
            framed=True,
        )

    def _compose(self, region: Slices3) -> np.ndarray:
        """The label map on ``region`` of the input grid (:meth:`_scores`)."""
        return self._scores(region)[0]

    def _scores(self, region: Slices3) -> tuple[np.ndarray, np.ndarray]:
        """The one overlap rule, on ``region`` of the input grid: each voxel goes to the most confident lesion above
        the threshold (ties: the lower id). Returns the (D, H, W) uint16 labels and float32 best probabilities."""
        shape = tuple(max(0, s.stop - s.start) for s in region)
        best = np.zeros(shape, dtype=np.float32)
        labels = np.zeros(shape, dtype=np.uint16)
        if 0 in shape:
            return labels, best
        for lid, entry in sorted(self._lesions.items()):
            st = entry.state
            common = intersect(region, st.region) if size(st.region) else None
            if common is None:
                continue
            dst = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(common, region, strict=True))
            src = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(common, st.region, strict=True))
            s = st.score[src]
            better = s > best[dst]
            best[dst][better] = s[better]
            labels[dst][better] = lid
        labels[best <= self.predictor.threshold] = 0
        return labels, best


__all__ = ["Box", "InteractiveSession", "LesionInfo", "Update"]
