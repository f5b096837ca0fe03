"""``python -m bench``: time every implementation of the seed's MLP, interleaved, and report.

Each row runs in its own long-lived worker process (bench/worker.py) so its peak memory is its own
and no two libraries' thread pools share a process; the parent interleaves them epoch by epoch:
for every round, for every batch size, for every row (order rotated each round) -> one epoch.
Only one worker computes at any moment. See bench/README.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from xpmlp.cli import (
    OneLineErrorParser, non_negative_int, non_negative_number, parse_batch_sizes, positive_int,
    positive_number,
)

from .impls import CPU_ROWS, GPU_ROWS, IMPLS
from .report import FULL_EPOCH as MNIST_TRAIN  # MNIST's training samples, one place

ROOT = Path(__file__).resolve().parent.parent
SWEEP = list(range(8, 65, 8))
QUICK_SIZES = [8, 32, 64]
QUICK_LIMIT = 15_000
# this machine class flips between states ~1.5x apart for seconds at a time (a seed epoch at b64
# measured 0.76 s and 1.07 s in consecutive rounds); a median of 5 is out of reach of two outliers
FULL_REPEATS, QUICK_REPEATS = 5, 3


def parse_args(argv=None):
    p = OneLineErrorParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"batch sizes {QUICK_SIZES}, first {QUICK_LIMIT} samples (under 3 minutes on 2 cores)")
    p.add_argument("--gpu", action="store_true", help="only the GPU rows (xpmlp on cupy/torch-cuda/jax, the "
                   "PyTorch peers on CUDA, jax-jit) plus the seed CPU baseline")
    p.add_argument("--impls", help=f"comma-separated rows (default: all that run here): {', '.join(IMPLS)}")
    p.add_argument("--batch-sizes", type=parse_batch_sizes, metavar="SPEC",
                   help="a list (8,32,64) or start:stop:step, stop included (default: the seed's sweep 8:64:8)")
    p.add_argument("--seed-batch-sizes", type=parse_batch_sizes, metavar="SPEC",
                   help="batch sizes for the seed row only, some of --batch-sizes (default: all of them)")
    p.add_argument("--repeats", type=positive_int, help=f"timed epochs per row and batch size (default "
                   f"{FULL_REPEATS} for the full CPU run, {QUICK_REPEATS} with --quick or --gpu)")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed warm-up epochs first (default 1)")
    p.add_argument("--limit", type=positive_int,
                   help=f"train on the first N samples (default {MNIST_TRAIN}; --quick: {QUICK_LIMIT})")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="dtype of every row but seed, which is float64 as in the notebook")
    p.add_argument("--hidden", type=positive_int, default=300, help="hidden units (default 300)")
    p.add_argument("--lr", type=positive_number, default=0.01,
                   help="learning rate of the summed-gradient SGD step (default 0.01)")
    p.add_argument("--init", default="seed", choices=["seed", "he"],
                   help="initial weights, as xpmlp-train --init (default seed: the notebook's N(0,1))")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the starting weights and the epochs' orders (default 0)")
    p.add_argument("--threads", type=positive_int,
                   help="BLAS/OpenMP threads per row (threadpoolctl + torch.set_num_threads); "
                   "default: the libraries' own choice (all cores). Use 1 when other jobs share the cores: "
                   "OpenBLAS's spinning threads slow down many-fold when a core is taken")
    p.add_argument("--gap", type=non_negative_number, default=0.3,
                   help="seconds to sleep before each epoch, so the previous row's spinning BLAS/OpenMP threads "
                        "(OpenBLAS spins ~0.1 s after its last call) go idle first (default 0.3)")
    p.add_argument("--gemm-n", type=positive_int, default=2048,
                   help="size of the square matmul that measures the peak (default 2048)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="output folder (default bench/results)")
    p.add_argument("--tag", help="output file stem (default: cpu / gpu, with -quick)")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    return p, p.parse_args(argv)


def check_options(args, sizes: list[int], seed_sizes: list[int], limit: int) -> str | None:
    """What is wrong with a combination of options, or None: checked before any worker starts."""
    if args.tag is not None and (not args.tag or os.sep in args.tag or args.tag.startswith(".")):
        return f"--tag {args.tag!r}: a file stem is needed, without a folder (use --out for the folder)"
    if Path(args.out).exists() and not Path(args.out).is_dir():
        return f"--out {args.out}: is a file, not a folder"
    if limit > MNIST_TRAIN:
        return f"--limit {limit}: MNIST has {MNIST_TRAIN} training samples"
    if max(sizes) > limit:
        return f"batch size {max(sizes)} is larger than the {limit} samples; lower it or raise --limit"
    extra = sorted(set(seed_sizes) - set(sizes))
    if extra:
        return f"--seed-batch-sizes {','.join(map(str, extra))}: not among the batch sizes {','.join(map(str, sizes))}"
    return None


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        info["affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["affinity"] = None
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
        info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx_vnni") if f in flags]
    except OSError:
        info["cpu_model"] = platform.processor()
    info["env"] = {k: v for k, v in sorted(os.environ.items())
                   if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "XPMLP_", "GOMP_", "KMP_", "XLA_", "JAX_",
                                    "CUDA_VISIBLE"))}
    info["openblas_unpinned"] = unpinned_openblas_kernel()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["gpu"] = "; ".join(ln.strip() for ln in out.stdout.splitlines() if ln.strip()) or None
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    return info


# Set on some machines because older OpenBLAS builds fail on some CPUs; they also pin a current one
# to that kernel (here Haswell's AVX2 on an AVX-512 CPU: a float32 GEMM at ~245 instead of ~460 GFLOP/s).
OPENBLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def unpinned_openblas_kernel() -> str | None:
    """The kernel NumPy's OpenBLAS picks on this CPU with ``OPENBLAS_PINS`` unset, asked of a child
    process; None when OPENBLAS_CORETYPE is not set (the rows already run OpenBLAS's own choice) or
    threadpoolctl is missing."""
    if "OPENBLAS_CORETYPE" not in os.environ:
        return None
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_PINS}
    code = ("import numpy\nfrom threadpoolctl import threadpool_info\n"
            "print(next((p.get('architecture') for p in threadpool_info() if p.get('internal_api') == 'openblas'), ''))")
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class Worker:
    def __init__(self, name: str, config: dict):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.worker"], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1)
        self.send({**config, "impl": name})

    def send(self, obj):
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            return {"ok": False, "error": f"worker exited (status {self.proc.wait()})",
                    "reason": f"worker exited (status {self.proc.wait()})"}
        return json.loads(line)

    def ask(self, obj) -> dict:
        try:
            self.send(obj)
        except (BrokenPipeError, OSError, ValueError):  # the worker is gone: say so, as recv() does
            try:
                status = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                status = "unknown: it stopped reading"
            return {"ok": False, "error": f"worker exited (status {status})", "reason": f"worker exited (status {status})"}
        return self.recv()

    def close(self):
        try:
            if self.proc.poll() is None:
                self.ask({"cmd": "quit"})
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    if args.list:
        for name, (_, dev) in IMPLS.items():
            print(f"{name:24s} {dev}")
        return 0
    if args.impls:
        names = [n.strip() for n in args.impls.split(",") if n.strip()]
        bad = [n for n in names if n not in IMPLS]
        if bad:
            parser.error(f"--impls: unknown row(s) {', '.join(bad)}; valid: {', '.join(IMPLS)}")
    elif args.gpu:
        names = ["seed"] + GPU_ROWS
    else:
        names = list(CPU_ROWS)
    sizes = args.batch_sizes or (QUICK_SIZES if args.quick else SWEEP)
    seed_sizes = args.seed_batch_sizes or sizes
    limit = args.limit or (QUICK_LIMIT if args.quick else None)
    problem = check_options(args, sizes, seed_sizes, limit or MNIST_TRAIN)
    if problem:
        parser.error(problem)
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick or args.gpu else FULL_REPEATS
    tag = args.tag or ("gpu" if args.gpu else "cpu") + ("-quick" if args.quick else "")
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out}: cannot create the folder ({exc.strerror})")
    started, t0 = dt.datetime.now().isoformat(timespec="seconds"), time.perf_counter()

    config = {"dtype": args.dtype, "limit": limit, "threads": args.threads, "seed": args.seed, "hidden": args.hidden, "init": args.init}
    run_config = {**config, "command": "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
                  "rows": names, "batch_sizes": sizes, "seed_batch_sizes": seed_sizes, "repeats": args.repeats,
                  "warmup": args.warmup, "gap_s": args.gap, "threads": args.threads, "lr": args.lr,
                  "gemm_n": args.gemm_n, "quick": args.quick}
    machine = machine_info()
    stem = out_dir / tag

    def save(rows: dict, skipped: dict, stopped: str | None, final: bool) -> None:
        result = build_result(tag, started, time.perf_counter() - t0, run_config, machine, rows, skipped, stopped)
        write_result(stem, result, final)

    log(f"starting {len(names)} workers: {', '.join(names)}")
    workers = {n: Worker(n, config) for n in names}
    rows, skipped = {}, {}
    for name, w in workers.items():
        hello = w.recv()
        if hello.get("ok"):
            rows[name] = {"info": hello, "epochs": {}, "hidden": args.hidden, "stats": {}}
            log(f"  {name}: {hello['library']} on {hello['device']}, {hello['dtype']}, {hello['n_train']} samples")
        else:
            skipped[name] = hello.get("reason", "?")
            log(f"  {name}: skipped ({skipped[name]})")
            w.close()
    for name in skipped:
        del workers[name]
    stopped = None
    signal.signal(signal.SIGTERM, _interrupt)  # e.g. timeout(1): stop as on Ctrl-C, and keep what was measured
    try:
        stopped = run_rounds(args, workers, rows, skipped, sizes, seed_sizes,
                             lambda: save(rows, skipped, "partial: written after each timed round", False))
    finally:
        for w in workers.values():
            w.close()
    save(rows, skipped, stopped, True)
    return 130 if stopped else 0


def run_rounds(args, workers: dict, rows: dict, skipped: dict, sizes: list[int], seed_sizes: list[int],
               checkpoint) -> str | None:
    """The GEMM peaks, then every round (each batch size, each row, order rotated per round). A row
    whose worker fails is dropped (its reason goes to ``skipped``) and the others carry on;
    ``checkpoint()`` runs after every timed round. Returns why the run stopped early (Ctrl-C), or None."""
    total = args.warmup + args.repeats
    rnd = 0
    try:
        for name, w in list(workers.items()):  # one at a time: the GEMM peak of each library, device and dtype
            time.sleep(max(args.gap, 0.3))
            res = w.ask({"cmd": "gemm", "n": args.gemm_n, "repeats": 7})
            rows[name]["gemm_gflops"] = res.get("gflops")
            log(f"  {name}: {args.gemm_n}^3 GEMM {res.get('gflops', float('nan')):.1f} GFLOP/s {res.get('error', '')}")
        order = list(workers)
        for rnd in range(total):
            warm = rnd < args.warmup
            rot = order[rnd % len(order):] + order[:rnd % len(order)] if order else []
            for bs in sizes:
                for name in rot:
                    if name not in workers or (name == "seed" and bs not in seed_sizes):
                        continue
                    time.sleep(args.gap)
                    res = workers[name].ask({"cmd": "epoch", "batch": bs, "lr": args.lr})
                    if "error" in res:
                        skipped[name] = f"failed at batch {bs} in round {rnd + 1}: {res['error']}"
                        log(f"  {name}: {skipped[name]}; the row is dropped, the others go on\n"
                            f"{res.get('traceback', '')}")
                        workers.pop(name).close()
                        rows.pop(name, None)
                        order.remove(name)
                        continue
                    rows[name]["epochs"].setdefault(bs, []).append({**res, "warmup": warm})
                    trains = rows[name]["info"].get("trains", True)
                    trained = f"loss {res['loss']:.4f}  acc {res['accuracy']:.4f}" if trains else "(a bound: trains nothing)"
                    log(f"round {rnd + 1}/{total}{' (warm-up)' if warm else ''} b{bs:<3d} "
                        f"{name:24s} {res['seconds']:7.3f} s  {trained}")
            _collect_stats(workers, rows)
            if not warm and rnd + 1 < total:
                checkpoint()
    except KeyboardInterrupt:
        log(f"interrupted in round {rnd + 1} of {total}; writing what was measured")
        return f"interrupted (Ctrl-C or SIGTERM) in round {rnd + 1} of {total}; the last round is incomplete"
    return None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _collect_stats(workers: dict, rows: dict) -> None:
    for name, w in workers.items():
        stats = w.ask({"cmd": "stats"})
        if "error" not in stats:
            rows[name]["stats"] = stats


def build_result(tag: str, started: str, wall: float, config: dict, machine: dict, rows: dict, skipped: dict,
                 stopped: str | None) -> dict:
    from .report import summarise, targets

    peaks: dict[str, float] = {}
    for row in rows.values():
        key = f"{row['info']['device']}/{row['info']['dtype']}"
        if row.get("gemm_gflops"):
            peaks[key] = max(peaks.get(key, 0.0), row["gemm_gflops"])
    for row in rows.values():  # % of peak: against the row's own library's GEMM on its device and dtype
        row["peak"] = row.get("gemm_gflops") or peaks.get(f"{row['info']['device']}/{row['info']['dtype']}")
    records = summarise(rows)
    machine = {**machine, "blas": {name: row["info"].get("threadpools") for name, row in rows.items()}}
    result = {
        "tag": tag, "started": started, "wall_seconds": wall, "config": config, "machine": machine,
        "versions": {name: row["info"].get("versions") for name, row in rows.items()},
        "gemm_peaks": peaks,
        "gemm_by_row": {name: row.get("gemm_gflops") for name, row in rows.items()},
        "skipped": dict(skipped),
        "records": records,
        "targets": targets(records),
        "raw": {name: {str(bs): eps for bs, eps in row["epochs"].items()} for name, row in rows.items()},
    }
    if stopped:
        result["stopped"] = stopped
    return result


def write_result(stem: Path, result: dict, final: bool) -> None:
    """JSON and Markdown (each atomically); with ``final``, the plot too and the table on stdout."""
    from .report import markdown, plot, write_text

    write_text(stem.with_suffix(".json"), json.dumps(result, indent=1, default=str) + "\n")
    md = markdown(result)
    write_text(stem.with_suffix(".md"), md)
    if not final:
        return
    plotted = plot(result, stem.with_suffix(".png"))
    print(md)
    log(f"wrote {stem}.json, {stem}.md" + (f", {stem}.png" if plotted else " (no plot: matplotlib missing)")
        + f" in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
