"""Multi-scale training crops: the lesion fills the share of the crop asked for, the crop is the image resampled at
the factor's spacing around it, large lesions are not zoomed, and the data set's items are unchanged without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionsam.config import load_run_config
from lesionsam.data.datasets import LesionCropDataset
from lesionsam.data.transforms import PreprocessConfig, Preprocessor
from lesionsam.data.zoom_crops import ZoomCrops, zoomed_crop
from lesionsam.utils.dataclass_io import to_dict
from stand_ins import oblique_volume


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    return ((grid - np.asarray(centre)) ** 2).sum(-1) <= radius**2


def test_a_small_lesion_fills_the_share_of_the_crop_asked_for() -> None:
    mask = _ball((60, 60, 60), (30, 25, 33), 3.0)  # 7 voxels across
    image = np.where(mask, 3.0, 0.0).astype(np.float32) + np.linspace(0, 1, 60, dtype=np.float32)[None, None]
    zoom = ZoomCrops(fraction=1.0, fill=0.5, max_factor=3.0, spread=0.0)
    img, target, factor, _ = zoomed_crop(image, mask, 32, rng=np.random.default_rng(0), zoom=zoom)
    assert factor == pytest.approx(min(0.5 * 32 / 7, 3.0))  # spread 0: exactly the factor asked for (capped)
    assert img.shape == target.shape == (32, 32, 32) and img.dtype == np.float32
    assert target.sum() == pytest.approx(mask.sum() * factor**3, rel=0.15)  # the lesion, factor³ times the voxels
    d, h, w = np.nonzero(target)
    assert (d.max() - d.min() + 1) == pytest.approx(7 * factor, abs=2)
    # the crop is the image resampled at spacing 1/factor: its linear ramp along w has slope 1/(59 * factor)
    ramp = np.diff(img[0, 0, :])
    assert np.allclose(ramp, 1.0 / 59.0 / factor, atol=1e-5)
    assert img[target].min() > 1.5 and np.median(img[~target]) < 1.0  # the target is the bright ball's image


def test_large_lesions_are_ordinary_crops_and_the_spread_stays_in_range() -> None:
    mask = _ball((60, 60, 60), (30, 30, 30), 14.0)
    image = mask.astype(np.float32)
    zoom = ZoomCrops(fraction=1.0, fill=0.5, max_factor=3.0, spread=0.3)
    _, _, factor, _ = zoomed_crop(image, mask, 32, rng=np.random.default_rng(0), zoom=zoom)
    assert factor == 1.0
    small = _ball((60, 60, 60), (30, 30, 30), 4.0)
    factors = [
        zoomed_crop(image, small, 32, rng=np.random.default_rng(s), zoom=ZoomCrops(fill=0.3, spread=0.3))[2]
        for s in range(20)
    ]
    want = 0.3 * 32 / 9
    assert min(factors) >= want * np.exp(-0.3) - 1e-6 and max(factors) <= want * np.exp(0.3) + 1e-6
    assert len(set(np.round(factors, 6))) > 10


def test_the_data_set_zooms_its_share_of_crops_and_is_unchanged_without() -> None:
    image, label = oblique_volume(shape=(40, 90, 80), blobs=((20, 45, 40, 4),))

    class Case:
        case_id = "c"

        def read_image(self, channel):  # noqa: ANN001, ANN202
            return image

        def read_label(self):  # noqa: ANN202
            return label

        label = "given"

    pre = Preprocessor(PreprocessConfig(spacing=(1.5, 1.5, 1.5), crop_size=24))
    plain = LesionCropDataset([Case()], pre, target_label=1)
    zoomed = LesionCropDataset([Case()], pre, target_label=1, zoom=ZoomCrops(fraction=1.0, fill=0.6))
    torch.manual_seed(0)
    a = plain[0]
    torch.manual_seed(0)
    b = LesionCropDataset([Case()], pre, target_label=1, zoom=None)[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    torch.manual_seed(0)
    z = zoomed[0]
    assert z["image"].shape == a["image"].shape and z["label"].sum() > 4 * a["label"].sum()


def test_the_run_config_reads_and_omits_it() -> None:
    cfg = load_run_config(None, ["data.zoom.fraction=0.25", "data.zoom.max_factor=2"])
    assert cfg.data.zoom == ZoomCrops(fraction=0.25, max_factor=2.0)
    assert "zoom" not in to_dict(load_run_config(None))["data"]  # old configs are written as before
    with pytest.raises((ValueError, TypeError), match="data.zoom.fraction must be in"):
        load_run_config(None, ["data.zoom.fraction=0"])
