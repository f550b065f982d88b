"""The Markdown tables of the studies (``lesionsam text-study``, ``lesionsam auto-study``): one row per class and
prompt, numbers as the evaluator wrote them (mean ± sd over cases)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: How a text-study prompt kind is shown (``text`` is the row's text).
_TEXT_PROMPTS = {
    "text": 'text "{text}"',
    "text_own": 'text "{text}", own mask',
    "clicks": "clicks",
    "both": 'clicks + "{text}"',
}


def text_study_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lines of the text study's table: class, prompt, Dice, lesion F1, Dice against the other class and the share
    of each class's voxels covered."""
    lines = [
        "| class | prompt | Dice | lesion F1 | Dice vs the other class | covers own class | covers other class |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        prompt = _TEXT_PROMPTS[r["prompt"]].format(text=r.get("text", ""))
        lines.append(
            f"| {r['class']} | {prompt} | {r['dice_mean']:.3f} ± {r['dice_sd']:.3f} | {r['lesion_f1']:.3f} | "
            f"{r['dice_other_class']:.3f} | {r['covers_own_class']:.0%} | {r['covers_other_class']:.0%} |"
        )
    return lines


def auto_study_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Lines of the automatic study's table: class, method, prompts, Dice and lesion-wise F1, precision, recall
    (— where undefined)."""
    lines = ["| class | method | prompts | Dice | lesion F1 | precision | recall |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        prec = "—" if r["lesion_precision"] is None else f"{r['lesion_precision']:.3f}"
        rec = "—" if r["lesion_recall"] is None else f"{r['lesion_recall']:.3f}"
        lines.append(
            f"| {r['class']} | {r['method']} | {r['prompts']} | {r['dice_mean']:.3f} ± {r['dice_sd']:.3f} | "
            f"{r['lesion_f1']:.3f} | {prec} | {rec} |"
        )
    return lines
