"""The `backend` fixture: one parametrisation per array library, skipped inside when unusable.

`XPMLP_TEST_BACKENDS=cupy,torch-cuda` (comma list of the ids below) restricts the run, e.g. on a
GPU machine; by default every backend is tried and those missing or without a device skip.
"""

import os

import numpy as np
import pytest

from xpmlp.backend import get_backend
from xpmlp.errors import BackendError

BACKEND_IDS = {  # fixture id -> (backend name, device)
    "numpy": ("numpy", None),
    "array_api_strict": ("array_api_strict", None),
    "torch": ("torch", "cpu"),
    "torch-cuda": ("torch", "cuda:0"),
    "cupy": ("cupy", None),
    "jax": ("jax", None),
}


def _selected() -> list[str]:
    wanted = os.environ.get("XPMLP_TEST_BACKENDS", "").strip()
    if not wanted:
        return list(BACKEND_IDS)
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    unknown = sorted(set(names) - set(BACKEND_IDS))
    if unknown:
        raise pytest.UsageError(f"XPMLP_TEST_BACKENDS: unknown {unknown}; valid: {sorted(BACKEND_IDS)}")
    return names


@pytest.fixture(params=[pytest.param(i, id=i) for i in _selected()])
def backend(request):
    name, device = BACKEND_IDS[request.param]
    try:
        chosen = get_backend(name, device)
    except BackendError as exc:
        pytest.skip(f"{request.param} not usable here: {exc}")
    if name == "jax":
        chosen.module.config.update("jax_enable_x64", True)
    return chosen


@pytest.fixture(scope="session")
def mnist():
    from xpmlp.data import load_mnist

    return load_mnist()


def small_batch(seed: int = 0, n: int = 32, features: int = 784, classes: int = 10):
    rng = np.random.default_rng(seed)
    return rng.random((n, features)), rng.integers(0, classes, n)
