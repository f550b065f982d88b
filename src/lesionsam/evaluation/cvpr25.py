"""The CVPR 2025 interactive challenge's protocol: a box, then 5 clicks at the centre of the largest error; Dice and
NSD after every step, DSC_AUC / NSD_AUC over the clicks, final DSC / NSD, time per case.

"Foundation Models for Interactive 3D Biomedical Image Segmentation" (CVPR 2025; its scoring script
``CVPR25_iter_eval.py`` and its box script ``get_boxes.py``, repository JunMa11/CVPR-MedSegFMCompetition) scores each
target class of a case, here the lesion label (every lesion of it together, as the challenge's classes are):

1. **Box step.** The ground truth's slice range on the first array axis (``z_min``..``z_max``) and a 2D box on its
   middle slice ``z_mid`` = the slice of the middle foreground voxel in C order (``z_indices[n // 2]`` of
   ``np.where``), widened on each side by ``int(shift · size / 256)`` voxels (``shift`` a seeded integer in 0..5, as
   ``get_boxes.py`` jitters it), clipped to the image. The engine gets the 2D box on slice ``z_mid``
   (``box="2d"``, the box the challenge draws) or the 3D box of that rectangle over ``z_min``..``z_max``
   (``box="3d"``).
2. **Click steps** (5). The error is ``prediction != ground truth``; its largest 26-connected component
   (:func:`~lesionsam.utils.components.label_lesions`) is distance-transformed (Euclidean, in voxels, with voxels
   outside the component's bounding box as background, as the script pads its crop); the click goes on a voxel of
   maximal distance (ties: ``np.random.RandomState(42).choice`` over them in C order, as the script seeds it), positive
   where the ground truth is foreground there. No error: no click (the scores repeat).
3. **Scores after each of the 6 steps**: Dice (:func:`~lesionsam.evaluation.dice.dice`) and NSD at 2 mm (the
   area-weighted surface Dice of :mod:`~lesionsam.evaluation.surface`, DeepMind's ``surface-distance`` as the script
   uses it), NSD counted 0 when Dice <= 0.2. **DSC_AUC / NSD_AUC** = trapezoidal area of the 5 click steps' values
   with unit spacing (the script's ``cumulative_trapezoid(values[-5:], arange(5))[-1]``; at most 4). Final DSC / NSD
   = after click 5. The time is the engine's (prompt in, label map out), summed over the 6 steps.

The engine is one :class:`~lesionsam.inference.session.InteractiveSession` per case: the box opens a lesion, each
click refines one (the decoder only). Which lesion a click goes to (the challenge's models see one mask per class;
the engine keeps one per lesion): a negative click refines the lesion that labels its voxel; a positive click refines
the session lesion overlapping most the ground-truth lesion (26-connected component) it falls in, else a lesion whose
prediction is empty (the box's, when it found nothing), else it opens a new lesion.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import integrate, ndimage

from lesionsam.data.io import Volume
from lesionsam.evaluation.dice import dice
from lesionsam.evaluation.lesions import json_float
from lesionsam.evaluation.metrics import spacing_dhw
from lesionsam.evaluation.surface import area_surface_distances, surface_dice
from lesionsam.utils.components import label_lesions

if TYPE_CHECKING:
    from lesionsam.inference.boxes import Box
    from lesionsam.inference.predictor import Predictor
    from lesionsam.inference.session import InteractiveSession

#: Click steps after the box, NSD tolerance (mm), the Dice at or below which NSD counts 0, the tie-break seed.
N_CLICKS, NSD_TOLERANCE_MM, NSD_MIN_DICE, TIE_SEED = 5, 2.0, 0.2, 42
#: How the box reaches the engine.
BOX_MODES: tuple[str, ...] = ("2d", "3d")


@dataclass(frozen=True)
class ChallengeBox:
    """The challenge's box of one target, array indices (D, H, W) = (z, y, x), inclusive bounds.

    Attributes:
        z_min, z_max, z_mid: the target's slice range on the first axis and its middle slice.
        y_min, y_max, x_min, x_max: the jittered 2D box on slice ``z_mid``; shift: the jitter drawn (0..5).
    """

    z_min: int
    z_max: int
    z_mid: int
    y_min: int
    y_max: int
    x_min: int
    x_max: int
    shift: int

    def engine_box(self, mode: str = "2d") -> Box:
        """The engine's :class:`~lesionsam.inference.boxes.Box` (ITK order (i, j, k) = (x, y, z)): the 2D box on
        ``z_mid`` or the 3D box over ``z_min``..``z_max``; a single-slice target gives the 2D box either way."""
        if mode not in BOX_MODES:
            raise ValueError(f"unknown box mode {mode!r}; choose one of {', '.join(BOX_MODES)}")
        from lesionsam.inference.boxes import Box

        lo_z, hi_z = (self.z_mid, self.z_mid) if mode == "2d" else (self.z_min, self.z_max)
        return Box(lo=(self.x_min, self.y_min, lo_z), hi=(self.x_max, self.y_max, hi_z))


def challenge_box(gt: np.ndarray, shift: int) -> ChallengeBox:
    """The box ``get_boxes.py`` builds for the (D, H, W) boolean target ``gt`` with jitter ``shift`` (0..5).

    Raises:
        ValueError: an empty target or a shift outside 0..5.
    """
    gt = np.asarray(gt, dtype=bool)
    if gt.ndim != 3 or not gt.any():
        raise ValueError("the challenge box needs a non-empty 3D target")
    if not 0 <= shift <= 5:
        raise ValueError(f"the box jitter is 0..5 voxels (on a 256 grid), got {shift}")
    z = np.nonzero(gt)[0]
    z_mid = int(z[len(z) // 2])
    ys, xs = np.nonzero(gt[z_mid])
    h, w = gt.shape[1:]
    sy, sx = int(shift * h / 256), int(shift * w / 256)
    return ChallengeBox(
        z_min=int(z.min()),
        z_max=int(z.max()),
        z_mid=z_mid,
        y_min=max(0, int(ys.min()) - sy),
        y_max=min(h - 1, int(ys.max()) + sy),
        x_min=max(0, int(xs.min()) - sx),
        x_max=min(w - 1, int(xs.max()) + sx),
        shift=int(shift),
    )


def next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[tuple[int, int, int], bool] | None:
    """The challenge's next click on (D, H, W) masks: ``((d, h, w), positive)``, or None when there is no error."""
    error = np.asarray(pred, dtype=bool) != np.asarray(gt, dtype=bool)
    if not error.any():
        return None
    comps, _ = label_lesions(error)
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    largest = comps == int(np.argmax(sizes))
    box = ndimage.find_objects(largest.astype(np.uint8))[0]
    crop = np.pad(largest[box], 1)  # voxels outside the component's bounding box are background
    edt = ndimage.distance_transform_edt(crop)[1:-1, 1:-1, 1:-1]
    ties = np.argwhere(edt == edt.max())
    pick = ties[np.random.RandomState(TIE_SEED).choice(len(ties))]
    dhw = tuple(int(p + b.start) for p, b in zip(pick, box, strict=True))
    return dhw, bool(np.asarray(gt)[dhw])  # type: ignore[return-value]


def challenge_nsd(pred: np.ndarray, gt: np.ndarray, spacing_dhw_mm: Sequence[float], dice_value: float) -> float:
    """NSD at 2 mm of (D, H, W) masks (spacing in the same order), 0 when ``dice_value`` <= 0.2 (as scored)."""
    if dice_value <= NSD_MIN_DICE:
        return 0.0
    return surface_dice(area_surface_distances(pred, gt, spacing_dhw_mm), NSD_TOLERANCE_MM)


def click_auc(values: Sequence[float]) -> float:
    """Trapezoidal area of the last 5 values with unit spacing (at most 4), as the script's DSC_AUC / NSD_AUC."""
    v = np.asarray(values, dtype=float)[-N_CLICKS:]
    if v.size < 2:
        raise ValueError(f"the click AUC needs the {N_CLICKS} click steps, got {v.size} value(s)")
    return float(integrate.trapezoid(v, dx=1.0))


@dataclass
class CaseResult:
    """One case under the challenge protocol.

    Attributes:
        case: case id; voxels, volume_ml: the target's size; box: its challenge box.
        dsc, nsd: after the box and after each click (6 values).
        clicks: the clicks given, (i, j, k, label) in ITK voxel indices (fewer than 5 when an error vanished).
        seconds: the engine's time per step (6 values).
    """

    case: str
    voxels: int
    volume_ml: float
    box: ChallengeBox
    dsc: list[float]
    nsd: list[float]
    clicks: list[tuple[int, int, int, int]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def dsc_auc(self) -> float:
        return click_auc(self.dsc)

    @property
    def nsd_auc(self) -> float:
        return click_auc(self.nsd)

    def row(self) -> dict[str, Any]:
        """One CSV row: case, size, DSC_AUC, NSD_AUC, final DSC/NSD, seconds, then every step's scores."""
        row: dict[str, Any] = {"case": self.case, "voxels": self.voxels, "volume_ml": self.volume_ml}
        row.update(dsc_auc=self.dsc_auc, nsd_auc=self.nsd_auc, dsc_final=self.dsc[-1], nsd_final=self.nsd[-1])
        row["seconds"] = float(sum(self.seconds))
        row.update({f"dsc_{k}": v for k, v in enumerate(self.dsc, start=1)})
        row.update({f"nsd_{k}": v for k, v in enumerate(self.nsd, start=1)})
        return row


def _lesion_for(
    session: InteractiveSession, labels: np.ndarray, gt: np.ndarray, dhw: tuple, positive: bool
) -> int | None:
    """Which session lesion the click at ``dhw`` refines (None: a new one); see the module docstring."""
    if not positive:
        return int(labels[dhw])
    comps, _ = label_lesions(gt)
    under = labels[comps == comps[dhw]]
    counts = np.bincount(under[under > 0].astype(np.int64))
    if counts.size and counts.max() > 0:
        return int(np.argmax(counts))
    empty = [info.id for info in session.lesions() if info.bbox is None]
    return empty[0] if empty else None


def case_cvpr25(
    predictor: Predictor,
    image: Volume,
    label_map: Volume,
    *,
    label: int,
    case: str = "",
    shift: int = 0,
    box: str = "2d",
    open_session: Callable[[Volume], InteractiveSession] | None = None,
) -> CaseResult | None:
    """The challenge protocol on the target ``label_map == label`` of one case (None when it has no such voxel).

    Args:
        predictor: a click-promptable predictor (one interactive session on ``image`` runs the case).
        image: the scan (3D); label_map: its ground truth on the same grid.
        label: the target value; case: its id; shift: the box jitter (0..5); box: ``"2d"`` or ``"3d"``.
        open_session: what opens the session (default ``InteractiveSession(predictor, image)``).

    Raises:
        ValueError: the label map is not on the image's grid; a bad shift or box mode.
    """
    from lesionsam.inference.session import InteractiveSession

    if not image.same_geometry(label_map):
        raise ValueError(
            f"case {case!r}: the label map is not on the image grid ({image.geometry_difference(label_map)})"
        )
    if box not in BOX_MODES:
        raise ValueError(f"unknown box mode {box!r}; choose one of {', '.join(BOX_MODES)}")
    gt = np.asarray(label_map.array) == label
    if not gt.any():
        return None
    cbox = challenge_box(gt, shift)
    spacing = spacing_dhw(image.spacing)
    session = open_session(image) if open_session is not None else InteractiveSession(predictor, image)
    voxels = int(gt.sum())
    out = CaseResult(case, voxels, voxels * float(np.prod(image.spacing)) / 1000.0, cbox, [], [])

    def score(labels: np.ndarray, seconds: float) -> None:
        d = dice(labels > 0, gt)
        out.dsc.append(float(d))
        out.nsd.append(challenge_nsd(labels > 0, gt, spacing, float(d)))
        out.seconds.append(seconds)

    start = time.perf_counter()
    session.box(cbox.engine_box(box))
    labels = session.label_map()
    score(labels, time.perf_counter() - start)
    for _ in range(N_CLICKS):
        found = next_click(labels > 0, gt)
        if found is None:  # nothing left to click on: the scores repeat
            out.dsc.append(out.dsc[-1])
            out.nsd.append(out.nsd[-1])
            out.seconds.append(0.0)
            continue
        dhw, positive = found
        lesion = _lesion_for(session, labels, gt, dhw, positive)
        start = time.perf_counter()
        session.click((dhw[2], dhw[1], dhw[0]), positive=positive, lesion=lesion)
        labels = session.label_map()
        score(labels, time.perf_counter() - start)
        out.clicks.append((dhw[2], dhw[1], dhw[0], int(positive)))
    return out


#: The overall metrics (means over cases), as the challenge reports them.
SUMMARY_KEYS: tuple[str, ...] = ("dsc_auc", "nsd_auc", "dsc_final", "nsd_final", "seconds")


def summarise_cvpr25(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Mean and sd over cases of DSC_AUC, NSD_AUC, final DSC/NSD and seconds, and the mean DSC/NSD per step."""
    if not results:
        return {"n_cases": 0, **{k: None for k in SUMMARY_KEYS}, "dsc_mean": [], "nsd_mean": []}
    rows = [r.row() for r in results]
    out: dict[str, Any] = {"n_cases": len(results)}
    for k in SUMMARY_KEYS:
        v = np.asarray([row[k] for row in rows], dtype=float)
        out[k] = {"mean": float(v.mean()), "sd": float(v.std())}
    out["dsc_mean"] = [float(v) for v in np.mean([r.dsc for r in results], axis=0)]
    out["nsd_mean"] = [float(v) for v in np.mean([r.nsd for r in results], axis=0)]
    return out


def cvpr25_table(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    """The printed summary: the challenge's five numbers and the mean curve."""
    if not summary["n_cases"]:
        return "no case holds the target label: nothing to score"
    s = summary
    steps = "  ".join(f"{k}:{d:.3f}/{n:.3f}" for k, (d, n) in enumerate(zip(s["dsc_mean"], s["nsd_mean"], strict=True)))
    return "\n".join(
        [
            f"CVPR 2025 interactive protocol over {s['n_cases']} case(s): {settings['box']} box, then "
            f"{N_CLICKS} clicks at the largest error's centre",
            f"  DSC_AUC {s['dsc_auc']['mean']:.3f} ± {s['dsc_auc']['sd']:.3f}   NSD_AUC {s['nsd_auc']['mean']:.3f} ± "
            f"{s['nsd_auc']['sd']:.3f}   (max {N_CLICKS - 1})",
            f"  final DSC {s['dsc_final']['mean']:.3f}   final NSD {s['nsd_final']['mean']:.3f}   "
            f"time per case {s['seconds']['mean']:.2f} s",
            f"  mean DSC/NSD after step (0 = box)  {steps}",
        ]
    )


def cvpr25_csv(results: Sequence[CaseResult]) -> str:
    """``cvpr25.csv``: one row per case (:meth:`CaseResult.row`); floats with 6 significant digits."""
    if not results:
        return ""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    rows = [r.row() for r in results]
    writer.writerow(list(rows[0]))
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row.values()])
    return buf.getvalue()


def cvpr25_json(results: Sequence[CaseResult], settings: dict[str, Any]) -> dict[str, Any]:
    """The content of ``cvpr25.json``: settings, the protocol in words, the summary and every case."""

    def clean(v: Any) -> Any:
        return json_float(v) if isinstance(v, float) and not math.isfinite(v) else v

    cases = [
        {
            **{k: clean(v) for k, v in r.row().items()},
            "box": vars(r.box),
            "clicks": [list(c) for c in r.clicks],
            "seconds_per_step": r.seconds,
        }
        for r in results
    ]
    return {
        "format": "lesionsam-cvpr25",
        "version": 1,
        "settings": settings,
        "protocol": (
            "CVPR 2025 interactive challenge (CVPR25_iter_eval.py): box on the target's middle slice (+ z-range), "
            "then 5 clicks each at the max-EDT voxel of the largest 26-connected error component (positive where GT); "
            "Dice and NSD@2mm (0 when Dice <= 0.2) after every step; AUC = trapezoid of the 5 click steps (max 4)"
        ),
        "summary": summarise_cvpr25(results),
        "cases": cases,
    }
