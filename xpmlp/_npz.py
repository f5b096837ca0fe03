"""Reading .npz files that may be damaged or hostile: never pickles, every defect one error type.

``np.load`` allocates the array a member's header describes before reading it, so a lying header
(a few bytes claiming terabytes) would cost a MemoryError or gigabytes of memory. The headers are
read first (a few hundred bytes each) and compared with the member's real size.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

# What np.load / NpzFile raise on a damaged archive or member (found by fuzzing).
NPZ_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError)


def load_npz_arrays(path: Path, error: type[Exception]) -> dict[str, np.ndarray]:
    """Every array of the archive at ``path``; any defect raises ``error`` naming the file."""
    if not path.is_file():
        raise error(f"{path}: no such file")
    problem = claimed_size_problem(path)
    if problem:
        raise error(f"{path}: corrupt .npz: {problem}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise error(f"{path}: is a single-array .npy file, expected an .npz archive")
        with loaded as archive:
            return {name: archive[name] for name in archive.files}
    except NPZ_ERRORS as exc:
        raise error(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None


def claimed_size_problem(path: Path) -> str | None:
    """A sentence naming the first member whose header claims more bytes than it holds, else None.

    Archives that cannot be parsed here are left for ``np.load`` to reject with its own error.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    major, _ = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if major == 1
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if claimed > info.file_size:
                    return (f"member {info.filename!r} claims shape {shape} of {dtype} ({claimed:,} bytes) "
                            f"but holds {info.file_size:,} bytes")
    except Exception:  # not a zip, bad header, ...: np.load reports it
        return None
    return None
