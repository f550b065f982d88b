"""Size-adaptive zoom-in: a small lesion is segmented again in a window at a finer spacing.

At SAM-Med3D's 1.5 mm a token is 24 mm and a low-res logit 6 mm, so a tumour under 1 cm³ is two logits across, and
the official weights never saw such masks (SAM-Med3D, §3.2). The engine therefore looks at a small lesion closer:

1. **Estimate its size** from the lesion's first prompt: a box's extent, or the mask of a first pass on the usual
   grid with the first positive click (:func:`extent_mm`; nothing found counts as smallest).
2. **Choose a factor** (:meth:`ZoomPolicy.factor`): enough that the lesion's largest extent fills ``fill`` of the
   window's side, at most ``max_factor`` and never finer than ``finest_spacing``; below ``min_factor`` the lesion
   stays on the usual grid (large lesions are not zoomed).
3. **A zoomed view** (:func:`zoom_view`): a grid of exactly one window (S³ voxels at spacing s / f, the canonical
   orientation), centred on the first pass's mask (or the click), resampled from the input image with the image's
   own normalisation (:meth:`~lesionsam.data.transforms.Preprocessor.onto`). The lesion's prompts are mapped into
   it; the first pass's result becomes the prior mask of the first decode (:func:`view_prior`). Its embedding is
   cached in the view, so refining clicks decode only, as on the usual grid.
4. The view's ``source`` is the input grid, so the lesion's probability maps back onto it exactly as a lesion of
   the usual grid does (:func:`~lesionsam.inference.regions.invert_region`).

A zoomed lesion lives in its one window: it cannot grow beyond it (the factor leaves it room: ``fill`` < 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lesionsam.data.geometry import placeholder, resample
from lesionsam.data.io import Volume
from lesionsam.data.transforms import Preprocessed, Preprocessor
from lesionsam.inference.regions import source_region
from lesionsam.inference.windows import EmbeddingCache, LesionMap, WindowRunner
from lesionsam.utils.components import bounding_box


@dataclass(frozen=True)
class ZoomPolicy:
    """When and how much a lesion is zoomed into (the module docstring).

    Attributes:
        fill: share of the zoomed window's side that the lesion's largest extent should fill (0 < fill < 1).
        max_factor: the largest zoom factor (the spacing divided by at most this).
        finest_spacing: the finest spacing a view may have, mm (a limit on the factor too).
        min_factor: a factor below this is not worth a second pass: the lesion stays on the usual grid.
        prior: give the first pass's mask as the zoomed window's first mask prompt.
        passes: how often a click lesion's size is measured: 1, from the first pass on the usual grid; 2, also
            from the zoomed pass, the view made again at the factor that asks for when it differs by 15 % or more.
        fixed: zoom every lesion by this factor whatever its size (capped by ``finest_spacing``; 1.0: none): the
            non-adaptive baseline of the comparisons.
        first: where a click lesion's first pass looks. ``"usual"``: on the usual grid, then zoomed when small (two
            encodes for a small lesion). ``"zoomed"``: in a view at the largest factor (``fixed``, when given)
            around the click; a lesion that fits there and wants about that factor stays in it (one encode: most
            lesions of interest are small), one that wants less is viewed again at its factor, with that pass as
            its prior, and one as wide as the view goes on as ``"usual"`` (a large lesion pays one encode more). A
            box's extent decides without a pass either way.
    """

    fill: float = 0.6
    max_factor: float = 3.0
    finest_spacing: float = 0.25
    min_factor: float = 1.25
    prior: bool = True
    passes: int = 1
    fixed: float | None = None
    first: str = "usual"

    def __post_init__(self) -> None:
        for name in ("fill", "max_factor", "finest_spacing", "min_factor", "fixed"):
            value = getattr(self, name)
            if name == "fixed" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"zoom {name} must be a finite number, got {value!r}")
        if not 0.0 < self.fill < 1.0:
            raise ValueError(f"zoom fill must be in (0, 1) (share of the window's side), got {self.fill}")
        if self.max_factor < 1.0 or self.min_factor < 1.0:
            raise ValueError(f"zoom factors must be >= 1, got max {self.max_factor}, min {self.min_factor}")
        if isinstance(self.passes, bool) or not isinstance(self.passes, int) or not 1 <= self.passes <= 3:
            raise ValueError(f"zoom passes must be 1, 2 or 3, got {self.passes!r}")
        if self.fixed is not None and self.fixed < 1.0:
            raise ValueError(f"a fixed zoom factor must be >= 1, got {self.fixed}")
        if self.finest_spacing <= 0:
            raise ValueError(f"zoom finest_spacing must be a positive number of mm, got {self.finest_spacing}")
        if self.first not in ("usual", "zoomed"):
            raise ValueError(f"zoom first must be 'usual' or 'zoomed', got {self.first!r}")
        if self.first == "zoomed" and self.passes != 1:
            raise ValueError("zoom first=zoomed measures the lesion in the zoomed view already: leave passes at 1")

    def factor(self, extent_mm: float | None, *, window_mm: float, spacing_mm: float) -> float:
        """The zoom factor for a lesion of largest extent ``extent_mm`` (None: nothing found: the largest factor)
        in a window of side ``window_mm`` on a grid of ``spacing_mm``; 1.0 means no zoom."""
        if self.fixed is not None:
            f = min(float(self.fixed), spacing_mm / self.finest_spacing)
            return f if f > 1.0 else 1.0
        cap = min(self.max_factor, spacing_mm / self.finest_spacing)
        want = cap if not extent_mm or extent_mm <= 0 else self.fill * window_mm / extent_mm
        f = min(cap, want)
        return float(f) if f >= self.min_factor else 1.0


#: What ``--zoom`` takes (:func:`parse_zoom`).
ZOOM_HELP = (
    "zoom into small lesions: 'off', 'auto' (size-adaptive, the validated defaults), a number (every lesion zoomed "
    "by that factor), or 'auto' with settings, e.g. 'auto,fill=0.6,max=3,finest=0.25,min=1.25,prior=no,first=zoomed'"
)
_KEYS = {
    "fill": "fill",
    "max": "max_factor",
    "finest": "finest_spacing",
    "min": "min_factor",
    "prior": "prior",
    "passes": "passes",
    "first": "first",
}
#: The settings that take a word, and what each word gives.
_CHOICES: dict[str, dict[str, object]] = {
    "prior": {"yes": True, "no": False},
    "first": {"usual": "usual", "zoomed": "zoomed"},
}


def parse_zoom(text: str) -> ZoomPolicy | None:
    """``--zoom``'s value as a policy (None for ``off``); ``ValueError`` with the accepted forms otherwise."""
    spec = str(text).strip().lower()
    if spec in ("off", "none", "no", "1", "1.0"):
        return None
    head, *items = [part.strip() for part in spec.split(",")]
    settings: dict[str, object] = {}
    if head != "auto":
        try:
            settings["fixed"] = float(head)
        except ValueError:
            raise ValueError(f"--zoom {text!r}: {ZOOM_HELP}") from None
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in _KEYS:
            raise ValueError(f"--zoom {text!r}: unknown setting {item!r}; settings are {', '.join(_KEYS)}")
        if "fixed" in settings and key not in ("prior", "first"):
            raise ValueError(f"--zoom {text!r}: a fixed factor takes only prior= and first=, got {item!r}")
        if key in _CHOICES:
            choices = _CHOICES[key]
            if value not in choices:
                raise ValueError(f"--zoom {text!r}: {' or '.join(f'{key}={c}' for c in choices)}, got {value!r}")
            settings[_KEYS[key]] = choices[value]
            continue
        try:
            settings[_KEYS[key]] = int(value) if key == "passes" else float(value)
        except ValueError:
            raise ValueError(f"--zoom {text!r}: {key} must be a number, got {value!r}") from None
    return ZoomPolicy(**settings)  # type: ignore[arg-type]


def zoom_spec(policy: ZoomPolicy | None) -> str:
    """The ``--zoom`` value that gives ``policy`` back (:func:`parse_zoom`), for reports and manifests."""
    if policy is None:
        return "off"
    first = "" if policy.first == "usual" else f",first={policy.first}"
    if policy.fixed is not None:
        return f"{policy.fixed:g}" + ("" if policy.prior else ",prior=no") + first
    prior = "yes" if policy.prior else "no"
    return (
        f"auto,fill={policy.fill:g},max={policy.max_factor:g},finest={policy.finest_spacing:g},"
        f"min={policy.min_factor:g},prior={prior},passes={policy.passes}{first}"
    )


@dataclass
class ZoomView:
    """A lesion's zoomed window: its grid (one window of S³ voxels), the runner on it and its embedding cache.

    Attributes:
        factor: the zoom factor (the view's spacing is the usual one divided by it).
        pre: the view as a :class:`~lesionsam.data.transforms.Preprocessed` (``source``: the input grid).
        runner: the model's window engine on ``pre`` (one window: the view is the window).
        cache: the view's encoded window (the lesion's refining clicks decode from it).
    """

    factor: float
    pre: Preprocessed
    runner: WindowRunner
    cache: EmbeddingCache = field(default_factory=dict)


def extent_mm(canon: LesionMap, threshold: float, spacing: float) -> float | None:
    """The largest side (mm) of the bounding box of a lesion's voxels above ``threshold`` on its canonical map (grid
    spacing ``spacing`` mm); None when there is none."""
    box = bounding_box(canon.prob > threshold) if canon.prob.size else None
    if box is None:
        return None
    return float(max(s.stop - s.start for s in box)) * float(spacing)


def zoom_grid(pre: Preprocessed, center_world: np.ndarray, factor: float, side: int) -> Volume:
    """A cube of ``side``³ voxels at ``pre``'s canonical spacing divided by ``factor``, in its orientation, whose
    centre is the LPS point ``center_world`` (its ``array`` a placeholder)."""
    spacing = tuple(float(s) / factor for s in pre.grid.spacing)
    half = (side - 1) / 2.0
    offset = (np.full(3, half) * np.asarray(spacing)) @ pre.grid.direction_matrix.T
    origin = tuple(float(v) for v in np.asarray(center_world, dtype=float) - offset)
    return Volume(
        array=placeholder((side, side, side), np.float32),
        spacing=spacing,  # type: ignore[arg-type]
        origin=origin,  # type: ignore[arg-type]
        direction=pre.grid.direction,
    )


def zoom_view(
    runner: WindowRunner,
    preprocessor: Preprocessor,
    raw: Volume | None,
    center_world: np.ndarray,
    factor: float,
) -> ZoomView:
    """The zoomed view of a lesion centred on ``center_world`` (LPS mm).

    Args:
        runner: the window engine on the image's usual canonical grid (its model, settings and image).
        preprocessor: how the image was preprocessed.
        raw: the input image itself (the view is resampled from it, so an input finer than the usual grid shows its
            own detail); None resamples the usual canonical image instead.
        factor: the zoom factor (> 1).
    """
    pre = runner.pre
    grid = zoom_grid(pre, center_world, factor, runner.crop)
    view = preprocessor.onto(_part_of(raw, pre, grid) if raw is not None else None, grid, pre)
    return ZoomView(factor=factor, pre=view, runner=runner.on(view, max_windows=1))


def _part_of(raw: Volume, pre: Preprocessed, grid: Volume) -> Volume:
    """The part of the input image that ``grid`` reaches (a sub-volume with its own origin; resampling it onto the
    grid equals resampling the whole image, which need not be handed to SimpleITK)."""
    probe = Preprocessed(image=grid.array, label=None, grid=grid, source=pre.source, background=0.0, mean=0.0, std=1.0)
    full = tuple(slice(0, n) for n in grid.spatial_shape)
    region = source_region(probe, full)  # type: ignore[arg-type]
    if any(s.stop <= s.start for s in region):
        region = tuple(slice(0, min(1, n)) for n in raw.spatial_shape)  # the grid lies outside: any voxel will do
    lo_ijk = np.array([s.start for s in region], dtype=float)[::-1]
    return Volume(
        array=raw.array[region],
        spacing=raw.spacing,
        origin=tuple(float(v) for v in raw.index_to_world(lo_ijk)),  # type: ignore[arg-type]
        direction=raw.direction,
    )


def view_prior(canon: LesionMap, usual: Preprocessed, view: Preprocessed) -> np.ndarray | None:
    """The first pass's lesion (``canon``, on ``usual``'s canonical grid) as (S, S, S) logits on the view's grid
    (adjusted scale, ±20 at most, -20 where the first pass found nothing); None when it found nothing."""
    if canon.prob.size == 0 or not (canon.prob > 0).any():
        return None
    lo_ijk = np.array([s.start for s in canon.region], dtype=float)[::-1]
    src = Volume(
        array=canon.prob,
        spacing=usual.grid.spacing,
        origin=tuple(float(v) for v in usual.grid.index_to_world(lo_ijk)),  # type: ignore[arg-type]
        direction=usual.grid.direction,
    )
    prob = resample(canon.prob, src, view.grid, interpolator="linear", default=0.0, output_float=True)
    p = np.clip(prob.astype(np.float64), 1e-9, 1 - 1e-9)  # float64: 1 - 1e-9 is not 1
    return np.clip(np.log(p) - np.log1p(-p), -20.0, 20.0).astype(np.float32)


__all__ = [
    "ZOOM_HELP",
    "ZoomPolicy",
    "ZoomView",
    "extent_mm",
    "parse_zoom",
    "view_prior",
    "zoom_grid",
    "zoom_spec",
    "zoom_view",
]
