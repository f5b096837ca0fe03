"""xpmlp: the seed notebook's MNIST MLP, written once against the Python Array API standard.

The same functions run on NumPy, CuPy, PyTorch, JAX or array-api-strict arrays; results stay in
the caller's library and on the caller's device.
"""

__version__ = "0.1.0"

from .backend import Backend, backend_of, get_backend, to_numpy  # noqa: E402
from .data import Dataset, load_dataset, load_mnist  # noqa: E402
from .errors import (  # noqa: E402
    BackendError, ConfigError, DataError, DivergenceError, InputError, ModelFileError, XpmlpError,
)
from .io import load_model, save_model  # noqa: E402
from .model import (  # noqa: E402
    Params, cross_entropy, forward, init_params, loss_and_grads, one_hot, predict, relu, sgd_step, sgd_update,
    softmax, train_step,
)
from .training import TrainConfig, fit  # noqa: E402

__all__ = [
    "Backend", "BackendError", "ConfigError", "DataError", "Dataset", "DivergenceError", "InputError",
    "ModelFileError", "Params", "TrainConfig", "XpmlpError", "backend_of", "cross_entropy", "fit", "forward",
    "get_backend", "init_params", "load_dataset", "load_mnist", "load_model", "loss_and_grads", "one_hot",
    "predict", "relu", "save_model", "sgd_step", "sgd_update", "softmax", "to_numpy", "train_step",
]
