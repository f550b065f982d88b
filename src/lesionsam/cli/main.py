"""The ``lesionsam`` console script: one command with sub-commands.

Each sub-command parses its arguments and calls one typed Python function (in ``lesionsam.workflows``)
that tests can call directly. Heavy imports happen inside the command. Errors a user can act on
(bad files, bad arguments) are printed as one line ``lesionsam <cmd>: error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, PermissionError)

_COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}

#: Modules under ``lesionsam.cli`` that define sub-commands with :func:`command` (in help order).
COMMAND_MODULES = ("demo", "sweep", "synth", "train", "predict", "evaluate", "bench")


def command(name: str) -> Callable[[Callable[[argparse._SubParsersAction], None]], Callable]:
    """Register a function that adds the sub-parser ``name`` (and sets ``func``)."""

    def deco(fn: Callable[[argparse._SubParsersAction], None]) -> Callable:
        _COMMANDS[name] = fn
        return fn

    return deco


# ---------------------------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesionsam",
        description="3D Segment Anything (SAM-Med3D) for lesion segmentation in CT and MRI.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        importlib.import_module(f"lesionsam.cli.{module}")
    for add in _COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"lesionsam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lesionsam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    # ``python -m lesionsam.cli.main`` (and ``torchrun -m lesionsam.cli.main``) runs this file as ``__main__``,
    # while the command modules register into ``lesionsam.cli.main``: run that module's ``main``.
    from lesionsam.cli.main import main as _main

    sys.exit(_main())
