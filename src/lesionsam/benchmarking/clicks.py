"""``lesionsam bench clicks``: the click-curve protocol (``evaluate-clicks``) through the engine, against what it cost
before the engine (one :meth:`Predictor.predict` per click), side by side in one run.

Both engines run the same protocol code (:func:`~lesionsam.evaluation.interactive.case_click_curves`: the same clicks,
seeded per lesion) on the same cases with the same model:

* **session**: one :class:`~lesionsam.inference.session.InteractiveSession` per case; a lesion's first click encodes its
  window once, every later click runs the decoder from the cached embedding and the previous low-res logits;
* **predict per click**: every click segments the lesion again from all its clicks so far with
  :meth:`Predictor.predict <lesionsam.inference.predictor.Predictor.predict>` (a fresh session: the window is encoded
  again), as the protocol did before issue 21.

Reported: seconds of each (the cases' reading excluded), their ratio, image-encoder calls of each, and whether the two
gave the same Dice curves (they must: the engine's clicks given one by one equal the same clicks given at once).
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from lesionsam.benchmarking.result import JsonResult
from lesionsam.data.io import Volume, case_id, is_image_path, read_image
from lesionsam.evaluation.interactive import LesionCurve, case_click_curves
from lesionsam.inference.prediction import LesionClicks
from lesionsam.inference.predictor import Predictor

#: The two engines, in the table's order.
ENGINES = ("session", "predict per click")


@dataclass
class ClicksBench(JsonResult):
    """Seconds and image-encoder calls of the click-curve protocol per engine, and whether their curves agree."""

    data: str
    checkpoint: str | None
    cases: int
    lesions: int
    n_clicks: int
    threads: int
    seconds: dict[str, float] = field(default_factory=dict)
    encodes: dict[str, int] = field(default_factory=dict)
    same_curves: bool = False
    mean_auc: float = float("nan")

    def json_extra(self) -> dict[str, float]:
        return {"speed_up": self.speed_up}

    @property
    def speed_up(self) -> float:
        """How many times faster the session is than one predict per click."""
        return self.seconds[ENGINES[1]] / self.seconds[ENGINES[0]]


class PredictPerClick:
    """The click-curve protocol's engine before issue 21, with the session's ``reset``/``click``/``label_map`` (a
    click's update covers the whole map): each click calls :meth:`Predictor.predict` with all the lesion's clicks so
    far (the window is encoded every time)."""

    def __init__(self, predictor: Predictor, image: Volume) -> None:
        self.predictor = predictor
        predictor.set_image(image)
        self.reset()

    def reset(self) -> None:
        self.points: list[tuple[int, int, int]] = []
        self.labels: list[int] = []
        self.labels_map: np.ndarray | None = None

    def click(self, point: tuple[int, int, int], *, positive: bool, lesion: int | None = None) -> SimpleNamespace:
        self.points.append(point)
        self.labels.append(int(positive))
        self.labels_map = self.predictor.predict([LesionClicks(points=self.points, labels=self.labels)]).labels
        return SimpleNamespace(
            lesion=1, region=tuple(slice(0, n) for n in self.labels_map.shape), labels=self.labels_map
        )

    def label_map(self) -> np.ndarray:
        assert self.labels_map is not None, "click first"
        return self.labels_map


def bench_clicks(
    data: str | Path,
    *,
    checkpoint: str | None = None,
    preset: str | None = None,
    label: int = 2,
    n_clicks: int = 10,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = False,
) -> ClicksBench:
    """Time the click-curve protocol on the cases of ``data`` (``imagesTr/`` and ``labelsTr/``) with both engines.

    Args:
        data: a data set folder (MSD layout), e.g. the demo's test set.
        checkpoint, preset: the model (:meth:`Predictor.from_checkpoint`; None: random weights of ``preset``).
        label: the lesion value; n_clicks: clicks per lesion (the protocol's N).
        device, threads: where it runs (threads: torch's CPU threads, unchanged when None).
        progress: a line per engine on stderr.

    Raises:
        FileNotFoundError: no ``imagesTr``/``labelsTr`` case pairs in ``data``.
    """
    root = Path(data)
    labels = {case_id(p): p for p in sorted((root / "labelsTr").glob("*")) if is_image_path(p)}
    images = {case_id(p).removesuffix("_0000"): p for p in sorted((root / "imagesTr").glob("*")) if is_image_path(p)}
    pairs = [(cid, images[cid], labels[cid]) for cid in labels if cid in images]
    if not pairs:
        raise FileNotFoundError(f"{root}: no imagesTr/labelsTr case pairs")
    if threads is not None:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor.from_checkpoint(checkpoint, preset=preset, device=device)
    cases = [(cid, read_image(img), read_image(lab)) for cid, img, lab in pairs]
    encodes = [0]
    hook = predictor.model.image_encoder.register_forward_pre_hook(lambda *_: encodes.__setitem__(0, encodes[0] + 1))
    result = ClicksBench(str(root), checkpoint, len(cases), 0, n_clicks, torch.get_num_threads())
    curves: dict[str, list[LesionCurve]] = {}
    try:
        for engine in ENGINES:
            opener = None if engine == "session" else (lambda image: PredictPerClick(predictor, image))
            encodes[0] = 0
            t0 = time.perf_counter()
            curves[engine] = [
                curve
                for cid, image, lab in cases
                for curve in case_click_curves(
                    predictor, image, lab, label=label, n_clicks=n_clicks, case=cid, open_session=opener
                )
            ]
            result.seconds[engine] = time.perf_counter() - t0
            result.encodes[engine] = encodes[0]
            if progress:
                print(f"  {engine}: {result.seconds[engine]:.1f} s, {encodes[0]} encoder calls", file=sys.stderr)
    finally:
        hook.remove()
    session, per_click = (curves[e] for e in ENGINES)
    result.lesions = len(session)
    result.same_curves = [c.dice for c in session] == [c.dice for c in per_click]
    result.mean_auc = float(np.mean([c.auc for c in session])) if session else float("nan")
    return result


def format_clicks_table(r: ClicksBench) -> str:
    """A plain-text table of a :class:`ClicksBench`."""
    lines = [
        f"lesionsam bench clicks: {r.cases} cases, {r.lesions} lesions, {r.n_clicks} clicks each, threads={r.threads} "
        f"(data {r.data}, checkpoint {r.checkpoint or 'random weights'})",
        f"{'engine':<20}{'seconds':>10}{'encoder calls':>15}",
    ]
    for engine in ENGINES:
        lines.append(f"{engine:<20}{r.seconds[engine]:>10.1f}{r.encodes[engine]:>15d}")
    lines.append(
        f"session is {r.speed_up:.1f}x faster; same Dice curves: {'yes' if r.same_curves else 'NO'}; "
        f"mean AUC {r.mean_auc:.3f}"
    )
    return "\n".join(lines)
