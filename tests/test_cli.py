"""The CLI: epoch-line format, --save/--json contents, sweeps, and every misuse path (status 2, one line)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from xpmlp.io import load_model
from xpmlp.cli import parse_batch_sizes
from xpmlp.train import main

EPOCH_LINE = re.compile(
    r"^Epoch (\d+)/(\d+), Loss: (\d+\.\d{4}), Accuracy: (\d\.\d{4}), Test accuracy: (\d\.\d{4}), Time: \d+\.\d\ds$"
)
QUICK = ["--limit", "640", "--hidden", "16", "--epochs", "2"]


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_epoch_lines_start_like_the_seeds(capsys):
    code, out, err = run_cli(capsys, *QUICK)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:3] == ["", "Training with batch size 64", "=" * 40]
    matches = [EPOCH_LINE.match(line) for line in lines[3:]]
    assert all(matches) and [m.group(1, 2) for m in matches] == [("1", "2"), ("2", "2")], out
    assert "numpy (cpu)" in err and "640 training" in err


def test_same_seed_same_numbers_different_seed_different(capsys):
    def numbers(*extra):
        _, out, _ = run_cli(capsys, *QUICK, *extra)
        return [line.split(", Time")[0] for line in out.splitlines() if line.startswith("Epoch")]

    assert numbers("--seed", "3") == numbers("--seed", "3")
    assert numbers("--seed", "3") != numbers("--seed", "4")


def test_env_var_picks_the_backend_and_flag_wins(capsys, monkeypatch):
    monkeypatch.setenv("XPMLP_BACKEND", "array_api_strict")
    code, _, err = run_cli(capsys, *QUICK, "--epochs", "1")
    assert code == 0 and "array_api_strict (cpu)" in err
    code, _, err = run_cli(capsys, *QUICK, "--epochs", "1", "--backend", "numpy")
    assert code == 0 and "numpy (cpu)" in err


def test_auto_says_what_it_chose(capsys):
    code, _, err = run_cli(capsys, *QUICK, "--epochs", "1", "--backend", "auto")
    assert code == 0
    assert re.search(r"--backend auto chose (numpy|cupy)", err), err


def test_save_and_json_contents(capsys, tmp_path):
    model_path, report_path = tmp_path / "model.npz", tmp_path / "run.json"
    code, out, err = run_cli(capsys, *QUICK, "--dtype", "float64", "--save", str(model_path), "--json", str(report_path))
    assert code == 0, err
    with np.load(model_path, allow_pickle=False) as archive:
        assert {"W1", "b1", "W2", "b2"} <= set(archive.files)
        assert archive["W1"].shape == (784, 16) and archive["b1"].shape == (16,)
        assert archive["W2"].shape == (16, 10) and archive["b2"].shape == (10,)
        assert archive["W1"].dtype == np.float64
    params, meta = load_model(model_path)
    assert meta["config"]["hidden"] == 16 and meta["backend"] == "numpy"
    report = json.loads(report_path.read_text())
    assert report["backend"] == "numpy" and report["device"] == "cpu" and report["dataset"] == "mnist"
    history = report["runs"][0]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert set(history[0]) == {"epoch", "loss", "accuracy", "test_accuracy", "seconds"}
    printed = [EPOCH_LINE.match(line) for line in out.splitlines() if line.startswith("Epoch")]
    assert [f"{h['loss']:.4f}" for h in history] == [m.group(3) for m in printed]
    assert [f"{h['test_accuracy']:.4f}" for h in history] == [m.group(5) for m in printed]


def test_sweep_runs_each_batch_size_and_saves_each(capsys, tmp_path):
    code, out, err = run_cli(capsys, *QUICK, "--epochs", "1", "--batch-sizes", "32:64:32",
                             "--save", str(tmp_path / "m.npz"), "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    assert re.findall(r"Training with batch size (\d+)", out) == ["32", "64"]
    assert (tmp_path / "m-bs32.npz").is_file() and (tmp_path / "m-bs64.npz").is_file()
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert [r["config"]["batch_size"] for r in runs] == [32, 64]


def test_quiet_prints_nothing(capsys):
    code, out, err = run_cli(capsys, *QUICK, "--epochs", "1", "--quiet")
    assert code == 0 and out == "" and err == ""


@pytest.mark.parametrize("text, sizes", [("8:64:8", [8, 16, 24, 32, 40, 48, 56, 64]), ("8,32,64", [8, 32, 64]),
                                         ("16:16:8", [16])])
def test_batch_size_specs(text, sizes):
    assert parse_batch_sizes(text) == sizes


MISUSE = [
    (["--backend", "nope"], "invalid choice"),
    (["--batch-size", "0"], "expected an integer >= 1"),
    (["--epochs", "-1"], "expected an integer >= 1"),
    (["--lr", "nan"], "finite number > 0"),
    (["--lr", "-0.1"], "finite number > 0"),
    (["--hidden", "0"], "expected an integer >= 1"),
    (["--dtype", "float16"], "invalid choice"),
    (["--init", "xavier"], "invalid choice"),
    (["--batch-sizes", "64:8"], "start:stop:step"),
    (["--batch-size", "8", "--batch-sizes", "8,16"], "not allowed with"),
    (["--limit", "10"], "no full batch of 64"),
    (["--limit", "999999"], "exceeds the 60000"),
    (["--save", "/nonexistent-dir/m.npz"], "does not exist"),
    (["--json", "/nonexistent-dir/r.json"], "does not exist"),
    (["--data-dir", "/nonexistent-data"], "nonexistent-data"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--seed", "x"], "expected an integer >= 0"),
]


def exit_code(args):
    """main's return value, or the status argparse exits with."""
    try:
        return main(args)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize("args, reason", MISUSE, ids=[" ".join(a) for a, _ in MISUSE])
def test_misuse_exits_2_with_one_line(capsys, args, reason):
    code = exit_code(args)
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert reason in err and "Traceback" not in err
    assert out == ""


def _subprocess(*args, env=None):
    return subprocess.run([sys.executable, "-m", "xpmlp.train", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_unknown_env_backend_lists_valid_names():
    result = _subprocess("--epochs", "1", env={"XPMLP_BACKEND": "tensorflow"})
    assert result.returncode == 2
    assert "unknown $XPMLP_BACKEND 'tensorflow'" in result.stderr and "numpy, cupy, torch" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unusable_backend_is_explained_not_switched():
    # cupy is absent (or has no GPU) on CI: the error must say why and suggest numpy or auto
    result = _subprocess("--backend", "cupy", "--epochs", "1", *QUICK[:4])
    if result.returncode == 0:
        pytest.skip("cupy is usable on this machine")
    assert result.returncode == 2
    assert "cupy" in result.stderr and "--backend numpy" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_help_documents_every_flag():
    result = _subprocess("--help")
    assert result.returncode == 0
    for flag in ("--backend", "--device", "--epochs", "--batch-size", "--batch-sizes", "--hidden", "--lr", "--dtype",
                 "--init", "--seed", "--data-dir", "--dataset", "--limit", "--save", "--json", "--quiet",
                 "--checkpoint-dir", "--resume"):
        assert flag in result.stdout
    for default in ("(default: 10)", "(default: 64)", "(default: 300)", "(default: 0.01)", "(default: float32)",
                    "(default: seed)", "(default: 0)", "(default: mnist)"):
        assert default in result.stdout
    # options that are off unless given have no default worth printing
    assert "(default: None)" not in result.stdout and "(default: False)" not in result.stdout


def test_data_dir_accepts_an_npz(capsys, tmp_path, mnist):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=mnist.x_train[:256], y_train=mnist.y_train[:256], x_test=mnist.x_test[:100],
             y_test=mnist.y_test[:100])
    code, out, err = run_cli(capsys, "--data-dir", str(path), "--epochs", "1", "--hidden", "8")
    assert code == 0, err
    assert "256 training / 100 test" in err


def test_the_resume_hint_is_quoted_for_the_users_shell():
    from xpmlp.train import command_line

    words = ["python", "-m", "xpmlp.train", "--checkpoint-dir", "C:\\Users\\Ann Lee\\ck", "--resume"]
    assert command_line(words, windows=True) == 'python -m xpmlp.train --checkpoint-dir "C:\\Users\\Ann Lee\\ck" --resume'
    assert command_line(words[:4] + ["/home/ann lee/ck"], windows=False) == \
        "python -m xpmlp.train --checkpoint-dir '/home/ann lee/ck'"


def test_save_adds_npz_like_np_savez_and_says_where_it_wrote(tmp_path, capsys):
    assert main(["--limit", "256", "--hidden", "8", "--epochs", "1", "--save", str(tmp_path / "mymodel"),
                 "--json", str(tmp_path / "run.json")]) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "mymodel.npz").exists() and not (tmp_path / "mymodel").exists()
    assert f"saved the model to {tmp_path / 'mymodel.npz'}" in err and f"wrote the run report to {tmp_path / 'run.json'}" in err
