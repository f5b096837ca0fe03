"""The benchmark rows: one class per way of training the seed's 784-H-10 MLP.

Every implementation but ``numpy-floor`` (a lower bound that trains nothing, see its class) trains
the same model on the same data in the same order:

* initial parameters are given as host float64 arrays ``(W1 (784,H), b1 (H,), W2 (H,10), b2 (10,))``
  (drawn once by the caller with ``xpmlp.model.init_params``), and
* each epoch's order is a host permutation drawn by the caller from its own
  ``numpy.random.Generator``, so all rows see the same batches.

An implementation object holds its data on its device; ``init`` turns host parameters into its own
state, ``epoch`` runs one SGD pass (summed-gradient updates, lr * sum_b (p - onehot) ...) and returns
``(state, loss_sum, hits)`` as host numbers *after* a device synchronise, and ``host_params`` gives
the state back as float64 NumPy arrays (used by tests/test_bench.py to prove the rows agree).

Library imports happen inside the classes, so importing this module needs only NumPy.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

PROB_CLIP = 1e-15


class Unavailable(Exception):
    """This row cannot run here (library missing, no GPU); the message says why."""


class Impl:
    name = "?"
    device = "cpu"
    library = "numpy"
    trains = True  # False: a bound, not a trainer (its loss/accuracy mean nothing)
    product_inputs = 784  # columns the two big products multiply (fewer where unused pixels are skipped)

    def __init__(self, x: np.ndarray, y: np.ndarray, dtype: str = "float32"):
        """``x``: (N, 784) uint8 pixels; ``y``: (N,) integer labels."""
        self.dtype = dtype

    def init(self, params: tuple) -> Any:
        raise NotImplementedError

    def epoch(self, state: Any, order: np.ndarray, batch_size: int, lr: float) -> tuple[Any, float, int]:
        raise NotImplementedError

    def host_params(self, state: Any) -> tuple:
        raise NotImplementedError

    def gemm_rate(self, n: int = 2048, repeats: int = 5) -> float:
        """GFLOP/s of an n^3 matmul in this row's library, device and dtype (median of ``repeats``)."""
        raise NotImplementedError

    def executed_inputs(self, order: np.ndarray, batch_size: int, hidden: int) -> float | None:
        """Columns the two big products multiply per sample, on average, where that depends on the
        batch (rows that skip each batch's all-zero columns); None: ``product_inputs`` throughout."""
        return None

    def peak_device_memory(self) -> int | None:
        return None

    def versions(self) -> dict:
        return {"numpy": np.__version__}


def mean_used_columns(x: np.ndarray, order: np.ndarray, batch_size: int, n_common: int = 0) -> float:
    """The mean over samples of how many columns a column-skipping step multiplies in the sample's
    batch (batches of ``batch_size`` in ``order``, the last one possibly short): the last
    ``n_common`` columns of ``x`` always, the others where they are nonzero in some row of the
    batch. One batch at a time, so the count adds little to a row's RSS."""
    total, n, checked = 0, order.shape[0], x.shape[1] - n_common
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        total += rows.shape[0] * (n_common + int(np.count_nonzero(x.take(rows, axis=0)[:, :checked].any(axis=0))))
    return total / n


def mean_deferred_rows(n: int, batch_size: int, room: int) -> float:
    """The mean over samples of how many rows of deferred updates (``training._step_on_used_columns``)
    the sample's step corrects its forward product for, with ``room`` rows set aside."""
    from xpmlp.training import pending_after  # the same rule for when they are applied

    total, pending = 0, 0
    for start in range(0, n if room else 0, batch_size):
        rows = min(batch_size, n - start)
        total += rows * pending
        pending = pending_after(pending, rows, room)
    return total / n


def correction_columns(pending_rows: float, n_common: int, hidden: int) -> float:
    """The FLOPs of correcting a sample's forward product for ``pending_rows`` deferred rows,
    ``2 * p * (n_common + hidden)`` (``x @ X.T`` and its product with ``D``), in columns of the two
    big products (``4 * hidden`` FLOPs each per sample)."""
    return pending_rows * (n_common + hidden) / (2 * hidden)


class _SkipsZeroColumns:
    """``executed_inputs`` for rows whose products depend on the batch: a step that multiplies only
    each batch's nonzero columns of the matrix ``_skipped_matrix()`` returns (None: this row's step
    is dense), and one that defers W1b's updates (``training.update_deferred``) and so adds the
    products that correct each forward product for them. Counted once per batch size (on its first
    epoch's order: the mean over ~1,000-7,500 batches moves by well under 1% between permutations)
    and outside the timed epoch."""

    def _skipped_matrix(self) -> np.ndarray | None:
        return self.X

    def _trained_matrix(self) -> Any:
        """The array the step multiplies, in its own library: which says how much it defers."""
        return self.X

    def common_columns(self, batch_size: int) -> int:
        """How many of the matrix's last columns the step multiplies in every batch, unchecked."""
        return 0

    def executed_inputs(self, order, batch_size, hidden):
        from xpmlp.backend import deferred_update_rows
        from xpmlp.training import deferred_rows

        counted = self.__dict__.setdefault("_used_columns", {})
        if batch_size not in counted:
            x = self._skipped_matrix()
            room = deferred_rows(batch_size, deferred_update_rows(self._trained_matrix()))
            pending = mean_deferred_rows(order.shape[0], batch_size, room)
            if x is not None:
                n_common = self.common_columns(batch_size)  # the block whose updates are deferred
                counted[batch_size] = (mean_used_columns(x, order, batch_size, n_common)
                                       + correction_columns(pending, n_common, hidden))
            elif room:
                counted[batch_size] = self.product_inputs + correction_columns(pending, self.product_inputs, hidden)
            else:
                counted[batch_size] = None
        return counted[batch_size]


def scale(x: np.ndarray, dtype: str) -> np.ndarray:
    """uint8 pixels -> floats in [0, 1], the seed's values in either dtype (xpmlp's own helper)."""
    from xpmlp.training import scale_pixels

    return scale_pixels(x, dtype)


def _median_rate(run, sync, n, repeats) -> float:
    run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times)) / 1e9


class _NumpyGemm:
    def gemm_rate(self, n: int = 2048, repeats: int = 5) -> float:
        a = np.ones((n, n), dtype=self.dtype)
        out = np.empty_like(a)
        return _median_rate(lambda: np.matmul(a, a, out=out), lambda: None, n, repeats)


# --- seed: the notebook's loop, verbatim maths ---------------------------------------------------


def _relu(x):
    return np.maximum(0, x)


def _softmax(x):
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def _cross_entropy_loss(predictions, targets):
    epsilon = 1e-15
    predictions = np.clip(predictions, epsilon, 1.0)
    N = predictions.shape[0]
    return -np.sum(targets * np.log(predictions)) / N


class Seed(_NumpyGemm, Impl):
    """The notebook's ``train_neural_network`` body: float64 pixels, float32 one-hot targets (what
    keras' ``to_categorical`` returns), fancy-indexed batches, a fresh array for every step.
    Only the shuffle differs: the caller's permutation replaces ``np.random.shuffle`` (same cost)."""

    name = "seed"

    def __init__(self, x, y, dtype="float64"):
        self.dtype = "float64"  # the notebook's dtype, whatever the others use
        self.X = scale(x, "float64")
        self.Y = np.eye(10, dtype=np.float32)[np.asarray(y, dtype=np.int64)]

    def init(self, params):
        w1, b1, w2, b2 = (np.array(p, dtype=np.float64) for p in params)
        return [w1, b1.reshape(1, -1), w2, b2.reshape(1, -1)]

    def epoch(self, state, order, batch_size, lr):
        weights_input_hidden, biases_hidden, weights_hidden_output, biases_output = state
        X, y, indices, learning_rate = self.X, self.Y, order, lr
        total_loss = 0
        correct_predictions = 0
        for batch_start in range(0, X.shape[0], batch_size):
            batch_indices = indices[batch_start:batch_start + batch_size]
            X_batch = X[batch_indices]
            y_batch = y[batch_indices]

            hidden_layer_input = np.dot(X_batch, weights_input_hidden) + biases_hidden
            hidden_layer_output = _relu(hidden_layer_input)
            output_layer_input = np.dot(hidden_layer_output, weights_hidden_output) + biases_output
            output_layer_output = _softmax(output_layer_input)

            loss = _cross_entropy_loss(output_layer_output, y_batch)
            total_loss += loss

            predictions = np.argmax(output_layer_output, axis=1)
            true_labels = np.argmax(y_batch, axis=1)
            correct_predictions += np.sum(predictions == true_labels)

            output_error = output_layer_output - y_batch
            hidden_error = np.dot(output_error, weights_hidden_output.T) * (hidden_layer_output > 0)

            weights_hidden_output -= learning_rate * np.dot(hidden_layer_output.T, output_error)
            biases_output -= learning_rate * np.sum(output_error, axis=0, keepdims=True)
            weights_input_hidden -= learning_rate * np.dot(X_batch.T, hidden_error)
            biases_hidden -= learning_rate * np.sum(hidden_error, axis=0, keepdims=True)
        return state, float(total_loss), int(correct_predictions)

    def host_params(self, state):
        w1, b1, w2, b2 = state
        return w1.copy(), b1.ravel().copy(), w2.copy(), b2.ravel().copy()


def _design(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The columns of ``pixels`` that are nonzero in some row, in order of how many rows they are
    nonzero in (fewest first, ties in column order), then a column of ones: xpmlp's design matrix,
    built in plain NumPy. Row-major on purpose: ``pixels[:, used]`` would be column-major, and
    gathering rows from that made an epoch take ~37 s instead of ~0.35 s."""
    counts = np.count_nonzero(pixels, axis=0)
    used = np.flatnonzero(counts)
    used = used[np.argsort(counts[used], kind="stable")]
    ones = np.ones((pixels.shape[0], 1), pixels.dtype)
    return used, np.ascontiguousarray(np.concatenate([np.take(pixels, used, axis=1), ones], axis=1))


# --- numpy_fast: the fastest plain-NumPy loop for the same maths ---------------------------------


class NumpyFast(_SkipsZeroColumns, _NumpyGemm, Impl):
    """The fastest plain-NumPy loop for xpmlp's maths that we could write: the same design matrix
    (the pixel columns that are nonzero somewhere, least used first, then a column of ones, so b1
    is W1's last row), one ``take`` per batch, both big products over the common columns (those a
    batch uses with probability 0.7 or more, xpmlp's ``COMMON_USE``: a slice of the batch and its
    own block of W1b) and over only those of the other columns that are nonzero in the batch, their
    rows of W1b gathered and written back in place (as xpmlp does on NumPy), the common block's
    updates deferred and applied up to 128 rows at a time (xpmlp's ``training.deferred_rows`` and
    ``pending_after`` on NumPy), the ReLU mask reused by the backward pass, the shifted logits floored so that no subnormal number enters the step (as
    xpmlp does), lr folded into the (B, 10) output error, functional updates of W2 and b2, and
    the loss and hits taken from 64 batches' probabilities at a time as host numbers. Array methods
    throughout (``a.max()``, not ``np.max(a)``: 0.8 us less per call). Measured and not kept,
    because slower here: preallocated buffers with ``out=`` and in-place updates of the whole W1b
    (1.01x slower at batch 64, 1.07x at batch 8), one permuted copy of the data per epoch instead
    of a gather per batch."""

    name = "numpy_fast"
    scoped = False  # NumpyFastScoped: each step's arrays are released at the end of the step

    def __init__(self, x, y, dtype="float32"):
        self.dtype = dtype
        self.used, self.X = _design(scale(x, dtype))
        self.usage = np.count_nonzero(self.X, axis=0) / self.X.shape[0]
        self.y = np.asarray(y, dtype=np.intp)
        self.product_inputs = self.X.shape[1]
        from xpmlp.model import normal_floor  # the same floor as xpmlp's step (model.scaled_grads)

        self.logit_floor = normal_floor(np, np.dtype(dtype))

    def common_columns(self, batch_size):
        from xpmlp.training import common_columns  # the same split into common and checked columns

        return common_columns(self.usage, batch_size)

    def init(self, params):
        W1, b1, W2, b2 = (np.array(p, dtype=self.dtype) for p in params)
        return [np.concatenate([W1[self.used], b1[None, :]]), W2, b2, W1]  # W1: the rows that never move

    def epoch(self, state, order, batch_size, lr):
        W1b, W2, b2, W1 = state
        X, labels = self.X, self.y[order]
        targets = np.eye(W2.shape[1], dtype=self.dtype)[labels]
        loss_sum, hits, pending, pending_from = 0.0, 0, [], 0
        n_total, scoped, floor = X.shape[0], self.scoped, self.logit_floor
        n_rare = X.shape[1] - self.common_columns(batch_size)
        rare, common = W1b[:n_rare].copy(), W1b[n_rare:].copy()
        from xpmlp.backend import deferred_update_rows
        from xpmlp.training import deferred_rows, pending_after  # the same room and rule for deferred updates

        room, n_deferred = deferred_rows(batch_size, deferred_update_rows(X)), 0
        deferred_x, deferred_d = (np.empty((room, n), self.dtype) for n in common.shape)
        for start in range(0, n_total, batch_size):
            stop = min(start + batch_size, n_total)
            xb = X.take(order[start:stop], axis=0)
            x_rare, x_common = xb[:, :n_rare], xb[:, n_rare:]
            used = np.flatnonzero((x_rare != 0).any(axis=0))  # 5.0 us; x.any(axis=0) 6.0
            x_used, rows = x_rare.take(used, axis=1), rare.take(used, axis=0)
            z = x_common @ common + x_used @ rows
            if n_deferred:
                z -= (x_common @ deferred_x[:n_deferred].T) @ deferred_d[:n_deferred]
            active = (z > 0).astype(z.dtype)
            hidden = z * active
            logits = hidden @ W2 + b2
            e = np.exp(np.maximum(logits - logits.max(axis=1, keepdims=True), floor))
            probs = e / e.sum(axis=1, keepdims=True)
            d_logits = lr * (probs - targets[start:stop])
            d_hidden = (d_logits @ W2.T) * active
            rare[used] = rows - x_used.T @ d_hidden
            if room == 0:
                common = common - x_common.T @ d_hidden
            else:
                m = stop - start
                deferred_x[n_deferred:n_deferred + m], deferred_d[n_deferred:n_deferred + m] = x_common, d_hidden
                left = pending_after(n_deferred, m, room)
                if left == 0:
                    common = common - deferred_x[:n_deferred + m].T @ deferred_d[:n_deferred + m]
                n_deferred = left
            W2, b2 = W2 - hidden.T @ d_logits, b2 - d_logits.sum(axis=0)
            if scoped:
                del xb, x_rare, x_common, used, x_used, rows, z, active, hidden, logits, e, d_logits, d_hidden
            pending.append(probs)
            if len(pending) == 64 or stop == n_total:
                p, y = np.concatenate(pending), labels[pending_from:stop]
                losses = -np.log(np.maximum(p[np.arange(y.size), y], PROB_CLIP))
                n_full = (y.size // batch_size) * batch_size
                loss_sum += float(losses[:n_full].sum()) / batch_size
                if n_full < y.size:
                    loss_sum += float(losses[n_full:].mean())
                hits += int(np.count_nonzero(p.argmax(axis=1) == y))
                pending, pending_from = [], stop
        if n_deferred:
            common = common - deferred_x[:n_deferred].T @ deferred_d[:n_deferred]
        return [np.concatenate([rare, common]), W2, b2, W1], loss_sum, hits

    def host_params(self, state):
        W1b, W2, b2, W1 = (np.array(p, dtype=np.float64) for p in state)
        W1[self.used] = W1b[:-1]
        return W1, W1b[-1], W2, b2


class NumpyFastScoped(NumpyFast):
    """``numpy_fast`` with each step's arrays released at the end of the step, as they are when the
    step is a function (xpmlp's is) and its locals go at its return. In ``numpy_fast`` the loop's
    variables hold the last step's arrays, ~440 KB of W1b rows among them at batch 8, until the next
    step overwrites them, so malloc hands that step other buffers. The maths and the calls are the
    same; only which buffers the big temporaries get differs. In this machine's slow phases that
    alone cost 10-15% at batch 8 (docs/benchmarks.md, "The 10% target"): this row keeps it apart
    from the cost of the Array-API layer, which is xpmlp-numpy against this row."""

    name = "numpy_fast-scoped"
    scoped = True


# --- numpy-floor: the work no NumPy loop can skip, and nothing else ------------------------------


class MatmulFloor(_NumpyGemm, Impl):
    """Not a trainer: per batch only the forward product ``x @ W1b``, the gradient product
    ``x.T @ d`` and the update ``W1b = W1b - step`` (``d`` a fixed (B, H) matrix), on the design
    matrix xpmlp trains on (the pixel columns that are nonzero somewhere, then ones); no gather, no
    nonlinearity, no small products. Every SGD epoch of this model in NumPy that multiplies all of
    those columns does at least this, so its time bounds what such a dense loop can reach with this
    BLAS. Loops that skip each batch's all-zero columns (xpmlp on NumPy, numpy_fast) multiply ~31%
    (batch 64) to ~49% (batch 8) less and can go below it. The update is functional because that is the faster
    form here (in place measured 0.51 s vs 0.44 s per epoch at batch 64 on the 2-core machine,
    Haswell-kernel OpenBLAS)."""

    name = "numpy-floor"
    trains = False

    def __init__(self, x, y, dtype="float32"):
        self.dtype = dtype
        self.used, self.X = _design(scale(x, dtype))
        self.product_inputs = self.X.shape[1]

    def init(self, params):
        return [np.concatenate([np.asarray(params[0])[self.used], np.asarray(params[1])[None, :]]).astype(self.dtype)]

    def epoch(self, state, order, batch_size, lr):
        (W1b,) = state
        d = np.full((batch_size, W1b.shape[1]), 1e-7, dtype=self.dtype)  # small: W1b barely moves
        X = self.X
        for start in range(0, X.shape[0], batch_size):
            xb = X[start:start + batch_size]
            xb @ W1b
            W1b = W1b - xb.T @ d[:xb.shape[0]]
        return [W1b], float("nan"), 0

    def host_params(self, state):
        """W1b: the used columns' rows of W1, then b1."""
        return (np.array(state[0], dtype=np.float64),)


# --- xpmlp on any backend -------------------------------------------------------------------------


class Xpmlp(_SkipsZeroColumns, Impl):
    """xpmlp's own loop (``xpmlp.training.run_epoch``) on one backend, as ``train_epochs`` runs it:
    the design matrix built once with the data (``design_matrix``), then per epoch the permutation
    copied to the device, one pass, the loss and hit count read back once."""

    def __init__(self, x, y, dtype="float32", backend="numpy", device=None):
        from xpmlp.backend import get_backend, index_dtype
        from xpmlp.errors import BackendError
        from xpmlp.training import design_matrix

        try:
            self.backend = get_backend(backend, device)
        except BackendError as exc:
            raise Unavailable(str(exc)) from None
        self.dtype = dtype
        b = self.backend
        self.library = b.name
        self.device = _device_kind(b)
        self.name = f"xpmlp-{b.name}" + (f"-{self.device}" if b.name in ("torch", "jax") else "")
        xp = b.xp
        self.y = b.asarray(np.asarray(y, dtype=np.int64), index_dtype(xp))
        # only the design matrix is kept: like the other rows, the row holds just what its loop reads
        self.design = design_matrix(b.asarray(scale(x, dtype), getattr(xp, dtype)))
        self.product_inputs = self.design.x.shape[1]
        b.synchronize()

    def _skipped_matrix(self):
        from xpmlp.backend import skips_zero_columns, to_numpy

        # no copy: NumPy, or a CPU tensor's own buffer
        return to_numpy(self.design.x) if skips_zero_columns(self.design.x) else None

    def _trained_matrix(self):
        return self.design.x

    def common_columns(self, batch_size):
        return self.design.common_columns(batch_size)

    def init(self, params):
        from xpmlp.model import Params, params_to

        return params_to(Params(*params), self.backend.xp, self.dtype, self.backend.device)

    def epoch(self, state, order, batch_size, lr):
        from xpmlp.backend import index_dtype, to_numpy
        from xpmlp.training import run_epoch

        xp = self.backend.xp
        order_d = xp.asarray(order, dtype=index_dtype(xp), device=self.backend.device)
        state, loss_sum, hits = run_epoch(state, self.design, self.y, order_d, batch_size, lr)
        host = to_numpy(xp.stack([loss_sum, xp.astype(hits, loss_sum.dtype)]))
        self.backend.synchronize()
        return state, float(host[0]), int(host[1])

    def host_params(self, state):
        from xpmlp.backend import to_numpy

        return tuple(np.array(to_numpy(p), dtype=np.float64) for p in state)

    def gemm_rate(self, n=2048, repeats=5):
        xp, b = self.backend.xp, self.backend
        a = xp.ones((n, n), dtype=getattr(xp, self.dtype), device=b.device)
        box = []

        def sync():  # jax's effects_barrier does not wait for computations: block on the result
            r = box.pop()
            b.synchronize()
            if hasattr(r, "block_until_ready"):
                r.block_until_ready()

        return _median_rate(lambda: box.append(a @ a), sync, n, repeats)

    def peak_device_memory(self):
        return _peak_device_memory(self.backend.name, self.backend.module, self.backend.device)

    def versions(self):
        import array_api_compat

        return {"numpy": np.__version__, "array_api_compat": array_api_compat.__version__,
                self.backend.name: getattr(self.backend.module, "__version__", "?")}


def _device_kind(backend) -> str:
    text = str(backend.device).lower()
    return "cuda" if ("cuda" in text or "gpu" in text or backend.name == "cupy") else "cpu"


def _peak_device_memory(name, module, device) -> int | None:
    """The most device memory the library's pool held during the run, in bytes (the same measure for
    every GPU row: what the caching allocator took from the device, not only what arrays used)."""
    try:
        if name == "cupy":
            return int(module.get_default_memory_pool().total_bytes())  # the pool only grows
        if name == "torch" and str(device).startswith("cuda"):
            return int(module.cuda.max_memory_reserved(device))
        if name == "jax":
            stats = device.memory_stats() if hasattr(device, "memory_stats") else None
            for key in ("peak_pool_bytes", "peak_bytes_reserved", "peak_bytes_in_use"):  # XLA's names vary
                if stats and stats.get(key):
                    return int(stats[key])
    except Exception:  # a statistic we cannot read is reported as missing, not fatal
        return None
    return None


# --- PyTorch eager peers --------------------------------------------------------------------------


def _torch(device: str):
    try:
        import torch
    except ImportError as exc:
        raise Unavailable(f"torch is not installed ({exc})") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("no CUDA GPU visible to torch")
    return torch


class _TorchBase(Impl):
    library = "torch"

    def __init__(self, x, y, dtype="float32", device="cpu"):
        torch = self.torch = _torch(device)
        self.dtype, self.device = dtype, device
        self.tdtype = getattr(torch, dtype)
        self.X = torch.as_tensor(scale(x, dtype)).to(device)
        self.y = torch.as_tensor(np.asarray(y, dtype=np.int64)).to(device)
        self.name = f"{self.base_name}-{device}"
        self._sync()

    def _sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def _epoch_start(self, order):
        """The epoch's one gather of data and labels, and zeroed device accumulators."""
        torch = self.torch
        idx = torch.as_tensor(order).to(self.device)
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        return self.X.index_select(0, idx), self.y.index_select(0, idx), zero, zero.to(torch.int64)

    def _epoch_end(self, loss_sum, hits):
        """The epoch's one read-back (after a synchronise): loss sum and hit count as host numbers."""
        host = self.torch.stack([loss_sum, hits.to(self.torch.float64)]).cpu()
        self._sync()
        return float(host[0]), int(host[1])

    def gemm_rate(self, n=2048, repeats=5):
        a = self.torch.ones((n, n), dtype=self.tdtype, device=self.device)
        return _median_rate(lambda: a @ a, self._sync, n, repeats)

    def peak_device_memory(self):
        return _peak_device_memory("torch", self.torch, self.device) if self.device == "cuda" else None

    def versions(self):
        return {"numpy": np.__version__, "torch": self.torch.__version__}


class TorchManual(_TorchBase):
    """The seed's manual-gradient maths in idiomatic eager PyTorch: one gather per epoch, in-place
    parameter updates, statistics accumulated on the device and read once per epoch."""

    base_name = "torch-manual"

    def init(self, params):
        # a copy: as_tensor would share the caller's float64 arrays, and the updates are in place
        return [self.torch.tensor(np.array(p), dtype=self.tdtype, device=self.device) for p in params]

    def epoch(self, state, order, batch_size, lr):
        torch = self.torch
        W1, b1, W2, b2 = state
        X, Y, loss_sum, hits = self._epoch_start(order)
        for start in range(0, X.shape[0], batch_size):
            xb, yb = X[start:start + batch_size], Y[start:start + batch_size]
            hidden = torch.relu(torch.addmm(b1, xb, W1))
            probs = torch.softmax(torch.addmm(b2, hidden, W2), dim=1)
            target = probs.gather(1, yb[:, None])
            loss_sum += -torch.log(target.clamp(PROB_CLIP, 1.0)).mean()
            hits += (probs.argmax(dim=1) == yb).sum()
            d = probs.scatter_add_(1, yb[:, None], torch.full_like(target, -1.0))  # p - onehot, in place
            d_hidden = (d @ W2.T).mul_(hidden > 0)
            W2.sub_(hidden.T @ d, alpha=lr)
            b2.sub_(d.sum(0), alpha=lr)
            W1.sub_(xb.T @ d_hidden, alpha=lr)
            b1.sub_(d_hidden.sum(0), alpha=lr)
        return state, *self._epoch_end(loss_sum, hits)

    def host_params(self, state):
        return tuple(p.detach().cpu().double().numpy() for p in state)


class TorchModule(_TorchBase):
    """``nn.Sequential(Linear, ReLU, Linear)`` with autograd and ``torch.optim.SGD(lr)``.

    The loss that is back-propagated is ``cross_entropy(..., reduction="sum")``, so the gradient is
    the seed's summed one and plain SGD with the same lr takes the same step. cross_entropy is
    log_softmax + nll, i.e. *unclipped*: its gradient is exactly p - onehot like the seed's (whose
    backward ignores the clip too), so the parameters follow the same path; only the reported loss
    differs from the seed's when some p < 1e-15 (the seed clips it to 1e-15, ~34.5 nats)."""

    base_name = "torch-module"

    def init(self, params):
        torch = self.torch
        w1, b1, w2, b2 = params
        model = torch.nn.Sequential(torch.nn.Linear(w1.shape[0], w1.shape[1]), torch.nn.ReLU(),
                                    torch.nn.Linear(w2.shape[0], w2.shape[1]))
        model = model.to(device=self.device, dtype=self.tdtype)
        with torch.no_grad():  # nn.Linear stores W as (out, in)
            for layer, w, b in ((model[0], w1, b1), (model[2], w2, b2)):
                layer.weight.copy_(torch.as_tensor(np.asarray(w).T.copy()))
                layer.bias.copy_(torch.as_tensor(np.asarray(b)))
        return model, torch.optim.SGD(model.parameters(), lr=0.01)

    def epoch(self, state, order, batch_size, lr):
        torch = self.torch
        F = torch.nn.functional
        model, opt = state
        for group in opt.param_groups:
            group["lr"] = lr
        X, Y, loss_sum, hits = self._epoch_start(order)
        for start in range(0, X.shape[0], batch_size):
            xb, yb = X[start:start + batch_size], Y[start:start + batch_size]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                loss_sum += loss.detach() / xb.shape[0]
                hits += (logits.argmax(dim=1) == yb).sum()
        return state, *self._epoch_end(loss_sum, hits)

    def host_params(self, state):
        model, _ = state
        f = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
        return f(model[0].weight).T.copy(), f(model[0].bias), f(model[2].weight).T.copy(), f(model[2].bias)


# --- JAX: the whole SGD step under jax.jit ------------------------------------------------------


class JaxJit(Impl):
    """The seed's maths with the whole step (forward, manual backward, update, statistics) in one
    ``jax.jit`` function with donated parameters; one jitted function per batch shape (the last,
    partial batch compiles once more). Statistics stay on the device until the epoch ends."""

    library = "jax"

    def __init__(self, x, y, dtype="float32"):
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as exc:
            raise Unavailable(f"jax is not installed ({exc})") from None
        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        self.jax, self.jnp, self.dtype = jax, jnp, dtype
        self.dev = jax.devices()[0]
        self.device = "cuda" if self.dev.platform == "gpu" else self.dev.platform
        self.name = f"jax-jit-{self.device}"
        self.X = jax.device_put(jnp.asarray(scale(x, dtype)), self.dev)
        self.y = jax.device_put(jnp.asarray(np.asarray(y, dtype=np.int32)), self.dev)
        self._step = jax.jit(self._step_fn, donate_argnums=(0, 1))

    def _step_fn(self, params, acc, xb, yb, lr):
        jnp = self.jnp
        W1, b1, W2, b2 = params
        hidden = jnp.maximum(xb @ W1 + b1, 0)
        logits = hidden @ W2 + b2
        e = jnp.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        target = jnp.take_along_axis(probs, yb[:, None], axis=1)
        loss = -jnp.mean(jnp.log(jnp.clip(target, PROB_CLIP, 1.0)))
        hits = jnp.sum(jnp.argmax(probs, axis=1) == yb)
        d = probs - (yb[:, None] == jnp.arange(probs.shape[1])[None, :]).astype(probs.dtype)
        dh = jnp.where(hidden > 0, d @ W2.T, 0)
        new = (W1 - lr * (xb.T @ dh), b1 - lr * dh.sum(0), W2 - lr * (hidden.T @ d), b2 - lr * d.sum(0))
        return new, (acc[0] + loss, acc[1] + hits)

    def init(self, params):
        return tuple(self.jax.device_put(self.jnp.asarray(np.asarray(p), dtype=self.dtype), self.dev)
                     for p in params)

    def epoch(self, state, order, batch_size, lr):
        jnp = self.jnp
        idx = self.jax.device_put(jnp.asarray(order), self.dev)
        X, Y = jnp.take(self.X, idx, axis=0), jnp.take(self.y, idx, axis=0)
        acc = (jnp.zeros((), self.dtype), jnp.zeros((), jnp.int32))
        lr = jnp.asarray(lr, self.dtype)
        for start in range(0, X.shape[0], batch_size):
            state, acc = self._step(state, acc, X[start:start + batch_size], Y[start:start + batch_size], lr)
        loss_sum, hits = (np.asarray(a) for a in acc)  # blocks until the epoch is done
        return state, float(loss_sum), int(hits)

    def host_params(self, state):
        return tuple(np.asarray(p, dtype=np.float64) for p in state)

    def gemm_rate(self, n=2048, repeats=5):
        a = self.jax.device_put(self.jnp.ones((n, n), self.dtype), self.dev)
        mm = self.jax.jit(lambda a: a @ a)
        box = []
        return _median_rate(lambda: box.append(mm(a)), lambda: box.pop().block_until_ready(), n, repeats)

    def peak_device_memory(self):
        return _peak_device_memory("jax", self.jax, self.dev) if self.device != "cpu" else None

    def versions(self):
        import jaxlib

        return {"numpy": np.__version__, "jax": self.jax.__version__, "jaxlib": jaxlib.__version__}


# --- the registry ---------------------------------------------------------------------------------

# name -> (factory(x, y, dtype), device it runs on)
IMPLS: dict[str, tuple[Any, str]] = {
    "seed": (lambda x, y, dtype: Seed(x, y), "cpu"),
    "numpy_fast": (lambda x, y, dtype: NumpyFast(x, y, dtype), "cpu"),
    "numpy_fast-scoped": (lambda x, y, dtype: NumpyFastScoped(x, y, dtype), "cpu"),
    "numpy-floor": (lambda x, y, dtype: MatmulFloor(x, y, dtype), "cpu"),
    "xpmlp-numpy": (lambda x, y, dtype: Xpmlp(x, y, dtype, "numpy"), "cpu"),
    "xpmlp-array_api_strict": (lambda x, y, dtype: Xpmlp(x, y, dtype, "array_api_strict"), "cpu"),
    "xpmlp-torch-cpu": (lambda x, y, dtype: Xpmlp(x, y, dtype, "torch", "cpu"), "cpu"),
    "torch-manual-cpu": (lambda x, y, dtype: TorchManual(x, y, dtype, "cpu"), "cpu"),
    "torch-module-cpu": (lambda x, y, dtype: TorchModule(x, y, dtype, "cpu"), "cpu"),
    "xpmlp-cupy": (lambda x, y, dtype: Xpmlp(x, y, dtype, "cupy"), "cuda"),
    "xpmlp-torch-cuda": (lambda x, y, dtype: Xpmlp(x, y, dtype, "torch", "cuda:0"), "cuda"),
    "torch-manual-cuda": (lambda x, y, dtype: TorchManual(x, y, dtype, "cuda"), "cuda"),
    "torch-module-cuda": (lambda x, y, dtype: TorchModule(x, y, dtype, "cuda"), "cuda"),
    "xpmlp-jax": (lambda x, y, dtype: Xpmlp(x, y, dtype, "jax"), "any"),
    "jax-jit": (lambda x, y, dtype: JaxJit(x, y, dtype), "any"),
}
CPU_ROWS = [n for n, (_, d) in IMPLS.items() if d != "cuda"]
GPU_ROWS = [n for n, (_, d) in IMPLS.items() if d != "cpu"]


def make(name: str, x: np.ndarray, y: np.ndarray, dtype: str = "float32") -> Impl:
    """Build row ``name`` on (N, 784) uint8 ``x`` and labels ``y``; raises Unavailable."""
    if name not in IMPLS:
        raise ValueError(f"unknown implementation {name!r}; valid: {', '.join(IMPLS)}")
    impl = IMPLS[name][0](x, y, dtype)
    impl.name = name  # xpmlp-jax and jax-jit run where jax puts them (its GPU when present): see .device
    return impl
