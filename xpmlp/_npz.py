"""Refuse .npz members whose .npy header claims more data than the member holds.

``np.load`` allocates the array a member's header describes before reading it, so a lying header
(a few bytes claiming terabytes) would cost a MemoryError or gigabytes of memory. The headers are
read first (a few hundred bytes each) and compared with the member's real size.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


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
