"""One benchmark row in its own process, driven by ``bench.__main__`` over a pipe.

Why a long-lived process per row: its peak RSS is its own (each library's allocator and thread
pools stay out of the others' numbers), PyTorch's spinning OpenMP threads and OpenBLAS's pthreads
never share a process, and the parent can still interleave rows epoch by epoch, because it sends
one command at a time and waits for the answer (only one row computes at any moment).

Protocol: JSON lines. The first line configures the row; then ``epoch``, ``gemm``, ``stats`` and
``quit`` commands, each answered by one line. C-level prints from libraries go to stderr, so the
protocol channel stays clean.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time
import traceback


def _rss_status() -> dict:
    """VmRSS and VmHWM (peak) of this process in bytes, from /proc (Linux), else ru_maxrss."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    if "VmHWM" not in out:
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _threadpools() -> list:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "num_threads", "version", "threading_layer", "architecture", "prefix")
    return [{k: v for k, v in pool.items() if k in keep} for pool in threadpool_info()]


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by libraries goes to stderr
    sys.stdout = sys.stderr

    def reply(obj):
        proto.write(json.dumps(obj) + "\n")

    config = json.loads(sys.stdin.readline())
    try:
        import numpy as np

        from bench.impls import Unavailable, make
        from xpmlp.data import load_mnist
        from xpmlp.model import init_params

        limiter = None
        if config.get("threads"):
            from threadpoolctl import threadpool_limits

            limiter = threadpool_limits(config["threads"])  # kept alive for the whole run
            if config["impl"].startswith(("torch", "xpmlp-torch")):
                import torch

                torch.set_num_threads(config["threads"])
        data = load_mnist()
        limit = config.get("limit") or data.x_train.shape[0]
        x, y = data.x_train[:limit], data.y_train[:limit]
        del data
        try:
            impl = make(config["impl"], x, y, config["dtype"])
        except Unavailable as exc:
            reply({"ok": False, "reason": str(exc)})
            return
        del x
        gc.collect()
        n = limit
        host_init = tuple(init_params(np.random.default_rng(config["seed"]), 784, config["hidden"], 10,
                                      init=config["init"], dtype="float64"))
        runs = {}  # batch size -> [state, rng]: each batch size is its own training run
        reset_ok = _reset_peak_rss()
        baseline = _rss_status().get("VmRSS")
        reply({"ok": True, "name": impl.name, "device": impl.device, "library": impl.library,
               "dtype": impl.dtype, "trains": impl.trains, "n_train": n, "product_inputs": impl.product_inputs, "versions": impl.versions(), "threadpools": _threadpools(),
               "rss_baseline_bytes": baseline, "peak_reset": reset_ok})
    except Exception as exc:  # a broken row is reported, not fatal to the suite
        reply({"ok": False, "reason": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return

    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "epoch":
                bs = cmd["batch"]
                if bs not in runs:
                    runs[bs] = [impl.init(host_init), np.random.default_rng([config["seed"], bs])]
                state, rng = runs[bs]
                start = time.perf_counter()
                order = rng.permutation(n)
                state, loss_sum, hits = impl.epoch(state, order, bs, cmd["lr"])  # synchronised
                seconds = time.perf_counter() - start
                runs[bs][0] = state
                done = {"seconds": seconds, "loss": loss_sum / (n / bs), "accuracy": hits / n}
                executed = impl.executed_inputs(order, bs, config["hidden"])  # after the clock stopped
                reply(done if executed is None else {**done, "product_inputs": executed})
            elif cmd["cmd"] == "gemm":
                gflops = impl.gemm_rate(cmd.get("n", 2048), cmd.get("repeats", 5))
                gc.collect()
                if not runs:  # keep the GEMM's big matrices out of the training peak
                    _reset_peak_rss()
                    baseline = _rss_status().get("VmRSS")
                reply({"gflops": gflops})
            elif cmd["cmd"] == "stats":
                rss = _rss_status()
                reply({"peak_rss_bytes": rss["VmHWM"], "rss_baseline_bytes": baseline,
                       "device_peak_bytes": impl.peak_device_memory()})
            elif cmd["cmd"] == "quit":
                reply({"bye": True})
                return
            else:
                reply({"error": f"unknown command {cmd['cmd']!r}"})
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


if __name__ == "__main__":
    main()
