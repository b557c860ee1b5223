"""IDX, the format MNIST ships in: a header read and checked before any byte of data (an absurd
or wrong-shaped header is refused before allocating), then the array."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..core.errors import DataError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# Refuse absurd headers before allocating: no IDX dataset we read is anywhere near this.
MAX_IDX_ITEMS = 1 << 31


def _idx_size(head: bytes) -> int | None:
    """The total size an IDX file must have, from its first bytes (None: not IDX, or too short
    to tell; ``parse_idx`` then says what is wrong)."""
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES or head[3] == 0:
        return None
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        return None
    dims = struct.unpack(f">{ndim}I", head[4:4 + 4 * ndim])
    if math.prod(d for d in dims if d) > MAX_IDX_ITEMS:
        return None
    return 4 + 4 * ndim + math.prod(dims) * np.dtype(IDX_DTYPES[head[2]]).itemsize


def _check_dims(path: Path, head: bytes, expect: tuple[int, ...] | None) -> None:
    """Refuse a header whose dimensions are not the dataset's, from its first bytes:
    ``expect`` is (most items, *the shape of one item})."""
    if expect is None or len(head) < 4 or head[:2] != b"\0\0" or head[3] != len(expect):
        return  # not IDX, or another rank: ``parse_idx`` says what is wrong
    if len(head) < 4 + 4 * len(expect):
        return
    dims = struct.unpack(f">{len(expect)}I", head[4:4 + 4 * len(expect)])
    if dims[1:] != tuple(expect[1:]) or dims[0] > expect[0]:
        what = "images of " + " x ".join(map(str, dims[1:])) if len(dims) > 1 else "labels"
        want = "images of " + " x ".join(map(str, expect[1:])) if len(expect) > 1 else "labels"
        raise DataError(f"{path}: the header claims {dims[0]:,} {what}; this dataset has at most "
                        f"{expect[0]:,} {want}: refused before reading it")


def _open_bytes(path: Path, expect: tuple[int, ...] | None = None) -> bytes:
    """The file's IDX bytes, gunzipped if need be. Whatever the file, at most the size its IDX
    header promises (plus one byte, to notice extra data) is read or decompressed: a small gzip
    that inflates to gigabytes costs nothing. Only regular files are opened. With ``expect``,
    a header whose dimensions disagree with it is refused before anything else is read."""
    try:
        if not path.is_file():
            raise DataError(f"{path}: not a regular file")
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            fh = gzip.GzipFile(fileobj=raw) if gz else raw
            head = fh.read(4 + 4 * 255)
            _check_dims(path, head, expect)
            size = _idx_size(head)
            cap = (size if size is not None else len(head)) + 1
            return head[:cap] + fh.read(max(0, cap - len(head)))
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def parse_idx(data: bytes, name: str = "<bytes>", expect_ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into an array, checking the header against the payload length."""
    if len(data) < 4:
        raise DataError(f"{name}: file is too short to be IDX ({len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in IDX_DTYPES or ndim == 0:
        raise DataError(f"{name}: not an IDX file (magic 0x{data[:4].hex()})")
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{name}: expected {expect_ndim} dimensions, header says {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[dtype_code])
    count = math.prod(dims)
    # Also bound the non-zero dimensions: an empty array of shape (0, 2**31, 2**31) is not data.
    if math.prod(d for d in dims if d) > MAX_IDX_ITEMS:
        raise DataError(f"{name}: header claims {count} items, more than any dataset we read")
    need = header + count * dtype.itemsize
    if len(data) < need:
        raise DataError(f"{name}: truncated: header promises {need} bytes, file has {len(data)}")
    if len(data) > need:
        raise DataError(f"{name}: {len(data) - need} unexpected bytes after the data")
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


def read_idx(path: str | Path, expect_ndim: int | None = None,
             expect: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, validating magic, dimensions and length;
    ``expect`` = (most items, *item shape) bounds the header before the payload is read."""
    path = Path(path)
    return parse_idx(_open_bytes(path, expect), str(path), expect_ndim)
