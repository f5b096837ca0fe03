"""Files a user keeps: models (.npz), JSON reports. Every write is atomic: temp file, fsync, rename."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, IO

import numpy as np

from ._npz import load_npz_arrays
from .backend import to_numpy
from .errors import ModelFileError
from .model import DTYPES, Params, params_to

MODEL_ARRAYS = ("W1", "b1", "W2", "b2")
META_KEY = "xpmlp_meta"
FORMAT_VERSION = 1


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` so that a crash at any instant leaves the old file or the new one, never half.

    The bytes go to a temp file in the same folder (same file system, so the rename is atomic),
    are flushed and fsynced, then renamed over ``path``; the folder is fsynced so the rename lasts.
    The file gets the permissions ``open()`` or ``np.save`` would give it (0666 less the umask),
    not ``tempfile.mkstemp``'s owner-only 0600.
    """
    path = Path(path)
    tmp_name, fd = _create_temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _create_temp_beside(path: Path) -> tuple[str, int]:
    """A new hidden file next to ``path``, opened for writing; mode 0666 so the umask decides."""
    for _ in range(100):
        name = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            # O_BINARY: on Windows os.open is in text mode by default and would turn \n into \r\n
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return name, os.open(name, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, payload: Any) -> None:
    text = json.dumps(payload, indent=2, sort_keys=False, allow_nan=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def host_arrays(params: Params) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(to_numpy(p)) for name, p in zip(MODEL_ARRAYS, params)}


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """An .npz of plain arrays plus a JSON metadata string; loads with allow_pickle=False."""
    payload = dict(arrays)
    payload[META_KEY] = np.array(json.dumps({"format": FORMAT_VERSION, **meta}))
    atomic_write(path, lambda f: np.savez(f, **payload))


def save_model(path: str | os.PathLike, params: Params, meta: dict[str, Any] | None = None) -> None:
    """Save parameters from any backend as host arrays ``W1 (n_in,H) b1 (H,) W2 (H,n_out) b2 (n_out,)``."""
    save_npz(path, host_arrays(params), {"kind": "model", **(meta or {})})


def read_npz(path: str | os.PathLike, required: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All arrays of an .npz (no pickles) and its metadata; clear errors for every defect."""
    path = Path(path)
    arrays = load_npz_arrays(path, ModelFileError)
    meta = _parse_meta(path, arrays.pop(META_KEY, None))
    missing = [name for name in required if name not in arrays]
    if missing:
        raise ModelFileError(f"{path}: missing arrays {missing}; found {sorted(arrays)}")
    return arrays, meta


def _parse_meta(path: Path, raw: np.ndarray | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        meta = json.loads(str(raw[()]))
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: metadata {META_KEY!r} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: metadata {META_KEY!r} is not a JSON object")
    return meta


def check_model_arrays(path: Any, arrays: dict[str, np.ndarray], *, allow_extra: bool = False) -> Params:
    """Shapes, dtypes and finiteness of the four model arrays; returns them as host Params."""
    extra = sorted(set(arrays) - set(MODEL_ARRAYS))
    if extra and not allow_extra:
        raise ModelFileError(f"{path}: unexpected arrays {extra}; a model holds exactly {list(MODEL_ARRAYS)}")
    W1, b1, W2, b2 = (arrays[name] for name in MODEL_ARRAYS)
    for name, array in zip(MODEL_ARRAYS, (W1, b1, W2, b2)):
        if array.dtype.name not in DTYPES:
            raise ModelFileError(f"{path}: {name} has dtype {array.dtype}; expected one of {', '.join(DTYPES)}")
    expected = {"W1": 2, "b1": 1, "W2": 2, "b2": 1}
    for name, array in zip(MODEL_ARRAYS, (W1, b1, W2, b2)):
        if array.ndim != expected[name]:
            raise ModelFileError(f"{path}: {name} has shape {array.shape}; expected {expected[name]}-D")
    hidden, n_out = W1.shape[1], W2.shape[1]
    if b1.shape != (hidden,) or W2.shape[0] != hidden or b2.shape != (n_out,):
        raise ModelFileError(
            f"{path}: inconsistent shapes W1 {W1.shape}, b1 {b1.shape}, W2 {W2.shape}, b2 {b2.shape}; "
            "expected W1 (n_in,H), b1 (H,), W2 (H,n_out), b2 (n_out,)"
        )
    if len({a.dtype for a in (W1, b1, W2, b2)}) != 1:
        raise ModelFileError(f"{path}: arrays have mixed dtypes {[str(a.dtype) for a in (W1, b1, W2, b2)]}")
    for name, array in zip(MODEL_ARRAYS, (W1, b1, W2, b2)):
        if not np.all(np.isfinite(array)):
            raise ModelFileError(f"{path}: {name} contains NaN or infinity")
    return Params(W1, b1, W2, b2)


def load_model(
    path: str | os.PathLike, *, xp: Any = None, device: Any = None, dtype: str | None = None
) -> tuple[Params, dict[str, Any]]:
    """Load a saved model onto namespace ``xp`` (default NumPy) and ``device``; returns (params, meta).

    ``dtype`` defaults to the dtype it was saved in.
    """
    arrays, meta = read_npz(path, MODEL_ARRAYS)
    host = check_model_arrays(path, arrays)
    chosen = dtype or host.W1.dtype.name
    return params_to(host, xp if xp is not None else np, chosen, device), meta
