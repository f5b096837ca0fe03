"""MNIST-style data loading: IDX files (raw or gzip) and Keras-style .npz, on host NumPy.

Every problem with a data file raises `DataError` naming the file, what is wrong and, where
there is one, the fix. Arrays come back C-contiguous and writable: images (N, rows, cols)
uint8, labels (N,) uint8 in 0..9.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._npz import load_npz_arrays
from .errors import ConfigError, DataError

DATASETS = ("mnist", "fashion-mnist")
# The Debian package dataset-fashion-mnist installs the four .gz files here.
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

SUMS_FILE = "SHA256SUMS.uncompressed"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NUM_CLASSES = 10

MAX_IDX_DATA_BYTES = 2**31
_CHUNK_BYTES = 1 << 22
_IDX_UNSIGNED_BYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


class Dataset(NamedTuple):
    x_train: np.ndarray  # (N, rows, cols) uint8
    y_train: np.ndarray  # (N,) uint8, values 0..9
    x_test: np.ndarray  # (M, rows, cols) uint8
    y_test: np.ndarray  # (M,) uint8
    name: str  # "mnist", "fashion-mnist", or the path it came from
    source: str  # folder or npz path it was read from


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundled_data_dir() -> Path:
    return Path(__file__).parent / "_data"


# --- IDX -------------------------------------------------------------------------------------


def read_idx(path, *, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into a writable C-contiguous uint8 array."""
    array, _ = _read_idx_bytes(path, expected_ndim=expected_ndim)
    return array


def _read_idx_bytes(path, *, expected_ndim: int | None = None) -> tuple[np.ndarray, str]:
    """Read an IDX file; return the array and the SHA-256 of its decompressed bytes."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            compressed = path.name.endswith(".gz") or raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _parse_idx_stream(stream, path, expected_ndim)
            return _parse_idx_stream(raw, path, expected_ndim)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file") from None
    except PermissionError:  # also what Windows raises for a folder
        what = "is a folder, expected an IDX file" if path.is_dir() else "permission denied; make the file readable"
        raise DataError(f"{path}: {what}") from None
    except _GZIP_ERRORS as exc:
        raise DataError(
            f"{path}: cannot read/decompress ({type(exc).__name__}: {exc}); "
            "the file is truncated or corrupt, download it again"
        ) from None


def _parse_idx_stream(stream, path: Path, expected_ndim: int | None) -> tuple[np.ndarray, str]:
    magic = _read_up_to(stream, 4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00":
        raise DataError(
            f"{path}: not an IDX file: bad magic bytes {magic.hex(' ') or '(empty file)'} "
            "(expected 00 00 <type> <ndim>)"
        )
    type_code, ndim = magic[2], magic[3]
    if type_code != _IDX_UNSIGNED_BYTE:
        raise DataError(
            f"{path}: unsupported IDX data type code 0x{type_code:02x} "
            f"(only 0x{_IDX_UNSIGNED_BYTE:02x}, unsigned byte, is supported)"
        )
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"{path}: expected a {expected_ndim}-D IDX file, header declares {ndim}-D")
    dims_bytes = _read_up_to(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataError(
            f"{path}: IDX header truncated: {ndim} dimensions need {4 * ndim} bytes, "
            f"found {len(dims_bytes)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(dims_bytes, dtype=">u4"))
    claimed = math.prod(dims)
    if claimed > MAX_IDX_DATA_BYTES:
        raise DataError(
            f"{path}: IDX header claims shape {dims} = {claimed} bytes, "
            f"more than the {MAX_IDX_DATA_BYTES}-byte limit; the header is corrupt"
        )
    # One byte beyond the claim detects trailing data; reading to EOF also makes gzip check its CRC.
    data = _read_up_to(stream, claimed + 1)
    if len(data) != claimed:
        problem = "truncated" if len(data) < claimed else "has trailing bytes"
        found = f"{len(data)}" if len(data) < claimed else f"more than {claimed}"
        raise DataError(
            f"{path}: IDX data {problem}: header shape {dims} needs {claimed} bytes, found {found}"
        )
    digest = hashlib.sha256(magic + dims_bytes)
    digest.update(data)
    return np.frombuffer(data, dtype=np.uint8).reshape(dims), digest.hexdigest()


def _read_up_to(stream, limit: int) -> bytearray:
    """Read at most `limit` bytes in chunks, so a lying size never triggers a big allocation."""
    chunks = []
    remaining = limit
    while remaining > 0:
        chunk = stream.read(min(remaining, _CHUNK_BYTES))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return bytearray().join(chunks)  # one copy; a bytearray keeps the final array writable


# --- checksums --------------------------------------------------------------------------------


def _read_sums_file(path: Path) -> dict[str, str]:
    """Parse sha256sum output: `<64 hex>  <name>` (or ` *<name>`) per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read checksum file ({exc})") from None
    sums = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name or not all(c in "0123456789abcdefABCDEF" for c in digest):
            raise DataError(
                f"{path}:{line_number}: malformed line {line!r}, expected '<sha256 hex>  <file name>'"
            )
        sums[name] = digest.lower()
    return sums


def _check_digest(file: Path, actual: str, expected_digests: dict[str, str], sums_source: str):
    base_name = file.name.removesuffix(".gz")
    expected = expected_digests.get(base_name)
    if expected is None:
        raise DataError(f"{sums_source} has no SHA-256 entry for {base_name} (needed to verify {file})")
    if actual != expected:
        raise DataError(
            f"{file}: SHA-256 mismatch of the decompressed bytes: expected {expected} "
            f"(from {sums_source}), got {actual}; the file is corrupt or a different dataset"
        )


# --- dataset validation -----------------------------------------------------------------------


def _check_images(x: np.ndarray, source: str) -> None:
    if x.ndim != 3:
        raise DataError(f"{source}: images must be 3-D (N, rows, cols), got shape {x.shape}; store them as "
                        "in keras' mnist.npz, e.g. x.reshape(-1, 28, 28)")
    if x.dtype != np.uint8:
        raise DataError(f"{source}: images must be uint8 pixel codes 0..255, got {x.dtype}; store the raw "
                        "pixels (xpmlp divides by 255 itself), e.g. (x * 255).round().astype('uint8')")
    if x.shape[0] == 0:
        raise DataError(f"{source}: contains no images")


def _checked_labels(y: np.ndarray, source: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be 1-D (N,), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: labels must have an integer dtype, got {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= NUM_CLASSES))
    if bad.size:
        index = int(bad[0])
        raise DataError(
            f"{source}: label {int(y[index])} at index {index} is outside 0..{NUM_CLASSES - 1}"
            f" ({bad.size} bad labels in total)"
        )
    return np.ascontiguousarray(y, dtype=np.uint8)


def _build_dataset(arrays: dict, sources: dict, name: str, source: str) -> Dataset:
    """Validate the four arrays (`sources` names where each came from) and bundle them."""
    for split in ("train", "test"):
        x_key, y_key = f"x_{split}", f"y_{split}"
        _check_images(arrays[x_key], sources[x_key])
        arrays[y_key] = _checked_labels(arrays[y_key], sources[y_key])
        n_images, n_labels = arrays[x_key].shape[0], arrays[y_key].shape[0]
        if n_images != n_labels:
            raise DataError(
                f"{sources[x_key]} has {n_images} images but {sources[y_key]} has {n_labels} labels"
            )
    train_pixels = arrays["x_train"].shape[1] * arrays["x_train"].shape[2]
    test_pixels = arrays["x_test"].shape[1] * arrays["x_test"].shape[2]
    if train_pixels != test_pixels:
        raise DataError(
            f"{sources['x_train']} images are {arrays['x_train'].shape[1:]} but {sources['x_test']} "
            f"images are {arrays['x_test'].shape[1:]}: train and test pixel counts differ"
        )
    x_train, x_test = (np.ascontiguousarray(arrays[k]) for k in ("x_train", "x_test"))
    return Dataset(x_train, arrays["y_train"], x_test, arrays["y_test"], name, source)


# --- folder and npz loaders -------------------------------------------------------------------


def _find_idx_files(folder: Path) -> dict[str, Path]:
    """Map each dataset key to `<name>` or `<name>.gz` in `folder` (uncompressed preferred)."""
    found, looked_for = {}, []
    for key, base_name in IDX_FILES.items():
        candidates = [folder / base_name, folder / f"{base_name}.gz"]
        existing = [c for c in candidates if c.is_file()]
        if existing:
            found[key] = existing[0]
        else:
            looked_for.extend(str(c) for c in candidates)
    if looked_for:
        raise DataError(
            f"{folder}: missing IDX file(s); looked for: {', '.join(looked_for)}. "
            "Put the four MNIST-layout files there (raw or .gz)"
        )
    return found


def _load_idx_folder(folder, expected_digests, sums_source, name) -> Dataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder does not exist (or is not a folder)")
    files = _find_idx_files(folder)
    arrays = {}
    for key, file in files.items():
        arrays[key], digest = _read_idx_bytes(file, expected_ndim=3 if key.startswith("x") else 1)
        if expected_digests is not None:
            _check_digest(file, digest, expected_digests, sums_source)
    sources = {key: str(file) for key, file in files.items()}
    return _build_dataset(arrays, sources, name=name, source=str(folder))


def load_idx_dir(path, *, verify: bool | None = None) -> Dataset:
    """Load the four-file IDX layout from a folder.

    verify=None checks digests only if the folder holds SHA256SUMS.uncompressed; True requires it.
    """
    folder = Path(path)
    sums_path = folder / SUMS_FILE
    expected = None
    if verify is None:
        verify = sums_path.is_file()
    if verify:
        if not sums_path.is_file():
            raise DataError(
                f"{sums_path}: checksum file not found, cannot verify {folder}; "
                "add it (sha256sum of the decompressed files) or pass verify=False"
            )
        expected = _read_sums_file(sums_path)
    return _load_idx_folder(folder, expected, str(sums_path), name=str(folder))


def load_mnist(data_dir=None, *, verify: bool = True) -> Dataset:
    """Load MNIST: the bundled copy, or a folder in the same layout.

    A folder's own SHA256SUMS.uncompressed is used when present, else the bundled MNIST digests.
    """
    bundled_sums = bundled_data_dir() / SUMS_FILE
    folder = bundled_data_dir() if data_dir is None else Path(data_dir)
    expected, sums_source = None, str(bundled_sums)
    if verify:
        own_sums = folder / SUMS_FILE
        sums_path = own_sums if own_sums.is_file() else bundled_sums
        expected, sums_source = _read_sums_file(sums_path), str(sums_path)
    return _load_idx_folder(folder, expected, sums_source, name="mnist")


def load_npz(path) -> Dataset:
    """Load a Keras-style mnist.npz holding x_train, y_train, x_test, y_test."""
    path = Path(path)
    arrays = load_npz_arrays(path, DataError)
    present = sorted(arrays)
    missing = [key for key in NPZ_KEYS if key not in present]
    if missing:
        raise DataError(
            f"{path}: missing array(s) {missing}; present: {present} "
            f"(expected {list(NPZ_KEYS)})"
        )
    arrays = {key: arrays[key] for key in NPZ_KEYS}
    sources = {key: f"{path}[{key}]" for key in NPZ_KEYS}
    return _build_dataset(arrays, sources, name=str(path), source=str(path))


# --- CLI entry point --------------------------------------------------------------------------


def load_dataset(name: str = "mnist", data_dir=None) -> Dataset:
    """Load by name, or from `data_dir` (a folder in IDX layout or an .npz file) when given."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if data_dir is not None:
        return _load_from_path(Path(data_dir))
    if name == "mnist":
        return load_mnist()
    fashion_dir = Path(FASHION_MNIST_DEBIAN_DIR)
    if not fashion_dir.is_dir():
        raise DataError(
            f"Fashion-MNIST not found at {fashion_dir}; install it with "
            "`apt-get install dataset-fashion-mnist`, or pass --data-dir pointing to a folder "
            "with the four IDX files (or an .npz)"
        )
    return load_idx_dir(fashion_dir)._replace(name="fashion-mnist")


def _load_from_path(path: Path) -> Dataset:
    if path.is_dir():
        return load_idx_dir(path)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: --data-dir does not exist (expected a folder or an .npz file)")
    raise DataError(f"{path}: --data-dir must be a folder of IDX files or a file ending .npz")
