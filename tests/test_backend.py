"""The backend registry: name resolution, clear refusals, host round-trips."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from xpmlp.backend import CHOICES, backend_of, compiled, get_backend, namespace, resolve_name, to_numpy
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


def test_a_malformed_cupy_device_is_a_usage_error_not_a_missing_gpu():
    # checked before the GPU probe, so --backend auto cannot mistake it for "no GPU" and fall back
    from types import SimpleNamespace

    from xpmlp.backend import _check_cupy
    from xpmlp.errors import ConfigError

    no_gpu = SimpleNamespace(cuda=SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=lambda: 0)))
    with pytest.raises(ConfigError, match="invalid CuPy device 'gpu-one'"):
        _check_cupy(no_gpu, "gpu-one")
    with pytest.raises(BackendError, match="no CUDA device found"):
        _check_cupy(no_gpu, "cuda:0")


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


# NumPy's namespace: array-api-compat's, with max/sum/take/any/nonzero bound to the ndarray methods (faster
# calls, the same computation). Each bound function must give what array-api-compat's gives: the
# same values bit for bit, dtype, shape and type (a NumPy scalar for a full reduction, as before).
_AXES = st.one_of(st.none(), st.integers(-2, 1), st.sampled_from([(0,), (0, 1), (-1, 0)]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from([(3, 4), (1, 5), (6, 1), (2, 3)]), dtype=st.sampled_from(["float32", "float64", "int64", "bool"]),
       axis=_AXES, keepdims=st.booleans(), seed=st.integers(0, 2**16))
def test_numpy_reductions_match_array_api_compat(shape, dtype, axis, keepdims, seed):
    import array_api_compat.numpy as compat

    xp = get_backend("numpy").xp
    x = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    x[np.random.default_rng(seed + 1).random(shape) < 0.4] = 0  # zeros, so `any` sees both answers
    for name in ("max", "sum", "any"):
        expected, got = getattr(compat, name)(x, axis=axis, keepdims=keepdims), getattr(xp, name)(x, axis=axis, keepdims=keepdims)
        assert type(got) is type(expected) and got.dtype == expected.dtype and np.shape(got) == np.shape(expected)
        np.testing.assert_array_equal(got, expected, strict=True)
    if dtype != "bool":
        wide = "float64" if dtype.startswith("float") else "int64"
        np.testing.assert_array_equal(xp.sum(x, axis=axis, dtype=getattr(xp, wide)),
                                      compat.sum(x, axis=axis, dtype=getattr(compat, wide)), strict=True)


@settings(max_examples=40, deadline=None)
@given(axis=st.sampled_from([None, 0, 1, -1]), indices=st.lists(st.integers(0, 2), min_size=0, max_size=6))
def test_numpy_take_matches_array_api_compat(axis, indices):
    import array_api_compat.numpy as compat

    xp = get_backend("numpy").xp
    x, idx = np.arange(12.0).reshape(3, 4), np.asarray(indices, dtype=np.int64)
    np.testing.assert_array_equal(xp.take(x, idx, axis=axis), compat.take(x, idx, axis=axis), strict=True)


@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from([(5,), (3, 4), (2, 1, 3)]), seed=st.integers(0, 2**16))
def test_numpy_nonzero_matches_array_api_compat(shape, seed):
    import array_api_compat.numpy as compat

    xp = get_backend("numpy").xp
    x = np.where(np.random.default_rng(seed).random(shape) < 0.5, 0.0, 1.5)
    got, expected = xp.nonzero(x), compat.nonzero(x)
    assert type(got) is type(expected) and len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e, strict=True)
    for library in (xp, compat):
        with pytest.raises(ValueError):
            library.nonzero(np.float64(1.0))  # 0-d: an error, as the standard says


def test_numpy_namespace_is_array_api_compat_but_for_five_methods():
    import array_api_compat
    import array_api_compat.numpy as compat

    x = np.ones(3)
    xp = get_backend("numpy").xp
    assert backend_of(x).xp is xp and namespace(x) is xp and namespace(np.float32(1.0), x) is xp
    public = [name for name in compat.__all__ if not name.startswith("__")]
    assert len(public) > 150  # the whole standard namespace, not a few names
    differs = {name for name in public if getattr(xp, name) is not getattr(compat, name)}
    assert differs == {"max", "sum", "take", "any", "nonzero"}
    assert xp.__array_api_version__ == compat.__array_api_version__
    assert xp.__array_namespace_info__().default_dtypes() == compat.__array_namespace_info__().default_dtypes()
    assert not array_api_compat.is_jax_namespace(xp)  # so `compiled` leaves NumPy's step alone
    with pytest.raises(TypeError):
        xp.max(x, 0)  # axis is keyword-only in the standard, as in array-api-compat's own


# PyTorch's namespace: array-api-compat's, with `take` and `maximum`-with-a-Python-number made
# directly (no index remapping, no scalar-to-tensor copy per call). Same contract as above: what
# array-api-compat gives, bit for bit, dtype and shape, for every input xpmlp can pass.
def _torch_and_compat():
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as compat

    return torch, compat, get_backend("torch").xp


@settings(max_examples=40, deadline=None)
@given(axis=st.sampled_from([None, 0, 1, -1]), indices=st.lists(st.integers(0, 2), min_size=0, max_size=6))
def test_torch_take_matches_array_api_compat_for_indices_in_range(axis, indices):
    torch, compat, xp = _torch_and_compat()
    x = torch.arange(12.0).reshape(3, 4) if axis is not None else torch.arange(3.0)
    idx = torch.asarray(indices, dtype=torch.int64)
    got, expected = xp.take(x, idx, axis=axis), compat.take(x, idx, axis=axis)
    assert got.dtype == expected.dtype and got.shape == expected.shape and torch.equal(got, expected)


def test_torch_take_refuses_what_it_does_not_remap():
    torch, compat, xp = _torch_and_compat()
    x = torch.arange(6.0).reshape(2, 3)
    with pytest.raises(ValueError, match="axis"):
        xp.take(x, torch.asarray([0]))  # 2-D without an axis, as the standard and array-api-compat say
    with pytest.raises((IndexError, RuntimeError)):
        xp.take(x, torch.asarray([-1]), axis=0)  # a negative index raises instead of counting from the end


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(["float32", "float64"]), bound=st.sampled_from([0.0, 0, -43.7, 1.5, -1e30]),
       seed=st.integers(0, 2**16))
def test_torch_maximum_with_a_python_number_matches_array_api_compat(dtype, bound, seed):
    torch, compat, xp = _torch_and_compat()
    values = np.random.default_rng(seed).normal(scale=50.0, size=(4, 5)).astype(dtype)
    values[0, :3] = [np.nan, -0.0, 0.0]  # NaN propagates
    x = torch.asarray(values)
    got, expected = xp.maximum(x, bound), compat.maximum(x, bound)
    assert got.dtype == expected.dtype == x.dtype and got.shape == expected.shape
    # equal values; a zero's sign may differ (max(-0.0, 0) is -0.0 here and in NumPy, 0.0 in torch.maximum)
    np.testing.assert_array_equal(got.numpy(), expected.numpy(), strict=True)


def test_torch_maximum_leaves_every_other_case_to_array_api_compat():
    torch, compat, xp = _torch_and_compat()
    ints, floats = torch.asarray([-2, 0, 3]), torch.asarray([-1.0, 2.0, 0.5])
    for x1, x2 in ((ints, 0), (floats, floats.flip(0)), (0.25, floats), (floats, True)):
        got, expected = xp.maximum(x1, x2), compat.maximum(x1, x2)
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_torch_namespace_is_array_api_compat_but_for_two_functions():
    import array_api_compat

    torch, compat, xp = _torch_and_compat()
    x = torch.ones(3)
    assert backend_of(x).xp is xp and namespace(x) is xp and namespace(x, torch.zeros(2)) is xp
    public = [name for name in compat.__all__ if not name.startswith("__")]
    assert len(public) > 150
    differs = {name for name in public if getattr(xp, name) is not getattr(compat, name)}
    assert differs == {"take", "maximum"}
    assert xp.__array_api_version__ == compat.__array_api_version__
    assert xp.__array_namespace_info__().default_dtypes() == compat.__array_namespace_info__().default_dtypes()
    assert not array_api_compat.is_jax_namespace(xp)
