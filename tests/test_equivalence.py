"""Cross-backend equivalence: the same seed and data give the same training on every backend.

Reference: the NumPy backend. Each backend trains 300 SGD steps (1600 MNIST samples, batch 16,
3 epochs, 64 hidden units, He init) and its parameters are compared to NumPy's in NumPy.

Tolerance: backends differ only in the summation order of their BLAS/reductions, an error of a
few ulps per step (measured: 6 eps relative to the largest weight after 300 steps, torch vs
numpy, in both float32 and float64). He init keeps the dynamics contracting; the seed's N(0,1)
init is chaotic (logits in the hundreds), amplifying those ulps ~500-3000x, so it is not used
here. 200 eps gives 30x headroom over the measured error while a real discrepancy (a wrong
sign, a mean instead of a sum, a lost bias update) moves parameters by >1e-3 and fails.
"""

import warnings
from contextlib import contextmanager, nullcontext

import numpy as np
import pytest

from xpmlp.backend import get_backend, to_numpy
from xpmlp.model import init_params
from xpmlp.training import TrainConfig, to_device_data, train_epochs

ULPS = 200


def _train(backend, dataset, dtype):
    config = TrainConfig(epochs=3, batch_size=16, hidden=64, lr=0.01, dtype=dtype, init="he", seed=7, limit=1600)
    data = to_device_data(dataset, backend, dtype, config.limit)
    rng = np.random.Generator(np.random.PCG64(config.seed))
    params = init_params(rng, 784, config.hidden, 10, init="he", dtype=dtype, xp=backend.xp, device=backend.device)
    history = []
    for report in train_epochs(params, data, config, rng):
        params = report.params
        history.append((report.loss, report.accuracy, report.test_accuracy))
    return [to_numpy(p).astype(np.float64) for p in params], history


@pytest.fixture(scope="module")
def reference(mnist):
    numpy = get_backend("numpy")
    return {dtype: _train(numpy, mnist, dtype) for dtype in ("float32", "float64")}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_training_matches_numpy(backend, mnist, reference, dtype):
    params, history = _train(backend, mnist, dtype)
    ref_params, ref_history = reference[dtype]
    eps = float(np.finfo(dtype).eps)
    for name, got, want in zip(("W1", "b1", "W2", "b2"), params, ref_params):
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=ULPS * eps * scale, err_msg=f"{name} on {backend.name}")
    # the per-epoch statistics are the same numbers read back the same way
    np.testing.assert_allclose(np.array(history), np.array(ref_history), rtol=ULPS * eps, atol=1e-3)


def test_training_moved_the_parameters(reference):
    """Guard against a vacuous comparison: 300 steps must change the weights substantially."""
    start = init_params(np.random.Generator(np.random.PCG64(7)), 784, 64, 10, init="he", dtype="float64")
    moved = np.abs(reference["float64"][0][0] - start.W1).max()
    assert moved > 1e-2


class _NoHostReads(np.ndarray):
    """A NumPy array that fails on every conversion to a Python value: the calls that force a GPU
    backend to synchronise (float(), int(), bool(), .item(), .tolist())."""

    def _refuse(self, *args, **kwargs):
        raise AssertionError("a value was read back to the host inside the epoch")

    __float__ = __int__ = __bool__ = __index__ = item = tolist = _refuse


def test_an_epoch_never_reads_the_device(backend, mnist):
    """No host synchronisation inside an epoch. On NumPy, every array is a _NoHostReads view; on a
    GPU, the library's own detector raises on a synchronising read (``_gpu_read_guard``)."""
    from xpmlp.backend import index_dtype
    from xpmlp.training import DesignMatrix, design_matrix, run_epoch

    data = to_device_data(mnist, backend, "float32", 640)
    params = init_params(0, 784, 16, 10, xp=backend.xp, device=backend.device)
    order = backend.xp.asarray(np.random.default_rng(0).permutation(640), dtype=index_dtype(backend.xp),
                               device=backend.device)
    design, y = design_matrix(data.x_train), data.y_train  # built once, before the epochs
    if backend.name == "numpy":
        design = DesignMatrix(*(a.view(_NoHostReads) for a in design))
        y, order = (a.view(_NoHostReads) for a in (y, order))
        params = type(params)(*(p.view(_NoHostReads) for p in params))
        guard = nullcontext()
    else:
        guard = _gpu_read_guard(backend)
    with guard:
        params, loss_sum, hits = run_epoch(params, design, y, order, 64, 0.01)
    host = to_numpy(backend.xp.stack([loss_sum, backend.xp.astype(hits, loss_sum.dtype)]))
    assert np.isfinite(host[0]) and 0 <= host[1] <= 640


def test_the_no_read_guards_can_fail(backend):
    """Each guard above does catch a read back to the host, so its silence in that test means something."""
    xp = backend.xp
    if backend.name == "numpy":
        guard, value = nullcontext(), np.ones(3).view(_NoHostReads).sum()
    else:
        guard, value = _gpu_read_guard(backend), xp.sum(xp.ones(3, device=backend.device))
    with pytest.raises((AssertionError, RuntimeError)):
        with guard:
            float(value)


def _gpu_read_guard(backend):
    """A context in which reading a device value back to the host raises: PyTorch's sync debug
    mode, CuPy's synchronisation detector, JAX's device-to-host transfer guard. Skips where the
    backend is on the CPU (nothing to synchronise with) or the library has no such detector."""
    module, device = backend.module, str(backend.device)
    if backend.name == "torch" and device.startswith("cuda"):
        return _torch_sync_errors(module)
    if backend.name == "cupy":
        import cupyx

        if hasattr(cupyx, "allow_synchronize"):  # deprecated since CuPy 10, still in 14
            return _cupy_sync_errors(cupyx)
    if backend.name == "jax" and backend.device.platform == "gpu":
        return module.transfer_guard_device_to_host("disallow")
    pytest.skip(f"{backend.name} on {device}: no host synchronisation to detect, or no detector; "
                "NumPy's no-read arrays cover the CPU")


@contextmanager
def _torch_sync_errors(torch):
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@contextmanager
def _cupy_sync_errors(cupyx):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice
        with cupyx.allow_synchronize(False):
            yield
