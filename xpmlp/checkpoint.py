"""Per-epoch checkpoints: parameters, epoch, host RNG state, history and config, written atomically."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, ModelFileError
from .io import MODEL_ARRAYS, check_model_arrays, host_arrays, read_npz, save_npz
from .model import Params

HISTORY_KEYS = {"epoch", "loss", "accuracy", "test_accuracy", "seconds"}  # what resuming prints again
KEEP = 2  # the newest two, so a damaged newest file still leaves one to resume from
_NAME = re.compile(r"^checkpoint-bs(\d+)-epoch(\d+)\.npz$")


@dataclass
class Checkpoint:
    params: Params  # host NumPy arrays
    epoch: int
    rng_state: dict[str, Any]
    history: list[dict[str, Any]]
    run: dict[str, Any]  # the TrainConfig fields plus the data set identity
    path: Path


def checkpoint_path(folder: Path, batch_size: int, epoch: int) -> Path:
    return Path(folder) / f"checkpoint-bs{batch_size}-epoch{epoch:04d}.npz"


def write_checkpoint(folder: Path, params: Params, epoch: int, rng: np.random.Generator,
                     history: list[dict[str, Any]], run: dict[str, Any]) -> Path:
    """Write this epoch's checkpoint atomically, then prune all but the newest ``KEEP`` of this run."""
    path = checkpoint_path(folder, run["batch_size"], epoch)
    meta = {"kind": "checkpoint", "epoch": epoch, "rng_state": rng.bit_generator.state,
            "history": history, "run": run}
    save_npz(path, host_arrays(params), meta)
    for old in checkpoint_files(folder, run["batch_size"])[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def checkpoint_files(folder: Path, batch_size: int) -> list[Path]:
    """The checkpoint files of this batch size in ``folder``, newest epoch first. The CLI refuses
    to start a new run into a folder that has any (see ``train.make_plan``), so they are one run's."""
    found = []
    for path in Path(folder).glob(f"checkpoint-bs{batch_size}-epoch*.npz"):
        match = _NAME.match(path.name)
        if match and int(match.group(1)) == batch_size:
            found.append((int(match.group(2)), path))
    return [path for _, path in sorted(found, reverse=True)]


def read_checkpoint(path: Path) -> Checkpoint:
    arrays, meta = read_npz(path, MODEL_ARRAYS)
    params = check_model_arrays(path, arrays)
    try:
        if meta.get("kind") != "checkpoint":
            raise KeyError("kind")
        checkpoint = Checkpoint(params, int(meta["epoch"]), dict(meta["rng_state"]), list(meta["history"]),
                                dict(meta["run"]), Path(path))
        restore_rng(checkpoint.rng_state)  # what resuming does first: a bad state is a damaged file
        for record in checkpoint.history:
            if not isinstance(record, dict) or not HISTORY_KEYS <= set(record):
                raise ValueError(f"history record {record!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: not an xpmlp checkpoint (missing or bad {exc})") from None
    return checkpoint


def latest_checkpoint(folder: Path, batch_size: int) -> tuple[Checkpoint | None, list[str]]:
    """The newest readable checkpoint of this run, and a note for each damaged one skipped."""
    skipped = []
    for path in checkpoint_files(folder, batch_size):
        try:
            return read_checkpoint(path), skipped
        except ModelFileError as exc:
            skipped.append(str(exc))
    return None, skipped


def check_same_run(checkpoint: Checkpoint, run: dict[str, Any]) -> None:
    """Refuse to resume a different run; name every differing field. Only ``epochs`` may grow."""
    saved = checkpoint.run
    differing = [
        f"{key} (checkpoint {saved.get(key)!r}, now {run.get(key)!r})"
        for key in sorted(set(saved) | set(run))
        if key != "epochs" and saved.get(key) != run.get(key)
    ]
    if differing:
        raise ConfigError(
            f"cannot resume from {checkpoint.path}: it was made by a different run; differing: "
            + "; ".join(differing)
            + ". Use the same settings, or a new --checkpoint-dir"
        )
    if checkpoint.epoch > run["epochs"]:
        raise ConfigError(
            f"cannot resume from {checkpoint.path}: it is at epoch {checkpoint.epoch}, "
            f"beyond --epochs {run['epochs']}"
        )


def restore_rng(state: dict[str, Any]) -> np.random.Generator:
    bit_generator = np.random.PCG64()
    bit_generator.state = state
    return np.random.Generator(bit_generator)
