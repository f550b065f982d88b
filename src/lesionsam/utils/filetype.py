"""What a file that should be a PyTorch checkpoint really is, from its first bytes (nothing is unpickled).

``torch.load`` on a text file, a Git LFS pointer or an image reports a pickle error that sends a user the wrong
way ("holds Python objects other than tensors…"); :func:`not_a_checkpoint` says what the file is instead.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

_HEAD = 4096
_IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".tif", ".tiff")


def _nifti_magic(head: bytes) -> bool:
    return (
        len(head) >= 348
        and head[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00", b"ni2\x00")
        or (len(head) >= 8 and head[4:8] in (b"n+2\x00", b"ni2\x00"))
    )


def not_a_checkpoint(path: str | os.PathLike[str]) -> str | None:
    """A phrase saying what ``path`` is when it cannot be a PyTorch checkpoint, else None.

    Recognised: an empty file, a Git LFS pointer, a NIfTI/NRRD/MetaImage/DICOM image (plain or gzipped), other
    gzip data, an HTML page (a download that saved the web page) and any other text file. A zip archive (the
    format of ``torch.save``) or a binary pickle passes (None): ``torch.load`` decides.
    """
    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        return "is empty (0 bytes): an interrupted download or copy? Fetch the file again"
    with open(p, "rb") as fh:
        head = fh.read(_HEAD)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None  # torch.save's zip format, or a legacy binary pickle
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the file itself: run `git lfs pull` in its repository (or download it)"
    if head.startswith(b"\x1f\x8b"):
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 348)
        except zlib.error:
            inner = b""
        if _nifti_magic(inner):
            return "is a NIfTI image, not a checkpoint: give it as the image and the weights with --checkpoint"
        return "is gzip-compressed data, not a PyTorch checkpoint (decompress it, or check the file name)"
    if _nifti_magic(head):
        return "is a NIfTI image, not a checkpoint: give it as the image and the weights with --checkpoint"
    if head.startswith(b"NRRD") or head.startswith(b"ObjectType") or head[128:132] == b"DICM":
        return "is a medical image (NRRD, MetaImage or DICOM), not a checkpoint"
    if p.name.lower().endswith(_IMAGE_ENDINGS):
        return "has an image file ending, not a checkpoint's (.pt, .pth)"
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if text.lstrip()[:15].lower().startswith(("<!doctype html", "<html")):
            return "is an HTML page, not a PyTorch checkpoint (the download saved a web page: fetch the file itself)"
        return "is a text file, not a PyTorch checkpoint"
    return None


def gzip_is_complete(path: str | os.PathLike[str]) -> int | None:
    """Decompress ``path`` (gzip) to its end and return its length in bytes, or None if the stream is truncated."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error):
        return None
    return total
