"""The toolkit on Keras 3's three backends: models saved as ``.keras`` under TensorFlow, loaded under JAX and PyTorch
(each in its own process: ``KERAS_BACKEND`` is read when Keras is imported), give the same maps for every method of
the registry -- the random ones (RISE, SmoothGrad) too, their masks and noise being drawn by numpy from one seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cam_mnist.config import RunConfig
from cam_mnist.data.splits import load_split
from cam_mnist.maps import registry

WORKER = Path(__file__).with_name("backend_worker.py")
BACKENDS = ("tensorflow", "jax", "torch")
# Maps are in [0, 1]; float32 on three backends agrees to ~1e-5 (different kernels and summation orders).
TOLERANCE = 1e-4


def run_under(backend: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    """tests/backend_worker.py under ``backend`` (a failure shows the worker's own traceback)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{backend}:\n{result.stderr[-3000:]}"
    return result


def _conv_model() -> keras.Model:
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))


def _nested_mobilenet() -> keras.Model:
    """The Keras guides' transfer-learning recipe: a whole MobileNetV2 nested in a Sequential (random weights)."""
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    return keras.Sequential([keras.Input((32, 32, 3)), base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])


@pytest.fixture(scope="module")
def cases(tmp_path_factory, tiny_run, data_dir):
    """The three models saved under TensorFlow, with their images: a small conv net, a nested MobileNetV2 and a
    trained cam_mnist model (the tiny run's)."""
    folder = tmp_path_factory.mktemp("backends")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    config = RunConfig.load(tiny_run / "config.json")
    made = {
        "conv": (_conv_model(), rng.random((3, 24, 24, 3), np.float32)),
        "mobilenetv2": (_nested_mobilenet(), rng.random((2, 32, 32, 3), np.float32)),
        "cam_mnist": (None, load_split("test", config.data, data_dir).float_images(slice(0, 3))),
    }
    listed = []
    for name, (model, images) in made.items():
        path = tiny_run / "model.keras" if model is None else folder / f"{name}.keras"
        if model is not None:
            model.save(path)
        np.save(folder / f"{name}.npy", images)
        listed.append({"name": name, "model": str(path), "images": str(folder / f"{name}.npy"), "layer": None})
    (folder / "cases.json").write_text(json.dumps(listed))
    return folder


@pytest.fixture(scope="module")
def maps(cases):
    """{backend: every map of every case}, each backend in its own process."""
    out = {}
    for backend in BACKENDS:
        run_under(backend, "maps", cases / "cases.json", cases / f"{backend}.npz")
        out[backend] = dict(np.load(cases / f"{backend}.npz"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("case", ["conv", "mobilenetv2", "cam_mnist"])
def test_every_method_gives_tensorflows_maps(maps, backend, case):
    theirs, ours = maps["tensorflow"], maps[backend]
    assert str(ours["backend"]) == backend  # the worker really ran on it
    assert str(ours[f"{case}/default_layer"]) == str(theirs[f"{case}/default_layer"])
    differences = {}
    for method in registry.METHODS:
        key = f"{case}/{method}"
        assert ours[key].shape == theirs[key].shape and ours[key].max() > 0, (method, ours[key].shape)
        np.testing.assert_array_equal(ours[f"{key}/classes"], theirs[f"{key}/classes"], err_msg=method)
        differences[method] = float(np.abs(ours[key] - theirs[key]).max())
    assert max(differences.values()) < TOLERANCE, differences
    np.testing.assert_array_equal(ours[f"{case}/segment"], theirs[f"{case}/segment"])
