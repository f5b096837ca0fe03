"""What a CUDA machine's libraries charge per call, and whether CuPy can capture a matmul in a graph.

    python -m bench.gpu_probe OUT_DIR      # writes OUT_DIR/gpu-probe.json, prints a summary

At batch 64 the GPU step is ~22 kernels of microseconds each, so an epoch costs about 938 steps times
22 launches: the per-call cost on the host decides whether xpmlp on CuPy can keep up with PyTorch
eager (cupy/cupy#8191 reports CuPy's as the larger). The way round it is a CUDA graph of the whole
step, and CuPy's stream capture has refused most CUDA libraries, cuBLAS included (cupy/cupy#6290).
This probe measures both on the machine the benchmark ran on, in seconds, so the next change is
chosen on numbers: per-call microseconds of one (64, 300) elementwise product and one (64, 718) @
(718, 300) product in CuPy and in PyTorch, and whether CuPy captures and replays each of them.
Without a GPU it writes what it found (nothing) and exits 0.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any, Callable

SHAPES = {"x": (64, 718), "w": (718, 300), "h": (64, 300)}
CALLS = 2000  # per timing; medians of REPEATS timings
REPEATS = 5


def per_call_us(call: Callable[[], Any], sync: Callable[[], None]) -> float:
    """Median over REPEATS of the wall time of CALLS back-to-back calls, in µs per call, synchronised."""
    call()
    sync()
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(CALLS):
            call()
        sync()
        times.append((time.perf_counter() - started) / CALLS * 1e6)
    return round(statistics.median(times), 2)


def per_call_costs(x: Any, w: Any, h: Any, sync: Callable[[], None]) -> dict:
    """µs per call of the step's smallest elementwise product and its largest matmul."""
    return {"elementwise (64,300)": per_call_us(lambda: h * h, sync),
            "matmul (64,718)@(718,300)": per_call_us(lambda: x @ w, sync)}


def probe_cupy() -> dict:
    import cupy as cp

    if cp.cuda.runtime.getDeviceCount() == 0:
        return {"usable": False, "why": "no CUDA device"}
    x, w, h = (cp.random.random(SHAPES[k], dtype=cp.float32) for k in ("x", "w", "h"))
    sync = cp.cuda.get_current_stream().synchronize
    found: dict[str, Any] = {"usable": True, "version": cp.__version__, "us_per_call": per_call_costs(x, w, h, sync)}
    found["graph_capture"] = {
        "elementwise": _capture_cupy(cp, lambda: h * h, h * h),
        "matmul": _capture_cupy(cp, lambda: x @ w, x @ w),
    }
    return found


def _capture_cupy(cp: Any, work: Callable[[], Any], expected: Any) -> dict:
    """Capture ``work`` on a non-blocking stream, replay the graph 100 times, compare with ``expected``."""
    stream = cp.cuda.Stream(non_blocking=True)
    try:
        work()  # leaves a cached block of the output's size, so the captured call need not allocate
        with stream:
            stream.begin_capture()
            try:
                out = work()
            finally:
                graph = stream.end_capture()
            graph.launch(stream)
            stream.synchronize()
            ok = bool(cp.allclose(out, expected))
            started = time.perf_counter()
            for _ in range(100):
                graph.launch(stream)
            stream.synchronize()
        return {"ok": ok, "us_per_replay": round((time.perf_counter() - started) / 100 * 1e6, 2)}
    except Exception as exc:  # the finding is which error, not a crash
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


def probe_torch() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"usable": False, "why": "torch.cuda.is_available() is False"}
    x, w, h = (torch.rand(SHAPES[k], device="cuda") for k in ("x", "w", "h"))
    sync = torch.cuda.synchronize
    return {"usable": True, "version": torch.__version__, "us_per_call": per_call_costs(x, w, h, sync)}


def run_probe(probe: Callable[[], dict]) -> dict:
    try:
        return probe()
    except ImportError as exc:
        return {"usable": False, "why": f"not installed ({exc})"}
    except Exception as exc:  # e.g. CuPy without a driver fails at the first call
        return {"usable": False, "why": f"{type(exc).__name__}: {exc}"[:300]}


def summary(found: dict) -> list[str]:
    lines = []
    for library, result in found.items():
        if not result.get("usable"):
            lines.append(f"{library}: not usable ({result.get('why')})")
            continue
        costs = ", ".join(f"{op} {us} us" for op, us in result["us_per_call"].items())
        lines.append(f"{library} {result['version']}: per call {costs}")
        for op, outcome in result.get("graph_capture", {}).items():
            told = f"replay {outcome['us_per_replay']} us" if outcome["ok"] else outcome.get("error", "wrong result")
            lines.append(f"  graph capture of {op}: {'ok' if outcome['ok'] else 'FAILED'} ({told})")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.gpu_probe OUT_DIR", file=sys.stderr)
        return 2
    os.makedirs(argv[0], exist_ok=True)
    found = {"cupy": run_probe(probe_cupy), "torch": run_probe(probe_torch)}
    with open(os.path.join(argv[0], "gpu-probe.json"), "w") as f:
        json.dump(found, f, indent=1)
    print("\n".join(summary(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
