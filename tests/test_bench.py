"""The benchmark rows train the same model: every peer available here ends one epoch with the same
parameters as xpmlp's numpy run from the same start and the same order; and the FLOP count is right."""

from __future__ import annotations

import numpy as np
import pytest

from bench.flops import flops_per_epoch, flops_per_sample
from bench.impls import Unavailable, make
from xpmlp.data import load_mnist
from xpmlp.model import init_params

N, BATCH, LR = 400, 32, 0.01  # 12 full batches and a partial one of 16: the ragged tail is covered too
PEERS = ["seed", "numpy_fast", "numpy_fast-scoped", "torch-manual-cpu", "torch-module-cpu", "xpmlp-array_api_strict",
         "xpmlp-torch-cpu", "jax-jit"]

# Tolerance. Rows differ only in summation order inside the matrix products (BLAS blocking, MKL vs
# OpenBLAS, where lr is applied) and in softmax/log details. Each product sums at most 784 terms, so
# one step's update can differ by ~784 eps relative to the size of its terms; 13 steps with lr=0.01
# and He init (activations O(1), no amplification) keep it there. 1e4 * eps (2.2e-12) on parameters
# of size O(0.1) leaves an order of magnitude of margin over the ~1e-15..1e-13 seen in practice,
# while a wrong formula (a missing lr, a mean instead of a sum, a wrong mask) moves them by >= 1e-4.
TOL = 1e4 * np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def setup():
    x, y, params, order = _setup_data()
    ref = make("xpmlp-numpy", x, y, "float64")
    state, loss, hits = ref.epoch(ref.init(params), order, BATCH, LR)
    return x, y, params, order, ref.host_params(state), loss, hits


@pytest.mark.parametrize("name", PEERS)
def test_peer_trains_the_same_model(setup, name):
    x, y, params, order, expected, loss, hits = setup
    x64 = _jax_x64()
    try:
        impl = make(name, x, y, "float64")  # jax-jit turns on jax_enable_x64 for float64 ...
        state, peer_loss, peer_hits = impl.epoch(impl.init(params), order, BATCH, LR)
        got = impl.host_params(state)
    except Unavailable as exc:
        pytest.skip(f"{name}: {exc}")
    finally:
        if x64 is not None:  # ... which is global: put it back for the other tests
            import jax

            jax.config.update("jax_enable_x64", x64)
    for which, g, e in zip(("W1", "b1", "W2", "b2"), got, expected):
        assert g.shape == e.shape, which
        np.testing.assert_allclose(g, e, rtol=0, atol=TOL * max(1.0, np.abs(e).max()), err_msg=f"{name} {which}")
    assert peer_hits == hits
    assert peer_loss == pytest.approx(loss, rel=1e-9)
    assert not np.allclose(got[0], params[0])  # it did train


def _jax_x64():
    try:
        import jax
    except ImportError:
        return None
    return bool(jax.config.jax_enable_x64)


def test_flop_count_by_hand():
    # 3 inputs, 2 hidden, 1 output, per sample:
    # forward x@W1 2*3*2=12, h@W2 2*2*1=4; backward dW2 4, dh 4, dW1 12 -> 36
    assert flops_per_sample(3, 2, 1) == 36
    assert flops_per_epoch(5, 3, 2, 1) == 180
    assert flops_per_sample() == 958_800
    assert flops_per_epoch() == 57_528_000_000


def test_floor_row_does_exactly_the_floor_work():
    # numpy-floor bounds the others, so it must do the two big products and the W1 update on every
    # batch, no less, on the same columns as xpmlp: with d = 1e-7 everywhere, one epoch subtracts
    # 1e-7 * (column sums of the design matrix) from every column of W1b. A skipped batch or update
    # would miss >= 1/13 of that (~1e-6 on W1).
    from xpmlp.training import design_matrix

    x, y, params, order = _setup_data()
    impl = make("numpy-floor", x, y, "float64")
    assert not impl.trains
    (w1b,) = impl.host_params(impl.epoch(impl.init(params), order, BATCH, LR)[0])
    design = design_matrix(x.reshape(N, -1) / 255.0)
    assert impl.product_inputs == design.x.shape[1] == w1b.shape[0]
    start = np.concatenate([params[0][design.kept], params[1][None, :]])
    expected = start - 1e-7 * design.x.sum(axis=0)[:, None]
    np.testing.assert_allclose(w1b, expected, rtol=0, atol=TOL * np.abs(params[0]).max())
    assert not np.allclose(w1b, start, rtol=0, atol=1e-7)


def test_rows_that_skip_zero_columns_report_what_they_multiply():
    # GFLOP/s "executed" divides the products a row runs: for a column-skipping row, the common
    # columns in every batch and the others nonzero in each sample's batch, counted straight from
    # the design matrix here
    from bench.impls import mean_used_columns

    x, y, _, order = _setup_data()
    fast = make("numpy_fast", x, y, "float64")
    xpmlp = make("xpmlp-numpy", x, y, "float64")
    n_common = fast.common_columns(BATCH)
    assert n_common == xpmlp.common_columns(BATCH) and 1 < n_common < fast.product_inputs
    checked = fast.product_inputs - n_common
    by_batch = [n_common + np.count_nonzero(fast.X[order[b:b + BATCH], :checked].any(axis=0)) for b in range(0, N, BATCH)]
    sizes = [min(BATCH, N - b) for b in range(0, N, BATCH)]  # 12 of 32 and a last one of 16
    want = np.dot(by_batch, sizes) / N
    assert want < fast.product_inputs  # at batch 32 some columns are zero in a whole batch
    assert mean_used_columns(fast.X, order, BATCH, n_common) == pytest.approx(want, rel=1e-12)
    assert mean_used_columns(fast.X, order, BATCH) < want  # checking every column skips more
    # and the products that correct each step for the deferred updates of the common block: with
    # room for 128 rows, 4 batches of 32 are deferred, then applied; the short last one finds none
    from xpmlp.backend import deferred_update_rows
    from xpmlp.training import deferred_rows

    assert deferred_rows(BATCH, deferred_update_rows(fast.X)) == 4 * BATCH
    pending = [0, 32, 64, 96] * 3 + [0]
    hidden = 300
    correction_flops = sum(2 * rows * p * (n_common + hidden) for rows, p in zip(sizes, pending)) / N
    want += correction_flops / (4 * hidden)  # a column of the two big products: 4 * hidden FLOPs per sample
    assert fast.executed_inputs(order, BATCH, hidden) == pytest.approx(want, rel=1e-12)
    assert xpmlp.executed_inputs(order, BATCH, hidden) == pytest.approx(want, rel=1e-12)
    assert make("seed", x, y).executed_inputs(order, BATCH, hidden) is None  # all 784, as product_inputs says
    try:
        strict = make("xpmlp-array_api_strict", x, y, "float64")
    except Unavailable:
        pass
    else:
        assert strict.executed_inputs(order, BATCH, 300) is None  # dense (no integer-indexed writes), every step updates
    try:
        torch_cpu = make("xpmlp-torch-cpu", x, y, "float64")
    except Unavailable:
        return
    # dense, with W1b's updates deferred up to 96 rows: 3 batches of 32, then applied
    assert deferred_rows(BATCH, deferred_update_rows(torch_cpu.design.x)) == 3 * BATCH
    pending = [0, 32, 64] * 4 + [0]
    n_in = torch_cpu.product_inputs
    correction_flops = sum(2 * rows * p * (n_in + hidden) for rows, p in zip(sizes, pending)) / N
    assert torch_cpu.executed_inputs(order, BATCH, hidden) == pytest.approx(n_in + correction_flops / (4 * hidden), rel=1e-12)


def _setup_data():
    data = load_mnist()
    # init="he" keeps every probability far above the 1e-15 clip, where the nn.Module's unclipped
    # log_softmax loss and the seed's clipped one have the same value (their gradients agree anyway).
    params = tuple(init_params(np.random.default_rng(3), init="he", dtype="float64"))
    return data.x_train[:N], data.y_train[:N], params, np.random.default_rng(4).permutation(N)


@pytest.mark.parametrize("name", ["numpy_fast", "numpy-floor"])
def test_design_matrix_rows_are_contiguous(name):
    # a batch is a gather of whole rows: column-major storage made an epoch ~100x slower
    x, y, _, _ = _setup_data()
    impl = make(name, x, y, "float32")
    assert impl.X.flags.c_contiguous and impl.X.shape[1] == impl.product_inputs < 784


@pytest.mark.parametrize("argv, names", [
    (["--repeats", "0"], "--repeats"),
    (["--warmup", "-1"], "--warmup"),
    (["--hidden", "0"], "--hidden"),
    (["--lr", "-1"], "--lr"),
    (["--gap", "-0.5"], "--gap"),
    (["--threads", "0"], "--threads"),
    (["--batch-sizes", "8,x"], "--batch-sizes"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--impls", "seed,nope"], "nope"),
    (["--limit", "70000"], "60000"),
    (["--limit", "10"], "--limit"),
    (["--batch-sizes", "8,64", "--seed-batch-sizes", "16"], "--seed-batch-sizes 16"),
    (["--tag", "a/b"], "--tag"),
])
def test_bench_cli_misuse_is_one_line_and_status_2_before_any_worker(argv, names, capsys, tmp_path, monkeypatch):
    import bench.__main__ as bench_main

    started = []
    monkeypatch.setattr(bench_main, "Worker", lambda *a, **k: started.append(a))
    with pytest.raises(SystemExit) as exc:
        bench_main.main([*argv, "--out", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and started == []
    assert err.count("\n") == 1 and err.startswith("python -m bench: error:") and names in err, err
    assert "Traceback" not in err


def test_bench_out_must_be_a_folder(capsys, tmp_path):
    import bench.__main__ as bench_main

    (tmp_path / "taken").write_text("a user's file\n")
    with pytest.raises(SystemExit) as exc:
        bench_main.main(["--out", str(tmp_path / "taken")])
    assert exc.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a user's file\n"


def test_device_peak_is_the_pool_for_every_gpu_library():
    """One measure for every GPU row: the caching pool's peak, not the arrays' peak for some rows."""
    from types import SimpleNamespace

    from bench.impls import _peak_device_memory

    cupy = SimpleNamespace(get_default_memory_pool=lambda: SimpleNamespace(total_bytes=lambda: 300))
    torch = SimpleNamespace(cuda=SimpleNamespace(max_memory_reserved=lambda device: 200,
                                                 max_memory_allocated=lambda device: 150))
    jax_device = SimpleNamespace(memory_stats=lambda: {"peak_bytes_in_use": 90, "peak_pool_bytes": 120})
    assert _peak_device_memory("cupy", cupy, None) == 300
    assert _peak_device_memory("torch", torch, "cuda:0") == 200
    assert _peak_device_memory("torch", torch, "cpu") is None
    assert _peak_device_memory("jax", None, jax_device) == 120
    assert _peak_device_memory("jax", None, SimpleNamespace(memory_stats=lambda: {"peak_bytes_in_use": 90})) == 90
    assert _peak_device_memory("jax", None, SimpleNamespace(memory_stats=lambda: None)) is None


class _FakeWorker:
    """Stands in for bench.__main__.Worker: answers like a worker process, and can die or be
    interrupted at a given epoch (``fails_at`` / ``interrupt_at``, counted over all its epochs)."""

    script: dict = {}

    def __init__(self, name, config):
        self.name, self.epochs = name, 0
        self.fails_at, self.interrupt_at = self.script.get(name, (None, None))

    def recv(self):
        return {"ok": True, "name": self.name, "device": "cpu", "library": "numpy", "dtype": "float32",
                "trains": True, "n_train": 2000, "product_inputs": 784, "versions": {}, "threadpools": [],
                "rss_baseline_bytes": 1, "peak_reset": True}

    def ask(self, cmd):
        if cmd["cmd"] == "gemm":
            return {"gflops": 100.0}
        if cmd["cmd"] == "stats":
            return {"peak_rss_bytes": 2, "rss_baseline_bytes": 1, "device_peak_bytes": None}
        self.epochs += 1
        if self.epochs == self.interrupt_at:
            raise KeyboardInterrupt
        if self.epochs == self.fails_at:
            return {"ok": False, "error": "worker exited (status -9)"}
        return {"seconds": 0.5 if self.name == "seed" else 0.2, "loss": 1.0, "accuracy": 0.5}

    def close(self):
        pass


@pytest.mark.parametrize("script, status, survivors, note", [
    ({"seed": (4, None)}, 0, ["xpmlp-numpy"], "failed at batch 64 in round 2: worker exited (status -9)"),
    ({"xpmlp-numpy": (None, 4)}, 130, ["seed", "xpmlp-numpy"], "interrupted (Ctrl-C or SIGTERM) in round 2 of 4"),
])
def test_a_row_that_dies_or_a_ctrl_c_still_leaves_the_results_of_the_rest(script, status, survivors, note,
                                                                           tmp_path, monkeypatch):
    import json

    import bench.__main__ as bench_main

    monkeypatch.setattr(bench_main, "Worker", type("W", (_FakeWorker,), {"script": script}))
    code = bench_main.main(["--impls", "seed,xpmlp-numpy", "--batch-sizes", "8,64", "--repeats", "3", "--limit", "2000",
                            "--gap", "0", "--out", str(tmp_path), "--tag", "t"])
    result = json.loads((tmp_path / "t.json").read_text())
    assert code == status
    assert sorted({r["impl"] for r in result["records"]}) == survivors
    md = (tmp_path / "t.md").read_text()
    assert note in json.dumps(result) and note in md


def test_results_are_written_after_every_timed_round(tmp_path, monkeypatch):
    import json

    import bench.__main__ as bench_main

    seen = []
    real_write = bench_main.write_result

    def spy(stem, result, final):
        seen.append((final, sum(r["timed_epochs"] for r in result["records"])))
        real_write(stem, result, final)

    monkeypatch.setattr(bench_main, "Worker", _FakeWorker)
    monkeypatch.setattr(bench_main, "write_result", spy)
    assert bench_main.main(["--impls", "seed,xpmlp-numpy", "--batch-sizes", "64", "--repeats", "3", "--limit", "2000",
                            "--gap", "0", "--out", str(tmp_path), "--tag", "t"]) == 0
    # rounds 2 and 3 are timed and not the last: one partial write each, then the final one
    assert seen == [(False, 2), (False, 4), (True, 6)]
    assert "stopped" not in json.loads((tmp_path / "t.json").read_text())


# --- bench.gpu_probe: the per-call costs and the graph-capture check gpu_check.sh runs last -------


def test_gpu_probe_without_a_gpu_writes_why_and_exits_0(tmp_path, capsys):
    import json

    from bench import gpu_probe

    assert gpu_probe.main([str(tmp_path)]) == 0
    found = json.loads((tmp_path / "gpu-probe.json").read_text())
    assert set(found) == {"cupy", "torch"}
    for library, result in found.items():
        assert result["usable"] is False and result["why"], library  # no GPU here, and it says why
    assert capsys.readouterr().out.count("not usable") == 2
    assert gpu_probe.main([]) == 2


class _FakeGraph:
    def __init__(self, work):
        self.work = work

    def launch(self, stream=None):
        self.work()


class _FakeStream:
    """Records the calls between begin_capture and end_capture, as CUDA's stream capture does."""

    def __init__(self):
        self.capturing, self.captured = False, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self):
        self.capturing = True

    def end_capture(self):
        return _FakeGraph(self.captured)

    def synchronize(self):
        pass


def test_gpu_probe_reports_a_refused_capture_as_a_finding_not_a_crash():
    from types import SimpleNamespace

    from bench import gpu_probe

    def fake_cp(refuse):
        stream = _FakeStream()
        state = {"n": 0}

        def work():
            if refuse and stream.capturing:
                raise RuntimeError("cuBLAS is not supported during stream capture")
            state["n"] += 1
            return np.ones(3)

        stream.captured = work
        cp = SimpleNamespace(cuda=SimpleNamespace(Stream=lambda **_: stream), allclose=np.allclose)
        return cp, work, state

    cp, work, state = fake_cp(refuse=False)
    outcome = gpu_probe._capture_cupy(cp, work, np.ones(3))
    # the work runs once to warm the pool, once under capture (the fake runs it), then 1 + 100 replays
    assert outcome["ok"] is True and outcome["us_per_replay"] >= 0 and state["n"] == 1 + 1 + 1 + 100
    cp, work, _ = fake_cp(refuse=True)
    outcome = gpu_probe._capture_cupy(cp, work, np.ones(3))
    assert outcome == {"ok": False, "error": "RuntimeError: cuBLAS is not supported during stream capture"}
    lines = gpu_probe.summary({"cupy": {"usable": True, "version": "14.2", "us_per_call": {"matmul": 9.5},
                                        "graph_capture": {"matmul": outcome}}})
    assert lines == ["cupy 14.2: per call matmul 9.5 us",
                     "  graph capture of matmul: FAILED (RuntimeError: cuBLAS is not supported during stream capture)"]
