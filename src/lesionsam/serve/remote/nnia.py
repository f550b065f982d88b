"""The NNIA array format of nnInteractive's remote protocol, read and written here (blosc2 compresses the payload).

Layout (little-endian): ``b"NNIA"`` | version u8 (1) | codec u8 (1 zstd, 2 lz4) | ndim u8 | dtype-name length u8 |
dtype name (ASCII, NumPy's, e.g. ``"float32"``) | shape, ndim × int64 | chunk count u32 | per chunk: uncompressed
length u64, compressed length u64, that many bytes of one blosc2 ``compress2`` frame (at most 1 GiB uncompressed).

:func:`unpack` refuses, with one clear ``ValueError``, anything that is not such an array within the limits given:
a wrong magic or version, an unknown codec or dtype, a shape over ``max_bytes``, chunks that do not add up, a frame
whose own size disagrees with its header.
"""

from __future__ import annotations

import struct

import blosc2
import numpy as np

MAGIC, VERSION = b"NNIA", 1
#: Largest chunk (uncompressed bytes): blosc2's compress2 takes at most 2 GiB - 1 per call.
CHUNK = 1 << 30
_CODECS = {1: blosc2.Codec.ZSTD, 2: blosc2.Codec.LZ4}
#: The dtypes an array may have on the wire.
DTYPES = frozenset(
    {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"}
)


def pack(array: np.ndarray, *, clevel: int = 3) -> bytes:
    """``array`` as NNIA bytes (zstd, no filter: label patches are mostly constant)."""
    arr = np.ascontiguousarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    name = arr.dtype.name.encode("ascii")
    raw = memoryview(arr).cast("B") if arr.nbytes else memoryview(b"")
    parts = [struct.pack(f"<4sBBBB{len(name)}s", MAGIC, VERSION, 1, arr.ndim, len(name), name)]
    parts.append(struct.pack(f"<{arr.ndim}q", *arr.shape))
    starts = list(range(0, arr.nbytes, CHUNK))
    parts.append(struct.pack("<I", len(starts)))
    for start in starts:
        piece = raw[start : start + CHUNK]
        frame = blosc2.compress2(
            piece, typesize=arr.dtype.itemsize, codec=blosc2.Codec.ZSTD, clevel=clevel, filters=[blosc2.Filter.NOFILTER]
        )
        parts += [struct.pack("<QQ", len(piece), len(frame)), frame]
    return b"".join(parts)


def _take(buf: bytes, offset: int, fmt: str) -> tuple[tuple, int]:
    size = struct.calcsize(fmt)
    if offset + size > len(buf):
        raise ValueError("the array body is truncated: send the NNIA bytes the client packs")
    return struct.unpack_from(fmt, buf, offset), offset + size


def unpack(buf: bytes, *, max_bytes: int) -> np.ndarray:
    """The array in NNIA bytes ``buf``, refused beyond ``max_bytes`` uncompressed (see the module docstring)."""
    (magic, version, codec, ndim, name_len), offset = _take(buf, 0, "<4sBBBB")
    if magic != MAGIC:
        raise ValueError("the body is not an NNIA array (no 'NNIA' magic): send the array as the client packs it")
    if version != VERSION or codec not in _CODECS:
        raise ValueError(f"NNIA version {version} / codec {codec} is not supported (version 1, codec zstd or lz4)")
    (name,), offset = _take(buf, offset, f"<{name_len}s")
    dtype_name = name.decode("ascii", "replace")
    if dtype_name not in DTYPES:
        raise ValueError(f"NNIA dtype {dtype_name!r} is not supported; send one of {', '.join(sorted(DTYPES))}")
    dtype = np.dtype(dtype_name)
    shape, offset = _take(buf, offset, f"<{ndim}q")
    if any(s < 0 for s in shape):
        raise ValueError(f"NNIA shape {list(shape)} has a negative size")
    total = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if total > max_bytes:
        raise ValueError(
            f"the array of shape {list(shape)} ({dtype_name}) is {total / 1048576:.0f} MB uncompressed, over the "
            f"server's limit of {max_bytes / 1048576:.0f} MB (lesionsam serve --max-upload-mb)"
        )
    (nchunks,), offset = _take(buf, offset, "<I")
    out = np.empty(total // dtype.itemsize, dtype=dtype)
    view = memoryview(buf)
    written = 0
    for _ in range(nchunks):
        (ulen, clen), offset = _take(buf, offset, "<QQ")
        if written + ulen > total or ulen % dtype.itemsize or offset + clen > len(buf):
            raise ValueError("the NNIA chunks do not match the array's shape: send the array as the client packs it")
        frame = view[offset : offset + clen]
        try:
            size = blosc2.get_cbuffer_sizes(frame)[0]
        except Exception:  # blosc2 raises several types for a frame that is not one
            size = -1
        if size != ulen:
            raise ValueError("an NNIA chunk is not a blosc2 frame of its declared size")
        blosc2.decompress2(frame, dst=out[written // dtype.itemsize : (written + ulen) // dtype.itemsize])
        written += ulen
        offset += clen
    if written != total:
        raise ValueError(f"the NNIA payload holds {written} bytes, its shape {list(shape)} needs {total}")
    return out.reshape(shape)
