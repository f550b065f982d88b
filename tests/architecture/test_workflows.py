"""Workflows only parse, call library functions and write. Read from the source with ``ast``: no module under
``lesionsam/workflows/`` runs a model itself (torch, ``no_grad``/``inference_mode``, ``encode``/``decode``/``forward``
on a model, forward hooks), defines a metric of its own or writes a Markdown table of its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

WORKFLOWS = Path(__file__).resolve().parents[2] / "src" / "lesionsam" / "workflows"

#: Workflows that may import torch, and why (neither runs a model: that stays in the library).
TORCH_ALLOWED = {
    "ablate.py": "torch.distributed: joins the torchrun process group (and picks the CUDA device of its rank)",
    "demo.py": "reads torch.get_num_threads() for the run's setup line",
    "case_pool.py": "shares torch's threads among worker processes (get_num_threads / set_num_threads)",
}
#: Calls that run or reach into a model, or switch autograd for running one.
MODEL_CALLS = {
    "no_grad",
    "inference_mode",
    "autocast",
    "forward",
    "register_forward_hook",
    "register_forward_pre_hook",
    "set_attention_impl",
}
#: A function with one of these names (leading underscores aside) is a metric.
METRIC_NAME = re.compile(r"(dice|iou|jaccard|hausdorff|hd95|nsd|assd|surface_dice)(_score)?")


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def violations(source: str, filename: str) -> list[str]:
    """What in one workflow module's source runs a model, defines a metric or writes a Markdown table."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import | ast.ImportFrom) and filename not in TORCH_ALLOWED:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(line, f"imports {n}") for n in names if n == "torch" or n.startswith("torch.")]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            if attr in MODEL_CALLS:
                found.append((line, f"calls .{attr}()"))
            elif attr in ("encode", "decode") and not all(_is_text(a) for a in node.args):
                found.append((line, f"calls .{attr}() on a model"))  # str.encode() takes text only
        elif isinstance(node, ast.FunctionDef) and METRIC_NAME.fullmatch(node.name.lstrip("_")):
            found.append((line, f"defines the metric {node.name}()"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "|---" in node.value:
            found.append((line, "writes a Markdown table"))
    return [f"{filename}:{line} {what}" for line, what in sorted(found)]


def test_workflows_run_no_model_and_define_no_metric_or_table() -> None:
    paths = sorted(WORKFLOWS.glob("*.py"))
    assert len(paths) > 5
    bad = [v for p in paths for v in violations(p.read_text(), p.name)]
    assert not bad, "; ".join(bad)


def test_the_checker_finds_model_calls_metrics_and_tables() -> None:
    source = """
import json
import torch.nn
def _dice(a, b):
    return 1.0
def run(model, x, text):
    with torch.no_grad():
        model.encode(x)
    model.decode(x, text)
    print("|---|---|")
    return json.dumps({}).encode(), text.encode("utf-8"), b"".decode()
"""
    assert violations(source, "x.py") == [
        "x.py:3 imports torch.nn",
        "x.py:4 defines the metric _dice()",
        "x.py:7 calls .no_grad()",
        "x.py:8 calls .encode() on a model",
        "x.py:9 calls .decode() on a model",
        "x.py:10 writes a Markdown table",
    ]
    assert violations("import torch\n", "demo.py") == []  # an allowed import
    assert violations("def best_crop_dice(log): ...\n", "x.py") == []  # reads a number, computes no metric
