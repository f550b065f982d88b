"""Shared test helpers: the base of the stand-in models (deterministic models with known behaviour, no training) and
an oblique, anisotropic CT-like volume with bright balls."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from lesionsam.data.io import Volume
from lesionsam.models import Prompts, SegModel, SegOutput


class StandInModel(SegModel):
    """A :class:`SegModel` on cubic crops of side ``size`` with S/4 low-res logits and one dummy parameter (so that
    ``.to(device)``, ``.eval()`` and parameter counts work); subclasses give ``forward`` and their prompt kinds.
    ``encodes`` counts the calls of :meth:`encode` (which returns the image, as :class:`SegModel`'s does)."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        self._size = size
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.encodes = 0

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encodes += 1
        return image

    @property
    def img_size(self) -> int:
        return self._size

    @property
    def low_res_size(self) -> int:
        return self._size // 4


def bright_blob_output(image: torch.Tensor, prompts: Prompts, *, miss_keeps_bright: bool = False) -> SegOutput:
    """The known answer of the bright-blob stand-ins: on (B, 1, S, S, S) crops, the bright (> 1, normalised units)
    connected region holding each crop's last positive click, minus a ball of radius 3 voxels around every negative
    click, as ±10 logits (S/4 low-res logits by trilinear downsampling). A click on no blob gives an empty mask, or
    every bright voxel with ``miss_keeps_bright``."""
    size = image.shape[-1]
    bright = (image > 1.0).numpy()
    keep = np.zeros_like(bright)
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"), axis=-1)
    for b in range(image.shape[0]):
        comps, _ = ndimage.label(bright[b, 0])
        pts, labs = prompts.points[b].numpy(), prompts.labels[b].numpy()
        click = np.clip(np.round(pts[labs == 1][-1]).astype(int), 0, size - 1)
        comp = comps[tuple(click)]
        keep[b, 0] = comps == comp if comp else (bright[b, 0] if miss_keeps_bright else False)
        for neg in pts[labs == 0]:
            keep[b, 0] &= ((grid - neg) ** 2).sum(-1) > 9
    logits = torch.where(torch.from_numpy(keep), 10.0, -10.0)
    low = F.interpolate(logits, scale_factor=0.25, mode="trilinear", align_corners=False)
    return SegOutput(low_res_logits=low, logits=logits, iou=torch.ones(image.shape[0], 1))


def oblique_volume(shape=(30, 70, 60), spacing=(0.8, 0.9, 2.0), blobs=((15, 35, 30, 6),)) -> tuple[Volume, Volume]:
    """A CT-like volume (HU) with bright ellipsoidal blobs, oblique direction, anisotropic spacing.

    ``blobs`` are (d, h, w, radius_mm) in array order.
    """
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 5, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    dd, hh, ww = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    sd, sh, sw = spacing[2], spacing[1], spacing[0]
    for n, (d, h, w, r) in enumerate(blobs, start=1):
        inside = ((dd - d) * sd) ** 2 + ((hh - h) * sh) ** 2 + ((ww - w) * sw) ** 2 < r**2
        arr[inside] = 200.0
        lab[inside] = n
    a, b = np.deg2rad(20), np.deg2rad(15)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ref = Volume(arr, spacing, (-40.0, 25.0, 100.0), tuple((rz @ rx).ravel()))
    return ref, ref.with_array(lab)


#: A tiny ablation recipe on 32³ synthetic volumes (``ablate_config`` overrides): a few seconds per run on one thread.
TINY_ABLATION = (
    "train.epochs=2",
    "train.num_clicks=2",
    "train.warmup_steps=1",
    "model.backbone.img_size=32",
    "model.backbone.patch_size=8",
    "model.backbone.window_size=2",
)
