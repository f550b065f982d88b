"""Checking a choice against the known options, with a "did you mean" hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def look_up_option(value: str, options: Iterable[str], *, what: str = "option") -> str:
    """Return ``value`` if it is one of ``options``; otherwise raise ``ValueError`` listing them.

    Example:
        >>> look_up_option("tiny", ["tiny", "sam_med3d_vit_b"], what="preset")
        'tiny'
    """
    known = list(options)
    if value in known:
        return value
    hint = difflib.get_close_matches(str(value), [str(k) for k in known], n=1)
    did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(f"Unknown {what} {value!r}.{did_you_mean} Known: {', '.join(map(str, known))}.")
