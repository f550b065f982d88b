"""The interactive protocol: Dice after 1…N simulated clicks per lesion, the area under that curve, NoC@80/90.

Interactive methods are judged by how Dice grows with clicks (SAM-Med3D reports Dice after 1 and 10 clicks; the
3D interactive segmentation challenges score the area under the Dice-vs-interactions curve; NoC@90 counts the
clicks needed to reach a Dice of 0.9, as in RITM). For every ground-truth lesion (a 26-connected component of
``label == target``) of every case:

1. the first click is a positive click inside the lesion; each later click is placed on the error region of the
   current prediction (a false-negative voxel gives a positive click, a false-positive voxel a negative one) —
   the training's click rounds (:class:`lesionsam.data.click_rounds.ClickRounds`, clicks of mode ``"random"`` or
   ``"center"``), seeded per lesion from ``(seed, case id, lesion number)`` so that results do not depend on
   the order of cases;
2. the clicks go to an interactive session on the case's image
   (:class:`~lesionsam.inference.session.InteractiveSession`, one per case, emptied before each lesion): the first
   click opens a lesion, each later click refines it — the decoder only, from the window's cached image embedding,
   with the previous low-res logits as its mask prompt (the previous mask fed back, as in training). The mask after
   click k is the one the predictor (:meth:`~lesionsam.inference.predictor.Predictor.predict`) gives for clicks
   1…k;
3. Dice(k) (:func:`~lesionsam.evaluation.dice.dice`) compares the session's mask (any lesion voxel, on the image's
   own grid) with that one lesion; other lesions count as background. When a prediction equals the lesion exactly
   there is nothing left to click on: the remaining Dice values repeat it.

Per lesion: **AUC** = trapezoidal area under Dice(k) for k = 1…N divided by N − 1 (the mean height, in [0, 1];
Dice(1) when N = 1; multiply by N − 1 for the un-normalised area); **NoC@80 / NoC@90** = the first k with
Dice(k) ≥ 0.8 / 0.9, or N when it is not reached within N clicks (counted as a failure, NoF).
"""

from __future__ import annotations

import csv
import io
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lesionsam.data.click_rounds import ClickRounds, Decoded, Round
from lesionsam.data.io import Volume
from lesionsam.evaluation.dice import dice
from lesionsam.evaluation.lesions import VOLUME_BINS_ML, json_float, volume_bin
from lesionsam.utils.components import bounding_box, label_lesions

if TYPE_CHECKING:
    from lesionsam.inference.predictor import Predictor
    from lesionsam.inference.session import InteractiveSession

#: Dice targets of the NoC columns (NoC@80, NoC@90).
NOC_TARGETS: tuple[float, ...] = (0.8, 0.9)


def curve_auc(values: Sequence[float]) -> float:
    """Trapezoidal area under Dice(k), k = 1…N, divided by N − 1 (the value itself when N = 1)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("an empty click curve has no area")
    if v.size == 1:
        return float(v[0])
    return float(((v[1:] + v[:-1]) / 2).sum() / (v.size - 1))


def clicks_to_reach(values: Sequence[float], target: float) -> tuple[int, bool]:
    """(NoC, reached): the first click number k (1-based) with Dice(k) ≥ ``target``; (N, False) if none."""
    for k, v in enumerate(values, start=1):
        if v >= target:
            return k, True
    return len(values), False


@dataclass
class LesionCurve:
    """The click curve of one lesion.

    Attributes:
        case: case id; lesion: component number (1-based, scipy's label order); voxels, volume_ml: its size.
        dice: Dice after click 1…N.
        clicks: the clicks given, (i, j, k, label) in ITK voxel indices of the image; fewer than N when a
            prediction was exact before the last click.
    """

    case: str
    lesion: int
    voxels: int
    volume_ml: float
    dice: list[float]
    clicks: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def auc(self) -> float:
        """:func:`curve_auc` of :attr:`dice`."""
        return curve_auc(self.dice)

    def noc(self, target: float) -> tuple[int, bool]:
        """:func:`clicks_to_reach` of :attr:`dice`."""
        return clicks_to_reach(self.dice, target)

    def row(self) -> dict[str, Any]:
        """One CSV/JSON row: case, lesion, size, Dice after each click, AUC, NoC@80/90 and whether reached, and the
        lesion's size bin (:func:`~lesionsam.evaluation.lesions.volume_bin`)."""
        row: dict[str, Any] = {"case": self.case, "lesion": self.lesion, "voxels": self.voxels}
        row["volume_ml"] = self.volume_ml
        row.update({f"dice_{k}": v for k, v in enumerate(self.dice, start=1)})
        row["auc"] = self.auc
        for t in NOC_TARGETS:
            n, ok = self.noc(t)
            row[f"noc{round(t * 100)}"] = n
            row[f"reached{round(t * 100)}"] = ok
        row["size_bin"] = volume_bin(self.volume_ml)
        return row


def _seed_for(seed: int, case: str, lesion: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(case.encode("utf-8")), int(lesion)])


def lesion_click_curve(
    session: InteractiveSession,
    lesion_mask: np.ndarray,
    *,
    n_clicks: int,
    mode: str = "random",
    rng: np.random.Generator | None = None,
) -> tuple[list[float], list[tuple[int, int, int, int]]]:
    """Dice after 1…``n_clicks`` simulated clicks on one lesion of a session's image.

    Args:
        session: an interactive session on the image (its lesions are removed first, so only this one counts).
        lesion_mask: (D, H, W) bool, the lesion on the image's own grid (SimpleITK array order (k, j, i)).
        n_clicks: N ≥ 1.
        mode: click simulation mode, ``"random"`` or ``"center"`` (:data:`lesionsam.data.clicks.CLICK_MODES`).
        rng: randomness of ``"random"`` mode.

    Returns:
        (Dice after each click, the clicks given as (i, j, k, label)).

    Raises:
        ValueError: an empty lesion mask or ``n_clicks`` < 1.
    """
    from lesionsam.inference.session_state import union

    if n_clicks < 1:
        raise ValueError(f"n_clicks must be >= 1, got {n_clicks}")
    gt = np.asarray(lesion_mask, dtype=bool)
    if not gt.any():
        raise ValueError("the lesion mask is empty: nothing to click on")
    session.reset()
    values: list[float] = []
    clicks: list[tuple[int, int, int, int]] = []
    lesion: int | None = None
    # The session holds this lesion alone, so its label map is what each update patched in: ``pred`` is kept
    # up to date from the updates (no whole-map composing per click), and the Dice is counted on the box that holds
    # the lesion and every region an update touched (nothing is predicted outside it: the same counts).
    pred = np.zeros(gt.shape, dtype=bool)
    support = bounding_box(gt)

    def click(r: Round) -> Decoded:
        nonlocal lesion, support
        d, h, w = (int(v) for v in r.points[-1])  # (k, j, i) array order → ITK (i, j, k)
        label = int(r.labels[-1])
        update = session.click((w, h, d), positive=label == 1, lesion=lesion)
        lesion = update.lesion
        pred[update.region] = update.labels > 0
        support = union(support, update.region)
        values.append(dice(pred[support], gt[support]))
        clicks.append((w, h, d, label))
        return Decoded(pred)

    ClickRounds.lesion(gt, rounds=n_clicks, mode=mode, rng=rng).run(click)
    values += [values[-1]] * (n_clicks - len(values))  # exact before the last click: nothing left to click on
    return values, clicks


def case_click_curves(
    predictor: Predictor,
    image: Volume,
    label_map: Volume,
    *,
    label: int,
    n_clicks: int,
    mode: str = "random",
    seed: int = 0,
    case: str = "",
    open_session: Callable[[Volume], InteractiveSession] | None = None,
) -> list[LesionCurve]:
    """One :class:`LesionCurve` per 26-connected lesion of ``label_map == label`` (none for a lesion-free case).

    Args:
        predictor: a click-promptable predictor; one :class:`~lesionsam.inference.session.InteractiveSession` on
            ``image`` runs every lesion's clicks (the predictor's own current image is left alone).
        image: the scan (3D); label_map: its ground truth on the same grid.
        label: the lesion value; n_clicks, mode: see :func:`lesion_click_curve`.
        seed: seeds each lesion's clicks from ``(seed, case, lesion number)``; case: the case id.
        open_session: what opens the session on ``image`` (default ``InteractiveSession(predictor, image)``; a
            benchmark gives another engine with the same ``reset``/``click``/``label_map``).

    Raises:
        ValueError: the label map is not on the image's grid.
    """
    from lesionsam.inference.session import InteractiveSession

    if not image.same_geometry(label_map):
        raise ValueError(
            f"case {case!r}: the label map is not on the image grid ({image.geometry_difference(label_map)})"
        )
    comps, n = label_lesions(np.asarray(label_map.array) == label)
    if n == 0:
        return []
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    sizes = np.bincount(comps.ravel(), minlength=n + 1)
    session = open_session(image) if open_session is not None else InteractiveSession(predictor, image)
    curves = []
    for lesion in range(1, n + 1):
        values, clicks = lesion_click_curve(
            session, comps == lesion, n_clicks=n_clicks, mode=mode, rng=_seed_for(seed, case, lesion)
        )
        voxels = int(sizes[lesion])
        curves.append(LesionCurve(case, lesion, voxels, voxels * voxel_ml, values, clicks))
    return curves


def summarise_curves(curves: Sequence[LesionCurve]) -> dict[str, Any]:
    """Mean (and sd) Dice after each click over lesions, mean AUC, mean NoC@80/90 and failures (NoF), also by size.

    Returns:
        A JSON-ready dict: ``n_lesions``, ``n_clicks``, ``dice_mean`` and ``dice_sd`` (lists over k = 1…N),
        ``auc_mean``, ``auc_sd``, and per target ``noc80``/``noc90`` (``mean``, ``failed``); None without lesions.
        ``by_size``: the same over the lesions of each :data:`~lesionsam.evaluation.lesions.VOLUME_BINS_ML` bin
        (every bin; ``n_lesions`` 0 and None for an empty one).
    """
    by_size = {
        name: _curve_stats([c for c in curves if volume_bin(c.volume_ml) == name]) for name, *_ in VOLUME_BINS_ML
    }
    return {**_curve_stats(curves), "by_size": by_size}


def _curve_stats(curves: Sequence[LesionCurve]) -> dict[str, Any]:
    """:func:`summarise_curves` without ``by_size``."""
    if not curves:
        return {"n_lesions": 0, "n_clicks": None, "dice_mean": [], "dice_sd": [], "auc_mean": None, "auc_sd": None}
    lengths = {len(c.dice) for c in curves}
    if len(lengths) != 1:
        raise ValueError(f"click curves of different lengths: {sorted(lengths)}")
    d = np.asarray([c.dice for c in curves], dtype=float)
    auc = np.asarray([c.auc for c in curves])
    out: dict[str, Any] = {
        "n_lesions": len(curves),
        "n_clicks": int(d.shape[1]),
        "dice_mean": [float(v) for v in d.mean(axis=0)],
        "dice_sd": [float(v) for v in d.std(axis=0)],
        "auc_mean": float(auc.mean()),
        "auc_sd": float(auc.std()),
    }
    for t in NOC_TARGETS:
        nocs = [c.noc(t) for c in curves]
        out[f"noc{round(t * 100)}"] = {
            "mean": float(np.mean([n for n, _ in nocs])),
            "failed": sum(not ok for _, ok in nocs),
        }
    return out


def curves_csv(curves: Sequence[LesionCurve]) -> str:
    """``clicks.csv``: one row per lesion (:meth:`LesionCurve.row`); floats with 6 significant digits."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    rows = [c.row() for c in curves]
    if not rows:
        return ""
    writer.writerow(list(rows[0]))
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) and not isinstance(v, bool) else v for v in row.values()])
    return buf.getvalue()


def curves_json(curves: Sequence[LesionCurve], settings: dict[str, Any]) -> dict[str, Any]:
    """The content of ``clicks.json``: settings, the protocol's definitions, the summary and every lesion."""

    def clean(v: Any) -> Any:
        return json_float(v) if isinstance(v, float) and not math.isfinite(v) else v

    lesions = [{**{k: clean(v) for k, v in c.row().items()}, "clicks": [list(x) for x in c.clicks]} for c in curves]
    return {
        "format": "lesionsam-clicks",
        "version": 1,
        "settings": settings,
        "protocol": (
            "per GT lesion: first click inside, then one click per round on the error region (FN = positive, "
            "FP = negative), seeded per (seed, case, lesion); the predictor decodes clicks 1..k with the previous "
            "low-res logits fed back; Dice vs that lesion; AUC = trapezoid area of Dice(k), k=1..N, / (N-1); "
            "NoC@t = first k with Dice >= t, N if never (counted as failed)"
        ),
        "summary": summarise_curves(curves),
        "lesions": lesions,
    }
