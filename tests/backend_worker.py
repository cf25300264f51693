"""Run under one Keras backend in its own process (``KERAS_BACKEND`` is fixed when Keras is imported): the maps of
every method of the registry for models saved under TensorFlow, so that tests/test_backends.py can hold them equal
to TensorFlow's; and pytorch-grad-cam beside ours on the very same model (torch only).

    KERAS_BACKEND=jax python tests/backend_worker.py maps CASES.json OUT.npz
    KERAS_BACKEND=torch python tests/backend_worker.py grad-cam OUT.json
    KERAS_BACKEND=jax python tests/backend_worker.py fit FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# Few samples in the random methods: what is compared is the same computation on each backend, not its quality.
OPTIONS = {"rise": {"masks": 48}, "smoothgrad": {"samples": 4}, "integrated-gradients": {"steps": 8}}


def all_maps(cases_file: str, out_file: str) -> None:
    """cases: [{"name", "model" (a .keras file), "images" (a .npy file), "layer" (or null), "methods" (or null:
    every one)}]: each method's maps of the predicted class, the classes explained and the default layer's path."""
    import keras
    import keras_hub  # noqa: F401 - registers its layers, so that its models load

    from cam_mnist.maps.explainer import METHODS, default_layer, explain
    from cam_mnist.maps.segmentation import segment

    out = {"backend": np.array(keras.backend.backend())}
    for case in json.loads(open(cases_file).read()):
        model = keras.models.load_model(case["model"])
        images = np.load(case["images"])
        name, layer = case["name"], case["layer"]
        out[f"{name}/default_layer"] = np.array(default_layer(model))
        for method in case.get("methods") or METHODS:
            options = OPTIONS.get(method, {})
            maps, classes = explain(model, images, method, layer=layer, return_targets=True, **options)
            out[f"{name}/{method}"], out[f"{name}/{method}/classes"] = maps, classes
        out[f"{name}/segment"] = segment(images, out[f"{name}/cam" if "cam_mnist" in name else f"{name}/gradcam"])
    np.savez(out_file, **out)


CLASSES = [1, 2, 3]  # the class explained in each of the three images


def _comparison_model():
    """(model, its input, the output of its conv layer c2): c2 -> GAP beside two side branches whose layers the
    conventions of theirs need -- a conv of the input's size (Score-CAM) and c2 centred over its cells (Eigen-CAM),
    whose GAP is 0 and so changes no score."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(x)
    same = keras.layers.Conv2D(6, 3, padding="same", name="same_size")(inputs)
    centred = keras.layers.Lambda(lambda a: a - keras.ops.mean(a, (1, 2), keepdims=True), name="centred")(x)
    pooled = [keras.layers.GlobalAveragePooling2D()(a) for a in (x, same, centred)]
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(keras.layers.Concatenate()(pooled))), inputs, x


def grad_cam(out_file: str) -> None:
    """pytorch-grad-cam's maps and ours on one Keras model under PyTorch, where it is a ``torch.nn.Module``: their
    hooks on its Keras layer, its weights. Writes {method: (their maps, our maps...)} as lists to ``out_file``."""
    import pytorch_grad_cam as pgc
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cam_mnist.maps.explainer import explain

    model, inputs, c2 = _comparison_model()
    images = np.random.default_rng(0).random((3, 24, 24, 3)).astype(np.float32)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)  # theirs resize to input_tensor.size(-1), size(-2)

    class ChannelsFirst(torch.nn.Module):  # their input layout (N, C, H, W) in, the Keras model's (N, H, W, C)
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x.permute(0, 2, 3, 1))

    def theirs(cls, layer, targets=None):
        to_nchw = lambda a: a.permute(0, 3, 1, 2)  # noqa: E731 - their reshape_transform: activations (B, K, h, w)
        cam = cls(model=ChannelsFirst(model), target_layers=[model.get_layer(layer)], reshape_transform=to_nchw)
        return cam(input_tensor=nchw, targets=targets or [ClassifierOutputTarget(c) for c in CLASSES])

    ours = lambda method, layer: explain(model, images, method, targets=np.array(CLASSES), layer=layer)  # noqa: E731
    out = {}
    for cls, method in [(pgc.GradCAM, "gradcam"), (pgc.XGradCAM, "xgradcam"), (pgc.LayerCAM, "layercam")]:
        out[method] = (theirs(cls, "c2"), ours(method, "c2"))
    out["hirescam"] = (theirs(pgc.HiResCAM, "c2"), ours("hirescam", "c2"))
    out["gradcam++"] = (theirs(_alpha_summing_to_one(pgc.GradCAMPlusPlus), "c2"), ours("gradcam++", "c2"))
    out["gradcam++ (their alpha)"] = (theirs(pgc.GradCAMPlusPlus, "c2"), ours("gradcam++", "c2"))
    log_p = [_log_probability(c) for c in CLASSES]
    out["scorecam"] = (theirs(pgc.ScoreCAM, "same_size", log_p), ours("scorecam", "same_size"))
    out["eigencam"] = (theirs(pgc.EigenCAM, "centred"), *_eigencam_either_sign(model, images))
    out["ablationcam"] = _ablation_beside_theirs(inputs, c2, images, nchw)
    Path(out_file).write_text(json.dumps({k: [np.asarray(a).tolist() for a in v] for k, v in out.items()}))


def _alpha_summing_to_one(grad_cam_plus_plus):
    """Their GradCAMPlusPlus with alpha normalised to sum to 1 over the cells, as the authors' code and tf-keras-vis."""

    class AlphaSummingToOne(grad_cam_plus_plus):
        def get_cam_weights(self, input_tensor, target_layers, targets, activations, grads):
            g2 = grads**2
            alpha = g2 / (2 * g2 + activations.sum(axis=(2, 3), keepdims=True) * g2 * grads + 1e-6)
            alpha = np.where(grads != 0, alpha, 0)
            alpha = alpha / np.maximum(alpha.sum(axis=(2, 3), keepdims=True), 1e-12)
            return (np.maximum(grads, 0) * alpha).sum(axis=(2, 3))

    return AlphaSummingToOne


def _log_probability(index: int):
    """Their Score-CAM softmaxes the target's scores over channels: of log p^c, that is p^c / sum_k p^c(k)."""
    import torch

    return lambda output: torch.log_softmax(output, -1)[index]


def _eigencam_either_sign(model, images):
    """Eigen-CAM: theirs centres the activations over the cells before the SVD and keeps the SVD's sign; on a layer
    centred already only the sign (arbitrary in an SVD) can differ: our map for either sign, normalised as theirs."""
    import keras

    from cam_mnist.maps.explainer import get_method
    from cam_mnist.maps.grids import upsample

    tensors = [keras.ops.convert_to_tensor(a) for a in (images, np.array(CLASSES, np.int32))]
    signed = get_method(model, "eigencam", "centred").signed_maps(*tensors)[0]  # (B, h, w) before the ReLU
    size = images.shape[1:3]
    return [_minmax(keras.ops.convert_to_numpy(upsample(keras.ops.relu(s * signed), size))) for s in (1, -1)]


def _ablation_beside_theirs(inputs, c2, images, nchw):
    """Their AblationCAM swaps a module attribute for its ablation layer, which a Keras graph does not call
    through: the model is split at c2 (its own layers on each side) around a torch.nn.Identity that theirs
    replaces."""
    import keras
    import pytorch_grad_cam as pgc
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cam_mnist.maps.explainer import explain

    plain = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(c2)))

    class Split(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.target = keras.Model(inputs, c2), torch.nn.Identity()

        def forward(self, x):
            a = self.target(self.features(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))  # (B, K, h, w)
            return plain.layers[-1](a.mean((2, 3)))  # GAP, then the model's own Dense

    split = Split()
    cam = pgc.AblationCAM(model=split, target_layers=[split.target])
    theirs = cam(input_tensor=nchw, targets=[ClassifierOutputTarget(c) for c in CLASSES])
    return theirs, explain(plain, images, "ablationcam", targets=np.array(CLASSES), layer="c2")


def fit(folder: str) -> None:
    """``CAMCallback`` in ``model.fit`` on this backend: a small model trained one epoch, its maps drawn every two
    updates. Writes the steps drawn, how much the maps moved between drawings and how far the last drawing is from
    the maps of the trained weights, to ``folder``/fit.json."""
    import keras

    from cam_mnist import CAMCallback
    from cam_mnist.maps.explainer import explain

    keras.utils.set_random_seed(0)
    inputs = keras.Input((24, 24, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images, labels = rng.random((64, 24, 24, 1)).astype(np.float32), rng.integers(0, 3, 64)
    drawn = Path(folder) / "maps"
    callback = CAMCallback(images[:2], labels[:2], method="cam", every_n_batches=2, folder=drawn)
    model.fit(images, labels, batch_size=8, epochs=1, callbacks=[callback], verbose=0)
    steps = sorted(callback.maps)
    pairs = zip(steps[:-1], steps[1:], strict=True)
    now = explain(model, images[:2], "cam", targets=labels[:2])
    result = {
        "steps": steps,
        "moved": [float(np.abs(callback.maps[a] - callback.maps[b]).max()) for a, b in pairs],
        "last_vs_trained": float(np.abs(callback.maps[steps[-1]] - now).max()),
        "page": (drawn / "index.html").exists(),
    }
    (Path(folder) / "fit.json").write_text(json.dumps(result))


def _minmax(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(1, 2), keepdims=True)
    return (maps - lo) / np.maximum(maps.max(axis=(1, 2), keepdims=True) - lo, 1e-12)


if __name__ == "__main__":
    task, *args = sys.argv[1:]
    {"maps": all_maps, "grad-cam": grad_cam, "fit": fit}[task](*args)
