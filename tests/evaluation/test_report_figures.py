"""Report figures: one colour per method everywhere, y labels, cm³ bins, loss panels; overlay geometry."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex

from lesionsam.data.io import Volume
from lesionsam.evaluation.figures import (
    KNOWN_METHOD_COLOURS,
    curves_figure,
    dice_per_case_figure,
    gates_figure,
    method_colours,
    size_bin_figure,
    size_bin_label,
)
from lesionsam.evaluation.overlays import (
    OverlayMethod,
    axis_letters,
    centre_clicks,
    overlay_figure,
    pick_cases,
    scale_bar,
    slice_orientation,
)
from lesionsam.evaluation.report_io import TrainCurve
from lesionsam.inference.prompt_files import clicks_from_label

BINS = ["<1 cm3", "1-10 cm3", ">10 cm3"]
CURVE = TrainCurve((0.0, 1.0, 2.0), (0.9, 0.5, 0.4), (1.0, 2.0), (0.2, 0.4))


def _scatter_colour(fig, label: str) -> str:
    for ax in fig.axes:
        for coll in ax.collections:
            if coll.get_label() == label:
                return to_hex(coll.get_facecolor()[0])
    raise AssertionError(f"no scatter labelled {label!r}")


def _bar_colour(fig, label: str) -> str:
    for ax in fig.axes:
        for cont in ax.containers:
            if cont.get_label() == label:
                return to_hex(cont.patches[0].get_facecolor())
    raise AssertionError(f"no bars labelled {label!r}")


def _curve_colour(fig, title: str) -> str:
    ax = next(a for a in fig.axes if a.get_title() == title)
    return to_hex(ax.lines[0].get_color())


def test_a_method_has_one_colour_in_every_figure() -> None:
    names = ["finetune", "my_method", "sgp_sam"]
    colours = method_colours(names)
    assert len(set(colours.values())) == 3
    assert colours["sgp_sam"] == KNOWN_METHOD_COLOURS["sgp_sam"] == method_colours(["sgp_sam"])["sgp_sam"]
    dice = [{"a": 0.2, "b": 0.5}, {"a": 0.3, "b": 0.4}, {"a": 0.6, "b": 0.1, "free": 1.0}]
    f_dice = dice_per_case_figure(names, dice, [set(), set(), {"free"}], colours)
    by_bin = [{b: {"mean_dice": 0.5, "count": 2} for b in BINS}] * 3
    f_size = size_bin_figure(BINS, names, by_bin, colours)
    # the gates figure holds only the gated method: before, it took the first colour of the cycle there
    f_gates = gates_figure(BINS, ["sgp_sam"], [[0.2, 0.5, 0.9]], [[3, 2, 1]], colours)
    f_curves = curves_figure(names, [CURVE, CURVE, CURVE], colours)
    for name in names:
        expected = colours[name]
        assert _scatter_colour(f_dice, name) == expected
        assert _bar_colour(f_size, name) == expected
        assert _curve_colour(f_curves, name) == expected
    assert _bar_colour(f_gates, "sgp_sam") == colours["sgp_sam"]
    assert _scatter_colour(f_dice, "sgp_sam (lesion-free)") == colours["sgp_sam"]

    # every plot has a y label; sizes in cm³
    for fig in (f_dice, f_size, f_gates, f_curves):
        for ax in fig.axes:
            if ax.get_visible():
                assert ax.get_ylabel(), (fig, ax)
    for fig in (f_size, f_gates):
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["< 1 cm³", "1–10 cm³", "> 10 cm³"]
        assert fig.axes[0].get_xlabel() == "ground-truth lesion volume (cm³)"


def test_loss_panels_one_per_method_with_validation_dice() -> None:
    names = ["finetune", "sgp_sam"]
    fig = curves_figure(names, [CURVE, None], method_colours(names))
    titled = [a for a in fig.axes if a.get_title() in names]
    assert [a.get_title() for a in titled] == names
    for ax in titled:
        assert ax.get_ylabel() == "training loss (mean per epoch)"
    twins = [a for a in fig.axes if a.get_ylabel() == "validation Dice"]
    assert len(twins) == 2
    assert list(twins[0].lines[0].get_ydata()) == [0.2, 0.4]
    assert any(t.get_text() == "no values logged" for t in titled[1].texts)


def test_size_bin_labels() -> None:
    assert [size_bin_label(b) for b in BINS] == ["< 1 cm³", "1–10 cm³", "> 10 cm³"]
    assert size_bin_label("other cm3") == "other cm³"


def test_orientation_letters_from_the_direction() -> None:
    assert axis_letters((1, 0, 0)) == ("R", "L")
    assert axis_letters((-1, 0, 0)) == ("L", "R")
    assert axis_letters((0, 0.2, -0.98)) == ("S", "I")
    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert slice_orientation(identity) == {"left": "R", "right": "L", "top": "A", "bottom": "P", "plane": "axial"}
    flipped = (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # an RAS-stored NIfTI as ITK reads it
    assert slice_orientation(flipped) == {"left": "L", "right": "R", "top": "P", "bottom": "A", "plane": "axial"}
    # columns: i along +x, j along −z (rows run from head to feet), k along +y: a coronal slice, head up
    coronal = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float)
    o = slice_orientation(coronal)
    assert (o["left"], o["right"], o["top"], o["bottom"], o["plane"]) == ("R", "L", "S", "I", "coronal")
    with pytest.raises(ValueError, match="three finite"):
        axis_letters((0, 0, 0))


def test_scale_bar_length() -> None:
    assert scale_bar(200, 0.8) == (20.0, 25.0)  # 160 mm wide: the longest step <= 48 mm
    assert scale_bar(48, 1.5) == (20.0, 20.0 / 1.5)  # 72 mm: 20 mm
    assert scale_bar(10, 0.5) == (1.0, 2.0)  # 5 mm wide: the shortest bar


def _label_volume() -> Volume:
    lab = np.zeros((16, 20, 24), np.uint8)
    lab[3:9, 4:12, 5:15] = 2  # the larger lesion
    lab[11:14, 14:17, 18:21] = 2
    lab[12, 2, 2] = 1  # another label
    return Volume(lab, (0.8, 0.9, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_centre_clicks_are_the_predict_workflow_clicks() -> None:
    vol = _label_volume()
    clicks = centre_clicks(vol.array == 2)
    reference = clicks_from_label(vol, value=2)
    assert len(clicks) == len(reference) == 2
    for c, ref in zip(clicks, reference, strict=True):
        assert tuple(c[::-1]) == tuple(ref.points[0].astype(int))  # (D, H, W) vs ITK (i, j, k)
    assert centre_clicks(np.zeros((4, 4, 4), bool)) == []


def test_overlay_draws_the_click_the_scale_bar_and_letters() -> None:
    vol = _label_volume()
    gt = vol.array == 2
    image = np.random.default_rng(0).normal(40, 10, gt.shape)
    clicks = centre_clicks(gt)
    method = OverlayMethod("sgp_sam", "#ff3b30", 0.5, gt.copy())
    fig = overlay_figure("t", image, vol.spacing, (-1, 0, 0, 0, -1, 0, 0, 0, 1), gt, method, clicks)
    k, j, i = clicks[0]
    marks = [c for ax in fig.axes for c in ax.collections if c.get_gid() == "click"]
    assert marks and all(np.allclose(m.get_offsets(), [[i, j]]) for m in marks)
    assert f"slice k={k} of" in fig.axes[0].get_title()
    bars = [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == "scale_bar"]
    full = bars[0].get_xdata()
    length_mm, _ = scale_bar(gt.shape[2], vol.spacing[0])
    assert full[1] - full[0] == pytest.approx(length_mm / vol.spacing[0])
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"L", "R", "P", "A", f"{length_mm:g} mm"} <= texts


def test_pick_cases_uses_the_methods_own_dice() -> None:
    dice = {"a": 0.9, "b": 0.1, "c": 0.5, "free": 1.0}
    assert pick_cases(dice, ["a", "b", "c"]) == [("worst", "b"), ("best", "a")]
    assert pick_cases(dice, ["c"]) == [("worst", "c")]
    assert pick_cases(dice, []) == []
