"""Paths from HTTP requests, confined to the server's ``--root``.

Every path a client names is relative to the root, written with ``/``. It is refused when it is empty, absolute
(``/x``, ``C:\\x``, ``\\\\host``), holds a ``..`` part, a backslash or a NUL byte, or when it resolves (symlinks
followed, :meth:`pathlib.Path.resolve`) to a place outside the root or into a loop of symlinks: a symlink inside the
root that points out of it is refused too. A refusal does not repeat an absolute path (the client's own or the
server's). Listing walks the root without following symlinked folders and lists a symlinked file only when it
resolves inside the root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from lesionsam.data.io import IMAGE_SUFFIXES, image_suffix

#: Most images :func:`list_images` returns (a root with more lists the first ones, sorted).
MAX_LISTED = 5000


class PathRefused(ValueError):
    """A client path that names something outside the root (or is malformed); the message says why."""


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_inside(root: Path, relative: str, *, what: str = "path") -> Path:
    """The resolved absolute path of ``relative`` under ``root`` (already resolved), refusing escapes.

    Args:
        root: the server's root folder, resolved (:meth:`Path.resolve`).
        relative: a client's path relative to ``root`` with ``/`` separators (``"case_1/ct.nii.gz"``).
        what: how the message names the path (``"path"``, ``"out"``).

    Raises:
        PathRefused: empty, absolute, ``..``, backslash or NUL, or resolving (through symlinks) outside ``root``.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise PathRefused(f"{what} is empty: give a path relative to the served folder")
    if "\x00" in relative or "\\" in relative:
        raise PathRefused(f"{what}: backslashes and NUL bytes are not allowed; use '/' between folders")
    windows = PureWindowsPath(relative)
    if PurePosixPath(relative).is_absolute() or windows.is_absolute() or windows.drive:
        raise PathRefused(f"{what} is absolute: give a path relative to the served folder")
    parts = PurePosixPath(relative).parts
    if ".." in parts:
        raise PathRefused(f"{what} {relative!r} contains '..': only paths inside the served folder are allowed")
    try:
        resolved = (root / PurePosixPath(*parts)).resolve(strict=False)
    except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
        raise PathRefused(f"{what} {relative!r} is a loop of symlinks: refused") from None
    if not _inside(resolved, root):
        raise PathRefused(f"{what} {relative!r} leads outside the served folder (a symlink?): refused")
    return resolved


def relative_to_root(root: Path, path: Path) -> str:
    """``path`` (inside ``root``) as the client sees it: relative, with ``/``."""
    return path.resolve(strict=False).relative_to(root).as_posix()


@dataclass(frozen=True)
class ListedImage:
    """One image under the root: its client path and size in bytes (a DICOM folder: the sum of its files)."""

    path: str
    size_bytes: int


def list_images(root: Path, *, limit: int = MAX_LISTED) -> list[ListedImage]:
    """Image files under ``root`` (known image endings, hidden names skipped), sorted by path; a folder holding
    ``.dcm`` files is one entry (a DICOM series), its files are not listed one by one.

    Symlinked folders are not entered; a symlinked file is listed only if it resolves inside ``root``.
    """
    found: list[ListedImage] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        dicom = [f for f in files if f.lower().endswith(".dcm") and not f.startswith(".")]
        if dicom and Path(folder) != root:
            size = sum((Path(folder) / f).stat().st_size for f in dicom if (Path(folder) / f).is_file())
            found.append(ListedImage(Path(folder).relative_to(root).as_posix(), size))
            files = [f for f in files if f not in dicom]
        for name in sorted(files):
            if name.startswith(".") or image_suffix(name).lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(folder) / name
            resolved = path.resolve(strict=False)
            if not _inside(resolved, root) or not resolved.is_file():
                continue
            found.append(ListedImage(path.relative_to(root).as_posix(), resolved.stat().st_size))
            if len(found) >= limit:
                return found
    return sorted(found, key=lambda item: item.path)
