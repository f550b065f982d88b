"""Box prompts against one centre click: per-lesion Dice on a synthetic (MSD-layout) test set.

Every connected lesion (26-connectivity) of the label value is segmented alone in an
:class:`~lesionsam.inference.session.InteractiveSession` from one of these prompts:

* ``click``: one positive click at the lesion's interior-most voxel (the usual first click);
* ``box3d``: the lesion's bounding box (3D), with the ellipsoid prior mask (:mod:`lesionsam.inference.boxes`);
* ``box3d_no_prior``: the same box given as its window and centre click only;
* ``box2d``: the lesion's bounding box on the slice (k) of its centre click, a 2D box as a user draws on one slice;
* ``box2d_no_prior``: that 2D box without the prior mask.

A box side of one voxel is widened to two (nobody draws a zero-width box). Dice is measured on the input grid
between the lesion's mask and that lesion alone.

Run: ``python -m lesionsam.workflows.box_study CHECKPOINT DATA_ROOT [--out result.json] [--cases N]``;
``--bfloat16`` compares instead the masks of a bfloat16 (autocast) predictor with float32 ones
(:func:`compare_dtypes`).
"""

from __future__ import annotations

import argparse
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
from lesionsam.evaluation.statistics import paired_comparison
from lesionsam.inference.boxes import BOX_PRIOR_LOGIT, Box
from lesionsam.inference.predictor import Predictor
from lesionsam.inference.session import InteractiveSession
from lesionsam.utils.components import label_lesions
from lesionsam.utils.dataclass_io import atomic_write_bytes

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


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


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
                row[variant] = _dice(session.label_map() == lesion, component)
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

    def agree(a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 if not (a.any() or b.any()) else _dice(a, b)

    return {
        "lesions": len(truths),
        "dice_bf16_vs_fp32": {
            k: [agree(a, b) for a, b in zip(masks["bfloat16"][k], masks["float32"][k], strict=True)]
            for k in ("click", "box3d")
        },
        "nonempty": {
            k: [bool(a.any() or b.any()) for a, b in zip(masks["bfloat16"][k], masks["float32"][k], strict=True)]
            for k in ("click", "box3d")
        },
        "dice_vs_truth": {
            dt: {k: float(np.mean([_dice(m, t) for m, t in zip(v, truths, strict=True)])) for k, v in d.items()}
            for dt, d in masks.items()
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lesionsam.workflows.box_study CHECKPOINT ROOT``: print the summary table (and write JSON)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("root", type=Path, help="MSD-layout data set (imagesTr/, labelsTr/)")
    p.add_argument("--label", type=int, default=LESION)
    p.add_argument("--cases", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the per-lesion results as JSON")
    p.add_argument("--bfloat16", action="store_true", help="instead: compare bfloat16 masks with float32 masks")
    a = p.parse_args(argv)
    if a.bfloat16:
        cmp = compare_dtypes(a.checkpoint, a.root, label=a.label, cases=a.cases)
        for prompt, dice in cmp["dice_bf16_vs_fp32"].items():
            d = np.asarray(dice)[np.asarray(cmp["nonempty"][prompt], dtype=bool)]
            print(
                f"{prompt}: bf16 vs fp32 Dice mean {d.mean():.4f} min {d.min():.4f} over the {len(d)} lesions of "
                f"{len(dice)} with a mask in either"
            )
        print("Dice vs truth:", json.dumps(cmp["dice_vs_truth"]))
        if a.out is not None:
            atomic_write_bytes(a.out, (json.dumps(cmp, indent=1) + "\n").encode())
        return 0
    predictor = Predictor.from_checkpoint(a.checkpoint)
    result = box_vs_click(predictor, a.root, label=a.label, cases=a.cases)
    n = len(result["lesions"])
    print(f"{n} lesions, {result['seconds']:.0f} s")
    print("| prompt | Dice mean ± sd | median | < 1 mL | >= 1 mL | − click [95% CI], Wilcoxon p |")
    print("|---|---|---|---|---|---|")
    for variant, s in result["summary"].items():
        diff = ""
        if s.get("ci_low") is not None:
            diff = f"{s['diff_vs_click']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}], p = {s['p_wilcoxon']:.2g}"
        print(
            f"| {variant} | {s['mean']:.3f} ± {s['sd']:.3f} | {s['median']:.3f} | {s['mean_under_1ml']:.3f} | "
            f"{s['mean_over_1ml']:.3f} | {diff} |"
        )
    if a.out is not None:
        atomic_write_bytes(a.out, (json.dumps(result, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
