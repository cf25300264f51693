"""The toolkit on Keras 3's three backends: models saved as ``.keras`` under TensorFlow, loaded under JAX and PyTorch
(each in its own process: ``KERAS_BACKEND`` is read when Keras is imported), give the same maps for every method of
the registry -- the random ones (RISE, SmoothGrad) too, their masks and noise being drawn by numpy from one seed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
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
# Ablation-CAM's weights are (y - y_k) / y, differences of near-equal scores, so kernels' rounding grows there: on
# MobileNetV2 under PyTorch 1.8e-4 seen on an Intel Xeon with AMX (every other method 1e-5 or less).
TOLERANCE_OF = {"ablationcam": 1e-3}


def start_under(backend: str, *args) -> subprocess.Popen:
    """tests/backend_worker.py under ``backend``, started (the backends' workers run side by side)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, str(WORKER), *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finished(backend: str, process: subprocess.Popen) -> None:
    """Waits for a worker; its failure shows the worker's own traceback."""
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, f"{backend}:\n{stderr[-3000:]}"


def _conv_model() -> keras.Model:
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))


def _nested_mobilenet() -> keras.Model:
    """The Keras guides' transfer-learning recipe: a whole MobileNetV2 nested in a Sequential (random weights)."""
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3), alpha=0.35)
    return keras.Sequential(
        [keras.Input((64, 64, 3)), base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    )


def _vision_transformer() -> keras.Model:
    """keras_hub's ViT classifier (random weights): maps at the input of its last attention, inside its encoder."""
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(64, 64, 3), patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=3)


# The untrained MobileNetV2's 2 x 2 cells are equal to float precision: centred over the cells, as KPCA-CAM's kernel
# PCA takes them, nothing is left, and its map is 0 on every backend.
FLAT = {("mobilenetv2", "kpcacam")}
# CAM needs a GAP -> linear head over a grid, AblationCAM a layer the scores pass through alone: a ViT has neither.
NOT_ON_TOKENS = ("cam", "ablationcam")


@pytest.fixture(scope="module")
def cases(tmp_path_factory, tiny_run, data_dir):
    """The models saved under TensorFlow, with their images: a small conv net, a nested MobileNetV2, a trained
    cam_mnist model (the tiny run's) and keras_hub's ViT."""
    folder = tmp_path_factory.mktemp("backends")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    config = RunConfig.load(tiny_run / "config.json")
    made = {
        "conv": (_conv_model(), rng.random((3, 24, 24, 3), np.float32)),
        "mobilenetv2": (_nested_mobilenet(), rng.random((2, 64, 64, 3), np.float32)),
        "cam_mnist": (None, load_split("test", config.data, data_dir).float_images(slice(0, 3))),
        "vit": (_vision_transformer(), rng.random((2, 64, 64, 3), np.float32)),
    }
    listed = []
    for name, (model, images) in made.items():
        path = tiny_run / "model.keras" if model is None else folder / f"{name}.keras"
        if model is not None:
            model.save(path)
        np.save(folder / f"{name}.npy", images)
        methods = [m for m in registry.METHODS if m not in NOT_ON_TOKENS] if name == "vit" else None
        listed.append({"name": name, "model": str(path), "images": str(folder / f"{name}.npy"), "layer": None})
        listed[-1]["methods"] = methods
    (folder / "cases.json").write_text(json.dumps(listed))
    return folder


@pytest.fixture(scope="module")
def maps(cases):
    """{backend: every map of every case}, each backend in its own process."""
    workers = {
        backend: start_under(backend, "maps", cases / "cases.json", cases / f"{backend}.npz") for backend in BACKENDS
    }
    for backend, process in workers.items():
        finished(backend, process)
    return {backend: dict(np.load(cases / f"{backend}.npz")) for backend in BACKENDS}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("case", ["conv", "mobilenetv2", "cam_mnist", "vit"])
def test_every_method_gives_tensorflows_maps(maps, backend, case):
    theirs, ours = maps["tensorflow"], maps[backend]
    assert str(ours["backend"]) == backend  # the worker really ran on it
    assert str(ours[f"{case}/default_layer"]) == str(theirs[f"{case}/default_layer"])
    differences = {}
    for method in [m for m in registry.METHODS if case != "vit" or m not in NOT_ON_TOKENS]:
        key = f"{case}/{method}"
        assert ours[key].shape == theirs[key].shape, (method, ours[key].shape)
        assert ours[key].max() > 0 or (case, method) in FLAT, method
        np.testing.assert_array_equal(ours[f"{key}/classes"], theirs[f"{key}/classes"], err_msg=method)
        differences[method] = float(np.abs(ours[key] - theirs[key]).max())
    over = {m: d for m, d in differences.items() if d >= TOLERANCE_OF.get(m, TOLERANCE)}
    assert not over, over
    np.testing.assert_array_equal(ours[f"{case}/segment"], theirs[f"{case}/segment"])


# ------------------------------------------------------------------------------------ pytorch-grad-cam, the same model
# Under PyTorch a Keras model is a torch.nn.Module: pytorch-grad-cam (PyPI grad-cam) hooks its Keras layer and
# explains it with its own code (tests/backend_worker.py: grad_cam). Where a convention of theirs differs from the
# paper's or ours, the comparison names it.
SAME_AS_THEIRS = {
    "gradcam": "as it is",
    "xgradcam": "as it is (their 1e-7 in the denominator)",
    "layercam": "as it is",
    "hirescam": "as it is",
    "gradcam++": "their alpha normalised to sum to 1 over the cells, as the authors' code and tf-keras-vis do",
    "scorecam": "their target log p^c: they softmax the scores over channels, so p^c / sum_k p^c(k), our weights x a "
    "constant; at a layer of the input's size (their UpsamplingBilinear2d aligns corners, ours centres pixels)",
    "ablationcam": "the model split at the layer around a torch Identity, the module their ablation layer replaces",
    "eigencam": "at a layer centred over its cells (theirs centres before the SVD); the SVD's sign is arbitrary: one "
    "of ours for either sign",
    "gradcam-elementwise": "as it is",
    "eigengradcam": "the SVD's sign is arbitrary (ours: the largest value positive): one of ours for either sign",
    "fem": "as it is",
    "kpcacam": "the kernel PCA's sign is arbitrary: one of ours for either sign; theirs in float64 (scikit-learn)",
    "shapleycam": "their target the paper's ReST score, ours' own; theirs at a layer giving c2 as (B, K, h, w): their "
    "ShapleyCAM weighs activations before the reshape_transform",
    "finercam": "as it is, the predicted classes and their three nearest",
    "aug_smooth": "their mean of the six normalised maps, normalised again as every map of ours",
    "eigen_smooth": "the SVD's sign is arbitrary: one of ours for either sign",
    "layer=[c1, c2]": "their normalisation's 1e-7 in the denominator removed (c1's map is of values near 1e-3)",
    "fullgrad": "theirs on the same network written in torch (they find torch.nn.Conv2d / BatchNorm2d modules), its "
    "weights copied; their normalisation's 1e-7 removed (a bias channel's values are small)",
}
TOLERANCE_AGAINST_THEIRS = {"kpcacam": 1e-4}  # float32 against their float64: 2.3e-5 seen; the rest 1e-5


@pytest.fixture(scope="module")
def grad_cam_maps(tmp_path_factory):
    if importlib.util.find_spec("pytorch_grad_cam") is None:  # found, not imported: torch beside TensorFlow crashes
        pytest.skip("pytorch-grad-cam is not installed: pip install '.[torch]' (make test installs it)")
    out = tmp_path_factory.mktemp("grad_cam") / "maps.json"
    finished("torch", start_under("torch", "grad-cam", out))
    return {k: [np.array(a) for a in v] for k, v in json.loads(out.read_text()).items()}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(SAME_AS_THEIRS))
def test_pytorch_grad_cam_gives_our_maps(grad_cam_maps, method):
    theirs, *ours = grad_cam_maps[method]
    theirs = _minmax(theirs)  # a no-op on all but aug_smooth's, their mean of normalised maps
    assert theirs.shape == (3, 24, 24) and theirs.max() > 0.99, SAME_AS_THEIRS[method]
    closest = np.min([np.abs(theirs - o).max(axis=(1, 2)) for o in ours], axis=0)  # per image (EigenCAM: either sign)
    assert closest.max() < TOLERANCE_AGAINST_THEIRS.get(method, 1e-5), (SAME_AS_THEIRS[method], closest)


def _minmax(maps):
    lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    return np.divide(maps - lo, hi - lo, out=np.zeros_like(maps), where=hi > lo)


THEIR_METRICS = ["road_morf", "road_lerf", "road_combined", "confidence drop", "confidence increase"]


@pytest.mark.slow
@pytest.mark.parametrize("metric", THEIR_METRICS)
def test_pytorch_grad_cams_metrics_give_ours(grad_cam_maps, metric):
    # The same Grad-CAM maps scored by their metric and ours, per image; ROAD with the imputation's noise 0 (theirs
    # draws torch's random numbers), the drop theirs absolute (ours divided by the whole image's probability).
    theirs, ours = grad_cam_maps[metric]
    assert theirs.shape == ours.shape == (3,)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    if metric.startswith("road"):
        assert np.abs(theirs).max() > 1e-3  # the imputation changed the probabilities: the test can fail


def test_their_gradcam_plus_plus_alpha_is_a_different_convention(grad_cam_maps):
    # Without the normalisation of alpha their Grad-CAM++ weights each channel differently: the maps differ.
    theirs, ours = grad_cam_maps["gradcam++ (their alpha)"]
    assert np.abs(theirs - ours).max() > 0.05


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_cam_callback_draws_the_weights_as_fit_changes_them(backend, tmp_path):
    finished(backend, start_under(backend, "fit", tmp_path))
    result = json.loads((tmp_path / "fit.json").read_text())
    assert result["steps"] == [0, 2, 4, 6, 8] and result["page"]  # 64 images, batch 8: 8 updates, one epoch
    assert min(result["moved"]) > 1e-3  # every drawing reads the weights of its step (JAX: synced from fit's state)
    assert result["last_vs_trained"] < 1e-5  # the last one those fit ends with


# ------------------------------------------------------------------------------------------- the command line
def cli_under(backend: str, *argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend}
    return subprocess.run(
        [sys.executable, "-m", "cam_mnist", *map(str, argv)], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def picture(tiny_run, data_dir, tmp_path_factory):
    from PIL import Image

    config = RunConfig.load(tiny_run / "config.json")
    folder = tmp_path_factory.mktemp("pictures")
    for i in range(2):
        Image.fromarray(load_split("test", config.data, data_dir).images[i]).save(folder / f"test_{i}.png")
    return folder


def commands_under(backend: str, tiny_run, picture, data_dir, folder) -> tuple[list, list]:
    """`explain` on a folder of pictures and `localize` on a copy of the tiny run, under ``backend``: the classes and
    box of each picture, and the rows of the localization table (all but the seconds)."""
    localize = ["--images", "48", "--methods", "cam", "gradcam", "scorecam", "--faithful-images", "6"]
    localize += ["--examples", "2", "--sanity-images", "0", "--gallery", "0", "--data-dir", data_dir]
    run = folder / backend
    shutil.copytree(tiny_run, run)
    explained = cli_under(backend, "explain", picture, "--run-dir", run, "--json", "--out", folder / f"{backend}_maps")
    scored = cli_under(backend, "localize", "--run-dir", run, *localize)
    assert explained.returncode == 0 and scored.returncode == 0, explained.stderr[-2000:] + scored.stderr[-2000:]
    rows = [r.split("|")[:-2] for r in scored.stdout.splitlines() if r.startswith("| ") and "|---" not in r]
    return [(r["classes"], r["box"]) for r in json.loads(explained.stdout)], rows


NUMBER = re.compile(r"-?\d+(?:\.(\d+))?")


def same_cells(ours: list[list[str]], theirs: list[list[str]]) -> bool:
    """Two printed tables agree: the same rows and text, and every number within one unit of its last printed digit
    (a score on a rounding boundary, 0.13485, may print as 0.1348 on one backend and 0.1349 on another)."""
    if len(ours) != len(theirs) or any(len(a) != len(b) for a, b in zip(ours, theirs, strict=True)):
        return False
    for a, b in zip((c for row in ours for c in row), (c for row in theirs for c in row), strict=True):
        if NUMBER.sub("#", a) != NUMBER.sub("#", b):
            return False
        for x, y in zip(NUMBER.finditer(a), NUMBER.finditer(b), strict=True):
            unit = 10.0 ** -len(x.group(1) or "")
            if abs(float(x.group()) - float(y.group())) > 1.01 * unit:
                return False
    return True


def test_same_cells_forgives_the_last_digit_only():
    table = [["", " cam ", " 0.1348 ", " 0.38/0.04 (0.40/0.50) ", " 1.2 "]]
    assert same_cells(table, [["", " cam ", " 0.1349 ", " 0.38/0.04 (0.40/0.50) ", " 1.3 "]])
    for changed in (" 0.1350 ", " 0.2348 ", " gradcam "):
        assert not same_cells(table, [[c if c != table[0][2] else changed for c in table[0]]])
    assert not same_cells(table, [["", " cam ", " 0.1348 ", " 0.38/0.04 (0.45/0.50) ", " 1.2 "]])  # another tau
    assert not same_cells(table, [table[0][:-1]])


@pytest.fixture(scope="module")
def tensorflows_commands(tiny_run, picture, data_dir, tmp_path_factory):
    return commands_under("tensorflow", tiny_run, picture, data_dir, tmp_path_factory.mktemp("commands"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_commands_on_a_saved_run_give_tensorflows_results(
    backend, tensorflows_commands, tiny_run, picture, data_dir, tmp_path
):
    """`explain` on pictures and `localize` on a trained run, under each backend: the boxes, classes and every
    score of TensorFlow's (the seconds aside); `train` is refused in one line, before anything is written."""
    boxes, rows = commands_under(backend, tiny_run, picture, data_dir, tmp_path)
    assert boxes == tensorflows_commands[0]
    assert same_cells(rows, tensorflows_commands[1]) and len(rows) > 3, (rows, tensorflows_commands[1])
    refused = cli_under(backend, "train", "--preset", "tiny", "--run-dir", tmp_path / "refused", "--data-dir", data_dir)
    assert refused.returncode == 2 and "KERAS_BACKEND=tensorflow" in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "refused").exists()


def test_a_backend_that_is_not_installed_is_named_in_one_line(tmp_path, tiny_run):
    # A stand-in for an absent JAX: importing it fails as a missing module does.
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'jax'\", name='jax')\n")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-m", "cam_mnist", "layers", "--model", str(tiny_run / "model.keras")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: KERAS_BACKEND=jax needs jax")
    assert "pip install '.[jax]'" in result.stderr and "Traceback" not in result.stderr
    library = [sys.executable, "-c", "import cam_mnist; cam_mnist.explain"]
    result = subprocess.run(library, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "ImportError: KERAS_BACKEND=jax needs jax" in result.stderr


def test_commands_on_tensorflow_start_without_jax():
    # TensorFlow imports JAX at start-up where it is installed (0.1 GiB, never used on the TensorFlow backend): the
    # command line hides it while TensorFlow imports, and JAX still imports after.
    code = (
        "import sys; from cam_mnist.commands.main import import_keras; import_keras(False); import tensorflow; "
        "print('jax' in sys.modules); import jax; print(jax.numpy.ones(2).sum())"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "2.0"]
