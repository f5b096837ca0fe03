"""Command line: ``python -m xpmlp.train`` (also ``xpmlp-train``). Run with ``--help``."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .backend import CHOICES, ENV_VAR, Backend, auto_backend, get_backend, resolve_name
from .cli import EXIT_USAGE, OneLineErrorParser, non_negative_int, parse_batch_sizes, positive_int, positive_number
from .checkpoint import check_same_run, checkpoint_files, latest_checkpoint, restore_rng, write_checkpoint
from .data import DATASETS, load_dataset
from .errors import DivergenceError, XpmlpError
from .io import save_model, write_json
from .model import DTYPES, INITS, init_params, params_to
from .training import EpochReport, TrainConfig, to_device_data, train_epochs, validate_config

PROG = "xpmlp-train"
RULE = "=" * 40
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG,
        description="Train the seed notebook's 784-300-10 MLP on MNIST with any Array-API backend. "
        "Each epoch prints the seed's line (Epoch e/E, Loss, Accuracy) then the test accuracy and time.",
        epilog=f"Backend: --backend, else ${ENV_VAR}, else numpy. Example sweep like the seed's second cell: "
        f"{PROG} --batch-sizes 8:64:8",
    )
    parser.add_argument("--version", action="version", version=f"xpmlp {__version__}")
    run = parser.add_argument_group("backend")
    run.add_argument("--backend", choices=CHOICES, default=None, metavar="NAME",
                     help=f"array library: {', '.join(CHOICES)} (auto = cupy if a GPU works, else numpy); "
                     f"default ${ENV_VAR} or numpy")
    run.add_argument("--device", default=None,
                     help="device for the backend, e.g. cpu, cuda:0 (torch), 0 (cupy); default: the backend's own")
    model = parser.add_argument_group("model and training")
    model.add_argument("--epochs", type=positive_int, default=10,
                       help="passes over the training set (default: %(default)s)")
    sizes = model.add_mutually_exclusive_group()
    sizes.add_argument("--batch-size", type=positive_int, default=64,
                       help="samples per SGD step (default: %(default)s)")
    sizes.add_argument("--batch-sizes", type=parse_batch_sizes, default=None, metavar="SPEC",
                       help="sweep: start:stop:step (inclusive, e.g. 8:64:8) or a list (8,32,64); one run each")
    model.add_argument("--hidden", type=positive_int, default=300, help="hidden units (default: %(default)s)")
    model.add_argument("--lr", type=positive_number, default=0.01,
                       help="learning rate; the gradient is summed over the batch, as in the seed "
                       "(default: %(default)s)")
    model.add_argument("--dtype", choices=DTYPES, default="float32",
                       help="floating point type (default: %(default)s)")
    model.add_argument("--init", choices=INITS, default="seed",
                       help="seed: N(0,1) weights as the notebook (reproduces its numbers); he: scaled N(0,2/fan_in) "
                       "(default: %(default)s)")
    model.add_argument("--seed", type=non_negative_int, default=0,
                       help="seed of the host RNG that draws the weights and every epoch's shuffle "
                       "(default: %(default)s)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="mnist",
                      help="bundled MNIST, or Fashion-MNIST from Debian's dataset-fashion-mnist package "
                      "(default: %(default)s)")
    data.add_argument("--data-dir", default=None, metavar="PATH",
                      help="a folder of the four IDX files (.gz or not) or a Keras-style .npz; overrides --dataset")
    data.add_argument("--limit", type=positive_int, default=None, metavar="N",
                      help="train on the first N training samples only (quick runs)")
    out = parser.add_argument_group("output")
    out.add_argument("--save", default=None, metavar="PATH",
                     help="save the trained model as .npz (W1, b1, W2, b2 + metadata); in a sweep, "
                     "one file per batch size named PATH-bsB.npz")
    out.add_argument("--json", default=None, metavar="PATH",
                     help="write config, backend, device and per-epoch history as JSON")
    out.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                     help="write a checkpoint after every epoch into DIR (created if missing)")
    out.add_argument("--resume", action="store_true",
                     help="continue from the newest valid checkpoint in --checkpoint-dir")
    out.add_argument("--quiet", action="store_true", help="print nothing but errors (no epoch lines, no progress bar)")
    return parser


@dataclass
class Plan:
    configs: list[TrainConfig]
    backend: Backend
    dataset: Any
    args: argparse.Namespace
    current_epoch: int = 0  # for the Ctrl-C message
    current_batch_size: int | None = None
    resume_from: dict[int, Any] = field(default_factory=dict)  # batch size -> the checkpoint to resume
    finished: list[dict[str, Any]] = field(default_factory=list)  # the JSON records of the runs done so far


def _check_writable_file(path_text: str, flag: str) -> None:
    path = Path(path_text)
    if path.is_dir():
        raise XpmlpError(f"{flag} {path_text}: is a folder; give a file path")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise XpmlpError(f"{flag} {path_text}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise XpmlpError(f"{flag} {path_text}: folder {folder} is not writable")


def _check_checkpoint_dir(args: argparse.Namespace) -> None:
    if args.resume and not args.checkpoint_dir:
        raise XpmlpError("--resume needs --checkpoint-dir DIR (the folder the checkpoints are in)")
    if not args.checkpoint_dir:
        return
    folder = Path(args.checkpoint_dir)
    if folder.exists() and not folder.is_dir():
        raise XpmlpError(f"--checkpoint-dir {folder}: exists and is not a folder")
    if args.resume and not folder.is_dir():
        raise XpmlpError(f"--resume: checkpoint folder {folder} does not exist")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XpmlpError(f"--checkpoint-dir {folder}: cannot create it ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise XpmlpError(f"--checkpoint-dir {folder}: not writable")


def make_plan(args: argparse.Namespace, log: Any) -> Plan:
    """Everything that can fail before training: names, paths, backend, data, config."""
    sizes = args.batch_sizes or [args.batch_size]
    if args.save:
        _check_writable_file(args.save, "--save")
        for size in sizes:  # a sweep writes one file per batch size: check each name, not just --save
            _check_writable_file(str(_save_path(args.save, size, len(sizes) > 1)), "--save")
    if args.json:
        _check_writable_file(args.json, "--json")
    _check_checkpoint_dir(args)
    name = resolve_name(args.backend)
    if name == "auto":
        backend, note = auto_backend(args.device)
        log(f"xpmlp: {note}")
    else:
        backend = get_backend(name, args.device)
    if backend.name == "jax" and args.dtype == "float64":
        backend.module.config.update("jax_enable_x64", True)
    dataset = load_dataset(args.dataset, args.data_dir)
    base = TrainConfig(epochs=args.epochs, batch_size=sizes[0], hidden=args.hidden, lr=args.lr, dtype=args.dtype,
                       init=args.init, seed=args.seed, limit=args.limit)
    configs = [replace(base, batch_size=size) for size in sizes]
    for config in configs:
        validate_config(config, dataset.x_train.shape[0])
    if args.checkpoint_dir and not args.resume:
        _refuse_earlier_checkpoints(Path(args.checkpoint_dir), sizes)
    plan = Plan(configs, backend, dataset, args)
    if args.resume:  # every run's checkpoint is found and checked now, not after the sweep's first runs
        for config in configs:
            run = _run_identity(config, dataset)
            plan.resume_from[config.batch_size] = _checkpoint_to_resume(args, config, run, log)
    return plan


def _refuse_earlier_checkpoints(folder: Path, sizes: list[int]) -> None:
    """A new run would prune an earlier run's checkpoints of the same batch size as if they were its
    own (or its own as older than theirs): refuse, and say how to continue or where to start."""
    for size in sizes:
        found = checkpoint_files(folder, size)
        if found:
            raise XpmlpError(f"--checkpoint-dir {folder} already holds checkpoints of batch size {size} "
                             f"({found[0].name} is the newest); add --resume to continue that run, or give an "
                             "empty folder to start a new one")


def _save_path(save: str, batch_size: int, sweep: bool) -> Path:
    """Where a run's model goes: --save, with .npz added if it has no suffix (as np.savez does); in
    a sweep, PATH-bsB.npz for each batch size B."""
    path = Path(save)
    if not path.suffix:
        path = path.with_suffix(".npz")
    return path.with_name(f"{path.stem}-bs{batch_size}{path.suffix}") if sweep else path


def _run_identity(config: TrainConfig, dataset: Any) -> dict[str, Any]:
    return {**config.to_dict(), "dataset": dataset.name, "n_train": _n_train(config, dataset),
            "n_test": int(dataset.x_test.shape[0])}


def _n_train(config: TrainConfig, dataset: Any) -> int:
    return int(config.limit or dataset.x_train.shape[0])


def train_one(plan: Plan, config: TrainConfig, data: Any, say: Any, progress: bool) -> dict[str, Any]:
    """One training run (one batch size): resume if asked, print, checkpoint, save; its JSON record."""
    args, backend = plan.args, plan.backend
    run = _run_identity(config, plan.dataset)
    checkpoint = plan.resume_from.get(config.batch_size)
    if checkpoint is not None:
        params = params_to(checkpoint.params, backend.xp, config.dtype, backend.device)
        rng, history, start_epoch = restore_rng(checkpoint.rng_state), checkpoint.history, checkpoint.epoch
        left = ("nothing left to train: the run is complete; raise --epochs to train longer"
                if start_epoch >= config.epochs else f"{config.epochs - start_epoch} epoch(s) to go")
        say(f"xpmlp: resuming from {checkpoint.path} (epoch {start_epoch} of {config.epochs}; {left})", err=True)
        for record in history:
            say(EpochReport(record["epoch"], config.epochs, record["loss"], record["accuracy"],
                            record["test_accuracy"], record["seconds"], params).line())
    else:
        rng, history, start_epoch = np.random.Generator(np.random.PCG64(config.seed)), [], 0
        params = init_params(rng, data.x_train.shape[1], config.hidden, 10, init=config.init, dtype=config.dtype,
                             xp=backend.xp, device=backend.device)

    bar = _progress_bar(progress, -(-data.x_train.shape[0] // config.batch_size))
    plan.current_epoch = start_epoch

    def on_epoch_start(epoch: int) -> None:
        plan.current_epoch = epoch
        if bar is not None:
            bar.reset()
            bar.set_description(f"epoch {epoch}/{config.epochs}")

    try:
        for report in train_epochs(params, data, config, rng, start_epoch=start_epoch,
                                   on_batch=bar.update if bar is not None else None, on_epoch_start=on_epoch_start):
            params = report.params
            history.append(report.record())
            if args.checkpoint_dir:
                write_checkpoint(Path(args.checkpoint_dir), params, report.epoch, rng, history, run)
            if bar is not None:
                bar.clear()
            say(report.line())
    finally:
        if bar is not None:
            bar.close()
    record = {"config": config.to_dict(), "history": history}
    if args.save:
        path = _save_path(args.save, config.batch_size, len(plan.configs) > 1)
        save_model(path, params, {"config": config.to_dict(), "dataset": plan.dataset.name,
                                  "backend": backend.name, "device": str(backend.device), "history": history})
        record["model"] = str(path)
        say(f"xpmlp: saved the model to {path}", err=True)
    return record


def _checkpoint_to_resume(args: argparse.Namespace, config: TrainConfig, run: dict[str, Any], log: Any) -> Any:
    """The newest valid checkpoint of this run (damaged ones reported), checked to be the same run."""
    checkpoint, skipped = latest_checkpoint(Path(args.checkpoint_dir), config.batch_size)
    for note in skipped:
        log(f"xpmlp: skipped damaged checkpoint: {note}")
    if checkpoint is None:
        log(f"xpmlp: no checkpoint of batch size {config.batch_size} in {args.checkpoint_dir}; starting fresh")
        return None
    check_same_run(checkpoint, run)
    return checkpoint


def _progress_bar(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="batch", file=sys.stderr, leave=False, mininterval=0.25, dynamic_ncols=True)


def run(plan: Plan, say: Any, progress: bool) -> list[dict[str, Any]]:
    backend, dataset, configs = plan.backend, plan.dataset, plan.configs
    say(f"xpmlp: {backend.describe()}, {configs[0].dtype}, {dataset.name}: "
        f"{_n_train(configs[0], dataset)} training / {dataset.x_test.shape[0]} test samples",
        err=True)
    data = to_device_data(dataset, backend, configs[0].dtype, configs[0].limit)
    records = plan.finished  # the Ctrl-C message reads what has finished
    for config in configs:
        say(f"\nTraining with batch size {config.batch_size}\n{RULE}")
        plan.current_batch_size = config.batch_size
        records.append(train_one(plan, config, data, say, progress))
        if plan.args.json:
            _write_report(plan, records)
    if plan.args.json:
        say(f"xpmlp: wrote the run report to {plan.args.json}", err=True)
    return records


def _write_report(plan: Plan, records: list[dict[str, Any]]) -> None:
    write_json(plan.args.json, {
        "xpmlp": __version__,
        "backend": plan.backend.name,
        "device": str(plan.backend.device),
        "dataset": plan.dataset.name,
        "data_source": plan.dataset.source,
        # the settings all runs share; each run's own config (its batch size included) is in "runs"
        "config": {k: v for k, v in plan.configs[0].to_dict().items() if k != "batch_size"}
        | {"batch_sizes": [c.batch_size for c in plan.configs]},
        "runs": records,
    })


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = args.quiet

    def say(text: str, err: bool = False) -> None:
        if not quiet:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)

    try:
        plan = make_plan(args, lambda text: say(text, err=True))
    except XpmlpError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted before training started; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    progress = not quiet and sys.stderr.isatty()
    try:
        run(plan, say, progress)
    except KeyboardInterrupt:
        _explain_interrupt(plan, argv)
        return EXIT_INTERRUPTED
    except DivergenceError as exc:
        kept = (f"; the last good checkpoint (epoch {exc.epoch - 1}) is kept in {args.checkpoint_dir}"
                if args.checkpoint_dir and exc.epoch > 1 else "")
        print(f"{PROG}: error: {exc}{kept}", file=sys.stderr)
        return EXIT_FAILED
    except XpmlpError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a write that passed the checks up front, then failed: disk full, permissions
        where = f"; the last good checkpoint stays in {args.checkpoint_dir}" if args.checkpoint_dir else ""
        print(f"{PROG}: error: cannot write {exc.filename or 'an output file'}: {exc.strerror or exc}{where}",
              file=sys.stderr)
        return EXIT_FAILED
    return 0


def _explain_interrupt(plan: Plan, argv: Sequence[str] | None) -> None:
    """What was interrupted, what is kept, and how to go on."""
    epoch, args = plan.current_epoch, plan.args
    words = list(sys.argv[1:] if argv is None else argv)
    where = (f"in epoch {epoch}" if epoch >= 1 else "before the first epoch") + \
        (f" of batch size {plan.current_batch_size}" if len(plan.configs) > 1 else "")
    kept = [f"batch size {r['config']['batch_size']} finished" + (f" (saved {r['model']})" if r.get("model") else "")
            for r in plan.finished]
    if plan.finished and args.json:
        kept.append(f"{args.json} holds the finished runs' history")
    if args.checkpoint_dir:
        command = command_line(["python", "-m", "xpmlp.train", *[w for w in words if w != "--resume"], "--resume"])
        kept.append(f"epoch {epoch - 1} is checkpointed in {args.checkpoint_dir}" if epoch > 1 else
                    f"no epoch of this run had finished; checkpoints go to {args.checkpoint_dir}")
        print(f"\n{PROG}: interrupted {where}; {'; '.join(kept)}. Resume with: {command}", file=sys.stderr)
    else:
        kept.append("nothing of this run was saved (add --checkpoint-dir DIR to make runs resumable)")
        print(f"\n{PROG}: interrupted {where}; {'; '.join(kept)}", file=sys.stderr)


def command_line(words: list[str], windows: bool = os.name == "nt") -> str:
    """``words`` quoted for the user's shell to paste: cmd.exe's rules on Windows, POSIX elsewhere."""
    return subprocess.list2cmdline(words) if windows else shlex.join(words)


if __name__ == "__main__":
    sys.exit(main())
