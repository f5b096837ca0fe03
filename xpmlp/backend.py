"""The one place that knows about array libraries.

A backend is a name, an Array-API namespace (:func:`namespace`: array-api-compat's, with a few
per-batch calls made directly on NumPy and PyTorch) and a device. Everything else in xpmlp asks this
module for a namespace, moves arrays with it and reads results back through :func:`to_numpy`;
nothing else names a library.
"""

from __future__ import annotations

import functools
import importlib
import os
import types
from dataclasses import dataclass
from typing import Any, Callable

import array_api_compat
import numpy as np

from .errors import BackendError, ConfigError, InputError

ENV_VAR = "XPMLP_BACKEND"
DEFAULT_BACKEND = "numpy"


_MODULE_OWN = ("__name__", "__doc__", "__package__", "__loader__", "__spec__", "__file__", "__path__",
               "__cached__", "__builtins__")


def _namespace_with(compat: types.ModuleType, name: str, doc: str | None, **calls: Callable) -> types.ModuleType:
    """A copy of the namespace ``compat`` under ``name``, with ``calls`` in place of its own."""
    ns = types.ModuleType(name, doc)
    ns.__dict__.update({k: v for k, v in vars(compat).items() if k not in _MODULE_OWN})
    ns.__dict__.update(calls)
    return ns


@functools.cache
def _numpy_with_array_methods() -> types.ModuleType:
    """array-api-compat's NumPy namespace, except that ``max``, ``sum``, ``take``, ``any`` and
    ``nonzero`` call the ndarray methods. array-api-compat passes those through to NumPy's function
    forms, which go through Python wrappers (``np.max`` -> ``_wrapreduction``) and cost 0.4-0.8 us
    more per call than ``x.max()``, the same computation. The training step makes five such calls
    per batch, seven where it skips zero columns; on a net too small to compute anything a step went
    from 20.2 to 17.0 us with the first three, and ``any`` and ``nonzero`` save 0.8 and 0.6 us more
    (3.3 -> 2.5 and 1.1 -> 0.5 us on a batch of 64)."""
    import array_api_compat.numpy as compat

    def max(x, /, *, axis=None, keepdims=False):  # noqa: A001 - the standard's names
        return x.max(axis=axis, keepdims=keepdims)

    def sum(x, /, *, axis=None, dtype=None, keepdims=False):  # noqa: A001
        return x.sum(axis=axis, dtype=dtype, keepdims=keepdims)

    def take(x, indices, /, *, axis=None):
        return x.take(indices, axis=axis)

    def any(x, /, *, axis=None, keepdims=False):  # noqa: A001
        return x.any(axis=axis, keepdims=keepdims)

    def nonzero(x, /):
        if x.ndim == 0:  # as the standard (and array-api-compat) have it
            raise ValueError("nonzero() does not support zero-dimensional arrays")
        return x.nonzero()

    return _namespace_with(compat, "xpmlp.backend.numpy", _numpy_with_array_methods.__doc__,
                           max=max, sum=sum, take=take, any=any, nonzero=nonzero)


@functools.cache
def _torch_with_direct_calls() -> types.ModuleType:
    """array-api-compat's PyTorch namespace, except for two calls that every training step makes
    and that array-api-compat routes through extra tensor operations:

    - ``take`` is ``torch.index_select`` alone. array-api-compat first maps negative indices with
      ``torch.where(indices < 0, indices + n, indices)``, three more operations per call. Here an
      index must lie in [0, n), as xpmlp's always do (a permutation, the kept columns); a negative
      one raises instead of counting from the end.
    - ``maximum`` of a floating tensor and a Python number is ``torch.clamp_min``: the same values,
      NaN included, without first making the number a tensor on the device, which array-api-compat
      does on every call (on CUDA, a host-to-device copy). Only a zero's sign can differ:
      ``maximum(-0.0, 0.0)`` is -0.0 here, as in NumPy, and 0.0 in ``torch.maximum``.

    On the CPU those two cost 26-43 us per step (2-core Intel Xeon, ``run_epoch`` on 15,000 samples,
    epochs alternating between array-api-compat's namespace and this one from the same start): the
    epochs got 1.11x faster at batch 8, 1.13x at 16, 1.11x at 32 and 1.10x at 64, with bit-identical
    parameters."""
    import array_api_compat.torch as compat
    import torch

    def take(x, indices, /, *, axis=None):
        if axis is None:
            if x.ndim != 1:
                raise ValueError("axis must be specified when ndim > 1")
            axis = 0
        return torch.index_select(x, axis, indices)

    def maximum(x1, x2, /):
        if (isinstance(x1, torch.Tensor) and x1.is_floating_point()
                and isinstance(x2, (int, float)) and not isinstance(x2, bool)):
            return torch.clamp_min(x1, x2)
        return compat.maximum(x1, x2)

    return _namespace_with(compat, "xpmlp.backend.torch", _torch_with_direct_calls.__doc__,
                           take=take, maximum=maximum)


def namespace(*arrays: Any) -> Any:
    """The Array-API namespace of ``arrays`` (TypeError when they mix libraries): array-api-compat's,
    with a few per-batch calls made directly: for NumPy arrays ``max``, ``sum``, ``take``, ``any``
    and ``nonzero`` bound to array methods, for PyTorch tensors ``take`` and ``maximum`` with a
    Python number (see the two functions above)."""
    xp = array_api_compat.array_namespace(*arrays)
    if array_api_compat.is_numpy_namespace(xp):
        return _numpy_with_array_methods()
    if array_api_compat.is_torch_namespace(xp):
        return _torch_with_direct_calls()
    return xp


@dataclass(frozen=True)
class BackendSpec:
    """How to import one library and tell whether it can run here."""

    name: str
    module: str
    install_hint: str
    check_usable: Callable[[Any, Any], None]  # (module, device) -> None, raises BackendError
    resolve_device: Callable[[Any, Any], Any]  # (module, device or None) -> the library's device object
    probe: Callable[[Any, Any], Any]  # (module, device) -> a tiny array, to learn the namespace


def _cpu_only(name: str) -> Callable[[Any, Any], None]:
    def check(_module: Any, device: Any) -> None:
        if device not in (None, "cpu") and str(device) != "CPU_DEVICE":
            raise BackendError(f"backend {name!r} runs on the CPU only; drop --device {device!r}")

    return check


def _check_cupy(cupy: Any, device: Any) -> None:
    # CuPy imports fine without a GPU, then fails at the first allocation: probe one.
    index = _cupy_device_index(device)  # a malformed --device is a usage error, not "cannot run here"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            raise RuntimeError("no CUDA device found")
        with cupy.cuda.Device(index):
            cupy.zeros(1).sum().item()
    except BackendError:
        raise
    except Exception as exc:  # CUDARuntimeError, driver/library load errors, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise BackendError(
            f"backend 'cupy' is installed but cannot run here ({reason}); "
            "use --backend numpy, or --backend auto to pick the GPU only when one works"
        ) from None


def _cupy_device_index(device: Any) -> int:
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    text = str(device)
    if text.startswith("cuda:"):
        text = text[5:]
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"invalid CuPy device {device!r}; use an index like 0 or cuda:0") from None


def _check_torch(torch: Any, device: Any) -> None:
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid torch device {device!r} ({exc}); use cpu or cuda:0") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendError(
            f"torch device {device!r} requested but CUDA is not available to this torch build; "
            "use --device cpu"
        )
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise BackendError(f"torch device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)")


def _check_jax(jax: Any, device: Any) -> None:
    try:
        _jax_device(jax, device)
    except (RuntimeError, IndexError, ValueError) as exc:
        platforms = sorted({d.platform for d in jax.devices()})
        raise BackendError(f"jax device {device!r} not available ({exc}); jax has {platforms}") from None


def _jax_device(jax: Any, device: Any) -> Any:
    if device is None:
        return jax.devices()[0]
    if not isinstance(device, str):
        return device
    kind, _, index = device.partition(":")
    kind = "gpu" if kind == "cuda" else kind
    return jax.devices(kind)[int(index or 0)]


def _cupy_probe(cupy: Any, device: Any) -> Any:
    with device:
        return cupy.zeros(1)


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("numpy", "numpy", "pip install numpy", _cpu_only("numpy"),
                    lambda np_, device: "cpu", lambda np_, device: np_.zeros(1)),
        BackendSpec("cupy", "cupy", "pip install 'xpmlp[cuda12]' (or [cuda13])", _check_cupy,
                    lambda cupy, device: cupy.cuda.Device(_cupy_device_index(device)), _cupy_probe),
        BackendSpec("torch", "torch", "pip install torch --index-url https://download.pytorch.org/whl/cpu "
                    "(the CPU build; 'xpmlp[torch]' pulls the CUDA one)", _check_torch,
                    lambda torch, device: torch.device(device or "cpu"),
                    lambda torch, device: torch.zeros(1, device=device)),
        BackendSpec("array_api_strict", "array_api_strict", "pip install array-api-strict",
                    _cpu_only("array_api_strict"),
                    lambda strict, device: strict.Device("CPU_DEVICE"), lambda strict, device: strict.zeros(1)),
        BackendSpec("jax", "jax", "pip install 'xpmlp[jax]'", _check_jax, _jax_device,
                    lambda jax, device: jax.device_put(jax.numpy.zeros(1), device)),
    )
}
CHOICES = (*BACKENDS, "auto")


@dataclass(frozen=True)
class Backend:
    """A usable array library: its Array-API namespace and the device arrays should live on."""

    name: str
    xp: Any
    device: Any
    module: Any

    def asarray(self, array: Any, dtype: Any = None) -> Any:
        """Copy a host array onto this backend's device (the one host->device copy)."""
        return self.xp.asarray(array, dtype=dtype, device=self.device)

    def synchronize(self) -> None:
        """Wait for queued device work (for honest timings); a no-op on the CPU."""
        synchronize(self.name, self.module, self.device)

    def describe(self) -> str:
        return f"{self.name} ({device_name(self)})"


def synchronize(name: str, module: Any, device: Any = None) -> None:
    if name == "cupy":
        module.cuda.get_current_stream().synchronize()
    elif name == "torch" and module.cuda.is_available():
        module.cuda.synchronize()
    elif name == "jax":
        module.effects_barrier()


def device_name(backend: Backend) -> str:
    if backend.name == "cupy":
        return f"cuda:{backend.device.id}"
    if backend.name == "array_api_strict":
        return "cpu"
    return str(backend.device) if backend.device is not None else "default"


def resolve_name(name: str | None = None) -> str:
    """The backend name to use: the argument, else $XPMLP_BACKEND, else 'numpy'. Validated."""
    chosen = name if name else os.environ.get(ENV_VAR, "").strip() or DEFAULT_BACKEND
    chosen = chosen.lower().replace("-", "_")
    if chosen not in CHOICES:
        origin = f"${ENV_VAR}" if not name else "backend"
        raise ConfigError(f"unknown {origin} {chosen!r}; valid names: {', '.join(CHOICES)}")
    return chosen


def _import(spec: BackendSpec) -> Any:
    try:
        return importlib.import_module(spec.module)
    except ImportError as exc:
        raise BackendError(
            f"backend {spec.name!r} is not installed ({exc}); install it with `{spec.install_hint}` "
            "or use --backend numpy"
        ) from None


def get_backend(name: str | None = None, device: Any = None) -> Backend:
    """Import, check and return a backend. ``name=None`` reads $XPMLP_BACKEND (default numpy).

    ``auto`` picks CuPy when a usable GPU is there, else NumPy. Raises BackendError with the
    reason and a suggestion when the library is missing or cannot run here; never switches silently.
    """
    chosen = resolve_name(name)
    if chosen == "auto":
        return auto_backend(device)[0]
    spec = BACKENDS[chosen]
    module = _import(spec)
    spec.check_usable(module, device)
    resolved = spec.resolve_device(module, device)
    xp = namespace(spec.probe(module, resolved))
    return Backend(chosen, xp, resolved, module)


def auto_backend(device: Any = None) -> tuple[Backend, str]:
    """CuPy on a usable GPU, else NumPy; with a sentence saying which was chosen and why."""
    try:
        backend = get_backend("cupy", device)
        return backend, f"--backend auto chose cupy ({device_name(backend)})"
    except BackendError as exc:
        reason = str(exc).split(";")[0]
        return get_backend("numpy"), f"--backend auto chose numpy: {reason}"


def backend_of(*arrays: Any) -> Backend:
    """The backend that holds ``arrays``; all must share one namespace and one device."""
    try:
        xp = namespace(*arrays)
    except TypeError as exc:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in arrays})
        raise InputError(
            f"arrays from different libraries in one call ({', '.join(kinds)}); "
            "move them to one backend first"
        ) from exc
    devices = {str(array_api_compat.device(a)) for a in arrays}
    if len(devices) > 1:
        raise InputError(f"arrays on different devices in one call ({', '.join(sorted(devices))}); "
                         "move them to one device first")
    sample = arrays[0]
    name = _name_of(sample)
    module = importlib.import_module(BACKENDS[name].module) if name in BACKENDS else None
    return Backend(name, xp, array_api_compat.device(sample), module)


def _name_of(array: Any) -> str:
    checks = (
        ("numpy", array_api_compat.is_numpy_array),
        ("cupy", array_api_compat.is_cupy_array),
        ("torch", array_api_compat.is_torch_array),
        ("jax", array_api_compat.is_jax_array),
    )
    for name, is_it in checks:
        if is_it(array):
            return name
    if type(array).__module__.startswith("array_api_strict"):
        return "array_api_strict"
    return type(array).__module__.split(".")[0]


def compiled(fn: Callable, xp: Any, static_argnames: tuple[str, ...] = ()) -> Callable:
    """``fn`` as it should run on ``xp``: under ``jax.jit`` on JAX (one XLA program per call instead
    of dozens of eager dispatches: an epoch at batch 64 went from 0.80 s to 0.38 s on 2 CPU cores),
    ``fn`` itself on the eager libraries. ``static_argnames`` are Python values the trace may branch on."""
    if array_api_compat.is_jax_namespace(xp):
        return _jax_jit(fn, tuple(static_argnames))
    return fn


@functools.lru_cache(maxsize=None)
def _jax_jit(fn: Callable, static_argnames: tuple[str, ...]) -> Callable:
    import jax  # only reached with a JAX namespace in hand

    return jax.jit(fn, static_argnames=static_argnames)  # cached: one trace per shape, not per epoch


def skips_zero_columns(x: Any) -> bool:
    """Whether a training step on ``x``'s library multiplies only the columns its batch uses
    (``training._step_on_used_columns``): on writeable NumPy arrays. That step has a batch-dependent
    shape and scatters the updated rows of W1 in place, so it needs a library that finds nonzeros
    without a device sync and writes integer-indexed rows (not in the standard: array-api-strict
    refuses it). Elsewhere the step stays dense: on a GPU ``nonzero`` would read the device every
    step, and JAX compiles fixed shapes. PyTorch on the CPU could run it, but its dense step is
    faster there: its extra calls cost more than the products save (alternating epochs on full
    MNIST, 2-core Intel Xeon with MKL: 1.15x at batch 8, 1.2x at 16 and 32, 1.31x at 64; against the
    step with the common-column block, 1.08x at 8 and 16, 1.20x at 64)."""
    return _name_of(x) == "numpy" and array_api_compat.is_writeable_array(x)


def deferred_update_rows(x: Any) -> int:
    """How many batch rows of updates to W1b a training step on ``x``'s library keeps as factors
    before applying them in one product (``training.update_deferred``), at most: where arrays are
    written in place on the CPU. Measured in ``run_epoch`` on full MNIST (2-core Intel Xeon,
    alternating epochs) against updating every step: on NumPy, with 128 rows, 1.40x faster at
    batch 8 to 1.04x at 56 (``training._step_on_used_columns``); on PyTorch's dense step, with 96
    rows, 1.37x at batch 8, 1.21x at 16, 1.10x at 24, 1.03x at 32, 0.97-1.00x at 40 and 48 (64 rows:
    1.38x, 1.18x, 1.04x, 1.00x; 128 rows as 96 up to 48, but 0.91x at 64). On a GPU an update is a
    cheap pass and the step is bound by kernel launches, which deferring adds (unmeasured there:
    none); JAX's arrays are immutable."""
    name = _name_of(x)
    if name == "numpy" and array_api_compat.is_writeable_array(x):
        return 128
    if name == "torch" and x.device.type == "cpu":
        return 96
    return 0


def index_dtype(xp: Any) -> Any:
    """The namespace's default integer for indices and labels (int32 on JAX without x64)."""
    return xp.__array_namespace_info__().default_dtypes()["indexing"]


def to_numpy(array: Any) -> np.ndarray:
    """Bring any backend's array to a host NumPy array (CuPy refuses np.asarray, strict lacks it)."""
    if isinstance(array, np.ndarray):
        return array
    if array_api_compat.is_cupy_array(array):
        return array.get()
    if array_api_compat.is_torch_array(array):
        return array.detach().cpu().numpy()
    if array_api_compat.is_jax_array(array):
        return np.asarray(array)
    try:
        return np.from_dlpack(array)
    except (TypeError, BufferError, RuntimeError, AttributeError):
        return np.asarray(array)
