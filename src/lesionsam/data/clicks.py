"""Simulated clicks for interactive lesion segmentation (training and evaluation), and the mask fed back.

One of three kinds of "prompts" (docs/architecture.md): these are *simulated* clicks; the user's own clicks and
boxes are read in :mod:`lesionsam.inference.prompt_files`, and the model's prompt tensors are
:class:`lesionsam.models.Prompts`.

The training loop, the evaluator and the predictor all "click" the same way (SAM-Med3D, Wang et al. 2023,
*SAM-Med3D*, arXiv:2310.15161; the interior-most click follows RITM, Sofiiuk et al. 2022, *Reviving iterative
training with mask guidance for interactive segmentation*):

* **First click**: a voxel inside the lesion (positive, label 1).
* **Next clicks**: from the error region between the current prediction and the ground truth. A false-negative
  voxel gives a positive click (label 1), a false-positive voxel a negative click (label 0).

Conventions (shared with :class:`lesionsam.models.interface.Prompts`, but this module imports no model code):

* Volumes are tensors ``(B, 1, D, H, W)`` or ``(B, D, H, W)`` (batched API) or arrays ``(D, H, W)`` (NumPy
  conveniences). A voxel is foreground where its value is ``> 0.5`` (bool, 0/1 integer or float masks and
  probabilities; threshold logits yourself, e.g. ``logits > 0``).
* Clicks are ``points`` ``(B, N, 3)`` float voxel indices of the crop in tensor order ``(D, H, W)`` and ``labels``
  ``(B, N)`` int64: 1 positive, 0 negative, -1 padding. They live on the input volume's device.
* Boxes are ``(d0, h0, w0, d1, h1, w1)``: inclusive voxel corners, also in ``(D, H, W)`` order.
* Randomness comes only from the generator passed in (``torch.Generator`` on any device or
  ``numpy.random.Generator``); no global RNG state is read or changed. ``generator=None`` draws from a fresh,
  unseeded NumPy generator (not reproducible).

Modes of :class:`ClickSimulator`:

* ``"random"`` — first click: uniform over the lesion voxels. Next click: uniform over *all* error voxels
  (false negatives ∪ false positives), labelled by the set the voxel falls in, as in SAM-Med3D's training; so the
  click type is drawn with probability proportional to the voxel counts of the two error types.
* ``"center"`` — deterministic. First click: the interior-most voxel (largest Euclidean distance to the region's
  border, ``scipy.ndimage.distance_transform_edt``) of the largest 26-connected lesion component. Next click: the
  error type with more voxels is chosen (a tie goes to the false negatives, i.e. a positive click), then the
  interior-most voxel of its largest 26-connected component. The crop's outer faces count as border (the mask is
  zero-padded by one voxel before the distance transform), so a lesion cut by the crop still gets a central click.
  Among equally deep voxels (a plateau, as in a box-shaped region) the one nearest the plateau's mean is taken;
  remaining ties, and ties between equally large components, go to the first in C (D, H, W) order.

When a prediction equals the ground truth exactly there is no error to click on: :meth:`ClickSimulator.next` then
appends a *padding* click (label -1, coordinates 0) for that sample, so a batch stays rectangular; the prompt
encoder ignores it (``not_a_point``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from lesionsam.utils.components import bounding_box, label_lesions
from lesionsam.utils.options import look_up_option

__all__ = [
    "CLICK_MODES",
    "ClickSimulator",
    "Generator",
    "box_from_label",
    "boxes_from_labels",
    "first_click",
    "mask_prompt_from_logits",
    "next_click",
]

#: The click-placement modes of :class:`ClickSimulator`.
CLICK_MODES = ("random", "center")

#: A source of randomness: a torch generator (any device), a NumPy generator, or ``None`` (fresh, unseeded).
Generator = torch.Generator | np.random.Generator | None

#: Label of a padding click (no error left to click on).
PAD_LABEL = -1


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def _uniform(n: int, generator: Generator, device: torch.device) -> Tensor:
    """``n`` independent draws from U[0, 1) as a float64 tensor ``(n,)`` on ``device``."""
    if isinstance(generator, torch.Generator):
        u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    elif isinstance(generator, np.random.Generator):
        u = torch.from_numpy(generator.random(n))
    elif generator is None:
        u = torch.from_numpy(np.random.default_rng().random(n))
    else:
        raise TypeError(
            f"generator must be a torch.Generator, a numpy.random.Generator or None; got {type(generator).__name__}"
        )
    return u.to(device)


def _as_batch_mask(x: Tensor, name: str, where: str) -> Tensor:
    """Bring a ``(B, 1, D, H, W)`` or ``(B, D, H, W)`` volume to a bool tensor ``(B, D, H, W)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor (B, 1, D, H, W) or (B, D, H, W); got {type(x)}")
    if x.ndim == 5:
        if x.shape[1] != 1:
            raise ValueError(
                f"{where}: {name} must have one channel, shape (B, 1, D, H, W); got {tuple(x.shape)}. "
                "Select the target label first."
            )
        x = x[:, 0]
    elif x.ndim != 4:
        raise ValueError(f"{where}: {name} must have shape (B, 1, D, H, W) or (B, D, H, W); got {tuple(x.shape)}")
    return x if x.dtype == torch.bool else x > 0.5


def _flat_to_dhw(idx: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Flat C-order indices ``(B,)`` → voxel indices ``(B, 3)`` (int64) in ``(D, H, W)`` order."""
    _, h, w = shape
    return torch.stack((idx // (h * w), (idx // w) % h, idx % w), dim=-1)


def _sample_uniform(region: Tensor, generator: Generator) -> tuple[Tensor, Tensor]:
    """One voxel per sample, uniform over ``region``.

    Args:
        region: (B, D, H, W) bool.
        generator: randomness (one draw per sample, in batch order).

    Returns:
        ``(idx, valid)``: (B, 3) int64 voxel indices (D, H, W), 0 where the region is empty, and (B,) bool.
    """
    b = region.shape[0]
    flat = region.reshape(b, -1)
    counts = flat.sum(dim=1)  # (B,) int64
    u = _uniform(b, generator, region.device)
    k = torch.minimum((u * counts.to(torch.float64)).floor().to(torch.int64), (counts - 1).clamp(min=0))
    # The (k+1)-th True voxel is the first position whose running count reaches k+1.
    running = flat.to(torch.int32).cumsum(dim=1, dtype=torch.int32)
    flat_idx = torch.searchsorted(running, (k + 1).to(torch.int32).unsqueeze(1)).squeeze(1)
    valid = counts > 0
    flat_idx = torch.where(valid, flat_idx, torch.zeros_like(flat_idx)).to(torch.int64)
    return _flat_to_dhw(flat_idx, tuple(region.shape[1:])), valid


def _interior_voxel(region: np.ndarray) -> np.ndarray | None:
    """Interior-most voxel of the largest 26-connected component of ``region`` ((D, H, W) bool), or ``None``.

    The distance transform runs on the component's bounding box zero-padded by one voxel (exactly the distance to
    the component's border, with the array's faces counting as border, and fast on small regions of big crops).
    Among equally deep voxels (a plateau, e.g. in a box-shaped region) the one nearest the plateau's mean wins,
    then the first in C order. Returns a (3,) int64 index in (D, H, W) order.
    """
    if not region.any():
        return None
    outer = ndimage.find_objects(region.view(np.uint8))[0]  # bounding box of the whole region
    components, _ = label_lesions(region[outer])
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    keep = int(np.argmax(sizes))
    box = ndimage.find_objects(components, max_label=keep)[keep - 1]
    assert box is not None
    offset = np.array([a.start + b.start for a, b in zip(outer, box, strict=True)], dtype=np.int64)
    component = components[box] == keep
    depth = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1, 1:-1]
    deepest = np.argwhere(depth == depth.max())
    if len(deepest) > 1:
        spread = ((deepest - deepest.mean(axis=0)) ** 2).sum(axis=1)
        deepest = deepest[[int(np.argmin(spread))]]
    return deepest[0].astype(np.int64) + offset


def _sample_center(region: Tensor) -> tuple[Tensor, Tensor]:
    """Like :func:`_sample_uniform` but the interior-most voxel of each sample's largest component (CPU EDT)."""
    regions = region.detach().cpu().numpy()
    idx = np.zeros((regions.shape[0], 3), dtype=np.int64)
    valid = np.zeros(regions.shape[0], dtype=bool)
    for i, r in enumerate(regions):
        v = _interior_voxel(r)
        if v is not None:
            idx[i], valid[i] = v, True
    return torch.from_numpy(idx).to(region.device), torch.from_numpy(valid).to(region.device)


def _check_clicks(points: Tensor | None, labels: Tensor | None, batch: int, where: str) -> None:
    """Raise ``ValueError`` unless ``points`` (B, N, 3) and ``labels`` (B, N) are both given (or both ``None``)."""
    if (points is None) != (labels is None):
        raise ValueError(f"{where}: points and labels go together; give both or neither")
    if points is None or labels is None:
        return
    if points.ndim != 3 or points.shape[-1] != 3 or labels.ndim != 2 or tuple(labels.shape) != tuple(points.shape[:2]):
        raise ValueError(
            f"{where}: expected points (B, N, 3) and labels (B, N); got {tuple(points.shape)} and {tuple(labels.shape)}"
        )
    if points.shape[0] != batch:
        raise ValueError(f"{where}: points hold {points.shape[0]} samples but the volumes hold {batch}")


# ----------------------------------------------------------------------------------------------------------------
# clicks
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClickSimulator:
    """Simulates a user clicking on a lesion: a first click inside it, then one click per round on the errors.

    Args:
        mode: ``"random"`` (uniform sampling, SAM-Med3D's training clicks) or ``"center"`` (deterministic,
            interior-most voxel via a Euclidean distance transform). See the module docstring for the exact rules.

    Raises:
        ValueError: an unknown ``mode`` (with a "did you mean" hint).

    Example:
        >>> sim = ClickSimulator("center")
        >>> gt = torch.zeros(1, 1, 9, 9, 9, dtype=torch.bool)
        >>> gt[..., 2:7, 2:7, 2:7] = True
        >>> points, labels = sim.first(gt)
        >>> points.tolist(), labels.tolist()
        ([[[4.0, 4.0, 4.0]]], [[1]])
    """

    mode: str = "random"

    def __post_init__(self) -> None:
        look_up_option(self.mode, CLICK_MODES, what="click mode")

    def _sample(self, region: Tensor, generator: Generator) -> tuple[Tensor, Tensor]:
        return _sample_uniform(region, generator) if self.mode == "random" else _sample_center(region)

    def first(self, gt: Tensor, generator: Generator = None) -> tuple[Tensor, Tensor]:
        """The first click of every sample: positive, inside the lesion.

        Args:
            gt: (B, 1, D, H, W) or (B, D, H, W) ground-truth lesion mask (foreground where > 0.5), any device.
            generator: randomness for ``"random"`` mode (ignored by ``"center"``).

        Returns:
            ``(points, labels)``: (B, 1, 3) float32 voxel indices (D, H, W) and (B, 1) int64 ones, on ``gt``'s device.

        Raises:
            ValueError: a sample's label has no foreground voxel (nothing to click on), or a bad shape.
        """
        where = f"ClickSimulator(mode={self.mode!r}).first"
        mask = _as_batch_mask(gt, "gt", where)
        idx, valid = self._sample(mask, generator)
        if not bool(valid.all()):
            empty = torch.nonzero(~valid).flatten().tolist()
            raise ValueError(
                f"{where}: the label of batch sample(s) {empty} has no foreground voxel, so there is no lesion to "
                "click on. Crop around the target lesion, or drop crops without a lesion before simulating clicks."
            )
        points = idx.to(torch.float32).unsqueeze(1)
        labels = torch.ones(mask.shape[0], 1, dtype=torch.int64, device=mask.device)
        return points, labels

    def next(
        self,
        pred: Tensor,
        gt: Tensor,
        points: Tensor | None = None,
        labels: Tensor | None = None,
        generator: Generator = None,
    ) -> tuple[Tensor, Tensor]:
        """Append one correction click per sample, placed on the current errors.

        A false-negative voxel (in ``gt``, not in ``pred``) gives a positive click (1), a false-positive voxel a
        negative click (0). A sample whose prediction equals its ground truth gets a padding click (label -1 at
        voxel (0, 0, 0)) so that the batch stays rectangular.

        Args:
            pred: (B, 1, D, H, W) or (B, D, H, W) current binary prediction (foreground where > 0.5; threshold logits
                first, e.g. ``logits > 0``).
            gt: the ground truth, same shape as ``pred``. May be empty (then every error is a false positive).
            points: (B, N, 3) float voxel indices (D, H, W) of the clicks so far, or ``None`` for none (N = 0).
            labels: (B, N) int64 labels of those clicks (1 / 0 / -1), or ``None``.
            generator: randomness for ``"random"`` mode (ignored by ``"center"``).

        Returns:
            ``(points, labels)``: (B, N + 1, 3) float and (B, N + 1) int64 on ``pred``'s device; the new click last.
            The points keep the dtype of the ``points`` given (float32 when ``None``).

        Raises:
            ValueError: shapes of ``pred`` and ``gt`` (or of the clicks) do not match.
        """
        where = f"ClickSimulator(mode={self.mode!r}).next"
        p = _as_batch_mask(pred, "pred", where)
        g = _as_batch_mask(gt, "gt", where)
        if p.shape != g.shape:
            raise ValueError(f"{where}: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must have the same shape")
        g = g.to(p.device)
        _check_clicks(points, labels, p.shape[0], where)
        fn = g & ~p
        fp = p & ~g
        if self.mode == "random":
            idx, valid = _sample_uniform(fn | fp, generator)
            flat = idx[:, 0] * (p.shape[2] * p.shape[3]) + idx[:, 1] * p.shape[3] + idx[:, 2]
            positive = fn.reshape(p.shape[0], -1).gather(1, flat.unsqueeze(1)).squeeze(1)
        else:
            n_fn = fn.reshape(p.shape[0], -1).sum(1)
            n_fp = fp.reshape(p.shape[0], -1).sum(1)
            positive = n_fn >= n_fp
            idx, valid = _sample_center(torch.where(positive.view(-1, 1, 1, 1), fn, fp))
        new_labels = torch.where(
            valid, positive.to(torch.int64), torch.full_like(positive, PAD_LABEL, dtype=torch.int64)
        ).unsqueeze(1)
        new_points = torch.where(valid.unsqueeze(1), idx, torch.zeros_like(idx)).unsqueeze(1)
        if points is None or labels is None:
            return new_points.to(torch.float32), new_labels
        points = points.to(p.device)
        new_points = new_points.to(points.dtype)
        return torch.cat((points, new_points), dim=1), torch.cat((labels.to(p.device, torch.int64), new_labels), dim=1)


def first_click(gt: np.ndarray, *, mode: str = "random", rng: Generator = None) -> tuple[np.ndarray, int]:
    """The first click on a single volume (NumPy convenience over :meth:`ClickSimulator.first`).

    Args:
        gt: (D, H, W) lesion mask (foreground where > 0.5).
        mode: ``"random"`` or ``"center"``.
        rng: randomness (``numpy.random.Generator`` or ``torch.Generator`` on the CPU).

    Returns:
        ``(index, label)``: (3,) int64 voxel index (D, H, W) and the label 1.

    Raises:
        ValueError: an empty label, a volume that is not 3D, or an unknown mode.
    """
    arr = np.asarray(gt)
    if arr.ndim != 3:
        raise ValueError(f"first_click: gt must be a (D, H, W) volume; got shape {arr.shape}")
    points, labels = ClickSimulator(mode).first(torch.from_numpy(arr > 0.5)[None], rng)
    return points[0, 0].numpy().astype(np.int64), int(labels[0, 0])


def next_click(
    pred: np.ndarray, gt: np.ndarray, *, mode: str = "random", rng: Generator = None
) -> tuple[np.ndarray, int]:
    """The next correction click on a single volume (NumPy convenience over :meth:`ClickSimulator.next`).

    Args:
        pred: (D, H, W) current binary prediction (foreground where > 0.5).
        gt: (D, H, W) ground truth.
        mode: ``"random"`` or ``"center"``.
        rng: randomness (``numpy.random.Generator`` or ``torch.Generator`` on the CPU).

    Returns:
        ``(index, label)``: (3,) int64 voxel index (D, H, W) and 1 (positive), 0 (negative) or -1 (no error left;
        the index is then (0, 0, 0)).
    """
    p, g = np.asarray(pred), np.asarray(gt)
    if p.ndim != 3 or p.shape != g.shape:
        raise ValueError(f"next_click: pred and gt must be (D, H, W) volumes of one shape; got {p.shape} and {g.shape}")
    p, g = p > 0.5, g > 0.5
    # Every error voxel lies in the box of pred | gt, in the same C order and with the same distance to the errors'
    # border (both modes rank voxels within it): simulating on that box gives the same click, much faster on a
    # small lesion in a large volume.
    box = bounding_box(p | g)
    if box is not None:
        p, g = p[box], g[box]
    points, labels = ClickSimulator(mode).next(torch.from_numpy(p)[None], torch.from_numpy(g)[None], None, None, rng)
    index, label = points[0, 0].numpy().astype(np.int64), int(labels[0, 0])
    if box is not None and label >= 0:
        index += np.array([s.start for s in box], dtype=np.int64)
    return index, label


# ----------------------------------------------------------------------------------------------------------------
# boxes
# ----------------------------------------------------------------------------------------------------------------


def _box_numpy(mask: np.ndarray, margin: int, jitter: int, u: np.ndarray | None) -> np.ndarray:
    """Box (6,) int64 of a (D, H, W) bool mask; ``u`` is (6,) uniform draws for the jitter (or ``None``)."""
    nz = np.nonzero(mask)
    lo = np.array([a.min() for a in nz], dtype=np.int64)
    hi = np.array([a.max() for a in nz], dtype=np.int64)
    size = np.asarray(mask.shape, dtype=np.int64)
    blo, bhi = lo - margin, hi + margin
    if jitter and u is not None:
        shift = np.floor(u * (2 * jitter + 1)).astype(np.int64) - jitter
        blo, bhi = blo + shift[:3], bhi + shift[3:]
        # Keep every side overlapping the lesion's tight box, and the corners ordered.
        blo, bhi = np.minimum(blo, hi), np.maximum(bhi, lo)
        blo, bhi = np.minimum(blo, bhi), np.maximum(blo, bhi)
    blo, bhi = np.clip(blo, 0, size - 1), np.clip(bhi, 0, size - 1)
    return np.concatenate((blo, bhi))


def _check_box_args(margin: int, jitter: int, where: str) -> None:
    """Raise ``ValueError`` on a negative margin or jitter."""
    if margin < 0 or jitter < 0:
        raise ValueError(f"{where}: margin and jitter are voxel counts >= 0; got margin={margin}, jitter={jitter}")


@overload
def box_from_label(label: Tensor, *, margin: int = 0, jitter: int = 0, generator: Generator = None) -> Tensor: ...
@overload
def box_from_label(
    label: np.ndarray, *, margin: int = 0, jitter: int = 0, generator: Generator = None
) -> np.ndarray: ...
def box_from_label(
    label: Tensor | np.ndarray, *, margin: int = 0, jitter: int = 0, generator: Generator = None
) -> Tensor | np.ndarray:
    """The bounding box of a lesion, as inclusive voxel corners ``(d0, h0, w0, d1, h1, w1)``.

    Args:
        label: (D, H, W) or (1, D, H, W) lesion mask (foreground where > 0.5), tensor or array.
        margin: voxels added on every side.
        jitter: each of the six sides then moves by an independent uniform integer in ``[-jitter, jitter]``
            (simulated user imprecision); a side never moves past the lesion's far side, so the box still overlaps
            the lesion's tight box on every axis.
        generator: randomness for the jitter (unused when ``jitter == 0``).

    Returns:
        (6,) box clipped to the volume: a float32 tensor on ``label``'s device for a tensor input (ready for
        ``Prompts.boxes`` once stacked), an int64 array for an array input.

    Raises:
        ValueError: no foreground voxel, a bad shape, or a negative margin / jitter.
    """
    where = "box_from_label"
    _check_box_args(margin, jitter, where)
    is_tensor = isinstance(label, Tensor)
    arr = label.detach().cpu().numpy() if is_tensor else np.asarray(label)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{where}: label must have shape (D, H, W) or (1, D, H, W); got {tuple(arr.shape)}")
    mask = arr if arr.dtype == bool else arr > 0.5
    if not mask.any():
        raise ValueError(f"{where}: the label has no foreground voxel, so it has no box. Crop around the lesion.")
    u = _uniform(6, generator, torch.device("cpu")).numpy() if jitter else None
    box = _box_numpy(mask, margin, jitter, u)
    if is_tensor:
        return torch.from_numpy(box).to(device=label.device, dtype=torch.float32)
    return box


def boxes_from_labels(gt: Tensor, *, margin: int = 0, jitter: int = 0, generator: Generator = None) -> Tensor:
    """Batched :func:`box_from_label`: one box per sample.

    Args:
        gt: (B, 1, D, H, W) or (B, D, H, W) lesion masks.
        margin, jitter, generator: as in :func:`box_from_label` (draws in batch order).

    Returns:
        (B, 6) float32 boxes ``(d0, h0, w0, d1, h1, w1)`` (inclusive voxel corners) on ``gt``'s device.

    Raises:
        ValueError: a sample without foreground (its index is named), or a bad shape.
    """
    where = "boxes_from_labels"
    _check_box_args(margin, jitter, where)
    masks = _as_batch_mask(gt, "gt", where).detach().cpu().numpy()
    empty = [i for i, m in enumerate(masks) if not m.any()]
    if empty:
        raise ValueError(f"{where}: the label of batch sample(s) {empty} has no foreground voxel, so it has no box")
    boxes = []
    for m in masks:
        u = _uniform(6, generator, torch.device("cpu")).numpy() if jitter else None
        boxes.append(_box_numpy(m, margin, jitter, u))
    return torch.from_numpy(np.stack(boxes)).to(device=gt.device, dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# mask prompt
# ----------------------------------------------------------------------------------------------------------------


def mask_prompt_from_logits(logits: Tensor, size: int | tuple[int, int, int] = 32) -> Tensor:
    """Resize full-resolution logits to the decoder's low-res grid, for feeding back as ``Prompts.mask``.

    The model's own ``SegOutput.low_res_logits`` can be fed back as they are; use this for logits that come at the
    crop's resolution (e.g. stitched from a sliding window). Trilinear, ``align_corners=False`` (as SAM-Med3D's
    upsampling), on logits — not probabilities — so the prompt keeps the model's scale.

    Args:
        logits: (B, 1, D, H, W) float logits.
        size: the low-res side (4G, 32 for SAM-Med3D's 128³ crops) or a (d, h, w) tuple.

    Returns:
        (B, 1, *size) float logits on ``logits``' device.
    """
    if logits.ndim != 5 or logits.shape[1] != 1:
        raise ValueError(f"mask_prompt_from_logits: logits must have shape (B, 1, D, H, W); got {tuple(logits.shape)}")
    out = (size, size, size) if isinstance(size, int) else tuple(size)
    x = logits if logits.is_floating_point() else logits.float()
    if tuple(x.shape[2:]) == out:
        return x
    return F.interpolate(x, size=out, mode="trilinear", align_corners=False)
