"""The seed's two-layer MLP as pure functions of ``(params, batch)``, written against the Array API.

``params`` is a plain tuple ``(W1, b1, W2, b2)`` with shapes ``(n_in, H), (H,), (H, n_out),
(n_out,)``. Every function takes the namespace from its arguments, returns arrays of that namespace
on the same device, and never reads a value back to the host.

The maths is the seed notebook's, exactly: ReLU hidden layer, softmax output, cross-entropy on
probabilities clipped to ``[1e-15, 1]`` (batch mean), and plain SGD on the gradient *summed* over
the batch, ``W -= lr * h.T @ (p - onehot)``. The training step floors probabilities below 1.1e-19
(float32) to keep subnormal numbers out of it, which changes no printed number (``scaled_grads``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import device

from .backend import index_dtype, namespace

PROB_CLIP = 1e-15
INITS = ("seed", "he")
DTYPES = ("float32", "float64")


class Params(NamedTuple):
    W1: Any
    b1: Any
    W2: Any
    b2: Any


class StepStats(NamedTuple):
    loss: Any  # 0-d array: the batch's mean clipped cross-entropy
    n_correct: Any  # 0-d integer array: argmax hits in the batch


def init_params(
    rng: np.random.Generator | int,
    n_in: int = 784,
    n_hidden: int = 300,
    n_out: int = 10,
    *,
    init: str = "seed",
    dtype: str = "float32",
    xp: Any = None,
    device: Any = None,
) -> Params:
    """Draw initial parameters on the host, then copy them to ``xp`` on ``device``.

    ``init="seed"``: weights ~ N(0, 1) unscaled, biases 0, as the notebook does (its numbers
    reproduce only with this). ``init="he"``: weights ~ N(0, 2 / fan_in), which trains sanely.
    Drawing on the host in float64 makes one seed give the same start on every backend.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    w1 = rng.standard_normal((n_in, n_hidden))
    w2 = rng.standard_normal((n_hidden, n_out))
    if init == "he":
        w1 *= np.sqrt(2.0 / n_in)
        w2 *= np.sqrt(2.0 / n_hidden)
    host = Params(w1, np.zeros(n_hidden), w2, np.zeros(n_out))
    return params_to(host, xp if xp is not None else np, dtype, device)


def params_to(params: Params, xp: Any, dtype: str, device: Any = None) -> Params:
    """The same parameters as ``dtype`` arrays of namespace ``xp`` on ``device``."""
    target = getattr(xp, dtype)
    return Params(*(xp.asarray(p, dtype=target, device=device) for p in params))


def relu(z: Any) -> Any:
    xp = namespace(z)
    return xp.maximum(z, 0.0)  # one pass; a Python scalar operand is standard since 2024.12


def softmax(logits: Any) -> Any:
    """Row-wise softmax, shifted by the row max so logits of 1e4 do not overflow."""
    return _softmax(namespace(logits), logits)


def _softmax(xp: Any, logits: Any, floor: float | None = None) -> Any:
    """``floor``, when given, bounds the shifted logits from below (``scaled_grads`` says why)."""
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(shifted if floor is None else xp.maximum(shifted, floor))
    return e / xp.sum(e, axis=-1, keepdims=True)


@functools.lru_cache(maxsize=None)
def normal_floor(xp: Any, dtype: Any) -> float:
    """log(sqrt(smallest normal)) of ``dtype``: -43.7 in float32, -354.4 in float64. A shifted logit
    floored there gives a probability of at least sqrt(smallest normal) / n_out (1.1e-20 in float32
    with 10 classes), and a product of two such numbers is still a normal one."""
    return math.log(math.sqrt(float(xp.finfo(dtype).smallest_normal)))


def sample_losses(probs: Any, labels: Any) -> Any:
    """Each row's -log(p[label]), with p clipped to [1e-15, 1] as the seed does; shape (B,)."""
    xp = namespace(probs)
    target = xp.take_along_axis(probs, as_index(xp, labels)[:, None], axis=1)[:, 0]
    # softmax gives p = e / sum(e) <= 1 exactly (e <= sum(e)), so the upper clip is a no-op and
    # maximum() does the seed's clip in one cheap call
    return -xp.log(xp.maximum(target, PROB_CLIP))


def cross_entropy(probs: Any, labels: Any) -> Any:
    """Mean of -log(p[label]) with p clipped to [1e-15, 1], as the seed computes it."""
    xp = namespace(probs)
    return xp.sum(sample_losses(probs, labels)) / probs.shape[0]


def one_hot(labels: Any, n_classes: int, dtype: Any) -> Any:
    """``(B,)`` class indices -> ``(B, n_classes)`` rows of 0 and 1 in ``dtype``, on their device."""
    xp = namespace(labels)
    return xp.astype(as_index(xp, labels)[:, None] == xp.arange(n_classes, device=device(labels))[None, :], dtype)


def as_index(xp: Any, labels: Any) -> Any:
    """Integer labels in the namespace's index dtype (no copy when they already are): torch's
    take_along_axis takes int64 only, the standard does not compare uint64 with int64, and a hit
    count kept in uint8 would wrap."""
    return xp.astype(labels, index_dtype(xp), copy=False)


def forward(params: Params, x: Any) -> Any:
    """Class probabilities for a batch ``x`` of shape ``(B, n_in)``."""
    return softmax(_logits(params, x))


def _logits(params: Params, x: Any) -> Any:
    W1, b1, W2, b2 = params
    return relu(x @ W1 + b1) @ W2 + b2


def predict(params: Params, x: Any) -> Any:
    """Predicted class indices for ``x`` (argmax of the logits: softmax keeps the order)."""
    return namespace(x).argmax(_logits(params, x), axis=1)


def batch_stats(probs: Any, labels: Any) -> StepStats:
    """The batch's mean clipped cross-entropy and its argmax hit count, both 0-d device arrays."""
    xp = namespace(probs, labels)
    labels = as_index(xp, labels)
    return StepStats(cross_entropy(probs, labels), xp.count_nonzero(xp.argmax(probs, axis=1) == labels))


def loss_and_grads(params: Params, x: Any, labels: Any, scale: float = 1.0) -> tuple[StepStats, Params]:
    """Batch-mean loss, hit count, and ``scale`` times the gradient of the *summed* loss (the seed's).

    ``labels`` are integer class indices.
    """
    xp = namespace(x, labels)
    targets = one_hot(labels, params.W2.shape[1], x.dtype)
    probs, grads = scaled_grads(xp, fold_bias(params), with_ones_column(x), targets, scale)
    return batch_stats(probs, labels), unfold_bias(grads)


class FoldedParams(NamedTuple):
    """The training step's form of ``Params``: b1 is W1's last row, for inputs that end in a column
    of ones. Then ``x @ W1b`` is ``x @ W1 + b1`` in one product, and the gradient product
    ``x.T @ d_hidden`` has b1's gradient (the column sums of ``d_hidden``) as its last row."""

    W1b: Any  # (n_in + 1, H)
    W2: Any
    b2: Any


def with_ones_column(x: Any) -> Any:
    """``x`` with a column of ones appended, the input ``FoldedParams`` expect."""
    xp = namespace(x)
    return xp.concat([x, xp.ones((x.shape[0], 1), dtype=x.dtype, device=device(x))], axis=1)


def fold_bias(params: Params) -> FoldedParams:
    xp = namespace(params.W1)
    return FoldedParams(xp.concat([params.W1, params.b1[None, :]], axis=0), params.W2, params.b2)


def unfold_bias(folded: FoldedParams) -> Params:
    return Params(folded.W1b[:-1, ...], folded.W1b[-1, ...], folded.W2, folded.b2)


def scaled_grads(xp: Any, params: FoldedParams, x1: Any, targets: Any, scale: float) -> tuple[Any, FoldedParams]:
    """The seed's forward and backward pass on a batch ``x1`` (inputs, then a column of ones) with
    one-hot ``targets``: the batch's probabilities and ``scale`` times the summed loss's gradient.

    ``scale`` multiplies the small (B, n_out) output error before the products, so a step gets
    ``lr * gradient`` without a scaled copy of every weight matrix. ReLU is a product with the 0/1
    mask of active units, which the backward pass reuses: the seed's values (a negative unit gives
    -0.0 instead of 0.0, which no sum or product below can tell apart), in fewer, cheaper calls than
    ``maximum`` plus ``where`` (NumPy: 5.2 us against 12 us per step at batch 64).

    The softmax's shifted logits are floored at ``normal_floor`` (-43.7 in float32), so that no
    probability, output error or gradient entry is a subnormal number: x86 CPUs take a microcode
    assist for each operation on one, and with the seed's N(0, 1) weights the softmax saturates (on
    an Intel Xeon, an epoch at batch 64 took 1.7x as long once 9% of the probabilities had gone
    subnormal). The floor moves only probabilities below 1.1e-19, so it changes no loss (the clip is
    at 1e-15), no prediction, and a gradient entry by at most ``scale * 1.1e-19 * n_out`` times the
    input or hidden value it multiplies. In a row whose error is not exactly zero, that is at most
    2e-11 of the row's largest error term (>= 6e-8 in float32), 3,000 times below its rounding.
    """
    W1b, W2, b2 = params
    probs, hidden, d_logits, d_hidden = layer_errors(xp, x1 @ W1b, W2, b2, targets, scale)
    return probs, FoldedParams(x1.T @ d_hidden, hidden.T @ d_logits, xp.sum(d_logits, axis=0))


def layer_errors(xp: Any, z: Any, W2: Any, b2: Any, targets: Any, scale: float) -> tuple[Any, Any, Any, Any]:
    """``scaled_grads`` from the hidden layer's pre-activation ``z = x1 @ W1b`` on: the batch's
    probabilities, the hidden activations, and ``scale`` times the output and hidden errors, from
    which the gradient products follow (``x1.T @ d_hidden`` for W1b). A step that computes ``z`` as
    a sum of products over blocks of columns (``training._step_on_used_columns``) shares the rest."""
    active = xp.astype(z > 0, z.dtype)
    hidden = z * active
    probs = _softmax(xp, hidden @ W2 + b2, normal_floor(xp, z.dtype))
    d_logits = scale * (probs - targets)
    d_hidden = (d_logits @ W2.T) * active
    return probs, hidden, d_logits, d_hidden


def sgd_step(params: Params, grads: Params, lr: float) -> Params:
    """``p - lr * g`` for every parameter; new arrays, inputs untouched (safe on immutable backends)."""
    return Params(*(p - lr * g for p, g in zip(params, grads)))


def sgd_update(params: Params, x: Any, targets: Any, lr: float) -> tuple[Params, Any]:
    """One SGD step on a batch with one-hot ``targets`` (see ``one_hot``): the new parameters, and
    the batch's probabilities under the old ones, from which a caller can take the loss and hits
    later (``batch_stats``), e.g. once per epoch instead of once per step.

    Equal to ``sgd_step(params, loss_and_grads(params, x, labels)[1], lr)`` up to rounding (the
    products see ``lr * error`` instead of being scaled after: a few ulps apart).
    """
    folded = fold_bias(params)
    probs, steps = scaled_grads(namespace(x, targets), folded, with_ones_column(x), targets, lr)
    return unfold_bias(descend(folded, steps)), probs


def descend(params: FoldedParams, steps: FoldedParams) -> FoldedParams:
    """``p - step`` for every parameter, as new arrays (the form every backend, JAX included, allows;
    in place measured slower on NumPy here)."""
    return FoldedParams(params.W1b - steps.W1b, params.W2 - steps.W2, params.b2 - steps.b2)


def train_step(params: Params, x: Any, labels: Any, lr: float) -> tuple[Params, StepStats]:
    """One SGD step on one batch of integer ``labels``: the new parameters and the batch's loss
    and hit count (under the parameters it started from)."""
    new_params, probs = sgd_update(params, x, one_hot(labels, params.W2.shape[1], x.dtype), lr)
    return new_params, batch_stats(probs, labels)
