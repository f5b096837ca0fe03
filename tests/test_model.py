"""Each maths piece against plain NumPy, on every backend; the gradient against finite differences."""

import numpy as np
import pytest

from xpmlp import model
from xpmlp.backend import to_numpy
from conftest import small_batch


def _tol(backend, dtype="float64", factor=64):
    # a few dozen ulps: softmax/log/matmul each round once per element, sums over <= 784 terms
    return factor * float(np.finfo(dtype).eps)


def ref_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_step(params, x, y, lr):
    """The seed notebook's step, written out in NumPy with a one-hot matrix."""
    W1, b1, W2, b2 = params
    h = np.maximum(0, x @ W1 + b1)
    p = ref_softmax(h @ W2 + b2)
    onehot = np.eye(W2.shape[1])[y]
    loss = -np.sum(onehot * np.log(np.clip(p, 1e-15, 1.0))) / x.shape[0]
    d_out = p - onehot
    d_hid = (d_out @ W2.T) * (h > 0)
    new = (W1 - lr * x.T @ d_hid, b1 - lr * d_hid.sum(0), W2 - lr * h.T @ d_out, b2 - lr * d_out.sum(0))
    return new, loss, int(np.sum(p.argmax(1) == y))


def test_softmax_is_stable_at_huge_logits(backend):
    xp = backend.xp
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 0.0], [-5.0, 2.0, 3.0]])
    got = to_numpy(model.softmax(backend.asarray(logits, xp.float64)))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref_softmax(logits), rtol=_tol(backend), atol=1e-300)
    np.testing.assert_allclose(got[1], [0.5, 0.5, 0.0], atol=_tol(backend))


def test_relu_and_its_mask(backend):
    xp = backend.xp
    z = np.array([[-2.0, -0.0, 0.0, 1e-30, 3.5]])
    got = to_numpy(model.relu(backend.asarray(z, xp.float64)))
    np.testing.assert_array_equal(got, np.maximum(0, z))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_clips_at_1e_15(backend, dtype):
    xp = backend.xp
    probs = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])
    labels = np.array([1, 2, 1])
    got = float(to_numpy(model.cross_entropy(backend.asarray(probs, getattr(xp, dtype)),
                                             backend.asarray(labels, xp.int64))))
    expected = -np.mean(np.log(np.clip(probs[np.arange(3), labels], 1e-15, 1.0)))  # = (34.54 + 0.69 + 0) / 3
    assert got == pytest.approx(expected, rel=_tol(backend, dtype))
    assert got == pytest.approx((-np.log(1e-15) - np.log(0.5)) / 3, rel=1e-6)


def test_train_step_matches_the_seed_formula(backend):
    xp = backend.xp
    x, y = small_batch(0, n=48)
    host = model.init_params(1, 784, 20, 10, init="he", dtype="float64")
    params = model.params_to(host, xp, "float64", backend.device)
    new, stats = model.train_step(params, backend.asarray(x, xp.float64), backend.asarray(y, xp.int64), 0.05)
    ref_new, ref_loss, ref_hits = ref_step(tuple(host), x, y, 0.05)
    for got, want in zip(new, ref_new):
        np.testing.assert_allclose(to_numpy(got), want, rtol=0, atol=_tol(backend) * np.abs(want).max())
    assert float(to_numpy(stats.loss)) == pytest.approx(ref_loss, rel=_tol(backend))
    assert int(to_numpy(stats.n_correct)) == ref_hits


def test_results_stay_in_the_callers_namespace_and_device(backend):
    xp = backend.xp
    x, y = small_batch(2, n=8)
    params = model.init_params(0, 784, 5, 10, dtype="float32", xp=xp, device=backend.device)
    xb, yb = backend.asarray(x, xp.float32), backend.asarray(y, xp.int64)
    new, stats = model.train_step(params, xb, yb, 0.01)
    from array_api_compat import device

    from xpmlp.backend import namespace

    for array in (*new, stats.loss, stats.n_correct, model.predict(new, xb), model.forward(new, xb)):
        assert namespace(array) is xp
        assert str(device(array)) == str(device(xb))
    assert new.W1.dtype == xp.float32


def test_inputs_are_not_modified(backend):
    xp = backend.xp
    x, y = small_batch(3, n=8)
    params = model.init_params(0, 784, 5, 10, dtype="float64", xp=xp, device=backend.device)
    before = [to_numpy(p).copy() for p in params]
    model.train_step(params, backend.asarray(x, xp.float64), backend.asarray(y, xp.int64), 0.1)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(to_numpy(p), b)


def test_gradient_matches_finite_differences_of_the_summed_loss():
    """Central differences in float64 of sum-over-batch loss (= batch mean * B), the seed's update."""
    rng = np.random.default_rng(5)
    x, y = rng.random((6, 7)), rng.integers(0, 4, 6)
    params = model.init_params(3, 7, 5, 4, init="he", dtype="float64")
    _, grads = model.loss_and_grads(params, x, y)

    def summed_loss(p):
        return float(model.cross_entropy(model.forward(p, x), y)) * x.shape[0]

    h = 1e-6  # central difference error ~ h^2 * f''' + eps / h ~ 1e-10 relative
    for index, (param, grad) in enumerate(zip(params, grads)):
        numeric = np.zeros_like(param)
        for pos in np.ndindex(param.shape):
            bumped = [p.copy() for p in params]
            bumped[index][pos] += h
            up = summed_loss(model.Params(*bumped))
            bumped[index][pos] -= 2 * h
            numeric[pos] = (up - summed_loss(model.Params(*bumped))) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_init_seed_is_unscaled_normal_and_he_is_scaled():
    seed = model.init_params(0, 784, 300, 10, init="seed", dtype="float64")
    he = model.init_params(0, 784, 300, 10, init="he", dtype="float64")
    assert seed.W1.std() == pytest.approx(1.0, rel=0.01)
    assert he.W1.std() == pytest.approx(np.sqrt(2 / 784), rel=0.01)
    assert not seed.b1.any() and not seed.b2.any()
    np.testing.assert_array_equal(he.W1, seed.W1 * np.sqrt(2 / 784))  # same draws, scaled


def test_same_seed_same_start_on_every_backend(backend):
    host = model.init_params(42, 784, 30, 10, dtype="float32")
    dev = model.init_params(42, 784, 30, 10, dtype="float32", xp=backend.xp, device=backend.device)
    for a, b in zip(host, dev):
        np.testing.assert_array_equal(to_numpy(b), a)


def test_one_hot(backend):
    xp = backend.xp
    got = to_numpy(model.one_hot(backend.asarray(np.array([2, 0, 3]), xp.int64), 4, xp.float32))
    np.testing.assert_array_equal(got, np.eye(4, dtype=np.float32)[[2, 0, 3]])
    assert got.dtype == np.float32


def test_sgd_update_is_train_step_and_returns_the_starting_probabilities(backend):
    """The epoch loop's step: same new parameters as train_step, and the probabilities under the
    parameters it started from (what the epoch's loss and hits are taken from)."""
    xp = backend.xp
    x, y = small_batch(4, n=16)
    params = model.init_params(2, 784, 12, 10, init="he", dtype="float64", xp=xp, device=backend.device)
    xb, yb = backend.asarray(x, xp.float64), backend.asarray(y, xp.int64)
    new, probs = model.sgd_update(params, xb, model.one_hot(yb, 10, xp.float64), 0.05)
    want_new, _ = model.train_step(params, xb, yb, 0.05)
    for got, want in zip(new, want_new):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
    np.testing.assert_allclose(to_numpy(probs), to_numpy(model.forward(params, xb)), rtol=_tol(backend), atol=0)


@pytest.mark.parametrize("tally_every", [64, 3, 2])
def test_run_epoch_matches_the_seed_loop_with_a_short_last_batch(backend, tally_every, monkeypatch):
    """Loss (a sum of batch means, the short batch's mean over its own 4 rows), hits and final
    parameters over 100 samples in batches of 32, against the seed's step written out in NumPy;
    tallied all at once, as 3 + 1 batches (the short one alone) and as 2 + 2. A quarter of the
    input columns are zero in every sample, as MNIST's border pixels are: the design matrix leaves
    them out, and their rows of W1 must still come back exactly as the seed leaves them."""
    from xpmlp import training
    from xpmlp.backend import index_dtype
    from xpmlp.training import design_matrix, run_epoch

    monkeypatch.setattr(training, "TALLY_EVERY", tally_every)
    xp = backend.xp
    x, y = small_batch(6, n=100)
    x[:, ZERO_COLUMNS] = 0.0
    order = np.random.default_rng(1).permutation(100)
    host = model.init_params(3, 784, 20, 10, init="he", dtype="float64")
    ref, ref_loss, ref_hits = tuple(host), 0.0, 0
    for start in range(0, 100, 32):
        batch = order[start:start + 32]
        ref, loss, hits = ref_step(ref, x[batch], y[batch], 0.05)
        ref_loss, ref_hits = ref_loss + loss, ref_hits + hits

    params = model.params_to(host, xp, "float64", backend.device)
    design = design_matrix(backend.asarray(x, xp.float64))
    new, loss_sum, hits = run_epoch(params, design, backend.asarray(y, xp.int64),
                                    backend.asarray(order, index_dtype(xp)), 32, 0.05)
    assert float(to_numpy(loss_sum)) == pytest.approx(ref_loss, rel=_tol(backend))
    assert int(to_numpy(hits)) == ref_hits
    for got, want in zip(new, ref):
        np.testing.assert_allclose(to_numpy(got), want, rtol=0, atol=_tol(backend) * np.abs(want).max())
    np.testing.assert_array_equal(to_numpy(new.W1)[ZERO_COLUMNS], host.W1[ZERO_COLUMNS])
    assert np.abs(to_numpy(new.W1) - host.W1).max(axis=1)[_used_columns()].min() > 0  # the others all moved


ZERO_COLUMNS = np.r_[0:100, 300:301, 783:784, 500:700:2]


def _used_columns():
    return np.setdiff1d(np.arange(784), ZERO_COLUMNS)


@pytest.mark.parametrize("chunk", [16, 10_000])  # 40 rows: 16 + 16 + 8, or one chunk
def test_design_matrix_keeps_the_used_columns_then_ones_and_folds_back_exactly(backend, chunk, monkeypatch):
    from xpmlp import training
    from xpmlp.training import design_matrix

    monkeypatch.setattr(training, "EVAL_CHUNK", chunk)  # rows per chunk where it is filled in place
    xp = backend.xp
    x, _ = small_batch(8, n=40)
    x[:, ZERO_COLUMNS] = 0.0
    x[3, 0] = 0.5  # nonzero in one sample only: kept
    design = design_matrix(backend.asarray(x, xp.float32))
    kept = np.r_[0, _used_columns()]
    kept = kept[np.argsort((x[:, kept] != 0).sum(axis=0), kind="stable")]  # least used first
    assert kept[0] == 0  # nonzero in one sample only
    np.testing.assert_array_equal(to_numpy(design.kept), kept)
    got = to_numpy(design.x)
    np.testing.assert_array_equal(got, np.c_[x[:, kept].astype(np.float32), np.ones(40, np.float32)])
    if backend.name == "numpy":  # a batch gather reads whole rows: a strided layout made an epoch 100x slower
        assert design.x.flags.c_contiguous
    params = model.init_params(5, 784, 6, 10, dtype="float32", xp=xp, device=backend.device)
    folded = design.fold(params)
    assert tuple(folded.W1b.shape) == (kept.size + 1, 6)
    moved = folded._replace(W1b=folded.W1b + 1.0)  # every kept row and b1 moves by one
    back = design.unfold(moved, params)
    want_W1 = to_numpy(params.W1).copy()
    want_W1[kept] += 1.0
    np.testing.assert_array_equal(to_numpy(back.W1), want_W1)
    np.testing.assert_array_equal(to_numpy(back.b1), to_numpy(params.b1) + 1.0)
    for got_p, want_p in zip(design.unfold(folded, params), params):
        np.testing.assert_array_equal(to_numpy(got_p), to_numpy(want_p))


@pytest.mark.parametrize("n", [1, 100, 250])
def test_whole_set_hits_for_sets_that_are_not_whole_chunks(backend, n, monkeypatch):
    """count_correct walks a set EVAL_CHUNK rows at a time; the last chunk is short (a slice
    running past the end is outside the standard, and array-api-strict refuses it)."""
    from xpmlp import training

    monkeypatch.setattr(training, "EVAL_CHUNK", 64)  # 250 = 3 chunks of 64 and one of 58
    x, y = small_batch(3, n=n)
    params = model.init_params(0, 784, 16, 10, init="he", dtype="float64")
    expected = int(np.sum(np.argmax(np.maximum(0, x @ params.W1 + params.b1) @ params.W2 + params.b2, axis=1) == y))
    device_params = model.params_to(params, backend.xp, "float64", backend.device)
    hits = training.count_correct(device_params, backend.asarray(x, backend.xp.float64),
                                  backend.asarray(y, backend.xp.int64))
    assert int(to_numpy(hits)) == expected


def test_run_epoch_counts_hits_past_255_whatever_the_label_dtype(backend):
    """The hit count is kept in the index dtype, not the labels' own (uint8 would wrap at 256)."""
    from xpmlp.training import design_matrix, run_epoch

    xp = backend.xp
    x = np.random.default_rng(1).random((2000, 20))
    y = x[:, :10].argmax(axis=1)  # separable: far more than 255 hits in one epoch
    order = np.random.default_rng(0).permutation(2000)
    hits = {}
    for dtype in ("uint8", "int64"):
        params = model.init_params(0, 20, 32, 10, init="he", xp=xp, device=backend.device)
        design = design_matrix(backend.asarray(x, xp.float32))
        _, _, n = run_epoch(params, design, backend.asarray(y.astype(dtype), getattr(xp, dtype)),
                            backend.asarray(order, xp.int64), 8, 0.05)
        hits[dtype] = int(to_numpy(n))
    assert hits["uint8"] == hits["int64"] > 255


SKIPS_ZERO_COLUMNS = {"numpy": True, "torch": False, "array_api_strict": False, "jax": False, "cupy": False}


@pytest.mark.parametrize("split", ["common", "none common", "all common"])
def test_the_column_skipping_step_is_the_dense_step(backend, split):
    """Where ``run_epoch`` takes ``_step_on_used_columns`` (NumPy), it gives the dense step's
    parameters and probabilities up to summation order, and leaves the rows of W1b whose column is
    zero in the whole batch bit for bit as they were, whether that column is in the block checked
    per batch or in the common block multiplied every step: W1b split where ``common_columns``
    puts it for this batch size, with only the ones column common, or with every column common.
    Elsewhere (torch, where the dense step measured faster; a GPU; JAX's fixed shapes;
    array-api-strict's lack of integer-indexed writes) the dense step runs."""
    from xpmlp.backend import index_dtype, skips_zero_columns
    from xpmlp.training import _gather_and_update, _step_on_used_columns, design_matrix, join_rows, split_rows

    xp = backend.xp
    rng = np.random.default_rng(4)
    x = rng.random((40, 60))
    x[x < 0.8] = 0.0  # sparse rows: a batch of 8 leaves ~17% of the columns all zero
    x[:, :5] = rng.random((40, 5)) + 0.1  # five columns nonzero everywhere: common at any batch size
    design = design_matrix(backend.asarray(x, xp.float64))
    on_gpu = "cuda" in str(backend.device).lower() or backend.name == "cupy"
    assert skips_zero_columns(design.x) is (SKIPS_ZERO_COLUMNS[backend.name] and not on_gpu)
    if not skips_zero_columns(design.x):
        return
    n_columns = design.x.shape[1]
    n_common = {"common": design.common_columns(8), "none common": 1, "all common": n_columns}[split]
    assert 6 <= design.common_columns(8) < n_columns  # the five, the ones column, maybe a few more
    params = model.init_params(2, 60, 12, 10, init="he", dtype="float64", xp=xp, device=backend.device)
    folded = design.fold(params)
    before = to_numpy(folded.W1b).copy()
    rows = np.arange(8, 16)
    batch_x = to_numpy(design.x)[rows]
    unused = np.flatnonzero(~batch_x.any(axis=0))
    assert unused.size >= 3 and batch_x[:, -1].all()  # some columns to skip; the ones column never is
    order = backend.asarray(rows, index_dtype(xp))
    targets = model.one_hot(backend.asarray(rng.integers(0, 10, 8), xp.int64), 10, xp.float64)
    dense, dense_probs = _gather_and_update(folded, design.x, order, targets, xp, 0.05)
    split_params, probs = _step_on_used_columns(split_rows(folded, n_columns - n_common), design.x, order, targets, xp, 0.05)
    skipped = join_rows(split_params)
    for got, want in zip(skipped, dense):
        want = to_numpy(want)
        np.testing.assert_allclose(to_numpy(got), want, rtol=0, atol=_tol(backend) * np.abs(want).max())
    np.testing.assert_allclose(to_numpy(probs), to_numpy(dense_probs), rtol=0, atol=_tol(backend))
    np.testing.assert_array_equal(to_numpy(skipped.W1b)[unused], before[unused])
    assert np.abs(to_numpy(skipped.W1b) - before).max(axis=1)[np.setdiff1d(np.arange(before.shape[0]), unused)].min() > 0


def test_deferred_updates_of_the_common_block_give_the_dense_steps():
    """Five steps of batch 8 (the last of 4 rows) with room for 16 deferred rows: the 2nd and 4th
    step apply what was deferred, steps 2, 3 and 5 correct their forward product for a pending
    batch, and ``join_rows`` applies the last one. Parameters and every step's probabilities equal
    five dense steps' up to summation order (float64: a few dozen ulps of the largest entry), and
    the rows of the columns that no batch uses stay bit for bit."""
    from xpmlp.backend import index_dtype
    from xpmlp.training import _gather_and_update, _step_on_used_columns, design_matrix, join_rows, split_rows

    rng = np.random.default_rng(5)
    x = rng.random((40, 60))
    x[x < 0.8] = 0.0
    x[:, :5] = rng.random((40, 5)) + 0.1
    order = rng.permutation(40)[:36]
    x[:, 50:55] = 0.5
    x[order, 50:55] = 0.0  # columns that only the 4 samples left out use
    design = design_matrix(x)
    n_columns = design.x.shape[1]
    params = model.init_params(3, 60, 12, 10, init="he", dtype="float64")
    dense = design.fold(params)
    before = np.array(dense.W1b)
    split = split_rows(dense, n_columns - design.common_columns(8), room=16)
    targets = model.one_hot(rng.integers(0, 10, 36), 10, np.float64)
    pending_after = []
    for start in range(0, 36, 8):
        batch_order = np.asarray(order[start:start + 8], dtype=index_dtype(np))
        dense, dense_probs = _gather_and_update(dense, design.x, batch_order, targets[start:start + 8], np, 0.05)
        split, probs = _step_on_used_columns(split, design.x, batch_order, targets[start:start + 8], np, 0.05)
        np.testing.assert_allclose(probs, dense_probs, rtol=0, atol=_tol(None))
        pending_after.append(split.deferred.n)
    assert pending_after == [8, 0, 8, 0, 4]
    joined = join_rows(split)
    for got, want in zip(joined, dense):
        np.testing.assert_allclose(got, want, rtol=0, atol=_tol(None) * np.abs(want).max())
    unused = np.flatnonzero(~design.x[order].any(axis=0))
    assert unused.size >= 5
    np.testing.assert_array_equal(joined.W1b[unused], before[unused])


DEFERS = {"numpy": 128, "torch": 96, "array_api_strict": 0, "jax": 0, "cupy": 0}


def test_the_dense_step_with_deferred_updates_is_the_dense_step(backend):
    """``_gather_and_defer`` (PyTorch's CPU step in ``run_epoch``) over five steps of batch 8, the
    last of 4 rows, with room for 16 rows: W1b's updates applied after steps 2 and 4 and by the
    caller after step 5. Parameters and probabilities equal five dense steps' up to summation
    order, on every backend whose arrays can be written (JAX's cannot). ``deferred_update_rows``
    says where ``run_epoch`` uses it: on the CPU, NumPy (in the column-skipping step) and PyTorch."""
    from xpmlp.backend import deferred_update_rows, index_dtype
    from xpmlp.training import _gather_and_defer, _gather_and_update, apply_deferred, design_matrix, room_for_deferred

    xp = backend.xp
    on_gpu = "cuda" in str(backend.device).lower() or backend.name == "cupy"
    rng = np.random.default_rng(6)
    design = design_matrix(backend.asarray(rng.random((40, 30)), xp.float64))
    assert deferred_update_rows(design.x) == (0 if on_gpu else DEFERS[backend.name])
    if backend.name == "jax":
        return
    dense = design.fold(model.init_params(4, 30, 12, 10, init="he", dtype="float64", xp=xp, device=backend.device))
    state = (dense, room_for_deferred(dense.W1b, 16))
    order = rng.permutation(40)[:36]
    targets = model.one_hot(backend.asarray(rng.integers(0, 10, 36), xp.int64), 10, xp.float64)
    pending_after = []
    for start in range(0, 36, 8):
        stop = min(start + 8, 36)  # a slice past the end is unspecified (array-api-strict refuses it)
        batch_order, batch_targets = backend.asarray(order[start:stop], index_dtype(xp)), targets[start:stop, ...]
        dense, dense_probs = _gather_and_update(dense, design.x, batch_order, batch_targets, xp, 0.05)
        state, probs = _gather_and_defer(state, design.x, batch_order, batch_targets, xp, 0.05)
        np.testing.assert_allclose(to_numpy(probs), to_numpy(dense_probs), rtol=0, atol=_tol(backend))
        pending_after.append(state[1].n)
    assert pending_after == [8, 0, 8, 0, 4]
    got = state[0]._replace(W1b=apply_deferred(state[0].W1b, state[1]))
    for a, want in zip(got, dense):
        want = to_numpy(want)
        np.testing.assert_allclose(to_numpy(a), want, rtol=0, atol=_tol(backend) * np.abs(want).max())


@pytest.mark.parametrize("max_rows", [0, 1, 64, 128])
def test_deferred_rows_hold_as_many_whole_batches_as_fit_and_at_least_two(max_rows):
    from xpmlp.training import deferred_rows

    for batch_size in range(1, 2 * max_rows + 2):
        rows = deferred_rows(batch_size, max_rows)
        if rows:
            assert rows % batch_size == 0 and 2 <= rows // batch_size and rows <= max_rows < rows + batch_size
        else:
            assert 2 * batch_size > max_rows


def test_the_design_matrix_orders_columns_by_use_and_names_the_common_ones():
    """Columns least used first, the ones column last; ``common_columns`` counts the trailing
    columns that a batch of that size uses with probability ``COMMON_USE`` or more."""
    from xpmlp.training import COMMON_USE, design_matrix

    x = np.zeros((100, 6))
    x[:50, 0] = 1.0  # used by half the samples
    x[:2, 1] = 1.0  # by 2%
    x[:, 3] = 1.0  # by all; column 2 by none, 4 and 5 by 10% each
    x[10:20, 4] = x[30:40, 5] = 1.0
    design = design_matrix(x)
    np.testing.assert_array_equal(design.kept, [1, 4, 5, 0, 3])
    np.testing.assert_allclose(design.usage, [0.02, 0.1, 0.1, 0.5, 1.0, 1.0])
    used_by_a_batch = lambda b: 1 - (1 - design.usage) ** b  # noqa: E731
    for b in (1, 2, 8, 12, 64, 10_000):
        assert design.common_columns(b) == np.count_nonzero(used_by_a_batch(b) >= COMMON_USE)
    assert design.common_columns(1) == 2  # the column every sample uses, and ones
    assert design.common_columns(2) == 3  # + the half-used one: 0.75 >= 0.7
    assert design.common_columns(12) == 5  # + both 10% columns: 1 - 0.9**12 = 0.72
    assert design.common_columns(10_000) == 6


def _subnormal(a):
    a = np.abs(np.asarray(a))
    return (a > 0) & (a < np.finfo(a.dtype).smallest_normal)


@pytest.mark.parametrize("dtype, gaps", [("float32", [90.0, 95.0, 101.0]), ("float64", [710.0, 720.0, 740.0])])
def test_the_training_step_keeps_subnormal_numbers_out(backend, dtype, gaps):
    """Logits this far below the row's max give subnormal probabilities in a plain softmax (checked
    here, so the case is real); the step floors them, puts no subnormal number in its probabilities
    or gradients, and still takes the seed's step: the floor moves a probability only below
    sqrt(smallest normal), so the gradients agree with the unfloored ones to the dtype's rounding."""
    xp = backend.xp
    rng = np.random.default_rng(5)
    n_in, n_hidden, n_out, lr = 6, 4, 5, 0.01
    x1 = np.concatenate([rng.random((3, n_in)), np.ones((3, 1))], axis=1).astype(dtype)
    W1b = rng.standard_normal((n_in + 1, n_hidden)).astype(dtype)
    W2 = (1e-3 * rng.standard_normal((n_hidden, n_out))).astype(dtype)
    b2 = np.array([0.0, *(-g for g in gaps), -1.0], dtype=dtype)  # logits ~ b2: three classes far below
    targets = np.eye(n_out, dtype=dtype)[[0, 4, 0]]

    h = np.maximum(x1 @ W1b, 0)
    plain = ref_softmax(h @ W2 + b2)
    assert _subnormal(plain).any()  # the case the floor is for
    d = lr * (plain - targets)
    want = {"W1b": x1.T @ ((d @ W2.T) * (h > 0)), "W2": h.T @ d, "b2": d.sum(0)}

    folded = model.FoldedParams(*(backend.asarray(a, getattr(xp, dtype)) for a in (W1b, W2, b2)))
    probs, steps = model.scaled_grads(xp, folded, backend.asarray(x1, getattr(xp, dtype)),
                                      backend.asarray(targets, getattr(xp, dtype)), lr)
    probs = to_numpy(probs)
    bound = np.sqrt(np.finfo(dtype).smallest_normal)  # e^floor
    assert not _subnormal(probs).any()
    kept = plain >= bound
    np.testing.assert_allclose(probs[kept], plain[kept], rtol=_tol(backend, dtype))
    assert np.all((probs[~kept] >= bound / n_out) & (probs[~kept] <= bound))
    for name, got in zip(("W1b", "W2", "b2"), steps):
        got = to_numpy(got)
        assert not _subnormal(got).any(), name
        np.testing.assert_allclose(got, want[name], rtol=0, atol=_tol(backend, dtype) * np.abs(want[name]).max(),
                                   err_msg=name)
