"""The README's library example runs as written, with NumPy standing in for CuPy (no GPU here):
the calls it shows exist, take those arguments and return what its comments say."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def _library_example() -> str:
    text = README.read_text()
    section = text[text.index("## Library use"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_library_example_runs_on_numpy(tmp_path, monkeypatch):
    code = _library_example()
    assert "import cupy as cp" in code and "TrainConfig(epochs=10" in code  # what is replaced below
    code = code.replace("import cupy as cp", "import numpy as cp").replace("TrainConfig(epochs=10", "TrainConfig(epochs=1")
    monkeypatch.chdir(tmp_path)  # the example saves model.npz in the working folder
    names: dict = {}
    exec(compile(code, str(README), "exec"), names)
    params, history, labels = names["params"], names["history"], names["labels"]
    assert [h["epoch"] for h in history] == [1] and history[0]["test_accuracy"] > 0.8
    assert isinstance(labels, np.ndarray) and labels.shape == (10_000,)
    np.testing.assert_array_equal(names["params_np"][0], params[0])  # saved and loaded back exactly
    assert (tmp_path / "model.npz").exists()
