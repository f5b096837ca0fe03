"""The training loop: epochs of SGD over device-resident data, one host read per epoch."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

import array_api_compat
import numpy as np

from .backend import (
    Backend, backend_of, compiled, deferred_update_rows, index_dtype, namespace, skips_zero_columns, to_numpy,
)
from .errors import ConfigError, DivergenceError, InputError
from .model import (
    DTYPES, INITS, PROB_CLIP, FoldedParams, Params, as_index, descend, fold_bias, init_params, layer_errors, one_hot,
    predict, sample_losses, scaled_grads, unfold_bias, with_ones_column,
)

EVAL_CHUNK = 10_000
SATURATED_FRACTION = 0.75  # of the clip's ceiling -log(1e-15) = 34.5; the seed's worst epoch is ~1.4
CHANCE_FACTOR = 1.5  # "at chance": an accuracy under 1.5 / n_classes (0.15 for 10 classes)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run's numbers (used to refuse resuming a different run)."""

    epochs: int = 10
    batch_size: int = 64
    hidden: int = 300
    lr: float = 0.01
    dtype: str = "float32"
    init: str = "seed"
    seed: int = 0
    limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_config(config: TrainConfig, n_train: int | None = None) -> None:
    """Raise ConfigError naming the first invalid setting and what is allowed."""
    checks = (
        (isinstance(config.epochs, int) and config.epochs >= 1, f"epochs must be >= 1 (got {config.epochs})"),
        (isinstance(config.batch_size, int) and config.batch_size >= 1,
         f"batch size must be >= 1 (got {config.batch_size})"),
        (isinstance(config.hidden, int) and config.hidden >= 1, f"hidden size must be >= 1 (got {config.hidden})"),
        (isinstance(config.lr, (int, float)) and math.isfinite(config.lr) and config.lr > 0,
         f"learning rate must be a finite number > 0 (got {config.lr})"),
        (config.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)} (got {config.dtype!r})"),
        (config.init in INITS, f"init must be one of {', '.join(INITS)} (got {config.init!r})"),
        (isinstance(config.seed, int) and config.seed >= 0, f"seed must be an integer >= 0 (got {config.seed})"),
        (config.limit is None or (isinstance(config.limit, int) and config.limit >= 1),
         f"limit must be >= 1 (got {config.limit})"),
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if n_train is not None:
        used = min(config.limit or n_train, n_train)
        if config.limit is not None and config.limit > n_train:
            raise ConfigError(f"limit {config.limit} exceeds the {n_train} training samples available")
        if used < config.batch_size:
            raise ConfigError(
                f"{used} training samples leave no full batch of {config.batch_size}; "
                "use more samples (--limit) or a smaller batch size"
            )


class DeviceData(NamedTuple):
    """Training and test sets on the backend's device: float pixels in [0, 1], int64 labels."""

    x_train: Any
    y_train: Any
    x_test: Any = None
    y_test: Any = None


def scale_pixels(images: np.ndarray, dtype: str) -> np.ndarray:
    """uint8 images (N, ...) -> (N, features) floats in [0, 1], the seed's values bit for bit. The
    seed divides in float64; for all 256 codes a float32 division rounds to the same value, so the
    division runs in ``dtype`` and never makes a float64 copy twice the result's size."""
    flat = images.reshape(images.shape[0], -1)
    return np.divide(flat, 255, dtype=dtype)


def to_device_data(dataset: Any, backend: Backend, dtype: str, limit: int | None = None) -> DeviceData:
    """Copy a host data set to the backend once; ``limit`` keeps the first N training samples."""
    xp = backend.xp
    n = dataset.x_train.shape[0] if limit is None else limit
    float_dtype, label_dtype = getattr(xp, dtype), index_dtype(xp)
    return DeviceData(
        backend.asarray(scale_pixels(dataset.x_train[:n], dtype), float_dtype),
        backend.asarray(dataset.y_train[:n].astype(np.int64), label_dtype),
        backend.asarray(scale_pixels(dataset.x_test, dtype), float_dtype),
        backend.asarray(dataset.y_test.astype(np.int64), label_dtype),
    )


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    accuracy: float
    test_accuracy: float | None
    seconds: float
    params: Params = field(repr=False)

    def line(self) -> str:
        """The seed's epoch line, then the test accuracy and the epoch's wall time."""
        text = f"Epoch {self.epoch}/{self.epochs}, Loss: {self.loss:.4f}, Accuracy: {self.accuracy:.4f}"
        if self.test_accuracy is not None:
            text += f", Test accuracy: {self.test_accuracy:.4f}"
        return text + f", Time: {self.seconds:.2f}s"

    def record(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "test_accuracy": self.test_accuracy,
            "seconds": self.seconds,
        }


class DesignMatrix(NamedTuple):
    """The training inputs as the epoch loop reads them, built once per run by ``design_matrix``.

    ``x`` holds the columns of the inputs that are nonzero in at least one sample, then a column
    of ones that carries b1 (``FoldedParams``). A column that is zero in every sample gets an
    exactly zero gradient in the seed's algorithm, so its row of W1 never moves: leaving it out
    changes no result (up to summation order) and saves its share of both big products per step.
    In MNIST's training set 67 of the 784 pixels are always 0 (8.5% of those products).

    The kept columns are in order of how many samples use them (are nonzero there), fewest first,
    so that the columns almost every batch uses form one block at the end, ones column included
    (``common_columns``; ``_step_on_used_columns`` says why).
    """

    x: Any  # (N, k + 1): the k used columns, least used first, then ones
    kept: Any  # (k,): which input columns those are
    restore: Any  # (n_in,): each W1 row's position in concat([trained rows, starting W1])
    usage: np.ndarray  # (k + 1,) host floats: the fraction of samples in which each column is nonzero

    def common_columns(self, batch_size: int) -> int:
        """How many of the last columns of ``x`` are common at this batch size (``common_columns``):
        at least 1, the ones column."""
        return common_columns(self.usage, batch_size)

    def fold(self, params: Params) -> FoldedParams:
        """The loop's parameters: W1's rows for the kept columns, then b1; W2 and b2 as they are."""
        xp = namespace(params.W1)
        return fold_bias(params._replace(W1=xp.take(params.W1, self.kept, axis=0)))

    def unfold(self, folded: FoldedParams, start: Params) -> Params:
        """Full parameters again: trained rows where a column was kept, ``start``'s rows elsewhere."""
        trained = unfold_bias(folded)
        xp = namespace(trained.W1)
        return trained._replace(W1=xp.take(xp.concat([trained.W1, start.W1], axis=0), self.restore, axis=0))


def design_matrix(x: Any) -> DesignMatrix:
    """The columns of ``x`` that are nonzero in some sample, least used first, then a column of
    ones, on ``x``'s device (a copy, row-major on NumPy: a batch is a gather of whole rows). Reads
    one (n_in,) count of nonzeros back to the host: once per run, before any epoch."""
    xp = namespace(x)
    dev = array_api_compat.device(x)
    counts = to_numpy(xp.count_nonzero(x, axis=0)).astype(np.int64)
    used = np.flatnonzero(counts)
    kept = used[np.argsort(counts[used], kind="stable")]
    restore = kept.size + np.arange(counts.size)  # an unused column's row: from the starting W1
    restore[kept] = np.arange(kept.size)
    usage = np.append(counts[kept] / x.shape[0], 1.0)
    kept_d, restore_d = (xp.asarray(a, dtype=index_dtype(xp), device=dev) for a in (kept, restore))
    return DesignMatrix(_columns_then_ones(xp, x, kept_d), kept_d, restore_d, usage)


def _columns_then_ones(xp: Any, x: Any, columns: Any) -> Any:
    """``x``'s ``columns``, then a column of ones, as one new (N, k + 1) array.

    Where arrays can be written in place (all but JAX), it is filled ``EVAL_CHUNK`` rows at a time,
    so the build holds ``x``, the result and one chunk instead of a whole ``take`` and then its
    ``concat`` (which JAX still does): on MNIST in float32 the CLI's peak RSS went from 656 to 527 MB.
    """
    if not array_api_compat.is_writeable_array(x):
        return with_ones_column(xp.take(x, columns, axis=1))
    n, k = x.shape[0], columns.shape[0]
    out = xp.empty((n, k + 1), dtype=x.dtype, device=array_api_compat.device(x))
    for start, stop in chunk_bounds(n):
        out[start:stop, :k] = xp.take(x[start:stop, ...], columns, axis=1)
    out[:, k] = 1.0
    return out


def run_epoch(
    params: Params, design: DesignMatrix, labels: Any, order: Any, batch_size: int, lr: float,
    on_batch: Callable[[], None] | None = None,
) -> tuple[Params, Any, Any]:
    """One pass in the order ``order``: new params, the sum of batch-mean losses, total hits.

    Each step gathers its batch's rows of the design matrix (``xp.take``) and slices the epoch's
    one-hot targets (made once per epoch), updates the parameters and hands back its batch's
    probabilities; the loss and hits are taken from ``TALLY_EVERY`` batches at a time, in a few
    calls instead of a dozen per step. Everything stays on the device as 0-d arrays; nothing is
    read back here.
    """
    x = design.x
    xp = namespace(x, labels)
    labels = as_index(xp, labels)  # any integer dtype: the hit count below is kept in it and must not wrap
    y_epoch = xp.take(labels, order, axis=0)
    targets = one_hot(y_epoch, params.W2.shape[1], x.dtype)
    tally = compiled(_tally, xp, static_argnames=("batch_size",))
    dev = array_api_compat.device(x)
    loss_sum, hits = xp.zeros((), dtype=x.dtype, device=dev), xp.zeros((), dtype=labels.dtype, device=dev)
    room, folded = deferred_rows(batch_size, deferred_update_rows(x)), design.fold(params)
    if skips_zero_columns(x):
        n_rare = x.shape[1] - design.common_columns(batch_size)
        step, state, finish = _step_on_used_columns, split_rows(folded, n_rare, room), join_rows
    elif room:
        step, state, finish = _gather_and_defer, (folded, room_for_deferred(folded.W1b, room)), _apply_dense_deferred
    else:
        step, state, finish = compiled(_gather_and_update, xp, static_argnames=("xp", "lr")), folded, None
    pending, pending_from, n = [], 0, x.shape[0]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        state, probs = step(state, x, order[start:stop], targets[start:stop, ...], xp=xp, lr=lr)
        pending.append(probs)
        if len(pending) == TALLY_EVERY or stop == n:
            loss_sum, hits = tally(loss_sum, hits, pending, y_epoch[pending_from:stop], batch_size=batch_size)
            pending, pending_from = [], stop
        if on_batch is not None:
            on_batch()
    return design.unfold(finish(state) if finish else state, params), loss_sum, hits


def _gather_and_update(params: FoldedParams, x: Any, batch_order: Any, targets: Any, xp: Any,
                       lr: float) -> tuple[FoldedParams, Any]:
    """One SGD step on the rows ``batch_order`` of the design matrix ``x``. A gather per batch
    rather than one copy of the whole permuted set per epoch: the batch is written where the next
    product reads it, the epoch's ~180 MB copy is gone, and on NumPy an epoch ran 1.05x (batch 64) to
    1.12x (batch 8) faster (alternating A/B, medians of 12-30 rounds). On JAX the gather is inside
    the compiled step. ``xp`` is the namespace, taken once per epoch."""
    probs, steps = scaled_grads(xp, params, xp.take(x, batch_order, axis=0), targets, lr)
    return descend(params, steps), probs


class Deferred(NamedTuple):
    """Updates to a block ``W`` of W1b's rows that are kept as factors, not yet applied: the block
    is ``W - x[:n].T @ d[:n]`` (``_step_on_used_columns`` says why)."""

    x: Any  # (rows, n_columns): the block's columns of the batches since W was last updated
    d: Any  # (rows, n_hidden): those batches' scaled hidden errors
    n: int  # how many of those rows are filled


def room_for_deferred(block: Any, rows: int) -> Deferred:
    """Empty room for ``rows`` rows of deferred updates to ``block`` (none: every step updates it)."""
    xp, dev = namespace(block), array_api_compat.device(block)
    return Deferred(xp.empty((rows, block.shape[0]), dtype=block.dtype, device=dev),
                    xp.empty((rows, block.shape[1]), dtype=block.dtype, device=dev), 0)


def minus_deferred(z: Any, x: Any, deferred: Deferred) -> Any:
    """``z`` (a product ``x @ block`` and maybe more) for the block with its pending updates:
    ``x @ (block - X.T @ D) = x @ block - (x @ X.T) @ D``, two small products."""
    n = deferred.n
    return z - (x @ deferred.x[:n, ...].T) @ deferred.d[:n, ...] if n else z


def update_deferred(block: Any, x: Any, d_hidden: Any, deferred: Deferred) -> tuple[Any, Deferred]:
    """The block after the update ``x.T @ d_hidden``: kept in the room, or, once no further batch
    of this size fits there, applied with all that is pending in one product. Batches after the
    first must be no larger than the one before (``run_epoch``'s are)."""
    room, n, n_rows = deferred.x.shape[0], deferred.n, x.shape[0]
    if room == 0:
        return block - x.T @ d_hidden, deferred
    deferred.x[n:n + n_rows, ...] = x
    deferred.d[n:n + n_rows, ...] = d_hidden
    left = pending_after(n, n_rows, room)
    if left == 0:
        return apply_deferred(block, Deferred(deferred.x, deferred.d, n + n_rows)), Deferred(deferred.x, deferred.d, 0)
    return block, Deferred(deferred.x, deferred.d, left)


def pending_after(n_pending: int, n_rows: int, room: int) -> int:
    """Rows still deferred after a step of ``n_rows`` that found ``n_pending``: none (all applied)
    once a further batch of this size would not fit in ``room``."""
    n = n_pending + n_rows
    return 0 if n + n_rows > room else n


def apply_deferred(block: Any, deferred: Deferred) -> Any:
    n = deferred.n
    return block - deferred.x[:n, ...].T @ deferred.d[:n, ...] if n else block


def deferred_rows(batch_size: int, max_rows: int) -> int:
    """Room for the updates of as many whole batches as fit in ``max_rows`` rows, or none where
    that is fewer than two (a batch of more than half of them): deferring one saves nothing."""
    n_batches = max_rows // batch_size
    return n_batches * batch_size if n_batches >= 2 else 0


class SplitParams(NamedTuple):
    """``FoldedParams`` with W1b cut in two at a row: the rows of the rarely used design columns,
    then those of the common ones (``DesignMatrix.common_columns``), b1 last, and the common
    block's deferred updates."""

    W1_rare: Any
    W1_common: Any
    W2: Any
    b2: Any
    deferred: Deferred


def split_rows(folded: FoldedParams, n_rare: int, room: int = 0) -> SplitParams:
    """Two new arrays of W1b's rows, the first ``n_rare`` and the rest, and room for ``room``
    rows of deferred updates to the second."""
    xp = namespace(folded.W1b)
    rare, common = (xp.asarray(rows, copy=True) for rows in (folded.W1b[:n_rare, ...], folded.W1b[n_rare:, ...]))
    return SplitParams(rare, common, folded.W2, folded.b2, room_for_deferred(common, room))


def join_rows(split: SplitParams) -> FoldedParams:
    """``FoldedParams`` again, with the deferred updates applied."""
    xp = namespace(split.W1_rare, split.W1_common)
    common = apply_deferred(split.W1_common, split.deferred)
    return FoldedParams(xp.concat([split.W1_rare, common], axis=0), split.W2, split.b2)


COMMON_USE = 0.7  # a column that a batch uses at least this often is multiplied in every step


def common_columns(usage: np.ndarray, batch_size: int) -> int:
    """How many columns, of those used by the fractions ``usage`` of the samples, a batch of
    ``batch_size`` random samples uses (has a nonzero in) with probability ``COMMON_USE`` or more.
    With ``usage`` in ascending order, as the design matrix has it, they are the last ones."""
    used_by_a_batch = 1.0 - (1.0 - usage) ** batch_size
    return int(np.count_nonzero(used_by_a_batch >= COMMON_USE))


def _step_on_used_columns(params: SplitParams, x: Any, batch_order: Any, targets: Any, xp: Any,
                          lr: float) -> tuple[SplitParams, Any]:
    """``_gather_and_update`` with both big products taken over only the columns that are nonzero
    in some row of the batch, except the common ones. A column that is zero in the whole batch
    adds exactly nothing to ``x @ W1b`` and gets an exactly zero gradient row, so its row of W1b is
    left as it is, and the step is the dense one's up to summation order. A batch of 64 MNIST
    images uses ~494 of the 718 columns, one of 8 ~365.

    Skipping costs a gather of the used rows of W1b and a scattered write of their update, and most
    of a batch's used columns are the ones nearly every batch uses. So the columns that a batch
    uses with probability 0.7 or more (``COMMON_USE``; 319 at batch 8, 373 at 16, 467 at 64) are
    multiplied in every step, through a slice of the batch and their own block of W1b, with no
    gather and no scatter; only the rest are checked per batch. Against checking every column
    (``run_epoch`` on full MNIST, 2-core Intel Xeon, alternating epochs from the same start): 1.39x
    faster at batch 8, 1.28x at 16, 1.27x at 32, 1.25x at 64; any threshold from 0.4 to 0.85 came
    within 4% of 0.7. The rare block is updated in place (the loop owns it: ``split_rows`` made it),
    which backend.skips_zero_columns allows only where that works.

    At small batches, updating the common block (~450 KB at batch 16) cost two passes over it per
    step, a gradient written and a subtraction, as long as the products. So its updates are
    deferred (``Deferred``): each step writes its batch's common columns and hidden errors into
    rows set aside for them, corrects its forward product for them (``minus_deferred``), and once
    no further batch fits, applies them all in one product (``update_deferred``). The same sum, up
    to its order. With room for 128 rows (``backend.deferred_update_rows``; 64 and 96 came within
    3%), against updating every step (``run_epoch``, full MNIST, 2-core Intel Xeon, paired
    alternating epochs): 1.40x faster at batch 8, 1.31x at 16, 1.13x at 24, 1.14x at 32, 1.09x at
    40, 1.07x at 48, 1.04x at 56, 1.00x at 64."""
    rare, common, W2, b2, deferred = params  # unpacked, not params._replace(...): 1 us less per step
    batch = xp.take(x, batch_order, axis=0)
    n_rare = rare.shape[0]
    x_rare, x_common = batch[:, :n_rare], batch[:, n_rare:]
    used = xp.nonzero(xp.any(x_rare != 0, axis=0))[0]
    rows, x_used = xp.take(rare, used, axis=0), xp.take(x_rare, used, axis=1)
    z = minus_deferred(x_common @ common + x_used @ rows, x_common, deferred)
    probs, hidden, d_logits, d_hidden = layer_errors(xp, z, W2, b2, targets, lr)
    rare[used] = rows - x_used.T @ d_hidden
    common, deferred = update_deferred(common, x_common, d_hidden, deferred)
    return SplitParams(rare, common, W2 - hidden.T @ d_logits, b2 - xp.sum(d_logits, axis=0), deferred), probs


def _gather_and_defer(state: tuple[FoldedParams, Deferred], x: Any, batch_order: Any, targets: Any, xp: Any,
                      lr: float) -> tuple[tuple[FoldedParams, Deferred], Any]:
    """``_gather_and_update`` with W1b's updates deferred as in ``_step_on_used_columns``: the
    dense step of PyTorch on the CPU (``backend.deferred_update_rows`` has its figures)."""
    (W1b, W2, b2), deferred = state
    x1 = xp.take(x, batch_order, axis=0)
    probs, hidden, d_logits, d_hidden = layer_errors(xp, minus_deferred(x1 @ W1b, x1, deferred), W2, b2, targets, lr)
    W1b, deferred = update_deferred(W1b, x1, d_hidden, deferred)
    return (FoldedParams(W1b, W2 - hidden.T @ d_logits, b2 - xp.sum(d_logits, axis=0)), deferred), probs


def _apply_dense_deferred(state: tuple[FoldedParams, Deferred]) -> FoldedParams:
    folded, deferred = state
    return folded._replace(W1b=apply_deferred(folded.W1b, deferred))


TALLY_EVERY = 64  # batches per tally: bounds what is kept, and on JAX the operands of one concat


def _tally(loss_sum: Any, hits: Any, batch_probs: list, labels: Any, batch_size: int) -> tuple[Any, Any]:
    """The running sums plus the batch-mean losses and hits of consecutive batches (all full but
    possibly the last). On JAX this is one compiled program per number of batches; one concat of
    all 7,500 batches of an epoch at batch 8 took 19 s to compile there."""
    xp = namespace(labels)
    probs = xp.concat(batch_probs, axis=0)
    losses = sample_losses(probs, labels)
    n_full = (losses.shape[0] // batch_size) * batch_size
    loss_sum = loss_sum + xp.sum(losses[:n_full]) / batch_size
    if n_full < losses.shape[0]:
        loss_sum = loss_sum + xp.sum(losses[n_full:]) / (losses.shape[0] - n_full)
    return loss_sum, hits + xp.astype(xp.count_nonzero(xp.argmax(probs, axis=1) == labels), hits.dtype)


def chunk_bounds(n: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of ``EVAL_CHUNK``-row slices covering ``n`` rows; the last stop is ``n``,
    never past it (a slice past the end is unspecified by the standard; array-api-strict refuses it)."""
    for start in range(0, n, EVAL_CHUNK):
        yield start, min(start + EVAL_CHUNK, n)


def sum_over_chunks(per_chunk: Callable[[Any, Any], Any], x: Any, labels: Any) -> Any:
    """The sum of ``per_chunk(x_chunk, labels_chunk)`` over a whole set, ``EVAL_CHUNK`` rows at a
    time to bound memory; stays on the device."""
    total = None
    for start, stop in chunk_bounds(x.shape[0]):
        part = per_chunk(x[start:stop, ...], labels[start:stop])
        total = part if total is None else total + part
    return total


def count_correct(params: Params, x: Any, labels: Any) -> Any:
    """Hits of ``predict`` over a whole set; a 0-d device array."""
    xp = namespace(x, labels)
    return sum_over_chunks(lambda xb, yb: xp.count_nonzero(predict(params, xb) == yb), x, as_index(xp, labels))


def train_epochs(
    params: Params,
    data: DeviceData,
    config: TrainConfig,
    rng: np.random.Generator,
    *,
    start_epoch: int = 0,
    on_batch: Callable[[], None] | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
) -> Iterator[EpochReport]:
    """Train epochs ``start_epoch+1 .. config.epochs``, yielding a report after each.

    Each epoch draws its permutation from ``rng`` on the host (so a seed means the same run on
    every backend), copies it to the device, trains, and reads loss, accuracy and test accuracy
    back in one transfer. A non-finite loss or parameter, or a loss at the clip's ceiling (the
    clip keeps a blown-up run finite: --lr 10 gives ~30), raises DivergenceError naming the epoch.
    """
    xp = namespace(data.x_train)
    device = array_api_compat.device(data.x_train)
    float_dtype = data.x_train.dtype
    n = data.x_train.shape[0]
    design = design_matrix(data.x_train)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        started = time.perf_counter()
        order = xp.asarray(rng.permutation(n), dtype=index_dtype(xp), device=device)
        params, loss_sum, hits = run_epoch(params, design, data.y_train, order, config.batch_size, config.lr,
                                           on_batch)
        # a sum over all parameters is non-finite iff some parameter is (or it overflowed: diverged too)
        stats = [loss_sum, xp.astype(hits, float_dtype), sum(xp.sum(p) for p in params)]
        if data.x_test is not None:
            stats.append(xp.astype(count_correct(params, data.x_test, data.y_test), float_dtype))
        host = to_numpy(xp.stack(stats)).astype(np.float64)  # the epoch's one device->host read
        seconds = time.perf_counter() - started
        loss = float(host[0]) / (n / config.batch_size)
        accuracy = float(host[1]) / n
        test_accuracy = float(host[3]) / data.x_test.shape[0] if data.x_test is not None else None
        judged = accuracy if test_accuracy is None else test_accuracy
        if not (math.isfinite(loss) and math.isfinite(host[2])) or _saturated(loss, judged, params.W2.shape[1]):
            what = (f"the loss is {loss}" if not math.isfinite(loss) else
                    "the parameters overflowed to inf/nan" if not math.isfinite(host[2]) else
                    f"the loss {loss:.2f} is at the clipping ceiling -log(1e-15) = 34.5 (predictions saturated, "
                    "accuracy at chance)")
            raise DivergenceError(
                f"training diverged in epoch {epoch}: {what}; "
                f"use a smaller learning rate than {config.lr} or --init he",
                epoch,
            )
        yield EpochReport(epoch, config.epochs, loss, accuracy, test_accuracy, seconds, params)


def _saturated(loss: float, accuracy: float, n_classes: int) -> bool:
    """A blown-up run: the loss at the clip's ceiling and the accuracy at chance. The loss alone is
    not enough: the seed's N(0,1) start also gives an epoch-1 loss of 25-29 on a few hundred samples
    (--limit 200), while the accuracy is already 0.22 on them and 0.51 on the test set; --lr 10 gives
    ~30 at 0.10 on both."""
    return loss > SATURATED_FRACTION * -math.log(PROB_CLIP) and accuracy < CHANCE_FACTOR / n_classes


def check_inputs(x: Any, labels: Any, n_features: int | None = None, n_classes: int = 10,
                 what: str = "x") -> Backend:
    """Validate a public entry point's arrays and return their backend; each error names what was
    expected and what was given."""
    backend = backend_of(x, labels)
    if len(x.shape) != 2:
        raise InputError(f"{what} must be 2-D (samples, features); got shape {tuple(x.shape)}")
    if n_features is not None and x.shape[1] != n_features:
        raise InputError(f"{what} has {x.shape[1]} features; the model expects {n_features}")
    if len(labels.shape) != 1:
        raise InputError(f"labels must be 1-D; got shape {tuple(labels.shape)}")
    if labels.shape[0] != x.shape[0]:
        raise InputError(f"{what} has {x.shape[0]} samples but labels has {labels.shape[0]}")
    xp = namespace(x, labels)
    if not xp.isdtype(labels.dtype, "integral"):
        raise InputError(f"labels must be integer class indices; got dtype {labels.dtype}")
    if not xp.isdtype(x.dtype, "real floating"):
        raise InputError(f"{what} must be floating point (scale uint8 pixels with /255); got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise InputError(f"{what} is empty")
    low, high = (int(v) for v in to_numpy(xp.stack([xp.min(labels), xp.max(labels)])))
    if low < 0 or high >= n_classes:
        raise InputError(f"labels must be in 0..{n_classes - 1}; got values from {low} to {high}")
    if not bool(to_numpy(xp.all(xp.isfinite(x)))):
        raise InputError(f"{what} contains NaN or infinity")
    return backend


def check_params(params: Any, x: Any) -> None:
    """Starting parameters for ``fit``: (W1, b1, W2, b2) of consistent shapes, in ``x``'s library,
    device and dtype; an InputError names the first mismatch."""
    if len(params) != 4:
        raise InputError(f"params must be (W1, b1, W2, b2); got {len(params)} arrays")
    W1, b1, W2, b2 = params
    backend_of(x, *params)
    shapes = [tuple(p.shape) for p in params]
    hidden = W1.shape[1] if len(W1.shape) == 2 else None
    if shapes != [(x.shape[1], hidden), (hidden,), (hidden, 10), (10,)]:
        raise InputError(f"params have shapes {shapes}; expected W1 ({x.shape[1]}, H), b1 (H,), W2 (H, 10), b2 (10,)")
    dtypes = {str(p.dtype) for p in params}
    if dtypes != {str(x.dtype)}:
        raise InputError(f"params are {', '.join(sorted(dtypes))} but x_train is {x.dtype}; convert them with "
                         "xpmlp.model.params_to(params, xp, dtype)")


def fit(
    x_train: Any,
    y_train: Any,
    *,
    x_test: Any = None,
    y_test: Any = None,
    config: TrainConfig | None = None,
    params: Params | None = None,
    callback: Callable[[EpochReport], None] | None = None,
) -> tuple[Params, list[dict[str, Any]]]:
    """Train on arrays of any Array-API library; results stay in that library, on that device.

    ``x_*`` are floats (samples, features) in [0, 1], ``y_*`` integer labels 0..9. Returns the
    trained parameters and the per-epoch history (epoch, loss, accuracy, test_accuracy, seconds).
    The parameters take ``x_train``'s dtype (``config.dtype`` applies to the CLI's data loading).
    """
    config = config or TrainConfig()
    backend = check_inputs(x_train, y_train, params[0].shape[0] if params is not None else None, what="x_train")
    validate_config(config, x_train.shape[0])
    if (x_test is None) != (y_test is None):
        raise InputError("give x_test and y_test together, or neither")
    if x_test is not None:
        check_inputs(x_test, y_test, x_train.shape[1], what="x_test")
        backend_of(x_train, x_test)
    if params is not None:
        check_params(params, x_train)
    rng = np.random.Generator(np.random.PCG64(config.seed))
    dtype = _dtype_name(x_train.dtype)
    if params is None:
        params = init_params(rng, x_train.shape[1], config.hidden, 10, init=config.init, dtype=dtype,
                             xp=backend.xp, device=backend.device)
    limit = config.limit or x_train.shape[0]
    data = DeviceData(x_train[:limit, ...], y_train[:limit], x_test, y_test)
    history = []
    for report in train_epochs(params, data, config, rng):
        params = report.params
        history.append(report.record())
        if callback is not None:
            callback(report)
    return params, history


def _dtype_name(dtype: Any) -> str:
    text = str(dtype)
    for name in DTYPES:
        if text.endswith(name):
            return name
    raise InputError(f"unsupported floating dtype {dtype}; use float32 or float64")
