"""Tests of the click / box simulation in ``lesionsam.data.clicks``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionsam.data.clicks import (
    ClickSimulator,
    box_from_label,
    boxes_from_labels,
    first_click,
    mask_prompt_from_logits,
    next_click,
)

SHAPE = (16, 18, 20)


def _cube(lo: tuple[int, int, int], side: int, shape: tuple[int, int, int] = SHAPE) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    m[lo[0] : lo[0] + side, lo[1] : lo[1] + side, lo[2] : lo[2] + side] = True
    return m


def _irregular(seed: int, shape: tuple[int, int, int] = SHAPE) -> torch.Tensor:
    """A blobby lesion (two overlapping ellipsoids, sometimes a separate speck) of random position."""
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    m = np.zeros(shape, dtype=bool)
    for _ in range(2):
        c = rng.uniform(3, np.array(shape) - 3)
        r = rng.uniform(1.2, 4.0, size=3)
        m |= ((d - c[0]) / r[0]) ** 2 + ((h - c[1]) / r[1]) ** 2 + ((w - c[2]) / r[2]) ** 2 <= 1
    if seed % 3 == 0:
        m[tuple(rng.integers(0, s) for s in shape)] = True
    return torch.from_numpy(m)


def _at(mask: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Mask values (B,) at the last click of each sample; mask (B, D, H, W), points (B, N, 3)."""
    p = points[:, -1].long()
    return mask[torch.arange(mask.shape[0]), p[:, 0], p[:, 1], p[:, 2]]


# ------------------------------------------------------------------------------------------------- first click


@pytest.mark.parametrize("mode", ["random", "center"])
def test_first_click_inside_lesion(mode: str) -> None:
    gt = torch.stack([_irregular(s) for s in range(24)])  # (B, D, H, W)
    sim = ClickSimulator(mode)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        points, labels = sim.first(gt[:, None], g)
        assert points.shape == (24, 1, 3) and points.dtype == torch.float32
        assert labels.shape == (24, 1) and labels.dtype == torch.int64
        assert bool(_at(gt, points).all())
        assert bool((labels == 1).all())
        assert torch.equal(points, points.round())


def test_first_click_random_covers_the_lesion() -> None:
    gt = _cube((3, 4, 5), 2)[None]
    g = torch.Generator().manual_seed(0)
    seen = {tuple(ClickSimulator("random").first(gt, g)[0][0, 0].tolist()) for _ in range(200)}
    assert len(seen) == 8  # every voxel of the 2³ cube is reachable


@pytest.mark.parametrize("lo,side", [((2, 3, 4), 7), ((0, 0, 0), 5), ((5, 6, 7), 1)])
def test_center_first_click_is_cube_centre(lo: tuple[int, int, int], side: int) -> None:
    gt = _cube(lo, side)[None, None]
    points, _ = ClickSimulator("center").first(gt)
    assert points[0, 0].tolist() == [c + side // 2 for c in lo]


def test_center_first_click_on_a_plateau_is_the_box_centre() -> None:
    gt = torch.zeros(SHAPE, dtype=torch.bool)
    gt[2:13, 6:9, 3:16] = True  # a slab: every voxel of the middle h-slice is equally deep
    points, _ = ClickSimulator("center").first(gt[None])
    assert points[0, 0].tolist() == [7.0, 7.0, 9.0]


def test_center_first_click_uses_largest_component() -> None:
    gt = _cube((1, 1, 1), 3) | _cube((8, 9, 10), 5)
    points, _ = ClickSimulator("center").first(gt[None])
    assert points[0, 0].tolist() == [10.0, 11.0, 12.0]


@pytest.mark.parametrize("mode", ["random", "center"])
def test_first_click_empty_label_raises(mode: str) -> None:
    gt = torch.stack([_cube((2, 2, 2), 3), torch.zeros(SHAPE, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\] has no foreground voxel"):
        ClickSimulator(mode).first(gt, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="no foreground"):
        first_click(np.zeros(SHAPE), mode=mode)


def test_first_click_accepts_integer_and_float_labels() -> None:
    gt = _cube((4, 4, 4), 3)
    for x in (gt.to(torch.uint8), gt.to(torch.int64), gt.to(torch.float32)):
        points, _ = ClickSimulator("center").first(x[None, None])
        assert points[0, 0].tolist() == [5.0, 5.0, 5.0]


# -------------------------------------------------------------------------------------------------- next click


@pytest.mark.parametrize("mode", ["random", "center"])
def test_next_click_positive_in_false_negatives(mode: str) -> None:
    gt = _cube((2, 2, 2), 8)
    pred = gt.clone()
    pred[:, :, 6:] = False  # the prediction misses part of the lesion
    fn = gt & ~pred
    sim = ClickSimulator(mode)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        points0, labels0 = sim.first(gt[None], g)
        points, labels = sim.next(pred[None], gt[None], points0, labels0, g)
        assert points.shape == (1, 2, 3) and labels.shape == (1, 2)
        assert torch.equal(points[:, :1], points0) and torch.equal(labels[:, :1], labels0)
        assert labels[0, 1].item() == 1
        assert bool(_at(fn[None], points).all())


@pytest.mark.parametrize("mode", ["random", "center"])
def test_next_click_negative_in_false_positives(mode: str) -> None:
    gt = _cube((4, 4, 4), 4)
    pred = _cube((3, 3, 3), 9)  # over-segmentation
    fp = pred & ~gt
    sim = ClickSimulator(mode)
    for seed in range(20):
        points, labels = sim.next(pred[None, None], gt[None, None], generator=np.random.default_rng(seed))
        assert points.shape == (1, 1, 3) and labels.tolist() == [[0]]
        assert bool(_at(fp[None], points).all())


def test_center_next_click_prefers_larger_error_type_and_its_centre() -> None:
    gt = _cube((1, 1, 1), 5) | _cube((9, 9, 9), 3)
    pred = _cube((9, 9, 9), 3) | _cube((1, 12, 12), 2)  # FN: 5³ cube (125 voxels); FP: 2³ cube (8 voxels)
    points, labels = ClickSimulator("center").next(pred[None], gt[None])
    assert labels.tolist() == [[1]] and points[0, 0].tolist() == [3.0, 3.0, 3.0]
    points, labels = ClickSimulator("center").next(gt[None], pred[None])  # roles swapped: now a negative click
    assert labels.tolist() == [[0]] and points[0, 0].tolist() == [3.0, 3.0, 3.0]


@pytest.mark.parametrize("mode", ["random", "center"])
def test_next_click_padding_when_perfect(mode: str) -> None:
    gt = torch.stack([_cube((2, 2, 2), 4), _cube((5, 5, 5), 4), torch.zeros(SHAPE, dtype=torch.bool)])
    pred = gt.clone()
    pred[1, 5:7, 5:9, 5:9] = False  # sample 1 has an error, samples 0 and 2 are perfect
    points0 = torch.full((3, 2, 3), 7.0, dtype=torch.float64)
    labels0 = torch.tensor([[1, 0], [1, -1], [1, 1]])
    points, labels = ClickSimulator(mode).next(pred[:, None], gt[:, None], points0, labels0, torch.Generator())
    assert points.shape == (3, 3, 3) and points.dtype == torch.float64
    assert labels.shape == (3, 3) and labels.dtype == torch.int64
    assert labels[:, -1].tolist() == [-1, 1, -1]
    assert points[0, -1].tolist() == [0.0, 0.0, 0.0] and points[2, -1].tolist() == [0.0, 0.0, 0.0]
    assert bool(_at((gt & ~pred), points)[1])


@pytest.mark.parametrize("mode", ["random", "center"])
def test_deterministic_with_seeded_generator(mode: str) -> None:
    gt = torch.stack([_irregular(s) for s in range(6)])[:, None]
    pred = torch.stack([_irregular(s + 100) for s in range(6)])[:, None]
    sim = ClickSimulator(mode)

    def run(gen: torch.Generator | np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        p, lab = sim.first(gt, gen)
        for _ in range(3):
            p, lab = sim.next(pred, gt, p, lab, gen)
        return p, lab

    a = run(torch.Generator().manual_seed(123))
    b = run(torch.Generator().manual_seed(123))
    c = run(np.random.default_rng(7))
    d = run(np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(c[0], d[0]) and torch.equal(c[1], d[1])
    assert a[0].shape == (6, 4, 3) and a[1].shape == (6, 4)
    if mode == "random":
        e = run(torch.Generator().manual_seed(124))
        assert not torch.equal(a[0], e[0])


def test_random_next_click_mixes_error_types() -> None:
    gt = _cube((2, 2, 2), 6)
    pred = _cube((4, 2, 2), 6)  # shifted: FN and FP slabs of equal size
    sim = ClickSimulator("random")
    g = torch.Generator().manual_seed(0)
    seen = {sim.next(pred[None], gt[None], generator=g)[1].item() for _ in range(40)}
    assert seen == {0, 1}


def test_next_click_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        ClickSimulator().next(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))
    with pytest.raises(ValueError, match=r"points \(B, N, 3\)"):
        ClickSimulator().next(torch.zeros(1, 4, 4, 4), torch.ones(1, 4, 4, 4), torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="one channel"):
        ClickSimulator().first(torch.ones(1, 2, 4, 4, 4))


def test_numpy_conveniences() -> None:
    gt = _cube((3, 3, 3), 5).numpy()
    idx, label = first_click(gt, mode="center")
    assert idx.tolist() == [5, 5, 5] and idx.dtype == np.int64 and label == 1
    idx, label = first_click(gt.astype(np.uint8), rng=np.random.default_rng(0))
    assert gt[tuple(idx)] and label == 1
    idx, label = next_click(gt, gt)
    assert idx.tolist() == [0, 0, 0] and label == -1
    pred = gt.copy()
    pred[0, 0, 0] = True
    idx, label = next_click(pred, gt, mode="random", rng=np.random.default_rng(1))
    assert idx.tolist() == [0, 0, 0] and label == 0


@pytest.mark.parametrize("mode", ["random", "center"])
def test_next_click_on_a_volume_equals_the_simulator_on_the_whole_volume(mode: str) -> None:
    # next_click simulates on the box of pred | gt only: the same click (and the same random draws) as the simulator
    # on the whole volume, wherever the lesion and the errors lie (at the faces too).
    for seed in range(12):
        rng = np.random.default_rng(seed)
        gt = np.zeros((30, 26, 22), bool)
        lo = rng.integers(0, [26, 22, 18])
        hi = lo + rng.integers(2, 9, 3)
        gt[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
        pred = gt.copy()
        pred[tuple(rng.integers(0, [30, 26, 22]))] = True  # a stray false positive anywhere
        pred[tuple(np.argwhere(gt)[rng.integers(len(np.argwhere(gt)))])] = False  # a missed voxel
        if seed % 3 == 0:
            pred[:2, :3, :] = True  # a false-positive slab on a face
        want_pts, want_lab = ClickSimulator(mode).next(
            torch.from_numpy(pred)[None], torch.from_numpy(gt)[None], None, None, np.random.default_rng(seed)
        )
        idx, label = next_click(pred, gt, mode=mode, rng=np.random.default_rng(seed))
        assert idx.tolist() == want_pts[0, 0].tolist() and label == int(want_lab[0, 0])


def test_unknown_mode_suggests() -> None:
    with pytest.raises(ValueError, match=r"Unknown click mode 'centre'\. Did you mean 'center'\?"):
        ClickSimulator("centre")
    with pytest.raises(ValueError, match="Known: random, center"):
        first_click(np.ones((2, 2, 2)), mode="blob")


def test_bad_generator_type() -> None:
    with pytest.raises(TypeError, match="generator must be"):
        ClickSimulator().first(torch.ones(1, 2, 2, 2), generator=42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------- boxes


def test_box_from_label_corners() -> None:
    m = torch.zeros(SHAPE, dtype=torch.bool)
    m[3, 4, 5] = True
    m[7, 9, 6] = True
    box = box_from_label(m)
    assert box.dtype == torch.float32 and box.tolist() == [3, 4, 5, 7, 9, 6]
    assert box_from_label(m[None]).tolist() == [3, 4, 5, 7, 9, 6]
    arr = box_from_label(m.numpy().astype(np.uint8))
    assert isinstance(arr, np.ndarray) and arr.dtype == np.int64 and arr.tolist() == [3, 4, 5, 7, 9, 6]


def test_box_from_label_margin_and_clipping() -> None:
    m = _cube((1, 10, 6), 4)  # spans d 1..4, h 10..13, w 6..9
    assert box_from_label(m, margin=2).tolist() == [0, 8, 4, 6, 15, 11]  # d0 clipped at 0
    assert box_from_label(m, margin=20).tolist() == [0, 0, 0, 15, 17, 19]  # clipped to the volume


def test_box_jitter_is_seeded_and_valid() -> None:
    m = _cube((6, 6, 6), 2)
    boxes = [box_from_label(m, margin=1, jitter=3, generator=torch.Generator().manual_seed(s)) for s in range(50)]
    again = box_from_label(m, margin=1, jitter=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes[0], again)
    assert len({tuple(b.tolist()) for b in boxes}) > 1
    size = torch.tensor(SHAPE, dtype=torch.float32)
    for b in boxes:
        lo, hi = b[:3], b[3:]
        assert bool((lo >= 0).all() and (hi <= size - 1).all() and (lo <= hi).all())
        assert bool((lo <= 7).all() and (hi >= 6).all())  # still overlaps the lesion's tight box on every axis
        assert bool((lo >= 6 - 1 - 3).all() and (hi <= 7 + 1 + 3).all())


def test_boxes_from_labels_batch_and_errors() -> None:
    gt = torch.stack([_cube((1, 2, 3), 2), _cube((4, 5, 6), 3)])[:, None]
    boxes = boxes_from_labels(gt)
    assert boxes.shape == (2, 6) and boxes.dtype == torch.float32
    assert boxes.tolist() == [[1, 2, 3, 2, 3, 4], [4, 5, 6, 6, 7, 8]]
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\]"):
        boxes_from_labels(torch.stack([gt[0], torch.zeros_like(gt[0])]))
    with pytest.raises(ValueError, match="no foreground"):
        box_from_label(np.zeros(SHAPE))
    with pytest.raises(ValueError, match=">= 0"):
        box_from_label(gt[0], margin=-1)


# ---------------------------------------------------------------------------------------------------- mask prompt


def test_mask_prompt_from_logits() -> None:
    logits = torch.randn(2, 1, 64, 64, 64)
    low = mask_prompt_from_logits(logits)
    assert low.shape == (2, 1, 32, 32, 32) and low.dtype == torch.float32
    const = mask_prompt_from_logits(torch.full((1, 1, 40, 48, 56), 3.0), size=(8, 8, 8))
    assert torch.allclose(const, torch.full((1, 1, 8, 8, 8), 3.0))
    same = torch.randn(1, 1, 32, 32, 32)
    assert torch.equal(mask_prompt_from_logits(same), same)
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        mask_prompt_from_logits(torch.zeros(1, 32, 32, 32))
