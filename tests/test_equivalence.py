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
