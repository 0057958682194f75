"""What a user's .npz archive holds, read from the `.npy` headers inside the zip: each
array's shape and dtype, without decompressing any array. A kilobyte-sized header can
declare gigabytes (a compressed file of zeros does so honestly), so everything that needs
only sizes (the training-set length a sweep checks per run, the data's shapes, the memory
check) is answered here, and the arrays are loaded once, after it.

Read once per file: the answer is kept per (path, modification time, size), so a sweep
that checks a thousand runs on one file opens it once.
"""
from __future__ import annotations

import functools
import os
import zipfile
from typing import NamedTuple

import numpy as np

NOT_NPZ = "is a single .npy array, not an .npz archive of X_train, y_train, X_test, y_test"


class NotNpz(ValueError):
    """The file is not a zip of .npy arrays; the message says why, in one line."""


class Member(NamedTuple):
    """One array's header: shape and dtype, or `error` (a broken or unsupported header)."""
    shape: tuple[int, ...] | None
    dtype: np.dtype | None
    error: str | None = None


def read(path: str | os.PathLike) -> dict[str, Member]:
    """The arrays of the .npz at `path` by name (as np.load names them) -> their headers.
    NotNpz where the file is no zip archive. Kept per path, mtime and size."""
    st = os.stat(path)
    return _read(os.path.realpath(path), st.st_mtime_ns, st.st_size)


_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@functools.lru_cache(maxsize=32)
def _read(path: str, mtime_ns: int, size: int) -> dict[str, Member]:
    with open(path, "rb") as f:
        if f.read(6) == np.lib.format.MAGIC_PREFIX:
            raise NotNpz(NOT_NPZ)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise NotNpz(f"cannot read as .npz: {type(e).__name__}: {e}".splitlines()[0]) from None
    out = {}
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):  # np.load gives such a member as raw bytes
                out[info.filename] = Member(None, None, "is not a .npy array")
                continue
            out[info.filename[:-4]] = _member(zf, info)
    return out


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    """One member's header; only the first bytes of the member are decompressed."""
    try:
        with zf.open(info) as m:
            version = np.lib.format.read_magic(m)
            reader = _READERS.get(version)
            if reader is None:  # 3.0: utf-8 field names, a structured dtype (refused anyway)
                return Member(None, None, f"has .npy format version {version[0]}.{version[1]}")
            shape, _fortran, dtype = reader(m)
    except Exception as e:  # noqa: BLE001 - any damage to a member is reported as such
        return Member(None, None, f"is damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return Member(tuple(int(s) for s in shape), dtype)
