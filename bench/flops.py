"""Floating-point operations of one training epoch, counted from the matrix products only.

For one sample (a row of the batch) with ``n_in`` inputs, ``hidden`` units and ``n_out`` classes,
a matrix product (m, k) @ (k, n) costs 2*m*k*n FLOPs (a multiply and an add per term), so per row:

    forward   x @ W1      2 * n_in * hidden
              h @ W2      2 * hidden * n_out
    backward  h.T @ d     2 * hidden * n_out     (dW2)
              d @ W2.T    2 * hidden * n_out     (dh)
              x.T @ dh    2 * n_in * hidden      (dW1)

    total = 2 * (2 * n_in * hidden + 3 * hidden * n_out)

Element-wise work (bias adds, ReLU, softmax, the update itself) is O(n_in * hidden) per *batch*,
not per sample, and is left out: the count is what a GEMM-bound implementation must do. For the
seed's 784-300-10 net that is 958,800 FLOPs per sample, 57.528 GFLOP per 60,000-sample epoch.
"""

from __future__ import annotations


def flops_per_sample(n_in: int = 784, hidden: int = 300, n_out: int = 10) -> int:
    return 2 * (2 * n_in * hidden + 3 * hidden * n_out)


def flops_per_epoch(n_samples: int = 60_000, n_in: int = 784, hidden: int = 300, n_out: int = 10) -> int:
    """FLOPs of the matrix products of one epoch (independent of the batch size)."""
    return n_samples * flops_per_sample(n_in, hidden, n_out)
