"""Output paths checked before any work: never an input, and creatable without creating anything yet.

Every command lists the files it will read and the paths it will write, and calls :func:`refuse_inputs_as_outputs`
and :func:`check_can_create` before its first write, so a bad command line leaves the disk as it was: no input
overwritten (also through a symlink or a hard link: :func:`os.path.samefile`), no empty output folder left behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PathLike = str | os.PathLike[str]


def _same(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` name the same file or folder (resolved, or one inode when both exist)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return Path(os.path.abspath(a)).resolve() == Path(os.path.abspath(b)).resolve()


def refuse_inputs_as_outputs(
    writes: Iterable[tuple[str, PathLike | None]], reads: Iterable[tuple[str, PathLike | None]]
) -> None:
    """Raise ``ValueError`` if a path to be written is one of the paths to be read (same name, link or inode).

    Args:
        writes: ``(what, path)`` of every file a command will write (``what`` as the user named it, e.g. ``--out``).
        reads: ``(what, path)`` of every file it reads (list the files of an input folder one by one).
    """
    read_list = [(what, Path(p)) for what, p in reads if p is not None]
    for w_what, w in ((what, Path(p)) for what, p in writes if p is not None):
        for r_what, r in read_list:
            if _same(w, r):
                raise ValueError(
                    f"{w_what} {w} is the same file as {r_what} {r}: writing it would destroy the input; "
                    "choose another output path (nothing was written)"
                )


def check_can_create(path: PathLike, *, what: str = "--out", folder: bool = False) -> None:
    """Raise ``ValueError`` unless ``path`` (a file, or a folder with ``folder``) can be written, creating nothing.

    The nearest existing ancestor must be a writable folder (not a file); an existing ``path`` must be a file
    (a folder with ``folder``).
    """
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise ValueError(f"{what} {p} is a file, not a folder: give a folder path")
        if not folder and p.is_dir():
            raise ValueError(f"{what} {p} is a folder: give a file path")
        if not os.access(p if folder else p.parent, os.W_OK):
            raise ValueError(f"{what} {p}: cannot write there (permission denied)")
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {p}: cannot create it because {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {p}: cannot create it in {parent} (permission denied)")
