"""Progress lines of long commands, on standard error (standard output keeps the command's result)."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    """Print one progress line to standard error at once (flushed: visible in logs and pipes as it happens)."""
    print(message, file=sys.stderr, flush=True)
