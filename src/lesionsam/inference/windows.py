"""The one engine that segments a lesion from its prompts in model windows (shared by the one-shot
:class:`~lesionsam.inference.predictor.Predictor` and the :class:`~lesionsam.inference.session.InteractiveSession`).

A lesion's prompts are its clicks (canonical (d, h, w) indices, labels 1/0, in the order given) and, optionally, a
prior low-res mask (a box prompt: :mod:`lesionsam.inference.boxes`). The algorithm:

1. **First window.** A crop of side S centred on the lesion's *centre* (its first positive click, or its box's
   centre) is encoded once (:meth:`WindowRunner.encode`, cached per window in a dict the caller keeps) and the clicks
   inside it are decoded one after another, each decode receiving the previous low-res logits as the mask prompt
   (SAM-Med3D's interactive protocol). The chain's state (:class:`ChainState`: how many clicks were decoded, the last
   two low-res logits) is returned, so that a refining click decodes *one* more step from the stored logits
   (decoder only): the result equals decoding the whole sequence again.
2. **Growing.** While the mask touches a face of its crop that is not the volume's border, a window shifted by S/2
   over that face is segmented too, prompted by the mask so far and its most confident voxel there (plus the
   lesion's clicks inside it), up to ``max_windows`` windows.
3. :func:`lesion_probability` merges a lesion's windows on a canonical sub-box (max of the probabilities; the
   ``covered`` mask marks the windows' union) and keeps the connected components a positive click touches.
"""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import expit

from lesionsam.data.crops import CropBox, crop_box, take
from lesionsam.data.transforms import Preprocessed
from lesionsam.inference.postprocess import CLICK_RADIUS, keep_clicked_components
from lesionsam.models import Prompts, SegModel
from lesionsam.utils.components import bounding_box

#: A lesion's cache of encoded windows, keyed by the window's start (d, h, w) on the canonical grid.
EmbeddingCache = MutableMapping[tuple[int, int, int], object]

#: Canonical (d, h, w) limits (lower, upper; inclusive, continuous) that a lesion's voxel centres must lie within.
Bound = tuple[np.ndarray, np.ndarray]

#: Windows of one lesion: (crop box on the canonical grid, (S, S, S) float32 logits on the adjusted scale).
Windows = list[tuple[CropBox, np.ndarray]]


@dataclass(frozen=True)
class ChainState:
    """Where a lesion's first-window click chain stands.

    Attributes:
        decoded: clicks of the first window decoded so far (0: none).
        previous: (1, 1, L, L, L) low-res logits (model scale) fed to the last decode, or None.
        last: (1, 1, L, L, L) low-res logits of the last decode (or the box prior before any decode), or None.
    """

    decoded: int = 0
    previous: torch.Tensor | None = None
    last: torch.Tensor | None = None


@dataclass(frozen=True)
class LesionMap:
    """One lesion's probability on a sub-box of the canonical grid.

    Attributes:
        region: (D, H, W) slices of the canonical grid; everything outside has probability 0 and is not covered.
        prob: float32 probability on ``region`` (0 outside the kept components).
        covered: bool, the union of the lesion's windows on ``region``.
    """

    region: tuple[slice, slice, slice]
    prob: np.ndarray
    covered: np.ndarray


def bounded(box: CropBox, logits: np.ndarray, bound: Bound | None) -> np.ndarray:
    """``logits`` (S, S, S) of window ``box`` set to -20 at voxels whose centre lies outside ``bound`` (canonical
    (d, h, w) lower and upper limits, inclusive); unchanged without a bound."""
    if bound is None:
        return logits
    out = logits.copy()
    for axis in range(3):
        pos = np.arange(box.size[axis]) + box.start[axis]
        outside = (pos < bound[0][axis]) | (pos > bound[1][axis])
        index = [slice(None)] * 3
        index[axis] = outside  # type: ignore[call-overload]
        out[tuple(index)] = -20.0
    return out


def faces_touched(fg: np.ndarray) -> list[tuple[int, int]]:
    """(axis, side) pairs (side -1 = low face, +1 = high face) where a (S, S, S) mask touches its crop."""
    faces = []
    for axis in range(3):
        for side, idx in ((-1, 0), (1, fg.shape[axis] - 1)):
            if np.take(fg, idx, axis=axis).any():
                faces.append((axis, side))
    return faces


def assemble(windows: Sequence[tuple[CropBox, np.ndarray]], box: CropBox) -> np.ndarray:
    """Logits of earlier windows inside ``box`` (max where they overlap; -20 elsewhere), (S, S, S) float32."""
    out = np.full(box.size, -20.0, dtype=np.float32)
    for other, logits in windows:
        lo = np.maximum(box.start, other.start)
        hi = np.minimum(box.stop, other.stop)
        if np.any(hi <= lo):
            continue
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, box.start, strict=True))
        src = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, other.start, strict=True))
        out[dst] = np.maximum(out[dst], logits[src])
    return out


class WindowRunner:
    """Runs a promptable model on windows of one preprocessed image.

    Args:
        model: a click-promptable model in eval mode, on ``device``.
        pre: the image on the canonical grid.
        device: where the model runs.
        logit_offset: subtracted from every window's logits (logit adjustment); priors fed back get it added.
        max_windows: most windows per lesion.
        dtype: compute dtype of the model's encode and decode: float32, or bfloat16 through ``torch.autocast``
            (matrix products and convolutions in bfloat16, reductions and the outputs in float32).
        encoder: the model whose ``encode`` runs (default ``model``). For bfloat16, :meth:`Predictor.runner` gives
            a copy of ``model`` whose linear and convolution weights are bfloat16 (made once), so that autocast does
            not cast them again at every crop (the results are the same); decoding keeps ``model``.
    """

    def __init__(
        self,
        model: SegModel,
        pre: Preprocessed,
        *,
        device: torch.device,
        logit_offset: float,
        max_windows: int,
        dtype: torch.dtype = torch.float32,
        encoder: SegModel | None = None,
    ) -> None:
        self.model = model
        self.encoder = encoder if encoder is not None else model
        self.pre = pre
        self.device = device
        self.crop = int(model.img_size)
        self.logit_offset = float(logit_offset)
        self.max_windows = int(max_windows)
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"compute dtype must be float32 or bfloat16, got {dtype}")
        self.dtype = dtype

    def on(self, pre: Preprocessed, *, max_windows: int | None = None) -> WindowRunner:
        """The same model and settings on another image (a lesion's zoomed view: :mod:`lesionsam.inference.zoom`)."""
        return WindowRunner(
            self.model,
            pre,
            device=self.device,
            logit_offset=self.logit_offset,
            max_windows=self.max_windows if max_windows is None else max_windows,
            dtype=self.dtype,
            encoder=self.encoder,
        )

    def compute(self) -> contextlib.AbstractContextManager[Any]:
        """No gradients, and bfloat16 autocast when :attr:`dtype` asks for it."""
        if self.dtype == torch.float32:
            return torch.inference_mode()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
        return stack

    @property
    def shape(self) -> tuple[int, int, int]:
        """(D, H, W) of the canonical grid."""
        return self.pre.grid.spatial_shape

    def window(self, center: np.ndarray | Sequence[float]) -> CropBox:
        """The model window centred on a canonical (d, h, w) point."""
        return crop_box(center, self.crop, self.shape)

    def encode(self, box: CropBox, cache: EmbeddingCache | None = None) -> object:
        """The model's encoding of window ``box`` (from ``cache`` when it holds it; stored there otherwise)."""
        key = tuple(int(s) for s in box.start)
        if cache is not None and key in cache:
            return cache[key]
        crop = take(self.pre.image, box, pad_value=float(self.pre.background))
        image = torch.from_numpy(np.ascontiguousarray(crop))[None, None].to(self.device)
        with self.compute():
            encoded = self.encoder.encode(image)
        if cache is not None:
            cache[key] = encoded  # type: ignore[index]
        return encoded

    def prior_to_low(self, prior: np.ndarray) -> torch.Tensor:
        """(S, S, S) logits on the adjusted scale → (1, 1, L, L, L) mask prompt on the model's scale."""
        prior_t = torch.from_numpy(prior + np.float32(self.logit_offset))[None, None].to(self.device)
        size = (self.model.low_res_size,) * 3
        return torch.nn.functional.interpolate(prior_t, size=size, mode="trilinear", align_corners=False)

    def decode(
        self,
        encoded: object,
        clicks: np.ndarray,
        labels: np.ndarray,
        state: ChainState,
        text: str | None = None,
    ) -> tuple[np.ndarray, ChainState]:
        """Decode the clicks after ``state.decoded`` one after another (each with the previous low-res logits).

        Args:
            encoded: what :meth:`encode` returned for the window.
            clicks: (N, 3) crop-space (d, h, w) clicks, N >= 1 (all of the window's clicks so far, in order).
            labels: (N,) 1/0.
            state: the chain so far (``ChainState()`` to start; ``last`` may hold a prior mask prompt).
            text: a text prompt given with every decode (text-referred methods).

        Returns:
            ((S, S, S) float32 logits on the adjusted scale, the new state). With no new click the last step is
            decoded again from ``state.previous`` (same result, decoder only).
        """
        n = len(clicks)
        if n < 1:
            raise ValueError("a window needs at least one click to decode")
        steps = range(state.decoded + 1, n + 1) if n > state.decoded else range(n, n + 1)
        previous = state.previous if n <= state.decoded else state.last
        low = previous
        out = None
        with self.compute():
            for k in steps:
                previous = low
                pts = torch.as_tensor(clicks[None, :k], dtype=torch.float32, device=self.device)
                lab = torch.as_tensor(labels[None, :k], dtype=torch.int64, device=self.device)
                prompts = Prompts(points=pts, labels=lab, mask=low, text=[text] if text is not None else None)
                out = self.model.decode(encoded, prompts)
                low = out.low_res_logits[:, :1].float()
        assert out is not None
        logits = out.logits[0, 0].float().cpu().numpy() - np.float32(self.logit_offset)
        return logits, ChainState(decoded=n, previous=previous, last=low)

    def run_window(
        self,
        box: CropBox,
        clicks: np.ndarray,
        labels: np.ndarray,
        prior: np.ndarray | None,
        text: str | None = None,
        cache: EmbeddingCache | None = None,
    ) -> np.ndarray:
        """(S, S, S) logits of one window from crop-space clicks and optional (S, S, S) prior logits (adjusted)."""
        state = ChainState(last=self.prior_to_low(prior) if prior is not None else None)
        return self.decode(self.encode(box, cache), clicks, labels, state, text)[0]

    def first_window(
        self,
        center: np.ndarray,
        dhw: np.ndarray,
        labels: np.ndarray,
        state: ChainState,
        text: str | None = None,
        cache: EmbeddingCache | None = None,
    ) -> tuple[CropBox, np.ndarray, ChainState]:
        """The lesion's first window (centred on ``center``) decoded from its clicks inside it, continuing ``state``.

        Args:
            center: canonical (d, h, w) centre of the window.
            dhw: (N, 3) canonical clicks of the lesion in order; labels (N,) 1/0.
            state: the chain so far (``ChainState()``, or ``ChainState(last=box prior)`` for a box prompt).
        """
        box = self.window(center)
        inside = np.array([box.contains(p) for p in dhw], dtype=bool)
        if not inside.any():
            raise ValueError("the lesion's first window holds none of its clicks")
        clicks = np.clip(box.to_crop(dhw[inside]), 0, self.crop - 1)
        logits, new_state = self.decode(self.encode(box, cache), clicks, labels[inside], state, text)
        return box, logits, new_state

    def grow(
        self,
        first: tuple[CropBox, np.ndarray],
        dhw: np.ndarray,
        labels: np.ndarray,
        text: str | None = None,
        cache: EmbeddingCache | None = None,
        bound: Bound | None = None,
    ) -> Windows:
        """All windows of a lesion: ``first`` and the windows grown from it while the mask touches an inner face
        (each cut to ``bound``, when given)."""
        box0, logits0 = first
        windows: Windows = [first]
        center0 = np.asarray(box0.start) + self.crop // 2
        seen = {tuple(int(c) for c in center0)}
        queue = self._next_centers(box0, logits0, center0)
        while queue and len(windows) < self.max_windows:
            center = queue.pop(0)
            if tuple(center) in seen:
                continue
            seen.add(tuple(int(c) for c in center))
            box = self.window(center)
            inside = np.array([box.contains(p) for p in dhw], dtype=bool)
            prior = assemble(windows, box)
            if prior.max() <= 0:
                continue
            # Prompt a grown window with the mask so far and its most confident voxel there.
            peak = np.array(np.unravel_index(np.argmax(prior), prior.shape), dtype=float)
            extra = box.to_crop(dhw[inside]) if inside.any() else np.zeros((0, 3))
            clicks = np.clip(np.concatenate([peak[None], extra]), 0, self.crop - 1)
            labs = np.concatenate([[1], labels[inside]]).astype(np.int64)
            logits = bounded(box, self.run_window(box, clicks, labs, prior, text, cache), bound)
            windows.append((box, logits))
            queue.extend(self._next_centers(box, logits, center))
        return windows

    def _next_centers(self, box: CropBox, logits: np.ndarray, center: np.ndarray) -> list[np.ndarray]:
        """Centres of the windows shifted by S/2 over each inner crop face that the mask (logits > 0) touches."""
        shape, half = self.shape, self.crop // 2
        out = []
        for axis, side in faces_touched(logits > 0):
            at_border = box.start[axis] <= 0 if side < 0 else box.stop[axis] >= shape[axis]
            if not at_border:
                nxt = np.asarray(center).copy()
                nxt[axis] += side * half
                out.append(nxt)
        return out

    def segment(
        self,
        center: np.ndarray,
        dhw: np.ndarray,
        labels: np.ndarray,
        state: ChainState | None = None,
        text: str | None = None,
        cache: EmbeddingCache | None = None,
        bound: Bound | None = None,
    ) -> tuple[Windows, ChainState]:
        """First window then growing: every window of a lesion, and the first window's chain state. With ``bound``
        (a 3D box prompt's extent) every window's logits are cut to it (-20 outside), so the lesion never leaves it."""
        box, logits, new_state = self.first_window(center, dhw, labels, state or ChainState(), text, cache)
        return self.grow((box, bounded(box, logits, bound)), dhw, labels, text, cache, bound), new_state


def first_center(dhw: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The centre of a click lesion's first window: its first positive click (canonical (d, h, w))."""
    positives = dhw[labels == 1]
    if not len(positives):
        raise ValueError("a lesion needs at least one positive click inside it")
    return positives[0]


def lesion_probability(
    windows: Windows,
    positives: np.ndarray,
    shape: tuple[int, int, int],
    *,
    threshold: float,
    clicked_only: bool,
    margin: int = 2,
) -> LesionMap:
    """A lesion's probability on the smallest canonical sub-box that decides which input voxels are above
    ``threshold``: the box of its voxels above it, plus ``margin`` voxels (interpolating it gives, wherever an input
    voxel can be above the threshold, what interpolating the whole grid gives; empty when nothing is above).

    Args:
        windows: the lesion's windows (logits on the adjusted scale).
        positives: (P, 3) canonical positive clicks (the components they touch are kept when ``clicked_only``).
        shape: (D, H, W) of the canonical grid.
    """
    lo = np.asarray(shape)
    hi = np.zeros(3, dtype=int)
    for box, _ in windows:
        vol_sl, _ = box.overlap()
        lo = np.minimum(lo, [s.start for s in vol_sl])
        hi = np.maximum(hi, [s.stop for s in vol_sl])
    pts = np.floor(np.asarray(positives, dtype=float).reshape(-1, 3) + 0.5).astype(int)
    if len(pts):
        lo = np.minimum(lo, pts.min(axis=0) - CLICK_RADIUS)
        hi = np.maximum(hi, pts.max(axis=0) + CLICK_RADIUS + 1)
    lo = np.clip(lo - margin, 0, shape)
    hi = np.clip(hi + margin, lo, shape)
    region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    prob = np.zeros(tuple(hi - lo), dtype=np.float32)
    covered = np.zeros(prob.shape, dtype=bool)
    for box, logits in windows:
        vol_sl, crop_sl = box.overlap()
        dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(vol_sl, lo, strict=True))
        p = expit(logits[crop_sl])
        np.maximum(prob[dst], p, out=prob[dst])
        covered[dst] = True
    if clicked_only:
        prob[~keep_clicked_components(prob > threshold, pts - lo)] = 0.0
    # Only the box of the voxels above the threshold (plus ``margin``) can give an input voxel a value above it: a
    # linear (or nearest) interpolation of values at or below the threshold stays at or below it.
    box = bounding_box(prob > threshold)
    if box is None:
        empty = (slice(0, 0),) * 3
        return LesionMap(region=empty, prob=np.zeros((0, 0, 0), np.float32), covered=np.zeros((0, 0, 0), bool))  # type: ignore[arg-type]
    tight = tuple(
        slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, prob.shape, strict=True)
    )
    region = tuple(slice(r.start + t.start, r.start + t.stop) for r, t in zip(region, tight, strict=True))
    return LesionMap(region=region, prob=prob[tight].copy(), covered=covered[tight].copy())  # type: ignore[arg-type]
