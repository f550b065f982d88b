"""Box prompts against one centre click: per-lesion Dice on a synthetic (MSD-layout) test set.

Every connected lesion (26-connectivity) of the label value is segmented alone in an
:class:`~lesionsam.inference.session.InteractiveSession` from one of these prompts:

* ``click``: one positive click at the lesion's interior-most voxel (the usual first click);
* ``box3d``: the lesion's bounding box (3D), with the ellipsoid prior mask (:mod:`lesionsam.inference.boxes`);
* ``box3d_no_prior``: the same box given as its window and centre click only;
* ``box2d``: the lesion's bounding box on the slice (k) of its centre click, a 2D box as a user draws on one slice;
* ``box2d_no_prior``: that 2D box without the prior mask.

A box side of one voxel is widened to two (nobody draws a zero-width box). Dice
(:func:`lesionsam.evaluation.dice.dice`) is measured on the input grid between the lesion's mask and that lesion
alone.

Run: ``python -m lesionsam.workflows.box_study CHECKPOINT DATA_ROOT [--out result.json] [--cases N]``;
``--bfloat16`` compares instead the masks of a bfloat16 (autocast) predictor with float32 ones
(:func:`compare_dtypes`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lesionsam.data.clicks import first_click
from lesionsam.data.io import read_image
from lesionsam.data.synthetic import LESION
from lesionsam.evaluation.dice import dice
from lesionsam.evaluation.statistics import paired_comparison
from lesionsam.inference.boxes import BOX_PRIOR_LOGIT, Box
from lesionsam.inference.predictor import Predictor
from lesionsam.inference.session import InteractiveSession
from lesionsam.utils.components import label_lesions

#: The prompts compared (see the module docstring).
VARIANTS = ("click", "box3d", "box3d_no_prior", "box2d", "box2d_no_prior")


def _widen(lo: np.ndarray, hi: np.ndarray, size: Sequence[int], keep_flat: int | None) -> Box:
    """A box from (i, j, k) bounds whose one-voxel sides (but ``keep_flat``) are widened to two voxels."""
    lo, hi = lo.astype(int).copy(), hi.astype(int).copy()
    for a in range(3):
        if a != keep_flat and lo[a] == hi[a]:
            if hi[a] + 1 < size[a]:
                hi[a] += 1
            else:
                lo[a] -= 1
    return Box(tuple(int(v) for v in lo), tuple(int(v) for v in hi))  # type: ignore[arg-type]


def lesion_prompts(component: np.ndarray) -> dict[str, Any]:
    """The prompts of one lesion mask (D, H, W bool): its centre click (i, j, k), 3D box and 2D box on the click's
    slice."""
    size = component.shape[::-1]
    dhw, _ = first_click(component, mode="center")
    idx = np.argwhere(component)
    box3d = _widen(idx.min(axis=0)[::-1], idx.max(axis=0)[::-1], size, None)
    k = int(dhw[0])
    in_slice = np.argwhere(component[k])  # (h, w)
    lo2 = np.array([in_slice[:, 1].min(), in_slice[:, 0].min(), k])
    hi2 = np.array([in_slice[:, 1].max(), in_slice[:, 0].max(), k])
    return {"click": tuple(int(v) for v in dhw[::-1]), "box3d": box3d, "box2d": _widen(lo2, hi2, size, 2)}


def box_vs_click(
    predictor: Predictor,
    root: str | os.PathLike[str],
    *,
    label: int = LESION,
    cases: int | None = None,
    variants: Sequence[str] = VARIANTS,
) -> dict[str, Any]:
    """Per-lesion Dice of each prompt variant over the cases of an MSD-layout data set ``root``.

    Returns:
        ``{"lesions": [{"case", "voxels", "ml", variant: dice, ...}], "summary": {variant: {mean, sd, median,
        mean_under_1ml, mean_over_1ml, and against the click: diff_vs_click, ci_low, ci_high, p_wilcoxon}},
        "seconds": wall time}``. The paired statistics treat lesions as independent (several share a case).
    """
    t0 = time.perf_counter()
    root = Path(root)
    images = sorted((root / "imagesTr").glob("*.nii.gz"))[: cases if cases else None]
    rows: list[dict[str, Any]] = []
    for image_path in images:
        image = read_image(image_path)
        gt = read_image(root / "labelsTr" / image_path.name).array == label
        voxel_ml = float(np.prod(image.spacing)) / 1000.0
        comps, n = label_lesions(gt)
        with_prior = InteractiveSession(predictor, image, box_prior_logit=BOX_PRIOR_LOGIT)
        no_prior = InteractiveSession(predictor, image, box_prior_logit=None)
        for c in range(1, n + 1):
            component = comps == c
            prompts = lesion_prompts(component)
            row: dict[str, Any] = {"case": image_path.name, "voxels": int(component.sum())}
            row["ml"] = row["voxels"] * voxel_ml
            for variant in variants:
                session = no_prior if variant.endswith("no_prior") else with_prior
                session.reset()
                if variant == "click":
                    lesion = session.click(prompts["click"]).lesion
                else:
                    lesion = session.box(prompts[variant.removesuffix("_no_prior")]).lesion
                row[variant] = dice(session.label_map() == lesion, component)
            rows.append(row)
    summary = {}
    for variant in variants:
        d = np.array([r[variant] for r in rows])
        small = np.array([r["ml"] < 1.0 for r in rows])
        summary[variant] = {
            "mean": float(d.mean()) if len(d) else float("nan"),
            "sd": float(d.std(ddof=1)) if len(d) > 1 else float("nan"),
            "median": float(np.median(d)) if len(d) else float("nan"),
            "mean_under_1ml": float(d[small].mean()) if small.any() else float("nan"),
            "mean_over_1ml": float(d[~small].mean()) if (~small).any() else float("nan"),
        }
        if variant != "click" and "click" in variants and len(rows) > 1:
            cmp = paired_comparison([r["click"] for r in rows], [r[variant] for r in rows])
            summary[variant].update(
                diff_vs_click=cmp.mean_diff, ci_low=cmp.ci_low, ci_high=cmp.ci_high, p_wilcoxon=cmp.p_wilcoxon
            )
    return {"lesions": rows, "summary": summary, "seconds": time.perf_counter() - t0}


def compare_dtypes(
    checkpoint: str | os.PathLike[str], root: str | os.PathLike[str], *, label: int = LESION, cases: int | None = None
) -> dict[str, Any]:
    """Masks of float32 and bfloat16 (autocast) predictors from the same centre click and 3D box per lesion.

    Returns:
        ``{"dice_bf16_vs_fp32": {"click": [...], "box3d": [...]}, "dice_vs_truth": {dtype: {prompt: mean}}}``.
    """
    root = Path(root)
    predictors = {dt: Predictor.from_checkpoint(checkpoint, dtype=dt) for dt in ("float32", "bfloat16")}
    masks: dict[str, dict[str, list[np.ndarray]]] = {dt: {"click": [], "box3d": []} for dt in predictors}
    truths: list[np.ndarray] = []
    for image_path in sorted((root / "imagesTr").glob("*.nii.gz"))[: cases if cases else None]:
        image = read_image(image_path)
        gt = read_image(root / "labelsTr" / image_path.name).array == label
        comps, n = label_lesions(gt)
        sessions = {dt: InteractiveSession(p, image) for dt, p in predictors.items()}
        for c in range(1, n + 1):
            truths.append(comps == c)
            prompts = lesion_prompts(truths[-1])
            for dt, session in sessions.items():
                session.reset()
                lesion = session.click(prompts["click"]).lesion
                masks[dt]["click"].append(session.label_map() == lesion)
                session.reset()
                lesion = session.box(prompts["box3d"]).lesion
                masks[dt]["box3d"].append(session.label_map() == lesion)

    return {
        "lesions": len(truths),
        "dice_bf16_vs_fp32": {
            k: [dice(a, b) for a, b in zip(masks["bfloat16"][k], masks["float32"][k], strict=True)]
            for k in ("click", "box3d")
        },
        "nonempty": {
            k: [bool(a.any() or b.any()) for a, b in zip(masks["bfloat16"][k], masks["float32"][k], strict=True)]
            for k in ("click", "box3d")
        },
        "dice_vs_truth": {
            dt: {k: float(np.mean([dice(m, t) for m, t in zip(v, truths, strict=True)])) for k, v in d.items()}
            for dt, d in masks.items()
        },
    }


def format_box_table(result: dict[str, Any]) -> str:
    """The summary of :func:`box_vs_click` as text: a count line, then a Markdown table (one row per prompt)."""
    n = len(result["lesions"])
    lines = [
        f"{n} lesions, {result['seconds']:.0f} s",
        "| prompt | Dice mean ± sd | median | < 1 mL | >= 1 mL | − click [95% CI], Wilcoxon p |",
        "|---|---|---|---|---|---|",
    ]
    for variant, s in result["summary"].items():
        diff = ""
        if s.get("ci_low") is not None:
            diff = f"{s['diff_vs_click']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}], p = {s['p_wilcoxon']:.2g}"
        lines.append(
            f"| {variant} | {s['mean']:.3f} ± {s['sd']:.3f} | {s['median']:.3f} | {s['mean_under_1ml']:.3f} | "
            f"{s['mean_over_1ml']:.3f} | {diff} |"
        )
    return "\n".join(lines)


def format_dtype_comparison(cmp: dict[str, Any]) -> str:
    """The result of :func:`compare_dtypes` as text: bfloat16-vs-float32 Dice per prompt, then Dice vs the truth."""
    lines = []
    for prompt, dices in cmp["dice_bf16_vs_fp32"].items():
        d = np.asarray(dices)[np.asarray(cmp["nonempty"][prompt], dtype=bool)]
        lines.append(
            f"{prompt}: bf16 vs fp32 Dice mean {d.mean():.4f} min {d.min():.4f} over the {len(d)} lesions of "
            f"{len(dices)} with a mask in either"
        )
    lines.append(f"Dice vs truth: {json.dumps(cmp['dice_vs_truth'])}")
    return "\n".join(lines)
