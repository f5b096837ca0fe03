"""``python -m xpmlp.evaluate MODEL.npz``: test loss and accuracy of a saved model, on any backend."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from .backend import CHOICES, get_backend, index_dtype, namespace, to_numpy
from .data import DATASETS, NUM_CLASSES, load_dataset
from .errors import XpmlpError
from .io import load_model
from .model import batch_stats, forward, params_to
from .cli import OneLineErrorParser
from .training import scale_pixels, sum_over_chunks

PROG = "xpmlp-evaluate"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=PROG, description="Report the loss (the seed's clipped cross-entropy, mean over "
                     "samples) and accuracy of a saved xpmlp model on a data set's test (or train) split.")
    parser.add_argument("model", help="a model .npz written by xpmlp-train --save")
    parser.add_argument("--backend", choices=CHOICES, default=None, metavar="NAME",
                        help=f"array library: {', '.join(CHOICES)}; default $XPMLP_BACKEND or numpy")
    parser.add_argument("--device", default=None, help="device for the backend, e.g. cuda:0")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist", help="bundled data set (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, metavar="PATH", help="IDX folder or .npz; overrides --dataset")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="which split to score (default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on stdout (to keep it: --json > result.json)")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed command line; an extra word after ``--json`` gets a hint, since xpmlp-train's
    ``--json`` takes a PATH and this one prints to stdout."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = ("; here --json takes no PATH: it prints the JSON to stdout, so redirect that to a file"
                if args.json and not any(word.startswith("-") for word in extra) else "")
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def evaluate(params: Any, x: Any, labels: Any) -> tuple[float, float]:
    """Mean clipped cross-entropy and accuracy over a whole set; one host read."""
    xp = namespace(x, labels)

    def loss_and_hits(xb: Any, yb: Any) -> Any:
        stats = batch_stats(forward(params, xb), yb)
        return xp.stack([stats.loss * xb.shape[0], xp.astype(stats.n_correct, stats.loss.dtype)])

    total_loss, total_hits = (float(v) for v in to_numpy(sum_over_chunks(loss_and_hits, x, labels)))
    return total_loss / x.shape[0], total_hits / x.shape[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        backend = get_backend(args.backend, args.device)
        host, meta = load_model(args.model)
        dtype = host.W1.dtype.name
        if backend.name == "jax" and dtype == "float64":
            backend.module.config.update("jax_enable_x64", True)  # as xpmlp-train does; else JAX rounds to float32
        params = params_to(host, backend.xp, dtype, backend.device)
        dataset = load_dataset(args.dataset, args.data_dir)
        images = dataset.x_test if args.split == "test" else dataset.x_train
        labels = dataset.y_test if args.split == "test" else dataset.y_train
        x = backend.asarray(scale_pixels(images, dtype), getattr(backend.xp, dtype))
        if x.shape[1] != params.W1.shape[0]:
            raise XpmlpError(f"model expects {params.W1.shape[0]} features per sample but {dataset.name} has "
                             f"{x.shape[1]}; evaluate on the data set it was trained on")
        if params.W2.shape[1] != NUM_CLASSES:
            raise XpmlpError(f"model has {params.W2.shape[1]} outputs but {dataset.name} has {NUM_CLASSES} classes; "
                             "evaluate a model trained on it")
        y = backend.asarray(labels.astype("int64"), index_dtype(backend.xp))
        loss, accuracy = evaluate(params, x, y)
    except XpmlpError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    result = {"model": args.model, "backend": backend.name, "device": str(backend.device), "dataset": dataset.name,
              "split": args.split, "samples": int(x.shape[0]), "loss": loss, "accuracy": accuracy}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.split.capitalize()} loss: {loss:.4f}, {args.split.capitalize()} accuracy: {accuracy:.4f} "
              f"({result['samples']} samples of {dataset.name}, {backend.describe()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
