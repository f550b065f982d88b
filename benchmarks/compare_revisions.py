"""Time one ``lesionsam`` command on two revisions of this repository, side by side in one run.

A change that claims a speed-up ("evaluate-clicks is 3x faster than main") is measured here: the command runs
alternately on the working tree and on ``--base`` (checked out once into a temporary ``git worktree``), ``--repeats``
times each, every run with a fresh output folder; the median wall time of each side and their ratio are printed,
and the files the two sides wrote are compared (same names, same bytes), so that a speed-up that changed the
results is seen. Wall time includes Python's start-up and imports, as a user sees it.

``--tree-args`` adds flags to the working tree's command only (a new option measured against the old default).

Example (the click-curve protocol on the demo's test set, before and after issue 21)::

    python benchmarks/compare_revisions.py --base b22a878 --repeats 3 -- \\
        evaluate-clicks runs/demo/data/test/imagesTr runs/demo/data/test/labelsTr --out {out} \\
        --checkpoint runs/demo/finetune/best.pt --clicks 10
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run(src: Path, args: list[str], out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    argv = [sys.executable, "-m", "lesionsam.cli.main", *(a.replace("{out}", str(out)) for a in args)]
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare with (a commit, branch or tag)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (median reported; default 3)")
    parser.add_argument(
        "--tree-args",
        default="",
        metavar="ARGS",
        help="flags added to the working tree's command only (e.g. '--workers 2', a flag the base does not have)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the lesionsam sub-command; {out} = output")
    a = parser.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command or not any("{out}" in c for c in command):
        parser.error("give the lesionsam sub-command after --, with {out} where its output folder goes")
    with tempfile.TemporaryDirectory(prefix="lesionsam-compare-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), a.base], check=True, capture_output=True
        )
        try:
            sides = {f"base ({a.base})": base / "src", "working tree": ROOT / "src"}
            commands = {f"base ({a.base})": command, "working tree": [*command, *a.tree_args.split()]}
            seconds: dict[str, list[float]] = {name: [] for name in sides}
            outputs: dict[str, dict[str, str]] = {}
            for r in range(a.repeats):
                for name, src in sides.items():
                    out = Path(tmp) / f"out_{len(outputs)}_{r}_{name.split()[0]}"
                    seconds[name].append(_run(src, commands[name], out))
                    outputs[name] = _digest(out)
                    print(f"  {name}: run {r + 1}: {seconds[name][-1]:.1f} s", file=sys.stderr)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    medians = {name: statistics.median(v) for name, v in seconds.items()}
    (b, bt), (w, wt) = medians.items()
    print(f"lesionsam {' '.join(command)}" + (f"  (working tree: + {a.tree_args})" if a.tree_args else ""))
    for name, v in seconds.items():
        print(f"  {name:<28} median {medians[name]:7.1f} s   runs {', '.join(f'{s:.1f}' for s in v)}")
    print(
        f"  working tree is {bt / wt:.2f}x as fast as {b}; same output files: "
        f"{'yes' if outputs[b] == outputs[w] else 'NO'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
