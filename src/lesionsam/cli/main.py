"""The ``lesionsam`` console script: one command with sub-commands.

Each sub-command parses its arguments and calls one typed Python function (in ``lesionsam.workflows``)
that tests can call directly. Heavy imports happen inside the command. Errors a user can act on
(bad files, bad arguments) are printed as one line ``lesionsam <cmd>: error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Callable, Sequence

#: Exceptions printed as one line with exit code 2 (``OSError``: a file or folder the user named, e.g. a full disk).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError)

#: Options whose value may start with "-" (a negative coordinate: ``--point -5,10,10``).
_NEGATIVE_VALUE_OPTIONS = ("--point", "--negative")
_NUMBERS = re.compile(r"^-[\d.]")

_COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}

#: Modules under ``lesionsam.cli`` that define sub-commands with :func:`command` (in help order).
COMMAND_MODULES = ("demo", "sweep", "synth", "train", "predict", "evaluate", "bench", "serve", "export")


def command(name: str) -> Callable[[Callable[[argparse._SubParsersAction], None]], Callable]:
    """Register a function that adds the sub-parser ``name`` (and sets ``func``)."""

    def deco(fn: Callable[[argparse._SubParsersAction], None]) -> Callable:
        _COMMANDS[name] = fn
        return fn

    return deco


def add_zoom_flag(group: argparse._ActionsContainer, default: str | None = "off") -> None:
    """``--zoom``: the one flag of zoom-in for small lesions (its value is read by
    :func:`lesionsam.inference.zoom.parse_zoom` when the command runs, so a bad one is a one-line error)."""
    group.add_argument(
        "--zoom",
        default=default,
        metavar="SPEC",
        help="zoom into small lesions: off, auto (size-adaptive: a lesion whose extent is small for the window is "
        "segmented again at a finer spacing), a factor (e.g. 2: every lesion), or auto with settings "
        "'auto,fill=0.6,max=3,finest=0.25,min=1.25,prior=yes,passes=1' (default "
        + (default or "the demo recipe's chosen setting; off with a CONFIG")
        + "; see docs/cli.md)",
    )


def add_runtime_flag(group: argparse._ActionsContainer) -> None:
    """``--runtime``: PyTorch, or ONNX Runtime on a folder written by ``lesionsam export`` (predict, serve)."""
    group.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnxruntime", "onnxruntime-int8"],
        help="run the model in PyTorch (default) or in ONNX Runtime: --checkpoint is then a folder written by "
        "lesionsam export (onnxruntime-int8: its int8 encoder)",
    )


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
    for sub_parser in sub.choices.values():  # -v also after the sub-command (``lesionsam evaluate ... -v``)
        if "-v" not in sub_parser._option_string_actions:
            sub_parser.add_argument(
                "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more detail"
            )
    return parser


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--point -5,10,10`` → ``--point=-5,10,10``: argparse would take ``-5,10,10`` for an option."""
    out: list[str] = []
    it = iter(argv)
    for token in it:
        if token in _NEGATIVE_VALUE_OPTIONS:
            nxt = next(it, None)
            if nxt is not None and _NUMBERS.match(nxt):
                out.append(f"{token}={nxt}")
                continue
            out.append(token)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(token)
    return out


def error_line(exc: BaseException) -> str:
    """An exception as one line: its message's lines joined (an ``OSError`` as ``path: reason``)."""
    if isinstance(exc, OSError) and exc.strerror:  # raised by the system: "[Errno 20] Not a directory: 'x'"
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc)
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"lesionsam {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lesionsam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    # ``python -m lesionsam.cli.main`` (and ``torchrun -m lesionsam.cli.main``) runs this file as ``__main__``,
    # while the command modules register into ``lesionsam.cli.main``: run that module's ``main``.
    from lesionsam.cli.main import main as _main

    sys.exit(_main())
