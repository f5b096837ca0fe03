"""Tests of xpmlp.data: bundled MNIST, small hand-written IDX/npz files, every error path, fuzzing."""

import gzip
import shutil
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from xpmlp import data
from xpmlp.data import Dataset, load_dataset, load_idx_dir, load_mnist, load_npz, read_idx
from xpmlp.errors import ConfigError, DataError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_file(path: Path, payload: bytes, compress: bool = False) -> Path:
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def small_arrays(n_train=6, n_test=4, rows=3, cols=2, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx_dir(folder: Path, arrays: dict, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, base_name in data.IDX_FILES.items():
        name = f"{base_name}.gz" if compress else base_name
        write_file(folder / name, idx_bytes(arrays[key]), compress)
    return folder


def write_sums(folder: Path, arrays: dict, tamper: str | None = None) -> None:
    lines = []
    for key, base_name in data.IDX_FILES.items():
        digest = data.sha256_of(idx_bytes(arrays[key]))
        lines.append(f"{'0' * 64 if base_name == tamper else digest}  {base_name}\n")
    (folder / data.SUMS_FILE).write_text("".join(lines))


# --- bundled MNIST ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def test_bundled_mnist_shapes_dtypes_and_label_counts(mnist):
    assert mnist.x_train.shape == (60000, 28, 28)
    assert mnist.y_train.shape == (60000,)
    assert mnist.x_test.shape == (10000, 28, 28)
    assert mnist.y_test.shape == (10000,)
    assert {a.dtype for a in mnist[:4]} == {np.dtype(np.uint8)}
    assert np.bincount(mnist.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(mnist.y_test).tolist() == MNIST_TEST_COUNTS
    assert mnist.name == "mnist"
    assert mnist.source == str(data.bundled_data_dir())


def test_bundled_mnist_arrays_are_contiguous_and_writable(mnist):
    for array in mnist[:4]:
        assert array.flags.c_contiguous and array.flags.writeable


def test_load_dataset_mnist_is_the_bundled_copy(mnist):
    loaded = load_dataset("mnist")
    assert loaded.name == "mnist"
    assert np.array_equal(loaded.y_test, mnist.y_test)


@pytest.fixture
def bundled_copy(tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(data.bundled_data_dir(), folder)
    for file in folder.iterdir():
        file.chmod(0o644)
    return folder


def test_bundled_checksum_mismatch_names_file_and_both_digests(bundled_copy, monkeypatch):
    sums_file = bundled_copy / data.SUMS_FILE
    real = dict(line.split()[::-1] for line in sums_file.read_text().splitlines())
    fake = "f" * 64
    sums_file.write_text(sums_file.read_text().replace(real["t10k-labels-idx1-ubyte"], fake))
    monkeypatch.setattr(data, "bundled_data_dir", lambda: bundled_copy)
    with pytest.raises(DataError) as info:
        load_mnist()
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert fake in message and real["t10k-labels-idx1-ubyte"] in message


def test_load_mnist_folder_without_sums_uses_bundled_digests(tmp_path):
    arrays = small_arrays()
    folder = write_idx_dir(tmp_path / "fake-mnist", arrays)
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        load_mnist(folder)
    assert np.array_equal(load_mnist(folder, verify=False).x_test, arrays["x_test"])


# --- small IDX files --------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_file(tmp_path / ("a.idx.gz" if compress else "a.idx"), idx_bytes(array), compress)
    result = read_idx(path, expected_ndim=3)
    assert result.dtype == np.uint8 and np.array_equal(result, array)


def test_read_idx_detects_gzip_without_gz_suffix(tmp_path):
    array = np.array([7, 1, 9], dtype=np.uint8)
    path = write_file(tmp_path / "labels.idx", idx_bytes(array), compress=True)
    assert read_idx(path).tolist() == [7, 1, 9]


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_dir_round_trip(tmp_path, compress):
    arrays = small_arrays()
    folder = write_idx_dir(tmp_path / "d", arrays, compress)
    loaded = load_idx_dir(folder)
    for key in data.NPZ_KEYS:
        assert np.array_equal(getattr(loaded, key), arrays[key])
    assert loaded.name == str(folder) and loaded.source == str(folder)


def test_load_idx_dir_verifies_when_sums_file_present(tmp_path):
    arrays = small_arrays()
    folder = write_idx_dir(tmp_path / "d", arrays)
    write_sums(folder, arrays)
    assert load_idx_dir(folder).y_train.tolist() == arrays["y_train"].tolist()
    write_sums(folder, arrays, tamper="train-images-idx3-ubyte")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: SHA-256 mismatch.*expected 0{64}"):
        load_idx_dir(folder)
    assert load_idx_dir(folder, verify=False).x_train.shape == (6, 3, 2)


def test_load_idx_dir_verify_true_without_sums_file(tmp_path):
    folder = write_idx_dir(tmp_path / "d", small_arrays())
    with pytest.raises(DataError, match=r"SHA256SUMS\.uncompressed: checksum file not found"):
        load_idx_dir(folder, verify=True)


def test_sums_file_missing_entry(tmp_path):
    arrays = small_arrays()
    folder = write_idx_dir(tmp_path / "d", arrays)
    digest = data.sha256_of(idx_bytes(arrays["x_train"]))
    (folder / data.SUMS_FILE).write_text(f"{digest}  train-images-idx3-ubyte\n")
    with pytest.raises(DataError, match="no SHA-256 entry for train-labels-idx1-ubyte"):
        load_idx_dir(folder)


def test_sums_file_malformed_line(tmp_path):
    folder = write_idx_dir(tmp_path / "d", small_arrays())
    (folder / data.SUMS_FILE).write_text("not-a-digest  train-images-idx3-ubyte\n")
    with pytest.raises(DataError, match=r"SHA256SUMS\.uncompressed:1: malformed line"):
        load_idx_dir(folder)


# --- IDX error paths --------------------------------------------------------------------------


def test_bad_magic(tmp_path):
    path = write_file(tmp_path / "x", b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match=r"x: not an IDX file: bad magic bytes 01 02 08 01"):
        read_idx(path)


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match="bad magic bytes.*empty file"):
        read_idx(write_file(tmp_path / "empty", b""))


def test_unsupported_type_code(tmp_path):
    path = write_file(tmp_path / "floats", idx_bytes(np.zeros(4, np.uint8), type_code=0x0D))
    with pytest.raises(DataError, match="unsupported IDX data type code 0x0d"):
        read_idx(path)


def test_wrong_ndim(tmp_path):
    path = write_file(tmp_path / "labels", idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match="expected a 3-D IDX file, header declares 1-D"):
        read_idx(path, expected_ndim=3)


def test_truncated_header(tmp_path):
    path = write_file(tmp_path / "short", bytes([0, 0, 8, 3]) + b"\x00\x00\x00\x02")
    with pytest.raises(DataError, match="3 dimensions need 12 bytes, found 4"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_data(tmp_path, compress):
    payload = idx_bytes(np.zeros((2, 3, 4), np.uint8))[:-5]
    path = write_file(tmp_path / "t.gz" if compress else tmp_path / "t", payload, compress)
    with pytest.raises(DataError, match=r"truncated: header shape \(2, 3, 4\) needs 24 bytes, found 19"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    path = write_file(tmp_path / "t", idx_bytes(np.zeros(5, np.uint8)) + b"extra")
    with pytest.raises(DataError, match="trailing bytes: header shape \\(5,\\) needs 5 bytes, found more than 5"):
        read_idx(path)


def test_truncated_gzip(tmp_path):
    compressed = gzip.compress(idx_bytes(np.arange(3000, dtype=np.uint32).astype(np.uint8)))
    path = write_file(tmp_path / "cut.gz", compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: cannot read/decompress"):
        read_idx(path)


def test_corrupt_gzip(tmp_path):
    rng = np.random.default_rng(1)
    compressed = bytearray(gzip.compress(idx_bytes(rng.integers(0, 256, 5000, dtype=np.uint8))))
    middle = len(compressed) // 2
    compressed[middle : middle + 8] = bytes(b ^ 0xFF for b in compressed[middle : middle + 8])
    path = write_file(tmp_path / "flipped.gz", bytes(compressed))
    with pytest.raises(DataError, match=r"flipped\.gz: cannot read/decompress"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.idx: no such file"):
        read_idx(tmp_path / "nope.idx")


def test_lying_header_over_cap_is_refused_without_allocating(tmp_path):
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**20, 2**10, 2**10)  # claims 2**40 bytes
    path = write_file(tmp_path / "liar", header + b"\x00" * 100)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"claims shape .* = {2**40} bytes"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


@pytest.mark.parametrize("compress", [False, True])
def test_lying_header_under_cap_reads_only_what_exists(tmp_path, compress):
    header = bytes([0, 0, 8, 1]) + struct.pack(">I", 2**31 - 1)
    path = write_file(tmp_path / "liar", header + b"\x07" * 1000, compress)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"needs {2**31 - 1} bytes, found 1000"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_label_out_of_range(tmp_path):
    arrays = small_arrays()
    arrays["y_test"][2] = 12
    folder = write_idx_dir(tmp_path / "d", arrays)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: label 12 at index 2 is outside 0\.\.9"):
        load_idx_dir(folder)


def test_image_label_count_mismatch(tmp_path):
    arrays = small_arrays()
    arrays["y_train"] = arrays["y_train"][:5]
    folder = write_idx_dir(tmp_path / "d", arrays)
    with pytest.raises(DataError) as info:
        load_idx_dir(folder)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz has 6 images" in message
    assert "train-labels-idx1-ubyte.gz has 5 labels" in message


def test_train_test_pixel_count_mismatch(tmp_path):
    arrays = small_arrays()
    arrays["x_test"] = np.zeros((4, 5, 5), np.uint8)
    with pytest.raises(DataError, match="train and test pixel counts differ"):
        load_idx_dir(write_idx_dir(tmp_path / "d", arrays))


def test_labels_file_with_images_shape(tmp_path):
    arrays = small_arrays()
    folder = write_idx_dir(tmp_path / "d", arrays)
    write_file(folder / "train-labels-idx1-ubyte.gz", idx_bytes(arrays["x_train"]), compress=True)
    with pytest.raises(DataError, match="expected a 1-D IDX file, header declares 3-D"):
        load_idx_dir(folder)


def test_missing_files_lists_every_path_looked_for(tmp_path):
    folder = write_idx_dir(tmp_path / "d", small_arrays())
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_idx_dir(folder)
    message = str(info.value)
    assert str(folder / "t10k-images-idx3-ubyte") in message
    assert str(folder / "t10k-images-idx3-ubyte.gz") in message
    assert "train-images" not in message


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="data folder does not exist"):
        load_idx_dir(tmp_path / "absent")


# --- npz --------------------------------------------------------------------------------------


def test_npz_round_trip_converts_int_labels_to_uint8(tmp_path):
    arrays = small_arrays()
    path = tmp_path / "mnist.npz"
    np.savez(path, **{**arrays, "y_train": arrays["y_train"].astype(np.int64)})
    loaded = load_npz(path)
    assert loaded.y_train.dtype == np.uint8
    for key in data.NPZ_KEYS:
        assert np.array_equal(getattr(loaded, key), arrays[key])
    assert loaded.name == str(path) and loaded.source == str(path)


def test_data_dir_takes_an_npz_whatever_the_case_of_its_suffix(tmp_path):
    path = tmp_path / "MNIST.NPZ"
    with open(path, "wb") as handle:  # np.savez would append .npz to a name ending .NPZ
        np.savez(handle, **small_arrays())
    assert load_dataset("mnist", path).x_train.shape == small_arrays()["x_train"].shape


def test_npz_missing_key_lists_missing_and_present(tmp_path):
    arrays = small_arrays()
    del arrays["y_test"]
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"missing array\(s\) \['y_test'\]; present: \['x_test', 'x_train', 'y_train'\]"):
        load_npz(path)


def test_npz_wrong_image_dtype(tmp_path):
    arrays = small_arrays()
    arrays["x_train"] = arrays["x_train"].astype(np.float32)
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"m\.npz\[x_train\]: images must be uint8 pixel codes 0\.\.255, got float32; store the raw"):
        load_npz(path)


def test_npz_float_labels(tmp_path):
    arrays = small_arrays()
    arrays["y_test"] = arrays["y_test"].astype(np.float64)
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"\[y_test\]: labels must have an integer dtype, got float64"):
        load_npz(path)


def test_npz_negative_label(tmp_path):
    arrays = small_arrays()
    arrays["y_train"] = arrays["y_train"].astype(np.int16)
    arrays["y_train"][4] = -1
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"\[y_train\]: label -1 at index 4"):
        load_npz(path)


def test_npz_flat_images_rejected(tmp_path):
    arrays = small_arrays()
    arrays["x_train"] = arrays["x_train"].reshape(6, 6)
    path = tmp_path / "m.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"images must be 3-D \(N, rows, cols\), got shape \(6, 6\); store them as in keras"):
        load_npz(path)


def test_npz_not_a_zip(tmp_path):
    path = write_file(tmp_path / "junk.npz", b"this is not a zip archive")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz archive"):
        load_npz(path)


def test_npz_that_is_a_npy(tmp_path):
    path = tmp_path / "single.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match="single-array .npy file"):
        load_npz(path)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="absent.npz: no such file"):
        load_npz(tmp_path / "absent.npz")


# --- load_dataset -----------------------------------------------------------------------------


def test_load_dataset_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'; valid names: mnist, fashion-mnist"):
        load_dataset("cifar")


def test_load_dataset_fashion_missing_suggests_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        load_dataset("fashion-mnist")


def test_load_dataset_fashion_from_debian_dir(tmp_path, monkeypatch):
    arrays = small_arrays(seed=3)
    folder = write_idx_dir(tmp_path / "fashion", arrays)
    monkeypatch.setattr(data, "FASHION_MNIST_DEBIAN_DIR", str(folder))
    loaded = load_dataset("fashion-mnist")
    assert loaded.name == "fashion-mnist" and loaded.source == str(folder)
    assert np.array_equal(loaded.x_train, arrays["x_train"])


def test_load_dataset_data_dir_folder_and_npz(tmp_path):
    arrays = small_arrays(seed=4)
    folder = write_idx_dir(tmp_path / "d", arrays, compress=False)
    npz_path = tmp_path / "m.npz"
    np.savez(npz_path, **arrays)
    from_folder = load_dataset("mnist", data_dir=folder)
    from_npz = load_dataset("mnist", data_dir=str(npz_path))
    assert from_folder.name == str(folder) and from_npz.name == str(npz_path)
    assert np.array_equal(from_folder.y_test, arrays["y_test"])
    assert np.array_equal(from_npz.x_test, arrays["x_test"])


def test_load_dataset_bad_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(data_dir=tmp_path / "absent")
    with pytest.raises(DataError, match="must be a folder of IDX files or a file ending .npz"):
        load_dataset(data_dir=write_file(tmp_path / "data.csv", b"1,2"))


# --- property tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_dir():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def read_idx_or_data_error(path: Path) -> None:
    try:
        result = read_idx(path)
    except DataError:
        return
    assert isinstance(result, np.ndarray) and result.dtype == np.uint8


@FUZZ
@given(payload=st.binary(max_size=200))
def test_fuzz_read_idx_arbitrary_bytes(fuzz_dir, payload):
    read_idx_or_data_error(write_file(fuzz_dir / "any", payload))


idx_headers = st.tuples(
    st.sampled_from([0x08, 0x09, 0x0D]), st.lists(st.integers(0, 6), min_size=0, max_size=4)
).map(lambda t: bytes([0, 0, t[0], len(t[1])]) + struct.pack(f">{len(t[1])}I", *t[1]))


@FUZZ
@given(header=idx_headers, body=st.binary(max_size=300), cut=st.integers(0, 20))
def test_fuzz_read_idx_valid_header_prefix(fuzz_dir, header, body, cut):
    payload = (header + body)[: max(0, len(header) + len(body) - cut)]
    read_idx_or_data_error(write_file(fuzz_dir / "hdr", payload))


@FUZZ
@given(header=idx_headers, body=st.binary(max_size=300), cut=st.integers(0, 30))
def test_fuzz_read_idx_gzip(fuzz_dir, header, body, cut):
    compressed = gzip.compress(header + body)
    read_idx_or_data_error(write_file(fuzz_dir / "f.gz", compressed[: len(compressed) - cut]))


@FUZZ
@given(payload=st.binary(max_size=300))
def test_fuzz_read_idx_gzip_arbitrary_bytes(fuzz_dir, payload):
    read_idx_or_data_error(write_file(fuzz_dir / "g.gz", payload))


def load_npz_or_data_error(path: Path) -> None:
    try:
        result = load_npz(path)
    except DataError:
        return
    assert isinstance(result, Dataset)


@FUZZ
@given(payload=st.binary(max_size=300))
def test_fuzz_load_npz_arbitrary_bytes(fuzz_dir, payload):
    load_npz_or_data_error(write_file(fuzz_dir / "any.npz", payload))


@pytest.fixture(scope="module")
def valid_npz_bytes(fuzz_dir):
    path = fuzz_dir / "valid.npz"
    np.savez_compressed(path, **small_arrays(n_train=3, n_test=2))
    return path.read_bytes()


@FUZZ
@given(data_=st.data())
def test_fuzz_load_npz_damaged_archive(fuzz_dir, valid_npz_bytes, data_):
    damaged = bytearray(valid_npz_bytes)
    for _ in range(data_.draw(st.integers(1, 4))):
        damaged[data_.draw(st.integers(0, len(damaged) - 1))] = data_.draw(st.integers(0, 255))
    cut = data_.draw(st.integers(0, len(damaged)))
    load_npz_or_data_error(write_file(fuzz_dir / "damaged.npz", bytes(damaged[: len(damaged) - cut])))


def test_an_unreadable_idx_file_is_named_as_such_not_as_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\0\0\x08\x01\0\0\0\0")

    def denied(*args, **kwargs):  # as root here, so the permission bits alone would not stop a read
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data, "open", denied, raising=False)
    with pytest.raises(DataError, match="permission denied; make the file readable") as exc:
        read_idx(path)
    assert "corrupt" not in str(exc.value)
