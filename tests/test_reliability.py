"""Reliability: resume after SIGKILL is bit-identical, Ctrl-C exits 130 with a resume hint, divergence
is explained, writes are atomic, model files are validated and portable across backends, and the
library's public entry points reject bad arrays with messages that say what was expected."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from xpmlp import fit, init_params, load_model, save_model
from xpmlp.backend import get_backend, to_numpy
from xpmlp.checkpoint import latest_checkpoint, write_checkpoint
from xpmlp.errors import ConfigError, DivergenceError, InputError, ModelFileError
from xpmlp.evaluate import main as evaluate_main
from xpmlp.io import atomic_write
from xpmlp.model import predict
from xpmlp.train import main as train_main
from xpmlp.training import TrainConfig

# 8 epochs: killing after epoch 3 must still find the run alive on a slow, loaded machine
RUN = ["--limit", "12800", "--hidden", "64", "--epochs", "8", "--dtype", "float64", "--seed", "11"]


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "xpmlp.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def numbers(stdout):
    """Epoch lines without the wall time, the part that must repeat exactly."""
    return [line.split(", Time")[0] for line in stdout.splitlines() if line.startswith("Epoch")]


def wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    proc = cli(*RUN, "--save", str(folder / "model.npz"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return numbers(out), np.load(folder / "model.npz")


@pytest.mark.parametrize("kill_after_epoch, extra_delay", [(1, 0.0), (2, 0.03), (3, 0.0)])
def test_sigkill_then_resume_is_bit_identical(tmp_path, uninterrupted, kill_after_epoch, extra_delay):
    ckpt = tmp_path / "ckpt"
    proc = cli(*RUN, "--checkpoint-dir", str(ckpt), "--save", str(tmp_path / "model.npz"))
    wait_for(ckpt / f"checkpoint-bs64-epoch{kill_after_epoch:04d}.npz", proc)
    time.sleep(extra_delay)  # sometimes mid-epoch, sometimes mid-write of the next checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    resumed = cli(*RUN, "--checkpoint-dir", str(ckpt), "--save", str(tmp_path / "model.npz"), "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming from" in err
    expected_numbers, expected_model = uninterrupted
    assert numbers(out) == expected_numbers
    got = np.load(tmp_path / "model.npz")
    for name in ("W1", "b1", "W2", "b2"):
        np.testing.assert_array_equal(got[name], expected_model[name], err_msg=name)
    assert not list(ckpt.glob(".*.tmp")), "a finished run leaves no temp files"


def test_resume_with_a_different_config_names_the_fields(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert train_main(["--limit", "640", "--hidden", "8", "--epochs", "1", "--checkpoint-dir", str(ckpt)]) == 0
    capsys.readouterr()
    code = train_main(["--limit", "640", "--hidden", "9", "--epochs", "2", "--dtype", "float64", "--seed", "1",
                       "--checkpoint-dir", str(ckpt), "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    for field in ("hidden (checkpoint 8, now 9)", "dtype", "seed"):
        assert field in err
    assert "epochs" not in err.split("differing:")[1]  # more epochs is allowed: training continues


def test_a_sweep_checks_every_runs_checkpoint_before_training_any(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    base = ["--limit", "640", "--hidden", "8", "--checkpoint-dir", str(ckpt), "--epochs", "1"]
    assert train_main([*base, "--batch-size", "64"]) == 0
    assert train_main([*base, "--batch-size", "32", "--lr", "0.02"]) == 0  # batch 32: another lr
    capsys.readouterr()
    # resuming the sweep 64,32 at lr 0.01: batch 32's checkpoint is another run, refused up front
    assert train_main([*base[:-1], "2", "--batch-sizes", "64,32", "--resume"]) == 2
    captured = capsys.readouterr()
    assert "lr (checkpoint 0.02, now 0.01)" in captured.err
    assert captured.out == ""  # no header, no epoch of batch 64 trained first


def test_resuming_a_finished_run_says_there_is_nothing_left(tmp_path, capsys):
    base = ["--limit", "640", "--hidden", "8", "--checkpoint-dir", str(tmp_path / "ckpt"), "--epochs", "1"]
    assert train_main(base) == 0
    capsys.readouterr()
    assert train_main([*base, "--resume"]) == 0
    assert "nothing left to train" in capsys.readouterr().err


def test_resume_can_extend_training(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    base = ["--limit", "640", "--hidden", "8", "--checkpoint-dir", str(ckpt)]
    assert train_main([*base, "--epochs", "1"]) == 0
    assert train_main([*base, "--epochs", "3", "--resume"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert [line.split(",")[0] for line in lines] == ["Epoch 1/1", "Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]


def test_a_new_run_refuses_a_folder_holding_an_earlier_runs_checkpoints(tmp_path, capsys):
    # it used to start, then prune by epoch number: the earlier run's epoch 3 outlived the new run's
    # own epoch 1, and --resume then refused the folder as "a different run"
    ckpt = tmp_path / "ckpt"
    base = ["--limit", "256", "--batch-size", "32", "--hidden", "8", "--checkpoint-dir", str(ckpt)]
    assert train_main([*base, "--epochs", "3", "--lr", "0.01"]) == 0
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    capsys.readouterr()
    assert train_main([*base, "--epochs", "2", "--lr", "0.02"]) == 2
    captured = capsys.readouterr()
    assert "already holds checkpoints of batch size 32" in captured.err and "--resume" in captured.err
    assert "Epoch" not in captured.out  # refused before training
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert train_main([*base, "--epochs", "4", "--lr", "0.01", "--resume"]) == 0  # continuing it is fine
    # another batch size in the same folder is another run, and starts
    assert train_main([*base[:2], "--batch-size", "64", *base[4:], "--epochs", "1"]) == 0


def test_a_sweep_checks_every_save_name_before_training(tmp_path, capsys):
    (tmp_path / "out-bs32.npz").mkdir()
    code = train_main(["--limit", "256", "--hidden", "8", "--epochs", "1", "--batch-sizes", "16,32",
                       "--save", str(tmp_path / "out.npz")])
    captured = capsys.readouterr()
    assert code == 2 and "out-bs32.npz: is a folder" in captured.err and "Epoch" not in captured.out
    assert not (tmp_path / "out-bs16.npz").exists()


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    params = init_params(0, 784, 4, 10)
    rng = np.random.default_rng(0)
    run = {**TrainConfig(hidden=4).to_dict(), "dataset": "mnist"}
    write_checkpoint(tmp_path, params, 1, rng, [], run)
    newest = write_checkpoint(tmp_path, params, 2, rng, [], run)
    newest.write_bytes(newest.read_bytes()[:100])  # torn by something outside xpmlp
    checkpoint, skipped = latest_checkpoint(tmp_path, 64)
    assert checkpoint.epoch == 1 and len(skipped) == 1 and "epoch0002" in skipped[0]


@pytest.mark.parametrize("damage", [
    lambda meta: meta.update(rng_state={"bit_generator": "MT19937"}),  # another generator's state
    lambda meta: meta.update(rng_state={"bit_generator": "PCG64", "state": "x"}),
    lambda meta: meta["history"][0].pop("loss"),  # resuming prints every epoch's line again
    lambda meta: meta.update(history=[3]),
])
def test_a_checkpoint_whose_state_cannot_resume_is_skipped_as_damaged(tmp_path, damage):
    from xpmlp.io import host_arrays, read_npz, save_npz

    params, rng = init_params(0, 784, 4, 10), np.random.default_rng(0)
    run = {**TrainConfig(hidden=4).to_dict(), "dataset": "mnist"}
    record = {"epoch": 1, "loss": 1.0, "accuracy": 0.5, "test_accuracy": None, "seconds": 0.1}
    write_checkpoint(tmp_path, params, 1, rng, [record], run)
    newest = write_checkpoint(tmp_path, params, 2, rng, [record, {**record, "epoch": 2}], run)
    arrays, meta = read_npz(newest, ("W1", "b1", "W2", "b2"))
    damage(meta)
    save_npz(newest, host_arrays(tuple(arrays[k] for k in ("W1", "b1", "W2", "b2"))), meta)
    checkpoint, skipped = latest_checkpoint(tmp_path, 64)
    assert checkpoint.epoch == 1 and len(skipped) == 1 and "epoch0002" in skipped[0]


def test_only_the_newest_two_checkpoints_are_kept(tmp_path):
    params, rng = init_params(0, 784, 4, 10), np.random.default_rng(0)
    run = {**TrainConfig(hidden=4).to_dict(), "dataset": "mnist"}
    for epoch in range(1, 5):
        write_checkpoint(tmp_path, params, epoch, rng, [], run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-bs64-epoch0003.npz",
                                                          "checkpoint-bs64-epoch0004.npz"]


def test_ctrl_c_keeps_the_checkpoint_and_exits_130(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = cli(*RUN, "--epochs", "50", "--checkpoint-dir", str(ckpt))
    wait_for(ckpt / "checkpoint-bs64-epoch0001.npz", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Resume with: python -m xpmlp.train" in err and "--resume" in err
    assert "Traceback" not in err
    checkpoint, skipped = latest_checkpoint(ckpt, 64)
    assert checkpoint is not None and checkpoint.epoch >= 1 and not skipped


def test_ctrl_c_in_a_sweep_says_which_run_stopped_and_what_the_finished_ones_left(tmp_path, capsys, monkeypatch):
    import xpmlp.train as train

    real = train.train_epochs

    def interrupt_at_batch_64(params, data, config, rng, **kwargs):
        if config.batch_size == 64:
            raise KeyboardInterrupt
        return real(params, data, config, rng, **kwargs)

    monkeypatch.setattr(train, "train_epochs", interrupt_at_batch_64)
    code = train_main(["--limit", "640", "--hidden", "8", "--epochs", "1", "--batch-sizes", "32,64",
                       "--save", str(tmp_path / "m.npz"), "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 130
    assert "interrupted before the first epoch of batch size 64" in err
    assert f"batch size 32 finished (saved {tmp_path / 'm-bs32.npz'})" in err and (tmp_path / "m-bs32.npz").exists()
    assert f"{tmp_path / 'r.json'} holds the finished runs' history" in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert "batch_size" not in report["config"] and report["config"]["batch_sizes"] == [32, 64]
    assert [r["config"]["batch_size"] for r in report["runs"]] == [32]


def test_divergence_is_explained(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    code = train_main(["--lr", "10", "--limit", "6400", "--epochs", "3", "--checkpoint-dir", str(ckpt)])
    err = capsys.readouterr().err
    assert code == 1
    assert "diverged in epoch 1" in err and "smaller learning rate" in err and "--init he" in err
    assert "Traceback" not in err


def test_a_high_first_loss_on_a_small_run_is_not_called_divergence(capsys):
    # the seed's N(0,1) start gives an epoch-1 loss of 28.8 here, but the run learns (0.94 by epoch 3)
    assert train_main(["--limit", "200", "--batch-size", "32", "--epochs", "3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert len(lines) == 3 and float(lines[0].split("Loss: ")[1].split(",")[0]) > 25


def test_a_saturated_run_at_chance_diverges_without_a_test_set_too():
    x = np.random.default_rng(0).random((2000, 784))
    y = np.arange(2000) % 10  # unlearnable: accuracy stays at chance
    with pytest.raises(DivergenceError, match="clipping ceiling"):
        fit(x, y, config=TrainConfig(epochs=2, batch_size=32, hidden=32, lr=10.0))


def test_divergence_on_nan_parameters_names_the_epoch():
    x = np.random.default_rng(0).random((64, 784))
    y = np.arange(64) % 10
    with pytest.raises(DivergenceError, match="epoch 1") as caught:
        fit(x, y, config=TrainConfig(epochs=2, batch_size=32, hidden=8, lr=1e30))
    assert caught.value.epoch == 1


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "model.npz"
    save_model(path, init_params(0, 784, 4, 10))
    good = path.read_bytes()

    def crash_halfway(handle):
        handle.write(good[: len(good) // 2])
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash_halfway)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_atomic_write_gives_the_permissions_a_plain_write_would(tmp_path):
    plain, atomic = tmp_path / "plain.json", tmp_path / "atomic.json"
    old_umask = os.umask(0o022)  # a common umask, under which a temp file's 0600 would show
    try:
        plain.write_text("{}")
        atomic_write(atomic, lambda f: f.write(b"{}"))
    finally:
        os.umask(old_umask)
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644


def test_atomic_write_opens_its_temp_file_in_binary_mode_where_that_is_a_flag(tmp_path, monkeypatch):
    # Windows' os.open defaults to text mode (\n -> \r\n), which would corrupt every .npz; there
    # O_BINARY exists and must be passed. Simulated here: a stand-in flag, stripped before the real open.
    fake_binary, seen = 1 << 30, []
    real_open = os.open
    monkeypatch.setattr(os, "O_BINARY", fake_binary, raising=False)

    def recording_open(name, flags, *args):
        seen.append(flags)
        return real_open(name, flags & ~fake_binary, *args)

    monkeypatch.setattr(os, "open", recording_open)
    atomic_write(tmp_path / "m.bin", lambda f: f.write(b"a\nb"))
    assert seen and seen[0] & fake_binary
    assert (tmp_path / "m.bin").read_bytes() == b"a\nb"


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("b2"), "missing arrays ['b2']"),
    (lambda a: a.update(extra=np.zeros(3)), "unexpected arrays ['extra']"),
    (lambda a: a.update(b1=np.zeros(5)), "inconsistent shapes"),
    (lambda a: a.update(W1=a["W1"].astype(np.int32)), "W1 has dtype int32"),
    (lambda a: a.update(W2=a["W2"][None]), "W2 has shape"),
    (lambda a: a.update(b2=np.full(10, np.nan, dtype=np.float32)), "b2 contains NaN"),
    (lambda a: a.update(W1=np.array([object()] * 3, dtype=object)), "not a readable .npz"),
])
def test_bad_model_files_are_clear_errors(tmp_path, change, message):
    arrays = {k: v for k, v in zip(("W1", "b1", "W2", "b2"), init_params(0, 784, 4, 10))}
    change(arrays)
    path = _write_npz(tmp_path / "m.npz", **arrays)
    with pytest.raises(ModelFileError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        load_model(path)
    assert str(path) in str(caught.value)


def test_truncated_or_foreign_model_file(tmp_path):
    path = tmp_path / "m.npz"
    save_model(path, init_params(0, 784, 4, 10))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ModelFileError, match="not a readable .npz"):
        load_model(path)
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "x.npz")


def test_a_model_saved_on_one_backend_predicts_the_same_on_another(backend, mnist, tmp_path):
    torch_or_numpy = get_backend("torch") if _has_torch() else get_backend("numpy")
    x_host = (mnist.x_test[:500].reshape(500, -1) / 255.0).astype(np.float32)
    params = init_params(3, 784, 32, 10, init="he", xp=torch_or_numpy.xp, device=torch_or_numpy.device)
    save_model(tmp_path / "m.npz", params)
    expected = to_numpy(predict(params, torch_or_numpy.asarray(x_host)))
    loaded, _ = load_model(tmp_path / "m.npz", xp=backend.xp, device=backend.device)
    got = to_numpy(predict(loaded, backend.asarray(x_host)))
    np.testing.assert_array_equal(got, expected)


def _has_torch():
    return importlib.util.find_spec("torch") is not None


def test_evaluate_reports_what_training_printed(tmp_path, capsys):
    model = tmp_path / "m.npz"
    assert train_main(["--limit", "1280", "--hidden", "16", "--epochs", "1", "--save", str(model),
                       "--json", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()
    assert evaluate_main([str(model), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    trained = json.loads((tmp_path / "r.json").read_text())["runs"][0]["history"][-1]
    assert result["accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-12)
    assert result["samples"] == 10000 and 0 < result["loss"] < 35
    assert evaluate_main([str(tmp_path / "missing.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    # xpmlp-train's --json takes a PATH; this one prints: a PATH after it is refused with that hint,
    # in one line and status 2, and nothing is written there
    for argv in ([str(model), "--json", str(tmp_path / "out.json")], ["--json", str(tmp_path / "out.json"), str(model)]):
        with pytest.raises(SystemExit) as stop:
            evaluate_main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and "takes no PATH" in err, argv
        assert not (tmp_path / "out.json").exists()
    with pytest.raises(SystemExit) as stop:
        evaluate_main([str(model), "--bogus"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "unrecognized arguments: --bogus" in err and "PATH" not in err


X = np.random.default_rng(0).random((64, 784))
Y = np.arange(64) % 10


@pytest.mark.parametrize("x, y, message", [
    (X[:, :700], Y, "700 features; the model expects 784"),
    (X.reshape(64, 28, 28), Y, "must be 2-D"),
    (X, Y.astype(np.float64), "integer class indices"),
    (X, Y + 5, "labels must be in 0..9; got values from 5 to 14"),
    (X, Y[:60], "64 samples but labels has 60"),
    (np.where(X > 0.99, np.nan, X), Y, "NaN or infinity"),
    (X, Y[:, None], "labels must be 1-D"),
])
def test_library_inputs_are_validated(x, y, message):
    params = init_params(0, 784, 8, 10, dtype="float64")
    with pytest.raises(InputError, match=message):
        fit(x, y, params=params, config=TrainConfig(epochs=1, batch_size=32, hidden=8))


def test_fit_checks_its_other_arguments():
    config = TrainConfig(epochs=1, batch_size=32, hidden=8)
    with pytest.raises(InputError, match="x_test and y_test together"):
        fit(X, Y, x_test=X, config=config)
    with pytest.raises(InputError, match="params are float32 but x_train is float64"):
        fit(X, Y, params=init_params(0, 784, 8, 10, dtype="float32"), config=config)
    with pytest.raises(InputError, match="params have shapes"):
        fit(X, Y, params=init_params(0, 784, 8, 5, dtype="float64"), config=config)
    strict = get_backend("array_api_strict")
    with pytest.raises(InputError, match="different libraries"):
        fit(X, Y, params=init_params(0, 784, 8, 10, dtype="float64", xp=strict.xp), config=config)


# labels are separable (the class is the argmax of the first 10 features), so training accuracy is
# high; a hit count kept in the labels' own uint8 wrapped at 256 and reported ~0.04
SEPARABLE_X = np.random.default_rng(1).random((2000, 20)).astype(np.float32)
SEPARABLE_Y = SEPARABLE_X[:, :10].argmax(axis=1)


@pytest.mark.parametrize("label_dtype", ["uint8", "int8", "int16", "int32", "uint64", "int64"])
def test_any_integer_label_dtype_trains_the_same(backend, label_dtype):
    xp = backend.xp
    if label_dtype == "uint64" and backend.name == "torch":
        pytest.skip("torch implements no min/max for uint64 tensors")
    config = TrainConfig(epochs=2, batch_size=8, hidden=32, init="he", lr=0.05)
    x = backend.asarray(SEPARABLE_X, xp.float32)
    runs = {}
    for dtype in (label_dtype, "int64"):
        _, history = fit(x, backend.asarray(SEPARABLE_Y.astype(dtype), getattr(xp, dtype)), config=config)
        runs[dtype] = [(h["loss"], h["accuracy"]) for h in history]
    assert runs[label_dtype] == runs["int64"]
    assert runs["int64"][-1][1] > 0.3  # far above the 0.1 of chance, so a wrapped count would show


def test_mixed_namespaces_in_one_call_are_refused():
    strict = get_backend("array_api_strict")
    with pytest.raises(InputError, match="different libraries"):
        fit(strict.asarray(X), Y, config=TrainConfig(epochs=1, batch_size=32, hidden=8))


def test_library_config_is_validated():
    with pytest.raises(ConfigError, match="learning rate"):
        fit(X, Y, config=TrainConfig(lr=float("inf")))
    with pytest.raises(ConfigError, match="no full batch"):
        fit(X, Y, config=TrainConfig(batch_size=128))


def test_fit_keeps_results_on_the_callers_backend(backend):
    x = backend.asarray(X, backend.xp.float32)
    y = backend.asarray(Y, backend.xp.int64)
    params, history = fit(x, y, config=TrainConfig(epochs=2, batch_size=16, hidden=8, init="he"))
    from array_api_compat import device

    from xpmlp.backend import namespace

    assert all(namespace(p) is backend.xp and str(device(p)) == str(device(x)) for p in params)
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["loss"] < history[0]["loss"]


def test_unwritable_outputs_fail_before_training(tmp_path, capsys):
    code = train_main(["--save", str(tmp_path / "no" / "m.npz")])
    out, err = capsys.readouterr()
    assert code == 2 and "does not exist" in err
    assert out == ""  # refused before the first epoch line, not after ten epochs
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions
        pytest.skip("running as root: permission bits are not enforced")
    assert train_main(["--json", str(locked / "r.json")]) == 2
    out, err = capsys.readouterr()
    assert "not writable" in err and out == ""


def test_a_write_that_fails_mid_run_is_one_line_and_status_1(tmp_path, capsys, monkeypatch):
    import xpmlp.train as train

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "ckpt" / "checkpoint-bs64-epoch0001.npz"))

    monkeypatch.setattr(train, "write_checkpoint", disk_full)
    code = train_main(["--limit", "256", "--hidden", "8", "--epochs", "1", "--checkpoint-dir", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "cannot write" in err and "No space left on device" in err and "epoch0001.npz" in err


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_ctrl_c_while_loading_is_a_clean_exit_130(command, tmp_path, capsys, monkeypatch):
    import xpmlp.evaluate as evaluate
    import xpmlp.train as train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "load_dataset", interrupted)
    monkeypatch.setattr(evaluate, "load_dataset", interrupted)
    model = tmp_path / "m.npz"
    save_model(model, init_params(0, 784, 4, 10))
    code = train_main(["--epochs", "1"]) if command == "train" else evaluate_main([str(model)])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and "Traceback" not in err


def test_evaluate_refuses_a_model_with_other_than_10_outputs(tmp_path, capsys):
    model = tmp_path / "m5.npz"
    save_model(model, init_params(0, 784, 16, 5))
    assert evaluate_main([str(model)]) == 2
    assert "model has 5 outputs but mnist has 10 classes" in capsys.readouterr().err


def test_evaluate_keeps_a_float64_model_in_float64_on_jax(tmp_path, capsys):
    jax = pytest.importorskip("jax")
    was = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)  # as in a fresh process; other tests may have turned it on
    try:
        _evaluate_float64_on_jax(tmp_path, capsys)
    finally:
        jax.config.update("jax_enable_x64", was)


def _evaluate_float64_on_jax(tmp_path, capsys):
    model = tmp_path / "m.npz"
    save_model(model, init_params(0, 784, 16, 10, dtype="float64"))
    assert evaluate_main([str(model), "--json"]) == 0
    on_numpy = json.loads(capsys.readouterr().out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # JAX warns when it rounds float64 down to float32
        assert evaluate_main([str(model), "--json", "--backend", "jax"]) == 0
    on_jax = json.loads(capsys.readouterr().out)
    assert on_jax["accuracy"] == on_numpy["accuracy"]
    # float64 on both: the loss sums 10,000 samples, so a few hundred eps of relative difference
    assert on_jax["loss"] == pytest.approx(on_numpy["loss"], rel=1e3 * np.finfo(np.float64).eps)


def _lying_npz(path, names):
    """An .npz whose members' headers claim 8 TB each but hold 8 bytes of data."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(f"{name}.npy", header.getvalue() + b"\0" * 8)
    return path


def test_a_lying_npz_header_is_refused_without_allocating(tmp_path):
    import tracemalloc

    from xpmlp.data import load_npz
    from xpmlp.errors import DataError

    tracemalloc.start()
    with pytest.raises(ModelFileError, match="claims shape"):
        load_model(_lying_npz(tmp_path / "m.npz", ["W1", "b1", "W2", "b2"]))
    with pytest.raises(DataError, match="claims shape"):
        load_npz(_lying_npz(tmp_path / "d.npz", ["x_train", "y_train", "x_test", "y_test"]))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50 * 2**20
