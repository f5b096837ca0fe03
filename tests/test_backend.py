"""The backend registry: name resolution, clear refusals, host round-trips."""

import numpy as np
import pytest

from xpmlp.backend import CHOICES, backend_of, compiled, get_backend, resolve_name, to_numpy
from xpmlp.errors import BackendError, ConfigError, InputError


def test_argument_beats_environment_beats_default(monkeypatch):
    monkeypatch.delenv("XPMLP_BACKEND", raising=False)
    assert resolve_name() == "numpy"
    monkeypatch.setenv("XPMLP_BACKEND", "torch")  # read when asked, not at import
    assert resolve_name() == "torch"
    assert resolve_name("array-api-strict") == "array_api_strict"


def test_unknown_names_list_the_valid_ones(monkeypatch):
    with pytest.raises(ConfigError, match="unknown backend 'mxnet'; valid names: numpy, cupy, torch"):
        resolve_name("mxnet")
    monkeypatch.setenv("XPMLP_BACKEND", "tf")
    with pytest.raises(ConfigError, match=r"\$XPMLP_BACKEND 'tf'"):
        get_backend()
    assert "auto" in CHOICES


def test_cpu_only_backends_refuse_a_gpu_device():
    with pytest.raises(BackendError, match="CPU only"):
        get_backend("numpy", "cuda:0")


def test_cupy_without_a_gpu_says_why_and_what_to_do():
    try:
        get_backend("cupy")
    except BackendError as exc:
        assert "--backend numpy" in str(exc)
    else:
        pytest.skip("cupy is usable here")


def test_auto_falls_back_to_numpy_only_without_a_usable_gpu():
    from xpmlp.backend import auto_backend

    backend, note = auto_backend()
    assert backend.name in ("cupy", "numpy") and f"chose {backend.name}" in note


def test_round_trip_to_host(backend):
    host = np.arange(12, dtype=np.float64).reshape(3, 4)
    back = to_numpy(backend.asarray(host, backend.xp.float64))
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)


def test_backend_of_names_the_library_and_device(backend):
    array = backend.asarray(np.zeros(3), backend.xp.float64)
    found = backend_of(array, array)
    assert found.name == backend.name and found.xp is backend.xp


def test_mixed_libraries_are_refused():
    strict = get_backend("array_api_strict")
    with pytest.raises(InputError, match="different libraries"):
        backend_of(np.zeros(2), strict.asarray(np.zeros(2)))


def test_the_step_is_compiled_only_where_a_compiler_pays(backend):
    # JAX: one jitted program, built once (the same object every epoch, so no re-trace); the eager
    # libraries: the plain function, unchanged.
    from xpmlp.model import train_step

    step = compiled(train_step, backend.xp, static_argnames=("lr",))
    if backend.name == "jax":
        assert step is not train_step and hasattr(step, "lower")
        assert compiled(train_step, backend.xp, static_argnames=("lr",)) is step
    else:
        assert step is train_step
